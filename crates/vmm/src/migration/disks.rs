//! Disks that travel with their VM: the source sends what its disk files
//! hold (holes and zero chunks left out of the first pass), then, each
//! round, the chunks the guest wrote meanwhile (`WrittenChunks`); the last
//! ones go with the guest paused. The destination writes them into its own
//! copy, which it empties first, and puts them on its storage before it
//! says `Ready`.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use super::pages::PageSet;
use super::stream::{put_disk, put_frame, Frame, StreamError, MAX_DISK_BYTES};
use super::MigrationError;
use crate::devices::virtio::block::written::{WrittenChunks, CHUNK};

/// Whether a disk's content goes with a VM that is `moving` its disks (to
/// another host): read-write ones do; a read-only one must be the same
/// bytes on both sides.
pub fn travels(moving: bool, read_only: bool) -> bool {
    moving && !read_only
}

/// A disk the source sends: its number in the guest's order (vda is 0).
#[derive(Debug)]
pub struct OutgoingDisk {
    pub disk: u8,
    pub file: File,
    pub bytes: u64,
    pub written: Arc<WrittenChunks>,
}

impl OutgoingDisk {
    /// The chunks the guest wrote since the last look (or the log's start).
    pub fn written_since(&self) -> PageSet {
        PageSet::from_words(self.written.take(), self.written.chunks())
    }

    /// The chunks that hold data (a sparse file's holes left out).
    pub fn allocated(&self) -> std::io::Result<PageSet> {
        let chunks = self.bytes.div_ceil(CHUNK);
        let mut set = PageSet::empty(chunks);
        let fd = self.file.as_raw_fd();
        let mut at: u64 = 0;
        while at < self.bytes {
            // SAFETY: lseek(2) on a valid descriptor.
            let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    // No data past `at`.
                    Some(libc::ENXIO) => Ok(set),
                    // A filesystem without holes: every chunk.
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(PageSet::full(chunks)),
                    _ => Err(e),
                };
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (data, hole) = (data as u64, (hole as u64).min(self.bytes));
            if hole <= data {
                break;
            }
            for chunk in data / CHUNK..hole.div_ceil(CHUNK) {
                set.insert(chunk);
            }
            at = hole;
        }
        Ok(set)
    }

    /// Sends `chunks` as the file holds them now; zero chunks are left out
    /// when the destination's copy is known to be zero there (`skip_zeros`),
    /// else sent as `DiskZeros`. Data goes as LZ4 blocks with `compress`
    /// where they are smaller; returns the bytes that saved.
    pub fn send(
        &self,
        w: &mut impl Write,
        chunks: &PageSet,
        skip_zeros: bool,
        compress: bool,
    ) -> Result<u64, MigrationError> {
        let mut saved = 0;
        let mut data: Vec<u8> = Vec::with_capacity(MAX_DISK_BYTES);
        let mut data_at = 0;
        let mut zeros_at = 0;
        let mut zeros = 0u64;
        let mut buffer = vec![0u8; CHUNK as usize];
        for (first, count) in chunks.runs() {
            for chunk in first..first + count {
                let offset = chunk * CHUNK;
                let len = CHUNK.min(self.bytes.saturating_sub(offset)) as usize;
                if len == 0 {
                    continue;
                }
                let bytes = &mut buffer[..len];
                self.file
                    .read_exact_at(bytes, offset)
                    .map_err(|e| MigrationError::Disk(format!("reading disk {} at {offset}: {e}", self.disk)))?;
                let zero = bytes.iter().all(|&b| b == 0);
                // A run of data or of zeros ends where this chunk does not continue it.
                if !data.is_empty()
                    && (zero || data_at + data.len() as u64 != offset || data.len() + len > MAX_DISK_BYTES)
                {
                    saved += self.flush_data(w, data_at, &mut data, compress)?;
                }
                if zeros > 0 && (!zero || zeros_at + zeros != offset) {
                    self.flush_zeros(w, zeros_at, &mut zeros)?;
                }
                match zero {
                    true if skip_zeros => {}
                    true => {
                        if zeros == 0 {
                            zeros_at = offset;
                        }
                        zeros += len as u64;
                    }
                    false => {
                        if data.is_empty() {
                            data_at = offset;
                        }
                        data.extend_from_slice(bytes);
                    }
                }
            }
        }
        saved += self.flush_data(w, data_at, &mut data, compress)?;
        self.flush_zeros(w, zeros_at, &mut zeros)?;
        Ok(saved)
    }

    fn flush_data(
        &self,
        w: &mut impl Write,
        offset: u64,
        data: &mut Vec<u8>,
        compress: bool,
    ) -> Result<u64, StreamError> {
        if data.is_empty() {
            return Ok(0);
        }
        let data = std::mem::replace(data, Vec::with_capacity(MAX_DISK_BYTES));
        put_disk(w, self.disk, offset, data, compress)
    }

    fn flush_zeros(&self, w: &mut impl Write, offset: u64, bytes: &mut u64) -> Result<(), StreamError> {
        if *bytes == 0 {
            return Ok(());
        }
        let frame = Frame::DiskZeros {
            disk: self.disk,
            offset,
            bytes: std::mem::take(bytes),
        };
        put_frame(w, &frame)
    }
}

/// The destination's copies of the disks that travel, by disk number
/// (`None`: that disk does not travel, and the source may not write it).
#[derive(Debug, Default)]
pub struct IncomingDisks {
    disks: Vec<Option<(File, u64)>>,
}

impl IncomingDisks {
    /// Empties each copy to `bytes` of zeros (what the source leaves out
    /// of its first pass is zero).
    pub fn new(disks: Vec<Option<(File, u64)>>) -> std::io::Result<IncomingDisks> {
        for (file, bytes) in disks.iter().flatten() {
            file.set_len(0)?;
            file.set_len(*bytes)?;
        }
        Ok(IncomingDisks { disks })
    }

    /// The copy of disk `disk`, checked to hold `len` bytes at `offset`.
    fn copy(&self, disk: u8, offset: u64, len: u64) -> Result<&File, MigrationError> {
        let Some(Some((file, bytes))) = self.disks.get(usize::from(disk)) else {
            return Err(MigrationError::Disk(format!(
                "the source sent disk {disk}, which does not travel"
            )));
        };
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= *bytes => Ok(file),
            _ => Err(MigrationError::Disk(format!(
                "the source sent {len} bytes at {offset} of disk {disk}, which holds {bytes}"
            ))),
        }
    }

    /// Writes `data` at `offset` of disk `disk`'s copy.
    pub fn write(&self, disk: u8, offset: u64, data: &[u8]) -> Result<(), MigrationError> {
        self.copy(disk, offset, data.len() as u64)?
            .write_all_at(data, offset)
            .map_err(|e| MigrationError::Disk(format!("writing disk {disk} at {offset}: {e}")))
    }

    /// Zeros `bytes` at `offset`: a hole punched, or zeros written where
    /// the filesystem cannot punch.
    pub fn zero(&self, disk: u8, offset: u64, bytes: u64) -> Result<(), MigrationError> {
        let file = self.copy(disk, offset, bytes)?;
        // SAFETY: fallocate(2) on a valid descriptor.
        let punched = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                bytes as libc::off_t,
            )
        };
        if punched == 0 {
            return Ok(());
        }
        let zeros = vec![0u8; MAX_DISK_BYTES];
        let mut at = offset;
        while at < offset + bytes {
            let n = (offset + bytes - at).min(MAX_DISK_BYTES as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| MigrationError::Disk(format!("zeroing disk {disk} at {at}: {e}")))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Puts every copy on its storage.
    pub fn sync(&self) -> Result<(), MigrationError> {
        for (disk, (file, _)) in self
            .disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((i, d.as_ref()?)))
        {
            file.sync_data()
                .map_err(|e| MigrationError::Disk(format!("syncing disk {disk}: {e}")))?;
        }
        Ok(())
    }
}
