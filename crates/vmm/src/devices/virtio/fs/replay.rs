//! Requests that replay a host change in the guest, answered without
//! touching the host.
//!
//! The agent raises a host change's inotify event by making the matching
//! operation under one of `proto::host_changes::Replay`'s group ids (see
//! there). Each answer here only reports what the host already holds: a
//! guest that uses these ids itself misleads its own kernel and nothing
//! else.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use fuse_backend_rs::api::VFS_MAX_INO;
use proto::host_changes::Replay;

/// The stand-ins a delete's lookup finds for a name the host no longer
/// has, one per kind so the guest never sees one inode change its type.
/// The passthrough file system numbers its inodes upwards from 1, far
/// below these.
const GONE_FILE: u64 = VFS_MAX_INO - 1;
const GONE_DIR: u64 = VFS_MAX_INO - 2;

/// The replay `ctx` asks for, if it is one.
pub fn requested(ctx: &Context) -> Option<Replay> {
    Replay::from_gid(ctx.gid)
}

/// Whether `inode` is a stand-in (which the host file system never knew).
pub fn is_stand_in(inode: u64) -> bool {
    inode == GONE_FILE || inode == GONE_DIR
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn stand_in_attr(inode: u64) -> stat64 {
    // SAFETY: stat64 is plain old data; all zeroes is a valid value.
    let mut attr: stat64 = unsafe { std::mem::zeroed() };
    attr.st_ino = inode;
    attr.st_nlink = 1;
    attr.st_mode = match inode {
        GONE_DIR => libc::S_IFDIR | 0o500,
        _ => libc::S_IFREG | 0o400,
    };
    attr
}

/// The attributes of a stand-in, never cached.
pub fn stand_in_getattr(inode: u64) -> (stat64, Duration) {
    (stand_in_attr(inode), Duration::ZERO)
}

/// A replay's lookup: a create finds nothing (so the guest goes on to
/// create), a delete finds the host's entry or, when it is gone, a
/// stand-in the guest can remove.
pub fn lookup<F>(inner: &F, ctx: &Context, replay: Replay, parent: u64, name: &CStr) -> io::Result<Entry>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    let stand_in = match replay {
        Replay::Modify => return inner.lookup(ctx, parent, name),
        Replay::Create => {
            return match inner.lookup(ctx, parent, name) {
                Ok(entry) => {
                    inner.forget(ctx, entry.inode, 1);
                    Err(errno(libc::ENOENT))
                }
                Err(e) => Err(e),
            }
        }
        Replay::DeleteFile => GONE_FILE,
        Replay::DeleteDir => GONE_DIR,
    };
    match inner.lookup(ctx, parent, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Entry {
            inode: stand_in,
            generation: 0,
            attr: stand_in_attr(stand_in),
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
        }),
        other => other,
    }
}

/// A replay's create (of a node of type `mode & S_IFMT`): the entry the
/// host already has, if it is of that type.
pub fn create<F>(inner: &F, ctx: &Context, replay: Replay, parent: u64, name: &CStr, mode: u32) -> io::Result<Entry>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    if replay != Replay::Create {
        return Err(errno(libc::EPERM));
    }
    let entry = inner.lookup(ctx, parent, name)?;
    if entry.attr.st_mode & libc::S_IFMT != mode & libc::S_IFMT {
        inner.forget(ctx, entry.inode, 1);
        return Err(errno(libc::EEXIST));
    }
    Ok(entry)
}

/// A replay's unlink or rmdir: done if the host's entry is gone.
pub fn remove<F>(inner: &F, ctx: &Context, replay: Replay, parent: u64, name: &CStr) -> io::Result<()>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    if !matches!(replay, Replay::DeleteFile | Replay::DeleteDir) {
        return Err(errno(libc::EPERM));
    }
    match inner.lookup(ctx, parent, name) {
        Ok(entry) => {
            inner.forget(ctx, entry.inode, 1);
            Err(errno(libc::EBUSY))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A replay's change of times: the host's attributes, unchanged.
pub fn setattr<F>(
    inner: &F,
    ctx: &Context,
    replay: Replay,
    inode: u64,
    handle: Option<u64>,
) -> io::Result<(stat64, Duration)>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    if replay != Replay::Modify {
        return Err(errno(libc::EPERM));
    }
    inner.getattr(ctx, inode, handle)
}

#[cfg(test)]
mod tests {
    use super::super::test_passthrough as fs;
    use super::*;

    const ROOT: u64 = 1;

    fn as_replay(replay: Replay) -> Context {
        Context {
            uid: 0,
            gid: replay.gid(),
            pid: 1,
        }
    }

    fn errno_of<T: std::fmt::Debug>(result: io::Result<T>) -> Option<i32> {
        result.unwrap_err().raw_os_error()
    }

    #[test]
    fn a_create_finds_what_the_host_made_and_makes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("made"), "host").unwrap();
        let fs = fs(dir.path());
        let ctx = as_replay(Replay::Create);
        assert_eq!(
            errno_of(lookup(&fs, &ctx, Replay::Create, ROOT, c"made")),
            Some(libc::ENOENT)
        );
        let entry = create(&fs, &ctx, Replay::Create, ROOT, c"made", libc::S_IFREG).unwrap();
        assert_eq!(entry.attr.st_size, 4);
        assert_eq!(
            errno_of(create(&fs, &ctx, Replay::Create, ROOT, c"made", libc::S_IFDIR)),
            Some(libc::EEXIST)
        );
        assert_eq!(
            errno_of(create(&fs, &ctx, Replay::Create, ROOT, c"absent", libc::S_IFREG)),
            Some(libc::ENOENT)
        );
        assert!(!dir.path().join("absent").exists());
        // Only a create's id creates this way.
        let modify = as_replay(Replay::Modify);
        assert_eq!(
            errno_of(create(&fs, &modify, Replay::Modify, ROOT, c"made", libc::S_IFREG)),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn a_delete_removes_nothing_and_succeeds_only_once_the_host_s_entry_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), "").unwrap();
        let fs = fs(dir.path());
        let ctx = as_replay(Replay::DeleteFile);
        let gone = lookup(&fs, &ctx, Replay::DeleteFile, ROOT, c"gone").unwrap();
        assert!(is_stand_in(gone.inode));
        assert_eq!(gone.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(gone.entry_timeout, Duration::ZERO);
        let gone_dir = lookup(&fs, &as_replay(Replay::DeleteDir), Replay::DeleteDir, ROOT, c"gone").unwrap();
        assert_eq!(gone_dir.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
        assert_ne!(gone.inode, gone_dir.inode);
        remove(&fs, &ctx, Replay::DeleteFile, ROOT, c"gone").unwrap();
        assert_eq!(
            errno_of(remove(&fs, &ctx, Replay::DeleteFile, ROOT, c"kept")),
            Some(libc::EBUSY)
        );
        assert!(dir.path().join("kept").exists());
        // The host's entry is found as it is.
        assert!(!is_stand_in(
            lookup(&fs, &ctx, Replay::DeleteFile, ROOT, c"kept").unwrap().inode
        ));
    }

    #[test]
    fn a_modify_reports_the_host_s_attributes_and_changes_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edited");
        std::fs::write(&file, "v1").unwrap();
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        let fs = fs(dir.path());
        let ctx = as_replay(Replay::Modify);
        let entry = lookup(&fs, &ctx, Replay::Modify, ROOT, c"edited").unwrap();
        std::fs::write(&file, "version 2").unwrap();
        let (attr, _) = setattr(&fs, &ctx, Replay::Modify, entry.inode, None).unwrap();
        assert_eq!(attr.st_size, 9);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "version 2");
        assert!(std::fs::metadata(&file).unwrap().modified().unwrap() >= before);
        assert_eq!(
            errno_of(setattr(
                &fs,
                &as_replay(Replay::Create),
                Replay::Create,
                entry.inode,
                None
            )),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn only_the_four_ids_are_replays() {
        let plain = Context { uid: 0, gid: 0, pid: 1 };
        assert_eq!(requested(&plain), None);
        assert_eq!(requested(&as_replay(Replay::DeleteDir)), Some(Replay::DeleteDir));
    }
}
