//! Changes the host makes in a shared directory, told to the guest so that
//! inotify watchers in the container see them (a dev server's hot reload
//! under `-v "$PWD":/app`).
//!
//! virtio-fs has no way to tell the guest kernel of a change (Linux lacks
//! FUSE's notification queue for it), and the guest kernel raises inotify
//! events only for operations that go through it. So the host's watcher
//! sends `SharesChanged`, and the agent replays each change as the very
//! operation that raises its event (`mknodat`, `utimensat`, `unlinkat`...),
//! made under one of the file-system group ids below. hull-vmm's virtio-fs
//! device answers a request made under these ids without touching the host:
//! a create finds the entry the host already made, a delete succeeds only
//! when the host's entry is gone, a time change does nothing. A guest that
//! uses these ids itself only misleads its own kernel.

use serde::{Deserialize, Serialize};

/// What a replayed operation is, by the file-system gid it is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `utimensat` of the modification time: the file changed.
    Modify,
    /// `mknodat`/`mkdirat`/`symlinkat`: the host made this entry; a lookup
    /// of the name finds nothing, so the guest goes on to create it.
    Create,
    /// `unlinkat`: the host removed this non-directory; a lookup of a name
    /// the host no longer has finds a stand-in the guest can then remove.
    DeleteFile,
    /// `unlinkat(AT_REMOVEDIR)`: the same for a directory.
    DeleteDir,
}

/// The first of the four group ids (high, away from any real group).
const REPLAY_GID_BASE: u32 = 0x7fff_ff00;

impl Replay {
    const ALL: [Replay; 4] = [Replay::Modify, Replay::Create, Replay::DeleteFile, Replay::DeleteDir];

    pub const fn gid(self) -> u32 {
        REPLAY_GID_BASE + self as u32
    }

    pub fn from_gid(gid: u32) -> Option<Replay> {
        let index = gid.checked_sub(REPLAY_GID_BASE)?;
        Replay::ALL.get(usize::try_from(index).ok()?).copied()
    }
}

/// One change in shared directory `share` (the virtio-fs share's index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChange {
    pub share: u32,
    /// Relative to the share's root, `/`-separated, no `.` or `..`.
    pub path: String,
    pub kind: HostChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostChangeKind {
    Created(EntryType),
    Modified,
    Deleted(EntryType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    /// A FIFO or a socket.
    Other,
}

/// The most changes one `SharesChanged` frame carries.
pub const MAX_HOST_CHANGES: usize = 256;

/// Whether `path` is a plain relative path that stays inside its share.
pub fn is_inside(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 4096
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_replays_and_nothing_else() {
        for replay in Replay::ALL {
            assert_eq!(Replay::from_gid(replay.gid()), Some(replay));
        }
        assert_eq!(Replay::from_gid(0), None);
        assert_eq!(Replay::from_gid(REPLAY_GID_BASE + 4), None);
        assert_eq!(Replay::from_gid(u32::MAX), None);
    }

    #[test]
    fn only_plain_relative_paths_are_inside() {
        assert!(is_inside("a") && is_inside("a/b.txt"));
        for bad in ["", "/a", "a/", "a//b", "..", "a/../b", "./a", "a\0b"] {
            assert!(!is_inside(bad), "{bad:?}");
        }
    }
}
