//! Why a VM could not be built, run or saved.

use super::config::{MAX_VCPUS, MIN_MEMORY_MIB};
use crate::{acpi, boot, cpu};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest memory must be between {MIN_MEMORY_MIB} MiB and {max} MiB; {requested} MiB was asked for")]
    MemorySize { requested: u64, max: u64 },
    #[error("{vcpus} vCPUs asked for; hull supports 1 to {max}", max = MAX_VCPUS)]
    VcpuCount { vcpus: u8, max: u8 },
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user use it?)")]
    NoKvm(kvm_ioctls::Error),
    #[error("KVM refused {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("allocating {mib} MiB of guest memory: {detail}")]
    Memory { mib: u64, detail: String },
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    #[error("{0}")]
    Cpu(#[from] cpu::CpuError),
    #[error("{0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("console log {path}: {source}")]
    SerialLog { path: String, source: std::io::Error },
    #[error("disk {path}: {source}")]
    Disk { path: String, source: std::io::Error },
    #[error("vsock socket {path}: {source}")]
    Vsock { path: String, source: std::io::Error },
    #[error("tap device {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
    #[error("{0}")]
    Share(#[from] crate::devices::virtio::fs::ShareError),
    #[error("the VM has no NIC {0}")]
    NoSuchNic(u8),
    #[error("the VM has no disk slot {0}")]
    NoSuchDisk(u8),
    #[error("disk slot {slot}: {source}")]
    PlugDisk { slot: u8, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Control { path: String, source: std::io::Error },
    #[error("{count} devices asked for; at most {max} fit")]
    TooManyDevices { count: usize, max: usize },
    #[error("starting the {what} thread: {source}")]
    Thread { what: String, source: std::io::Error },
    #[error("vCPU {id} stopped: {reason}")]
    Vcpu { id: u8, reason: String },
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("the snapshot does not fit this VM: {0}")]
    SnapshotMismatch(String),
    #[error("saving the VM: {0}")]
    Save(String),
    #[error("{0}")]
    Seccomp(String),
    #[error("jailing the VMM: {0}")]
    Jail(String),
    #[error("taking the migrated VM: {0}")]
    Migration(String),
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub(crate) fn thread_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Thread { what, source }
}

/// A fresh non-blocking eventfd.
pub(crate) fn eventfd() -> Result<vmm_sys_util::eventfd::EventFd, VmError> {
    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
        what: "an eventfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}
