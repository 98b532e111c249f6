//! What the fuzz targets share: a guest that lays out virtqueues in its
//! memory from fuzz input and then acts on them, as a hostile driver would.

use arbitrary::{Result, Unstructured};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::guest_memory::GuestMemoryMmap;

const MEM_SIZE: usize = 0x10_0000;
/// Queue `i`'s rings sit in slot `i` (descriptors, avail, used: 4 KiB each).
const RING_SLOT: u64 = 0x4000;
/// Buffers live above the ring slots.
const DATA: u64 = 0x1_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("1 MiB of guest memory")
}

/// A guest address: mostly an 8-byte-aligned one in the data area (so
/// buffers land on data the input wrote), sometimes any at all.
fn address(u: &mut Unstructured) -> Result<u64> {
    Ok(if u.ratio(7, 8)? {
        DATA + u64::from(u.arbitrary::<u16>()?) * 8
    } else {
        u.arbitrary()?
    })
}

/// A buffer length: mostly small, sometimes any.
fn length(u: &mut Unstructured) -> Result<u32> {
    Ok(if u.ratio(7, 8)? {
        u.int_in_range(0..=4096)?
    } else {
        u.arbitrary()?
    })
}

struct Ring {
    base: u64,
    size: u16,
    avail_idx: u16,
}

impl Ring {
    fn desc_table(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    /// An index that is usually valid for this ring.
    fn index(&self, u: &mut Unstructured) -> Result<u16> {
        Ok(if u.ratio(15, 16)? {
            u.int_in_range(0..=self.size - 1)?
        } else {
            u.arbitrary()?
        })
    }

    fn write_desc(&self, u: &mut Unstructured, memory: &GuestMemoryMmap, index: u16) -> Result<()> {
        let addr = address(u)?;
        let len = length(u)?;
        let flags = if u.ratio(15, 16)? {
            u.arbitrary::<u16>()? & (NEXT | WRITE | INDIRECT)
        } else {
            u.arbitrary()?
        };
        let next = self.index(u)?;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc_table() + u64::from(index % self.size) * 16;
        memory
            .write_slice(&raw, GuestAddress(at))
            .expect("descriptor table in memory");
        Ok(())
    }

    /// Makes `count` more chain heads available; sometimes the index jumps
    /// arbitrarily instead (a driver lying about how much it added).
    fn publish(&mut self, u: &mut Unstructured, memory: &GuestMemoryMmap) -> Result<()> {
        let count = u.int_in_range(1..=self.size)?;
        for _ in 0..count {
            let head = self.index(u)?;
            let slot = self.avail() + 4 + u64::from(self.avail_idx % self.size) * 2;
            memory
                .write_obj(head, GuestAddress(slot))
                .expect("avail ring in memory");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        if u.ratio(1, 32)? {
            self.avail_idx = u.arbitrary()?;
        }
        memory
            .write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("avail ring in memory");
        Ok(())
    }
}

/// A driver's side of a device: memory and the device's ready queues.
pub struct Guest {
    pub memory: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    rings: Vec<Ring>,
}

impl Guest {
    /// Queues of fuzz-chosen sizes (up to each `max_sizes`), their
    /// descriptor tables filled from the input.
    pub fn new(u: &mut Unstructured, max_sizes: &[u16]) -> Result<Guest> {
        let memory = memory();
        let mut queues = Vec::new();
        let mut rings = Vec::new();
        for (i, &max) in max_sizes.iter().enumerate() {
            let size = 1u16 << u.int_in_range(0..=max.trailing_zeros())?;
            let ring = Ring {
                base: i as u64 * RING_SLOT,
                size,
                avail_idx: 0,
            };
            for index in 0..u.int_in_range(0..=size)? {
                ring.write_desc(u, &memory, index)?;
            }
            let mut queue = Queue::new(max).expect("device queue sizes are valid");
            queue.set_size(size);
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(ring.desc_table());
            queue.set_desc_table_address(lo, hi);
            let (lo, hi) = split(ring.avail());
            queue.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(ring.used());
            queue.set_used_ring_address(lo, hi);
            queue.set_ready(true);
            // What the transport checks before DRIVER_OK.
            assert!(queue.is_valid(&memory), "harness queue layout");
            queues.push(queue);
            rings.push(ring);
        }
        Ok(Guest { memory, queues, rings })
    }

    /// Queue `q`'s size and ring addresses (descriptors, avail, used), for
    /// a driver to program into a transport.
    pub fn layout(&self, q: usize) -> Option<(u16, u64, u64, u64)> {
        let ring = self.rings.get(q)?;
        Some((ring.size, ring.desc_table(), ring.avail(), ring.used()))
    }

    /// The buffer address of a descriptor in queue `q`'s table.
    pub fn buffer(&self, u: &mut Unstructured, q: usize) -> Result<u64> {
        let ring = &self.rings[q];
        let index = u64::from(ring.index(u)? % ring.size);
        Ok(self
            .memory
            .read_obj::<u64>(GuestAddress(ring.desc_table() + index * 16))
            .expect("descriptor table in memory"))
    }

    /// Writes guest memory; out of memory, nothing (as for the guest itself).
    pub fn write(&self, at: u64, bytes: &[u8]) {
        let _ = self.memory.write_slice(bytes, GuestAddress(at));
    }

    /// One driver action; `Some(queue)` when it is a notification, which
    /// the caller delivers to the device.
    pub fn act(&mut self, u: &mut Unstructured) -> Result<Option<usize>> {
        let q = u.choose_index(self.rings.len())?;
        match u.int_in_range(0..=3u8)? {
            0 => {
                let index = self.rings[q].index(u)?;
                self.rings[q].write_desc(u, &self.memory, index)?;
            }
            1 => self.rings[q].publish(u, &self.memory)?,
            2 => {
                // Half the time into the buffer of a descriptor in the table,
                // so requests carry the headers the input chose.
                let at = if u.ratio(1, 2)? {
                    self.buffer(u, q)?
                } else {
                    address(u)?
                };
                let len = u.int_in_range(0..=512)?;
                let bytes = u.bytes(len)?;
                self.write(at, bytes);
            }
            _ => return Ok(Some(q)),
        }
        Ok(None)
    }
}

/// The device's turn: a queue was notified, or the target acts (its
/// device's host side, or a structured write a random one rarely makes).
pub enum Turn {
    Notify(usize),
    Target,
}

/// Runs guest actions until the input runs out, handing the device its
/// turns; with `target_turns`, a quarter of the turns are the target's.
pub fn drive(
    u: &mut Unstructured,
    guest: &mut Guest,
    target_turns: bool,
    mut device: impl FnMut(Turn, &mut Unstructured, &mut Guest) -> Result<()>,
) {
    while !u.is_empty() {
        let step = if target_turns && u.ratio(1, 4).unwrap_or(false) {
            device(Turn::Target, u, guest)
        } else {
            match guest.act(u) {
                Ok(Some(q)) => device(Turn::Notify(q), u, guest),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        };
        if step.is_err() {
            break;
        }
    }
}

/// Where targets keep files: `HULL_FUZZ_SCRATCH` (scripts/fuzz makes one
/// per run and removes it), else tmpfs when there is one (fsync and
/// unpacking cost nothing there), else the temp dir.
pub fn scratch_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("HULL_FUZZ_SCRATCH") {
        return dir.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
