//! Each container's writable disk: a sparse copy of one empty ext4
//! filesystem formatted once per data directory, so a new container costs a
//! few MiB of metadata and then only what it writes.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use image::disk::{mkfs_ext4, DiskError};

/// Apparent size of a container's writable layer.
pub const WRITABLE_MIB: u64 = 8192;

/// What a new disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A container's writable layer: the overlay's upper and work
    /// directories are there already, so the guest makes neither at start.
    Layer,
    /// A volume: empty.
    Volume,
}

fn template(kind: DiskKind) -> PathBuf {
    // Not `writable-*.ext4`: that is an earlier hull's template, whose
    // inode tables the guest had to zero.
    let name = match kind {
        DiskKind::Layer => format!("layer-{WRITABLE_MIB}M.ext4"),
        DiskKind::Volume => format!("volume-{WRITABLE_MIB}M.ext4"),
    };
    crate::data_dir().join(name)
}

/// Formats the template for `kind` disks, once per data directory.
fn make_template(kind: DiskKind, template: &Path) -> Result<(), DiskError> {
    let tmp = image::store::temp_sibling(template);
    let contents = match kind {
        DiskKind::Volume => None,
        DiskKind::Layer => {
            let dir = tmp.with_extension("d");
            let made = (|| {
                let _ = std::fs::remove_dir_all(&dir);
                for sub in [proto::WRITABLE_UPPER, proto::WRITABLE_WORK] {
                    std::fs::create_dir_all(dir.join(sub))?;
                    std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755))?;
                }
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            })();
            made.map_err(|e| DiskError::Mkfs {
                path: dir.clone(),
                detail: format!("making the layer's directories: {e}"),
            })?;
            Some(dir)
        }
    };
    let formatted = mkfs_ext4(contents.as_deref(), &tmp, WRITABLE_MIB, "hull-rw");
    if let Some(dir) = &contents {
        let _ = std::fs::remove_dir_all(dir);
    }
    formatted?;
    std::fs::rename(&tmp, template).map_err(|e| DiskError::Mkfs {
        path: template.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Creates a new `kind` disk at `path`.
pub fn create(path: &Path, kind: DiskKind) -> Result<(), DiskError> {
    let template = template(kind);
    if !template.is_file() {
        make_template(kind, &template)?;
        let _ = std::fs::remove_file(crate::data_dir().join(format!("writable-{WRITABLE_MIB}M.ext4")));
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

    fn e2fs_tool(tool: &str, args: &[&str], disk: &Path) -> String {
        let out = std::process::Command::new(tool).args(args).arg(disk).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_layer_has_the_overlays_directories_and_neither_kind_leaves_tables_to_zero() {
        let dir = std::env::temp_dir().join(format!("hull-writable-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (kind, dirs) in [(DiskKind::Layer, true), (DiskKind::Volume, false)] {
            let disk = dir.join(format!("{kind:?}.ext4"));
            make_template(kind, &disk).unwrap();
            let top = e2fs_tool("debugfs", &["-R", "ls -l /"], &disk);
            for sub in [proto::WRITABLE_UPPER, proto::WRITABLE_WORK] {
                let there = top
                    .lines()
                    .any(|l| l.contains(" 40755 ") && l.ends_with(&format!(" {sub}")));
                assert_eq!(there, dirs, "{kind:?}: {sub} in\n{top}");
            }
            // Every group's inode table is marked zeroed: the guest's
            // ext4lazyinit has nothing to write.
            let groups = e2fs_tool("dumpe2fs", &[], &disk);
            let headers: Vec<&str> = groups
                .lines()
                .filter(|l| l.starts_with("Group ") && l.contains("(Blocks"))
                .collect();
            assert_eq!(headers.len(), (WRITABLE_MIB / 128) as usize, "{kind:?}");
            assert!(
                headers.iter().all(|l| l.contains("ITABLE_ZEROED")),
                "{kind:?}: {headers:?}"
            );
            assert!(!groups.contains("resize_inode"), "{kind:?}");
            let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&disk).unwrap()) * 512;
            assert!(
                allocated < 1 << 20,
                "{kind:?}: the template allocated {allocated} bytes"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
