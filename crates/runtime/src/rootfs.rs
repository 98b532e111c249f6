//! Root filesystem disks: a directory becomes an ext4 image (`mkfs.ext4 -d`),
//! cached by the content of the tree so the same rootfs is built once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {0} does not exist")]
    Missing(PathBuf),
    #[error("rootfs {0} is empty")]
    Empty(PathBuf),
    #[error("{0}")]
    Disk(#[from] image::disk::DiskError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// The disk image for `rootfs`: the file itself if it is one (an ext4
/// image), else the cached image built from the directory.
pub fn disk_for(rootfs: &Path) -> Result<PathBuf, RootfsError> {
    let meta = fs::metadata(rootfs).map_err(|_| RootfsError::Missing(rootfs.to_path_buf()))?;
    if meta.is_file() {
        return Ok(rootfs.to_path_buf());
    }
    let (digest, bytes, entries) = digest_tree(rootfs)?;
    let cache = crate::data_dir().join("rootfs");
    fs::create_dir_all(&cache).map_err(|source| RootfsError::Io {
        what: format!("creating {}", cache.display()),
        source,
    })?;
    let image = cache.join(format!("{digest}.ext4"));
    if image.is_file() {
        return Ok(image);
    }
    let tmp = image::store::temp_sibling(&image);
    image::disk::mkfs_ext4(
        Some(rootfs),
        &tmp,
        image::disk::ext4_size_mib(bytes, entries),
        "hull-rootfs",
    )?;
    fs::rename(&tmp, &image).map_err(|source| RootfsError::Io {
        what: format!("storing {}", image.display()),
        source,
    })?;
    Ok(image)
}

/// A digest of every entry's path, type, mode, owner and content (symlink
/// targets included), and the total size of the files.
fn digest_tree(root: &Path) -> Result<(String, u64, u64), RootfsError> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| RootfsError::Io { what, source }
    };
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut children: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        children.sort();
        for path in children {
            entries += 1;
            let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            hash.update(rel.as_os_str().as_encoded_bytes());
            hash.update(format!("\0{:o}:{}:{}:{}\0", meta.mode(), meta.uid(), meta.gid(), meta.size()).as_bytes());
            if meta.file_type().is_symlink() {
                hash.update(fs::read_link(&path).map_err(io(&path))?.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                let mut file = fs::File::open(&path).map_err(io(&path))?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buf).map_err(io(&path))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                }
                total += meta.size();
            } else if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    if entries == 0 {
        return Err(RootfsError::Empty(root.to_path_buf()));
    }
    Ok((hex::encode(&hash.finalize()[..16]), total, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_change_with_content_and_empty_trees_are_refused() {
        let dir = std::env::temp_dir().join(format!("hull-rootfs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        assert!(matches!(digest_tree(&dir.join("bin")), Err(RootfsError::Empty(_))));
        fs::write(dir.join("bin/a"), "one").unwrap();
        let (first, size, _) = digest_tree(&dir).unwrap();
        assert_eq!(size, 3);
        fs::write(dir.join("bin/a"), "two").unwrap();
        assert_ne!(digest_tree(&dir).unwrap().0, first);
        assert!(matches!(disk_for(&dir.join("nope")), Err(RootfsError::Missing(_))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
