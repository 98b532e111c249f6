#![no_main]
//! virtio-rng under a hostile driver: any descriptors, any rings, any buffers.

use arbitrary::Unstructured;
use hull_fuzz::{drive, Guest, Turn};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::rng::Rng;
use vmm::devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut rng = Rng;
    let Ok(mut guest) = Guest::new(&mut u, rng.queue_max_sizes()) else {
        return;
    };
    drive(&mut u, &mut guest, false, |turn, _, guest| {
        if let Turn::Notify(q) = turn {
            rng.process_queue(q, &mut guest.queues, &guest.memory);
        }
        Ok(())
    });
});
