#![no_main]
//! virtio-vsock under a hostile driver, with a host side: unix listeners on
//! guest-reachable ports 0 and 1024 (so guest connections get established),
//! host processes that connect in with `CONNECT <port>` lines, and writes,
//! reads and hang-ups on every host socket.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Unstructured;
use hull_fuzz::{drive, Guest, Turn};
use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::Vsock;
use vmm::devices::virtio::VirtioDevice;

const CID: u64 = 3;
const HOST_CID: u64 = 2;
const HDR: usize = 44;
const TX: usize = 1;

struct Host {
    uds: PathBuf,
    listeners: Vec<UnixListener>,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let uds = hull_fuzz::scratch_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        let listeners = [0, 1024]
            .iter()
            .map(|port| {
                let path = format!("{}_{port}", uds.display());
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).expect("binding a guest port");
                listener.set_nonblocking(true).expect("non-blocking");
                listener
            })
            .collect();
        Host { uds, listeners }
    })
}

/// Accepts what connected to the guest ports.
fn accept(into: &mut Vec<UnixStream>) {
    for listener in &host().listeners {
        while let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(true);
            into.push(stream);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let host = host();
    let mut dev = Vsock::new(CID, &host.uds).expect("vsock device");
    let mut streams: Vec<UnixStream> = Vec::new();
    let Ok(mut guest) = Guest::new(&mut u, dev.queue_max_sizes()) else {
        return;
    };
    drive(&mut u, &mut guest, true, |turn, u, guest| {
        match turn {
            Turn::Notify(q) => {
                dev.process_queue(q, &mut guest.queues, &guest.memory);
                // Keep the backlog short: a full one would block the VMM's connect.
                accept(&mut streams);
            }
            Turn::Target => match u.int_in_range(0..=5u8)? {
                0 => {
                    dev.poll(&mut guest.queues, &guest.memory);
                }
                1 => {
                    let Ok(mut stream) = UnixStream::connect(&host.uds) else {
                        return Ok(());
                    };
                    let line = if u.ratio(3, 4)? {
                        format!("CONNECT {}\n", u.int_in_range(0..=2048u32)?).into_bytes()
                    } else {
                        let len = u.int_in_range(0..=64)?;
                        u.bytes(len)?.to_vec()
                    };
                    let _ = stream.write_all(&line);
                    let _ = stream.set_nonblocking(true);
                    streams.push(stream);
                }
                2 if !streams.is_empty() => {
                    let i = u.choose_index(streams.len())?;
                    let len = u.int_in_range(0..=4096)?;
                    let _ = streams[i].write(u.bytes(len)?);
                }
                3 if !streams.is_empty() => {
                    let i = u.choose_index(streams.len())?;
                    let mut buf = [0u8; 4096];
                    while matches!(streams[i].read(&mut buf), Ok(n) if n > 0) {}
                }
                4 if !streams.is_empty() => {
                    let i = u.choose_index(streams.len())?;
                    streams.swap_remove(i);
                }
                5 => {
                    // The guest puts a packet whose addresses are right (the
                    // rest is the input's) in a TX buffer: past the address
                    // checks, to the connection state machine.
                    let at = guest.buffer(u, TX)?;
                    let mut packet = Vec::with_capacity(HDR);
                    packet.extend_from_slice(&CID.to_le_bytes());
                    packet.extend_from_slice(&HOST_CID.to_le_bytes());
                    packet.extend_from_slice(&u.arbitrary::<u32>()?.to_le_bytes()); // src_port
                    let port: u32 = if u.ratio(3, 4)? {
                        *u.choose(&[0, 1024])?
                    } else {
                        u.arbitrary()?
                    };
                    packet.extend_from_slice(&port.to_le_bytes());
                    let len: u32 = if u.ratio(3, 4)? {
                        u.int_in_range(0..=64)?
                    } else {
                        u.arbitrary()?
                    };
                    packet.extend_from_slice(&len.to_le_bytes());
                    packet.extend_from_slice(&1u16.to_le_bytes()); // stream
                    packet.extend_from_slice(&u.int_in_range(0..=8u16)?.to_le_bytes()); // op
                    packet.extend_from_slice(u.bytes(12)?); // flags, buf_alloc, fwd_cnt
                    let payload = u.int_in_range(0..=64)?;
                    packet.extend_from_slice(u.bytes(payload)?);
                    guest.write(at, &packet);
                }
                _ => {}
            },
        }
        Ok(())
    });
    drop(dev);
    streams.clear();
    accept(&mut streams);
});
