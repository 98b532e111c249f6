#![no_main]
//! virtio-net under a hostile driver. Its "tap" is one end of a datagram
//! socket pair (what `Net::detached` uses, and the unit tests): the harness
//! holds the other end, so host frames of any size reach the receive path.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use arbitrary::Unstructured;
use hull_fuzz::{drive, Guest, Turn};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::Net;
use vmm::devices::virtio::VirtioDevice;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (near, host) = UnixDatagram::pair().expect("socket pair");
    near.set_nonblocking(true).expect("non-blocking");
    host.set_nonblocking(true).expect("non-blocking");
    let mut net = Net::new(MAC, File::from(OwnedFd::from(near))).expect("a NIC on a socket");
    let Ok(mut guest) = Guest::new(&mut u, net.queue_max_sizes()) else {
        return;
    };
    drive(&mut u, &mut guest, true, |turn, u, guest| {
        match turn {
            Turn::Notify(q) => {
                net.process_queue(q, &mut guest.queues, &guest.memory);
            }
            Turn::Target => match u.int_in_range(0..=2u8)? {
                0 => {
                    // A packet (header and frame) from the host side, up to
                    // past the largest segment; the socket drops what does not fit.
                    let len = u.int_in_range(0..=70_000)?;
                    let _ = host.send(u.bytes(len)?);
                }
                1 => {
                    net.poll(&mut guest.queues, &guest.memory);
                }
                _ => {
                    // Take what the guest sent, so the socket does not fill up.
                    let mut frame = vec![0u8; 70_000];
                    while host.recv(&mut frame).is_ok() {}
                }
            },
        }
        Ok(())
    });
});
