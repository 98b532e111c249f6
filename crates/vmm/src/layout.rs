//! The guest physical address map (x86_64), shared by boot, ACPI and devices.

/// Zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit entry.
pub const PML4: u64 = 0x9000;
pub const PDPTE: u64 = 0xa000;
pub const PDE: u64 = 0xb000;
/// GDT and (empty) IDT.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional memory (the EBDA starts here).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the legacy BIOS area, outside the e820 RAM ranges.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where a real-mode reset starts executing (below the 1 MiB boundary here).
pub const RESET_VECTOR: u64 = 0xffff0;
/// The kernel is loaded at 1 MiB.
pub const HIMEM_START: u64 = 0x100000;
/// Devices live in a hole below 4 GiB; guest RAM ends before it.
pub const MMIO_START: u64 = 0xd000_0000;
/// Each virtio-mmio device gets one 4 KiB window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS and identity map pages (needed on Intel), just below the IOAPIC.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// A guest write here makes the vCPU thread break its seccomp filter, when
/// the VMM was started with `--seccomp-selftest` (tests only).
pub const SECCOMP_SELFTEST_ADDR: u64 = MMIO_START + 0x00ff_0000;
/// Largest guest memory that fits below the MMIO hole.
pub const MAX_MEMORY: u64 = MMIO_START - HIMEM_START;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The ACPI hardware-reduced sleep control / reset register.
pub const ACPI_SLEEP_PORT: u16 = 0x3c0;
/// First interrupt line for virtio devices (IOAPIC pins 5..23).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;
