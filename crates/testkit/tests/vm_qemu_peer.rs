//! VM test: inside a hardware-KVM host (directly, or inside vmhost), the
//! Debian cloud kernel boots under QEMU-KVM microvm and its init runs.

use std::time::Duration;

use testkit::boot::{qemu_command, timed_boot};
use testkit::guest;
use vmm::host::HostKvm;

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn kvm_is_hardware_and_qemu_microvm_boots_the_cloud_kernel() {
    let host = vmm::host::classify();
    assert!(
        matches!(host, HostKvm::Hardware { .. }),
        "VM tests need hardware KVM, found {host}"
    );

    let kernel = guest::cloud_kernel().expect("guest kernel");
    let dir = std::env::temp_dir().join(format!("vm-qemu-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("guest.cpio"), guest::POWEROFF).expect("initramfs");
    let run = timed_boot(
        qemu_command(&kernel.vmlinuz(), &initramfs, 256),
        Duration::from_secs(300),
    )
    .expect("boot");
    let (elapsed, console) = (run.ready_after, run.console);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(console.iter().any(|l| l.contains(guest::GUEST_READY_MARKER)));
    let failed: Vec<_> = console
        .iter()
        .filter(|l| l.contains("insmod") && l.contains("failed"))
        .collect();
    assert!(failed.is_empty(), "virtio modules failed to load: {failed:?}");
    eprintln!("cloud kernel reached init with virtio modules in {elapsed:?}");
}
