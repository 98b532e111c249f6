//! Shared directories that travel with their VM (a volume of hull's own,
//! which only the host it lies on sees): the source walks each one and
//! sends what changed since its last walk, a round at a time beside the
//! memory, and a last time with the guest paused. A change is seen as
//! rsync and git's index see it: by inode, size and change time (ctime,
//! which moves with every write and which no user can set back). An entry
//! whose ctime is too recent to tell a later write in the same clock tick
//! apart is sent again next walk.
//!
//! Files travel whole (a rename is a removal and a new file; hard links
//! arrive as separate files; extended attributes, sockets, FIFOs and
//! device nodes stay behind). The destination writes into its own, empty
//! directory, each name checked to be a plain one and reached without
//! following any symbolic link: what the source sends cannot write outside
//! the directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps};
use serde::{Deserialize, Serialize};

use super::stream::{put_frame, put_tree_data, Frame, MAX_DISK_BYTES};
use super::MigrationError;

/// The longest path a tree's entry may have (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest name in a path.
const MAX_NAME: usize = 255;
/// The largest file that travels.
const MAX_FILE: u64 = 1 << 44;
/// The most directories a destination keeps times for until the end.
const MAX_DIRS: usize = 1 << 22;
/// A ctime within this of the walk's clock may hide a later write in the
/// same tick.
const RACY_NANOS: i128 = 100_000_000;

/// An entry's owner, permissions and times, as they travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
}

/// What an entry of a travelling tree becomes on the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir(Meta),
    /// A file of `size` bytes, whose data follows in `TreeData` frames.
    File {
        meta: Meta,
        size: u64,
    },
    Symlink {
        meta: Meta,
        target: Vec<u8>,
    },
    /// The name and everything below it are gone.
    Remove,
}

/// One entry of shared directory `share`, at `path` from its root
/// (names joined by `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    pub share: u8,
    pub path: Vec<u8>,
    pub kind: EntryKind,
}

/// How an entry was when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    kind: FileType,
    ino: u64,
    size: i64,
    ctime: (i64, u32),
}

fn stamp(stat: &Stat) -> Stamp {
    Stamp {
        kind: FileType::from_raw_mode(stat.st_mode),
        ino: stat.st_ino,
        size: stat.st_size,
        ctime: (stat.st_ctime, stat.st_ctime_nsec as u32),
    }
}

fn meta(stat: &Stat) -> Meta {
    Meta {
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        atime: (stat.st_atime, stat.st_atime_nsec as u32),
        mtime: (stat.st_mtime, stat.st_mtime_nsec as u32),
    }
}

/// Whether a tree keeps entries of this kind.
fn travels(kind: FileType) -> bool {
    matches!(kind, FileType::Directory | FileType::RegularFile | FileType::Symlink)
}

/// Opens `path` (relative, plain names) beneath `root`, never through a
/// symbolic link; `"."` is `root` itself.
pub(crate) fn open_beneath(root: impl AsFd, path: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    Ok(rustix::fs::openat2(
        root,
        path,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        path.extend_from_slice(dir);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Whether `path` is plain names joined by `/`: none empty, `.` or `..`,
/// no NUL, within the length limits.
pub fn plain_path(path: &[u8]) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.contains(&0)
        && path
            .split(|&b| b == b'/')
            .all(|name| !name.is_empty() && name.len() <= MAX_NAME && name != b"." && name != b"..")
}

/// Whether `path` is `ancestor` or below it.
fn under(path: &[u8], ancestor: &[u8]) -> bool {
    path.starts_with(ancestor) && (path.len() == ancestor.len() || path[ancestor.len()] == b'/')
}

/// What changed in a tree since the destination was last sent it.
#[derive(Debug, Default)]
pub struct TreeChanges {
    /// Names gone (or become another kind), outermost only.
    removed: Vec<Vec<u8>>,
    /// New or changed entries, each directory before what is in it.
    changed: Vec<(Vec<u8>, Stat)>,
}

impl TreeChanges {
    /// Roughly what sending them takes: the files' bytes, and a little
    /// for every entry.
    pub fn bytes(&self) -> u64 {
        let entries = (self.removed.len() + self.changed.len()) as u64 * 64;
        let data: u64 = self
            .changed
            .iter()
            .map(|(_, stat)| match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => stat.st_size.max(0) as u64,
                _ => 0,
            })
            .sum();
        entries + data
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What one round of a tree sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSent {
    pub entries: u64,
    pub file_bytes: u64,
    /// Bytes LZ4 saved.
    pub saved: u64,
}

/// A shared directory the source sends, by its number among the VM's
/// shares (`/0` is 0).
pub struct OutgoingTree {
    pub share: u8,
    root: OwnedFd,
    /// What the destination holds, by path.
    sent: HashMap<Vec<u8>, Stamp>,
}

impl OutgoingTree {
    /// The directory open at `root` (any descriptor of it, `O_PATH` too).
    pub fn new(share: u8, root: impl AsFd) -> std::io::Result<OutgoingTree> {
        let root = open_beneath(root, b"", OFlags::PATH | OFlags::DIRECTORY)?;
        Ok(OutgoingTree {
            share,
            root,
            sent: HashMap::new(),
        })
    }

    /// Walks the tree: every entry that travels, each directory before
    /// what is in it.
    fn walk(&self) -> std::io::Result<Vec<(Vec<u8>, Stat)>> {
        let mut found = Vec::new();
        let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir) = dirs.pop() {
            let fd = match open_beneath(&self.root, &dir, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                // Gone, or become a link, since its parent was read: the
                // next walk sees it as it is then.
                Err(e) if !dir.is_empty() && is_gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let mut names = names_in(&fd)?;
            // Sorted, so that a walk is the same order each time.
            names.sort_unstable();
            let mut subdirs = Vec::new();
            for name in names {
                let stat = match rustix::fs::statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                let kind = FileType::from_raw_mode(stat.st_mode);
                if !travels(kind) {
                    continue;
                }
                let path = join(&dir, &name);
                if path.len() > MAX_PATH {
                    return Err(std::io::Error::other(format!(
                        "a path of {} bytes in the tree (at most {MAX_PATH})",
                        path.len()
                    )));
                }
                if kind == FileType::Directory {
                    subdirs.push(path.clone());
                }
                found.push((path, stat));
            }
            // Depth first, in name order.
            dirs.extend(subdirs.into_iter().rev());
        }
        Ok(found)
    }

    /// What changed since the last `send`.
    pub fn changes(&self) -> std::io::Result<TreeChanges> {
        let now = walk_clock();
        let found = self.walk()?;
        let seen: HashSet<&[u8]> = found.iter().map(|(path, _)| path.as_slice()).collect();
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let mut changed = Vec::new();
        for (path, stat) in &found {
            let now_stamp = stamp(stat);
            match self.sent.get(path) {
                Some(was) if *was == now_stamp && !racy(now_stamp.ctime, now) => {}
                Some(was) if was.kind != now_stamp.kind => {
                    removed.push(path.clone());
                    changed.push((path.clone(), *stat));
                }
                _ => changed.push((path.clone(), *stat)),
            }
        }
        removed.extend(self.sent.keys().filter(|path| !seen.contains(path.as_slice())).cloned());
        removed.sort_unstable();
        removed.dedup();
        // Outermost only: what is below goes with it.
        let mut outermost: Vec<Vec<u8>> = Vec::new();
        for path in removed {
            if !outermost.last().is_some_and(|last| under(&path, last)) {
                outermost.push(path);
            }
        }
        Ok(TreeChanges {
            removed: outermost,
            changed,
        })
    }

    /// Sends `changes` (as entries and file data) into `w`.
    pub fn send(
        &mut self,
        w: &mut impl Write,
        changes: &TreeChanges,
        compress: bool,
    ) -> Result<TreeSent, MigrationError> {
        let failed = |path: &[u8], e: std::io::Error| {
            MigrationError::Tree(format!("share {}: {}: {e}", self.share, String::from_utf8_lossy(path)))
        };
        let mut sent = TreeSent::default();
        for path in &changes.removed {
            put_frame(
                w,
                &Frame::TreeEntry(TreeEntry {
                    share: self.share,
                    path: path.clone(),
                    kind: EntryKind::Remove,
                }),
            )?;
            self.sent.retain(|known, _| !under(known, path));
            sent.entries += 1;
        }
        let now = walk_clock();
        for (path, stat) in &changes.changed {
            let kind = FileType::from_raw_mode(stat.st_mode);
            let (entry, stamp) = match kind {
                FileType::Directory => (EntryKind::Dir(meta(stat)), stamp(stat)),
                FileType::Symlink => {
                    let (parent, name) = split(path);
                    let target = open_beneath(&self.root, parent, OFlags::PATH | OFlags::DIRECTORY)
                        .and_then(|dir| Ok(rustix::fs::readlinkat(&dir, name, Vec::new())?));
                    match target {
                        Ok(target) => (
                            EntryKind::Symlink {
                                meta: meta(stat),
                                target: target.into_bytes(),
                            },
                            stamp(stat),
                        ),
                        Err(e) if is_gone(&e) => continue,
                        Err(e) => return Err(failed(path, e)),
                    }
                }
                _ => {
                    let file = match open_beneath(&self.root, path, OFlags::RDONLY) {
                        Ok(file) => File::from(file),
                        Err(e) if is_gone(&e) => continue,
                        Err(e) => return Err(failed(path, e)),
                    };
                    // As it is now: a write from here on moves its ctime.
                    let stat = rustix::fs::fstat(&file).map_err(|e| failed(path, e.into()))?;
                    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                        continue;
                    }
                    let size = stat.st_size.max(0) as u64;
                    put_frame(
                        w,
                        &Frame::TreeEntry(TreeEntry {
                            share: self.share,
                            path: path.clone(),
                            kind: EntryKind::File {
                                meta: meta(&stat),
                                size,
                            },
                        }),
                    )?;
                    let (saved, whole) = self.send_data(w, &file, size, compress).map_err(|e| failed(path, e))?;
                    sent.entries += 1;
                    sent.file_bytes += size;
                    sent.saved += saved;
                    let mut stamp = stamp(&stat);
                    // Cut short (the file shrank meanwhile), or perhaps
                    // written again in the same tick: sent again next walk.
                    if !whole || racy(stamp.ctime, now) {
                        stamp.ctime = (i64::MIN, 0);
                    }
                    self.sent.insert(path.clone(), stamp);
                    continue;
                }
            };
            put_frame(
                w,
                &Frame::TreeEntry(TreeEntry {
                    share: self.share,
                    path: path.clone(),
                    kind: entry,
                }),
            )?;
            sent.entries += 1;
            self.sent.insert(path.clone(), stamp);
        }
        Ok(sent)
    }

    /// Sends `size` bytes of `file`, zeros where it ended early; the bytes
    /// LZ4 saved, and whether the file held them all.
    fn send_data(&self, w: &mut impl Write, file: &File, size: u64, compress: bool) -> std::io::Result<(u64, bool)> {
        let mut saved = 0;
        let mut whole = true;
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(MAX_DISK_BYTES as u64) as usize;
            let mut data = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match file.read_at(&mut data[got..], at + got as u64) {
                    Ok(0) => {
                        whole = false;
                        break;
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            saved += put_tree_data(w, self.share, at, data, compress).map_err(std::io::Error::other)?;
            at += len as u64;
        }
        Ok((saved, whole))
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// The realtime clock a walk compares ctimes with, in nanoseconds
/// (libc's, through the vDSO: rustix's own would read the auxiliary
/// vector first, with calls no seccomp filter of the VMM's allows).
fn walk_clock() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn racy(ctime: (i64, u32), now: i128) -> bool {
    i128::from(ctime.0) * 1_000_000_000 + i128::from(ctime.1) + RACY_NANOS > now
}

/// `path`'s directory (empty: the root) and last name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}

/// A file being received: its data comes in order.
struct Receiving {
    share: u8,
    path: Vec<u8>,
    file: File,
    size: u64,
    written: u64,
    meta: Meta,
}

/// The destination's side: the shared directories that take what comes,
/// by share number (`None`: that share takes nothing).
#[derive(Default)]
pub struct IncomingTrees {
    roots: Vec<Option<OwnedFd>>,
    receiving: Option<Receiving>,
    /// Directories whose times are set last (what is made in one moves
    /// its times), by share and path.
    dirs: BTreeMap<(u8, Vec<u8>), Meta>,
}

impl IncomingTrees {
    /// Over `roots` (each a descriptor of a share's directory, which
    /// should be empty), by share number.
    pub fn new(roots: Vec<Option<OwnedFd>>) -> IncomingTrees {
        IncomingTrees {
            roots,
            ..IncomingTrees::default()
        }
    }

    fn root(&self, share: u8) -> Result<&OwnedFd, MigrationError> {
        match self.roots.get(usize::from(share)) {
            Some(Some(root)) => Ok(root),
            _ => Err(MigrationError::Tree(format!(
                "the source sent files of share {share}, which does not travel"
            ))),
        }
    }

    /// Applies one entry.
    pub fn entry(&mut self, entry: TreeEntry) -> Result<(), MigrationError> {
        if self.receiving.is_some() {
            return Err(MigrationError::Tree(
                "an entry before the last file's data was all in".into(),
            ));
        }
        if !plain_path(&entry.path) {
            return Err(MigrationError::Tree(format!(
                "share {}: \"{}\" is not a plain path",
                entry.share,
                String::from_utf8_lossy(&entry.path[..entry.path.len().min(256)])
            )));
        }
        let share = entry.share;
        let failed = |e: std::io::Error| {
            MigrationError::Tree(format!("share {share}: {}: {e}", String::from_utf8_lossy(&entry.path)))
        };
        let root = self.root(share)?;
        let (parent, name) = split(&entry.path);
        let dir = open_beneath(root, parent, OFlags::PATH | OFlags::DIRECTORY).map_err(failed)?;
        match entry.kind {
            EntryKind::Remove => {
                remove_all(&dir, name).map_err(failed)?;
                self.dirs
                    .retain(|(s, path), _| *s != share || !under(path, &entry.path));
            }
            EntryKind::Dir(meta) => {
                match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        remove_all(&dir, name).map_err(failed)?;
                        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(|e| failed(e.into()))?;
                    }
                    Err(_) => {
                        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(|e| failed(e.into()))?
                    }
                }
                let made = open_beneath(&dir, name, OFlags::RDONLY | OFlags::DIRECTORY).map_err(failed)?;
                own(&made, &meta).map_err(failed)?;
                if self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&(share, entry.path.clone())) {
                    return Err(MigrationError::Tree(format!("more than {MAX_DIRS} directories")));
                }
                self.dirs.insert((share, entry.path), meta);
            }
            EntryKind::Symlink { meta, target } => {
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(failed(std::io::Error::other("a link's target is not a path")));
                }
                remove_all(&dir, name).map_err(failed)?;
                rustix::fs::symlinkat(target.as_slice(), &dir, name).map_err(|e| failed(e.into()))?;
                rustix::fs::chownat(
                    &dir,
                    name,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| failed(e.into()))?;
                rustix::fs::utimensat(&dir, name, &times(&meta), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| failed(e.into()))?;
            }
            EntryKind::File { meta, size } => {
                if size > MAX_FILE {
                    return Err(failed(std::io::Error::other(format!("a file of {size} bytes"))));
                }
                match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile => {
                        remove_all(&dir, name).map_err(failed)?
                    }
                    _ => {}
                }
                let file = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| failed(e.into()))?;
                let receiving = Receiving {
                    share,
                    path: entry.path,
                    file: File::from(file),
                    size,
                    written: 0,
                    meta,
                };
                match size {
                    0 => finish_file(receiving)?,
                    _ => self.receiving = Some(receiving),
                }
            }
        }
        Ok(())
    }

    /// Takes the next `data` of the file being received.
    pub fn data(&mut self, share: u8, offset: u64, data: &[u8]) -> Result<(), MigrationError> {
        let Some(receiving) = self.receiving.as_mut() else {
            return Err(MigrationError::Tree("file data without its file".into()));
        };
        let end = offset.checked_add(data.len() as u64);
        if receiving.share != share || offset != receiving.written || end.is_none_or(|end| end > receiving.size) {
            return Err(MigrationError::Tree(format!(
                "share {share}: {} bytes at {offset} of {}, which holds {} and has {} so far",
                data.len(),
                String::from_utf8_lossy(&receiving.path),
                receiving.size,
                receiving.written
            )));
        }
        receiving.file.write_all_at(data, offset).map_err(|e| {
            MigrationError::Tree(format!(
                "share {share}: {}: {e}",
                String::from_utf8_lossy(&receiving.path)
            ))
        })?;
        receiving.written += data.len() as u64;
        if receiving.written == receiving.size {
            if let Some(done) = self.receiving.take() {
                finish_file(done)?;
            }
        }
        Ok(())
    }

    /// Once everything came: the directories' times, then every share on
    /// its storage.
    pub fn finish(&mut self) -> Result<(), MigrationError> {
        if let Some(receiving) = &self.receiving {
            return Err(MigrationError::Tree(format!(
                "{} ended with {} of its {} bytes",
                String::from_utf8_lossy(&receiving.path),
                receiving.written,
                receiving.size
            )));
        }
        // Deepest first: setting a directory's times changes not its parent's.
        for ((share, path), meta) in std::mem::take(&mut self.dirs).iter().rev() {
            let root = self.root(*share)?;
            let failed = |e: std::io::Error| {
                MigrationError::Tree(format!("share {share}: {}: {e}", String::from_utf8_lossy(path)))
            };
            let dir = open_beneath(root, path, OFlags::RDONLY | OFlags::DIRECTORY).map_err(failed)?;
            rustix::fs::futimens(&dir, &times(meta)).map_err(|e| failed(e.into()))?;
        }
        for root in self.roots.iter().flatten() {
            // syncfs(2) takes no `O_PATH` descriptor.
            open_beneath(root, b"", OFlags::RDONLY | OFlags::DIRECTORY)
                .and_then(|dir| Ok(rustix::fs::syncfs(dir)?))
                .map_err(|e| MigrationError::Tree(format!("syncing a share: {e}")))?;
        }
        Ok(())
    }
}

fn times(meta: &Meta) -> Timestamps {
    let at = |(sec, nsec): (i64, u32)| Timespec {
        tv_sec: sec,
        tv_nsec: i64::from(nsec.min(999_999_999)),
    };
    Timestamps {
        last_access: at(meta.atime),
        last_modification: at(meta.mtime),
    }
}

/// Gives `fd` the owner and permissions of `meta` (owner first: a chown
/// clears setuid bits).
fn own(fd: impl AsFd, meta: &Meta) -> std::io::Result<()> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    Ok(())
}

fn finish_file(receiving: Receiving) -> Result<(), MigrationError> {
    let failed = |e: std::io::Error| {
        MigrationError::Tree(format!(
            "share {}: {}: {e}",
            receiving.share,
            String::from_utf8_lossy(&receiving.path)
        ))
    };
    own(&receiving.file, &receiving.meta).map_err(failed)?;
    rustix::fs::futimens(&receiving.file, &times(&receiving.meta)).map_err(|e| failed(e.into()))
}

/// The names in directory `dir` (open for reading), `.` and `..` left out.
fn names_in(dir: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(dir.try_clone()?)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir`, and all below it if it is a directory; a
/// name that is not there is no error.
fn remove_all(dir: impl AsFd, name: &[u8]) -> std::io::Result<()> {
    let stat = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?);
    }
    let inner = open_beneath(&dir, name, OFlags::RDONLY | OFlags::DIRECTORY)?;
    for child in names_in(&inner)? {
        remove_all(&inner, &child)?;
    }
    Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::super::stream::read_frame;
    use super::*;

    fn tree(root: &std::path::Path) -> OutgoingTree {
        OutgoingTree::new(1, File::open(root).unwrap()).unwrap()
    }

    fn incoming(root: &std::path::Path) -> IncomingTrees {
        IncomingTrees::new(vec![None, Some(File::open(root).unwrap().into())])
    }

    /// Sends what changed in `from` into `to`'s directory; the entries sent.
    fn round(from: &mut OutgoingTree, to: &mut IncomingTrees) -> u64 {
        let changes = from.changes().unwrap();
        let mut bytes = Vec::new();
        let sent = from.send(&mut bytes, &changes, true).unwrap();
        let mut r = bytes.as_slice();
        while let Some(frame) = read_frame(&mut r).unwrap() {
            match frame {
                Frame::TreeEntry(entry) => to.entry(entry).unwrap(),
                Frame::TreeData { share, offset, data } => to.data(share, offset, &data).unwrap(),
                other => panic!("{other:?}"),
            }
        }
        sent.entries
    }

    /// Every entry below `root`: its path, kind, content or target, mode,
    /// owner and mtime.
    fn listing(root: &std::path::Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut all = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    dirs.push(path.clone());
                    "dir".to_string()
                } else if meta.file_type().is_symlink() {
                    format!("-> {}", std::fs::read_link(&path).unwrap().display())
                } else {
                    format!("{:?}", std::fs::read(&path).unwrap())
                };
                all.push(format!(
                    "{} {what} {:o} {}:{} {}.{}",
                    path.strip_prefix(root).unwrap().display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    meta.mtime_nsec()
                ));
            }
        }
        all.sort();
        all
    }

    #[test]
    fn a_tree_and_its_changes_arrive_as_they_are() {
        let (from_dir, to_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (from_dir.path(), to_dir.path());
        std::fs::create_dir_all(from.join("a/b/c")).unwrap();
        std::fs::write(from.join("a/b/c/small"), "hello").unwrap();
        std::fs::write(from.join("empty"), "").unwrap();
        let big: Vec<u8> = (0..(3 * MAX_DISK_BYTES + 77)).map(|i| (i % 251) as u8).collect();
        std::fs::write(from.join("a/big"), &big).unwrap();
        std::os::unix::fs::symlink("b/c/small", from.join("a/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.join("outside")).unwrap();
        std::fs::set_permissions(from.join("empty"), std::os::unix::fs::PermissionsExt::from_mode(0o4751)).unwrap();
        // Older than a clock tick: not sent again unless changed.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let (mut source, mut dest) = (tree(from), incoming(to));
        round(&mut source, &mut dest);
        dest.finish().unwrap();
        assert_eq!(listing(from), listing(to));

        // Changes: a file rewritten, one removed, a directory removed, a
        // file become a directory, new entries.
        let unchanged = source.changes().unwrap();
        assert!(unchanged.is_empty(), "{unchanged:?}");
        std::fs::write(from.join("a/b/c/small"), "changed").unwrap();
        std::fs::remove_file(from.join("a/link")).unwrap();
        std::fs::remove_dir_all(from.join("a/b")).unwrap();
        std::fs::remove_file(from.join("empty")).unwrap();
        std::fs::create_dir(from.join("empty")).unwrap();
        std::fs::write(from.join("empty/new"), "new").unwrap();
        round(&mut source, &mut dest);
        dest.finish().unwrap();
        assert_eq!(listing(from), listing(to));
        assert!(!to.join("a/b").exists());
    }

    #[test]
    fn a_file_written_in_the_walk_s_tick_goes_again() {
        let (from_dir, to_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (from_dir.path(), to_dir.path());
        std::fs::write(from.join("log"), "1").unwrap();
        let (mut source, mut dest) = (tree(from), incoming(to));
        round(&mut source, &mut dest);
        // Written just now: it cannot be told apart from a later write.
        assert_eq!(round(&mut source, &mut dest), 1);
        std::thread::sleep(std::time::Duration::from_millis(150));
        round(&mut source, &mut dest);
        assert_eq!(round(&mut source, &mut dest), 0);
        dest.finish().unwrap();
        assert_eq!(std::fs::read(to.join("log")).unwrap(), b"1");
    }

    #[test]
    fn a_source_cannot_write_outside_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        let to_dir = tempfile::tempdir().unwrap();
        let to = to_dir.path();
        std::os::unix::fs::symlink(outside.path(), to.join("escape")).unwrap();
        let mut dest = incoming(to);
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime: (0, 0),
            mtime: (0, 0),
        };
        let file = |path: &[u8]| TreeEntry {
            share: 1,
            path: path.to_vec(),
            kind: EntryKind::File { meta, size: 1 },
        };
        for bad in [
            file(b"../x"),
            file(b"a/../../x"),
            file(b"/etc/x"),
            file(b"escape/x"),
            file(b"a//x"),
            file(b"./x"),
            file(b""),
            file(b"x\0y"),
            TreeEntry {
                share: 0,
                path: b"x".to_vec(),
                kind: EntryKind::Dir(meta),
            },
            TreeEntry {
                share: 9,
                path: b"x".to_vec(),
                kind: EntryKind::Remove,
            },
            TreeEntry {
                share: 1,
                path: b"escape/x".to_vec(),
                kind: EntryKind::Remove,
            },
        ] {
            assert!(dest.entry(bad.clone()).is_err(), "{bad:?} was taken");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Data without its file, past its end, out of order: refused.
        assert!(dest.data(1, 0, b"x").is_err());
        dest.entry(file(b"f")).unwrap();
        assert!(dest.data(1, 1, b"x").is_err());
        assert!(dest.data(1, 0, b"xy").is_err());
        assert!(dest.finish().is_err());
        dest.data(1, 0, b"x").unwrap();
        dest.finish().unwrap();
        // A removed link goes, not what it pointed to.
        dest.entry(TreeEntry {
            share: 1,
            path: b"escape".to_vec(),
            kind: EntryKind::Remove,
        })
        .unwrap();
        assert!(outside.path().exists());
    }
}
