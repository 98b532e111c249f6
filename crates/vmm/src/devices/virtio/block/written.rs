//! Which parts of a disk the guest wrote while a migration copies it: one
//! bit per `CHUNK` bytes, set by the block device after each write lands in
//! the file and taken (read and cleared) by the migration between rounds.
//! Set after the write and cleared before the chunk is read again, a bit
//! never hides a write: one that lands after the read sets it again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What one bit stands for: small enough that a guest's scattered metadata
/// writes do not resend much, large enough that a 64 GiB disk's log is 128 KiB.
pub const CHUNK: u64 = 64 << 10;

#[derive(Debug)]
pub struct WrittenChunks {
    words: Vec<AtomicU64>,
    chunks: u64,
    tracking: AtomicBool,
}

impl WrittenChunks {
    /// A log for a disk of `bytes` (the last chunk may be short).
    pub fn new(bytes: u64) -> WrittenChunks {
        let chunks = bytes.div_ceil(CHUNK);
        WrittenChunks {
            words: (0..chunks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            chunks,
            tracking: AtomicBool::new(false),
        }
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Records writes from now on, the log empty.
    pub fn start(&self) {
        self.words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
        self.tracking.store(true, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.tracking.store(false, Ordering::SeqCst);
    }

    /// `len` bytes at `offset` were written (nothing while not tracking).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 || !self.tracking.load(Ordering::SeqCst) {
            return;
        }
        let first = offset / CHUNK;
        let last = offset.saturating_add(len - 1) / CHUNK;
        for chunk in first..=last.min(self.chunks.saturating_sub(1)) {
            if let Some(word) = self.words.get((chunk / 64) as usize) {
                word.fetch_or(1 << (chunk % 64), Ordering::SeqCst);
            }
        }
    }

    /// The chunks written since the last call (or `start`), clearing them:
    /// chunk `64 * w + b` is bit `b` of word `w`.
    pub fn take(&self) -> Vec<u64> {
        self.words.iter().map(|w| w.swap(0, Ordering::SeqCst)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_logged_by_chunk_only_while_tracking() {
        let log = WrittenChunks::new(10 * CHUNK + 1);
        assert_eq!(log.chunks(), 11);
        log.mark(0, 4096);
        assert_eq!(log.take(), vec![0], "not tracking yet");
        log.start();
        log.mark(CHUNK - 1, 2);
        log.mark(10 * CHUNK, 1);
        // Past the end (a hostile length) stops at the last chunk.
        log.mark(9 * CHUNK, u64::MAX);
        // Chunks 0, 1, 9 and 10.
        assert_eq!(log.take(), vec![0b110_0000_0011]);
        assert_eq!(log.take(), vec![0], "taking clears");
        log.stop();
        log.mark(0, 1);
        assert_eq!(log.take(), vec![0]);
    }
}
