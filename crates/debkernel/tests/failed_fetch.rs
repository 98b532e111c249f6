//! A kernel fetch that fails part way leaves nothing in the cache but what
//! was there: apt and dpkg are stand-ins on PATH (this test's own process)
//! that fail at the download, then at the unpacking.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn tool(dir: &Path, name: &str, script: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_failed_fetch_leaves_no_scratch_directories() {
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    tool(&bin, "apt-cache", "echo '  Depends: linux-image-9.9.9-test-amd64'");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    std::env::set_var("PATH", path);
    let cache = work.path().join("kernels");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(cache.join("kept"), "").unwrap();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // The download fails after writing part of a file.
    tool(&bin, "apt-get", "echo partial > half.deb; exit 100");
    assert!(debkernel::fetch("linux-image-cloud-amd64", &cache).is_err());
    assert_eq!(listing(), ["kept"]);

    // The download "succeeds" but the package does not unpack.
    tool(&bin, "apt-get", "echo 'not a deb' > linux-image-9.9.9-test-amd64.deb");
    let failed = debkernel::fetch("linux-image-cloud-amd64", &cache);
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(listing(), ["kept"]);
}
