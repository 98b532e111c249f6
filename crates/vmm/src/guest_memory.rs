//! Guest RAM as all of hull-vmm sees it: vm-memory's mmap backend with a
//! bitmap of the pages the VMM itself writes (a device filling a buffer,
//! a used ring). KVM's dirty log holds the guest's own writes; this holds
//! the rest, so a migration's pause reads the two instead of parking the
//! devices beforehand. vm-memory marks what goes through its accessors;
//! a device that hands guest buffers to the kernel (preadv) or to another
//! memory view (the virtio-fs bridge) marks them itself (`mark_written`).

use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::migration::stream::PAGE_SIZE;
use crate::migration::PageSet;

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

/// Records that the VMM wrote `len` bytes at `addr` behind vm-memory's
/// back (ranges outside guest RAM are ignored, as the write would be).
pub fn mark_written(memory: &GuestMemoryMmap, addr: GuestAddress, len: usize) {
    let mut addr = addr;
    let mut left = len as u64;
    while left > 0 {
        let Some(region) = memory.find_region(addr) else { return };
        let offset = addr.0 - region.start_addr().0;
        let here = left.min(region.len() - offset);
        region.bitmap().mark_dirty(offset as usize, here as usize);
        left -= here;
        addr = GuestAddress(addr.0 + here);
    }
}

/// The pages the VMM wrote since the last call (or since guest RAM was
/// made), as guest page numbers; the record starts empty again.
pub fn take_vmm_writes(memory: &GuestMemoryMmap) -> PageSet {
    let end = memory.iter().map(|r| r.start_addr().0 + r.len()).max().unwrap_or(0);
    let pages = end / PAGE_SIZE as u64;
    let mut written = PageSet::empty(pages);
    for region in memory.iter() {
        // The mapping's own bitmap (the region's trait method gives a slice of it).
        let words = std::ops::Deref::deref(region).bitmap().get_and_reset();
        written.add_region(
            region.start_addr().0 / PAGE_SIZE as u64,
            words,
            region.len() / PAGE_SIZE as u64,
        );
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn accessor_writes_and_marked_ones_are_taken_once() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(take_vmm_writes(&memory).runs().is_empty(), "a new VM's record is empty");
        memory.write_slice(&[1; 10], GuestAddress(0x3ffc)).unwrap();
        mark_written(&memory, GuestAddress(0x9000), 0x2001);
        mark_written(&memory, GuestAddress(0xff000), 0x10_0000);
        assert_eq!(take_vmm_writes(&memory).runs(), vec![(3, 2), (9, 3), (0xff, 1)]);
        assert!(take_vmm_writes(&memory).runs().is_empty());
        // Reads leave no mark.
        let mut back = [0; 10];
        memory.read_slice(&mut back, GuestAddress(0x3ffc)).unwrap();
        assert!(take_vmm_writes(&memory).runs().is_empty());
    }
}
