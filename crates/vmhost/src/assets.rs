//! The test host's kernel and initramfs, built once and cached by content.

use std::fs;
use std::path::{Path, PathBuf};

use debkernel::{Initramfs, KernelPackage, GENERIC_METAPACKAGE};
use sha2::{Digest, Sha256};

/// Modules the initramfs loads itself: 9p root, overlay, and KVM on emulated AMD-V.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "kvm_amd"];
const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("{0}")]
    Package(#[from] debkernel::PackageError),
    #[error("{BUSYBOX} is missing or not statically linked; install it with: apt-get install busybox-static")]
    NoStaticBusybox,
    #[error("{0}")]
    Module(#[from] debkernel::ModuleNotFound),
    #[error("building the initramfs in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a vmhost boot needs.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: KernelPackage,
    pub initramfs: PathBuf,
}

/// Fetches the generic kernel (once) and builds the initramfs if its inputs
/// changed. An initramfs whose inputs changed, or a half-written one, is
/// never used: its name is the hash of everything that went into it.
pub fn prepare(cache_dir: &Path) -> Result<Assets, AssetsError> {
    let kernel = debkernel::fetch(GENERIC_METAPACKAGE, &cache_dir.join("kernels"))?;
    let busybox = fs::read(BUSYBOX).map_err(|_| AssetsError::NoStaticBusybox)?;
    if !debkernel::is_static_elf(&busybox) {
        return Err(AssetsError::NoStaticBusybox);
    }
    let modules = kernel.module_index()?.resolve(BOOT_MODULES)?;
    let init = init_script(&kernel);

    let mut hash = Sha256::new();
    hash.update(kernel.package.as_bytes());
    hash.update(&busybox);
    hash.update(init.as_bytes());
    for m in &modules {
        hash.update(m.to_string_lossy().as_bytes());
    }
    let key = hex::encode(&hash.finalize()[..12]);
    let initramfs = cache_dir.join(format!("initramfs-{key}.cpio"));
    if !is_complete_archive(&initramfs) {
        build_initramfs(&initramfs, busybox, &init, &modules)?;
        remove_stale(cache_dir, &initramfs);
    }
    Ok(Assets { kernel, initramfs })
}

fn build_initramfs(dest: &Path, busybox: Vec<u8>, init: &str, modules: &[PathBuf]) -> Result<(), AssetsError> {
    let io = |source| AssetsError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let mut archive = Initramfs::new();
    for dir in ["proc", "sys", "dev", "host", "rw", "newroot", "modules"] {
        archive.dir(dir);
    }
    archive
        .file("bin/busybox", 0o755, busybox)
        .file("init", 0o755, init.as_bytes().to_vec());
    let mut order = String::new();
    for module in modules {
        let name = module.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        archive.copy(&format!("modules/{name}"), 0o644, module).map_err(io)?;
        order.push_str(name);
        order.push('\n');
    }
    archive.file("modules/order", 0o644, order.into_bytes());
    archive.write_to(dest).map_err(io)
}

/// A newc archive ends with the trailer entry (padded to 4 bytes); a
/// truncated or foreign file does not.
fn is_complete_archive(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else { return false };
    let end = bytes.len().saturating_sub(16);
    bytes
        .get(end.saturating_sub(32)..)
        .is_some_and(|tail| tail.windows(10).any(|w| w == b"TRAILER!!!"))
}

fn remove_stale(cache_dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != keep && name.starts_with("initramfs-") {
            let _ = fs::remove_file(path);
        }
    }
}

/// The test host's PID 1. Shares are passed on the kernel command line as
/// `vmhost.shares=TAG:PATH,...`; the first is the run directory holding
/// `run.sh`, where the command's exit status is written back.
fn init_script(kernel: &KernelPackage) -> String {
    let modules = kernel.modules_dir();
    format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
say() {{ echo "vmhost: $*"; }}
for m in $($B cat /modules/order); do $B insmod /modules/$m || say "insmod $m failed"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host || say "cannot mount the host's root over 9p"
$B mount -t tmpfs -o size=90% tmpfs /rw; $B mkdir -p /rw/up /rw/work
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/up,workdir=/rw/work /newroot || say "overlay mount failed"
R=/newroot
$B mount --move /dev $R/dev
$B mount -t proc proc $R/proc; $B mount -t sysfs sys $R/sys
$B mkdir -p $R/dev/pts $R/dev/shm; $B mount -t devpts -o ptmxmode=0666 devpts $R/dev/pts; $B mount -t tmpfs shm $R/dev/shm
$B mount -t tmpfs tmpfs $R/run
$B mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
$B mkdir -p $R/lib/modules/{release}; $B mount --bind $R{modules} $R/lib/modules/{release}
SHARES=$($B sed -n 's/.*vmhost.shares=\([^ ]*\).*/\1/p' /proc/cmdline)
RUN=
for s in $(echo $SHARES | $B tr , ' '); do
  tag=${{s%%:*}}; path=${{s#*:}}; [ -z "$RUN" ] && RUN=$path
  $B mkdir -p $R$path; $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 $tag $R$path || say "cannot mount share $path"
done
$B hostname vmhost; $B ip link set lo up
echo "@@vmhost:ready@@"
$B chroot $R /bin/sh $RUN/run.sh
echo $? > $R$RUN/status
echo "@@vmhost:exited@@"
$B sync
$B poweroff -f
"#,
        release = kernel.release,
        modules = modules.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elves_are_told_apart() {
        let busybox = fs::read(BUSYBOX);
        if let Ok(busybox) = busybox {
            assert!(debkernel::is_static_elf(&busybox), "{BUSYBOX} should be the static one");
        }
        assert!(!debkernel::is_static_elf(&fs::read("/bin/sh").unwrap()));
        assert!(!debkernel::is_static_elf(b"\x7fELF\x02 truncated"));
        assert!(!debkernel::is_static_elf(b""));
    }
}
