//! virtio-net over a host tap device: frames the guest sends go to the tap,
//! frames from the tap fill the guest's receive buffers.
//!
//! Offloads as Firecracker and QEMU offer them: the tap is opened with
//! `IFF_VNET_HDR`, so every packet crosses with its 12-byte
//! `virtio_net_hdr` (the VIRTIO_F_VERSION_1 layout) untouched, and the
//! guest sends and takes TCP segments of up to 64 KiB with their checksums
//! left to the host (CSUM, HOST_TSO4/6, GUEST_CSUM, GUEST_TSO4/6): one
//! copy per 64 KiB instead of one per 1.5 KiB frame. Without MRG_RXBUF the
//! guest posts receive buffers big enough for any of them.
//!
//! The tap sits in an epoll set armed one-shot: when the guest has no
//! receive buffers left, the tap is not watched (the packets wait in its
//! queue) until the guest adds some, so nothing spins.
//!
//! A NIC may be plugged into nothing (a template's slots, a container not
//! on that many networks) and plugged into a tap, or unplugged, while the
//! guest runs (`docker network connect` and `disconnect`): the guest keeps
//! its device and only the frames stop or start flowing.
//!
//! The guest's MAC is the one its frames come from (a clone's agent sets
//! the container's own; the device's config still has the template's).
//! After a migration the NIC announces it on its new tap with RARP frames,
//! as QEMU does, so bridges and switches (a VXLAN's far end too) learn the
//! new port before the guest says anything.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1};

const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// The header before every packet (num_buffers included, VERSION_1); the
/// tap reads and writes the same one (`TUNSETVNETHDRSZ`).
const HEADER: usize = 12;
/// The largest packet either way, header aside: a 64 KiB segment with its
/// Ethernet and VLAN headers.
const MAX_PACKET: usize = 65_535 + 18;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// What the tap may hand us: partial checksums and TCP segments (the guest
/// takes them: GUEST_CSUM, GUEST_TSO4/6).
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

pub struct Net {
    mac: [u8; 6],
    /// `None`: plugged into nothing.
    tap: Option<File>,
    epoll: Epoll,
    /// One packet read from the tap, header first (kept across calls: no
    /// allocation per packet).
    rx_buffer: Vec<u8>,
    /// The length of a packet in `rx_buffer` that no receive buffer took yet.
    pending: Option<usize>,
    /// One packet from the guest, gathered from its descriptors.
    tx_buffer: Vec<u8>,
    /// The tap is in the epoll set, waiting to be readable.
    armed: bool,
    /// The source address of the guest's first frame since the NIC was
    /// plugged (the container's MAC: its agent sets it before the link is
    /// up; later frames may come from a bridge inside the guest).
    guest_mac: Option<[u8; 6]>,
}

/// Whether `mac` can be a NIC's own address (not a group address).
pub fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0
}

/// How many RARP frames announce a moved NIC (QEMU sends five, spaced out;
/// these go back to back).
const ANNOUNCEMENTS: usize = 3;

/// A RARP "reverse request" for `mac`, from `mac`, to everyone (60 bytes,
/// Ethernet's shortest), after a zero `virtio_net_hdr`: what QEMU sends
/// after a migration (`qemu_announce_self`).
fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut packet = vec![0u8; HEADER];
    packet.extend_from_slice(&[0xff; 6]);
    packet.extend_from_slice(&mac);
    packet.extend_from_slice(&[0x80, 0x35]); // ETH_P_RARP
    packet.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet, IPv4, reverse request
    packet.extend_from_slice(&mac);
    packet.extend_from_slice(&[0; 4]);
    packet.extend_from_slice(&mac);
    packet.extend_from_slice(&[0; 4]);
    packet.resize(HEADER + 60, 0);
    packet
}

/// Opens (creating if needed) the tap interface `name`, non-blocking.
pub fn open_tap(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a tap name has 1 to {} bytes", libc::IFNAMSIZ - 1),
        ));
    }
    let tun = File::options().read(true).write(true).open("/dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `request` lays out, on an open tun fd.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let header_size = HEADER as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int; TUNSETOFFLOAD takes its flags by value.
    let configured = unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ, &header_size) == 0
            && libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) == 0
    };
    if !configured {
        return Err(std::io::Error::last_os_error());
    }
    set_nonblocking(&tun)?;
    Ok(tun)
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Net {
    /// A NIC with address `mac` on `tap` (any non-blocking frame device:
    /// a tap, or a socket in tests).
    pub fn new(mac: [u8; 6], tap: File) -> std::io::Result<Net> {
        let mut net = Net::detached(mac)?;
        net.plug(Some(tap))?;
        Ok(net)
    }

    /// A NIC plugged into nothing: what the guest sends is dropped and
    /// nothing arrives. Templates and `--network none` clones have them, so
    /// every VM keeps the same device slots.
    pub fn detached(mac: [u8; 6]) -> std::io::Result<Net> {
        Ok(Net {
            mac,
            tap: None,
            epoll: Epoll::new()?,
            rx_buffer: Vec::new(),
            pending: None,
            tx_buffer: Vec::new(),
            armed: false,
            guest_mac: None,
        })
    }

    /// Plugs the NIC into `tap` (already non-blocking), or into nothing,
    /// in place of what it was on. A frame that waited for a receive buffer
    /// belonged to the old network and is dropped.
    pub fn plug(&mut self, tap: Option<File>) -> std::io::Result<()> {
        if let Some(old) = self.tap.take() {
            // Closing it would drop it from the set too; a failure changes nothing.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, old.as_raw_fd(), EpollEvent::default());
        }
        self.pending = None;
        self.armed = false;
        // Another network: the guest gives this NIC another MAC.
        self.guest_mac = None;
        if let Some(tap) = tap {
            self.epoll.ctl(
                ControlOperation::Add,
                tap.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, 0),
            )?;
            self.armed = true;
            self.tap = Some(tap);
        }
        Ok(())
    }

    /// A NIC on a tap that the caller opened and passed down as `fd` (the
    /// runtime makes the tap and attaches it to its bridge; when this
    /// process ends the tap goes with it).
    pub fn on_inherited_tap(mac: [u8; 6], fd: RawFd) -> std::io::Result<Net> {
        use std::os::unix::io::FromRawFd;
        // SAFETY: fstat on an fd number; a closed one is an error, not UB.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if fd < 0 || unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(std::io::Error::other(format!("fd {fd} is not open")));
        }
        // SAFETY: the fd is open and was handed to this process to own.
        let tap = unsafe { File::from_raw_fd(fd) };
        set_nonblocking(&tap)?;
        Net::new(mac, tap)
    }

    /// A duplicate of a socket or other fd, for tests.
    #[cfg(test)]
    fn from_fd(mac: [u8; 6], fd: RawFd) -> std::io::Result<Net> {
        use std::os::unix::io::FromRawFd;
        // SAFETY: the caller hands over ownership of an open fd.
        Net::new(mac, unsafe { File::from_raw_fd(fd) })
    }

    fn rearm(&mut self) {
        let Some(tap) = &self.tap else { return };
        let rearmed = self.epoll.ctl(
            ControlOperation::Modify,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, 0),
        );
        self.armed = rearmed.is_ok();
    }

    /// Moves packets from the tap into receive buffers until either runs
    /// out; watches the tap again only once it is drained.
    fn receive(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(RX) else { return false };
        if self.rx_buffer.len() < HEADER + MAX_PACKET {
            self.rx_buffer.resize(HEADER + MAX_PACKET, 0);
        }
        let mut used = false;
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.tap.as_mut().map(|tap| tap.read(&mut self.rx_buffer)) {
                    // Plugged into nothing: nothing arrives.
                    None | Some(Ok(0)) => break,
                    Some(Ok(n)) => n,
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // Drained (or the tap failed): wait for the next packet.
                    Some(Err(_)) => {
                        self.rearm();
                        break;
                    }
                },
            };
            if len <= HEADER {
                continue; // no frame behind the header: nothing to deliver
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                // No buffers: keep the packet; the guest's next notify resumes.
                self.pending = Some(len);
                break;
            };
            let head = chain.head_index();
            let packet = &mut self.rx_buffer[..len];
            packet[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers: this one
            let mut written = 0usize;
            for desc in chain {
                if !desc.is_write_only() || written == packet.len() {
                    break;
                }
                let n = (desc.len() as usize).min(packet.len() - written);
                if memory.write_slice(&packet[written..written + n], desc.addr()).is_err() {
                    break;
                }
                written += n;
            }
            // A chain too small for the packet gets nothing: the packet is lost.
            let len = if written == packet.len() { written as u32 } else { 0 };
            if queue.add_used(memory, head, len).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Sends every packet the guest queued, header and all (the tap does
    /// the checksums and segmentation it asks for); a packet that breaks
    /// the rules or that the tap refuses is dropped, as a NIC drops it.
    fn transmit(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(TX) else { return false };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let packet = &mut self.tx_buffer;
            packet.clear();
            let mut valid = true;
            for desc in chain {
                let len = desc.len() as usize;
                if desc.is_write_only() || packet.len() + len > HEADER + MAX_PACKET {
                    valid = false;
                    break;
                }
                let start = packet.len();
                packet.resize(start + len, 0);
                if memory.read_slice(&mut packet[start..], desc.addr()).is_err() {
                    valid = false;
                    break;
                }
            }
            if let (true, true, Some(tap)) = (valid, packet.len() > HEADER, self.tap.as_mut()) {
                if self.guest_mac.is_none() {
                    self.guest_mac = packet
                        .get(HEADER + 6..HEADER + 12)
                        .and_then(|source| <[u8; 6]>::try_from(source).ok())
                        .filter(is_unicast);
                }
                let _ = tap.write(packet);
            }
            if queue.add_used(memory, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
    }

    fn config(&self) -> Vec<u8> {
        self.mac.to_vec()
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        match index {
            // New receive buffers: deliver what waited for them.
            RX if !self.armed => self.receive(queues, memory),
            TX => self.transmit(queues, memory),
            _ => false,
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn plug(&mut self, backend: Option<File>) -> std::io::Result<()> {
        Net::plug(self, backend)
    }

    fn guest_mac(&self) -> Option<[u8; 6]> {
        self.guest_mac
    }

    fn announce(&mut self, mac: [u8; 6]) {
        if let Some(tap) = self.tap.as_mut() {
            self.guest_mac = Some(mac);
            let frame = rarp_announcement(mac);
            for _ in 0..ANNOUNCEMENTS {
                let _ = tap.write(&frame);
            }
        }
    }

    fn plugged(&self) -> bool {
        self.tap.is_some()
    }

    fn lend_backend(&self) -> std::io::Result<Option<File>> {
        self.tap.as_ref().map(File::try_clone).transpose()
    }

    fn poll(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let mut events = [EpollEvent::default(); 1];
        if self.epoll.wait(0, &mut events).unwrap_or(0) == 0 {
            return false;
        }
        self.armed = false; // one-shot: it fired
        self.receive(queues, memory)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestAddress;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    /// A NIC whose "tap" is one end of a datagram socket pair (frame
    /// boundaries kept, like a tap's); the other end is returned.
    fn nic() -> (Net, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let fd = std::os::unix::io::IntoRawFd::into_raw_fd(ours);
        (Net::from_fd(MAC, fd).unwrap(), theirs)
    }

    /// Both queues, the one at `index` holding `descs` (the mock places
    /// every queue at one address: the empty one is made first).
    fn queues_at(memory: &GuestMemoryMmap, index: usize, descs: &[RawDescriptor]) -> Vec<Queue> {
        let idle = queue_with(memory, &[]);
        let busy = queue_with(memory, descs);
        match index {
            RX => vec![busy, idle],
            _ => vec![idle, busy],
        }
    }

    /// A packet as the tap hands it over: a header (asking for a checksum
    /// and segmentation, as the host may), then the frame.
    fn with_header(frame: &[u8]) -> Vec<u8> {
        let mut packet = vec![1, 1, 0, 54, 0xb4, 5, 34, 0, 16, 0, 0, 0];
        packet.extend_from_slice(frame);
        packet
    }

    #[test]
    fn offers_a_mac_two_queues_and_the_offloads() {
        let (net, _) = nic();
        assert_eq!(net.config(), MAC.to_vec());
        assert_eq!(net.queue_max_sizes().len(), 2);
        for feature in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_GUEST_TSO4,
        ] {
            assert_ne!(net.features() & feature, 0, "{feature:#x}");
        }
    }

    #[test]
    fn transmitted_packets_reach_the_tap_with_their_header() {
        let (mut net, host) = nic();
        let memory = memory();
        let packet = with_header(&[0x5a; 60_000]);
        // Header and frame in two descriptors, as the guest's driver lays them out.
        memory.write_slice(&packet, GuestAddress(0x8000)).unwrap();
        let descs = [
            desc(0x8000, HEADER as u32, NEXT, 1),
            desc(0x8000 + HEADER as u64, 60_000, 0, 0),
        ];
        let mut queues = queues_at(&memory, TX, &descs);
        assert!(net.process_queue(TX, &mut queues, &memory));
        let mut got = vec![0u8; 70_000];
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &packet[..], "a 60 KB segment, header untouched");
    }

    #[test]
    fn a_moved_nic_announces_the_mac_its_guest_sends_from() {
        let (mut net, host) = nic();
        let memory = memory();
        let guest = [0x02, 0x42, 0xac, 0x11, 0, 7];
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&guest);
        frame.extend_from_slice(&[0x08, 0x06]);
        frame.resize(60, 0);
        let packet = with_header(&frame);
        memory.write_slice(&packet, GuestAddress(0x8000)).unwrap();
        let mut queues = queues_at(&memory, TX, &[desc(0x8000, packet.len() as u32, 0, 0)]);
        assert!(net.process_queue(TX, &mut queues, &memory));
        assert_eq!(net.guest_mac(), Some(guest), "not the device's {MAC:?}");
        let mut got = vec![0u8; 100];
        host.recv(&mut got).unwrap();
        // On the new host, with the MAC the old one learnt:
        let (mut moved, host) = nic();
        moved.announce(guest);
        for _ in 0..ANNOUNCEMENTS {
            let n = host.recv(&mut got).unwrap();
            assert_eq!(n, HEADER + 60);
            let frame = &got[HEADER..n];
            assert_eq!(&frame[..6], &[0xff; 6]);
            assert_eq!(&frame[6..12], &guest);
            assert_eq!(&frame[12..14], &[0x80, 0x35]);
            assert_eq!(&frame[22..28], &guest, "sender");
            assert_eq!(&frame[32..38], &guest, "target");
        }
        // A NIC on nothing announces nothing (and does not fail).
        Net::detached(MAC).unwrap().announce(guest);
    }

    #[test]
    fn oversized_or_device_writable_tx_chains_are_dropped() {
        let (mut net, host) = nic();
        host.set_nonblocking(true).unwrap();
        let memory = memory();
        let too_long = (HEADER + MAX_PACKET + 1) as u32;
        let mut queues = queues_at(&memory, TX, &[desc(0x8000, too_long, 0, 0)]);
        assert!(
            net.process_queue(TX, &mut queues, &memory),
            "the chain is still returned"
        );
        assert!(host.recv(&mut [0u8; 64]).is_err(), "nothing was sent");
        let mut queues = queues_at(&memory, TX, &[desc(0x8000, 64, WRITE, 0)]);
        assert!(net.process_queue(TX, &mut queues, &memory));
        assert!(host.recv(&mut [0u8; 64]).is_err());
    }

    #[test]
    fn received_frames_wait_for_buffers_then_arrive_with_a_header() {
        let (mut net, host) = nic();
        let memory = memory();
        host.send(&with_header(b"frame one")).unwrap();
        // No receive buffers yet: the frame waits, the tap is not watched.
        let mut queues = queues_at(&memory, TX, &[]);
        assert!(!net.poll(&mut queues, &memory));
        assert!(net.pending.is_some() && !net.armed);
        // The guest adds a buffer and notifies: the frame lands in it.
        let mut queues = queues_at(&memory, RX, &[desc(0x9000, 2048, WRITE, 0)]);
        assert!(net.process_queue(RX, &mut queues, &memory));
        let mut got = vec![0u8; HEADER + 9];
        memory.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(&got[..10], &with_header(b"")[..10], "the tap's header, as it came");
        assert_eq!(got[10..12], [1, 0], "num_buffers");
        assert_eq!(&got[HEADER..], b"frame one");
        assert_eq!(used_len(&memory, &queues[RX], 0), (HEADER + 9) as u32);
        assert!(net.armed, "drained: the tap is watched again");
    }

    #[test]
    fn a_nic_is_plugged_into_another_tap_and_unplugged_while_running() {
        let (mut net, old) = nic();
        old.set_nonblocking(true).unwrap();
        let memory = memory();
        let (new, host) = UnixDatagram::pair().unwrap();
        new.set_nonblocking(true).unwrap();
        net.plug(Some(File::from(std::os::fd::OwnedFd::from(new)))).unwrap();
        // Frames the guest sends go to the new tap only.
        let mut packet = vec![0u8; HEADER];
        packet.extend_from_slice(b"to the new network");
        memory.write_slice(&packet, GuestAddress(0x8000)).unwrap();
        let mut queues = queues_at(&memory, TX, &[desc(0x8000, packet.len() as u32, 0, 0)]);
        assert!(net.process_queue(TX, &mut queues, &memory));
        let mut got = [0u8; 64];
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &packet[..]);
        assert!(old.recv(&mut got).is_err(), "the old tap got nothing");
        // And frames from the new tap reach the guest.
        host.send(&with_header(b"from the new network")).unwrap();
        let mut queues = queues_at(&memory, RX, &[desc(0x9000, 2048, WRITE, 0)]);
        assert!(net.poll(&mut queues, &memory));
        assert_eq!(used_len(&memory, &queues[RX], 0), (HEADER + 20) as u32);
        // Unplugged: what the guest sends is dropped, nothing arrives.
        net.plug(None).unwrap();
        assert!(host.send(b"too late").is_err(), "the VMM let go of the tap");
        let mut queues = queues_at(&memory, RX, &[desc(0x9000, 2048, WRITE, 0)]);
        assert!(!net.poll(&mut queues, &memory));
        assert!(!net.process_queue(RX, &mut queues, &memory));
        let mut queues = queues_at(&memory, TX, &[desc(0x8000, packet.len() as u32, 0, 0)]);
        assert!(net.process_queue(TX, &mut queues, &memory), "the chain is returned");
    }

    #[test]
    fn a_header_without_a_frame_is_dropped() {
        let (mut net, host) = nic();
        let memory = memory();
        host.send(&with_header(b"")).unwrap();
        host.send(&with_header(b"after it")).unwrap();
        let mut queues = queues_at(&memory, RX, &[desc(0x9000, 2048, WRITE, 0)]);
        assert!(net.poll(&mut queues, &memory));
        assert_eq!(
            used_len(&memory, &queues[RX], 0),
            (HEADER + 8) as u32,
            "the next packet took the buffer"
        );
    }

    #[test]
    fn a_receive_buffer_too_small_gets_nothing() {
        let (mut net, host) = nic();
        let memory = memory();
        host.send(&[7u8; 100]).unwrap();
        let mut queues = queues_at(&memory, RX, &[desc(0x9000, 50, WRITE, 0)]);
        net.armed = false;
        assert!(net.process_queue(RX, &mut queues, &memory));
        assert_eq!(used_len(&memory, &queues[RX], 0), 0);
    }
}
