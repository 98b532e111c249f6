//! `vmhost`: an emulated hardware-virtualization host for hull's VM tests.
//!
//! Where `/dev/kvm` is PVM (no VT-x/AMD-V), a stock guest kernel cannot boot.
//! vmhost boots Debian's generic kernel under QEMU TCG with `-cpu max`, which
//! emulates AMD-V, so `kvm_amd` inside gives a real `/dev/kvm`. The machine's
//! root is shared read-only over 9p with a tmpfs overlay on top (everything the
//! host has is visible, writes vanish), the kernel's whole module tree is bound
//! at `/lib/modules/RELEASE` so `modprobe` works, and one command runs inside as
//! root, its output streamed and its exit status returned.

mod assets;
mod boot;
mod kick;
mod script;

pub use assets::{prepare, Assets, AssetsError};
pub use boot::{run, Outcome, RunError, RunOptions};

/// Default cache directory (kernel package and initramfs), overridable with `HULL_VMHOST_DIR`.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("HULL_VMHOST_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/cache/hull/vmhost".into())
}
