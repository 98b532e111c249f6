//! Each container's writable disk: a sparse copy of one empty ext4
//! filesystem formatted once per data directory, so a new container costs a
//! few MiB of metadata and then only what it writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::disk::{mkfs_ext4, DiskError};

/// Apparent size of a container's writable layer.
pub const WRITABLE_MIB: u64 = 8192;

fn template() -> PathBuf {
    crate::data_dir().join(format!("writable-{WRITABLE_MIB}M.ext4"))
}

/// Creates the writable disk at `path`.
pub fn create(path: &Path) -> Result<(), DiskError> {
    let template = template();
    if !template.is_file() {
        let tmp = template.with_extension(format!("tmp{}", std::process::id()));
        mkfs_ext4(None, &tmp, WRITABLE_MIB, "hull-rw")?;
        std::fs::rename(&tmp, &template).map_err(|e| DiskError::Mkfs {
            path: template.clone(),
            detail: e.to_string(),
        })?;
    }
    // cp keeps the holes (and reflinks where the filesystem can).
    let output = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(&template)
        .arg(path)
        .output()
        .map_err(|e| DiskError::Mkfs {
            path: path.to_path_buf(),
            detail: format!("cp: {e}"),
        })?;
    if !output.status.success() {
        return Err(DiskError::Mkfs {
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
