//! vCPU set-up for the Linux 64-bit boot protocol: CPUID, MSRs, long mode with
//! identity-mapped page tables, registers, FPU and the local APIC.

use crate::guest_memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM refused the vCPU set-up ({what}): {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("writing page tables/GDT to guest memory: {0}")]
    Memory(String),
    #[error("{0}")]
    Unsupported(String),
}

pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

/// The CPUID the host's KVM supports, shared by all vCPUs (patched per vCPU).
pub fn supported_cpuid(kvm_fd: &Kvm) -> Result<CpuId, CpuError> {
    kvm_fd
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))
}

const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

pub(crate) fn vcpu_cpuid(base: &CpuId, id: u8, count: u8) -> Result<CpuId, CpuError> {
    let mut entries = base.as_slice().to_vec();
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                // APIC id, logical processor count, CLFLUSH line size (8 * 8 bytes).
                entry.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8);
                entry.ecx |= CPUID_HYPERVISOR_BIT;
                if count > 1 {
                    entry.edx |= 1 << 28; // HTT: more than one logical CPU
                }
            }
            0xb | 0x1f => entry.edx = u32::from(id), // x2APIC id
            _ => {}
        }
    }
    CpuId::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "building CPUID",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })
}

/// Writes the GDT, IDT and identity page tables (first 1 GiB, 2 MiB pages).
pub fn write_boot_tables(memory: &GuestMemoryMmap) -> Result<(), CpuError> {
    let mem = |e: vm_memory::GuestMemoryError| CpuError::Memory(e.to_string());
    for (i, entry) in GDT_TABLE.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(GDT + (i as u64) * 8))
            .map_err(mem)?;
    }
    memory.write_obj(0u64, GuestAddress(IDT)).map_err(mem)?;
    memory.write_obj(PDPTE | 0x03, GuestAddress(PML4)).map_err(mem)?;
    memory.write_obj(PDE | 0x03, GuestAddress(PDPTE)).map_err(mem)?;
    for i in 0..512u64 {
        memory
            .write_obj((i << 21) | 0x83, GuestAddress(PDE + i * 8))
            .map_err(mem)?;
    }
    Ok(())
}

/// Null, 64-bit code, data, TSS.
const GDT_TABLE: [u64; 4] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff];

fn segment(index: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xfffff,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Configures vCPU `id` of `count` to enter the kernel at `entry` (only vCPU
/// 0 runs from there; the others wait for the kernel's INIT/SIPI).
pub fn configure(vcpu: &VcpuFd, cpuid: &CpuId, id: u8, count: u8, entry: GuestAddress) -> Result<(), CpuError> {
    vcpu.set_cpuid2(&vcpu_cpuid(cpuid, id, count)?)
        .map_err(kvm("KVM_SET_CPUID2"))?;

    let msrs = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),          // fast strings
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back by default
    ];
    vcpu.set_msrs(&msr_list(&msrs)?).map_err(kvm("KVM_SET_MSRS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    // LINT0: ExtINT (the PIC), LINT1: NMI.
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lapic_lvt(&mut lapic.regs, 0x350, 0x7);
    set_lapic_lvt(&mut lapic.regs, 0x360, 0x4);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

    if id != 0 {
        return Ok(());
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = segment(1, GDT_TABLE[1]);
    let data = segment(2, GDT_TABLE[2]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, GDT_TABLE[3]);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (GDT_TABLE.len() * 8 - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// KVM's MSR list from (index, value) pairs (at most `KVM_MAX_MSR_ENTRIES`).
pub(crate) fn msr_list(pairs: &[(u32, u64)]) -> Result<Msrs, CpuError> {
    let entries: Vec<kvm_msr_entry> = pairs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "building MSRs",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })
}

/// Sets the delivery mode (bits 8..10) of a local vector table register.
fn set_lapic_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_long_mode_segments() {
        let code = segment(1, GDT_TABLE[1]);
        assert_eq!(
            (code.selector, code.type_, code.l, code.db, code.present, code.s),
            (8, 0xb, 1, 0, 1, 1)
        );
        let data = segment(2, GDT_TABLE[2]);
        assert_eq!((data.selector, data.type_, data.db, data.g), (16, 3, 1, 1));
    }

    #[test]
    fn lvt_delivery_mode_is_replaced() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x30;
        regs[0x351] = 0x07; // mode 7, vector 0x30
        set_lapic_lvt(&mut regs, 0x350, 0x4);
        assert_eq!((regs[0x350] as u8, regs[0x351] as u8), (0x30, 0x04));
    }
}
