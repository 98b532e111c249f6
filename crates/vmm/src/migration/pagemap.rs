//! What the host kernel knows of guest memory's pages, from
//! `/proc/self/pagemap`: which pages a clone has made its own (written
//! since its memory was mapped from the template) and which pages were
//! written since the soft-dirty bits were last cleared (`clear_refs`).
//!
//! Soft-dirty bits see every write to a page, the guest's through KVM and
//! the VMM's own (a virtio device filling a receive buffer, a disk read,
//! virtio-fs), where KVM's dirty log sees only the guest's. Both files are
//! opened before the VMM is jailed; the jail has no /proc.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::pages::PageSet;
use super::stream::PAGE_SIZE;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// A page of a file (the template's, unwritten) or shared memory.
const FILE_OR_SHARED: u64 = 1 << 61;
const SOFT_DIRTY: u64 = 1 << 55;

/// One pagemap entry from its eight bytes.
fn entry(raw: &[u8]) -> u64 {
    u64::from_le_bytes(raw.try_into().unwrap_or_default())
}

pub struct Pagemap {
    pagemap: File,
    clear_refs: File,
    /// The host address of guest page 0.
    base: u64,
    pages: u64,
}

impl Pagemap {
    /// For the `pages` guest pages mapped from host address `base`.
    pub fn open(base: u64, pages: u64) -> io::Result<Pagemap> {
        Ok(Pagemap {
            pagemap: File::open("/proc/self/pagemap")?,
            clear_refs: OpenOptions::new().write(true).open("/proc/self/clear_refs")?,
            base,
            pages,
        })
    }

    /// One pagemap entry per page from host address `base` on.
    fn entries(&self, base: u64, pages: u64) -> io::Result<Vec<u64>> {
        let mut bytes = vec![0u8; pages as usize * 8];
        self.read_entries(base, &mut bytes)?;
        Ok(bytes.chunks_exact(8).map(entry).collect())
    }

    /// Fills `bytes` with the pagemap entries from host address `base` on.
    fn read_entries(&self, base: u64, bytes: &mut [u8]) -> io::Result<()> {
        let offset = base / PAGE_SIZE as u64 * 8;
        self.pagemap.read_exact_at(bytes, offset)
    }

    fn guest_pages_where(&self, wanted: impl Fn(u64) -> bool) -> io::Result<PageSet> {
        let mut set = PageSet::empty(self.pages);
        // In pieces: 64 MiB of guest a read, into one buffer (this runs
        // with the guest paused, once).
        const CHUNK: u64 = 16384;
        let mut bytes = vec![0u8; CHUNK.min(self.pages) as usize * 8];
        let mut first = 0;
        while first < self.pages {
            let count = CHUNK.min(self.pages - first);
            let bytes = &mut bytes[..count as usize * 8];
            self.read_entries(self.base + first * PAGE_SIZE as u64, bytes)?;
            for (page, raw) in (first..).zip(bytes.chunks_exact(8)) {
                if wanted(entry(raw)) {
                    set.insert(page);
                }
            }
            first += count;
        }
        Ok(set)
    }

    /// The pages that are no longer the template's: written (private
    /// anonymous copies) or swapped out (only written pages are).
    pub fn private_pages(&self) -> io::Result<PageSet> {
        self.guest_pages_where(|e| (e & PRESENT != 0 && e & FILE_OR_SHARED == 0) || e & SWAPPED != 0)
    }

    /// The pages written since the last `clear_soft_dirty`.
    pub fn soft_dirty(&self) -> io::Result<PageSet> {
        self.guest_pages_where(|e| e & SOFT_DIRTY != 0)
    }

    /// Clears every soft-dirty bit of this process.
    pub fn clear_soft_dirty(&self) -> io::Result<()> {
        (&self.clear_refs).write_all(b"4")
    }

    /// Maps guest memory with 4 KiB pages from now on: a transparent huge
    /// page is one soft-dirty bit for 2 MiB, and a guest that touches a few
    /// bytes in each of a few dozen of them every round (its kernel does)
    /// would never converge. Each huge mapping is split (a protection
    /// change on part of it splits it) and no new one is made. Call with
    /// the VM paused: a guest write to the page briefly read-only would fail.
    pub fn split_huge_pages(&self) -> io::Result<()> {
        const HUGE: u64 = 2 << 20;
        let len = self.pages * PAGE_SIZE as u64;
        let check = |status: libc::c_int| match status {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        };
        // SAFETY: madvise(2) on the guest's own mapping; advice only. A
        // kernel without transparent huge pages refuses it: none to split.
        match check(unsafe { libc::madvise(self.base as *mut libc::c_void, len as usize, libc::MADV_NOHUGEPAGE) }) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            other => other?,
        }
        let mut at = self.base.next_multiple_of(HUGE);
        while at + HUGE <= self.base + len {
            let page = at as *mut libc::c_void;
            // SAFETY: one page of the guest's mapping made read-only and
            // writable again at once, with every guest and device thread
            // parked (the caller's duty), so nothing writes it meanwhile.
            check(unsafe { libc::mprotect(page, PAGE_SIZE, libc::PROT_READ) })?;
            check(unsafe { libc::mprotect(page, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE) })?;
            at += HUGE;
        }
        Ok(())
    }

    /// Checks that this kernel keeps soft-dirty bits (CONFIG_MEM_SOFT_DIRTY):
    /// a page of our own, written after a clear, must show as written.
    pub fn check_soft_dirty(&self) -> io::Result<()> {
        let mut probe = vec![0u8; 2 * PAGE_SIZE];
        let start = probe.as_ptr() as u64;
        let page = start.next_multiple_of(PAGE_SIZE as u64);
        let at = (page - start) as usize;
        probe[at] = 1;
        self.clear_soft_dirty()?;
        // SAFETY: `at` is within `probe`; a volatile write so that it happens.
        unsafe { std::ptr::write_volatile(probe.as_mut_ptr().add(at), 2) };
        let entry = self.entries(page, 1)?[0];
        std::hint::black_box(&probe);
        match entry & SOFT_DIRTY != 0 {
            true => Ok(()),
            false => Err(io::Error::other(
                "this kernel does not track written pages (soft-dirty bits, CONFIG_MEM_SOFT_DIRTY): a running VM \
                 cannot be migrated from it",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clearing soft-dirty bits is process-wide: one test at a time.
    static CLEARS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn mapping(pages: usize) -> (*mut u8, usize) {
        let len = pages * PAGE_SIZE;
        // SAFETY: a fresh anonymous private mapping, unmapped by the test.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        (at.cast(), len)
    }

    #[test]
    fn written_pages_show_as_soft_dirty_until_cleared() {
        let _one = CLEARS.lock().unwrap();
        let (at, len) = mapping(64);
        let map = Pagemap::open(at as u64, 64).unwrap();
        if let Err(e) = map.check_soft_dirty() {
            // A kernel without CONFIG_MEM_SOFT_DIRTY (this project's PVM
            // hosts; the VM tests' test host has it): refused by name, and
            // indeed no page ever shows as written, not even a new one.
            assert!(e.to_string().contains("CONFIG_MEM_SOFT_DIRTY"), "{e}");
            // SAFETY: within the mapping.
            unsafe { std::ptr::write_volatile(at, 1) };
            assert!(map.soft_dirty().unwrap().is_empty());
            // SAFETY: the test's own mapping.
            unsafe { libc::munmap(at.cast(), len) };
            return;
        }
        map.clear_soft_dirty().unwrap();
        assert!(map.soft_dirty().unwrap().is_empty());
        for page in [3usize, 4, 40] {
            // SAFETY: within the mapping.
            unsafe { std::ptr::write_volatile(at.add(page * PAGE_SIZE + 17), 9) };
        }
        assert_eq!(map.soft_dirty().unwrap().runs(), vec![(3, 2), (40, 1)]);
        assert_eq!(map.private_pages().unwrap().runs(), vec![(3, 2), (40, 1)]);
        map.clear_soft_dirty().unwrap();
        assert!(map.soft_dirty().unwrap().is_empty());
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(at.cast(), len) };
    }

    #[test]
    fn a_file_mapped_copy_on_write_is_private_only_where_written() {
        let _one = CLEARS.lock().unwrap();
        let path = std::env::temp_dir().join(format!("hull-pagemap-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 16 * PAGE_SIZE]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: a private mapping of a file we made, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                16 * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                std::os::unix::io::AsRawFd::as_raw_fd(&file),
                0,
            )
        }
        .cast::<u8>();
        assert_ne!(at.cast(), libc::MAP_FAILED);
        let map = Pagemap::open(at as u64, 16).unwrap();
        // SAFETY: reads and a write within the mapping.
        unsafe {
            for page in 0..16 {
                std::ptr::read_volatile(at.add(page * PAGE_SIZE));
            }
            std::ptr::write_volatile(at.add(5 * PAGE_SIZE), 1);
        }
        assert_eq!(map.private_pages().unwrap().runs(), vec![(5, 1)]);
        // SAFETY: our mapping.
        unsafe { libc::munmap(at.cast(), 16 * PAGE_SIZE) };
        std::fs::remove_file(&path).unwrap();
    }
}
