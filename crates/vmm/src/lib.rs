//! hull's microVM monitor: KVM, guest memory, vCPUs, boot, devices.
//!
//! One `hull-vmm` process runs one VM. This library also tells whether the host's
//! KVM can run a standard guest kernel at all (`host`).

pub mod host;
