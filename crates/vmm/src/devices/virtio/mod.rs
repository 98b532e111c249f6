//! virtio devices on the virtio-mmio transport (version 2). The guest is
//! untrusted: every descriptor it hands us is checked against guest memory by
//! `vm-memory` and against the request's own rules here, and a bad request
//! fails that request (an error status, a zero-length used entry), never the VMM.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// The feature bit every modern (non-legacy) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// virtio device ids.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// The kinds of virtio device hull-vmm has: each its own thread name and
/// seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Block,
    Net,
    Vsock,
    Rng,
    Fs,
}

impl DeviceKind {
    pub fn of(device_type: u32) -> Option<DeviceKind> {
        match device_type {
            TYPE_BLOCK => Some(DeviceKind::Block),
            TYPE_NET => Some(DeviceKind::Net),
            TYPE_VSOCK => Some(DeviceKind::Vsock),
            TYPE_RNG => Some(DeviceKind::Rng),
            TYPE_FS => Some(DeviceKind::Fs),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Block => "block",
            DeviceKind::Net => "net",
            DeviceKind::Vsock => "vsock",
            DeviceKind::Rng => "rng",
            DeviceKind::Fs => "fs",
        }
    }
}

/// A device's interrupt line and its virtio-mmio interrupt status.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irq,
        }
    }

    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        let _ = self.irq.write(1);
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device model implements; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The device's configuration space.
    fn config(&self) -> Vec<u8>;
    /// The guest notified queue `index`: serve what it made available.
    /// Returns whether anything was put in a used ring.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool;
    /// A device with host-side I/O of its own (sockets) exposes a file
    /// descriptor that becomes readable when `poll` has work.
    fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
    /// Host-side I/O is ready; returns whether anything was put in a used ring.
    fn poll(&mut self, _queues: &mut [Queue], _memory: &GuestMemoryMmap) -> bool {
        false
    }
    /// Whether the device has anything to serve: one that has not (an
    /// unused virtio-fs) gets no thread.
    fn serves(&self) -> bool {
        true
    }
    /// The VM has just arrived from another host (a live migration), its
    /// guest not yet running here: the device tells the driver what did not
    /// come with it. Returns whether anything was put in a used ring.
    fn arrived(&mut self, _queues: &mut [Queue], _memory: &GuestMemoryMmap) -> bool {
        false
    }
    /// Puts what the device wrote on its backend's storage (a disk's page
    /// cache to the disk): the VM is leaving this host.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Plugs the device's host side into `backend`, or into nothing, while
    /// the guest runs (a NIC's tap).
    fn plug(&mut self, _backend: Option<std::fs::File>) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this device has no host side to plug",
        ))
    }
    /// A second descriptor of what its host side is plugged into (a NIC's
    /// tap), for a VMM on this host that takes the VM over; `None` if it is
    /// on nothing (or has no host side to plug).
    fn lend_backend(&self) -> std::io::Result<Option<std::fs::File>> {
        Ok(None)
    }
    /// The disk behind the device, for a migration that copies it (`None`:
    /// not a disk).
    fn disk(&self) -> std::io::Result<Option<block::DiskHandle>> {
        Ok(None)
    }
    /// A descriptor of shared directory `share` (virtio-fs's), whose files
    /// travel with a migrating VM.
    fn share_root(&self, _share: u8) -> std::io::Result<std::fs::File> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this device shares no directory",
        ))
    }
    /// The shared directories whose files come with a VM migrating here.
    fn receiving_shares(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Why the device's state cannot move with its VM to another VMM, if
    /// it cannot.
    fn migration_blocker(&self) -> Option<String> {
        None
    }
    /// What the device's host side holds of the guest's view that must
    /// move with the VM to another VMM (virtio-fs's open files), taken
    /// while it is parked; empty when there is nothing.
    fn backend_state(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    /// Takes what `backend_state` gave on the source, before the guest
    /// runs here.
    fn restore_backend_state(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("this device has no state of its own to take".into())
    }
    /// The address the guest sends from (a NIC's), if it has sent.
    fn guest_mac(&self) -> Option<[u8; 6]> {
        None
    }
    /// The VM has just moved here: tells the network the guest's `mac` is
    /// behind this device now (a NIC's RARP announcement).
    fn announce(&mut self, _mac: [u8; 6]) {}
    /// Makes what `plug` just put in place the device's own, as if the VM
    /// had started with it: it cannot be taken out, nor does it stop a
    /// migration (a disk the VM's supervisor names to the destination).
    fn keep_plugged(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this device keeps nothing plugged",
        ))
    }
    /// Whether its host side is plugged into something (a NIC's tap); a
    /// device that cannot be unplugged always is.
    fn plugged(&self) -> bool {
        true
    }
}

/// Copies `config[offset..]` into `data`, zero beyond the end (bounds-checked).
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Guest memory with a mock split queue, for feeding devices hostile chains.
    use crate::guest_memory::GuestMemoryMmap;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;

    pub const QUEUE_SIZE: u16 = 16;
    pub const MEM_SIZE: usize = 0x10_0000;

    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// A queue whose avail ring holds one chain starting at descriptor 0.
    pub fn queue_with(memory: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Queue {
        let mock = MockSplitQueue::new(memory, QUEUE_SIZE);
        mock.add_desc_chains(descs, 0).unwrap();
        mock.create_queue().unwrap()
    }

    /// The length the device reported in used-ring entry `index`.
    pub fn used_len(memory: &GuestMemoryMmap, queue: &Queue, index: u64) -> u32 {
        use vm_memory::Bytes;
        memory
            .read_obj::<u32>(GuestAddress(queue.used_ring() + 4 + index * 8 + 4))
            .unwrap()
    }

    pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
}
