//! virtio-rng: entropy from the host's getrandom(2).

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::{VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};

/// At most this much entropy per request; guests ask for small amounts.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn process_queue(&mut self, _index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.first_mut() else { return false };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain {
                // Only device-writable buffers can receive entropy; anything
                // else ends the request with what was written so far.
                if !desc.is_write_only() || written >= MAX_BYTES_PER_REQUEST {
                    break;
                }
                let len = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
                let mut buf = vec![0u8; len];
                if getrandom(&mut buf).is_err() || memory.write_slice(&buf, desc.addr()).is_err() {
                    break;
                }
                written += len;
            }
            if queue.add_used(memory, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn fills_writable_buffers_with_entropy() {
        let memory = memory();
        let mut queue = queue_with(
            &memory,
            &[desc(0x8000, 32, NEXT | WRITE, 1), desc(0x9000, 32, WRITE, 0)],
        );
        assert!(Rng.process_queue(0, std::slice::from_mut(&mut queue), &memory));
        assert_eq!(used_len(&memory, &queue, 0), 64);
        let mut bytes = [0u8; 32];
        memory.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        assert_ne!(bytes, [0u8; 32]);
    }

    #[test]
    fn hostile_chains_are_answered_without_panicking() {
        let memory = memory();
        let cases = [
            // out of guest memory
            vec![desc(MEM_SIZE as u64 - 8, 4096, WRITE, 0)],
            // a device-readable buffer
            vec![desc(0x8000, 16, 0, 0)],
            // zero length
            vec![desc(0x8000, 0, WRITE, 0)],
            // a loop: 0 -> 1 -> 0
            vec![desc(0x8000, 8, NEXT | WRITE, 1), desc(0x9000, 8, NEXT | WRITE, 0)],
            // a huge length
            vec![desc(0x8000, u32::MAX, WRITE, 0)],
        ];
        for descs in cases {
            let mut queue = queue_with(&memory, &descs);
            Rng.process_queue(0, std::slice::from_mut(&mut queue), &memory);
            assert!(used_len(&memory, &queue, 0) <= MAX_BYTES_PER_REQUEST as u32);
        }
    }
}
