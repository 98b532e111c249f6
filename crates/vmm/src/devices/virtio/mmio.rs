//! The virtio-mmio transport (version 2): the register window the guest
//! driver programs, queue set-up, feature negotiation, status, interrupts.

use std::sync::Arc;

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::{read_config, Interrupt, VirtioDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c55_4848; // "HHUL"

/// The register a driver writes a queue's index to when it has work for it.
pub const QUEUE_NOTIFY: u64 = 0x050;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) memory: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) queues: Vec<Queue>,
    pub(super) queue_select: u32,
    pub(super) device_features_select: u32,
    pub(super) driver_features_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u32,
    pub(super) config_generation: u32,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemoryMmap, interrupt: Arc<Interrupt>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        MmioTransport {
            device,
            memory,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// See `VirtioDevice::flush`.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.device.flush()
    }

    /// After a restore: tells the driver its device's configuration changed
    /// (a clone's disk size). vsock needs no transport reset: a template is
    /// saved before its agent opens any connection, so there is none to drop
    /// (and a late reset would kill the clone's first connection).
    pub fn announce_restore(&mut self, config_changed: bool) {
        if self.driver_ok() && config_changed {
            self.interrupt.signal_config_change();
        }
    }

    fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are configured only before DRIVER_OK.
        if self.driver_ok() {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            read_config(&self.device.config(), offset - 0x100, data);
            return;
        }
        let features_word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let value = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => features_word(self.device.features(), self.device_features_select),
            0x034 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x044 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            // No shared memory regions: their length reads as all ones
            // (a zero length would be a region, which virtio-fs then
            // fails to reserve for DAX).
            0x0b0..=0x0bc => u32::MAX,
            0x0fc => self.config_generation,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data.fill(0);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            return; // no writable configuration fields
        }
        let Ok(raw) = <[u8; 4]>::try_from(data) else { return };
        let value = u32::from_le_bytes(raw);
        match offset {
            0x014 => self.device_features_select = value,
            0x020 => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
            }
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x044 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_NOTIFY => self.notify(value as usize),
            0x064 => self.interrupt.ack(value),
            0x070 => self.set_status(value),
            0x080 => self.set_address(|q, v| q.set_desc_table_address(Some(v), None), value),
            0x084 => self.set_address(|q, v| q.set_desc_table_address(None, Some(v)), value),
            0x090 => self.set_address(|q, v| q.set_avail_ring_address(Some(v), None), value),
            0x094 => self.set_address(|q, v| q.set_avail_ring_address(None, Some(v)), value),
            0x0a0 => self.set_address(|q, v| q.set_used_ring_address(Some(v), None), value),
            0x0a4 => self.set_address(|q, v| q.set_used_ring_address(None, Some(v)), value),
            _ => {}
        }
    }

    fn set_address(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(q) = self.selected_queue() {
            set(q, value);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        // FEATURES_OK only holds if the driver asked for nothing we did not offer.
        if value & STATUS_FEATURES_OK != 0 && self.driver_features & !self.device.features() != 0 {
            value &= !STATUS_FEATURES_OK;
        }
        if value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
            let queues_ok = self
                .queues
                .iter()
                .filter(|q| q.ready())
                .all(|q| q.is_valid(&self.memory));
            let negotiated = value & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
                == (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
            if !queues_ok || !negotiated {
                value |= STATUS_FAILED;
            }
        }
        self.status = value;
    }

    /// The guest has work for queue `index` (from the notify register's
    /// ioeventfd, or a write KVM did not match to one).
    pub fn notify(&mut self, index: usize) {
        if !self.driver_ok() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        if self.device.process_queue(index, &mut self.queues, &self.memory) {
            self.interrupt.signal_used_queue();
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Whether the device needs a thread (`VirtioDevice::serves`).
    pub fn serves(&self) -> bool {
        self.device.serves()
    }

    /// The device's host-side descriptor, if it has I/O of its own.
    pub fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        self.device.backend_fd()
    }

    /// Plugs the device's host side into `backend` (`VirtioDevice::plug`);
    /// a configuration it changes (a disk's size) is announced to the driver.
    pub fn plug(&mut self, backend: Option<std::fs::File>) -> std::io::Result<()> {
        let before = self.device.config();
        self.device.plug(backend)?;
        if self.device.config() != before {
            self.config_generation = self.config_generation.wrapping_add(1);
            if self.driver_ok() {
                self.interrupt.signal_config_change();
            }
        }
        Ok(())
    }

    /// Keeps what `plug` put in place for good (`VirtioDevice::keep_plugged`).
    pub fn keep_plugged(&mut self) -> std::io::Result<()> {
        self.device.keep_plugged()
    }

    /// A descriptor of what the device's host side is plugged into
    /// (`VirtioDevice::lend_backend`).
    pub fn lend_backend(&self) -> std::io::Result<Option<std::fs::File>> {
        self.device.lend_backend()
    }

    /// The disk behind the device (`VirtioDevice::disk`).
    pub fn disk(&self) -> std::io::Result<Option<super::block::DiskHandle>> {
        self.device.disk()
    }

    /// See `VirtioDevice::share_root`.
    pub fn share_root(&self, share: u8) -> std::io::Result<std::fs::File> {
        self.device.share_root(share)
    }

    /// See `VirtioDevice::receiving_shares`.
    pub fn receiving_shares(&self) -> Vec<u8> {
        self.device.receiving_shares()
    }

    /// Why the device cannot move (`VirtioDevice::migration_blocker`).
    pub fn migration_blocker(&self) -> Option<String> {
        self.device.migration_blocker()
    }

    /// See `VirtioDevice::backend_state`.
    pub fn backend_state(&self) -> Result<Vec<u8>, String> {
        self.device.backend_state()
    }

    /// See `VirtioDevice::restore_backend_state`.
    pub fn restore_backend_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.device.restore_backend_state(state)
    }

    /// See `VirtioDevice::guest_mac`.
    pub fn guest_mac(&self) -> Option<[u8; 6]> {
        self.device.guest_mac()
    }

    /// See `VirtioDevice::announce`.
    pub fn announce(&mut self, mac: [u8; 6]) {
        self.device.announce(mac)
    }

    /// Whether the device's host side is plugged (`VirtioDevice::plugged`).
    pub fn plugged(&self) -> bool {
        self.device.plugged()
    }

    /// The VM has just arrived from another host (`VirtioDevice::arrived`).
    pub fn arrived(&mut self) {
        if self.driver_ok() && self.device.arrived(&mut self.queues, &self.memory) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Host-side I/O is ready: let the device move data.
    pub fn poll(&mut self) {
        if self.driver_ok() && self.device.poll(&mut self.queues, &self.memory) {
            self.interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::Rng;
    use super::super::testing::memory;
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn transport() -> MmioTransport {
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        MmioTransport::new(Box::new(Rng), memory(), interrupt)
    }

    fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn identifies_itself_and_negotiates() {
        let mut t = transport();
        assert_eq!((read32(&mut t, 0), read32(&mut t, 4), read32(&mut t, 8)), (MAGIC, 2, 4));
        t.write(0x14, &1u32.to_le_bytes());
        assert_eq!(read32(&mut t, 0x10), 1, "VIRTIO_F_VERSION_1 in the high word");
        t.write(0x24, &1u32.to_le_bytes());
        t.write(0x20, &1u32.to_le_bytes());
        t.write(
            0x70,
            &(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK).to_le_bytes(),
        );
        assert_ne!(read32(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn unoffered_features_and_bad_queues_fail_negotiation() {
        let mut t = transport();
        t.write(0x24, &0u32.to_le_bytes());
        t.write(0x20, &0xffff_ffffu32.to_le_bytes());
        t.write(
            0x70,
            &(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK).to_le_bytes(),
        );
        assert_eq!(read32(&mut t, 0x70) & STATUS_FEATURES_OK, 0);

        let mut t = transport();
        t.write(0x38, &16u32.to_le_bytes());
        t.write(0x80, &0xffff_f000u32.to_le_bytes()); // far outside guest memory
        t.write(0x44, &1u32.to_le_bytes());
        t.write(
            0x70,
            &(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK).to_le_bytes(),
        );
        assert_ne!(read32(&mut t, 0x70) & STATUS_FAILED, 0);
        t.write(0x50, &0u32.to_le_bytes()); // notify on a failed device: ignored
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut t = transport();
        let mut one = [0u8; 1];
        t.read(0x1000_0000, &mut one);
        t.write(0x50, &[1, 2]);
        t.write(0x30, &99u32.to_le_bytes());
        assert_eq!(read32(&mut t, 0x34), 0, "no such queue");
        t.write(0x50, &99u32.to_le_bytes());
    }

    #[test]
    fn a_disk_plugged_while_running_is_announced_as_a_config_change() {
        let dir = std::env::temp_dir().join(format!("hull-mmio-plug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (empty, disk) = (dir.join("empty"), dir.join("disk"));
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&disk, vec![7u8; 4096]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let block = super::super::block::Block::open(&empty, false).unwrap();
        let mut t = MmioTransport::new(Box::new(block), memory(), interrupt);
        t.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        assert_eq!(read32(&mut t, 0x100), 0, "no sectors");

        t.plug(Some(std::fs::File::open(&disk).unwrap())).unwrap();
        assert_eq!(read32(&mut t, 0x100), 8, "8 sectors");
        assert_eq!(read32(&mut t, 0xfc), 1, "the generation moved on");
        assert_ne!(read32(&mut t, 0x60) & super::super::INT_CONFIG, 0);

        // A refused plug changes nothing and says nothing.
        t.write(0x64, &u32::MAX.to_le_bytes());
        assert!(t.plug(Some(std::fs::File::open(&disk).unwrap())).is_err());
        assert_eq!((read32(&mut t, 0xfc), read32(&mut t, 0x60)), (1, 0));

        t.plug(None).unwrap();
        assert_eq!((read32(&mut t, 0x100), read32(&mut t, 0xfc)), (0, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
