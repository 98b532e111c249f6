#![no_main]
//! The virtio-mmio register window under a hostile driver: reads and writes
//! of any width at any offset, notifications of any queue, and a well-behaved
//! initialisation now and then (so the queues get used), interleaved with
//! what the guest writes into its rings and buffers.

use std::sync::Arc;

use arbitrary::Unstructured;
use hull_fuzz::Guest;
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use vmm::devices::virtio::net::Net;
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The registers a driver uses, and the first words of config space.
const REGISTERS: &[u64] = &[
    0x000,
    0x004,
    0x008,
    0x00c,
    0x010,
    0x014,
    0x020,
    0x024,
    0x030,
    0x034,
    0x038,
    0x044,
    QUEUE_NOTIFY,
    0x060,
    0x064,
    0x070,
    0x080,
    0x084,
    0x090,
    0x094,
    0x0a0,
    0x0a4,
    0x0fc,
    0x100,
    0x104,
    0x108,
];

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// What a Linux driver does: reset, negotiate, set up every queue, go.
fn initialise(u: &mut Unstructured, t: &mut MmioTransport, guest: &Guest, features: u64) -> arbitrary::Result<()> {
    write32(t, 0x070, 0);
    write32(t, 0x070, 1);
    write32(t, 0x070, 3);
    let wanted = if u.ratio(7, 8)? { features } else { u.arbitrary()? };
    for (select, word) in [(0, wanted as u32), (1, (wanted >> 32) as u32)] {
        write32(t, 0x024, select);
        write32(t, 0x020, word);
    }
    write32(t, 0x070, 11);
    let mut q = 0;
    while let Some((size, desc, avail, used)) = guest.layout(q) {
        write32(t, 0x030, q as u32);
        write32(t, 0x038, u32::from(size));
        for (low, address) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            write32(t, low, address as u32);
            write32(t, low + 4, (address >> 32) as u32);
        }
        write32(t, 0x044, 1);
        q += 1;
    }
    write32(t, 0x070, 15);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let device: Box<dyn VirtioDevice> = match u.arbitrary::<bool>() {
        Ok(true) => Box::new(Net::detached([0x02, 0, 0, 0, 0, 1]).expect("a detached NIC")),
        _ => Box::new(Rng),
    };
    let features = device.features() | VIRTIO_F_VERSION_1;
    let Ok(mut guest) = Guest::new(&mut u, device.queue_max_sizes()) else {
        return;
    };
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(device, guest.memory.clone(), Arc::new(Interrupt::new(irq)));
    let mut step = |u: &mut Unstructured| -> arbitrary::Result<()> {
        let offset = |u: &mut Unstructured| -> arbitrary::Result<u64> {
            Ok(if u.ratio(7, 8)? {
                *u.choose(REGISTERS)?
            } else {
                u.arbitrary()?
            })
        };
        let width = |u: &mut Unstructured| -> arbitrary::Result<usize> {
            Ok(if u.ratio(7, 8)? {
                *u.choose(&[4, 4, 1, 2, 8])?
            } else {
                u.int_in_range(0..=16)?
            })
        };
        match u.int_in_range(0..=6u8)? {
            0 => {
                let offset = offset(u)?;
                let mut buf = vec![0u8; width(u)?];
                t.read(offset, &mut buf);
            }
            1 => {
                let offset = offset(u)?;
                let width = width(u)?;
                let value = if width == 4 && u.ratio(1, 2)? {
                    // Small values: queue indexes, sizes, status bits.
                    u32::from(u.arbitrary::<u8>()?).to_le_bytes().to_vec()
                } else {
                    u.bytes(width)?.to_vec()
                };
                t.write(offset, &value);
            }
            2 => t.notify(usize::from(u.arbitrary::<u8>()?)),
            3 => initialise(u, &mut t, &guest, features)?,
            4 => t.poll(),
            5 => t.announce_restore(u.arbitrary()?),
            _ => {
                // The guest writes its rings and buffers; a notification
                // goes through the register, as a driver's would.
                if let Some(q) = guest.act(u)? {
                    write32(&mut t, QUEUE_NOTIFY, q as u32);
                }
            }
        }
        Ok(())
    };
    while !u.is_empty() && step(&mut u).is_ok() {}
});
