//! What the shares' guest view is, moved to the VMM a VM migrates to.
//!
//! No descriptor can cross to another host, so everything is moved by
//! name: the guest sees only [`BoundedInodes`]' inode numbers and file
//! handles, never the passthrough's, so its table moves (each node's place,
//! host identity and guest lookups) and every node arrives *closed*, to be
//! looked up again from the share's root on first use with its host
//! identity checked — the mechanism that already bounds open descriptors.
//! Each file the guest holds open is opened again under the `fh` it holds,
//! with its flags less `O_CREAT`, `O_EXCL` and `O_TRUNC`, before the guest
//! runs (only regular files and directories are ever opened through the
//! passthrough: a FIFO's other end cannot be waited for). `StableDirs`' listings move, so a half-read directory keeps its
//! positions. A file held open whose name is gone (deleted on the host or
//! in the guest) cannot be opened again: the move is refused, naming it.
//!
//! What arrives is untrusted (a peer host sends it): ids in range, parents
//! known, no cycles, names single components, counts bounded.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use serde::{Deserialize, Serialize};

use super::bounded_inodes::{host_id, BoundedInodes, HostId, Node, OpenHandle, Table, ROOT};
use super::stable_dirs::{Listed, StableDirs};

/// The most nodes and handles a share's table may arrive with (a guest
/// that holds more cannot move: its state would pass the stream's bound).
const MAX_NODES: usize = 1 << 22;
const MAX_HANDLES: usize = 1 << 20;

/// One share's moved view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareState {
    pub inodes: InodesState,
    pub listings: Vec<ListingState>,
}

/// `BoundedInodes`' table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodesState {
    /// The share's root as the source saw it (device, inode, type).
    pub root: HostId,
    pub next_id: u64,
    pub next_handle: u64,
    pub nodes: Vec<NodeState>,
    pub handles: Vec<HandleState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: u64,
    /// Parent node and name, if it still has one.
    pub place: Option<(u64, Vec<u8>)>,
    pub host: HostId,
    pub guest_refs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleState {
    pub fh: u64,
    pub node: u64,
    pub flags: u32,
    pub dir: bool,
}

/// One open directory listing of `StableDirs`, by guest inode and handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingState {
    pub dir: u64,
    pub fh: u64,
    /// (host inode, type, name) of each entry, in the order served.
    pub entries: Vec<(u64, u32, Vec<u8>)>,
}

/// A share's path inside it, from its root, for messages (`?` where the
/// chain of places breaks).
fn path_of(table: &Table, id: u64) -> String {
    let mut parts = Vec::new();
    let mut at = id;
    while at != ROOT && parts.len() <= table.nodes.len() {
        match table.nodes.get(&at).and_then(|node| node.place.as_ref()) {
            Some((parent, name)) => {
                parts.push(name.to_string_lossy().into_owned());
                at = *parent;
            }
            None => {
                parts.push("?".into());
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Whether node `id` can be found again from the root by names.
fn reachable(table: &Table, id: u64) -> bool {
    let mut at = id;
    for _ in 0..=table.nodes.len() {
        if at == ROOT {
            return true;
        }
        match table.nodes.get(&at).and_then(|node| node.place.as_ref()) {
            Some((parent, _)) => at = *parent,
            None => return false,
        }
    }
    false
}

impl<F: FileSystem<Inode = u64, Handle = u64>> BoundedInodes<F> {
    /// Why the guest's view cannot move: a file it holds open can no
    /// longer be found by name (it was deleted, or a directory above it).
    pub(super) fn unmovable(&self) -> Option<String> {
        let table = self.table();
        let open = table.handles.values().find(|open| !reachable(&table, open.node))?;
        let host = table.nodes.get(&open.node).map_or((0, 0, 0), |node| node.host);
        Some(format!(
            "a file the container holds open in a shared directory was deleted or moved away \
             (host inode {}, last seen at {})",
            host.1,
            path_of(&table, open.node)
        ))
    }

    /// Puts what the guest wrote through its open files on the storage:
    /// a VMM on another host opens them again (NFS shows another client a
    /// write only once it is flushed).
    pub(super) fn sync_writable(&self) -> io::Result<()> {
        let handles: Vec<OpenHandle> = self.table().handles.values().copied().collect();
        let ctx = Context::default();
        for open in handles {
            if open.dir || open.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
                continue;
            }
            let inner = self.resolve(&ctx, open.node)?;
            self.inner.fsync(&ctx, inner, true, open.inner)?;
        }
        Ok(())
    }

    /// The table, for the VMM the VM moves to; refused (naming the file)
    /// if a file the guest holds open can no longer be found by name.
    pub(super) fn save(&self) -> Result<InodesState, String> {
        if let Some(why) = self.unmovable() {
            return Err(why);
        }
        let table = self.table();
        let root = table.nodes.get(&ROOT).map(|node| node.host).unwrap_or_default();
        let mut nodes: Vec<NodeState> = table
            .nodes
            .iter()
            .map(|(&id, node)| NodeState {
                id,
                place: node
                    .place
                    .as_ref()
                    .map(|(parent, name)| (*parent, name.as_bytes().to_vec())),
                host: node.host,
                guest_refs: node.guest_refs,
            })
            .collect();
        nodes.sort_by_key(|node| node.id);
        let mut handles: Vec<HandleState> = table
            .handles
            .iter()
            .map(|(&fh, open)| HandleState {
                fh,
                node: open.node,
                flags: open.flags,
                dir: open.dir,
            })
            .collect();
        handles.sort_by_key(|handle| handle.fh);
        Ok(InodesState {
            root,
            next_id: table.next_id,
            next_handle: table.next_handle,
            nodes,
            handles,
        })
    }

    /// Takes a table `save` made on the source, into this share that the
    /// guest has not used yet, and opens again every file the guest holds
    /// open. `shown` names the share in errors.
    /// `copied_to`: the share's directory here, when its files travelled
    /// into it (a copy: each node is known here by its name, not by the
    /// source's inode).
    pub(super) fn restore(&self, saved: InodesState, shown: &str, copied_to: Option<&File>) -> Result<(), String> {
        let ctx = Context::default();
        let (ours, _) = self
            .inner
            .getattr(&ctx, ROOT, None)
            .map_err(|e| format!("{shown}: {e}"))?;
        let ours = host_id(&ours);
        let copied = copied_to.map(|root| identities_here(&saved, root, ours));
        // Another host's device number for the same storage: the share's
        // own files are named by this host's (files on mounts below it
        // cannot be told apart and will read as stale).
        let dev = |host: HostId| match &copied {
            Some(here) => here.get(&host).copied().unwrap_or(host),
            None if host.0 == saved.root.0 => (ours.0, host.1, host.2),
            None => host,
        };
        let table = build_table(&saved, ours, dev).map_err(|e| format!("{shown}: the moved table: {e}"))?;
        if copied.is_none() && (ours.1, ours.2) != (saved.root.1, saved.root.2) {
            return Err(format!(
                "{shown} is not the directory the container shared where it ran (another inode)"
            ));
        }
        self.replace_table(table).map_err(|e| format!("{shown}: {e}"))?;
        // Opened again in the order the guest opened them.
        for open in &saved.handles {
            let reopened = self.resolve(&ctx, open.node).and_then(|inner| {
                let handle = match open.dir {
                    true => self.inner.opendir(&ctx, inner, open.flags)?.0,
                    false => {
                        let flags = open.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32);
                        self.inner.open(&ctx, inner, flags, 0)?.0
                    }
                };
                handle.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS))
            });
            let mut table = self.table();
            match reopened {
                Ok(inner) => {
                    table.handles.insert(
                        open.fh,
                        OpenHandle {
                            node: open.node,
                            inner,
                            flags: open.flags,
                            dir: open.dir,
                        },
                    );
                }
                Err(e) => {
                    return Err(format!(
                        "{shown}{}, which the container holds open, cannot be opened again: {e}",
                        path_of(&table, open.node)
                    ))
                }
            }
        }
        Ok(())
    }
}

/// What each node of `saved` is on this host, found by its name below
/// `root` (never through a symbolic link): the source's identity to this
/// host's. A node whose name is gone here keeps the source's (and reads
/// as stale).
fn identities_here(saved: &InodesState, root: &File, ours: HostId) -> HashMap<HostId, HostId> {
    let places: HashMap<u64, &(u64, Vec<u8>)> = saved
        .nodes
        .iter()
        .filter_map(|node| Some((node.id, node.place.as_ref()?)))
        .collect();
    let mut here = HashMap::from([(saved.root, ours)]);
    for node in &saved.nodes {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = node.id;
        let mut length = 0;
        while at != ROOT && length <= crate::migration::trees::MAX_PATH {
            let Some((parent, name)) = places.get(&at) else { break };
            names.push(name);
            length += name.len() + 1;
            at = *parent;
        }
        if at != ROOT || names.is_empty() {
            continue;
        }
        names.reverse();
        let path = names.join(&b'/');
        let found = crate::migration::trees::open_beneath(root, &path, rustix::fs::OFlags::PATH)
            .and_then(|fd| Ok(rustix::fs::fstat(&fd)?));
        if let Ok(stat) = found {
            here.insert(node.host, (stat.st_dev, stat.st_ino, stat.st_mode & libc::S_IFMT));
        }
    }
    here
}

/// A table of closed nodes from what arrived, checked; the open counts
/// are the handles'. `dev` maps the source's host identities to this
/// host's.
fn build_table(saved: &InodesState, root: HostId, dev: impl Fn(HostId) -> HostId) -> Result<Table, String> {
    if saved.nodes.len() > MAX_NODES || saved.handles.len() > MAX_HANDLES {
        return Err(format!(
            "{} nodes and {} handles; at most {MAX_NODES} and {MAX_HANDLES}",
            saved.nodes.len(),
            saved.handles.len()
        ));
    }
    // Room to count on from there without overflowing (the VFS packs a
    // share's inode numbers below 1 << 56).
    if saved.next_id >= 1 << 55 || saved.next_handle == 0 || saved.next_handle >= 1 << 62 {
        return Err("its counters are out of range".into());
    }
    if saved.nodes.iter().any(|node| node.guest_refs >= 1 << 32) {
        return Err("a node's lookup count is out of range".into());
    }
    let mut table = Table::new(root);
    table.next_id = saved.next_id.max(ROOT + 1);
    table.next_handle = saved.next_handle;
    let ids: HashSet<u64> = saved.nodes.iter().map(|node| node.id).collect();
    if ids.len() != saved.nodes.len() {
        return Err("a node is named twice".into());
    }
    for node in &saved.nodes {
        if node.id == ROOT {
            if node.place.is_some() {
                return Err("the root has a parent".into());
            }
            if let Some(root) = table.nodes.get_mut(&ROOT) {
                root.guest_refs = node.guest_refs;
            }
            continue;
        }
        if node.id == 0 || node.id >= table.next_id {
            return Err(format!("node {} is out of range", node.id));
        }
        let place = match &node.place {
            None => None,
            Some((parent, name)) => {
                if !ids.contains(parent) && *parent != ROOT {
                    return Err(format!("node {}'s parent {parent} is unknown", node.id));
                }
                let valid = !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/');
                let name = CString::new(name.clone())
                    .ok()
                    .filter(|_| valid)
                    .ok_or_else(|| format!("node {} has an invalid name", node.id))?;
                Some((*parent, name))
            }
        };
        let host = dev(node.host);
        table.nodes.insert(
            node.id,
            Node {
                inner: None,
                place: None,
                host,
                guest_refs: node.guest_refs,
                opens: 0,
                children: 0,
                used: None,
            },
        );
        table.by_host.entry(host).or_insert(node.id);
        if let Some(place) = place {
            if table.by_place.contains_key(&place) {
                return Err(format!("two nodes have node {}'s place", node.id));
            }
            table.by_place.insert(place.clone(), node.id);
            if let Some(at) = table.nodes.get_mut(&node.id) {
                at.place = Some(place);
            }
        }
    }
    let mut children: HashMap<u64, u64> = HashMap::new();
    for node in table.nodes.values() {
        if let Some((parent, _)) = &node.place {
            *children.entry(*parent).or_default() += 1;
        }
    }
    for (parent, count) in children {
        if let Some(node) = table.nodes.get_mut(&parent) {
            node.children = count;
        }
    }
    // No cycles: every placed node reaches the root. Each node is walked
    // over once: a chain ends at a node already known to reach the root
    // or not (one without a place, or above it), and a node seen twice in
    // one chain is a cycle.
    let mut rooted: HashSet<u64> = HashSet::from([ROOT]);
    let mut stranded: HashSet<u64> = HashSet::new();
    for &id in table.nodes.keys() {
        let mut chain = Vec::new();
        let mut on_chain = HashSet::new();
        let mut at = id;
        while !rooted.contains(&at) && !stranded.contains(&at) {
            let Some((parent, _)) = table.nodes.get(&at).and_then(|node| node.place.as_ref()) else {
                break;
            };
            if !on_chain.insert(at) {
                return Err(format!("node {id}'s places form a cycle"));
            }
            chain.push(at);
            at = *parent;
        }
        match rooted.contains(&at) {
            true => rooted.extend(chain),
            false => {
                stranded.insert(at);
                stranded.extend(chain);
            }
        }
    }
    let mut fhs = HashSet::new();
    for open in &saved.handles {
        if open.fh == 0 || open.fh >= table.next_handle || !fhs.insert(open.fh) {
            return Err(format!("handle {} is out of range or named twice", open.fh));
        }
        if !rooted.contains(&open.node) {
            return Err(format!(
                "handle {} is on node {}, which cannot be found",
                open.fh, open.node
            ));
        }
        if let Some(node) = table.nodes.get_mut(&open.node) {
            node.opens += 1;
        }
    }
    Ok(table)
}

impl<F: FileSystem<Inode = u64, Handle = u64>> StableDirs<F> {
    pub(super) fn save_listings(&self) -> Vec<ListingState> {
        self.listings()
            .iter()
            .map(|(&(dir, fh), listing)| ListingState {
                dir,
                fh,
                entries: listing
                    .iter()
                    .map(|entry| (entry.ino, entry.type_, entry.name.as_bytes().to_vec()))
                    .collect(),
            })
            .collect()
    }

    pub(super) fn restore_listings(&self, saved: Vec<ListingState>) -> Result<(), String> {
        let mut listings = HashMap::new();
        for listing in saved {
            if listings.len() >= super::stable_dirs::MAX_LISTINGS
                || listing.entries.len() > super::stable_dirs::MAX_ENTRIES
            {
                return Err("more directory listings than a share keeps".into());
            }
            let entries = listing
                .entries
                .into_iter()
                .map(|(ino, type_, name)| {
                    let name = CString::new(name).map_err(|_| "a listed name holds a NUL".to_string())?;
                    Ok(Listed { ino, type_, name })
                })
                .collect::<Result<Vec<_>, String>>()?;
            listings.insert((listing.dir, listing.fh), std::sync::Arc::new(entries));
        }
        *self.listings() = listings;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use fuse_backend_rs::api::filesystem::DirEntry;

    use super::super::test_passthrough as passthrough;
    use super::*;

    type Share = StableDirs<BoundedInodes<fuse_backend_rs::passthrough::PassthroughFs<()>>>;

    fn share(dir: &std::path::Path) -> Share {
        StableDirs::new(BoundedInodes::new(passthrough(dir), 4).unwrap(), None)
    }

    fn ctx() -> Context {
        Context::default()
    }

    /// Saved on one VMM's share, taken by another's over the same directory.
    fn moved(from: &Share, dir: &std::path::Path) -> Result<Share, String> {
        let inodes = from.inner().save()?;
        // Through the wire's encoding, as a migration sends it.
        let bytes = postcard::to_stdvec(&ShareState {
            inodes,
            listings: from.save_listings(),
        })
        .unwrap();
        let state: ShareState = postcard::from_bytes(&bytes).unwrap();
        let to = share(dir);
        to.inner().restore(state.inodes, "the share", None)?;
        to.restore_listings(state.listings)?;
        Ok(to)
    }

    fn names(fs: &Share, dir: u64, fh: u64, offset: u64, most: usize) -> Vec<String> {
        let mut names = Vec::new();
        fs.readdir(&ctx(), dir, fh, 4096, offset, &mut |entry: DirEntry| {
            if names.len() == most {
                return Ok(0);
            }
            names.push(String::from_utf8_lossy(entry.name).into_owned());
            Ok(1)
        })
        .unwrap();
        names
    }

    #[test]
    fn open_files_inodes_and_half_read_listings_move_to_another_vmm() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("a")).unwrap();
        for f in 0..10 {
            std::fs::write(tree.path().join(format!("a/f{f}")), format!("file {f}")).unwrap();
        }
        let from = share(tree.path());
        let a = from.lookup(&ctx(), ROOT, c"a").unwrap().inode;
        let f3 = from.lookup(&ctx(), a, c"f3").unwrap().inode;
        let flags = (libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_TRUNC) as u32;
        let (fh, _, _) = from.open(&ctx(), f3, flags, 0).unwrap();
        let fh = fh.unwrap();
        std::fs::write(tree.path().join("a/f3"), "written after the open").unwrap();
        // More inodes than the share keeps open: some arrive long closed.
        for f in 4..10 {
            from.lookup(&ctx(), a, &CString::new(format!("f{f}")).unwrap()).unwrap();
        }
        let (dir_fh, _) = from.opendir(&ctx(), a, 0).unwrap();
        let dir_fh = dir_fh.unwrap();
        let first = names(&from, a, dir_fh, 0, 4);
        assert_eq!(first.len(), 4);
        let rest_before = names(&from, a, dir_fh, 4, usize::MAX);

        from.inner().sync_writable().unwrap();
        let to = moved(&from, tree.path()).unwrap();
        // The guest's numbers name the same files: its handle answers, and
        // its inodes are the host files they were.
        let (attr, _) = to.getattr(&ctx(), f3, Some(fh)).unwrap();
        assert_eq!(attr.st_ino, std::fs::metadata(tree.path().join("a/f3")).unwrap().ino());
        // Opened again without truncating it.
        assert_eq!(attr.st_size, 22);
        assert_eq!(to.inner().table().handles[&fh].flags, flags);
        assert_eq!(to.lookup(&ctx(), a, c"f3").unwrap().inode, f3);
        // The half-read listing goes on where it was, though the host's
        // directory changed meanwhile.
        std::fs::remove_file(tree.path().join("a/f9")).unwrap();
        assert_eq!(names(&to, a, dir_fh, 4, usize::MAX), rest_before);
        // Handles the guest never had are not there; new ones do not clash.
        assert_eq!(
            to.getattr(&ctx(), f3, Some(fh + 100)).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let (again, _, _) = to.open(&ctx(), f3, libc::O_RDONLY as u32, 0).unwrap();
        assert!(again.unwrap() > dir_fh);
        to.release(&ctx(), f3, 0, fh, false, false, None).unwrap();
        to.releasedir(&ctx(), a, 0, dir_fh).unwrap();
    }

    #[test]
    fn a_file_held_open_whose_name_is_gone_refuses_the_move_by_name() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("log"), "x").unwrap();
        let from = share(tree.path());
        let log = from.lookup(&ctx(), ROOT, c"log").unwrap().inode;
        from.open(&ctx(), log, libc::O_RDONLY as u32, 0).unwrap();
        from.unlink(&ctx(), ROOT, c"log").unwrap();
        let refused = from.inner().save().unwrap_err();
        assert!(
            refused.contains("deleted or moved away") && refused.contains("/?"),
            "{refused}"
        );
    }

    #[test]
    fn another_directory_under_the_same_path_is_refused() {
        let tree = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let from = share(tree.path());
        from.lookup(&ctx(), ROOT, c".").unwrap();
        let saved = from.inner().save().unwrap();
        let refused = share(other.path()).inner().restore(saved, "/srv", None).unwrap_err();
        assert!(refused.contains("/srv is not the directory"), "{refused}");
    }

    #[test]
    fn hostile_tables_are_refused_without_panicking() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("f"), "x").unwrap();
        let from = share(tree.path());
        let f = from.lookup(&ctx(), ROOT, c"f").unwrap().inode;
        from.open(&ctx(), f, libc::O_RDONLY as u32, 0).unwrap();
        let good = from.inner().save().unwrap();
        let node = |id, place: Option<(u64, &[u8])>| NodeState {
            id,
            place: place.map(|(p, n)| (p, n.to_vec())),
            host: (1, 1, libc::S_IFREG),
            guest_refs: 1,
        };
        let mut cases: Vec<(&str, InodesState)> = Vec::new();
        let mut with = |what, change: &dyn Fn(&mut InodesState)| {
            let mut state = good.clone();
            change(&mut state);
            cases.push((what, state));
        };
        with("cycle", &|s| {
            s.nodes.push(node(7, Some((8, b"x"))));
            s.nodes.push(node(8, Some((7, b"y"))));
            s.next_id = 9;
        });
        with("unknown parent", &|s| s.nodes.push(node(5, Some((99, b"x")))));
        with("a slash in a name", &|s| s.nodes.push(node(5, Some((ROOT, b"a/b")))));
        with("dot-dot", &|s| s.nodes.push(node(5, Some((ROOT, b"..")))));
        with("a NUL", &|s| s.nodes.push(node(5, Some((ROOT, b"a\0b")))));
        with("id past next_id", &|s| s.nodes.push(node(1 << 40, None)));
        with("id twice", &|s| {
            let again = s.nodes.last().cloned().unwrap();
            s.nodes.push(again);
        });
        with("place twice", &|s| {
            let mut again = s.nodes.last().cloned().unwrap();
            again.id = 9;
            s.next_id = 10;
            s.nodes.push(again);
        });
        with("root with a parent", &|s| s.nodes.push(node(ROOT, Some((ROOT, b"r")))));
        with("fh past next_handle", &|s| s.handles[0].fh = s.next_handle + 1);
        with("fh zero", &|s| s.handles[0].fh = 0);
        with("fh twice", &|s| {
            let again = s.handles[0].clone();
            s.handles.push(again);
        });
        with("handle on an unknown node", &|s| s.handles[0].node = 77);
        with("huge counters", &|s| s.next_id = u64::MAX);
        with("a handle counter about to overflow", &|s| s.next_handle = u64::MAX);
        with("a lookup count about to overflow", &|s| {
            s.nodes[0].guest_refs = u64::MAX
        });
        for (what, state) in cases {
            let refused = share(tree.path()).inner().restore(state, "the share", None);
            assert!(refused.is_err(), "{what} was taken");
        }
        // The unchanged table is taken, once: a share in use takes none.
        let to = share(tree.path());
        to.inner().restore(good.clone(), "the share", None).unwrap();
        assert!(to
            .inner()
            .restore(good, "the share", None)
            .unwrap_err()
            .contains("in use"));
    }

    #[test]
    fn a_long_chain_of_nodes_is_checked_in_one_walk() {
        // 200,000 nodes, each the parent of the next, the top one without a
        // place: every node's walk would climb the whole chain again.
        let tree = tempfile::tempdir().unwrap();
        let mut state = share(tree.path()).inner().save().unwrap();
        const LONG: u64 = 200_000;
        for id in 2..2 + LONG {
            state.nodes.push(NodeState {
                id,
                place: (id > 2).then(|| (id - 1, b"d".to_vec())),
                host: (1, id, libc::S_IFDIR),
                guest_refs: 1,
            });
        }
        state.next_id = 2 + LONG;
        let started = std::time::Instant::now();
        share(tree.path()).inner().restore(state, "the share", None).unwrap();
        eprintln!("{LONG} chained nodes checked in {:?}", started.elapsed());
    }
}
