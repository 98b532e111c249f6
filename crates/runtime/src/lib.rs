//! One host's container lifecycle. For now: where hull keeps its data, and
//! setting up the guest kernel (Debian's cloud kernel, unpacked into the data
//! directory, never installed into the host's /boot).

use std::path::PathBuf;

pub use debkernel::KernelPackage;

/// hull's data directory (`HULL_DATA_DIR`, default `/var/lib/hull`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("HULL_DATA_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/hull".into())
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
