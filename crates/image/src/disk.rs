//! Disks: one read-only ext4 image per layer stack (named by its chain ID,
//! built once, shared by every container of every image with those layers),
//! and the empty ext4 filesystems containers write to.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::digest::Digest;
use crate::store::{flock_exclusive, ImageRecord, Store, StoreError};
use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("mkfs.ext4 is not installed ({0}); install it with: apt-get install e2fsprogs")]
    NoMkfs(std::io::Error),
    #[error("building the disk image {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
    #[error("the image has no layers")]
    NoLayers,
    #[error("layer {index} ({digest}) of the image: {source}")]
    Layer {
        index: usize,
        digest: Digest,
        source: UnpackError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Store(StoreError::Io { what, source })
}

/// Formats a new file `out` as ext4 of `size_mib`, filled from `contents`
/// if given. The file is sparse: only what mkfs writes takes space.
pub fn mkfs_ext4(contents: Option<&Path>, out: &Path, size_mib: u64, label: &str) -> Result<(), DiskError> {
    // A new file reads as zeros, so its inode tables are marked zeroed:
    // otherwise the guest kernel's ext4lazyinit writes every table out (128
    // MiB for a writable disk, in the container's time), filling the holes.
    // mke2fs keeps an existing file's bytes, so none may be there.
    match fs::remove_file(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("removing the old {}", out.display()))(e))
        }
        _ => {}
    }
    // No blocks kept for growing the filesystem online (hull never does):
    // for 8 GiB they are 4 MiB of zeros that every copy of the disk carried.
    let mut command = Command::new("mkfs.ext4");
    command.args([
        "-q",
        "-F",
        "-L",
        label,
        "-O",
        "^resize_inode",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1",
    ]);
    if let Some(dir) = contents {
        command.arg("-d").arg(dir);
    }
    let output = command
        .arg(out)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(DiskError::NoMkfs)?;
    if !output.status.success() {
        let _ = fs::remove_file(out);
        return Err(DiskError::Mkfs {
            path: out.to_path_buf(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A size that holds `bytes` of files in `entries` inodes with room for
/// ext4's metadata and journal. Unused space in the (sparse) image is free.
pub fn ext4_size_mib(bytes: u64, entries: u64) -> u64 {
    (bytes + bytes / 4 + entries * 8192) / (1 << 20) + 64
}

/// The read-only disk for `record`'s layers, if it is built.
pub fn built_image_disk(store: &Store, record: &ImageRecord) -> Option<PathBuf> {
    let chain = record.chain_id()?;
    let disk = store.disks_dir().join(format!("{}.ext4", chain.hex()));
    disk.is_file().then_some(disk)
}

/// The read-only disk for `record`'s layers, building it on first use.
pub fn image_disk(store: &Store, record: &ImageRecord) -> Result<PathBuf, DiskError> {
    if let Some(disk) = built_image_disk(store, record) {
        return Ok(disk);
    }
    let chain = record.chain_id().ok_or(DiskError::NoLayers)?;
    let disks = store.disks_dir();
    let disk = disks.join(format!("{}.ext4", chain.hex()));
    // One builder per disk; others wait for it and then use its result.
    let lock_path = disks.join(format!("{}.building", chain.hex()));
    let lock = File::create(&lock_path).map_err(io(format!("creating {}", lock_path.display())))?;
    flock_exclusive(&lock).map_err(io("locking the disk build"))?;
    if disk.is_file() {
        return Ok(disk);
    }
    let work = disks.join(format!(".{}.{}.d", chain.hex(), std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = build(store, record, &work, &disk);
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_file(&lock_path);
    result.map(|_| disk)
}

fn build(store: &Store, record: &ImageRecord, work: &Path, disk: &Path) -> Result<(), DiskError> {
    let root = work.join("rootfs");
    // The build directory stays private; the image's root is 0755 (unless a
    // layer says otherwise), whatever hull's umask.
    fs::create_dir_all(work).map_err(io(format!("creating {}", work.display())))?;
    unpack::create_implicit_dirs(&root).map_err(io(format!("creating {}", root.display())))?;
    let (mut bytes, mut entries) = (0u64, 0u64);
    for (index, layer) in record.layers.iter().enumerate() {
        let blob = store.blob_path(&layer.digest);
        let file = File::open(&blob).map_err(io(format!("opening layer {}", layer.digest)))?;
        let layer_error = |source| DiskError::Layer {
            index,
            digest: layer.digest.clone(),
            source,
        };
        let stats = unpack::apply_layer(&root, file).map_err(layer_error)?;
        if let Some(expected) = record.diff_ids.get(index) {
            if *expected != stats.diff_id {
                return Err(layer_error(UnpackError::DiffId {
                    expected: expected.clone(),
                    actual: stats.diff_id,
                }));
            }
        }
        bytes += stats.bytes;
        entries += stats.entries;
    }
    let tmp = work.join("disk.ext4");
    mkfs_ext4(Some(&root), &tmp, ext4_size_mib(bytes, entries), "hull-image")?;
    fs::rename(&tmp, disk).map_err(io(format!("storing {}", disk.display())))
}

/// Space a file really occupies on the host (sparse files count only what
/// was written).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}
