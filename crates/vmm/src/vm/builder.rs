//! Building a VM, from a kernel or from a snapshot: the KVM VM and its
//! in-kernel irqchip and PIT, guest memory, the devices and the vCPUs, all
//! set and not yet running.

use crate::guest_memory::GuestMemoryMmap;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{kvm_err, Start, VmConfig, VmError};
use crate::device_manager::DeviceManager;
use crate::layout::*;
use crate::snapshot::{self, VmState};
use crate::{acpi, boot, cpu, persist, trace, vcpu_state};

/// A VM ready to run.
pub struct BuiltVm {
    pub vm: VmFd,
    pub memory: GuestMemoryMmap,
    pub devices: DeviceManager,
    pub vcpus: Vec<VcpuFd>,
    /// The MSRs a snapshot saves (making a template only).
    pub msr_indices: Vec<u32>,
    /// Kept for a migration's state (the MSR list); the jail has no /dev/kvm.
    pub kvm: Kvm,
    /// The template this VM's memory is mapped from, if it is a clone.
    pub clone_of: Option<[u8; 32]>,
    /// A migrating VM's source, whose pages and state are still to come
    /// (`vm::run`: `incoming::receive`, then `apply_state`); then told when
    /// the VM is ready to run here, and that it runs.
    pub incoming: Option<std::fs::File>,
    /// A migrating VM's MACs, by NIC slot, to announce once it runs here.
    pub announce: crate::migration::stream::SlotMacs,
}

pub fn build(config: &VmConfig) -> Result<BuiltVm, VmError> {
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
    let msr_indices = match &config.snapshot_to {
        Some(_) => {
            vcpu_state::check_xsave_size(&kvm)?;
            vcpu_state::msr_indices(&kvm)?
        }
        None => Vec::new(),
    };
    let vm = create_vm(&kvm)?;
    trace::mark("VM created");

    let mut incoming = None;
    let mut announce = Vec::new();
    let (memory, saved, clone_of) = match &config.start {
        Start::Restore { snapshot } => {
            let (saved, id) = read_snapshot(snapshot, config)?;
            let memory = snapshot::map_memory(snapshot, config.memory_mib)?;
            (memory, Some(saved), Some(id))
        }
        Start::Boot { .. } => (anonymous_memory(config.memory_mib)?, None, None),
        Start::Incoming { from, template, .. } => {
            let accepted = super::incoming::accept(from, template.as_deref(), config)?;
            incoming = Some(accepted.conn);
            announce = accepted.guest_macs;
            (accepted.memory, None, accepted.clone_of)
        }
    };
    register_memory(&vm, &memory, config.memory_mib)?;
    trace::mark("memory mapped");
    let devices = DeviceManager::new(&vm, config, &memory, saved.as_ref())?;
    trace::mark("devices and their eventfds made");

    let cpuid = cpu::supported_cpuid(&kvm)?;
    let vcpus = (0..config.vcpus)
        .map(|id| vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU")))
        .collect::<Result<Vec<_>, _>>()?;
    match (&config.start, &saved) {
        (
            Start::Boot {
                kernel,
                initrd,
                cmdline,
            },
            _,
        ) => {
            let rsdp = acpi::write_tables(&memory, config.vcpus, &devices.slots())?;
            let entry = boot::load(&memory, kernel, initrd.as_deref(), cmdline, rsdp)?.entry;
            cpu::write_boot_tables(&memory)?;
            for (id, vcpu) in (0..config.vcpus).zip(&vcpus) {
                cpu::configure(vcpu, &cpuid, id, config.vcpus, entry)?;
            }
        }
        (Start::Restore { .. }, Some(state)) => {
            set_cpuids(&vcpus, &cpuid, config)?;
            restore_registers_and_chips(&vm, &vcpus, state)?;
            devices.announce_restore();
        }
        // A migrated VM's vCPUs get their CPUID now, while the source still
        // runs the guest, and the rest with the VM's state (`apply_state`).
        (Start::Incoming { .. }, _) => set_cpuids(&vcpus, &cpuid, config)?,
        (Start::Restore { .. }, None) => return Err(VmError::SnapshotMismatch("no saved state to start from".into())),
    }
    trace::mark("vCPUs and irqchip set");
    Ok(BuiltVm {
        vm,
        memory,
        devices,
        vcpus,
        msr_indices,
        kvm,
        clone_of,
        incoming,
        announce,
    })
}

/// Each vCPU's CPUID: the first step of a restore (Firecracker's order:
/// CPUID first, then the state whose meaning depends on it).
fn set_cpuids(vcpus: &[VcpuFd], cpuid: &kvm_bindings::CpuId, config: &VmConfig) -> Result<(), VmError> {
    for (id, vcpu) in (0..config.vcpus).zip(vcpus) {
        vcpu_state::set_cpuid(vcpu, cpuid, id, config.vcpus)?;
    }
    Ok(())
}

/// A restored or migrated VM's vCPU registers and in-kernel chips, once
/// the vCPUs have their CPUID.
fn restore_registers_and_chips<'a>(
    vm: &VmFd,
    vcpus: impl IntoIterator<Item = &'a VcpuFd>,
    state: &VmState,
) -> Result<(), VmError> {
    for (vcpu, saved_vcpu) in vcpus.into_iter().zip(&state.vcpus) {
        vcpu_state::restore_registers(vcpu, saved_vcpu)?;
    }
    persist::restore_vm_state(vm, state)
}

/// A migrated VM's state as it began (`Frame::EarlyState`), taken while
/// the pages come: what of it can be set twice is set into the vCPUs (not
/// run), where `apply_state` will set the pause's state over it. A state
/// this host's KVM refuses so refuses the VM before its memory travels.
pub(super) fn rehearse_state<'a>(
    vcpus: impl IntoIterator<Item = &'a VcpuFd>,
    early: &super::incoming::Arrived,
) -> Result<(), VmError> {
    for (vcpu, saved_vcpu) in vcpus.into_iter().zip(&early.state.vcpus) {
        vcpu_state::rehearse_registers(vcpu, saved_vcpu)?;
    }
    trace::mark("migration: early state set");
    Ok(())
}

/// A migrated VM's state, arrived, given to the VM made before it came
/// (its vCPUs' CPUID already set): vCPUs, chips, and devices and their
/// host sides (whose threads are parked).
pub(super) fn apply_state<'a>(
    vm: &VmFd,
    devices: &DeviceManager,
    vcpus: impl IntoIterator<Item = &'a VcpuFd>,
    config: &VmConfig,
    arrived: &super::incoming::Arrived,
) -> Result<(), VmError> {
    let state = &arrived.state;
    restore_registers_and_chips(vm, vcpus, state)?;
    trace::mark("migration: vCPUs and chips set");
    devices.apply_state(config, state)?;
    trace::mark("migration: devices set");
    // The shares' open files are opened again here, before `Ready`: one
    // that cannot be refuses the VM, which runs on at its source.
    devices
        .restore_backend_states(&arrived.backends)
        .map_err(|e| VmError::Migration(format!("refused the VM: {e}")))?;
    devices.announce_restore();
    devices.announce_arrival();
    trace::mark("migration: the state is applied");
    Ok(())
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// A snapshot's state, checked against the shape this VM was asked for,
/// and its identity (what a migration names this clone's template by).
fn read_snapshot(dir: &std::path::Path, config: &VmConfig) -> Result<(VmState, [u8; 32]), VmError> {
    let (state, id) = snapshot::read_state_with_id(dir)?;
    check_shape(&state, config)?;
    Ok((state, id))
}

/// Whether a saved or migrated VM's state has the memory and vCPUs asked for.
pub(super) fn check_shape(state: &VmState, config: &VmConfig) -> Result<(), VmError> {
    if state.memory_mib != config.memory_mib || state.vcpus.len() != usize::from(config.vcpus) {
        return Err(VmError::SnapshotMismatch(format!(
            "it is a {} MiB, {}-vCPU VM; {} MiB and {} vCPUs were asked for",
            state.memory_mib,
            state.vcpus.len(),
            config.memory_mib,
            config.vcpus
        )));
    }
    Ok(())
}

pub(super) fn anonymous_memory(mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let size = (mib << 20) as usize;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| VmError::Memory {
        mib,
        detail: e.to_string(),
    })
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap, mib: u64) -> Result<(), VmError> {
    set_memory_slots(vm, memory, mib, 0)
}

/// Gives KVM guest memory's slots, one per region, with `flags` (a
/// migration turns `KVM_MEM_LOG_DIRTY_PAGES` on and off on the same slots).
pub(super) fn set_memory_slots(vm: &VmFd, memory: &GuestMemoryMmap, mib: u64, flags: u32) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                detail: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags,
        };
        // SAFETY: the mapping is owned by `memory`, which outlives the VM's use of it
        // (the process exits when the VM stops); a slot made again over the
        // same mapping changes only its flags.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
