//! ACPI tables: how the stock kernel finds hull's devices by itself. The
//! Debian cloud kernel cannot take virtio-mmio devices from its command line,
//! but matches `LNRO0005` devices in the DSDT; the FADT is hardware-reduced
//! with a sleep/reset register, which is how the guest powers off.

use crate::guest_memory::GuestMemoryMmap;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;

const OEM_ID: [u8; 6] = *b"HULL  ";
const OEM_TABLE_ID: [u8; 8] = *b"HULLVMM ";

/// The value the guest writes to the sleep register to enter S5 (poweroff):
/// SLP_TYP from `\_S5_` (5) in bits 2..4, SLP_EN in bit 5.
pub const SLEEP_POWEROFF: u8 = (5 << 2) | (1 << 5);
/// The value the guest writes to the reset register.
pub const RESET_VALUE: u8 = 1;

/// A virtio-mmio device window and its interrupt line.
#[derive(Debug, Clone, Copy)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit below 1 MiB")]
    TooLarge(usize),
    #[error("writing the ACPI tables: {0}")]
    Memory(String),
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn dsdt(slots: &[MmioSlot]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    // Temporaries live to the end of each statement, so each device is built
    // and serialized in one.
    dsdt.append_slice(&bytes(&aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )));
    for (i, slot) in slots.iter().enumerate() {
        dsdt.append_slice(&bytes(&aml::Device::new(
            format!("_SB_.V{i:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &(i as u32)),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, slot.base as u32, VIRTIO_MMIO_SIZE as u32),
                        &aml::Interrupt::new(true, true, false, false, slot.irq),
                    ]),
                ),
            ],
        )));
    }
    dsdt.append_slice(&bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&5u8, &0u8, &0u8, &0u8]),
    )));
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_PORT),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = port;
    fadt.sleep_status_reg = port;
    fadt.reset_reg = port;
    fadt.reset_value = RESET_VALUE;
    // No VGA, no CMOS RTC, no MSI quirks: tell the kernel not to probe them.
    fadt.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    bytes(&fadt.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(OEM_ID, OEM_TABLE_ID, 1, LocalInterruptController::Address(LAPIC_ADDR));
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    bytes(&madt)
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT at `ACPI_START`; returns the RSDP's address.
pub fn write_tables(memory: &GuestMemoryMmap, vcpus: u8, slots: &[MmioSlot]) -> Result<GuestAddress, AcpiError> {
    let align = |v: u64| (v + 7) & !7;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // The XSDT holds two entries (FADT, MADT): header + 2 * 8 bytes.
    let dsdt_addr = align(xsdt_addr + 36 + 16);
    let dsdt = dsdt(slots);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let end = madt_addr + madt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge((end - ACPI_START) as usize));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let tables = [
        (rsdp_addr, bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, bytes(&xsdt)),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
    ];
    for (addr, table) in tables {
        memory
            .write_slice(&table, GuestAddress(addr))
            .map_err(|e| AcpiError::Memory(e.to_string()))?;
    }
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        let slots = [
            MmioSlot {
                base: MMIO_START,
                irq: 5,
            },
            MmioSlot {
                base: MMIO_START + 0x1000,
                irq: 6,
            },
        ];
        for table in [dsdt(&slots), fadt(0x1000), madt(2)] {
            let length = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(length, table.len(), "{:?}", std::str::from_utf8(&table[..4]));
            assert!(checksum_ok(&table), "{:?}", std::str::from_utf8(&table[..4]));
        }
        let dsdt = dsdt(&slots);
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }
}
