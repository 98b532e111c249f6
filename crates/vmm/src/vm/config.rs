//! What a VM is made of: its start, shape, disks, NIC, vsock and console.

use std::path::PathBuf;

use super::VmError;
use crate::layout::MAX_MEMORY;

/// The smallest guest the stock kernel plus an initramfs boots in.
pub const MIN_MEMORY_MIB: u64 = 64;

/// The most vCPUs hull gives one VM (APIC ids fit in the MADT's u8 ids).
pub const MAX_VCPUS: u8 = 32;

/// Where a VM's first instruction comes from.
#[derive(Debug, Clone)]
pub enum Start {
    /// Boot a kernel through the Linux 64-bit boot protocol.
    Boot {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Resume a snapshot directory (`state` + `memory`), its memory mapped
    /// copy-on-write; the devices get this config's backends.
    Restore { snapshot: PathBuf },
    /// Take a running VM from another hull-vmm, which connects to a unix
    /// socket made at `from` (or is connected already: a descriptor from
    /// hulld, the other host's migration connection); if it is a clone of the snapshot at
    /// `template`, memory is mapped from it and only the clone's own pages
    /// travel. The devices get this config's backends, as in a restore.
    /// `receive_disks`: the read-write disks given are empty copies the
    /// source fills (the VM comes from another host).
    Incoming {
        from: IncomingFrom,
        template: Option<PathBuf>,
        receive_disks: bool,
    },
}

/// Where a migrating VM comes from.
#[derive(Debug, Clone)]
pub enum IncomingFrom {
    /// The source connects to a unix socket made at this path.
    Listen(PathBuf),
    /// A connected socket this process inherited (its descriptor number).
    Connected(i32),
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub start: Start,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The guest's console is written here.
    pub serial_log: Option<PathBuf>,
    /// Also copy the console to our stderr.
    pub console_echo: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-vsock, its host side a unix socket.
    pub vsock: Option<VsockConfig>,
    /// virtio-net NICs, in slot order (after the entropy source, so VMs
    /// without one keep their device slots): the guest's eth0, eth1, ...
    pub nics: Vec<NetConfig>,
    /// virtio-fs, after the NICs: `None` no device; `Some` the device,
    /// sharing these host directories (none in a template).
    pub shares: Option<Vec<crate::devices::virtio::fs::Share>>,
    /// Make a template: when the guest asks (`proto::SNAPSHOT_PORT`), pause
    /// and save the VM into this directory, then stop.
    pub snapshot_to: Option<PathBuf>,
    /// Serve the control channel (`proto::vmm_control`) on this unix socket.
    pub control_socket: Option<PathBuf>,
    /// Tests only: a guest write to `layout::SECCOMP_SELFTEST_ADDR` makes the
    /// vCPU thread call what its filter forbids.
    pub seccomp_selftest: bool,
    /// Lock the VMM down in its jail once the VM is built (`jail`).
    pub jail: Option<crate::jail::Jail>,
}

/// The most NICs a VM can have (each takes a virtio-mmio slot and an interrupt line).
pub const MAX_NICS: u8 = 4;

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

/// What a NIC is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// The tap interface of this name (made if missing, and then gone with the VMM).
    Tap(String),
    /// A tap opened by whoever started us, passed down as this fd.
    TapFd(i32),
    /// Nothing: frames are dropped (a template's NIC slot, `--network none`).
    Detached,
}

impl std::fmt::Display for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetBackend::Tap(name) => write!(f, "{name}"),
            NetBackend::TapFd(fd) => write!(f, "fd {fd}"),
            NetBackend::Detached => write!(f, "(detached)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Checks a configuration before anything is allocated.
pub fn validate(config: &VmConfig) -> Result<(), VmError> {
    validate_shape(config.memory_mib, config.vcpus)
}

/// Checks a VM's memory size and vCPU count.
pub fn validate_shape(memory_mib: u64, vcpus: u8) -> Result<(), VmError> {
    let max = (MAX_MEMORY >> 20).min(crate::host::memory_total_mib().unwrap_or(u64::MAX));
    if !(MIN_MEMORY_MIB..=max).contains(&memory_mib) {
        return Err(VmError::MemorySize {
            requested: memory_mib,
            max,
        });
    }
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmError::VcpuCount { vcpus, max: MAX_VCPUS });
    }
    Ok(())
}
