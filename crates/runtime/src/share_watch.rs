//! Watches the host directories a container's VM shares and tells its
//! agent what the host changes there, so inotify watchers in the container
//! see host edits (see `proto::host_changes`).
//!
//! One inotify watch per directory, up to `MAX_WATCHES` a container: a
//! guest that makes directories without end cannot use up the host's
//! watches (root's budget, which other services share). Changes are
//! gathered for `SETTLE` after the first one, so a save that writes a file
//! in many pieces is one change, and sent on one connection.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use proto::host_changes::{EntryType, HostChange, HostChangeKind, MAX_HOST_CHANGES};
use proto::{read_frame, write_frame, Control, Frame};

/// The most directories watched for one container.
pub const MAX_WATCHES: usize = 65_536;
/// How long changes are gathered before they are sent.
const SETTLE: Duration = Duration::from_millis(30);
/// How long the agent may take to replay one batch.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running watcher; dropping it stops it.
pub struct ShareWatch {
    /// Dropped to wake the thread and end it.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ShareWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching `shares` (in the VM's order) for the VM whose vsock
/// socket is `vsock`. Nothing to watch, or no inotify, starts nothing.
pub fn start(shares: &[crate::bind::Share], vsock: PathBuf) -> Option<ShareWatch> {
    if shares.is_empty() {
        return None;
    }
    let roots = shares.iter().map(Root::of).collect();
    let inotify = match Inotify::init() {
        Ok(inotify) => inotify,
        Err(e) => {
            eprintln!("hull: host changes to shared directories will not reach the container: inotify: {e}");
            return None;
        }
    };
    let (stop, stopped) = UnixStream::pair().ok()?;
    let thread = std::thread::Builder::new()
        .name("share-watch".into())
        .spawn(move || {
            let mut watcher = Watcher {
                inotify,
                dirs: HashMap::new(),
                roots,
                full: false,
            };
            for share in 0..watcher.roots.len() {
                watcher.watch_tree(share as u32, PathBuf::new(), None);
            }
            watcher.run(&stopped, &vsock);
        })
        .ok()?;
    Some(ShareWatch {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// What one share watches: a directory, or one file's directory for that
/// file alone.
struct Root {
    dir: PathBuf,
    only: Option<std::ffi::OsString>,
}

impl Root {
    fn of(share: &crate::bind::Share) -> Root {
        let source = &share.mount.source;
        match (share.file_name(), source.parent()) {
            (Some(name), Some(dir)) => Root {
                dir: dir.to_path_buf(),
                only: Some(name.into()),
            },
            _ => Root {
                dir: source.clone(),
                only: None,
            },
        }
    }

    /// Whether `rel` (in the share) is out of this share's sight.
    fn hides(&self, rel: &Path) -> bool {
        self.only.as_ref().is_some_and(|only| rel.as_os_str() != only)
    }
}

struct Watcher {
    inotify: Inotify,
    /// Each watched directory: its share and its path in it.
    dirs: HashMap<WatchDescriptor, (u32, PathBuf)>,
    roots: Vec<Root>,
    /// `MAX_WATCHES` was reached (said once).
    full: bool,
}

impl Watcher {
    /// Watches directory `rel` of `share` and every directory under it; with
    /// `found`, reports what is in them as created (they were made after
    /// the watch began, and their entries may predate their watches).
    fn watch_tree(&mut self, share: u32, rel: PathBuf, mut found: Option<&mut Vec<HostChange>>) {
        let mask = WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::CLOSE_WRITE
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DONT_FOLLOW
            | WatchMask::ONLYDIR
            | WatchMask::EXCL_UNLINK;
        let mut pending = vec![rel];
        while let Some(rel) = pending.pop() {
            if self.dirs.len() >= MAX_WATCHES {
                if !self.full {
                    self.full = true;
                    eprintln!(
                        "hull: more than {MAX_WATCHES} directories shared with the container: host changes in the rest will not raise inotify events in it"
                    );
                }
                return;
            }
            let root = &self.roots[share as usize];
            let dir = root.dir.join(&rel);
            let one_file = root.only.is_some();
            let Ok(wd) = self.inotify.watches().add(&dir, mask) else {
                continue;
            };
            self.dirs.insert(wd, (share, rel.clone()));
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else { continue };
                let child = rel.join(entry.file_name());
                if one_file {
                    continue;
                }
                if let Some(found) = found.as_deref_mut() {
                    if let Some(change) = change(share, &child, HostChangeKind::Created(entry_type(kind))) {
                        found.push(change);
                    }
                }
                if kind.is_dir() {
                    pending.push(child);
                }
            }
        }
    }

    fn run(&mut self, stopped: &UnixStream, vsock: &Path) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if !readable(self.inotify.as_raw_fd(), stopped, None) {
                return;
            }
            let mut changes = Changes::default();
            let settle = Instant::now() + SETTLE;
            loop {
                self.read(&mut buffer, &mut changes);
                let left = settle.saturating_duration_since(Instant::now());
                if left.is_zero() || !readable(self.inotify.as_raw_fd(), stopped, Some(left)) {
                    break;
                }
            }
            // A batch the agent cannot take (it serves no exec yet while
            // the container starts; the VM may be ending) is dropped: the
            // watch goes on until it is stopped.
            for batch in changes.list.chunks(MAX_HOST_CHANGES) {
                if send(vsock, batch.to_vec()).is_err() {
                    break;
                }
            }
        }
    }

    /// Reads the events waiting, as changes.
    fn read(&mut self, buffer: &mut [u8], changes: &mut Changes) {
        let events: Vec<(WatchDescriptor, EventMask, Option<PathBuf>)> = match self.inotify.read_events(buffer) {
            Ok(events) => events
                .map(|e| (e.wd, e.mask, e.name.map(|n: &OsStr| PathBuf::from(n))))
                .collect(),
            Err(_) => return,
        };
        for (wd, mask, name) in events {
            if mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let (Some((share, dir)), Some(name)) = (self.dirs.get(&wd).cloned(), name) else {
                continue;
            };
            let rel = dir.join(name);
            let root = &self.roots[share as usize];
            if root.hides(&rel) {
                continue;
            }
            let is_dir = mask.contains(EventMask::ISDIR);
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                let Ok(meta) = std::fs::symlink_metadata(root.dir.join(&rel)) else {
                    continue;
                };
                changes.push(change(
                    share,
                    &rel,
                    HostChangeKind::Created(entry_type(meta.file_type())),
                ));
                if meta.is_dir() {
                    let mut found = Vec::new();
                    self.watch_tree(share, rel, Some(&mut found));
                    found.into_iter().for_each(|c| changes.push(Some(c)));
                }
            } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
                let kind = match is_dir {
                    true => EntryType::Dir,
                    false => EntryType::File,
                };
                changes.push(change(share, &rel, HostChangeKind::Deleted(kind)));
            } else if !is_dir && mask.intersects(EventMask::MODIFY | EventMask::ATTRIB | EventMask::CLOSE_WRITE) {
                changes.push(change(share, &rel, HostChangeKind::Modified));
            }
        }
    }
}

/// Changes in the order they happened, a file's repeated modifications
/// (a save in many writes) told once.
#[derive(Default)]
struct Changes {
    list: Vec<HostChange>,
    /// The latest change of each path, by its place in `list`.
    latest: HashMap<(u32, String), usize>,
}

impl Changes {
    fn push(&mut self, change: Option<HostChange>) {
        let Some(change) = change else { return };
        let key = (change.share, change.path.clone());
        if change.kind == HostChangeKind::Modified {
            let known = self.latest.get(&key).map(|&i| self.list[i].kind);
            if matches!(known, Some(HostChangeKind::Modified | HostChangeKind::Created(_))) {
                return;
            }
        }
        self.latest.insert(key, self.list.len());
        self.list.push(change);
    }
}

/// The change, if its path can be told (a name that is not UTF-8 cannot).
fn change(share: u32, rel: &Path, kind: HostChangeKind) -> Option<HostChange> {
    let path = std::str::from_utf8(rel.as_os_str().as_bytes()).ok()?.to_owned();
    proto::host_changes::is_inside(&path).then_some(HostChange { share, path, kind })
}

fn entry_type(kind: std::fs::FileType) -> EntryType {
    if kind.is_dir() {
        EntryType::Dir
    } else if kind.is_symlink() {
        EntryType::Symlink
    } else if kind.is_file() {
        EntryType::File
    } else {
        EntryType::Other
    }
}

/// Waits until `fd` has something to read (true), or `timeout` passes or
/// `stopped` is woken (false).
fn readable(fd: i32, stopped: &UnixStream, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stopped.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let millis = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX).max(1));
    loop {
        // SAFETY: poll(2) on two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
        if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return ready > 0 && fds[1].revents == 0 && fds[0].revents & libc::POLLIN != 0;
    }
}

/// Tells the agent of `changes` and waits for it to have replayed them.
fn send(vsock: &Path, changes: Vec<HostChange>) -> std::io::Result<()> {
    let mut conn = crate::agent_link::connect(vsock, &|| false)?;
    write_frame(&mut conn, &Frame::Control(Control::SharesChanged { changes })).map_err(std::io::Error::other)?;
    conn.set_read_timeout(Some(REPLAY_TIMEOUT))?;
    let answer = read_frame(&mut conn);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    match answer {
        Ok(Some(Frame::Control(Control::Exited { .. }))) => Ok(()),
        other => Err(std::io::Error::other(format!("the agent answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modified(path: &str) -> Option<HostChange> {
        change(0, Path::new(path), HostChangeKind::Modified)
    }

    #[test]
    fn a_file_written_many_times_is_told_once_after_its_creation() {
        let mut changes = Changes::default();
        changes.push(change(0, Path::new("a"), HostChangeKind::Created(EntryType::File)));
        changes.push(modified("a"));
        changes.push(modified("b"));
        changes.push(modified("b"));
        changes.push(change(0, Path::new("b"), HostChangeKind::Deleted(EntryType::File)));
        changes.push(modified("b"));
        let kinds: Vec<(&str, HostChangeKind)> = changes.list.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("a", HostChangeKind::Created(EntryType::File)),
                ("b", HostChangeKind::Modified),
                ("b", HostChangeKind::Deleted(EntryType::File)),
                ("b", HostChangeKind::Modified),
            ]
        );
    }

    #[test]
    fn host_changes_are_seen_with_their_paths_in_the_share() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        let mut watcher = Watcher {
            inotify: Inotify::init().unwrap(),
            dirs: HashMap::new(),
            roots: vec![Root {
                dir: root.path().to_path_buf(),
                only: None,
            }],
            full: false,
        };
        watcher.watch_tree(0, PathBuf::new(), None);
        std::fs::write(root.path().join("sub/new.txt"), "x").unwrap();
        std::fs::create_dir_all(root.path().join("made/inner")).unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read = |watcher: &mut Watcher| {
            let mut changes = Changes::default();
            watcher.read(&mut buffer, &mut changes);
            changes.list.into_iter().map(|c| (c.path, c.kind)).collect::<Vec<_>>()
        };
        let created = HostChangeKind::Created;
        assert_eq!(
            read(&mut watcher),
            [
                ("sub/new.txt".into(), created(EntryType::File)),
                ("made".into(), created(EntryType::Dir)),
                ("made/inner".into(), created(EntryType::Dir)),
            ]
        );
        std::fs::remove_file(root.path().join("sub/new.txt")).unwrap();
        std::fs::write(root.path().join("made/inner/deep"), "y").unwrap();
        assert_eq!(
            read(&mut watcher),
            [
                ("sub/new.txt".into(), HostChangeKind::Deleted(EntryType::File)),
                ("made/inner/deep".into(), created(EntryType::File)),
            ]
        );
    }
}
