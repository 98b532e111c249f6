//! One host's container lifecycle: where hull keeps its data, the guest
//! (Debian's cloud kernel and an initramfs with hull-agent, set up once), root
//! filesystem disks, writable disks, named volumes, which containers use which image,
//! templates (a VM booted once and saved), and running a container in a
//! microVM cloned from its template (or booted cold).

pub mod agent_link;
pub mod bind;
pub mod console;
pub mod container;
pub mod container_log;
pub mod exec_link;
pub mod guest;
pub mod held;
pub mod join;
pub mod log_config;
pub mod moving;
pub mod network;
pub mod rejoin;
pub mod rootfs;
pub mod run;
pub mod share_watch;
pub mod shim;
pub mod standby;
pub mod template;
pub mod usage;
pub mod volume;
pub mod writable;

use std::path::PathBuf;

pub use debkernel::KernelPackage;

/// hull's data directory (`HULL_DATA_DIR`, default `/var/lib/hull`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("HULL_DATA_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/hull".into())
}

/// Makes every file and directory this process (and what it starts)
/// creates private to its owner, as dockerd's are: containers' disks,
/// volumes, unpacked layers and logs are 0600, directories 0700. Called
/// first thing by hull, hulld and hull-shim; what another user must reach
/// (the API socket, a jailed VMM's socket directory) is opened up by name.
pub fn private_files() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
}

/// Creates hull's data directory if needed and makes it root's alone
/// (0700), an older one included.
pub fn ensure_private_data_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Where unix sockets go (`HULL_RUN_DIR`, default `/run/hull`): a socket's
/// path must fit in 108 bytes, which a data directory may not leave room for.
pub fn run_dir() -> PathBuf {
    std::env::var_os("HULL_RUN_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/run/hull".into())
}

/// Where hulld's containers keep their files, one directory per container ID.
pub fn containers_dir() -> PathBuf {
    data_dir().join("containers")
}

/// Where guest kernel packages are unpacked.
pub fn kernels_dir() -> PathBuf {
    data_dir().join("kernels")
}

/// Fetches (once) and unpacks the guest kernel: `apt-get download` of the
/// package behind `linux-image-cloud-amd64`.
pub fn setup_guest_kernel() -> Result<KernelPackage, debkernel::PackageError> {
    debkernel::fetch(debkernel::CLOUD_METAPACKAGE, &kernels_dir())
}

/// A binary installed beside the running one (`hull-vmm` next to `hull`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The host's memory in bytes (`MemTotal`).
pub fn host_memory_bytes() -> u64 {
    vmm::host::memory_total_mib().unwrap_or(0) * 1024 * 1024
}

/// Opens (creating) `path` and takes an exclusive flock on it, waiting for
/// it or not; without waiting, a lock held elsewhere is `WouldBlock`.
pub(crate) fn lock_file(path: &std::path::Path, wait: bool) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let mode = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&file), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}
