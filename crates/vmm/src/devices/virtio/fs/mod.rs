//! virtio-fs: host directories shared into the guest (bind mounts), served
//! inside hull-vmm by `fuse-backend-rs` (its passthrough file system under
//! its VFS, as Dragonball does). An external vhost-user virtiofsd would
//! have to map guest memory itself, and a clone's memory is a private
//! copy-on-write mapping no other process can see.
//!
//! A VM has one virtio-fs device (tag [`TAG`]) from boot, so every clone of
//! a template has it; the directories it shares are given when the clone
//! starts and appear in the guest as `/0`, `/1`, ... of that one file
//! system. Each is reached by a path with no symbolic link in it (one
//! `openat2`: a path on storage others write cannot be redirected after
//! hulld checked it) and opened as a detached mount of its own (`open_tree`),
//! `nodev`, `nosuid` and, for `:ro`, read-only: the host kernel refuses a
//! write, whatever the guest does, and device nodes a guest makes cannot
//! be opened through it.

mod bounded_inodes;
mod bridge;
mod persist;
mod replay;
mod single_file;
mod stable_dirs;

use std::ffi::CString;
use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::guest_memory::GuestMemoryMmap;
use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use virtio_queue::Queue;

use super::{VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1};

/// `path` opened for reference only (`O_PATH`), refused if a symbolic
/// link is anywhere in it: hull gives resolved paths, and a share's path
/// may lie on storage others write (another host's hulld checked it on
/// shared storage), so a link swapped in after that check must not lead
/// the share elsewhere. One `openat2` resolves it atomically.
fn open_without_symlinks(path: &Path) -> std::io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: open_how is plain data; zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid C string and open_how of the size passed; the
    // returned descriptor is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) => {
                std::io::Error::other("a symbolic link is in the path (a share is given by its resolved path)")
            }
            _ => e,
        });
    }
    // SAFETY: openat2 returned a new descriptor.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// What is served for `path`: the directory itself, or a file's
/// directory and the file that alone is seen in it. The directory comes
/// back open (`O_PATH`), reached with no symbolic link.
fn split_file(path: &Path) -> std::io::Result<(File, Option<single_file::OnlyFile>)> {
    let opened = open_without_symlinks(path)?;
    let seen = opened.metadata()?;
    if seen.is_dir() {
        return Ok((opened, None));
    }
    if !seen.is_file() {
        return Err(std::io::Error::other("neither a directory nor a file"));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("a file without a directory"));
    };
    let dir = open_without_symlinks(dir)?;
    let name = CString::new(name.as_encoded_bytes()).map_err(std::io::Error::other)?;
    // The name in the directory opened must still be the file seen.
    // SAFETY: a zeroed stat for fstatat to fill; a valid C string.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let found = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
    use std::os::unix::fs::MetadataExt;
    if found != 0 || stat.st_ino != seen.ino() || stat.st_dev != seen.dev() {
        return Err(std::io::Error::other("the file changed while it was opened"));
    }
    Ok((dir, Some(single_file::OnlyFile::new(name))))
}

/// The tag the guest mounts (`mount -t virtiofs hull /dir`).
pub const TAG: &str = "hull";
/// The most directories one VM shares.
pub const MAX_SHARES: usize = 64;
/// Open files a VMM that shares directories may hold: the inodes below,
/// and the files its guest holds open.
pub const OPEN_FILES: u64 = 1 << 20;
/// The most inodes a VM's shares keep a host descriptor for at once,
/// split evenly between its shares (`bounded_inodes`); the guest may hold
/// any number. `HULL_FS_OPEN_INODES` sets another figure.
pub const OPEN_INODES: usize = 1 << 16;
pub const OPEN_INODES_ENV: &str = "HULL_FS_OPEN_INODES";
/// How long the guest may trust what it looked up: a host-side change is
/// seen within this (Docker's bind mounts see it at once; hot-reload tools
/// poll at about this pace).
const CACHE_TIMEOUT: Duration = Duration::from_millis(500);
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: &[u16] = &[128, 256];

/// A host directory to share, or one file (served as its directory with
/// everything else hidden: see `single_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub path: PathBuf,
    pub read_only: bool,
    /// Its files come with a VM migrating here (into this empty
    /// directory), not from storage both hosts see.
    pub receives: bool,
}

/// What one share is served by.
type ShareFs = stable_dirs::StableDirs<bounded_inodes::BoundedInodes<PassthroughFs<()>>>;

/// What moves with the VM to another VMM (`persist`): the options the
/// guest's FUSE_INIT offered, if it mounted the shares, and each share's
/// view.
#[derive(serde::Serialize, serde::Deserialize)]
struct FsState {
    init: Option<u64>,
    shares: Vec<persist::ShareState>,
}

pub struct Fs {
    /// `None` while nothing is shared: requests are not served (only a
    /// guest that mounts the tag by itself sends any).
    server: Option<Server<Arc<Vfs>>>,
    vfs: Option<Arc<Vfs>>,
    /// The shares' host paths, for messages.
    shown: Vec<String>,
    /// Detached mounts of the shares, kept open for the VM's life.
    _mounts: Vec<File>,
    /// Each share's directory as the host sees it (`O_PATH`; writable
    /// under a read-only share), and whether one file of it is shared.
    roots: Vec<(File, bool)>,
    /// The shares whose files come with a migrating VM.
    receiving: Vec<u8>,
    bridge: bridge::Bridge,
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("sharing {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{0} directories asked to share; at most {MAX_SHARES}")]
    TooMany(usize),
    #[error("sharing {path}: {detail}")]
    Vfs { path: String, detail: String },
}

impl Fs {
    /// A device sharing `shares` as `/0`, `/1`, ... Must run before the
    /// jail hides the host's directories and `/proc`.
    pub fn new(shares: &[Share]) -> Result<Fs, ShareError> {
        let open_inodes = std::env::var(OPEN_INODES_ENV)
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(OPEN_INODES);
        Fs::with_open_inodes(shares, open_inodes)
    }

    /// The same, keeping a host descriptor for at most `open_inodes` of
    /// the inodes the guest holds.
    pub fn with_open_inodes(shares: &[Share], open_inodes: usize) -> Result<Fs, ShareError> {
        if shares.len() > MAX_SHARES {
            return Err(ShareError::TooMany(shares.len()));
        }
        if shares.is_empty() {
            return Ok(Fs {
                server: None,
                vfs: None,
                shown: Vec::new(),
                _mounts: Vec::new(),
                roots: Vec::new(),
                receiving: Vec::new(),
                bridge: bridge::Bridge::default(),
            });
        }
        // The host and other containers change these files too: every
        // open asks the host (no zero-message opens, whose pages the guest
        // would keep for ever) and the host's size and times win (no
        // writeback cache, which makes the guest's own authoritative).
        raise_open_files_limit();
        let vfs = Vfs::new(VfsOptions {
            no_open: false,
            no_opendir: false,
            no_writeback: true,
            ..VfsOptions::default()
        });
        let per_share = open_inodes / shares.len();
        let mut mounts = Vec::new();
        let mut roots = Vec::new();
        for (index, share) in shares.iter().enumerate() {
            let shown = share.path.display().to_string();
            let open_err = |source| ShareError::Open {
                path: shown.clone(),
                source,
            };
            let (dir, only) = split_file(&share.path).map_err(open_err)?;
            let mount = detached_mount(&dir, share.read_only).map_err(open_err)?;
            roots.push((dir, only.is_some()));
            // Through the magic link, then `.`: passthrough opens its root
            // with O_NOFOLLOW, which only the last component obeys.
            let root = format!("/proc/self/fd/{}/.", mount.as_raw_fd());
            let fs = PassthroughFs::<()>::new(Config {
                root_dir: root,
                cache_policy: CachePolicy::Auto,
                attr_timeout: CACHE_TIMEOUT,
                entry_timeout: CACHE_TIMEOUT,
                // Imported here, before the jail hides /proc: not again
                // when the guest's INIT comes.
                do_import: false,
                // O_DIRECT stays in the guest (its page cache is bypassed);
                // the host's tmpfs and overlayfs would refuse it.
                allow_direct_io: false,
                ..Default::default()
            })
            .map_err(open_err)?;
            fs.import().map_err(open_err)?;
            let fs = bounded_inodes::BoundedInodes::new(fs, per_share).map_err(open_err)?;
            vfs.mount(Box::new(stable_dirs::StableDirs::new(fs, only)), &format!("/{index}"))
                .map_err(|e| ShareError::Vfs {
                    path: shown.clone(),
                    detail: format!("{e:?}"),
                })?;
            mounts.push(mount);
        }
        let vfs = Arc::new(vfs);
        Ok(Fs {
            server: Some(Server::new(vfs.clone())),
            vfs: Some(vfs),
            shown: shares.iter().map(|share| share.path.display().to_string()).collect(),
            _mounts: mounts,
            roots,
            receiving: (0..)
                .zip(shares)
                .filter(|(_, share)| share.receives)
                .map(|(index, _)| index)
                .collect(),
            bridge: bridge::Bridge::default(),
        })
    }
}

impl Fs {
    /// `each` on every share's file system as mounted in the VFS (the
    /// layers hull serves it with, under the VFS's box) and its host
    /// path, in order (`/0`, `/1`, ...); none when nothing is shared.
    fn each_share<T>(&self, mut each: impl FnMut(&ShareFs, &str) -> Result<T, String>) -> Result<Vec<T>, String> {
        let Some(vfs) = &self.vfs else { return Ok(Vec::new()) };
        let mut results = Vec::with_capacity(self.shown.len());
        for (index, shown) in self.shown.iter().enumerate() {
            let fs = match vfs.get_rootfs(&format!("/{index}")) {
                Ok(Some((fs, _))) => fs,
                Ok(None) => return Err(format!("share {index} is not mounted")),
                Err(e) => return Err(format!("share {index}: {e:?}")),
            };
            let served = fs
                .as_any()
                .downcast_ref::<ShareFs>()
                .ok_or_else(|| format!("{shown} is not served as hull serves a share"))?;
            results.push(each(served, shown)?);
        }
        Ok(results)
    }
}

/// The passthrough file system holds a descriptor per inode the guest has
/// looked up: the limit on open files goes up to `OPEN_FILES` (as root;
/// otherwise the soft limit to the hard one). The jail sets the same.
fn raise_open_files_limit() {
    let wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(OPEN_FILES, |most| most.min(OPEN_FILES));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The directory `dir` as a mount of its own that belongs to no
/// namespace's tree: `nodev`, `nosuid`, read-only if asked, the host's
/// mounts untouched.
fn detached_mount(dir: &File, read_only: bool) -> std::io::Result<File> {
    // SAFETY: an empty C string with AT_EMPTY_PATH names `dir` itself; the
    // returned descriptor is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE
                | libc::OPEN_TREE_CLOEXEC
                | libc::AT_RECURSIVE as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor.
    let mount = unsafe { File::from_raw_fd(fd as i32) };
    if !mount.metadata()?.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID;
    if read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    // SAFETY: `attr` is a valid mount_attr of the size passed.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mount)
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// `struct virtio_fs_config`: the tag (36 bytes, NUL-padded) and the
    /// number of request queues.
    fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; 40];
        config[..TAG.len()].copy_from_slice(TAG.as_bytes());
        config[36..].copy_from_slice(&1u32.to_le_bytes());
        config
    }

    fn serves(&self) -> bool {
        self.server.is_some()
    }

    /// The guest's view of the shares: its inodes, open files and
    /// listings, by name (`persist`).
    fn backend_state(&self) -> Result<Vec<u8>, String> {
        let Some(vfs) = &self.vfs else { return Ok(Vec::new()) };
        let init = vfs.initialized().then(|| vfs.options().in_opts.bits());
        let shares = self.each_share(|fs, shown| {
            Ok(persist::ShareState {
                inodes: fs.inner().save().map_err(|e| format!("{shown}: {e}"))?,
                listings: fs.save_listings(),
            })
        })?;
        postcard::to_stdvec(&FsState { init, shares }).map_err(|e| e.to_string())
    }

    /// What the guest wrote through the files it holds open, on the
    /// storage the next host opens them from.
    fn flush(&mut self) -> std::io::Result<()> {
        self.each_share(|fs, shown| fs.inner().sync_writable().map_err(|e| format!("{shown}: {e}")))
            .map(drop)
            .map_err(std::io::Error::other)
    }

    fn share_root(&self, share: u8) -> std::io::Result<File> {
        match self.roots.get(usize::from(share)) {
            Some((dir, false)) => dir.try_clone(),
            Some((_, true)) => Err(std::io::Error::other(format!(
                "{} is one file: only a directory's files travel",
                self.shown[usize::from(share)]
            ))),
            None => Err(std::io::Error::other(format!("the VM shares no directory {share}"))),
        }
    }

    fn receiving_shares(&self) -> Vec<u8> {
        self.receiving.clone()
    }

    /// Checked as a move begins, not only at its end.
    fn migration_blocker(&self) -> Option<String> {
        let blockers = self.each_share(|fs, shown| Ok(fs.inner().unmovable().map(|why| format!("{shown}: {why}"))));
        blockers.ok()?.into_iter().flatten().next()
    }

    fn restore_backend_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: FsState = postcard::from_bytes(bytes).map_err(|e| format!("the shared directories' state: {e}"))?;
        let Some(vfs) = &self.vfs else {
            return Err("the VM shared directories where it ran; none are shared with it here".into());
        };
        if state.shares.len() != self.shown.len() {
            return Err(format!(
                "the VM shared {} directories where it ran; {} are shared with it here",
                state.shares.len(),
                self.shown.len()
            ));
        }
        if let Some(offered) = state.init {
            // The guest's session goes on: no new FUSE_INIT comes.
            vfs.init(FsOptions::from_bits_truncate(offered))
                .map_err(|e| format!("the shared directories' FUSE session: {e}"))?;
        }
        // As many as there are shares (checked above), in their order.
        let mut saved = state.shares.into_iter().enumerate();
        self.each_share(|fs, shown| {
            let (index, saved) = saved.next().ok_or("fewer states than shares")?;
            let copied_to = self.receiving.contains(&(index as u8)).then(|| &self.roots[index].0);
            fs.inner().restore(saved.inodes, shown, copied_to)?;
            fs.restore_listings(saved.listings).map_err(|e| format!("{shown}: {e}"))
        })?;
        Ok(())
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(server) = &self.server else { return false };
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        self.bridge.serve(queue, memory, |reader, writer| {
            // A request the server cannot decode is answered with what it
            // wrote (nothing): the guest's request fails, not the VMM.
            server.handle_message(reader, writer.into(), None, None).unwrap_or(0)
        })
    }
}

/// A passthrough file system over `dir`, as the unit tests of the layers
/// above it use one.
#[cfg(test)]
fn test_passthrough(dir: &Path) -> PassthroughFs<()> {
    let fs = PassthroughFs::<()>::new(Config {
        root_dir: dir.display().to_string(),
        do_import: false,
        ..Default::default()
    })
    .unwrap();
    fs.import().unwrap();
    fs
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    const FUSE_INIT: u32 = 26;

    /// A FUSE request header and body, as the guest's driver lays them out.
    fn request(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let len = 40 + body.len() as u32;
        let mut bytes = Vec::new();
        bytes.extend(len.to_le_bytes());
        bytes.extend(opcode.to_le_bytes());
        bytes.extend(1u64.to_le_bytes()); // unique
        bytes.extend(nodeid.to_le_bytes());
        bytes.extend([0u8; 16]); // uid, gid, pid, extlen, padding
        bytes.extend(body);
        bytes
    }

    fn init_body() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(7u32.to_le_bytes());
        body.extend(38u32.to_le_bytes());
        body.extend(0x20000u32.to_le_bytes());
        body.extend(0xffff_ffffu32.to_le_bytes());
        body.extend(0xffff_ffffu32.to_le_bytes());
        body.extend([0u8; 44]);
        body
    }

    /// Serves one request; returns the reply's length and error field.
    fn serve(fs: &mut Fs, bytes: &[u8]) -> (u32, i32) {
        let (error, reply) = answer(fs, bytes);
        (reply.len() as u32 + 16, error)
    }

    /// Serves one request; returns the reply's error field and body.
    fn answer(fs: &mut Fs, bytes: &[u8]) -> (i32, Vec<u8>) {
        let memory = memory();
        memory.write_slice(bytes, GuestAddress(0x8000)).unwrap();
        let mut queues = vec![
            Queue::new(16).unwrap(),
            queue_with(
                &memory,
                &[desc(0x8000, bytes.len() as u32, NEXT, 1), desc(0x9000, 4096, WRITE, 0)],
            ),
        ];
        crate::guest_memory::take_vmm_writes(&memory);
        assert!(fs.process_queue(1, &mut queues, &memory));
        // The server writes through another view of guest memory: its
        // reply and the used ring are recorded all the same, not the request.
        let written = crate::guest_memory::take_vmm_writes(&memory);
        assert!(written.contains(0x9) && written.contains(queues[1].used_ring() / 0x1000));
        assert!(!written.contains(0x8));
        let len: u32 = memory.read_obj(GuestAddress(0x9000)).unwrap();
        let error: i32 = memory.read_obj(GuestAddress(0x9004)).unwrap();
        assert_eq!(used_len(&memory, &queues[1], 0), len);
        let mut body = vec![0u8; len.saturating_sub(16) as usize];
        memory.read_slice(&mut body, GuestAddress(0x9010)).unwrap();
        (error, body)
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// The guest's session (its INIT, the inodes it looked up, a file it
    /// holds open) goes on in a device made by another VMM over the same
    /// directory, through the whole FUSE stack.
    #[test]
    fn a_guest_s_session_goes_on_in_another_vmm_s_device() {
        const LOOKUP: u32 = 1;
        const GETATTR: u32 = 3;
        const OPEN: u32 = 14;
        const READ: u32 = 15;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), "kept across the move").unwrap();
        let shares = [Share {
            path: dir.path().to_path_buf(),
            read_only: false,
            receives: false,
        }];
        let mut from = Fs::new(&shares).unwrap();
        assert_eq!(serve(&mut from, &request(FUSE_INIT, 0, &init_body())).1, 0);
        let (error, entry) = answer(&mut from, &request(LOOKUP, 1, b"0\0"));
        assert_eq!(error, 0);
        let (error, entry) = answer(&mut from, &request(LOOKUP, u64_at(&entry, 0), b"data\0"));
        assert_eq!(error, 0);
        let data = u64_at(&entry, 0);
        let (error, opened) = answer(&mut from, &request(OPEN, data, &[0u8; 8]));
        assert_eq!(error, 0);
        let fh = u64_at(&opened, 0);
        let state = from.backend_state().unwrap();

        // A device that was not given the state knows none of it.
        let mut fresh = Fs::new(&shares).unwrap();
        assert_ne!(serve(&mut fresh, &request(GETATTR, data, &[0u8; 16])).1, 0);
        let mut to = Fs::new(&shares).unwrap();
        to.restore_backend_state(&state).unwrap();
        let (error, attr) = answer(&mut to, &request(GETATTR, data, &[0u8; 16]));
        assert_eq!(error, 0);
        // fuse_attr_out: valid, valid_nsec and padding, then ino and size.
        assert_eq!(u64_at(&attr, 24), 20);
        let mut read = Vec::new();
        read.extend(fh.to_le_bytes());
        read.extend(0u64.to_le_bytes());
        read.extend(100u32.to_le_bytes());
        read.extend([0u8; 20]);
        let (error, bytes) = answer(&mut to, &request(READ, data, &read));
        assert_eq!(error, 0);
        assert_eq!(bytes, b"kept across the move");
        // Another VM's state (no shares) and garbage are refused.
        assert!(Fs::new(&[]).unwrap().restore_backend_state(&state).is_err());
        assert!(Fs::new(&shares)
            .unwrap()
            .restore_backend_state(b"\xff\xff\xff")
            .is_err());
    }

    /// The `virtio_fs_state` fuzz target's seed is such a session's state
    /// (made by the test above): it stays one as the format changes.
    #[test]
    fn the_fuzz_seed_is_a_whole_session_s_state() {
        let seed = include_bytes!("../../../../../../fuzz/seeds/virtio_fs_state/session");
        let state: FsState = postcard::from_bytes(seed).unwrap();
        assert!(state.init.is_some());
        assert_eq!(state.shares.len(), 1);
        assert!(state.shares[0].inodes.nodes.len() >= 2);
        assert_eq!(state.shares[0].inodes.handles.len(), 1);
        // Over a directory that is not the one it came from: refused.
        let dir = tempfile::tempdir().unwrap();
        let shares = [Share {
            path: dir.path().to_path_buf(),
            read_only: false,
            receives: false,
        }];
        let refused = Fs::new(&shares).unwrap().restore_backend_state(seed).unwrap_err();
        assert!(refused.contains("not the directory"), "{refused}");
    }

    #[test]
    fn a_share_s_path_is_taken_with_no_symbolic_link_in_it() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let real = root.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("app.conf"), "x").unwrap();
        std::os::unix::fs::symlink(&real, root.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(real.join("app.conf"), root.join("file-link")).unwrap();
        let share = |path: PathBuf| {
            Fs::new(&[Share {
                path,
                read_only: true,
                receives: false,
            }])
        };
        for linked in [
            root.join("dir-link"),
            root.join("dir-link/app.conf"),
            root.join("file-link"),
        ] {
            match share(linked.clone()) {
                Err(ShareError::Open { source, .. }) => {
                    assert!(source.to_string().contains("symbolic link"), "{linked:?}: {source}")
                }
                Err(e) => panic!("{linked:?}: {e}"),
                Ok(_) => panic!("{linked:?} was shared through a symbolic link"),
            }
        }
        share(real.clone()).unwrap();
        share(real.join("app.conf")).unwrap();
    }

    #[test]
    fn answers_the_guest_s_init() {
        let dir = std::env::temp_dir().join(format!("hull-fs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut fs = Fs::new(&[Share {
            path: dir.clone(),
            read_only: false,
            receives: false,
        }])
        .unwrap();
        let (len, error) = serve(&mut fs, &request(FUSE_INIT, 0, &init_body()));
        assert_eq!(error, 0);
        assert!(len > 16, "{len}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
