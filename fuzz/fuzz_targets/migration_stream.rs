#![no_main]
//! The destination's side of a migration: the input as the stream a source
//! sends into a 64-page guest, either raw or cut into frames that carry a
//! valid checksum (kind, a 16-bit length, the payload), so that it gets past
//! the CRC to the frame decoders, the page bounds checks, a travelling
//! 256 KiB disk's (disk 1; disk 0 does not travel) and a travelling shared
//! directory's (share 1, a directory of the run's own: nothing the input
//! names may land outside it).

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm::guest_memory::GuestMemoryMmap;
use vmm::migration::receive::receive_memory;
use vmm::migration::{IncomingDisks, IncomingTrees};

const GUEST_BYTES: u64 = 64 * 4096;
const DISK_BYTES: u64 = 256 << 10;

/// One copy for the whole run: emptied once, written by every input.
fn disks() -> &'static IncomingDisks {
    static DISKS: std::sync::OnceLock<IncomingDisks> = std::sync::OnceLock::new();
    DISKS.get_or_init(|| {
        let path = hull_fuzz::scratch_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("the fuzz disk");
        let _ = std::fs::remove_file(&path);
        IncomingDisks::new(vec![None, Some((file, DISK_BYTES))]).expect("the fuzz disk")
    })
}

/// The run's own directory that share 1's files go into.
fn tree() -> &'static std::path::Path {
    static TREE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let path = hull_fuzz::scratch_dir().join(format!("hull-fuzz-tree-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("the fuzz tree");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let stream = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut stream = Vec::new();
        while let [kind, a, b, tail @ ..] = rest {
            let len = (u16::from_le_bytes([*a, *b]) as usize).min(tail.len());
            let mut frame = vec![*kind];
            frame.extend_from_slice(&(len as u32).to_le_bytes());
            frame.extend_from_slice(&tail[..len]);
            let crc = crc32fast::hash(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            stream.extend_from_slice(&frame);
            rest = &tail[len..];
        }
        stream
    };
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_BYTES as usize)]).expect("guest memory");
    let mut link = Link(stream.as_slice());
    let root = std::fs::File::open(tree()).expect("the fuzz tree");
    let mut trees = IncomingTrees::new(vec![None, Some(root.into())]);
    let _ = receive_memory(&mut link, &memory, GUEST_BYTES, disks(), &mut trees, &mut |_, _| {});
});

/// The source's side of the link: the stream to read; what the
/// destination answers is dropped.
struct Link<'a>(&'a [u8]);

impl std::io::Read for Link<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Link<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
