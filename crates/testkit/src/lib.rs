//! Test and benchmark support shared by hull's VM tests and benchmarks:
//! guest fixtures (the Debian cloud kernel with a busybox initramfs), timed
//! boots of hull-vmm and of the QEMU
//! peer that hull is measured against, and median/p95 reporting to JSON under
//! `target/bench/`; OCI image fixtures and a real registry on loopback.

pub mod bench;
pub mod boot;
pub mod guest;
pub mod hulld;
pub mod oci;
pub mod own_dirs;
