//! fuse-backend-rs 0.14 reads descriptor chains through vm-memory 0.17 and
//! virtio-queue 0.17; the rest of hull-vmm is on 0.18 (linux-loader needs
//! it). This bridge gives the FUSE server a 0.17 view of the same guest RAM
//! mapping and a 0.17 queue that mirrors the transport's queue for one
//! round of requests. When fuse-backend-rs moves to 0.18 it goes away.

use crate::guest_memory::{mark_written, GuestMemoryMmap};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{Queue, QueueT};
use virtio_queue_fuse::{Queue as FuseQueue, QueueT as _};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vm_memory_fuse::{GuestAddress as FuseAddress, GuestMemoryMmap as FuseMemory, GuestRegionMmap, MmapRegion};

/// The most requests served per notify before the others wait their turn
/// (the guest queues at most the queue's size anyway).
const MAX_PER_ROUND: usize = 1024;

#[derive(Default)]
pub struct Bridge {
    /// Made on first use: guest RAM does not move in a VM's life.
    memory: Option<FuseMemory>,
}

impl Bridge {
    /// Serves what the guest made available on `queue`, each request by
    /// `handle` (which returns how many bytes it wrote); returns whether
    /// anything was put in the used ring.
    pub fn serve<F>(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap, mut handle: F) -> bool
    where
        F: FnMut(Reader<'_, ()>, VirtioFsWriter<'_, ()>) -> usize,
    {
        if self.memory.is_none() {
            self.memory = alias(memory);
        }
        let Some(fuse_memory) = &self.memory else { return false };
        let Some(mut mirror) = mirror(queue) else { return false };
        let mut used = false;
        for _ in 0..MAX_PER_ROUND {
            let Some(chain) = mirror.pop_descriptor_chain(fuse_memory) else {
                break;
            };
            let head = chain.head_index();
            // What the server may write: the chain's device-writable buffers.
            let writable: Vec<(u64, u32)> = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr().0, d.len()))
                .collect();
            let written = match (
                Reader::from_descriptor_chain(fuse_memory, chain.clone()),
                VirtioFsWriter::new(fuse_memory, chain),
            ) {
                (Ok(reader), Ok(writer)) => handle(reader, writer),
                _ => 0,
            };
            // The server wrote through the 0.17 view, which keeps no record.
            for (addr, len) in writable {
                mark_written(memory, GuestAddress(addr), len as usize);
            }
            if mirror.add_used(fuse_memory, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        if used {
            // The used ring, as the mirror wrote it: flags, index, the
            // elements and the event index.
            mark_written(
                memory,
                GuestAddress(queue.used_ring()),
                6 + 8 * usize::from(queue.size()),
            );
        }
        queue.set_next_avail(mirror.next_avail());
        queue.set_next_used(mirror.next_used());
        used
    }
}

/// A 0.17 view of every region of `memory`, at the same host addresses.
fn alias(memory: &GuestMemoryMmap) -> Option<FuseMemory> {
    let mut regions = Vec::new();
    for region in memory.iter() {
        let size = usize::try_from(region.len()).ok()?;
        let host = region.as_ptr();
        // SAFETY: the mapping is guest RAM, which lives as long as the VM
        // (and so this device); the view neither unmaps nor remaps it.
        let mapping = unsafe {
            MmapRegion::<()>::build_raw(host, size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE).ok()?
        };
        regions.push(GuestRegionMmap::new(mapping, FuseAddress(region.start_addr().0))?);
    }
    FuseMemory::from_regions(regions).ok()
}

/// A 0.17 queue in the state the transport's queue is in.
fn mirror(queue: &Queue) -> Option<FuseQueue> {
    let mut mirror = FuseQueue::new(queue.max_size()).ok()?;
    mirror.set_size(queue.size());
    mirror
        .try_set_desc_table_address(FuseAddress(queue.desc_table()))
        .ok()?;
    mirror
        .try_set_avail_ring_address(FuseAddress(queue.avail_ring()))
        .ok()?;
    mirror.try_set_used_ring_address(FuseAddress(queue.used_ring())).ok()?;
    mirror.set_event_idx(queue.event_idx_enabled());
    mirror.set_next_avail(queue.next_avail());
    mirror.set_next_used(queue.next_used());
    mirror.set_ready(queue.ready());
    Some(mirror)
}
