//! Test and benchmark support shared by hull's VM tests and benchmarks:
//! guest fixtures (the Debian cloud kernel with a busybox initramfs), timed
//! boots of hull-vmm and of the QEMU
//! peer that hull is measured against, and median/p95 reporting to JSON under
//! `target/bench/`; OCI image fixtures and a real registry on loopback.

pub mod bench;
pub mod boot;
pub mod certs;
pub mod guest;
pub mod hulld;
pub mod oci;
pub mod own_dirs;
pub mod paced_link;
pub mod template_cache;

use std::path::PathBuf;

/// This workspace's `target` directory (or `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The guest set-up every test shares (kernel, initramfs, `guest.json`):
/// `hull setup` into `target/test-guest`, which scripts/test runs, so no
/// test reads or writes the host's own hull data directory.
pub fn test_guest_dir() -> PathBuf {
    target_dir().join("test-guest")
}

/// The shared guest's `guest.json`, to copy into a test's data directory.
pub fn test_guest_json() -> PathBuf {
    let path = test_guest_dir().join("guest.json");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test, or HULL_DATA_DIR={} target/debug/hull setup",
        path.display(),
        test_guest_dir().display()
    );
    path
}
