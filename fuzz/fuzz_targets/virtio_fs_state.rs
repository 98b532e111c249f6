#![no_main]
//! What a VMM takes of a migrating VM's shared directories
//! (`Fs::restore_backend_state`): the guest's FUSE_INIT offer, each share's
//! inode table, open handles and directory listings, as a peer host sent
//! them. Taken into a fresh device over a scratch directory: refused or
//! taken, never a panic, and the device still serves after.

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::fs::{Fs, Share};
use vmm::devices::virtio::VirtioDevice;

fn shared_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = hull_fuzz::scratch_dir().join(format!("hull-fuzz-fs-state-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("making the shared directory");
        std::fs::write(dir.join("sub/file"), b"contents").expect("a file to share");
        // hull-vmm shares a path with no symbolic link in it.
        dir.canonicalize().expect("resolving the shared directory")
    })
}

fuzz_target!(|data: &[u8]| {
    let share = Share {
        path: shared_dir().clone(),
        read_only: false,
        receives: false,
    };
    let mut fs = Fs::with_open_inodes(&[share], 4).expect("sharing the scratch directory");
    let _ = fs.restore_backend_state(data);
    // Whatever it took, the device's own state still encodes.
    let _ = fs.backend_state();
});
