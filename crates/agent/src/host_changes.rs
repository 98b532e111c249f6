//! Raises, in the guest, the inotify events of changes the host made in
//! the VM's shared directories: each change is replayed as the operation
//! that raises its event, under the file-system group id that tells
//! hull-vmm to answer it from what the host already has (see
//! `proto::host_changes`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use proto::host_changes::{is_inside, EntryType, HostChange, HostChangeKind, Replay};

use crate::mounts::SHARES;

/// Replays `changes` in order. A change the guest already knows (a file it
/// wrote itself, an entry it has looked up since) fails harmlessly.
pub fn replay(changes: &[HostChange]) {
    // Each share's root opened once a batch (a batch is mostly one share's).
    let mut shares: Vec<(u32, io::Result<OwnedFd>)> = Vec::new();
    for change in changes {
        let share = match shares.iter().position(|(index, _)| *index == change.share) {
            Some(at) => &shares[at].1,
            None => {
                let root = open_beneath(None, &format!("{SHARES}/{}", change.share));
                shares.push((change.share, root));
                &shares[shares.len() - 1].1
            }
        };
        if let Ok(share) = share {
            let _ = replay_one(share, change);
        }
    }
}

fn replay_one(share: &OwnedFd, change: &HostChange) -> io::Result<()> {
    if !is_inside(&change.path) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let (dir, name) = match change.path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => (".", change.path.as_str()),
    };
    let parent = open_beneath(Some(share), dir)?;
    let name = CString::new(name).map_err(io::Error::other)?;
    let at = parent.as_raw_fd();
    match change.kind {
        HostChangeKind::Modified => with_gid(Replay::Modify, || {
            let times = [omit(), now()];
            // SAFETY: utimensat(2) with a valid directory, name and two timespecs.
            unsafe { libc::utimensat(at, name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }
        }),
        HostChangeKind::Created(kind) => with_gid(Replay::Create, || match kind {
            // SAFETY (each): the *at(2) call with a valid directory and name.
            EntryType::File => unsafe { libc::mknodat(at, name.as_ptr(), libc::S_IFREG | 0o600, 0) },
            EntryType::Dir => unsafe { libc::mkdirat(at, name.as_ptr(), 0o700) },
            EntryType::Symlink => unsafe { libc::symlinkat(c"hull".as_ptr(), at, name.as_ptr()) },
            // A FIFO or socket would need its exact type: left out.
            EntryType::Other => 0,
        }),
        HostChangeKind::Deleted(EntryType::Dir) => with_gid(Replay::DeleteDir, || {
            // SAFETY: unlinkat(2) with a valid directory and name.
            unsafe { libc::unlinkat(at, name.as_ptr(), libc::AT_REMOVEDIR) }
        }),
        HostChangeKind::Deleted(_) => with_gid(Replay::DeleteFile, || {
            // SAFETY: unlinkat(2) with a valid directory and name.
            unsafe { libc::unlinkat(at, name.as_ptr(), 0) }
        }),
    }
}

/// Runs `call` with this thread's file-system gid set to `replay`'s.
fn with_gid(replay: Replay, call: impl FnOnce() -> libc::c_int) -> io::Result<()> {
    set_fsgid(replay.gid());
    let status = call();
    let result = match status {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    };
    set_fsgid(0);
    result
}

/// setfsgid(2) of this thread only (the raw call: no C library spreads it
/// to the other threads).
fn set_fsgid(gid: u32) {
    // SAFETY: setfsgid(2) takes a plain id and changes this thread only.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) };
}

fn omit() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    }
}

fn now() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    }
}

/// Opens directory `path` (relative to `base`, or absolute without one)
/// without following a symlink or leaving `base`'s mount: a container may
/// have planted symlinks in a shared directory, and the agent is not
/// confined to the container's root.
fn open_beneath(base: Option<&OwnedFd>, path: &str) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(io::Error::other)?;
    // SAFETY: open_how is plain old data; all zeroes is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = match base {
        Some(_) => libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_XDEV,
        None => libc::RESOLVE_NO_SYMLINKS,
    };
    let dir = base.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: openat2(2) with a valid path and a filled `open_how` of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}
