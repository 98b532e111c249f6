//! The guest's filesystems: the agent's own (early) and the container's root.

use std::ffi::CString;
use std::io;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use proto::{MountSource, MountSpec, RunSpec};

pub(crate) fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount argument"));
    let (source_c, target_c, fstype_c, data_c) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // A missing mount point is made a directory; a file stays one (a
    // single file's bind).
    if std::fs::symlink_metadata(target).is_err() {
        std::fs::create_dir_all(target)?;
    }
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount {fstype} {source} on {target}: {e}"),
        ));
    }
    Ok(())
}

/// /proc, /sys and /dev for the agent itself.
pub fn early() -> io::Result<()> {
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    Ok(())
}

/// The image's filesystem and the container's writes: the overlay's layers.
pub const IMAGE: &str = "/mnt/image";
/// Where the VM's writable disk is mounted.
pub(crate) const WRITABLE: &str = "/mnt/rw";

/// The overlay's upper layer: the container's own changes.
pub fn upper() -> String {
    format!("{WRITABLE}/{}", proto::WRITABLE_UPPER)
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// How much of a container's root a standby's `Prepare` mounted ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prepared {
    #[default]
    Nothing,
    /// The image, the writable disk and their overlay.
    Layers,
    /// Those and the kernel filesystems inside.
    Whole,
}

/// Mounts the image disk read-only with the container's writable disk (or a
/// tmpfs) as the overlay's upper layer at `root`, and the kernel
/// filesystems a container expects inside it, but what a standby's
/// `Prepare` mounted already (`prepared`).
pub fn container_root(spec: &RunSpec, root: &str, prepared: Prepared) -> io::Result<()> {
    if prepared == Prepared::Nothing {
        layers(&spec.root_device, &spec.root_fstype, spec.rw_device.as_deref(), root)?;
    }
    match prepared {
        Prepared::Whole => Ok(()),
        _ => kernel_filesystems(root),
    }
}

/// A standby's root, before its container is known: the layers, and the
/// kernel filesystems unless a mount point in the image is reached through
/// a symbolic link (a mount there would land outside the root, where the
/// container that takes the VM, maybe of another image, would find it:
/// such an image's container mounts them itself). On failure, nothing of
/// it stays mounted.
pub fn prepare_root(root_device: &str, root_fstype: &str, rw_device: &str, root: &str) -> io::Result<Prepared> {
    let undone = |e: io::Error, mounted: Prepared| {
        let _ = release_root(root, mounted);
        e
    };
    layers(root_device, root_fstype, Some(rw_device), root).map_err(|e| undone(e, Prepared::Layers))?;
    if KERNEL_MOUNT_POINTS.iter().any(|p| no_link_on_the_way(root, p).is_err()) {
        return Ok(Prepared::Layers);
    }
    kernel_filesystems(root).map_err(|e| undone(e, Prepared::Whole))?;
    Ok(Prepared::Whole)
}

/// The image disk read-only, the writable disk (or a tmpfs) and their
/// overlay at `root`.
pub fn layers(root_device: &str, root_fstype: &str, rw_device: Option<&str>, root: &str) -> io::Result<()> {
    // Never written, so an ext4 image has no journal to replay: not loading
    // it is a cheaper mount.
    let image_options = if root_fstype == "ext4" { "noload" } else { "" };
    mount(root_device, IMAGE, root_fstype, libc::MS_RDONLY, image_options)?;
    crate::steps::done("the image disk mounted");
    match rw_device {
        // Inode tables are zero already (the host formats the disk so); a
        // disk from an older hull would otherwise have the kernel write
        // them all out while the container runs.
        Some(device) => mount(device, WRITABLE, "ext4", libc::MS_NOATIME, "noinit_itable")?,
        None => mount("tmpfs", WRITABLE, "tmpfs", 0, "mode=0755")?,
    }
    crate::steps::done("the writable disk mounted");
    let upper = upper();
    let work = format!("{WRITABLE}/{}", proto::WRITABLE_WORK);
    // Made by the host's format; a tmpfs or an older disk has them made here.
    for dir in [&upper, &work] {
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::create_dir(dir)?;
        }
    }
    crate::steps::done("the overlay's directories there");
    mount(
        "overlay",
        root,
        "overlay",
        0,
        &format!("lowerdir={IMAGE},upperdir={upper},workdir={work}"),
    )?;
    crate::steps::done("the overlay mounted");
    Ok(())
}

/// Unmounts what `prepare_root` mounted at `root` (`prepared`), the last
/// mounted first; what is not mounted is passed over, and every mount is
/// tried (the first failure is returned). Once this returns `Ok`, nothing
/// holds the disks: the host may take them out.
pub fn release_root(root: &str, prepared: Prepared) -> io::Result<()> {
    // Only mounted (and so checked free of links) are the kernel mount
    // points unmounted: one through a link would unmount the agent's own.
    let kernel: &[&str] = match prepared {
        Prepared::Whole => &KERNEL_MOUNT_POINTS,
        _ => &[],
    };
    let kernel = kernel.iter().rev().map(|p| format!("{root}{p}"));
    let layers = [root, WRITABLE, IMAGE].map(String::from);
    let mut first_failure = None;
    for target in kernel.chain(layers) {
        let target_c =
            CString::new(target.as_str()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a valid NUL-terminated path for the call's duration.
        if unsafe { libc::umount2(target_c.as_ptr(), libc::UMOUNT_NOFOLLOW) } != 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) && first_failure.is_none() {
                first_failure = Some(io::Error::new(e.kind(), format!("unmounting {target}: {e}")));
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// The kernel filesystems a container expects, inside its `root`; its
/// `/dev` the VM's (the VM's own container owns the VM).
pub fn kernel_filesystems(root: &str) -> io::Result<()> {
    kernel_filesystems_with(root, Dev::Vm)
}

/// The same for a second container in the VM (`joined`): no mount point
/// may be a symbolic link (its image must not aim a mount at the VM's own
/// container or the agent), and its `/dev` is a tmpfs of its own with the
/// usual devices only, not the VM's, whose disks hold the other
/// container's files.
pub fn confined_kernel_filesystems(root: &str) -> io::Result<()> {
    kernel_filesystems_with(root, Dev::Own)
}

/// Where `kernel_filesystems_with` mounts, in its order (for `release_root`).
const KERNEL_MOUNT_POINTS: [&str; 6] = ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dev {
    Vm,
    Own,
}

/// The devices a container's own `/dev` has, as Docker's default:
/// (name, major, minor).
const CONTAINER_DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn kernel_filesystems_with(root: &str, dev: Dev) -> io::Result<()> {
    let inside = |p: &str| -> io::Result<String> {
        if dev == Dev::Own {
            no_link_on_the_way(root, p)?;
        }
        Ok(format!("{root}{p}"))
    };
    mount("proc", &inside("/proc")?, "proc", NOSUID_NODEV_NOEXEC, "")?;
    mount(
        "sysfs",
        &inside("/sys")?,
        "sysfs",
        NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
        "",
    )?;
    match dev {
        Dev::Vm => mount("devtmpfs", &inside("/dev")?, "devtmpfs", libc::MS_NOSUID, "mode=0755")?,
        Dev::Own => {
            let dev = inside("/dev")?;
            mount("tmpfs", &dev, "tmpfs", libc::MS_NOSUID | libc::MS_NOEXEC, "mode=0755")?;
            for (name, major, minor) in CONTAINER_DEVICES {
                let node = std::ffi::CString::new(format!("{dev}/{name}")).map_err(io::Error::other)?;
                // SAFETY: a NUL-terminated path in the tmpfs just mounted.
                if unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (link, to) in [
                ("ptmx", "pts/ptmx"),
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
            ] {
                std::os::unix::fs::symlink(to, format!("{dev}/{link}"))?;
            }
        }
    }
    mount(
        "devpts",
        &inside("/dev/pts")?,
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount("shm", &inside("/dev/shm")?, "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777")?;
    mount(
        "tmpfs",
        &inside("/tmp")?,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    Ok(())
}

/// Refuses `path` under `root` when it, or a directory on the way to it,
/// is a symbolic link: a mount there would land where the link points,
/// resolved outside the container's root.
fn no_link_on_the_way(root: &str, path: &str) -> io::Result<()> {
    let mut at = std::path::PathBuf::from(root);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the image's {path} is a symbolic link: no mount goes there"),
            ));
        }
    }
    Ok(())
}

/// The agent run as `/proc/self/exe hull-mount SPEC` mounts one volume.
pub const HELPER_ARG: &str = "hull-mount";

/// Where the agent mounts the VM's shared host directories (virtio-fs):
/// outside the container's root, each bound into it where asked.
pub const SHARES: &str = "/shares";
/// The descriptor a bind mount's helper finds its shared directory on.
const SHARE_FD: libc::c_int = 3;

/// Mounts the container's volumes and bind mounts over its root, each by a
/// helper chrooted into `root`, so the mount point (made if missing)
/// resolves inside the container, symlinks included, as Docker resolves it.
pub fn volumes(spec: &RunSpec, root: &str) -> io::Result<()> {
    let shares = spec
        .mounts
        .iter()
        .any(|m| matches!(m.source, MountSource::Share { .. }));
    if shares {
        mount(
            proto::SHARES_TAG,
            SHARES,
            "virtiofs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "",
        )?;
    }
    for volume in &spec.mounts {
        let json = serde_json::to_string(volume).map_err(io::Error::other)?;
        let root = CString::new(root).map_err(io::Error::other)?;
        // A shared directory is reached before the chroot hides it, and
        // handed to the helper as a descriptor.
        let share = match &volume.source {
            MountSource::Share { index, file: None, .. } => Some(std::fs::File::open(format!("{SHARES}/{index}"))?),
            MountSource::Share {
                index,
                file: Some(name),
                ..
            } => Some(open_shared_file(&format!("{SHARES}/{index}"), name)?),
            MountSource::Disk { .. } => None,
        };
        let share_fd = share.as_ref().map(std::os::unix::io::AsRawFd::as_raw_fd);
        let mut command = Command::new("/proc/self/exe");
        command
            .args([HELPER_ARG, &json])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = share_fd {
                    if libc::dup2(fd, SHARE_FD) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mounting the volume on {}: {}",
                volume.target,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Fills an empty volume with what the container had at its mount point,
/// owners, modes, links and times kept, as Docker does on first use (a
/// volume on /etc/app starts with the image's config). Through a tar
/// stream: the tar crate already knows every file type.
fn copy_up(covered: &std::fs::File, target: &str) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let source = format!("/proc/self/fd/{}", covered.as_raw_fd());
    let (reader, writer) = std::io::pipe()?;
    let packer = std::thread::spawn(move || -> io::Result<()> {
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &source)?;
        builder.into_inner()?;
        Ok(())
    });
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    let unpacked = archive.unpack(target);
    // The reader goes first: a packer still writing then fails, not blocks.
    drop(archive);
    let packed = packer
        .join()
        .map_err(|_| io::Error::other("the copy's reader failed"))?;
    unpacked.and(packed)
}

/// The helper's `main`: makes the mount point and mounts the volume (or
/// binds the shared directory) there.
pub fn helper_main(spec: &str) -> i32 {
    let result = serde_json::from_str::<MountSpec>(spec)
        .map_err(|e| io::Error::other(format!("bad mount request: {e}")))
        .and_then(|volume| match &volume.source {
            MountSource::Share { file: Some(_), .. } => bind_shared_file(&volume),
            MountSource::Disk { device } => {
                std::fs::create_dir_all(&volume.target)?;
                mount_volume(device, &volume)
            }
            MountSource::Share { fill_if_empty, .. } => {
                std::fs::create_dir_all(&volume.target)?;
                bind_share(&volume, *fill_if_empty)
            }
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// A volume's disk on its mount point. A fresh volume's empty `lost+found`
/// is removed, so the volume starts empty as Docker's do (programs that
/// want an empty data directory refuse one that holds it); e2fsck remakes
/// it when it needs it.
fn mount_volume(device: &str, volume: &MountSpec) -> io::Result<()> {
    let mut flags = libc::MS_NOATIME | libc::MS_NOSUID | libc::MS_NODEV;
    if volume.read_only {
        flags |= libc::MS_RDONLY;
    }
    // Held across the mount: through it the directory the volume covers
    // can still be read.
    let covered = std::fs::File::open(&volume.target)?;
    mount(device, &volume.target, "ext4", flags, "")?;
    if !volume.read_only {
        let _ = std::fs::remove_dir(format!("{}/lost+found", volume.target));
        let empty = std::fs::read_dir(&volume.target)?.next().is_none();
        if empty {
            copy_up(&covered, &volume.target)?;
        }
    }
    Ok(())
}

/// The one file of a share (its directory holds nothing else the guest
/// can see), without following a symlink.
fn open_shared_file(share: &str, name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::other(format!("bad shared file name {name:?}")));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(format!("{share}/{name}"))
}

/// The shared file on descriptor `SHARE_FD` bound on the target, a file
/// (made empty if missing, as Docker makes it), read-only if asked.
fn bind_shared_file(volume: &MountSpec) -> io::Result<()> {
    let target = std::path::Path::new(&volume.target);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::other(format!(
                "cannot mount a file on directory {}: are you trying to mount a directory onto a file (or vice-versa)?",
                volume.target
            )))
        }
        Ok(_) => {}
        Err(_) => {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(target)?;
        }
    }
    let source = format!("/proc/self/fd/{SHARE_FD}");
    mount(&source, &volume.target, "", libc::MS_BIND, "")?;
    if volume.read_only {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        mount("", &volume.target, "", flags, "")?;
    }
    Ok(())
}

/// The shared directory on descriptor `SHARE_FD` bound on the mount point,
/// read-only if asked (the host enforces it too). A bind mount covers what
/// was there; an empty shared volume starts with it, as a disk volume does.
fn bind_share(volume: &MountSpec, fill_if_empty: bool) -> io::Result<()> {
    let source = format!("/proc/self/fd/{SHARE_FD}");
    let covered = std::fs::File::open(&volume.target)?;
    mount(&source, &volume.target, "", libc::MS_BIND, "")?;
    if fill_if_empty && !volume.read_only && std::fs::read_dir(&volume.target)?.next().is_none() {
        copy_up(&covered, &volume.target)?;
    }
    if volume.read_only {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        mount("", &volume.target, "", flags, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_through_a_link_is_refused() {
        let root = std::env::temp_dir().join(format!("hull-mounts-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("real/pts")).unwrap();
        // An image aiming /dev and /tmp elsewhere (another container's root, say).
        std::os::unix::fs::symlink(root.join("real"), root.join("dev")).unwrap();
        std::os::unix::fs::symlink("/somewhere/else", root.join("tmp")).unwrap();
        let root_text = root.to_str().unwrap();
        assert!(no_link_on_the_way(root_text, "/proc").is_ok());
        assert!(
            no_link_on_the_way(root_text, "/sys").is_ok(),
            "missing is made, not followed"
        );
        for linked in ["/dev", "/dev/pts", "/tmp"] {
            let e = no_link_on_the_way(root_text, linked).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{linked}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
