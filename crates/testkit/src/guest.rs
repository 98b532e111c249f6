//! Guest fixtures: Debian's cloud kernel and a busybox initramfs that loads
//! the virtio modules a hull guest uses and reports that its init ran.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use debkernel::{Initramfs, KernelPackage};

/// Printed by the fixture's init once its modules are loaded.
pub const GUEST_READY_MARKER: &str = "@@guest:ready@@";

/// The virtio drivers a hull guest needs: disks, vsock, entropy, the NIC,
/// virtio-fs, and the ACPI-described virtio-mmio transport.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
    "virtio_net",
    "virtiofs",
];

/// The cloud kernel, fetched once into the tests' guest directory.
pub fn cloud_kernel() -> Result<KernelPackage> {
    let kernels = crate::test_guest_dir().join("kernels");
    debkernel::fetch(debkernel::CLOUD_METAPACKAGE, &kernels).context("setting up the guest kernel")
}

/// What the fixture's init does after loading its modules and printing the ready marker.
pub const POWEROFF: &str = "$B poweroff -f";
/// Ends init, which makes the kernel panic ("Attempted to kill init").
pub const KILL_INIT: &str = "exit 1";

/// Builds a busybox initramfs for `kernel` at `dest` whose init ends with `then`.
pub fn busybox_initramfs(kernel: &KernelPackage, dest: &Path, then: &str) -> Result<PathBuf> {
    busybox_initramfs_with(kernel, dest, &[], then)
}

/// The same, with host programs (e.g. `/usr/bin/fio`) and their libraries.
pub fn busybox_initramfs_with(kernel: &KernelPackage, dest: &Path, programs: &[&str], then: &str) -> Result<PathBuf> {
    busybox_initramfs_with_files(kernel, dest, programs, &[], then)
}

/// The same, with host files at paths of their own too (`(path in the
/// guest without the leading /, host file)`).
pub fn busybox_initramfs_with_files(
    kernel: &KernelPackage,
    dest: &Path,
    programs: &[&str],
    files: &[(&str, &Path)],
    then: &str,
) -> Result<PathBuf> {
    let modules = kernel.module_index()?.resolve(GUEST_MODULES)?;
    let mut archive = Initramfs::new();
    archive
        .copy("bin/busybox", 0o755, Path::new("/bin/busybox"))
        .context("apt-get install busybox-static")?;
    archive.dir("proc").dir("sys").dir("dev");
    if !programs.is_empty() {
        archive.dir("usr").dir("usr/bin").dir("lib").dir("lib64");
    }
    for (path, source) in crate::oci::program_files(programs)? {
        archive.copy(&path, 0o755, &source)?;
    }
    for (path, source) in files {
        archive.copy(path, 0o644, source)?;
    }
    let mut order = String::new();
    for module in &modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        archive.copy(&format!("modules/{name}"), 0o644, module)?;
        order.push_str(&name);
        order.push(' ');
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         $B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev\n\
         for m in {order}; do $B insmod /modules/$m || echo \"insmod $m failed\"; done\n\
         echo {GUEST_READY_MARKER}\n\
         {then}\n"
    );
    archive.file("init", 0o755, init.into_bytes());
    archive.write_to(dest)?;
    Ok(dest.to_path_buf())
}
