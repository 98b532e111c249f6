//! virtio-vsock whose host side is a unix socket per VM (the model
//! Firecracker uses, so tools that speak it work unchanged):
//!
//! - the guest connects to host port P (CID 2): the VMM connects to the unix
//!   socket `{uds}_{P}`;
//! - a host process connects to `{uds}` and writes `CONNECT P\n`: the VMM
//!   connects it to guest port P and answers `OK <host port>\n`.
//!
//! Packets come from the guest and are checked (addresses, ports, lengths,
//! credit); a broken connection is reset, the device carries on.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::guest_memory::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1};

pub const HOST_CID: u64 = 2;
const HDR: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// virtio-vsock's one event: every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// What we let the guest have in flight towards one host socket.
const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we accept in one packet from the guest.
const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Host ports we hand out to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
const MAX_CONNECTIONS: usize = 1024;
/// Replies (resets, responses, credit updates) waiting for the guest's RX
/// buffers. At this many the device stops taking the guest's packets until
/// the guest makes room: a guest that sends without receiving cannot grow
/// the queue.
const MAX_PENDING_CONTROL: usize = 256;
const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Header> {
        let u64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let u32_at = |o: usize| b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        let u16_at = |o: usize| b.get(o..o + 2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes);
        Some(Header {
            src_cid: u64_at(0)?,
            dst_cid: u64_at(8)?,
            src_port: u32_at(16)?,
            dst_port: u32_at(20)?,
            len: u32_at(24)?,
            kind: u16_at(28)?,
            op: u16_at(30)?,
            flags: u32_at(32)?,
            buf_alloc: u32_at(36)?,
            fwd_cnt: u32_at(40)?,
        })
    }

    fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A host process asked for a guest port; waiting for the guest's answer.
    Connecting,
    Established,
}

struct Connection {
    stream: UnixStream,
    state: State,
    host_port: u32,
    guest_port: u32,
    /// Bytes from the guest not yet taken by the host socket.
    to_host: VecDeque<u8>,
    /// Bytes forwarded to the host socket so far (our credit counter).
    fwd_cnt: u32,
    fwd_cnt_reported: u32,
    /// The guest's receive buffer and how much of it it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest so far.
    rx_cnt: u32,
    host_readable: bool,
    host_eof: bool,
    guest_done_sending: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: State, host_port: u32, guest_port: u32) -> Self {
        Connection {
            stream,
            state,
            host_port,
            guest_port,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_reported: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            host_readable: true,
            host_eof: false,
            guest_done_sending: false,
        }
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes what the guest sent to the host socket, as far as it takes it.
    fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host connection that has not yet said which guest port it wants.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    connections: HashMap<u64, Connection>,
    by_ports: HashMap<(u32, u32), u64>,
    handshakes: HashMap<u64, Handshake>,
    /// Header-only packets waiting for a guest RX buffer.
    control: VecDeque<Header>,
    next_token: u64,
    next_host_port: u32,
}

impl Vsock {
    /// Listens on `uds_path` for host-initiated connections.
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::io::Result<Vsock> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("invalid guest CID {guest_cid}"),
            ));
        }
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, LISTENER_TOKEN),
        )?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            connections: HashMap::new(),
            by_ports: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_token: 0,
            next_host_port: FIRST_HOST_PORT,
        })
    }

    fn reply(&self, to: &Header, op: u16, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            ..Default::default()
        }
    }

    fn header_for(&self, conn: &Connection, op: u16) -> Header {
        header_for(self.guest_cid, conn, op)
    }

    fn watch(&mut self, stream: &UnixStream) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let events = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .ok()?;
        Some(token)
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.connections.remove(&token) {
            self.by_ports.remove(&(conn.host_port, conn.guest_port));
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, conn.stream.as_raw_fd(), EpollEvent::default());
        }
    }

    fn reset(&mut self, token: u64) {
        if let Some(conn) = self.connections.get(&token) {
            let rst = self.header_for(conn, OP_RST);
            self.control.push_back(rst);
        }
        self.close(token);
    }

    /// One packet from the guest.
    fn handle_tx(&mut self, hdr: Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.kind != TYPE_STREAM {
            if hdr.op != OP_RST {
                let rst = self.reply(&hdr, OP_RST, 0);
                self.control.push_back(rst);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let token = self.by_ports.get(&key).copied();
        match (hdr.op, token) {
            (OP_REQUEST, None) => self.guest_connects(hdr),
            (OP_RST, Some(token)) => self.close(token),
            (OP_RST, None) => {}
            (_, None) => {
                let rst = self.reply(&hdr, OP_RST, 0);
                self.control.push_back(rst);
            }
            (op, Some(token)) => {
                let Some(conn) = self.connections.get_mut(&token) else {
                    return;
                };
                conn.peer_buf_alloc = hdr.buf_alloc;
                conn.peer_fwd_cnt = hdr.fwd_cnt;
                match op {
                    OP_RESPONSE if conn.state == State::Connecting => {
                        conn.state = State::Established;
                        let ok = format!("OK {}\n", conn.host_port);
                        if conn.stream.write_all(ok.as_bytes()).is_err() {
                            self.reset(token);
                        }
                    }
                    OP_RW if conn.state == State::Established => {
                        // The guest may not exceed the credit we gave it.
                        if conn.to_host.len() + payload.len() > BUF_ALLOC as usize {
                            self.reset(token);
                            return;
                        }
                        conn.to_host.extend(payload);
                        if conn.flush_to_host().is_err() {
                            self.reset(token);
                        }
                    }
                    OP_SHUTDOWN => {
                        if hdr.flags & SHUTDOWN_SEND != 0 {
                            conn.guest_done_sending = true;
                            let _ = conn.flush_to_host();
                        }
                        if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == (SHUTDOWN_SEND | SHUTDOWN_RCV)
                            && conn.to_host.is_empty()
                        {
                            self.reset(token);
                        }
                    }
                    OP_CREDIT_REQUEST => {
                        conn.fwd_cnt_reported = conn.fwd_cnt;
                        let update = header_for(self.guest_cid, conn, OP_CREDIT_UPDATE);
                        self.control.push_back(update);
                    }
                    OP_CREDIT_UPDATE => {}
                    _ => self.reset(token),
                }
            }
        }
    }

    fn guest_connects(&mut self, hdr: Header) {
        crate::trace::mark("the guest connects over vsock");
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), hdr.dst_port));
        let stream = (self.connections.len() < MAX_CONNECTIONS)
            .then(|| UnixStream::connect(&path).ok())
            .flatten()
            .filter(|s| s.set_nonblocking(true).is_ok());
        let Some(stream) = stream else {
            let rst = self.reply(&hdr, OP_RST, 0);
            self.control.push_back(rst);
            return;
        };
        let Some(token) = self.watch(&stream) else { return };
        let mut conn = Connection::new(stream, State::Established, hdr.dst_port, hdr.src_port);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        self.control.push_back(self.header_for(&conn, OP_RESPONSE));
        self.by_ports.insert((hdr.dst_port, hdr.src_port), token);
        self.connections.insert(token, conn);
    }

    /// Host processes connecting to the unix socket; their `CONNECT P` lines.
    fn accept_host_connections(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() || self.handshakes.len() >= MAX_CONNECTIONS {
                continue;
            }
            if let Some(token) = self.watch(&stream) {
                self.handshakes.insert(
                    token,
                    Handshake {
                        stream,
                        line: Vec::new(),
                    },
                );
            }
        }
        let tokens: Vec<u64> = self.handshakes.keys().copied().collect();
        for token in tokens {
            let Some(hs) = self.handshakes.get_mut(&token) else {
                continue;
            };
            let mut byte = [0u8; 1];
            let mut done = None;
            loop {
                match hs.stream.read(&mut byte) {
                    Ok(0) => break done = Some(None),
                    Ok(_) if byte[0] == b'\n' => break done = Some(Some(std::mem::take(&mut hs.line))),
                    Ok(_) if hs.line.len() >= 32 => break done = Some(None),
                    Ok(_) => hs.line.push(byte[0]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break done = Some(None),
                }
            }
            let Some(line) = done else { continue };
            let Some(hs) = self.handshakes.remove(&token) else {
                continue;
            };
            let port = line.and_then(|l| String::from_utf8(l).ok()).and_then(|l| {
                l.trim()
                    .strip_prefix("CONNECT ")
                    .and_then(|p| p.trim().parse::<u32>().ok())
            });
            match port {
                Some(port) if self.connections.len() < MAX_CONNECTIONS => {
                    let host_port = self.next_host_port;
                    self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
                    let conn = Connection::new(hs.stream, State::Connecting, host_port, port);
                    self.control.push_back(self.header_for(&conn, OP_REQUEST));
                    self.by_ports.insert((host_port, port), token);
                    self.connections.insert(token, conn);
                }
                _ => {
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, hs.stream.as_raw_fd(), EpollEvent::default());
                }
            }
        }
    }

    /// Takes the guest's packets from the TX queue while replies have room;
    /// returns whether any was used and whether the replies ran out of room.
    fn drain_tx(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> (bool, bool) {
        let mut used = false;
        loop {
            if self.control.len() >= MAX_PENDING_CONTROL {
                return (used, true);
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let mut packet = Vec::new();
            for desc in chain {
                if desc.is_write_only() {
                    break;
                }
                let room = HDR + MAX_PKT_PAYLOAD - packet.len();
                let len = (desc.len() as usize).min(room);
                let start = packet.len();
                packet.resize(start + len, 0);
                if memory.read_slice(&mut packet[start..], desc.addr()).is_err() {
                    packet.truncate(start);
                    break;
                }
                if packet.len() >= HDR + MAX_PKT_PAYLOAD {
                    break;
                }
            }
            if let Some(hdr) = Header::parse(&packet) {
                let payload_len = (hdr.len as usize).min(packet.len() - HDR);
                self.handle_tx(hdr, &packet[HDR..HDR + payload_len]);
            }
            if queue.add_used(memory, head, 0).is_err() {
                break;
            }
            used = true;
        }
        (used, false)
    }

    /// Fills the guest's RX buffers: control packets first, then data the
    /// host sockets have for the guest, as far as its credit allows.
    fn fill_rx(&mut self, queue: &mut Queue, memory: &GuestMemoryMmap) -> bool {
        let mut used = false;
        // Tell the guest about freed space it has not heard of.
        let guest_cid = self.guest_cid;
        for conn in self.connections.values_mut() {
            if conn.state == State::Established && conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_reported) >= BUF_ALLOC / 4 {
                conn.fwd_cnt_reported = conn.fwd_cnt;
                self.control.push_back(header_for(guest_cid, conn, OP_CREDIT_UPDATE));
            }
        }
        while let Some(hdr) = self.control.front().copied() {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                return used;
            };
            self.control.pop_front();
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let len = write_packet(memory, &descs, &hdr, &[]);
            if queue.add_used(memory, head, len).is_err() {
                return used;
            }
            used = true;
        }
        let tokens: Vec<u64> = self.connections.keys().copied().collect();
        for token in tokens {
            while let Some(conn) = self.connections.get_mut(&token) {
                if conn.state != State::Established || !conn.host_readable || conn.host_eof {
                    break;
                }
                let credit = conn.peer_credit() as usize;
                if credit == 0 {
                    break;
                }
                let Some(chain) = queue.pop_descriptor_chain(memory) else {
                    return used;
                };
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let room: usize = descs
                    .iter()
                    .filter(|d| d.is_write_only())
                    .map(|d| d.len() as usize)
                    .sum();
                let mut buf = vec![0u8; room.saturating_sub(HDR).min(credit).min(MAX_PKT_PAYLOAD)];
                let (hdr, payload_len) = match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        conn.host_eof = true;
                        let hdr = header_for(guest_cid, conn, OP_SHUTDOWN);
                        (
                            Header {
                                flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                                ..hdr
                            },
                            0,
                        )
                    }
                    Ok(n) => {
                        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                        (
                            Header {
                                len: n as u32,
                                ..header_for(guest_cid, conn, OP_RW)
                            },
                            n,
                        )
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                        conn.host_readable = false;
                        queue.go_to_previous_position();
                        break;
                    }
                    Err(_) => {
                        conn.host_eof = true;
                        (header_for(guest_cid, conn, OP_RST), 0)
                    }
                };
                let len = write_packet(memory, &descs, &hdr, &buf[..payload_len]);
                if queue.add_used(memory, head, len).is_err() {
                    return used;
                }
                used = true;
                if hdr.op == OP_RST {
                    self.close(token);
                }
            }
        }
        used
    }

    fn pump(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let [rx, tx, ..] = queues else { return false };
        let mut used = false;
        loop {
            let (drained, throttled) = self.drain_tx(tx, memory);
            used |= drained;
            for conn in self.connections.values_mut() {
                if !conn.to_host.is_empty() {
                    let _ = conn.flush_to_host();
                }
            }
            used |= self.fill_rx(rx, memory);
            // Throttled packets go on once their replies found RX buffers;
            // otherwise the guest's next RX buffers bring us back.
            if !throttled || self.control.len() >= MAX_PENDING_CONTROL {
                return used;
            }
        }
    }
}

/// A packet from the host end of `conn` to the guest, carrying our credit.
fn header_for(guest_cid: u64, conn: &Connection, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: conn.host_port,
        dst_port: conn.guest_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: conn.fwd_cnt,
        ..Default::default()
    }
}

/// Writes header + payload into the chain's device-writable buffers; returns the bytes written.
fn write_packet(memory: &GuestMemoryMmap, descs: &[Descriptor], hdr: &Header, payload: &[u8]) -> u32 {
    let mut bytes = hdr.bytes().to_vec();
    bytes.extend_from_slice(payload);
    write_bytes(memory, descs, &bytes)
}

/// Writes `bytes` into the chain's device-writable buffers, as far as they
/// reach; returns the bytes written.
fn write_bytes(memory: &GuestMemoryMmap, descs: &[Descriptor], bytes: &[u8]) -> u32 {
    let mut written = 0usize;
    for desc in descs.iter().filter(|d| d.is_write_only()) {
        if written == bytes.len() {
            break;
        }
        let n = (desc.len() as usize).min(bytes.len() - written);
        if memory.write_slice(&bytes[written..written + n], desc.addr()).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256, 256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config(&self) -> Vec<u8> {
        self.guest_cid.to_le_bytes().to_vec()
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        if index == RX || index == TX {
            self.pump(queues, memory)
        } else {
            false // the event queue: we send no transport events
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    /// The guest's connections stayed with the old host's sockets: a
    /// transport reset makes the driver drop them all at once (and read
    /// the guest CID again), as QEMU and Firecracker do, so programs see
    /// ECONNRESET instead of waiting on connections that are gone.
    fn arrived(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(EVENT) else {
            return false;
        };
        let Some(chain) = queue.pop_descriptor_chain(memory) else {
            eprintln!("hull-vmm: vsock: the driver posted no event buffer; its connections are not told they are gone");
            return false;
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.collect();
        let len = write_bytes(memory, &descs, &EVENT_TRANSPORT_RESET.to_le_bytes());
        queue.add_used(memory, head, len).is_ok()
    }

    fn poll(&mut self, queues: &mut [Queue], memory: &GuestMemoryMmap) -> bool {
        let mut events = [EpollEvent::default(); 64];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for event in &events[..n] {
            let token = event.data();
            if token == LISTENER_TOKEN {
                continue;
            }
            if let Some(conn) = self.connections.get_mut(&token) {
                if event
                    .event_set()
                    .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP)
                {
                    conn.host_readable = true;
                }
            }
        }
        self.accept_host_connections();
        self.pump(queues, memory)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const CID: u64 = 3;

    fn uds(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hull-vsock-{name}-{}", std::process::id()))
    }

    fn packet(op: u16, src_port: u32, dst_port: u32, payload: &[u8]) -> Vec<u8> {
        let hdr = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        };
        let mut bytes = hdr.bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Sends one packet from the "guest" through a TX queue and returns the
    /// packets the device answers with through an RX queue of 4 buffers.
    fn exchange(dev: &mut Vsock, memory: &GuestMemoryMmap, bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
        memory.write_slice(bytes, GuestAddress(0x4_0000)).unwrap();
        let tx = MockSplitQueue::create(memory, GuestAddress(0x1_0000), QUEUE_SIZE);
        tx.add_desc_chains(&[desc(0x4_0000, bytes.len() as u32, 0, 0)], 0)
            .unwrap();
        let rx = MockSplitQueue::create(memory, GuestAddress(0x2_0000), QUEUE_SIZE);
        let bufs: Vec<_> = (0..4u16)
            .map(|i| desc(0x5_0000 + u64::from(i) * 0x1_0000, 0x1_0000, WRITE, 0))
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            rx.add_desc_chains(std::slice::from_ref(b), i as u16).unwrap();
        }
        let mut queues = vec![rx.create_queue::<Queue>().unwrap(), tx.create_queue::<Queue>().unwrap()];
        dev.process_queue(TX, &mut queues, memory);
        let used = queues[0].next_used();
        (0..u64::from(used))
            .map(|i| {
                let len = used_len(memory, &queues[0], i) as usize;
                let mut buf = vec![0u8; len];
                memory
                    .read_slice(&mut buf, GuestAddress(0x5_0000 + i * 0x1_0000))
                    .unwrap();
                (Header::parse(&buf).unwrap(), buf[HDR..].to_vec())
            })
            .collect()
    }

    #[test]
    fn guest_connects_out_and_data_flows_both_ways() {
        let path = uds("out");
        let listener = UnixListener::bind(format!("{}_1024", path.display())).unwrap();
        let mut dev = Vsock::new(CID, &path).unwrap();
        let memory = memory();
        let replies = exchange(&mut dev, &memory, &packet(OP_REQUEST, 5000, 1024, &[]));
        assert_eq!(replies.len(), 1);
        assert_eq!(
            (replies[0].0.op, replies[0].0.dst_port, replies[0].0.src_port),
            (OP_RESPONSE, 5000, 1024)
        );
        let (mut host, _) = listener.accept().unwrap();
        exchange(&mut dev, &memory, &packet(OP_RW, 5000, 1024, b"hello host"));
        let mut got = [0u8; 10];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello host");
        host.write_all(b"hello guest").unwrap();
        dev.poll(&mut [], &memory); // the backend thread's wake-up: the socket is readable
        let replies = exchange(&mut dev, &memory, &packet(OP_CREDIT_UPDATE, 5000, 1024, &[]));
        let data: Vec<u8> = replies
            .iter()
            .filter(|(h, _)| h.op == OP_RW)
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(data, b"hello guest");
        drop(host);
        let _ = std::fs::remove_file(format!("{}_1024", path.display()));
    }

    #[test]
    fn a_vm_that_arrived_from_another_host_has_its_transport_reset() {
        let path = uds("arrived");
        let mut dev = Vsock::new(CID, &path).unwrap();
        let memory = memory();
        let queue = |with_buffer: bool| {
            let mock = MockSplitQueue::create(&memory, GuestAddress(0x3_0000), QUEUE_SIZE);
            if with_buffer {
                memory.write_slice(&[0xff; 8], GuestAddress(0x6_0000)).unwrap();
                mock.add_desc_chains(&[desc(0x6_0000, 8, WRITE, 0)], 0).unwrap();
            }
            mock.create_queue::<Queue>().unwrap()
        };
        let unused = || {
            MockSplitQueue::new(&memory, QUEUE_SIZE)
                .create_queue::<Queue>()
                .unwrap()
        };
        // No event buffer posted: nothing to tell, and nothing breaks.
        let mut queues = vec![unused(), unused(), queue(false)];
        assert!(!dev.arrived(&mut queues, &memory));
        let mut queues = vec![unused(), unused(), queue(true)];
        assert!(dev.arrived(&mut queues, &memory));
        assert_eq!(queues[EVENT].next_used(), 1);
        assert_eq!(used_len(&memory, &queues[EVENT], 0), 4);
        let mut event = [0u8; 8];
        memory.read_slice(&mut event, GuestAddress(0x6_0000)).unwrap();
        assert_eq!(
            event,
            [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            "the event id: TRANSPORT_RESET"
        );
    }

    #[test]
    fn nobody_listening_and_hostile_packets_get_resets() {
        let path = uds("rst");
        let mut dev = Vsock::new(CID, &path).unwrap();
        let memory = memory();
        let replies = exchange(&mut dev, &memory, &packet(OP_REQUEST, 5000, 4242, &[]));
        assert_eq!(replies[0].0.op, OP_RST, "no listener on port 4242");
        // Data on a connection that does not exist.
        let replies = exchange(&mut dev, &memory, &packet(OP_RW, 5000, 4242, b"x"));
        assert_eq!(replies[0].0.op, OP_RST);
        // A spoofed source CID.
        let mut spoofed = packet(OP_REQUEST, 5000, 1024, &[]);
        spoofed[0] = 99;
        assert_eq!(exchange(&mut dev, &memory, &spoofed)[0].0.op, OP_RST);
        // Truncated header, and a length field larger than the packet: no panic.
        exchange(&mut dev, &memory, &packet(OP_RW, 1, 2, &[])[..20]);
        let mut lying = packet(OP_RW, 5000, 4242, b"abc");
        lying[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        exchange(&mut dev, &memory, &lying);
    }

    #[test]
    fn a_guest_that_sends_without_receiving_cannot_grow_the_reply_queue() {
        let path = uds("flood");
        let mut dev = Vsock::new(CID, &path).unwrap();
        let memory = memory();
        // Connection requests to ports nobody listens on, and no RX buffers.
        for round in 0..40u32 {
            let tx = MockSplitQueue::create(&memory, GuestAddress(0x1_0000), QUEUE_SIZE);
            for i in 0..QUEUE_SIZE {
                let addr = 0x4_0000 + u64::from(i) * 0x100;
                memory
                    .write_slice(
                        &packet(OP_REQUEST, 5000 + round, 9000 + u32::from(i), &[]),
                        GuestAddress(addr),
                    )
                    .unwrap();
            }
            let chains: Vec<_> = (0..QUEUE_SIZE)
                .map(|i| desc(0x4_0000 + u64::from(i) * 0x100, HDR as u32, 0, 0))
                .collect();
            tx.add_desc_chains(&chains, 0).unwrap();
            let mut queues = vec![Queue::new(QUEUE_SIZE).unwrap(), tx.create_queue::<Queue>().unwrap()];
            dev.process_queue(TX, &mut queues, &memory);
            assert!(dev.control.len() <= MAX_PENDING_CONTROL, "{}", dev.control.len());
        }
        assert_eq!(dev.control.len(), MAX_PENDING_CONTROL);
    }

    #[test]
    fn host_connects_in_with_connect_line() {
        let path = uds("in");
        let mut dev = Vsock::new(CID, &path).unwrap();
        let memory = memory();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let mut queues = vec![Queue::new(QUEUE_SIZE).unwrap(), Queue::new(QUEUE_SIZE).unwrap()];
        dev.poll(&mut queues, &memory); // accepts; the REQUEST waits for an RX buffer
        let request = dev.control.front().copied().unwrap();
        assert_eq!((request.op, request.dst_port, request.dst_cid), (OP_REQUEST, 52, CID));
        dev.control.clear();
        let mut response = packet(OP_RESPONSE, 52, request.src_port, &[]);
        response[0..8].copy_from_slice(&CID.to_le_bytes());
        exchange(&mut dev, &memory, &response);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            format!("OK {}\n", request.src_port)
        );
    }
}
