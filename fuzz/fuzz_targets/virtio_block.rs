#![no_main]
//! virtio-blk under a hostile driver, on a small disk file (tmpfs, so
//! flushes cost nothing). Requests stay inside the disk, so it keeps its size.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Unstructured;
use hull_fuzz::{drive, Guest, Turn};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::VirtioDevice;

const DISK_BYTES: usize = 64 * 1024;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = hull_fuzz::scratch_dir().join(format!("hull-fuzz-disk-{}", std::process::id()));
        let content: Vec<u8> = (0..DISK_BYTES).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, content).expect("writing the fuzz disk");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let read_only = u.arbitrary::<bool>().unwrap_or(false);
    let mut block = Block::open(disk(), read_only).expect("opening the fuzz disk");
    let Ok(mut guest) = Guest::new(&mut u, block.queue_max_sizes()) else {
        return;
    };
    drive(&mut u, &mut guest, true, |turn, u, guest| {
        match turn {
            Turn::Notify(q) => {
                block.process_queue(q, &mut guest.queues, &guest.memory);
            }
            Turn::Target => {
                // The guest writes a request header of a known
                // type, near the disk, into a buffer (past the type check).
                let at = guest.buffer(u, 0)?;
                let mut header = [0u8; 16];
                header[..4].copy_from_slice(&u.choose(&[0u32, 1, 4, 8, 2])?.to_le_bytes());
                let sector: u64 = if u.ratio(7, 8)? {
                    u.int_in_range(0..=(DISK_BYTES as u64 / 512) + 1)?
                } else {
                    u.arbitrary()?
                };
                header[8..].copy_from_slice(&sector.to_le_bytes());
                guest.write(at, &header);
            }
        }
        Ok(())
    });
    assert_eq!(
        std::fs::metadata(disk()).map(|m| m.len()).ok(),
        Some(DISK_BYTES as u64),
        "the disk keeps its size"
    );
});
