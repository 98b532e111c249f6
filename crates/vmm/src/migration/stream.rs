//! The migration stream: the frames two hull-vmm processes exchange over
//! one byte stream (a socket its supervisor connected; TLS, if any, is the
//! supervisor's).
//!
//! A frame is its kind (1 byte), its payload's length (u32, little-endian),
//! the payload, and a CRC-32 of all three: a frame that is cut, flipped or
//! foreign is refused before a byte of it is used. Each kind has its own
//! largest payload, so a peer cannot make the other allocate more than one
//! state's worth. Page and disk data travel raw or as one LZ4 block a
//! frame (`put_pages`, `put_disk`; a block must unpack to exactly the
//! bytes its frame names, and is read as a `Pages` or `Disk` frame);
//! everything else is postcard.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The stream's version: a destination refuses any other. 2: the hello
/// carries the VM's vCPUs and devices. 3: the state goes without the
/// snapshot file's digest (its frame has a CRC); the destination answers
/// each round's end (`RoundIn`). 4: the hello names the NICs on taps. 5:
/// disks travel (`Disk`, `DiskZeros`; the hello names them), and the
/// hello carries the guest's MACs. 6: pages and disk data may travel
/// LZ4-compressed. 7: the state carries the devices' host sides (the
/// shared directories' open files and inodes). 8: shared directories
/// may travel (`TreeEntry`, `TreeData`; the hello names them). 9: the
/// state as the pre-copy began goes ahead of the pages (`EarlyState`).
pub const VERSION: u32 = 9;
/// Guest pages are this big on x86-64.
pub const PAGE_SIZE: usize = 4096;
/// At most this many pages travel in one `Pages` frame (1 MiB).
pub const MAX_PAGES_PER_FRAME: usize = 256;
/// At most this many bytes of a disk travel in one `Disk` frame.
pub const MAX_DISK_BYTES: usize = 1 << 20;
/// A VM's state (vCPUs, interrupt controllers, devices) is a few hundred
/// KiB; this bounds what a destination accepts for it.
pub const MAX_STATE: usize = 64 << 20;
/// Every other frame is small.
const MAX_SMALL: usize = 64 << 10;
const HEADER: usize = 1 + 4;
const TRAILER: usize = 4;

/// What the source sends first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub page_size: u32,
    pub shape: VmShape,
    /// The content hash of the template whose memory the source's guest
    /// began as (a clone's), if any: a destination that maps the same
    /// template is sent only the pages the clone changed.
    pub template: Option<[u8; 32]>,
    /// The MACs the guest sends from, by NIC slot: the destination
    /// announces them on its taps once the guest runs there.
    pub guest_macs: SlotMacs,
}

/// MAC addresses by NIC slot.
pub type SlotMacs = Vec<(u8, [u8; 6])>;

/// What a destination must have been made like to take a VM, checked
/// before any page travels (a mismatch found only in the state would cost
/// the whole pre-copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    pub memory_bytes: u64,
    pub vcpus: u32,
    /// Its virtio devices' types, in slot order.
    pub devices: Vec<u32>,
    /// The slots of its NICs that are on a host tap: a destination without
    /// a tap for one would cut the guest off its network.
    pub nics_on_taps: Vec<u8>,
    /// Its disks, in the guest's order.
    pub disks: Vec<DiskShape>,
    /// The shared directories (by number, `/0` is 0) whose files travel
    /// in the stream (`TreeEntry`, `TreeData`) into the destination's
    /// (empty) directory; the others both hosts see.
    pub travelling_shares: Vec<u8>,
}

/// One of a VM's disks as both sides must agree on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskShape {
    pub bytes: u64,
    pub read_only: bool,
    /// Its content travels in the stream (`Disk` frames) into the
    /// destination's (empty) copy; otherwise both hosts see the same file.
    pub travels: bool,
}

/// The destination's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// Go on; `has_template` says whether the destination's memory already
    /// holds the template's pages.
    Accepted {
        has_template: bool,
    },
    Refused {
        reason: String,
    },
}

/// One frame, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    /// `data.len() / PAGE_SIZE` pages from page number `first`.
    Pages {
        first: u64,
        data: Vec<u8>,
    },
    /// `count` pages from page number `first` that are all zeros now.
    Zeros {
        first: u64,
        count: u32,
    },
    /// `data` at byte `offset` of the VM's disk number `disk`.
    Disk {
        disk: u8,
        offset: u64,
        data: Vec<u8>,
    },
    /// `bytes` of zeros at byte `offset` of disk number `disk`.
    DiskZeros {
        disk: u8,
        offset: u64,
        bytes: u64,
    },
    /// An entry of a shared directory that travels (`trees`).
    TreeEntry(super::trees::TreeEntry),
    /// `data` at byte `offset` of the file the last `TreeEntry` of share
    /// `share` announced.
    TreeData {
        share: u8,
        offset: u64,
        data: Vec<u8>,
    },
    /// The end of a pre-copy round, which sent `pages`.
    RoundEnd {
        round: u32,
        pages: u64,
    },
    /// The destination's answer to `RoundEnd`: the round's pages are all
    /// in its memory. The source reads the dirty log only then, so that
    /// nothing sent is still on its way (in socket buffers) when the guest
    /// is paused, and its bandwidth figure is the link's, end to end.
    RoundIn {
        round: u32,
    },
    /// The paused VM's state, opaque to the stream.
    State(Vec<u8>),
    /// The VM's state as it stood when the pre-copy began, ahead of any
    /// page: the destination takes it as it will take `State` (decoded,
    /// checked, its vCPUs' registers set but not run), so that a VM it
    /// cannot take is refused before its memory travels. `State`
    /// replaces it.
    EarlyState(Vec<u8>),
    /// The source sent everything.
    Done,
    /// The destination holds the whole VM and would run it on `Go`.
    Ready,
    /// The source has stopped for good: the destination runs the VM.
    Go,
    /// The destination runs the VM.
    Resumed,
    /// Either side gives up; the source's VM keeps running.
    Abort {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the migration connection: {0}")]
    Io(#[from] io::Error),
    #[error("the migration stream ended in the middle of a frame")]
    Truncated,
    #[error("the migration stream is corrupted (a frame's checksum does not match)")]
    Checksum,
    #[error("the migration stream has an unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a migration frame of kind {kind} announces {len} bytes; at most {max} are allowed")]
    Oversized { kind: u8, len: usize, max: usize },
    #[error("a malformed migration frame: {0}")]
    Malformed(String),
    #[error(
        "the other side speaks migration version {0}, this hull-vmm {VERSION}: a VM started by another hull-vmm \
         version moves only once it has been restarted"
    )]
    Version(u32),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const PAGES: u8 = 3;
    pub const ZEROS: u8 = 4;
    pub const ROUND_END: u8 = 5;
    pub const STATE: u8 = 6;
    pub const DONE: u8 = 7;
    pub const READY: u8 = 8;
    pub const GO: u8 = 9;
    pub const RESUMED: u8 = 10;
    pub const ABORT: u8 = 11;
    pub const ROUND_IN: u8 = 12;
    pub const DISK: u8 = 13;
    pub const DISK_ZEROS: u8 = 14;
    pub const PAGES_LZ4: u8 = 15;
    pub const DISK_LZ4: u8 = 16;
    pub const TREE_ENTRY: u8 = 17;
    pub const TREE_DATA: u8 = 18;
    pub const TREE_DATA_LZ4: u8 = 19;
    pub const EARLY_STATE: u8 = 20;
}

fn max_payload(kind: u8) -> Result<usize, StreamError> {
    Ok(match kind {
        kind::PAGES => 8 + MAX_PAGES_PER_FRAME * PAGE_SIZE,
        // Sent only when smaller than the pages themselves.
        kind::PAGES_LZ4 => LZ4_HEADER + MAX_PAGES_PER_FRAME * PAGE_SIZE,
        kind::STATE | kind::EARLY_STATE => MAX_STATE,
        kind::DISK | kind::TREE_DATA => DISK_HEADER + MAX_DISK_BYTES,
        kind::DISK_LZ4 | kind::TREE_DATA_LZ4 => DISK_LZ4_HEADER + MAX_DISK_BYTES,
        kind::HELLO..=kind::DISK_ZEROS | kind::TREE_ENTRY => MAX_SMALL,
        other => return Err(StreamError::UnknownKind(other)),
    })
}

/// A disk (or tree data) frame's disk (share) number and offset, before
/// its data.
const DISK_HEADER: usize = 1 + 8;
/// A compressed pages frame's first page number and page count, before
/// its LZ4 block.
const LZ4_HEADER: usize = 8 + 2;
/// A compressed disk frame's disk number, offset and length, before its
/// LZ4 block.
const DISK_LZ4_HEADER: usize = DISK_HEADER + 4;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StreamError> {
    postcard::to_stdvec(value).map_err(|e| StreamError::Malformed(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, StreamError> {
    postcard::from_bytes(payload).map_err(|e| StreamError::Malformed(e.to_string()))
}

/// A hello; one this version cannot read is refused by the version it
/// names (every version's hello begins with it).
fn decode_hello(payload: &[u8]) -> Result<Hello, StreamError> {
    decode(payload).map_err(|e| match postcard::take_from_bytes::<u32>(payload) {
        Ok((version, _)) if version != VERSION => StreamError::Version(version),
        _ => e,
    })
}

/// Writes one frame and flushes `w`: the peer gets it now.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), StreamError> {
    // One write: on an unbuffered socket each of a frame's parts would
    // wake the peer for a few bytes (Ready, Go and Resumed are in the
    // downtime).
    let mut whole = Vec::new();
    put_frame(&mut whole, frame)?;
    w.write_all(&whole)?;
    w.flush()?;
    Ok(())
}

/// Writes one frame into `w` without flushing it: a buffered writer
/// gathers a run of frames into a few large writes (each write wakes the
/// peer; in the downtime, every wake-up counts).
pub fn put_frame(w: &mut impl Write, frame: &Frame) -> Result<(), StreamError> {
    // A pages frame's payload is its first page number, then the pages,
    // written from where they are (no copy of up to 1 MiB per frame).
    let (kind, payload, pages): (u8, std::borrow::Cow<[u8]>, &[u8]) = match frame {
        Frame::Hello(hello) => (kind::HELLO, encode(hello)?.into(), &[]),
        Frame::Welcome(welcome) => (kind::WELCOME, encode(welcome)?.into(), &[]),
        Frame::Pages { first, data } => return put_pages(w, *first, data, false).map(|_| ()),
        Frame::Zeros { first, count } => (kind::ZEROS, encode(&(first, count))?.into(), &[]),
        Frame::Disk { disk, offset, data } => chunk_parts(kind::DISK, *disk, *offset, data)?,
        Frame::TreeData { share, offset, data } => chunk_parts(kind::TREE_DATA, *share, *offset, data)?,
        Frame::TreeEntry(entry) => (kind::TREE_ENTRY, encode(entry)?.into(), &[]),
        Frame::DiskZeros { disk, offset, bytes } => (kind::DISK_ZEROS, encode(&(disk, offset, bytes))?.into(), &[]),
        Frame::RoundEnd { round, pages } => (kind::ROUND_END, encode(&(round, pages))?.into(), &[]),
        Frame::RoundIn { round } => (kind::ROUND_IN, encode(round)?.into(), &[]),
        Frame::State(bytes) => (kind::STATE, bytes.as_slice().into(), &[]),
        Frame::EarlyState(bytes) => (kind::EARLY_STATE, bytes.as_slice().into(), &[]),
        Frame::Done => (kind::DONE, Vec::new().into(), &[]),
        Frame::Ready => (kind::READY, Vec::new().into(), &[]),
        Frame::Go => (kind::GO, Vec::new().into(), &[]),
        Frame::Resumed => (kind::RESUMED, Vec::new().into(), &[]),
        Frame::Abort { reason } => (kind::ABORT, encode(reason)?.into(), &[]),
    };
    put_parts(w, kind, &payload, pages)
}

/// Writes a `Pages` frame of `data` (whole pages from page `first`),
/// as one LZ4 block when `compress` asks for it and the block is smaller;
/// returns the bytes that saved.
pub fn put_pages(w: &mut impl Write, first: u64, data: &[u8], compress: bool) -> Result<u64, StreamError> {
    let pages = data.len() / PAGE_SIZE;
    if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) || pages > MAX_PAGES_PER_FRAME {
        return Err(StreamError::Malformed(format!("{} bytes of pages", data.len())));
    }
    if compress {
        let block = lz4_flex::block::compress(data);
        if LZ4_HEADER + block.len() < 8 + data.len() {
            let mut header = first.to_le_bytes().to_vec();
            header.extend_from_slice(&(pages as u16).to_le_bytes());
            put_parts(w, kind::PAGES_LZ4, &header, &block)?;
            return Ok((8 + data.len() - LZ4_HEADER - block.len()) as u64);
        }
    }
    put_parts(w, kind::PAGES, &first.to_le_bytes(), data)?;
    Ok(0)
}

/// A frame's kind, the head of its payload, and the rest (written from
/// where it is).
type Parts<'d> = (u8, std::borrow::Cow<'static, [u8]>, &'d [u8]);

/// A disk or tree data frame's kind, header and data.
fn chunk_parts(kind: u8, id: u8, offset: u64, data: &[u8]) -> Result<Parts<'_>, StreamError> {
    if data.is_empty() || data.len() > MAX_DISK_BYTES {
        return Err(StreamError::Malformed(format!(
            "{} bytes of disk or file data",
            data.len()
        )));
    }
    let mut header = vec![id];
    header.extend_from_slice(&offset.to_le_bytes());
    Ok((kind, header.into(), data))
}

/// Writes a `Disk` frame of `data` for byte `offset` of disk `disk`, as
/// one LZ4 block when `compress` asks for it and the block is smaller;
/// returns the bytes that saved.
pub fn put_disk(w: &mut impl Write, disk: u8, offset: u64, data: Vec<u8>, compress: bool) -> Result<u64, StreamError> {
    put_chunk(w, (kind::DISK, kind::DISK_LZ4), disk, offset, data, compress)
}

/// The same for a `TreeData` frame of share `share`'s file.
pub fn put_tree_data(
    w: &mut impl Write,
    share: u8,
    offset: u64,
    data: Vec<u8>,
    compress: bool,
) -> Result<u64, StreamError> {
    put_chunk(w, (kind::TREE_DATA, kind::TREE_DATA_LZ4), share, offset, data, compress)
}

/// `data` at `offset` of `id` as a frame of the kinds given (raw, LZ4).
fn put_chunk(
    w: &mut impl Write,
    (raw, packed): (u8, u8),
    id: u8,
    offset: u64,
    data: Vec<u8>,
    compress: bool,
) -> Result<u64, StreamError> {
    if compress && !data.is_empty() && data.len() <= MAX_DISK_BYTES {
        let block = lz4_flex::block::compress(&data);
        if DISK_LZ4_HEADER + block.len() < DISK_HEADER + data.len() {
            let mut header = vec![id];
            header.extend_from_slice(&offset.to_le_bytes());
            header.extend_from_slice(&(data.len() as u32).to_le_bytes());
            put_parts(w, packed, &header, &block)?;
            return Ok((DISK_HEADER + data.len() - DISK_LZ4_HEADER - block.len()) as u64);
        }
    }
    let (kind, head, tail) = chunk_parts(raw, id, offset, &data)?;
    put_parts(w, kind, &head, tail)?;
    Ok(0)
}

/// The `len` bytes LZ4 `block` must unpack to exactly (`what` names the
/// frame in the error).
fn unpack(block: &[u8], len: usize, what: &str) -> Result<Vec<u8>, StreamError> {
    let mut data = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut data) {
        Ok(n) if n == len => Ok(data),
        Ok(n) => Err(StreamError::Malformed(format!(
            "{what} unpacks to {n} bytes, not {len}"
        ))),
        Err(e) => Err(StreamError::Malformed(format!("{what}: {e}"))),
    }
}

/// Writes a frame of `kind` whose payload is `head` then `tail`.
fn put_parts(w: &mut impl Write, kind: u8, head: &[u8], tail: &[u8]) -> Result<(), StreamError> {
    let len = head.len() + tail.len();
    let max = max_payload(kind)?;
    if len > max {
        return Err(StreamError::Oversized { kind, len, max });
    }
    let mut header = [0u8; HEADER];
    header[0] = kind;
    header[1..].copy_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(head);
    crc.update(tail);
    w.write_all(&header)?;
    w.write_all(head)?;
    w.write_all(tail)?;
    w.write_all(&crc.finalize().to_le_bytes())?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes; a stream that ends first is `Truncated`.
fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Truncated,
        _ => StreamError::Io(e),
    })
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, StreamError> {
    let mut header = [0u8; HEADER];
    // A clean end is one between frames.
    match r.read(&mut header[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return read_frame(r),
        Err(e) => return Err(e.into()),
    }
    read_exact(r, &mut header[1..])?;
    let kind = header[0];
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let max = max_payload(kind)?;
    if len > max {
        return Err(StreamError::Oversized { kind, len, max });
    }
    // Bulk data (pages, a disk's or a file's bytes) is read into a buffer
    // of its own, apart from the few bytes ahead of it: it is then neither
    // copied nor moved down before it is used.
    let head = match kind {
        kind::PAGES => 8,
        kind::DISK | kind::TREE_DATA => DISK_HEADER,
        _ => len,
    }
    .min(len);
    let mut payload = vec![0u8; head];
    read_exact(r, &mut payload)?;
    let mut data = vec![0u8; len - head];
    read_exact(r, &mut data)?;
    let mut trailer = [0u8; TRAILER];
    read_exact(r, &mut trailer)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(&payload);
    crc.update(&data);
    if crc.finalize() != u32::from_le_bytes(trailer) {
        return Err(StreamError::Checksum);
    }
    let empty = |frame: Frame| match payload.is_empty() {
        true => Ok(frame),
        false => Err(StreamError::Malformed(format!("frame kind {kind} carries {len} bytes"))),
    };
    Ok(Some(match kind {
        kind::HELLO => Frame::Hello(decode_hello(&payload)?),
        kind::WELCOME => Frame::Welcome(decode(&payload)?),
        kind::PAGES => {
            let first = <[u8; 8]>::try_from(payload.as_slice())
                .map_err(|_| StreamError::Malformed("a pages frame without its page number".into()))?;
            if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
                return Err(StreamError::Malformed(format!(
                    "a pages frame of {} bytes (not whole pages)",
                    data.len()
                )));
            }
            Frame::Pages {
                first: u64::from_le_bytes(first),
                data,
            }
        }
        kind::PAGES_LZ4 => {
            let (first, block) = payload
                .split_first_chunk::<8>()
                .ok_or_else(|| StreamError::Malformed("a compressed pages frame without its page number".into()))?;
            let (pages, block) = block
                .split_first_chunk::<2>()
                .ok_or_else(|| StreamError::Malformed("a compressed pages frame without its page count".into()))?;
            let pages = usize::from(u16::from_le_bytes(*pages));
            if !(1..=MAX_PAGES_PER_FRAME).contains(&pages) {
                return Err(StreamError::Malformed(format!(
                    "a compressed pages frame of {pages} pages"
                )));
            }
            Frame::Pages {
                first: u64::from_le_bytes(*first),
                data: unpack(block, pages * PAGE_SIZE, "a compressed pages frame")?,
            }
        }
        kind::ZEROS => {
            let (first, count) = decode(&payload)?;
            Frame::Zeros { first, count }
        }
        kind::DISK => chunk_frame(true, read_chunk(&payload, data)?),
        kind::TREE_DATA => chunk_frame(false, read_chunk(&payload, data)?),
        kind::DISK_LZ4 => chunk_frame(true, read_packed_chunk(&payload)?),
        kind::TREE_DATA_LZ4 => chunk_frame(false, read_packed_chunk(&payload)?),
        kind::TREE_ENTRY => Frame::TreeEntry(decode(&payload)?),
        kind::DISK_ZEROS => {
            let (disk, offset, bytes) = decode(&payload)?;
            Frame::DiskZeros { disk, offset, bytes }
        }
        kind::ROUND_END => {
            let (round, pages) = decode(&payload)?;
            Frame::RoundEnd { round, pages }
        }
        kind::ROUND_IN => Frame::RoundIn {
            round: decode(&payload)?,
        },
        kind::STATE => Frame::State(payload),
        kind::EARLY_STATE => Frame::EarlyState(payload),
        kind::DONE => empty(Frame::Done)?,
        kind::READY => empty(Frame::Ready)?,
        kind::GO => empty(Frame::Go)?,
        kind::RESUMED => empty(Frame::Resumed)?,
        kind::ABORT => Frame::Abort {
            reason: decode(&payload)?,
        },
        other => return Err(StreamError::UnknownKind(other)),
    }))
}

/// A disk's frame, or a shared directory's file data.
fn chunk_frame(disk: bool, (id, offset, data): (u8, u64, Vec<u8>)) -> Frame {
    match disk {
        true => Frame::Disk { disk: id, offset, data },
        false => Frame::TreeData {
            share: id,
            offset,
            data,
        },
    }
}

/// A raw disk or tree data frame's number, offset (`head`) and data.
fn read_chunk(head: &[u8], data: Vec<u8>) -> Result<(u8, u64, Vec<u8>), StreamError> {
    let parsed = head
        .split_first()
        .and_then(|(&id, offset)| Some((id, <[u8; 8]>::try_from(offset).ok()?)));
    match parsed {
        Some((id, offset)) if !data.is_empty() => Ok((id, u64::from_le_bytes(offset), data)),
        _ => Err(StreamError::Malformed("a disk or file data frame without data".into())),
    }
}

/// A compressed disk or tree data frame's number, offset and data.
fn read_packed_chunk(payload: &[u8]) -> Result<(u8, u64, Vec<u8>), StreamError> {
    let (header, block) = payload
        .split_first_chunk::<DISK_LZ4_HEADER>()
        .ok_or_else(|| StreamError::Malformed("a compressed disk or file data frame without its header".into()))?;
    let (id, rest) = (header[0], &header[1..]);
    let (offset, len) = rest.split_at(8);
    let offset = u64::from_le_bytes(offset.try_into().unwrap_or_default());
    let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
    if !(1..=MAX_DISK_BYTES).contains(&len) {
        return Err(StreamError::Malformed(format!(
            "a compressed disk or file data frame of {len} bytes"
        )));
    }
    Ok((id, offset, unpack(block, len, "a compressed disk or file data frame")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: VERSION,
                page_size: PAGE_SIZE as u32,
                shape: VmShape {
                    memory_bytes: 256 << 20,
                    vcpus: 2,
                    devices: vec![2, 2, 19, 4, 1],
                    nics_on_taps: vec![0],
                    disks: vec![DiskShape {
                        bytes: 1 << 30,
                        read_only: false,
                        travels: true,
                    }],
                    travelling_shares: vec![1],
                },
                template: Some([7; 32]),
                guest_macs: vec![(0, [2, 0x42, 0xac, 0x11, 0, 2])],
            }),
            Frame::Welcome(Welcome::Accepted { has_template: true }),
            Frame::Welcome(Welcome::Refused { reason: "no".into() }),
            Frame::Pages {
                first: 3,
                data: vec![0xab; 2 * PAGE_SIZE],
            },
            Frame::Zeros { first: 9, count: 4 },
            Frame::Disk {
                disk: 1,
                offset: 65536,
                data: vec![7; 300],
            },
            Frame::DiskZeros {
                disk: 0,
                offset: 1 << 20,
                bytes: 1 << 16,
            },
            Frame::TreeEntry(super::super::trees::TreeEntry {
                share: 1,
                path: b"data/log".to_vec(),
                kind: super::super::trees::EntryKind::Remove,
            }),
            Frame::TreeData {
                share: 1,
                offset: 4096,
                data: vec![9; 100],
            },
            Frame::RoundEnd { round: 2, pages: 17 },
            Frame::RoundIn { round: 2 },
            Frame::State(vec![1, 2, 3]),
            Frame::EarlyState(vec![4, 5]),
            Frame::Done,
            Frame::Ready,
            Frame::Go,
            Frame::Resumed,
            Frame::Abort {
                reason: "cancelled".into(),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let mut bytes = Vec::new();
        for frame in frames() {
            write_frame(&mut bytes, &frame).unwrap();
        }
        let mut r = bytes.as_slice();
        for frame in frames() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(frame));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn a_hello_of_another_version_is_refused_by_its_version() {
        // Version 4's hello had fewer fields: it does not decode as this one's.
        let mut payload = postcard::to_stdvec(&4u32).unwrap();
        payload.extend_from_slice(&[0x10, 0x00]);
        let mut frame = vec![kind::HELLO];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        let err = read_frame(&mut frame.as_slice()).unwrap_err();
        assert!(matches!(err, StreamError::Version(4)), "{err}");
        assert!(err.to_string().contains("version 4"), "{err}");
    }

    #[test]
    fn damaged_frames_are_refused() {
        let mut good = Vec::new();
        write_frame(
            &mut good,
            &Frame::Pages {
                first: 1,
                data: vec![5; PAGE_SIZE],
            },
        )
        .unwrap();
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        assert!(matches!(
            read_frame(&mut flipped.as_slice()),
            Err(StreamError::Checksum)
        ));
        assert!(matches!(
            read_frame(&mut &good[..good.len() - 1]),
            Err(StreamError::Truncated)
        ));
        assert!(matches!(read_frame(&mut &good[..3]), Err(StreamError::Truncated)));
        let mut unknown = good.clone();
        unknown[0] = 99;
        assert!(matches!(
            read_frame(&mut unknown.as_slice()),
            Err(StreamError::UnknownKind(99))
        ));
        // A length far past the kind's limit is refused before allocating.
        let mut huge = vec![kind::STATE];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut huge.as_slice()),
            Err(StreamError::Oversized { .. })
        ));
    }

    #[test]
    fn pages_frames_hold_whole_pages_only() {
        let mut bytes = Vec::new();
        assert!(write_frame(
            &mut bytes,
            &Frame::Pages {
                first: 0,
                data: vec![1; 100]
            }
        )
        .is_err());
        assert!(write_frame(
            &mut bytes,
            &Frame::Pages {
                first: 0,
                data: vec![1; (MAX_PAGES_PER_FRAME + 1) * PAGE_SIZE]
            }
        )
        .is_err());
        assert!(bytes.is_empty());
        // A hand-made frame with half a page is refused on reading.
        let mut payload = 0u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 100]);
        let mut frame = vec![kind::PAGES];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            read_frame(&mut frame.as_slice()),
            Err(StreamError::Malformed(_))
        ));
    }

    /// A hand-made frame of `kind` around `payload`, with its checksum.
    fn hand_made(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![kind];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    #[test]
    fn compressible_pages_travel_as_a_smaller_block_and_read_back_as_they_were() {
        // Pages like a guest kernel's: mostly zeros, some structure.
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        for (i, b) in data.iter_mut().enumerate().step_by(61) {
            *b = (i % 251) as u8;
        }
        let mut bytes = Vec::new();
        put_pages(&mut bytes, 7, &data, true).unwrap();
        assert_eq!(bytes[0], kind::PAGES_LZ4);
        assert!(bytes.len() < data.len() / 2, "{} bytes for {}", bytes.len(), data.len());
        let read = read_frame(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            read,
            Some(Frame::Pages {
                first: 7,
                data: data.clone()
            })
        );
        // Uncompressed when not asked for, or when LZ4 gains nothing.
        let mut raw = Vec::new();
        put_pages(&mut raw, 7, &data, false).unwrap();
        assert_eq!(raw[0], kind::PAGES);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        let mut noisy = Vec::new();
        put_pages(&mut noisy, 1, &noise, true).unwrap();
        assert_eq!(noisy[0], kind::PAGES);
        assert_eq!(
            read_frame(&mut noisy.as_slice()).unwrap(),
            Some(Frame::Pages { first: 1, data: noise })
        );
    }

    #[test]
    fn a_compressed_block_must_unpack_to_exactly_the_pages_it_names() {
        let block = lz4_flex::block::compress(&[5u8; 2 * PAGE_SIZE]);
        let frame = |pages: u16, block: &[u8]| {
            let mut payload = 3u64.to_le_bytes().to_vec();
            payload.extend_from_slice(&pages.to_le_bytes());
            payload.extend_from_slice(block);
            hand_made(kind::PAGES_LZ4, &payload)
        };
        let good = frame(2, &block);
        assert_eq!(
            read_frame(&mut good.as_slice()).unwrap(),
            Some(Frame::Pages {
                first: 3,
                data: vec![5; 2 * PAGE_SIZE]
            })
        );
        // Fewer or more pages than the block holds, none, too many, a
        // damaged block, no count: each refused, nothing panics.
        let mut damaged = block.clone();
        damaged.truncate(block.len() / 2);
        for bad in [
            frame(1, &block),
            frame(3, &block),
            frame(0, &block),
            frame(MAX_PAGES_PER_FRAME as u16 + 1, &block),
            frame(2, &damaged),
            frame(2, &[0xff; 40]),
            hand_made(kind::PAGES_LZ4, &3u64.to_le_bytes()),
        ] {
            assert!(matches!(
                read_frame(&mut bad.as_slice()),
                Err(StreamError::Malformed(_))
            ));
        }
    }

    #[test]
    fn compressed_disk_data_reads_back_as_it_was_and_a_bad_block_is_refused() {
        let mut data = vec![0u8; 64 << 10];
        data[..11].copy_from_slice(b"ext4 header");
        let mut bytes = Vec::new();
        let saved = put_disk(&mut bytes, 1, 8192, data.clone(), true).unwrap();
        assert_eq!(bytes[0], kind::DISK_LZ4);
        assert_eq!(
            saved as usize,
            DISK_HEADER + data.len() + HEADER + TRAILER - bytes.len()
        );
        let read = read_frame(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            read,
            Some(Frame::Disk {
                disk: 1,
                offset: 8192,
                data: data.clone()
            })
        );
        let block = lz4_flex::block::compress(&data);
        let frame = |len: u32, block: &[u8]| {
            let mut payload = vec![1];
            payload.extend_from_slice(&8192u64.to_le_bytes());
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(block);
            hand_made(kind::DISK_LZ4, &payload)
        };
        for bad in [
            frame(data.len() as u32 - 1, &block),
            frame(data.len() as u32 + 1, &block),
            frame(0, &block),
            frame(MAX_DISK_BYTES as u32 + 1, &block),
            frame(data.len() as u32, &block[..block.len() / 2]),
            hand_made(kind::DISK_LZ4, &[1, 2, 3]),
        ] {
            assert!(matches!(
                read_frame(&mut bad.as_slice()),
                Err(StreamError::Malformed(_))
            ));
        }
    }
}
