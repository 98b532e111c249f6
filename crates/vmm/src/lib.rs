//! hull's microVM monitor: KVM, guest memory, vCPUs, boot, devices.
//!
//! One `hull-vmm` process runs one VM. The guest is Debian's stock cloud
//! kernel: it boots through the Linux 64-bit boot protocol (`boot`, `cpu`) and
//! finds its devices through ACPI tables (`acpi`). A VM can be saved when its
//! guest asks (a template) and restored with its memory mapped copy-on-write
//! (a clone): `snapshot` holds the files, `vcpu_state` the per-vCPU part.
//! A running VM can be moved to another hull-vmm (`migration`).
//! This library also tells whether the host's KVM can run a standard guest
//! kernel at all (`host`).

pub mod acpi;
pub mod boot;
pub mod control;
pub mod cpu;
pub mod device_manager;
pub mod devices;
pub mod guest_memory;
pub mod host;
pub mod jail;
pub mod layout;
pub mod migration;
pub mod pause;
pub mod persist;
pub mod seccomp;
pub mod snapshot;
pub mod trace;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
