#![no_main]
//! virtio-fs under a hostile driver: FUSE requests of every kind, well
//! formed or not, on a scratch directory (or one file of it) shared as the
//! device's `/0`, as any user, root, or under the group ids of the agent's
//! replays of host changes.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Unstructured;
use hull_fuzz::{drive, Guest, Turn};
use libfuzzer_sys::fuzz_target;
use proto::host_changes::Replay;
use vmm::devices::virtio::fs::{Fs, Share};
use vmm::devices::virtio::VirtioDevice;

/// FUSE opcodes a driver sends (INIT, LOOKUP, FORGET, GETATTR, SETATTR,
/// READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ,
/// WRITE, STATFS, RELEASE, FSYNC, ..., READDIRPLUS, RENAME2, LSEEK), and a
/// few that do not exist.
const OPCODES: &[u32] = &[
    26, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 27, 28, 29, 30, 34, 35, 36,
    38, 40, 42, 43, 44, 45, 46, 47, 0, 99, 4096,
];

/// Group ids of requests: root's, a user's, and the replays' (see
/// proto::host_changes).
const GIDS: [u32; 6] = [
    0,
    1000,
    Replay::Modify.gid(),
    Replay::Create.gid(),
    Replay::DeleteFile.gid(),
    Replay::DeleteDir.gid(),
];

fn shared_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = hull_fuzz::scratch_dir().join(format!("hull-fuzz-fs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("making the shared directory");
        std::fs::write(dir.join("file"), b"contents").expect("a file to share");
        let _ = std::os::unix::fs::symlink("/etc/passwd", dir.join("link"));
        // hull-vmm shares a path with no symbolic link in it.
        dir.canonicalize().expect("resolving the shared directory")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let path = match u.ratio(1, 4).unwrap_or(false) {
        true => shared_dir().join("file"),
        false => shared_dir().clone(),
    };
    let share = Share {
        path,
        read_only: u.arbitrary::<bool>().unwrap_or(false),
        receives: false,
    };
    // Half the time so few inodes keep a descriptor that closing and
    // finding them again is exercised too.
    let open_inodes = match u.arbitrary::<bool>().unwrap_or(false) {
        true => 3,
        false => vmm::devices::virtio::fs::OPEN_INODES,
    };
    let mut fs = Fs::with_open_inodes(&[share], open_inodes).expect("sharing the scratch directory");
    let Ok(mut guest) = Guest::new(&mut u, fs.queue_max_sizes()) else {
        return;
    };
    drive(&mut u, &mut guest, true, |turn, u, guest| {
        match turn {
            Turn::Notify(q) => {
                fs.process_queue(q, &mut guest.queues, &guest.memory);
            }
            Turn::Target => {
                // A request header the server gets past: a known opcode, a
                // length near the truth, a node it may know.
                let at = guest.buffer(u, 1)?;
                let mut header = [0u8; 40];
                let len: u32 = if u.ratio(7, 8)? { u.int_in_range(40..=4096)? } else { u.arbitrary()? };
                header[..4].copy_from_slice(&len.to_le_bytes());
                header[4..8].copy_from_slice(&u.choose(OPCODES)?.to_le_bytes());
                header[8..16].copy_from_slice(&u.arbitrary::<u64>()?.to_le_bytes());
                let node: u64 = if u.ratio(3, 4)? { u.int_in_range(0..=8)? } else { u.arbitrary()? };
                header[16..24].copy_from_slice(&node.to_le_bytes());
                header[24..28].copy_from_slice(&u.choose(&[0u32, 1000])?.to_le_bytes());
                header[28..32].copy_from_slice(&u.choose(&GIDS)?.to_le_bytes());
                guest.write(at, &header);
            }
        }
        Ok(())
    });
});
