//! Saving and restoring one paused vCPU: registers, special registers,
//! XSAVE/FPU, XCRs, debug registers, local APIC, MSRs and pending events.

use kvm_bindings::{CpuId, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use crate::cpu::{self, kvm, CpuError};
use crate::snapshot::VcpuState;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_ADJUST: u32 = 0x3b;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM's first kvmclock MSRs (wall clock, system time).
const MSR_KVM_CLOCK_LEGACY: std::ops::RangeInclusive<u32> = 0x11..=0x12;
/// KVM's paravirtual MSRs (kvmclock, steal time, async PF, PV EOI, ...).
const MSR_KVM_PARAVIRT: std::ops::RangeInclusive<u32> = 0x4b56_4d00..=0x4b56_4dff;

/// The MSRs KVM can save for a vCPU.
pub fn msr_indices(kvm_fd: &Kvm) -> Result<Vec<u32>, CpuError> {
    Ok(kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

/// KVM's XSAVE area must fit the legacy 4 KiB `kvm_xsave` (no AMX state).
pub fn check_xsave_size(kvm_fd: &Kvm) -> Result<(), CpuError> {
    let size = kvm_fd.check_extension_int(Cap::Xsave2);
    if size > 4096 {
        return Err(CpuError::Unsupported(format!(
            "this host's XSAVE state is {size} bytes; hull snapshots hold 4096"
        )));
    }
    Ok(())
}

/// Reads every MSR in `indices` that KVM will give; an index it refuses
/// (a feature this CPU lacks) is left out.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, CpuError> {
    let mut saved = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let mut pending: Vec<(u32, u64)> = chunk.iter().map(|&index| (index, 0)).collect();
        while !pending.is_empty() {
            let mut msrs = cpu::msr_list(&pending)?;
            let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
            saved.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
            // Entry `read` is the one KVM refused; go on after it.
            pending.drain(..(read + 1).min(pending.len()));
        }
    }
    Ok(saved)
}

/// Captures a paused vCPU. Its last exit must have been completed (a
/// KVM_RUN with `immediate_exit` set) so that no half-done I/O is lost.
pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, CpuError> {
    Ok(VcpuState {
        mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
        debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        msrs: read_msrs(vcpu, msr_indices)?,
        events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Gives vCPU `id` of `count` its CPUID: the first step of a restore
/// (Firecracker's order), which a migration's destination takes before
/// the state arrives.
pub fn set_cpuid(vcpu: &VcpuFd, base_cpuid: &CpuId, id: u8, count: u8) -> Result<(), CpuError> {
    vcpu.set_cpuid2(&cpu::vcpu_cpuid(base_cpuid, id, count)?)
        .map_err(kvm("KVM_SET_CPUID2"))
}

/// The rest of a restore, once the CPUID is set: state whose meaning
/// depends on it, events last.
pub fn restore_registers(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), CpuError> {
    set_registers(vcpu, state, true)
}

/// What of `restore_registers` can be done ahead and done again with
/// nothing of the first left over (a migration's early state): not the
/// local APIC (its timer would run), nor the MSRs of time (KVM takes a TSC
/// written twice within a second as one write, to keep vCPUs in step) or
/// those that make KVM write guest memory (kvmclock's pages, steal time,
/// async page faults).
pub fn rehearse_registers(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), CpuError> {
    set_registers(vcpu, state, false)
}

/// Whether setting MSR `index` starts a timer, moves the TSC or has KVM
/// write guest memory.
fn msr_of_time_or_memory(index: u32) -> bool {
    matches!(index, MSR_IA32_TSC | MSR_IA32_TSC_ADJUST | MSR_IA32_TSC_DEADLINE)
        || MSR_KVM_CLOCK_LEGACY.contains(&index)
        || MSR_KVM_PARAVIRT.contains(&index)
}

/// `restore_registers`; only what may be set twice unless `whole`.
fn set_registers(vcpu: &VcpuFd, state: &VcpuState, whole: bool) -> Result<(), CpuError> {
    vcpu.set_mp_state(state.mp_state).map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: check_xsave_size held when this state was saved and the kernel
    // reads exactly one `kvm_xsave`.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    if whole {
        vcpu.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    }
    // KVM reads a TSC deadline against the guest's TSC: that must be
    // restored first, or the timer fires at a wrong time, maybe never
    // (Firecracker #4099). KVM's index list happens to have that order;
    // this does not rely on it.
    let mut msrs = state.msrs.clone();
    if !whole {
        msrs.retain(|&(index, _)| !msr_of_time_or_memory(index));
    }
    msrs.sort_by_key(|&(index, _)| index == MSR_IA32_TSC_DEADLINE);
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let written = vcpu.set_msrs(&cpu::msr_list(chunk)?).map_err(kvm("KVM_SET_MSRS"))?;
        if written < chunk.len() {
            return Err(CpuError::Unsupported(format!(
                "KVM refused MSR {:#x} from the snapshot",
                chunk[written].0
            )));
        }
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
