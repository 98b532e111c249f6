//! Directory listings that stay right while the guest deletes what it
//! lists.
//!
//! The passthrough file system answers READDIR by seeking the host
//! directory to the guest's offset and reading as many host entries as the
//! guest's buffer would hold; FUSE entries are larger, so it reads ahead of
//! what it returns and the next request seeks back. On tmpfs and overlayfs
//! a seek back counts entries from the start again, so once the guest has
//! deleted the first batch (`rm -rf`), entries are skipped and `rmdir`
//! fails with "Directory not empty". [`StableDirs`] reads a directory whole
//! when the guest starts reading it (offset 0) and serves that listing by
//! position, as a local file system keeps its place in a directory that
//! changes; READDIRPLUS looks each name up as it is served, so a name
//! deleted meanwhile is left out. Requests that replay a host change
//! (`replay`) are answered there, a one-file share's directory is kept
//! out of sight (`single_file`); every other call goes straight through.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;

use super::replay;
use super::single_file::OnlyFile;

/// The most entries one listing holds (a larger directory is listed up to
/// here); the most listings open at once (a guest opening directories
/// without end gets ENFILE).
pub(super) const MAX_ENTRIES: usize = 1 << 20;
pub(super) const MAX_LISTINGS: usize = 4096;
/// How much the passthrough file system is asked for at a time while a
/// listing is read.
const READ_CHUNK: u32 = 64 * 1024;

pub(super) struct Listed {
    pub(super) ino: u64,
    pub(super) type_: u32,
    pub(super) name: CString,
}

/// Open listings by (directory inode, handle).
type Listings = HashMap<(u64, u64), Arc<Vec<Listed>>>;

/// A file system whose directory listings are read whole at their start.
pub struct StableDirs<F> {
    inner: F,
    listings: Mutex<Listings>,
    /// For a share of one file: what keeps the rest of its directory out of
    /// sight and unchanged.
    only: Option<OnlyFile>,
}

impl<F: FileSystem<Inode = u64, Handle = u64>> StableDirs<F> {
    pub fn new(inner: F, only: Option<OnlyFile>) -> Self {
        StableDirs {
            inner,
            listings: Mutex::new(HashMap::new()),
            only,
        }
    }

    /// Refuses a change to directory `dir` that a one-file share forbids.
    fn may_change(&self, dir: u64) -> io::Result<()> {
        self.only.as_ref().map_or(Ok(()), |only| only.change(dir))
    }

    fn may_look_up(&self, parent: u64, name: &CStr) -> io::Result<()> {
        self.only.as_ref().map_or(Ok(()), |only| only.lookup(parent, name))
    }

    /// The file system it serves listings of.
    pub(super) fn inner(&self) -> &F {
        &self.inner
    }

    pub(super) fn listings(&self) -> std::sync::MutexGuard<'_, Listings> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing a read at `offset` continues: read now at offset 0 (or
    /// when there is none), kept until the directory is released.
    fn listing(&self, ctx: &Context, inode: u64, handle: u64, offset: u64) -> io::Result<Arc<Vec<Listed>>> {
        if offset != 0 {
            if let Some(listing) = self.listings().get(&(inode, handle)) {
                return Ok(listing.clone());
            }
        }
        let mut entries: Vec<Listed> = Vec::new();
        let mut next = 0u64;
        loop {
            let before = entries.len();
            let mut last = next;
            self.inner.readdir(ctx, inode, handle, READ_CHUNK, next, &mut |entry| {
                if entries.len() >= MAX_ENTRIES {
                    return Ok(0);
                }
                last = entry.offset;
                if self.only.as_ref().is_some_and(|only| only.hides(inode, entry.name)) {
                    return Ok(entry.name.len() + 24);
                }
                entries.push(Listed {
                    ino: entry.ino,
                    type_: entry.type_,
                    name: CString::new(entry.name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
                });
                Ok(entry.name.len() + 24)
            })?;
            if entries.len() == before || entries.len() >= MAX_ENTRIES || last == next {
                break;
            }
            next = last;
        }
        let listing = Arc::new(entries);
        let mut listings = self.listings();
        if listings.len() >= MAX_LISTINGS && !listings.contains_key(&(inode, handle)) {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        listings.insert((inode, handle), listing.clone());
        Ok(listing)
    }
}

impl<F: BackendFileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static> BackendFileSystem for StableDirs<F> {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        self.inner.mount()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[allow(clippy::too_many_arguments)]
impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for StableDirs<F> {
    type Inode = u64;
    type Handle = u64;

    /// Positions are places in the listing: entry `i` says the next is `i + 1`.
    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let listing = self.listing(ctx, inode, handle, offset)?;
        let first = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, listed) in listing.iter().enumerate().skip(first) {
            let entry = DirEntry {
                ino: listed.ino,
                offset: index as u64 + 1,
                type_: listed.type_,
                name: listed.name.to_bytes(),
            };
            if add_entry(entry)? == 0 {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let listing = self.listing(ctx, inode, handle, offset)?;
        let first = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, listed) in listing.iter().enumerate().skip(first) {
            // Gone since the listing was read: left out.
            let Ok(entry) = self.inner.lookup(ctx, inode, &listed.name) else {
                continue;
            };
            let looked_up = entry.inode;
            let dir_entry = DirEntry {
                ino: listed.ino,
                offset: index as u64 + 1,
                type_: listed.type_,
                name: listed.name.to_bytes(),
            };
            if add_entry(dir_entry, entry)? == 0 {
                // Not sent: the lookup's reference is given back.
                self.inner.forget(ctx, looked_up, 1);
                break;
            }
        }
        Ok(())
    }

    /// The guest unmounted. The passthrough file system would start afresh
    /// by opening its root by path again, which the jail has hidden (and
    /// which would change the process's umask): its inodes are kept instead,
    /// so a later mount finds the root where it was.
    fn destroy(&self) {
        self.listings().clear();
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        self.listings().remove(&(inode, handle));
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.may_look_up(parent, name)?;
        match replay::requested(ctx) {
            Some(asked) => replay::lookup(&self.inner, ctx, asked, parent, name),
            None => self.inner.lookup(ctx, parent, name),
        }
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        if !replay::is_stand_in(inode) {
            self.inner.forget(ctx, inode, count)
        }
    }

    fn batch_forget(&self, ctx: &Context, mut requests: Vec<(Self::Inode, u64)>) {
        requests.retain(|(inode, _)| !replay::is_stand_in(*inode));
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        if replay::is_stand_in(inode) {
            return Ok(replay::stand_in_getattr(inode));
        }
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.may_change(inode)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::setattr(&self.inner, ctx, asked, inode, handle);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.may_change(parent)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::create(&self.inner, ctx, asked, parent, name, libc::S_IFLNK);
        }
        self.inner.symlink(ctx, linkname, parent, name)
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
        self.may_change(inode)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::create(&self.inner, ctx, asked, inode, name, mode);
        }
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.may_change(parent)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::create(&self.inner, ctx, asked, parent, name, libc::S_IFDIR);
        }
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.may_change(parent)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::remove(&self.inner, ctx, asked, parent, name);
        }
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.may_change(parent)?;
        if let Some(asked) = replay::requested(ctx) {
            return replay::remove(&self.inner, ctx, asked, parent, name);
        }
        self.inner.rmdir(ctx, parent, name)
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
        self.may_change(olddir)?;
        self.may_change(newdir)?;
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        self.may_change(newparent)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.may_change(parent)?;
        self.inner.create(ctx, parent, name, args)
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
        self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags)
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
        self.inner.write(
            ctx,
            inode,
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
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
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
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
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
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.may_change(inode)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.may_change(inode)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
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
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
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
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
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
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
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
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: Self::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
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
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
