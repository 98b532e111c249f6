//! Each container's writable disk: a sparse copy of one empty ext4
//! filesystem formatted once per data directory, so a new container costs a
//! few MiB of metadata and then only what it writes.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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
        let tmp = image::store::temp_sibling(&template);
        mkfs_ext4(None, &tmp, WRITABLE_MIB, "hull-rw")?;
        std::fs::rename(&tmp, &template).map_err(|e| DiskError::Mkfs {
            path: template.clone(),
            detail: e.to_string(),
        })?;
    }
    // Under a temporary name first: an interrupted copy is never taken for
    // a container's disk.
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    copy_sparse(&template, &partial)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| DiskError::Mkfs {
            path: path.to_path_buf(),
            detail: format!("copying {}: {e}", template.display()),
        })
}

/// Copies `from` to a new file `to` keeping its holes: a reflink where the
/// filesystem can, else the data extents only (SEEK_DATA/SEEK_HOLE and
/// copy_file_range, all in the kernel). In-process, because starting `cp`
/// cost more than the copy.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    let source = File::open(from)?;
    let len = source.metadata()?.len();
    let target = File::options().write(true).create_new(true).open(to)?;
    let result = copy_extents(&source, &target, len);
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

fn copy_extents(source: &File, target: &File, len: u64) -> std::io::Result<()> {
    let (src, dst) = (source.as_raw_fd(), target.as_raw_fd());
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    if unsafe { libc::ioctl(dst, libc::FICLONE, src) } == 0 {
        return Ok(());
    }
    target.set_len(len)?;
    let mut offset = 0i64;
    while (offset as u64) < len {
        // SAFETY: lseek on an open fd.
        let data = unsafe { libc::lseek(src, offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut from, mut to) = (data, data);
        while from < hole {
            let want = (hole - from) as usize;
            // SAFETY: both offsets point at live i64s; the fds are open.
            let n = unsafe { libc::copy_file_range(src, &mut from, dst, &mut to, want, 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source shrank",
                ));
            }
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_copies_keep_data_and_holes() {
        let dir = std::env::temp_dir().join(format!("hull-writable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let from = dir.join("from");
        let file = File::create(&from).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(&[7u8; 8192], 32 << 20).unwrap();
        file.sync_all().unwrap();
        let to = dir.join("to");
        copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap());
        let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&to).unwrap()) * 512;
        assert!(allocated < 4 << 20, "the copy allocated {allocated} bytes");
        // An existing file is never overwritten.
        assert!(copy_sparse(&from, &to).is_err());
        assert_eq!(std::fs::read(&to).unwrap().len(), 64 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
