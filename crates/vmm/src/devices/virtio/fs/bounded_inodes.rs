//! A bound on the host descriptors a share holds, whatever the size of the
//! tree the guest walks.
//!
//! The passthrough file system keeps an `O_PATH` descriptor for every inode
//! the guest has looked up and not yet forgotten, and a guest forgets only
//! under memory pressure: `find` over a 300k-file tree would hold 300k host
//! descriptors (and pin as many host inodes), which is how virtiofsd runs
//! out of them on big trees. File handles (`open_by_handle_at`) would avoid
//! that but need `CAP_DAC_READ_SEARCH` over the whole host file system,
//! which a jailed VMM must not have.
//!
//! [`BoundedInodes`] gives the guest inode numbers of its own and keeps the
//! passthrough's inode (its descriptor) for at most `most_open` of them,
//! the least recently used closed first. A closed inode remembers where the
//! guest last found it (directory and name) and which host file it was
//! (device and inode number): when the guest uses it again it is looked up
//! again from its nearest open ancestor, one component at a time through
//! the passthrough's own lookup (so nothing new can reach outside the
//! share), and must be the same host file, else the guest gets `ESTALE`.
//! Inodes the guest holds open, and those whose name is gone (removed or
//! renamed over), are never closed.
//!
//! File handles are numbered here too ([`OpenHandle`]): the guest's `fh`
//! names the node, the passthrough's handle and the open flags, so that a
//! VMM the VM moves to can open each file again under the number the guest
//! holds (`persist`).
//!
//! Requests come one at a time (the device is served by one thread through
//! `&mut`), so a descriptor resolved for a request stays open until the
//! request ends.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;

/// The root's inode, the same on both sides.
pub(super) const ROOT: u64 = 1;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Which host file an inode is: device, inode number and file type (a
/// number reused for a file of another type is another file).
pub(super) type HostId = (u64, u64, u32);

pub(super) fn host_id(attr: &stat64) -> HostId {
    (attr.st_dev, attr.st_ino, attr.st_mode & libc::S_IFMT)
}

pub(super) struct Node {
    /// The passthrough's inode while it is open (holding one reference).
    pub(super) inner: Option<u64>,
    /// The directory and name the guest last found it by; `None` once that
    /// name is gone.
    pub(super) place: Option<(u64, CString)>,
    pub(super) host: HostId,
    /// The guest's lookup count (FUSE's `nlookup`).
    pub(super) guest_refs: u64,
    /// Handles the guest holds on it.
    pub(super) opens: u64,
    /// Nodes whose `place` is in this directory.
    pub(super) children: u64,
    /// Its key in `Table::closable`, while it is there.
    pub(super) used: Option<u64>,
}

/// A file or directory the guest holds open, under its `fh`.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenHandle {
    pub(super) node: u64,
    /// The passthrough's handle.
    pub(super) inner: u64,
    /// The open(2) flags the guest asked for.
    pub(super) flags: u32,
    pub(super) dir: bool,
}

impl Node {
    fn closable(&self, id: u64) -> bool {
        id != ROOT && self.inner.is_some() && self.opens == 0 && self.place.is_some()
    }
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_host: HashMap<HostId, u64>,
    pub(super) by_place: HashMap<(u64, CString), u64>,
    /// Open nodes that may be closed, least recently used first.
    pub(super) closable: BTreeMap<u64, u64>,
    pub(super) clock: u64,
    pub(super) next_id: u64,
    pub(super) open: usize,
    /// The guest's file handles.
    pub(super) handles: HashMap<u64, OpenHandle>,
    pub(super) next_handle: u64,
}

impl Table {
    pub(super) fn new(root_attr: HostId) -> Table {
        let mut table = Table {
            next_id: ROOT + 1,
            next_handle: 1,
            open: 1,
            ..Table::default()
        };
        table.nodes.insert(
            ROOT,
            Node {
                inner: Some(ROOT),
                place: None,
                host: root_attr,
                guest_refs: 1,
                opens: 0,
                children: 0,
                used: None,
            },
        );
        table.by_host.insert(root_attr, ROOT);
        table
    }

    /// Marks `id` as just used, and files it where its closability says.
    pub(super) fn touch(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if let Some(used) = node.used.take() {
            self.closable.remove(&used);
        }
        if node.closable(id) {
            self.clock += 1;
            node.used = Some(self.clock);
            self.closable.insert(self.clock, id);
        }
    }

    /// Moves `id` to `place` (or nowhere), keeping the parents' child
    /// counts and the place index right; the parents it leaves go to `gone`
    /// (for `collect`).
    pub(super) fn set_place(&mut self, id: u64, place: Option<(u64, CString)>, gone: &mut Vec<u64>) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let old = std::mem::replace(&mut node.place, place.clone());
        if let Some(key) = old {
            if self.by_place.get(&key) == Some(&id) {
                self.by_place.remove(&key);
            }
            if let Some(parent) = self.nodes.get_mut(&key.0) {
                parent.children = parent.children.saturating_sub(1);
                gone.push(key.0);
            }
        }
        if let Some(key) = place {
            if let Some(parent) = self.nodes.get_mut(&key.0) {
                parent.children += 1;
            }
            if let Some(previous) = self.by_place.insert(key, id) {
                if previous != id {
                    // Its name now belongs to `id` (host change not seen).
                    self.set_place(previous, None, gone);
                }
            }
        }
        self.touch(id);
    }

    /// Drops nodes in `candidates` that nobody refers to any more; returns
    /// the passthrough inodes to forget.
    fn collect(&mut self, mut candidates: Vec<u64>, forget: &mut Vec<u64>) {
        while let Some(id) = candidates.pop() {
            let Some(node) = self.nodes.get(&id) else { continue };
            if id == ROOT || node.guest_refs > 0 || node.opens > 0 {
                continue;
            }
            // Forgotten by the guest: its descriptor goes now, the node when
            // no other node is found through it.
            self.close(id, forget);
            self.touch(id);
            let Some(node) = self.nodes.get(&id).filter(|node| node.children == 0) else {
                continue;
            };
            let host = node.host;
            self.set_place(id, None, &mut candidates);
            if self.by_host.get(&host) == Some(&id) {
                self.by_host.remove(&host);
            }
            if let Some(used) = self.nodes.remove(&id).and_then(|n| n.used) {
                self.closable.remove(&used);
            }
        }
    }

    /// Gives node `id` the passthrough's inode `inner` (one reference) if it
    /// has none, else gives that reference back; returns the node's open
    /// inode (`None`: no such node, `inner` given back).
    fn open_with(&mut self, id: u64, inner: u64, forget: &mut Vec<u64>) -> Option<u64> {
        let Some(node) = self.nodes.get_mut(&id) else {
            forget.push(inner);
            return None;
        };
        match node.inner {
            Some(open) => {
                forget.push(inner);
                Some(open)
            }
            None => {
                node.inner = Some(inner);
                self.open += 1;
                Some(inner)
            }
        }
    }

    /// Closes node `id`'s passthrough inode, if it has one open.
    fn close(&mut self, id: u64, forget: &mut Vec<u64>) {
        if let Some(inner) = self.nodes.get_mut(&id).and_then(|node| node.inner.take()) {
            forget.push(inner);
            self.open -= 1;
        }
    }

    /// Closes the least recently used nodes beyond `most_open`, but not
    /// `keep` (which the request in hand is about to use).
    fn close_beyond(&mut self, most_open: usize, keep: u64, forget: &mut Vec<u64>) {
        let mut kept = None;
        while self.open > most_open {
            let Some((used, id)) = self.closable.pop_first() else {
                break;
            };
            if id == keep {
                kept = Some(used);
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&id) {
                node.used = None;
            }
            self.close(id, forget);
        }
        if let Some(used) = kept {
            self.closable.insert(used, keep);
        }
    }
}

/// A file system whose inodes hold host descriptors only while recently
/// used (see the module's documentation).
pub struct BoundedInodes<F> {
    pub(super) inner: F,
    most_open: usize,
    table: Mutex<Table>,
}

impl<F: FileSystem<Inode = u64, Handle = u64>> BoundedInodes<F> {
    /// Over `inner`, whose root is already open; at most `most_open` of its
    /// inodes open at once (besides those the guest holds open).
    pub fn new(inner: F, most_open: usize) -> io::Result<Self> {
        let (root, _) = inner.getattr(&Context::default(), ROOT, None)?;
        Ok(BoundedInodes {
            inner,
            most_open: most_open.max(2),
            table: Mutex::new(Table::new(host_id(&root))),
        })
    }

    /// Puts `table` in place of one the guest has not used (`persist`).
    pub(super) fn replace_table(&self, table: Table) -> Result<(), String> {
        let mut ours = self.table();
        if ours.nodes.len() > 1 || !ours.handles.is_empty() {
            return Err("the share is in use already".into());
        }
        *ours = table;
        Ok(())
    }

    /// How many of the passthrough's inodes are open.
    #[cfg(test)]
    pub fn open_inodes(&self) -> usize {
        self.table().open
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_inner(&self, ctx: &Context, forget: Vec<u64>) {
        if !forget.is_empty() {
            self.inner
                .batch_forget(ctx, forget.into_iter().map(|inode| (inode, 1)).collect());
        }
    }

    /// The passthrough's inode for guest inode `id`, opened again if it was
    /// closed.
    pub(super) fn resolve(&self, ctx: &Context, id: u64) -> io::Result<u64> {
        // The closed nodes from `id` up to the nearest open one.
        let mut chain: Vec<(u64, CString, HostId)> = Vec::new();
        let mut base = {
            let table = self.table();
            let mut at = id;
            loop {
                let node = table.nodes.get(&at).ok_or_else(|| errno(libc::EBADF))?;
                if let Some(inner) = node.inner {
                    break inner;
                }
                let (parent, name) = node.place.clone().ok_or_else(|| errno(libc::ESTALE))?;
                chain.push((at, name, node.host));
                // A cycle of places (never made by a kernel's renames).
                if chain.len() > table.nodes.len() {
                    return Err(errno(libc::ESTALE));
                }
                at = parent;
            }
        };
        if chain.is_empty() {
            self.table().touch(id);
            return Ok(base);
        }
        let mut forget = Vec::new();
        let mut result = Ok(base);
        for (node_id, name, host) in chain.into_iter().rev() {
            let entry = match self.inner.lookup(ctx, base, &name) {
                Ok(entry) => entry,
                Err(e) => {
                    result = Err(if e.raw_os_error() == Some(libc::ENOENT) {
                        errno(libc::ESTALE)
                    } else {
                        e
                    });
                    break;
                }
            };
            if entry.inode == 0 || host_id(&entry.attr) != host {
                if entry.inode != 0 {
                    forget.push(entry.inode);
                }
                result = Err(errno(libc::ESTALE));
                break;
            }
            let mut table = self.table();
            let Some(open) = table.open_with(node_id, entry.inode, &mut forget) else {
                result = Err(errno(libc::ESTALE));
                break;
            };
            base = open;
            table.touch(node_id);
            result = Ok(base);
        }
        self.table().close_beyond(self.most_open, id, &mut forget);
        self.forget_inner(ctx, forget);
        result
    }

    /// Takes an entry the passthrough returned (one more guest lookup of
    /// it), found as `name` in guest directory `parent`.
    fn adopt(&self, ctx: &Context, entry: Entry, parent: u64, name: &CStr) -> Entry {
        let mut forget = Vec::new();
        let entry = self.adopt_later(entry, parent, name, &mut forget);
        self.forget_inner(ctx, forget);
        entry
    }

    /// [`Self::adopt`], leaving the passthrough's inodes to forget in
    /// `forget` (for a caller inside one of its calls).
    fn adopt_later(&self, mut entry: Entry, parent: u64, name: &CStr, forget: &mut Vec<u64>) -> Entry {
        if entry.inode == 0 {
            return entry;
        }
        let host = host_id(&entry.attr);
        let named = name != c"." && name != c"..";
        let mut gone = Vec::new();
        let id = {
            let mut table = self.table();
            let table = &mut *table;
            let known = table.by_host.get(&host).copied();
            let id = match known.filter(|id| table.nodes.contains_key(id)) {
                Some(id) => id,
                None => {
                    let id = table.next_id;
                    table.next_id += 1;
                    table.nodes.insert(
                        id,
                        Node {
                            inner: None,
                            place: None,
                            host,
                            guest_refs: 0,
                            opens: 0,
                            children: 0,
                            used: None,
                        },
                    );
                    table.by_host.insert(host, id);
                    id
                }
            };
            if let Some(node) = table.nodes.get_mut(&id) {
                node.guest_refs += 1;
            }
            table.open_with(id, entry.inode, forget);
            let already_there = table
                .nodes
                .get(&id)
                .and_then(|node| node.place.as_ref())
                .is_some_and(|(p, n)| *p == parent && **n == *name);
            if named && !already_there {
                table.set_place(id, Some((parent, name.to_owned())), &mut gone);
            } else {
                table.touch(id);
            }
            table.collect(gone, forget);
            table.close_beyond(self.most_open, id, forget);
            id
        };
        entry.inode = id;
        entry
    }

    /// The name `parent`/`name` is gone: whatever node had it can no
    /// longer be found again by it.
    fn unplace(&self, parent: u64, name: &CStr) {
        let mut table = self.table();
        if let Some(id) = table.by_place.get(&(parent, name.to_owned())).copied() {
            let mut gone = Vec::new();
            table.set_place(id, None, &mut gone);
            let mut forget = Vec::new();
            table.collect(gone, &mut forget);
            drop(table);
            self.forget_inner(&Context::default(), forget);
        }
    }

    /// One handle more (`delta` 1) or less (-1) on guest inode `id`.
    fn opened(&self, ctx: &Context, id: u64, delta: i64) {
        let mut forget = Vec::new();
        {
            let mut table = self.table();
            if let Some(node) = table.nodes.get_mut(&id) {
                node.opens = node.opens.saturating_add_signed(delta);
            }
            table.touch(id);
            // Forgotten while open (only a hostile guest does that).
            table.collect(vec![id], &mut forget);
        }
        self.forget_inner(ctx, forget);
    }

    /// Numbers the passthrough's handle `inner` (if any) on guest inode
    /// `node` for the guest, and counts it as an open of the node.
    fn hand_out(&self, ctx: &Context, node: u64, inner: Option<u64>, flags: u32, dir: bool) -> Option<u64> {
        let fh = inner.map(|inner| {
            let mut table = self.table();
            let fh = table.next_handle;
            table.next_handle += 1;
            table.handles.insert(
                fh,
                OpenHandle {
                    node,
                    inner,
                    flags,
                    dir,
                },
            );
            fh
        });
        self.opened(ctx, node, 1);
        fh
    }

    /// The passthrough's handle behind the guest's `fh` on inode `node`.
    fn inner_handle(&self, node: u64, fh: u64) -> io::Result<u64> {
        match self.table().handles.get(&fh) {
            Some(open) if open.node == node => Ok(open.inner),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn inner_handle_opt(&self, node: u64, fh: Option<u64>) -> io::Result<Option<u64>> {
        fh.map(|fh| self.inner_handle(node, fh)).transpose()
    }

    /// Takes the guest's `fh` on `node` back: the passthrough's handle.
    fn take_handle(&self, node: u64, fh: u64) -> io::Result<u64> {
        let mut table = self.table();
        match table.handles.get(&fh) {
            Some(open) if open.node == node => Ok(table.handles.remove(&fh).map_or(0, |open| open.inner)),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn forget_many(&self, ctx: &Context, requests: impl IntoIterator<Item = (u64, u64)>) {
        let mut forget = Vec::new();
        self.forget_later(requests, &mut forget);
        self.forget_inner(ctx, forget);
    }

    /// The guest forgets `count` lookups of each inode; the passthrough's
    /// inodes to forget go to `forget`.
    fn forget_later(&self, requests: impl IntoIterator<Item = (u64, u64)>, forget: &mut Vec<u64>) {
        let mut table = self.table();
        let mut gone = Vec::new();
        for (id, count) in requests {
            if let Some(node) = table.nodes.get_mut(&id) {
                node.guest_refs = node.guest_refs.saturating_sub(count);
                if node.guest_refs == 0 {
                    gone.push(id);
                }
            }
        }
        table.collect(gone, forget);
    }
}

impl<F: BackendFileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static> BackendFileSystem for BoundedInodes<F> {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        self.inner.mount()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[allow(clippy::too_many_arguments)]
impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for BoundedInodes<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    /// Kept, as the layer above keeps the passthrough's inodes: a later
    /// mount finds the root where it was.
    fn destroy(&self) {}

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let dir = self.resolve(ctx, parent)?;
        let entry = self.inner.lookup(ctx, dir, name)?;
        Ok(self.adopt(ctx, entry, parent, name))
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.forget_many(ctx, [(inode, count)]);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.forget_many(ctx, requests);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle_opt(inode, handle)?;
        self.inner.getattr(ctx, inner, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle_opt(inode, handle)?;
        self.inner.setattr(ctx, inner, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.readlink(ctx, inner)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let dir = self.resolve(ctx, parent)?;
        let entry = self.inner.symlink(ctx, linkname, dir, name)?;
        Ok(self.adopt(ctx, entry, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let dir = self.resolve(ctx, inode)?;
        let entry = self.inner.mknod(ctx, dir, name, mode, rdev, umask)?;
        Ok(self.adopt(ctx, entry, inode, name))
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        let dir = self.resolve(ctx, parent)?;
        let entry = self.inner.mkdir(ctx, dir, name, mode, umask)?;
        Ok(self.adopt(ctx, entry, parent, name))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        let dir = self.resolve(ctx, parent)?;
        self.inner.unlink(ctx, dir, name)?;
        self.unplace(parent, name);
        Ok(())
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        let dir = self.resolve(ctx, parent)?;
        self.inner.rmdir(ctx, dir, name)?;
        self.unplace(parent, name);
        Ok(())
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let old_inner = self.resolve(ctx, olddir)?;
        let new_inner = self.resolve(ctx, newdir)?;
        self.inner.rename(ctx, old_inner, oldname, new_inner, newname, flags)?;
        let mut table = self.table();
        let moved = table.by_place.get(&(olddir, oldname.to_owned())).copied();
        let target = table.by_place.get(&(newdir, newname.to_owned())).copied();
        let mut gone = Vec::new();
        if let Some(id) = moved {
            table.set_place(id, None, &mut gone);
        }
        if let Some(id) = target {
            let exchanged = flags & libc::RENAME_EXCHANGE != 0;
            let place = exchanged.then(|| (olddir, oldname.to_owned()));
            table.set_place(id, place, &mut gone);
        }
        if let Some(id) = moved {
            table.set_place(id, Some((newdir, newname.to_owned())), &mut gone);
        }
        let mut forget = Vec::new();
        table.collect(gone, &mut forget);
        drop(table);
        self.forget_inner(ctx, forget);
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        let inner = self.resolve(ctx, inode)?;
        let dir = self.resolve(ctx, newparent)?;
        let entry = self.inner.link(ctx, inner, dir, newname)?;
        Ok(self.adopt(ctx, entry, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let inner = self.resolve(ctx, inode)?;
        let (handle, options, passthrough) = self.inner.open(ctx, inner, flags, fuse_flags)?;
        let handle = self.hand_out(ctx, inode, handle, flags, false);
        Ok((handle, options, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let dir = self.resolve(ctx, parent)?;
        let flags = args.flags;
        let (entry, handle, options, passthrough) = self.inner.create(ctx, dir, name, args)?;
        let entry = self.adopt(ctx, entry, parent, name);
        let handle = self.hand_out(ctx, entry.inode, handle, flags, false);
        Ok((entry, handle, options, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.read(ctx, inner, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.write(
            ctx,
            inner,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: Self::Inode, handle: Self::Handle, lock_owner: u64) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.flush(ctx, inner, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.fsync(ctx, inner, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.fallocate(ctx, inner, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.take_handle(inode, handle)?;
        let released = self
            .inner
            .release(ctx, inner, flags, handle, flush, flock_release, lock_owner);
        self.opened(ctx, inode, -1);
        released
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.statfs(ctx, inner)
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.setxattr(ctx, inner, name, value, flags)
    }

    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.getxattr(ctx, inner, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.listxattr(ctx, inner, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.removexattr(ctx, inner, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        let inner = self.resolve(ctx, inode)?;
        let (handle, options) = self.inner.opendir(ctx, inner, flags)?;
        Ok((self.hand_out(ctx, inode, handle, flags, true), options))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.readdir(ctx, inner, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        // Forgotten once the passthrough's call is over, not inside it.
        let mut forget = Vec::new();
        let listed = self
            .inner
            .readdirplus(ctx, inner, handle, size, offset, &mut |dir_entry, entry| {
                let name = CString::new(dir_entry.name).map_err(|_| errno(libc::EINVAL))?;
                let entry = self.adopt_later(entry, inode, &name, &mut forget);
                let looked_up = entry.inode;
                let added = add_entry(dir_entry, entry)?;
                if added == 0 && looked_up != 0 {
                    // Not sent: the guest does not hold it.
                    self.forget_later([(looked_up, 1)], &mut forget);
                }
                Ok(added)
            });
        self.forget_inner(ctx, forget);
        listed
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.take_handle(inode, handle)?;
        let released = self.inner.releasedir(ctx, inner, flags, handle);
        self.opened(ctx, inode, -1);
        released
    }

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.fsyncdir(ctx, inner, datasync, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.access(ctx, inner, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.lseek(ctx, inner, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.getlk(ctx, inner, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.setlk(ctx, inner, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.setlkw(ctx, inner, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.ioctl(ctx, inner, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: Self::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        let inner = self.resolve(ctx, inode)?;
        self.inner.bmap(ctx, inner, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        let inner = self.resolve(ctx, inode)?;
        let handle = self.inner_handle(inode, handle)?;
        self.inner.poll(ctx, inner, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::test_passthrough as passthrough;
    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    fn name(text: &str) -> CString {
        CString::new(text).unwrap()
    }

    fn descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    fn errno_of<T: std::fmt::Debug>(result: io::Result<T>) -> Option<i32> {
        result.unwrap_err().raw_os_error()
    }

    /// The case: a 300k-file tree looked up whole by a guest that
    /// forgets nothing holds a bounded number of host descriptors, and
    /// every inode still answers as the host file it was.
    #[test]
    fn a_300k_file_tree_is_walked_with_bounded_host_descriptors() {
        const DIRS: usize = 300;
        const FILES: usize = 1000;
        const MOST_OPEN: usize = 1000;
        let tree = tempfile::tempdir().unwrap();
        for d in 0..DIRS {
            let dir = tree.path().join(format!("d{d}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..FILES {
                std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
            }
        }
        let fs = BoundedInodes::new(passthrough(tree.path()), MOST_OPEN).unwrap();
        let before = descriptors();
        let mut most = 0;
        let mut first_files = Vec::new();
        for d in 0..DIRS {
            let dir = fs.lookup(&ctx(), ROOT, &name(&format!("d{d}"))).unwrap();
            for f in 0..FILES {
                let file = fs.lookup(&ctx(), dir.inode, &name(&format!("f{f}"))).unwrap();
                if f == 0 {
                    first_files.push((d, file.inode, file.attr.st_ino));
                }
            }
            most = most.max(fs.open_inodes());
        }
        assert!(most <= MOST_OPEN, "{most} inodes open");
        // Other tests of this binary open files meanwhile: a margin, far
        // below the 300k an unbounded server would hold.
        let held = descriptors().saturating_sub(before);
        assert!(held <= MOST_OPEN + 200, "{held} descriptors held");
        // Closed long ago, found again, the same host files.
        for (d, inode, host_ino) in first_files.iter().step_by(37) {
            let (attr, _) = fs.getattr(&ctx(), *inode, None).unwrap();
            assert_eq!(attr.st_ino, *host_ino);
            let on_host = std::fs::metadata(tree.path().join(format!("d{d}/f0"))).unwrap();
            assert_eq!(attr.st_ino, on_host.ino());
        }
        assert!(fs.open_inodes() <= MOST_OPEN);
    }

    #[test]
    fn open_files_keep_their_descriptor_and_moved_names_are_followed() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("a")).unwrap();
        for f in 0..50 {
            std::fs::write(tree.path().join(format!("a/f{f}")), format!("{f}")).unwrap();
        }
        let fs = BoundedInodes::new(passthrough(tree.path()), 8).unwrap();
        let dir = fs.lookup(&ctx(), ROOT, c"a").unwrap().inode;
        let kept = fs.lookup(&ctx(), dir, c"f0").unwrap().inode;
        let (handle, _, _) = fs.open(&ctx(), kept, libc::O_RDONLY as u32, 0).unwrap();
        let moved = fs.lookup(&ctx(), dir, c"f1").unwrap().inode;
        let gone = fs.lookup(&ctx(), dir, c"f2").unwrap().inode;
        let elsewhere = fs.lookup(&ctx(), dir, c"f3").unwrap().inode;
        for f in 4..50 {
            fs.lookup(&ctx(), dir, &name(&format!("f{f}"))).unwrap();
        }
        assert!(fs.open_inodes() <= 8);
        // The open file kept its descriptor: its handle still answers.
        let (attr, _) = fs.getattr(&ctx(), kept, handle).unwrap();
        assert_eq!(attr.st_size, 1);
        fs.release(&ctx(), kept, 0, handle.unwrap(), false, false, None)
            .unwrap();
        // Renamed through the guest: found by its new name.
        fs.rename(&ctx(), dir, c"f1", ROOT, c"renamed", 0).unwrap();
        let (attr, _) = fs.getattr(&ctx(), moved, None).unwrap();
        assert_eq!(
            attr.st_ino,
            std::fs::metadata(tree.path().join("renamed")).unwrap().ino()
        );
        // Removed through the guest while closed: gone.
        fs.unlink(&ctx(), dir, c"f2").unwrap();
        for f in 4..50 {
            fs.lookup(&ctx(), dir, &name(&format!("f{f}"))).unwrap();
        }
        assert_eq!(errno_of(fs.getattr(&ctx(), gone, None)), Some(libc::ESTALE));
        // Moved on the host while closed, another file in its place: stale,
        // never the other file.
        std::fs::rename(tree.path().join("a/f3"), tree.path().join("f3")).unwrap();
        std::fs::write(tree.path().join("a/f3"), "another").unwrap();
        assert_eq!(errno_of(fs.getattr(&ctx(), elsewhere, None)), Some(libc::ESTALE));
        // Forgotten by the guest: nothing is kept for it.
        fs.forget(&ctx(), moved, 1);
        assert_eq!(errno_of(fs.getattr(&ctx(), moved, None)), Some(libc::EBADF));
    }

    #[test]
    fn a_directory_closed_under_open_children_is_found_again() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("x/y/z")).unwrap();
        std::fs::write(tree.path().join("x/y/z/deep"), "deep").unwrap();
        for f in 0..20 {
            std::fs::write(tree.path().join(format!("n{f}")), "").unwrap();
        }
        let fs = BoundedInodes::new(passthrough(tree.path()), 2).unwrap();
        let x = fs.lookup(&ctx(), ROOT, c"x").unwrap().inode;
        let y = fs.lookup(&ctx(), x, c"y").unwrap().inode;
        let z = fs.lookup(&ctx(), y, c"z").unwrap().inode;
        let deep = fs.lookup(&ctx(), z, c"deep").unwrap().inode;
        for f in 0..20 {
            fs.lookup(&ctx(), ROOT, &name(&format!("n{f}"))).unwrap();
        }
        // Every level was closed: the chain is looked up again from the root.
        let (attr, _) = fs.getattr(&ctx(), deep, None).unwrap();
        assert_eq!(attr.st_size, 4);
        // The guest forgets the parents before the child (a kernel would
        // not, a hostile guest may): the child is still found.
        fs.forget(&ctx(), x, 1);
        fs.forget(&ctx(), y, 1);
        for f in 0..20 {
            fs.lookup(&ctx(), ROOT, &name(&format!("n{f}"))).unwrap();
        }
        assert_eq!(fs.getattr(&ctx(), deep, None).unwrap().0.st_size, 4);
        fs.forget(&ctx(), deep, 1);
        fs.forget(&ctx(), z, 1);
        // Nothing is left but the root and the twenty names.
        assert_eq!(fs.table().nodes.len(), 21);
    }
}
