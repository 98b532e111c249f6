//! The guest every container VM boots: Debian's cloud kernel and an
//! initramfs holding hull-agent as /init plus exactly the modules it loads.

use std::path::{Path, PathBuf};

use debkernel::Initramfs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Modules the agent loads: the virtio-mmio transport (devices come from
/// ACPI), disks, the NIC, vsock, entropy, overlayfs for the container root
/// and virtio-fs for bind mounts.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
    "overlay",
    "virtiofs",
];

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("the guest is not set up yet: run `hull setup` first")]
    NotSetUp,
    #[error("the guest set-up is damaged ({0}): run `hull setup` again")]
    Damaged(String),
    #[error("{0}")]
    Kernel(#[from] debkernel::PackageError),
    #[error("hull-agent not found: build it with scripts/build-agent, or pass --agent PATH")]
    NoAgent,
    #[error("{0} is not a statically linked executable; the guest has no libraries for it")]
    AgentNotStatic(PathBuf),
    #[error("{0}")]
    Module(#[from] debkernel::ModuleNotFound),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// What `hull setup` produced, recorded in `DATA/guest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Guest {
    pub kernel_release: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

fn record_path() -> PathBuf {
    crate::data_dir().join("guest.json")
}

impl Guest {
    /// The guest set up earlier; a clear error if there is none.
    pub fn current() -> Result<Guest, GuestError> {
        let bytes = std::fs::read(record_path()).map_err(|_| GuestError::NotSetUp)?;
        let guest: Guest = serde_json::from_slice(&bytes).map_err(|e| GuestError::Damaged(e.to_string()))?;
        for file in [&guest.kernel, &guest.initramfs] {
            if !file.is_file() {
                return Err(GuestError::Damaged(format!("{} is missing", file.display())));
            }
        }
        Ok(guest)
    }
}

/// Where the static agent is looked for: `HULL_AGENT`, then the build of
/// `scripts/build-agent` (`target/agent/release/`) beside this binary's
/// target dir, then an installed one (`PREFIX/lib/hull/` for
/// `PREFIX/bin/hull`, where `scripts/setup` puts it).
pub fn find_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HULL_AGENT") {
        return Some(path.into());
    }
    let exe = std::env::current_exe().ok()?;
    let built = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("agent/release/hull-agent"));
    let installed = exe.ancestors().nth(2).map(|prefix| prefix.join("lib/hull/hull-agent"));
    built.chain(installed).find(|p| p.is_file())
}

/// Fetches the kernel, builds the initramfs around `agent`, records both.
pub fn setup(agent: &Path) -> Result<Guest, GuestError> {
    let io = |what: String| move |source| GuestError::Io { what, source };
    let kernel = crate::setup_guest_kernel()?;
    let agent_bytes = std::fs::read(agent).map_err(io(format!("reading {}", agent.display())))?;
    if !debkernel::is_static_elf(&agent_bytes) {
        return Err(GuestError::AgentNotStatic(agent.to_path_buf()));
    }
    let modules = kernel
        .module_index()
        .map_err(GuestError::Kernel)?
        .resolve(GUEST_MODULES)?;

    let mut hash = Sha256::new();
    hash.update(kernel.release.as_bytes());
    hash.update(&agent_bytes);
    let mut archive = Initramfs::new();
    archive.file("init", 0o755, agent_bytes);
    for dir in ["proc", "sys", "dev", "mnt", "tmp"] {
        archive.dir(dir);
    }
    let mut order = String::new();
    for module in &modules {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        archive
            .copy(&format!("lib/modules/hull/{name}"), 0o644, module)
            .map_err(io(format!("{}", module.display())))?;
        hash.update(name.as_bytes());
        order.push_str(&name);
        order.push('\n');
    }
    archive.file("lib/modules/hull/order", 0o644, order.into_bytes());

    let dir = crate::data_dir().join("guest");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let initramfs = dir.join(format!("initramfs-{}.cpio", hex::encode(&hash.finalize()[..12])));
    archive
        .write_to(&initramfs)
        .map_err(io(format!("writing {}", initramfs.display())))?;
    let guest = Guest {
        kernel_release: kernel.release.clone(),
        kernel: kernel.vmlinuz(),
        initramfs,
    };
    let record = serde_json::to_vec_pretty(&guest).map_err(|e| GuestError::Damaged(e.to_string()))?;
    image::store::write_atomic(&record_path(), &record).map_err(io("writing the guest record".into()))?;
    // Initramfs files of earlier set-ups are no longer referenced.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path() != guest.initramfs {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(guest)
}
