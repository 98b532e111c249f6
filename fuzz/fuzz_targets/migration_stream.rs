#![no_main]
//! The destination's side of a migration: the input as the stream a source
//! sends into a 64-page guest, either raw or cut into frames that carry a
//! valid checksum (kind, a 16-bit length, the payload), so that it gets past
//! the CRC to the frame decoders and the page bounds checks.

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::migration::receive::receive_memory;

const GUEST_BYTES: u64 = 64 * 4096;

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
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_BYTES as usize)]).expect("guest memory");
    let _ = receive_memory(&mut stream.as_slice(), &memory, GUEST_BYTES, &mut |_, _| {});
});
