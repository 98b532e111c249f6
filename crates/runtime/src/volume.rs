//! Named volumes (`DATA/volumes/NAME/`), which outlive their containers, of
//! two kinds:
//! - **shared** (the default, as Docker's local volumes): a directory,
//!   `_data`, that every running container mounting the volume shares
//!   through its VM's virtio-fs device, and that the host sees at the
//!   volume's `Mountpoint`;
//!   With Docker's local-driver options `-o type=none -o o=bind -o
//!   device=DIR` that directory is a host directory of the user's instead
//!   (`device`): removing the volume leaves it;
//! - **disk** (`docker volume create -o type=disk`): an ext4 disk attached
//!   to a container's VM as one more virtio-blk disk, for block-device speed
//!   and a journal of its own. One running VM at a time may use it: a disk
//!   filesystem cannot be shared between two kernels, so a second one is
//!   refused while the first holds the volume's lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Disk volumes one container can have: the template's spare disk slots.
pub const MAX_PER_CONTAINER: usize = 4;

const RECORD: &str = "volume.json";
const DISK: &str = "disk.ext4";
/// A shared volume's directory, named as Docker names it.
const DATA: &str = "_data";
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name \"{0}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least 2 characters")]
    InvalidName(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {0} is in use by a running container (a disk volume: one VM at a time)")]
    InUse(String),
    #[error("volume {0} is in use by a running container")]
    SharedInUse(String),
    #[error("{0} disk volumes given: a container has at most {MAX_PER_CONTAINER} (shared volumes have no such limit)")]
    TooManyDisks(usize),
    #[error("volume {name}: {detail}")]
    Damaged { name: String, detail: String },
    #[error("volume device {device}: {detail}")]
    Device { device: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// What `docker volume inspect` shows of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image's VOLUME): Docker calls
    /// these anonymous and prunes them by default.
    #[serde(default)]
    pub anonymous: bool,
    /// Volumes made before shared ones existed are disks.
    #[serde(default)]
    pub kind: VolumeKind,
    /// A shared volume's data in a host directory of the user's (Docker's
    /// `-o type=none -o o=bind -o device=DIR`), resolved when made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
}

/// How a volume keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// An ext4 disk, for one running container at a time.
    #[default]
    Disk,
    /// A host directory shared with every container that mounts it.
    Shared,
}

/// Where a volume is mounted in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    /// An absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

pub fn volumes_dir() -> PathBuf {
    crate::data_dir().join("volumes")
}

/// Docker's rule for volume (and container) names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn dir_of(name: &str) -> Result<PathBuf, VolumeError> {
    if !valid_name(name) {
        return Err(VolumeError::InvalidName(name.to_string()));
    }
    Ok(volumes_dir().join(name))
}

/// The volume's disk, for the VMM.
pub fn disk_path(name: &str) -> Result<PathBuf, VolumeError> {
    Ok(dir_of(name)?.join(DISK))
}

/// Where the volume's data is on the host: a shared volume's directory, a
/// disk volume's disk (Docker's `Mountpoint`).
pub fn mountpoint(record: &VolumeRecord) -> PathBuf {
    let dir = volumes_dir().join(&record.name);
    match (record.kind, &record.device) {
        (VolumeKind::Disk, _) => dir.join(DISK),
        (VolumeKind::Shared, Some(device)) => device.clone(),
        (VolumeKind::Shared, None) => dir.join(DATA),
    }
}

/// The directory a VM shares for a shared volume, with no symbolic link
/// in its path (hull-vmm refuses one): a device is resolved when the
/// volume is made; hull's own data directory may be reached through one.
pub fn share_source(record: &VolumeRecord) -> Result<PathBuf, VolumeError> {
    let mountpoint = mountpoint(record);
    match record.device {
        Some(_) => Ok(mountpoint),
        None => std::fs::canonicalize(&mountpoint).map_err(io(format!("resolving {}", mountpoint.display()))),
    }
}

/// The volume's record, or `None` if there is no such volume.
pub fn get(name: &str) -> Result<Option<VolumeRecord>, VolumeError> {
    let path = dir_of(name)?.join(RECORD);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| VolumeError::Damaged {
            name: name.to_string(),
            detail: e.to_string(),
        })
}

/// Creates the volume, or returns the one of that name (as Docker does);
/// `true` when it was made now.
pub fn create(
    name: &str,
    labels: BTreeMap<String, String>,
    anonymous: bool,
    kind: VolumeKind,
) -> Result<(VolumeRecord, bool), VolumeError> {
    create_on(name, labels, anonymous, kind, None)
}

/// [`create`], a shared volume's data in host directory `device` (which
/// must be one) when given.
pub fn create_on(
    name: &str,
    labels: BTreeMap<String, String>,
    anonymous: bool,
    kind: VolumeKind,
    device: Option<&Path>,
) -> Result<(VolumeRecord, bool), VolumeError> {
    let dir = dir_of(name)?;
    let device = device
        .map(|device| match std::fs::canonicalize(device) {
            Ok(real) if real.is_dir() && kind == VolumeKind::Shared => Ok(real),
            Ok(_) => Err(VolumeError::Device {
                device: device.display().to_string(),
                detail: "not a directory (a bind-mounted volume is a shared one of a directory)".into(),
            }),
            Err(e) => Err(VolumeError::Device {
                device: device.display().to_string(),
                detail: e.to_string(),
            }),
        })
        .transpose()?;
    if let Some(existing) = get(name)? {
        return Ok((existing, false));
    }
    let root = volumes_dir();
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    // Built aside and renamed into place: a volume is whole or absent.
    let tmp = image::store::temp_sibling(&dir);
    let _ = std::fs::remove_dir_all(&tmp);
    let record = VolumeRecord {
        name: name.to_string(),
        created_at: crate::container::now_rfc3339(),
        labels,
        anonymous,
        kind,
        device: device.clone(),
    };
    let built =
        (|| {
            std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            match kind {
                VolumeKind::Disk => crate::writable::create(&tmp.join(DISK), crate::writable::DiskKind::Volume)
                    .map_err(|e| VolumeError::Damaged {
                        name: name.to_string(),
                        detail: e.to_string(),
                    })?,
                VolumeKind::Shared if device.is_some() => {}
                VolumeKind::Shared => {
                    let data = tmp.join(DATA);
                    std::fs::create_dir(&data).map_err(io(format!("creating {}", data.display())))?;
                    // Containers' users write here; the data directory keeps the
                    // volume's own mode (0700) from exposing it to the host's.
                    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        .map_err(io(format!("creating {}", data.display())))?;
                }
            }
            let json = serde_json::to_vec_pretty(&record).map_err(|e| VolumeError::Damaged {
                name: name.to_string(),
                detail: e.to_string(),
            })?;
            image::store::write_atomic(&tmp.join(RECORD), &json).map_err(io("writing the volume record"))?;
            match std::fs::rename(&tmp, &dir) {
                Ok(()) => Ok(true),
                // Someone made it meanwhile: theirs stands.
                Err(_) if dir.join(RECORD).is_file() => Ok(false),
                Err(e) => Err(io(format!("moving the volume to {}", dir.display()))(e)),
            }
        })();
    let _ = std::fs::remove_dir_all(&tmp);
    match built? {
        true => Ok((record, true)),
        false => Ok((
            get(name)?.ok_or_else(|| VolumeError::NotFound(name.to_string()))?,
            false,
        )),
    }
}

/// Every volume, by name.
pub fn list() -> Result<Vec<VolumeRecord>, VolumeError> {
    let mut volumes = Vec::new();
    let entries = match std::fs::read_dir(volumes_dir()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(volumes),
        Err(e) => return Err(io("listing the volumes")(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) {
            continue; // a build under way (.NAME.tmp) or a stranger
        }
        if let Some(record) = get(&name)? {
            volumes.push(record);
        }
    }
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(volumes)
}

/// Bytes the volume's data really occupies (a shared volume's files are
/// counted, links not followed).
pub fn size_on_disk(record: &VolumeRecord) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        let own = meta.blocks() * 512;
        if !meta.is_dir() {
            return own;
        }
        let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
        own + entries.map(|e| walk(&e.path())).sum::<u64>()
    }
    walk(&mountpoint(record))
}

/// Held while a VM has the volume; released when dropped.
#[derive(Debug)]
pub struct VolumeLock(#[allow(dead_code)] File);

/// Takes the volume for one VM: a disk volume for it alone, a shared one
/// beside the others that have it. Says so if it cannot.
pub fn lock(name: &str) -> Result<VolumeLock, VolumeError> {
    let record = get(name)?.ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
    match record.kind {
        VolumeKind::Disk => flock(name, libc::LOCK_EX),
        VolumeKind::Shared => flock(name, libc::LOCK_SH),
    }
}

fn flock(name: &str, mode: libc::c_int) -> Result<VolumeLock, VolumeError> {
    let path = dir_of(name)?.join(LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("locking {}", path.display())))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&file), mode | libc::LOCK_NB) } == 0 {
        return Ok(VolumeLock(file));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock if mode == libc::LOCK_SH => Err(VolumeError::SharedInUse(name.to_string())),
        std::io::ErrorKind::WouldBlock => Err(VolumeError::InUse(name.to_string())),
        _ => Err(io(format!("locking {}", path.display()))(e)),
    }
}

/// Deletes the volume; refused while a VM has it (the caller checks that no
/// container refers to it, unless forced).
pub fn remove(name: &str) -> Result<(), VolumeError> {
    let dir = dir_of(name)?;
    if get(name)?.is_none() {
        return Err(VolumeError::NotFound(name.to_string()));
    }
    let _held = flock(name, libc::LOCK_EX).map_err(|e| match e {
        VolumeError::InUse(name) => VolumeError::SharedInUse(name),
        other => other,
    })?;
    // Renamed away first, so a half-deleted volume is never listed.
    let doomed = volumes_dir().join(format!(".{name}.{}.rm", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(io(format!("removing {}", dir.display())))?;
    std::fs::remove_dir_all(&doomed).map_err(io(format!("removing {}", doomed.display())))
}

/// The disks a VM's spare slots are bound to: each volume's disk, then the
/// empty placeholder for the slots left over.
pub fn slot_disks(mounts: &[VolumeMount]) -> Result<Vec<PathBuf>, VolumeError> {
    if mounts.len() > MAX_PER_CONTAINER {
        return Err(VolumeError::TooManyDisks(mounts.len()));
    }
    let mut disks = mounts
        .iter()
        .map(|m| disk_path(&m.name))
        .collect::<Result<Vec<_>, _>>()?;
    let empty = empty_disk()?;
    disks.resize(MAX_PER_CONTAINER, empty);
    Ok(disks)
}

/// A zero-length disk: what an unused slot is bound to.
fn empty_disk() -> Result<PathBuf, VolumeError> {
    let path = crate::data_dir().join("empty.disk");
    if !path.is_file() {
        File::create(&path).map_err(io(format!("creating {}", path.display())))?;
    }
    Ok(path)
}

/// Parses a `-v` / Binds entry naming a volume: `NAME:/path[:ro|rw]`.
/// A host path (`/dir:/path`) is refused: a container is a VM and sees no
/// host directory.
pub fn parse_bind(spec: &str) -> Result<VolumeMount, String> {
    match parse_volume_flag(spec)? {
        VolumeFlag::Volume(volume) => Ok(volume),
        VolumeFlag::Bind(bind) => Err(format!(
            "'{}' is a host path: a named volume is expected here",
            bind.source.display()
        )),
    }
}

/// What `-v SRC:DST[:MODE]` asks for: a named volume, or, when SRC is an
/// absolute host path, a bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeFlag {
    Volume(VolumeMount),
    Bind(crate::bind::BindMount),
}

pub fn parse_volume_flag(spec: &str) -> Result<VolumeFlag, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(format!("invalid volume specification: '{spec}'")),
    };
    if source.starts_with('/') {
        return crate::bind::BindMount::parse(source, target, mode).map(VolumeFlag::Bind);
    }
    if source.starts_with('.') || source.starts_with('~') {
        return Err(format!(
            "invalid bind source '{source}': a host path must be absolute (the docker CLI makes it so)"
        ));
    }
    if !valid_name(source) {
        return Err(VolumeError::InvalidName(source.to_string()).to_string());
    }
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        other => return Err(format!("invalid mode '{other}' in volume specification '{spec}'")),
    };
    Ok(VolumeFlag::Volume(VolumeMount {
        name: source.to_string(),
        target: check_target(target)?,
        read_only,
    }))
}

/// A mount point: absolute, no `..`, not `/` itself.
pub fn check_target(target: &str) -> Result<String, String> {
    let path = Path::new(target);
    if !path.is_absolute() {
        return Err(format!("invalid mount path '{target}': it must be absolute"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) || target.contains('\0') {
        return Err(format!("invalid mount path '{target}'"));
    }
    if path.parent().is_none() {
        return Err("invalid mount path '/': a volume cannot replace the root".into());
    }
    Ok(target.trim_end_matches('/').to_string())
}

/// Checks a container's volume list as a whole.
pub fn check_mounts(mounts: &[VolumeMount]) -> Result<(), String> {
    // Disk volumes are counted against the disk slots when the container
    // starts (`slot_disks`): only then is each volume's kind known.
    let most = MAX_PER_CONTAINER + crate::bind::MAX_PER_CONTAINER;
    if mounts.len() > most {
        return Err(format!(
            "{} volumes given: a container has at most {most}",
            mounts.len()
        ));
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.target == m.target) {
            return Err(format!("duplicate mount point: {}", m.target));
        }
        if mounts[..i].iter().any(|o| o.name == m.name) {
            return Err(format!(
                "volume {} is given twice: a volume is mounted once per container",
                m.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_name_volumes_and_refuse_host_paths() {
        assert_eq!(
            parse_bind("data:/var/lib/data:ro").unwrap(),
            VolumeMount {
                name: "data".into(),
                target: "/var/lib/data".into(),
                read_only: true
            }
        );
        assert!(!parse_bind("data:/srv/").unwrap().read_only);
        assert_eq!(parse_bind("data:/srv/").unwrap().target, "/srv");
        assert!(parse_bind("/etc:/host-etc").unwrap_err().contains("host path"));
        assert!(parse_bind("./x:/x").unwrap_err().contains("absolute"));
        assert_eq!(
            parse_volume_flag("/etc:/host-etc:ro").unwrap(),
            VolumeFlag::Bind(crate::bind::BindMount {
                source: "/etc".into(),
                target: "/host-etc".into(),
                read_only: true
            })
        );
        assert!(parse_bind("data:relative").unwrap_err().contains("absolute"));
        assert!(parse_bind("data:/a/../b").is_err());
        assert!(parse_bind("data:/").is_err());
        assert!(parse_bind("data:/x:rx").unwrap_err().contains("mode"));
        assert!(parse_bind("a:/x").is_err(), "one-character names are not Docker's");
        assert!(parse_bind("da ta:/x").is_err());
        assert!(parse_bind("data").is_err());
    }

    #[test]
    fn a_container_mounts_each_volume_once_and_at_most_four_disks() {
        let m = |name: &str, target: &str| VolumeMount {
            name: name.into(),
            target: target.into(),
            read_only: false,
        };
        assert!(check_mounts(&[m("a1", "/a"), m("b1", "/b")]).is_ok());
        assert!(check_mounts(&[m("a1", "/a"), m("b1", "/a")]).is_err());
        assert!(check_mounts(&[m("a1", "/a"), m("a1", "/b")]).is_err());
        let five: Vec<_> = (0..5).map(|i| m(&format!("v{i}"), &format!("/m{i}"))).collect();
        assert!(
            check_mounts(&five).is_ok(),
            "shared volumes are not limited to the disk slots"
        );
        assert!(matches!(slot_disks(&five), Err(VolumeError::TooManyDisks(5))));
        let many: Vec<_> = (0..69).map(|i| m(&format!("v{i}"), &format!("/m{i}"))).collect();
        assert!(check_mounts(&many).unwrap_err().contains("at most 68"));
    }
}
