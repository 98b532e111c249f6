//! Saving a paused VM and putting a saved VM's KVM state back: the in-kernel
//! PIT, clock and interrupt controllers here, each vCPU in `vcpu_state`,
//! each device in its own folder; `snapshot` holds the file format.

use std::path::Path;

use crate::guest_memory::GuestMemoryMmap;
use kvm_ioctls::VmFd;

use crate::device_manager::{lock, DeviceManager};
use crate::snapshot::{self, VmState};
use crate::vcpu::Vcpu;
use crate::vcpu_state;
use crate::vm::{kvm_err, VmError};

/// Saves the paused VM into `dir`: memory first, the state file last (its
/// presence marks a complete snapshot).
pub fn save(
    dir: &Path,
    vm: &VmFd,
    devices: &DeviceManager,
    memory: &GuestMemoryMmap,
    vcpus: &[Vcpu],
    msr_indices: &[u32],
    memory_mib: u64,
) -> Result<(), VmError> {
    let state = capture(vm, devices, vcpus, msr_indices, memory_mib)?;
    std::fs::create_dir_all(dir).map_err(|e| VmError::Save(format!("{}: {e}", dir.display())))?;
    snapshot::write_memory(dir, memory)?;
    snapshot::write_state(dir, &state)?;
    Ok(())
}

/// Everything but memory that the paused VM is (a snapshot's state, or a
/// migration's last word).
pub fn capture(
    vm: &VmFd,
    devices: &DeviceManager,
    vcpus: &[Vcpu],
    msr_indices: &[u32],
    memory_mib: u64,
) -> Result<VmState, VmError> {
    let mut vcpu_states = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        vcpu_states.push(vcpu_state::save(&lock(&vcpu.fd), msr_indices)?);
    }
    crate::trace::mark("state: vCPUs read");
    let chip = |chip_id| -> Result<kvm_bindings::kvm_irqchip, VmError> {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        Ok(chip)
    };
    let state = VmState {
        memory_mib,
        vcpus: vcpu_states,
        pic_master: chip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        serial: devices.serial_registers(),
        devices: devices.device_states(),
    };
    Ok(state)
}

/// Puts the in-kernel PIT, clock and interrupt controllers back.
pub fn restore_vm_state(vm: &VmFd, state: &VmState) -> Result<(), VmError> {
    vm.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    // The guest's clock goes on from where the template stopped (no jump
    // that would fire every timer at once); the agent sets wall time.
    let clock = kvm_bindings::kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
