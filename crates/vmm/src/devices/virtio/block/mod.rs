//! virtio-blk backed by a host file: read-only or read-write, flush honoured
//! with fdatasync(2). Data moves between the file and guest memory with one
//! preadv(2)/pwritev(2) per request, straight into the guest's buffers.
//! While a migration copies the disk, writes are logged (`written`).
//! An empty slot (a zero-length file) takes a disk while the guest runs
//! (`plug`): the driver sees its capacity change, as on a resize.

pub mod written;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::{AtomicBitmap, BitmapSlice, BS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::{VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use written::WrittenChunks;

const SECTOR: u64 = 512;
/// The device says how many data segments a request may have; without it
/// Linux sends one segment per request, and a 1 MiB read becomes hundreds.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;
/// Largest data transfer one request may ask for.
const MAX_REQUEST_BYTES: u64 = 16 << 20;
const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue's size less the header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The most buffers one preadv/pwritev takes (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// A disk file of `bytes` as the guest sees it: whole sectors.
pub fn whole_sectors(bytes: u64) -> u64 {
    bytes / SECTOR * SECTOR
}

pub struct Block {
    file: File,
    /// Writes are refused (the file may be open for reading only).
    read_only: bool,
    /// What the driver was told at its start: fixed, as features are.
    read_only_feature: bool,
    sectors: u64,
    id: [u8; ID_BYTES],
    written: Arc<WrittenChunks>,
    /// The slot's own empty file while a disk plugged into the running VM
    /// is in its place (the VM's configuration, which a migration's
    /// destination is given, does not name that disk).
    unplugged: Option<File>,
}

/// A disk as a migration copies it: a descriptor of its file of its own,
/// its size, and the log of what the guest writes meanwhile.
#[derive(Debug)]
pub struct DiskHandle {
    pub file: File,
    pub bytes: u64,
    pub read_only: bool,
    pub written: Arc<WrittenChunks>,
}

impl Block {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let sectors = file.metadata()?.len() / SECTOR;
        let mut id = [0u8; ID_BYTES];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Block {
            file,
            read_only,
            read_only_feature: read_only,
            sectors,
            id,
            written: Arc::new(WrittenChunks::new(sectors * SECTOR)),
            unplugged: None,
        })
    }

    /// Puts `file` in this empty slot (its access mode decides whether the
    /// guest may write it), or, with `None`, takes a disk plugged so out
    /// again (the slot reads as empty). A disk the VM started with stays.
    fn plug_disk(&mut self, file: Option<File>) -> std::io::Result<()> {
        let refused = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
        match file {
            Some(file) => {
                if self.sectors > 0 || self.unplugged.is_some() {
                    return Err(refused("the slot holds a disk already"));
                }
                let metadata = file.metadata()?;
                if !metadata.is_file() {
                    return Err(refused("a disk must be a regular file"));
                }
                let read_only = match access_mode(&file)? {
                    libc::O_RDONLY => true,
                    libc::O_RDWR => false,
                    _ => return Err(refused("the disk's file is open for writing only")),
                };
                let sectors = metadata.len() / SECTOR;
                if sectors == 0 {
                    return Err(refused("the disk is empty"));
                }
                self.unplugged = Some(std::mem::replace(&mut self.file, file));
                self.read_only = read_only;
                self.sectors = sectors;
                self.id = [0; ID_BYTES];
                self.written = Arc::new(WrittenChunks::new(sectors * SECTOR));
            }
            None => {
                let empty = self
                    .unplugged
                    .take()
                    .ok_or_else(|| refused("the slot holds no disk plugged while the VM ran"))?;
                // The plugged file is closed; the slot reads as empty again.
                self.file = empty;
                self.read_only = self.read_only_feature;
                self.sectors = 0;
                self.written = Arc::new(WrittenChunks::new(0));
            }
        }
        Ok(())
    }

    /// Serves one request; returns (status, bytes written into guest buffers).
    fn serve(&self, descs: &[Descriptor], memory: &GuestMemoryMmap) -> Result<(u8, u32), RequestError> {
        let (header, rest) = descs.split_first().ok_or(RequestError::Malformed)?;
        if header.is_write_only() || header.len() < 16 {
            return Err(RequestError::Malformed);
        }
        let mut raw = [0u8; 16];
        memory
            .read_slice(&mut raw, header.addr())
            .map_err(|_| RequestError::Malformed)?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes(raw[8..16].try_into().map_err(|_| RequestError::Malformed)?);
        let data = &rest[..rest.len().saturating_sub(1)];
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let in_range = || {
            total <= MAX_REQUEST_BYTES
                && sector
                    .checked_mul(SECTOR)
                    .and_then(|s| s.checked_add(total))
                    .is_some_and(|end| end <= self.sectors * SECTOR)
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                if !in_range() || data.iter().any(|d| !d.is_write_only()) {
                    return Ok((VIRTIO_BLK_S_IOERR, 0));
                }
                let buffers = guest_buffers(memory, data)?;
                self.transfer(&buffers, sector * SECTOR, Direction::Read)?;
                Ok((VIRTIO_BLK_S_OK, total as u32))
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only || !in_range() || data.iter().any(|d| d.is_write_only()) {
                    return Ok((VIRTIO_BLK_S_IOERR, 0));
                }
                let buffers = guest_buffers(memory, data)?;
                let written = self.transfer(&buffers, sector * SECTOR, Direction::Write);
                // After the write, so a migration that reads the chunk
                // before it lands sends it again; a failed write may have
                // changed part of the file, so it counts too.
                self.written.mark(sector * SECTOR, total);
                written?;
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(|_| RequestError::Io)?;
                }
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_GET_ID => {
                let Some(d) = data.first().filter(|d| d.is_write_only()) else {
                    return Ok((VIRTIO_BLK_S_IOERR, 0));
                };
                let n = (d.len() as usize).min(ID_BYTES);
                memory
                    .write_slice(&self.id[..n], d.addr())
                    .map_err(|_| RequestError::Malformed)?;
                Ok((VIRTIO_BLK_S_OK, n as u32))
            }
            _ => Ok((VIRTIO_BLK_S_UNSUPP, 0)),
        }
    }
}

impl Block {
    /// Moves the whole of `buffers` between guest memory and the file at
    /// `offset`, resuming after short transfers.
    fn transfer(
        &self,
        buffers: &[VolatileSlice<impl BitmapSlice>],
        offset: u64,
        direction: Direction,
    ) -> Result<(), RequestError> {
        let moved = self.move_data(buffers, offset, direction);
        if let Direction::Read = direction {
            // The kernel wrote the buffers behind vm-memory's back: marked
            // after it did (a mark before could be taken before the write).
            for buffer in buffers {
                buffer.bitmap().mark_dirty(0, buffer.len());
            }
        }
        moved
    }

    fn move_data(
        &self,
        buffers: &[VolatileSlice<impl BitmapSlice>],
        offset: u64,
        direction: Direction,
    ) -> Result<(), RequestError> {
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.ptr_guard_mut().as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let (mut done, mut offset) = (0usize, offset);
        while done < iovecs.len() {
            let batch = &iovecs[done..iovecs.len().min(done + IOV_MAX)];
            let file_offset = libc::off_t::try_from(offset).map_err(|_| RequestError::Io)?;
            // SAFETY: every iovec points into a guest memory slice that
            // stays mapped while `buffers` borrows the memory, and the
            // count is at most IOV_MAX.
            let n = unsafe {
                match direction {
                    Direction::Read => {
                        libc::preadv(self.file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, file_offset)
                    }
                    Direction::Write => {
                        libc::pwritev(self.file.as_raw_fd(), batch.as_ptr(), batch.len() as i32, file_offset)
                    }
                }
            };
            let mut left = match n {
                n if n > 0 => n as usize,
                // Reads stop at the end of the file only if it shrank under us.
                0 => return Err(RequestError::Io),
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
                _ => return Err(RequestError::Io),
            };
            offset += left as u64;
            while left > 0 {
                let iov = &mut iovecs[done];
                if left >= iov.iov_len {
                    left -= iov.iov_len;
                    done += 1;
                } else {
                    // SAFETY: still inside the same buffer, `left` bytes in.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left).cast() };
                    iov.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

/// `O_RDONLY`, `O_WRONLY` or `O_RDWR`: how `file` was opened.
fn access_mode(file: &File) -> std::io::Result<i32> {
    // SAFETY: F_GETFL on a descriptor `file` owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    match flags {
        -1 => Err(std::io::Error::last_os_error()),
        flags => Ok(flags & libc::O_ACCMODE),
    }
}

/// Which way a transfer goes, seen from the guest.
#[derive(Clone, Copy)]
enum Direction {
    /// From the file into guest memory.
    Read,
    /// From guest memory into the file.
    Write,
}

/// The guest memory behind `data`, split where it crosses memory regions;
/// a buffer outside guest memory makes the request malformed.
fn guest_buffers<'m>(
    memory: &'m GuestMemoryMmap,
    data: &[Descriptor],
) -> Result<Vec<VolatileSlice<'m, BS<'m, AtomicBitmap>>>, RequestError> {
    let mut buffers = Vec::with_capacity(data.len());
    for d in data {
        for slice in memory.get_slices(d.addr(), d.len() as usize) {
            buffers.push(slice.map_err(|_| RequestError::Malformed)?);
        }
    }
    Ok(buffers)
}

enum RequestError {
    /// The chain breaks the rules; answered with IOERR where a status byte can be written.
    Malformed,
    /// The backing file failed.
    Io,
}

impl VirtioDevice for Block {
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn disk(&self) -> std::io::Result<Option<DiskHandle>> {
        Ok(Some(DiskHandle {
            file: self.file.try_clone()?,
            bytes: self.sectors * SECTOR,
            read_only: self.read_only,
            written: Arc::clone(&self.written),
        }))
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn plug(&mut self, backend: Option<File>) -> std::io::Result<()> {
        self.plug_disk(backend)
    }

    fn keep_plugged(&mut self) -> std::io::Result<()> {
        // The slot's empty file goes: the disk is the slot's now.
        self.unplugged
            .take()
            .map(drop)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no disk was plugged into the slot"))
    }

    fn migration_blocker(&self) -> Option<String> {
        self.unplugged
            .is_some()
            .then(|| "a disk was plugged into the VM while it ran (a container joined to its network)".into())
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only_feature { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | ro
    }

    /// capacity (sectors), size_max (unused: no F_SIZE_MAX), seg_max.
    fn config(&self) -> Vec<u8> {
        let mut config = self.sectors.to_le_bytes().to_vec();
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        config
    }

    fn process_queue(&mut self, _index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.first_mut() else { return false };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let status_desc = descs
                .last()
                .filter(|d| d.is_write_only() && d.len() >= 1 && descs.len() >= 2);
            let (status, written) = match self.serve(&descs, memory) {
                Ok(result) => result,
                Err(RequestError::Malformed) | Err(RequestError::Io) => (VIRTIO_BLK_S_IOERR, 0),
            };
            let mut len = written;
            if let Some(d) = status_desc {
                if memory.write_obj(status, GuestAddress(d.addr().0)).is_ok() {
                    len = len.saturating_add(1);
                }
            }
            if queue.add_used(memory, head, len).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn disk(name: &str, read_only: bool) -> (Block, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("hull-blk-{name}-{}", std::process::id()));
        let content: Vec<u8> = (0..8 * SECTOR).map(|i| (i / SECTOR) as u8).collect();
        std::fs::write(&path, content).unwrap();
        (Block::open(&path, read_only).unwrap(), path)
    }

    fn header(memory: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&raw, GuestAddress(0x8000)).unwrap();
    }

    fn status(memory: &GuestMemoryMmap) -> u8 {
        memory.read_obj(GuestAddress(0xa000)).unwrap()
    }

    fn request(block: &mut Block, memory: &GuestMemoryMmap, descs: &[virtio_queue::desc::RawDescriptor]) -> u32 {
        memory.write_obj(0xffu8, GuestAddress(0xa000)).unwrap();
        let mut queue = queue_with(memory, descs);
        assert!(block.process_queue(0, std::slice::from_mut(&mut queue), memory));
        used_len(memory, &queue, 0)
    }

    #[test]
    fn what_a_read_puts_in_guest_memory_is_recorded_and_what_a_write_takes_is_not() {
        use crate::guest_memory::take_vmm_writes;
        let (mut block, path) = disk("marks", false);
        let memory = memory();
        let serve = |block: &mut Block, kind: u32| {
            header(&memory, kind, 2);
            let mut queue = queue_with(
                &memory,
                &[
                    desc(0x8000, 16, NEXT, 1),
                    desc(0x9000, 1024, NEXT | if kind == VIRTIO_BLK_T_IN { WRITE } else { 0 }, 2),
                    desc(0xa000, 1, WRITE, 0),
                ],
            );
            take_vmm_writes(&memory);
            assert!(block.process_queue(0, std::slice::from_mut(&mut queue), &memory));
            (take_vmm_writes(&memory), queue.used_ring() / 0x1000)
        };
        // preadv(2) fills the buffer behind vm-memory's back: marked all the same.
        let (written, used_ring) = serve(&mut block, VIRTIO_BLK_T_IN);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x9000 + 600)).unwrap(), 3);
        assert!(
            written.contains(0x9) && written.contains(0xa),
            "the data and the status"
        );
        assert!(written.contains(used_ring));
        assert!(!written.contains(0x8), "the header was only read");
        let (written, _) = serve(&mut block, VIRTIO_BLK_T_OUT);
        assert!(!written.contains(0x9), "a write request's data was only read");
        assert!(written.contains(0xa));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn reads_writes_flushes_and_ids() {
        let (mut block, path) = disk("rw", false);
        let memory = memory();
        header(&memory, VIRTIO_BLK_T_IN, 3);
        let len = request(
            &mut block,
            &memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0x9000, 512, NEXT | WRITE, 2),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        assert_eq!((status(&memory), len), (VIRTIO_BLK_S_OK, 513));
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x9000 + 100)).unwrap(), 3);

        memory.write_slice(&[0xab; 512], GuestAddress(0x9000)).unwrap();
        assert_eq!(one_sector(&mut block, &memory, VIRTIO_BLK_T_OUT, 5), VIRTIO_BLK_S_OK);
        assert_eq!(std::fs::read(&path).unwrap()[5 * 512 + 7], 0xab);

        // One request over buffers of odd sizes, one of them empty: one
        // vectored read fills them in order.
        header(&memory, VIRTIO_BLK_T_IN, 4);
        let len = request(
            &mut block,
            &memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0xb000, 100, NEXT | WRITE, 2),
                desc(0xc000, 0, NEXT | WRITE, 3),
                desc(0xd000, 924, NEXT | WRITE, 4),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        assert_eq!((status(&memory), len), (VIRTIO_BLK_S_OK, 1025));
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0xb000 + 99)).unwrap(), 4);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0xd000 + 411)).unwrap(), 4);
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0xd000 + 412)).unwrap(),
            0xab,
            "sector 5, written above"
        );

        header(&memory, VIRTIO_BLK_T_FLUSH, 0);
        request(
            &mut block,
            &memory,
            &[desc(0x8000, 16, NEXT, 1), desc(0xa000, 1, WRITE, 0)],
        );
        assert_eq!(status(&memory), VIRTIO_BLK_S_OK);

        header(&memory, VIRTIO_BLK_T_GET_ID, 0);
        request(
            &mut block,
            &memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0x9000, 20, NEXT | WRITE, 2),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        assert_eq!(status(&memory), VIRTIO_BLK_S_OK);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_buffer_across_two_memory_regions_is_read_whole() {
        let (block, path) = disk("regions", false);
        let memory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000), (GuestAddress(0x8_0000), 0x8_0000)]).unwrap();
        let buffer = vm_memory::GuestAddress(0x8_0000 - 200);
        let data = [Descriptor::new(buffer.0, 512, WRITE, 0)];
        let buffers = guest_buffers(&memory, &data).ok().unwrap();
        assert_eq!(buffers.len(), 2, "split at the region boundary");
        assert!(block.transfer(&buffers, 6 * SECTOR, Direction::Read).is_ok());
        let mut got = [0u8; 512];
        memory.read_slice(&mut got, buffer).unwrap();
        assert_eq!(got, [6u8; 512]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let (mut block, path) = disk("ro", true);
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let memory = memory();
        header(&memory, VIRTIO_BLK_T_OUT, 0);
        request(
            &mut block,
            &memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0x9000, 512, NEXT, 2),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        assert_eq!(status(&memory), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&path).unwrap()[0], 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn hostile_requests_get_errors_not_panics() {
        let (mut block, path) = disk("hostile", false);
        let memory = memory();
        let far = MEM_SIZE as u64 + 0x1000;
        let cases: Vec<(u32, u64, Vec<virtio_queue::desc::RawDescriptor>)> = vec![
            // past the end of the disk
            (
                VIRTIO_BLK_T_IN,
                7,
                vec![
                    desc(0x8000, 16, NEXT, 1),
                    desc(0x9000, 1024, NEXT | WRITE, 2),
                    desc(0xa000, 1, WRITE, 0),
                ],
            ),
            // sector number that overflows
            (
                VIRTIO_BLK_T_IN,
                u64::MAX,
                vec![
                    desc(0x8000, 16, NEXT, 1),
                    desc(0x9000, 512, NEXT | WRITE, 2),
                    desc(0xa000, 1, WRITE, 0),
                ],
            ),
            // a read into a device-readable buffer (wrong direction)
            (
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    desc(0x8000, 16, NEXT, 1),
                    desc(0x9000, 512, NEXT, 2),
                    desc(0xa000, 1, WRITE, 0),
                ],
            ),
            // data outside guest memory
            (
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    desc(0x8000, 16, NEXT, 1),
                    desc(far, 512, NEXT | WRITE, 2),
                    desc(0xa000, 1, WRITE, 0),
                ],
            ),
            // unknown request type
            (99, 0, vec![desc(0x8000, 16, NEXT, 1), desc(0xa000, 1, WRITE, 0)]),
        ];
        for (kind, sector, descs) in cases {
            header(&memory, kind, sector);
            request(&mut block, &memory, &descs);
            assert_ne!(status(&memory), VIRTIO_BLK_S_OK, "kind {kind} sector {sector}");
        }
        // No status descriptor, header too short, zero-length everything, a loop: no panic.
        for descs in [
            vec![desc(0x8000, 16, 0, 0)],
            vec![desc(0x8000, 4, NEXT, 1), desc(0xa000, 1, WRITE, 0)],
            vec![desc(0x8000, 0, NEXT, 1), desc(0xa000, 0, WRITE, 0)],
            vec![desc(0x8000, 16, NEXT, 1), desc(0xa000, 1, NEXT | WRITE, 0)],
        ] {
            header(&memory, VIRTIO_BLK_T_IN, 0);
            let mut queue = queue_with(&memory, &descs);
            block.process_queue(0, std::slice::from_mut(&mut queue), &memory);
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), 8 * 512, "the disk is intact");
        std::fs::remove_file(path).unwrap();
    }

    /// One sector read (`VIRTIO_BLK_T_IN`, into 0x9000) or written
    /// (`VIRTIO_BLK_T_OUT`, from 0x9000) at `sector`; its status.
    fn one_sector(block: &mut Block, memory: &GuestMemoryMmap, kind: u32, sector: u64) -> u8 {
        let data = if kind == VIRTIO_BLK_T_IN { NEXT | WRITE } else { NEXT };
        header(memory, kind, sector);
        request(
            block,
            memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0x9000, 512, data, 2),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        status(memory)
    }

    #[test]
    fn an_empty_slot_takes_a_disk_while_running_and_gives_it_back() {
        let empty_path = std::env::temp_dir().join(format!("hull-blk-empty-{}", std::process::id()));
        std::fs::write(&empty_path, b"").unwrap();
        let mut slot = Block::open(&empty_path, false).unwrap();
        let features = slot.features();
        let memory = memory();
        assert_ne!(
            one_sector(&mut slot, &memory, VIRTIO_BLK_T_IN, 0),
            VIRTIO_BLK_S_OK,
            "an empty slot has no sectors"
        );
        assert_eq!(slot.migration_blocker(), None);

        // Opened read-only: the guest reads it and cannot write it.
        let (_, path) = disk("plugged", false);
        slot.plug(Some(File::open(&path).unwrap())).unwrap();
        assert_eq!(slot.config()[..8], 8u64.to_le_bytes(), "its capacity");
        assert_eq!(slot.features(), features, "features stay as negotiated");
        assert_eq!(one_sector(&mut slot, &memory, VIRTIO_BLK_T_IN, 6), VIRTIO_BLK_S_OK);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x9000 + 9)).unwrap(), 6);
        assert_eq!(
            one_sector(&mut slot, &memory, VIRTIO_BLK_T_OUT, 1),
            VIRTIO_BLK_S_IOERR,
            "a read-only plug refuses writes"
        );
        assert!(
            slot.migration_blocker().is_some(),
            "the VM's configuration does not name it"
        );

        // One disk a slot; a second is refused and changes nothing.
        let refused = slot.plug(Some(File::open(&path).unwrap())).unwrap_err();
        assert!(refused.to_string().contains("holds a disk already"), "{refused}");
        assert_eq!(one_sector(&mut slot, &memory, VIRTIO_BLK_T_IN, 7), VIRTIO_BLK_S_OK);

        slot.plug(None).unwrap();
        assert_eq!(slot.config()[..8], 0u64.to_le_bytes());
        assert_ne!(one_sector(&mut slot, &memory, VIRTIO_BLK_T_IN, 0), VIRTIO_BLK_S_OK);
        assert_eq!(slot.migration_blocker(), None);
        assert!(slot.plug(None).is_err(), "nothing plugged to take out");

        // Read-write this time; an empty file and a directory are no disks.
        let rw = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        slot.plug(Some(rw)).unwrap();
        assert!(!slot.read_only);
        slot.plug(None).unwrap();
        assert!(slot.plug(Some(File::open(&empty_path).unwrap())).is_err());
        assert!(slot.plug(Some(File::open(std::env::temp_dir()).unwrap())).is_err());
        let write_only = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(slot.plug(Some(write_only)).is_err());

        // Kept for good (a standby VM's disks): it no longer stops a
        // migration and stays in its slot.
        assert!(slot.keep_plugged().is_err(), "nothing plugged to keep");
        let rw = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        slot.plug(Some(rw)).unwrap();
        slot.keep_plugged().unwrap();
        assert_eq!(slot.migration_blocker(), None);
        assert!(slot.plug(None).is_err(), "a kept disk is not taken out");
        assert_eq!(slot.config()[..8], 8u64.to_le_bytes());
        assert_eq!(one_sector(&mut slot, &memory, VIRTIO_BLK_T_OUT, 2), VIRTIO_BLK_S_OK);

        // A disk the VM started with is not taken out.
        let (mut started_with, other) = disk("started", true);
        assert!(started_with.plug(None).is_err());
        assert!(started_with.plug(Some(File::open(&path).unwrap())).is_err());
        for p in [empty_path, path, other] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
