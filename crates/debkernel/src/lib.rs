//! Debian kernel packages as hull uses them: fetched with `apt-get download`,
//! unpacked into a cache directory (never installed into the host's /boot),
//! their loadable modules resolved from `modules.dep`, and initramfs archives
//! (newc cpio) built to carry exactly the modules a guest needs.
//!
//! Used for the guest kernel (`linux-image-cloud-amd64`) and for the kernel of
//! the emulated test host `vmhost` (`linux-image-amd64`).

mod initramfs;
mod modules;
mod package;

pub use initramfs::{is_static_elf, Initramfs};
pub use modules::{ModuleIndex, ModuleNotFound};
pub use package::{fetch, KernelPackage, PackageError};

/// Debian's metapackage for the generic kernel (has 9p, kvm, everything).
pub const GENERIC_METAPACKAGE: &str = "linux-image-amd64";
/// Debian's metapackage for the cloud kernel hull boots its guests with.
pub const CLOUD_METAPACKAGE: &str = "linux-image-cloud-amd64";
