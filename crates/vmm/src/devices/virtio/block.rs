//! virtio-blk backed by a host file: read-only or read-write, flush honoured
//! with fdatasync(2).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1};

const SECTOR: u64 = 512;
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

pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_BYTES],
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
            sectors,
            id,
        })
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
                let mut offset = sector * SECTOR;
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    self.file
                        .read_exact_at(&mut buf, offset)
                        .map_err(|_| RequestError::Io)?;
                    memory
                        .write_slice(&buf, d.addr())
                        .map_err(|_| RequestError::Malformed)?;
                    offset += u64::from(d.len());
                }
                Ok((VIRTIO_BLK_S_OK, total as u32))
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only || !in_range() || data.iter().any(|d| d.is_write_only()) {
                    return Ok((VIRTIO_BLK_S_IOERR, 0));
                }
                let mut offset = sector * SECTOR;
                for d in data {
                    let mut buf = vec![0u8; d.len() as usize];
                    memory
                        .read_slice(&mut buf, d.addr())
                        .map_err(|_| RequestError::Malformed)?;
                    self.file.write_all_at(&buf, offset).map_err(|_| RequestError::Io)?;
                    offset += u64::from(d.len());
                }
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

enum RequestError {
    /// The chain breaks the rules; answered with IOERR where a status byte can be written.
    Malformed,
    /// The backing file failed.
    Io,
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn config(&self) -> Vec<u8> {
        self.sectors.to_le_bytes().to_vec()
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
        header(&memory, VIRTIO_BLK_T_OUT, 5);
        request(
            &mut block,
            &memory,
            &[
                desc(0x8000, 16, NEXT, 1),
                desc(0x9000, 512, NEXT, 2),
                desc(0xa000, 1, WRITE, 0),
            ],
        );
        assert_eq!(status(&memory), VIRTIO_BLK_S_OK);
        assert_eq!(std::fs::read(&path).unwrap()[5 * 512 + 7], 0xab);

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
}
