//! What two hullds say to each other to move a container (`to=HOST`):
//! length-prefixed JSON messages on a control connection, files (the image
//! disk, the log) as bounded segments on it (LZ4 blocks where that makes
//! them smaller), and a second connection that
//! carries the VMs' own migration stream (`vmm::migration`) unchanged.
//! Everything from the peer is untrusted: each message and segment is
//! bounded before it is read, and offsets are checked against the size
//! the file was announced with.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::store::ContainerRecord;

/// This protocol's version; a peer speaking another is refused. 3: the
/// image goes too when the destination lacks it (`send_image`).
pub const VERSION: u32 = 3;
/// The largest message (an offer carries a container's record and spec).
const MAX_MESSAGE: usize = 1 << 20;
/// The largest file segment.
const MAX_SEGMENT: usize = 1 << 20;

/// A container offered to the destination.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub version: u32,
    pub record: ContainerRecord,
    pub spec: runtime::container::ContainerSpec,
    /// The name of each of its networks, in its endpoints' order: the
    /// destination has networks of those names (and subnets).
    pub networks: Vec<NetworkName>,
    /// Its writable disk's size (its content comes in the VM's stream).
    pub writable_bytes: u64,
    /// The identity of the template its VM is a clone of
    /// (`runtime::template::identity`), if it is one.
    #[serde(default)]
    pub template: Option<String>,
    /// Its volumes (disk volumes: their content comes in the VM's stream).
    #[serde(default)]
    pub volumes: Vec<runtime::volume::VolumeRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NetworkName {
    pub name: String,
    pub subnet: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Source → destination, first on the control connection.
    Offer(Box<Offer>),
    /// Destination → source: send the files (first the template, if this
    /// host lacks it: its state, then its memory; then the image as a
    /// `docker save` tar, if this host lacks it), then open the data
    /// connection with this token.
    Accepted {
        token: String,
        #[serde(default)]
        send_template: bool,
        #[serde(default)]
        send_image: bool,
    },
    /// Destination → source: the container cannot come (why).
    Refused {
        reason: String,
    },
    /// Source → destination, first on the data connection: the VMs'
    /// migration stream follows.
    Data {
        token: String,
    },
    /// A file of this size follows as `Segment`s, then `FileEnd`.
    File {
        bytes: u64,
    },
    /// `len` bytes for `offset` follow: raw, or as an LZ4 block of
    /// `packed` bytes (fewer than `len`).
    Segment {
        offset: u64,
        len: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packed: Option<u32>,
    },
    FileEnd,
    /// Source → destination, before the log: `count` files the log
    /// rotated into follow, oldest first (each a `File`).
    RotatedLogs {
        count: u32,
    },
    /// Source → destination: the VM left, and the source read this many
    /// of its run connection's frames (the destination resumes from
    /// there); the rest of the log follows as a file.
    Moved {
        output_frames: u64,
    },
    /// Destination → source: the container runs here.
    Resumed,
    /// Either way: the move is off (why).
    Failed {
        reason: String,
    },
    /// Source → destination, first on a connection of its own: relay this
    /// connection to the exec port of container `id`'s agent (an exec
    /// that began at the source is taken back: the first frame must be
    /// `Control::ResumeExec`).
    AgentRelay {
        id: String,
    },
    /// Source → destination, first on a connection of its own: for a
    /// client attached at the source, container `id`'s log entries from
    /// `after` on as they come (`LogEntries`), or with `input`, the
    /// client's standard input (`Stdin`/`StdinEof` frames) to it.
    AttachRelay {
        id: String,
        input: bool,
        after: super::attach_relay::Position,
    },
    /// Destination → source: entries of the container's log (none: it
    /// runs on, quiet).
    LogEntries(Vec<runtime::container_log::LogEntry>),
    /// Destination → source: the relay is ready.
    Relaying,
    /// A host to another, first and alone on a connection of its own: the
    /// names of its running containers on its network `network`
    /// (`subnet`), which spans both (`span_names`).
    Names {
        network: String,
        subnet: String,
        names: Vec<(String, std::net::Ipv4Addr)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the other host: {0}")]
    Io(#[from] std::io::Error),
    #[error("the other host sent {0}")]
    Bad(String),
}

pub fn send(conn: &mut impl Write, message: &Message) -> Result<(), WireError> {
    let body = serde_json::to_vec(message).map_err(|e| WireError::Bad(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::Bad(format!("a message of {} bytes", body.len())));
    }
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&body);
    conn.write_all(&framed)?;
    Ok(())
}

pub fn receive(conn: &mut impl Read) -> Result<Message, WireError> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::Bad(format!(
            "a message of {len} bytes (at most {MAX_MESSAGE})"
        )));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| WireError::Bad(format!("a message that does not parse: {e}")))
}

/// Sends bytes `from..to` of `file` (to is its length or less); pages of
/// zeros are left out when `sparse` (the receiver's file starts as a
/// hole). The bytes that went.
pub fn send_file(conn: &mut impl Write, file: &File, from: u64, to: u64, sparse: bool) -> Result<u64, WireError> {
    send(conn, &Message::File { bytes: to })?;
    let sent = send_range(conn, file, from, to, from, sparse)?;
    send(conn, &Message::FileEnd)?;
    Ok(sent)
}

/// Sends `parts` (a file and a range of its bytes) one after another as
/// one file, of which the receiver holds the bytes before `at` already.
/// The bytes that went.
pub fn send_joined(conn: &mut impl Write, at: u64, parts: &[(&File, u64, u64)]) -> Result<u64, WireError> {
    let length = |&(_, from, to): &(&File, u64, u64)| to.saturating_sub(from);
    let total = at + parts.iter().map(length).sum::<u64>();
    send(conn, &Message::File { bytes: total })?;
    let (mut place, mut sent) = (at, 0);
    for part @ (file, from, to) in parts {
        sent += send_range(conn, file, *from, *to, place, false)?;
        place += length(part);
    }
    send(conn, &Message::FileEnd)?;
    Ok(sent)
}

/// Sends bytes `from..to` of `file` as segments placed from `place` on.
fn send_range(
    conn: &mut impl Write,
    file: &File,
    from: u64,
    to: u64,
    place: u64,
    sparse: bool,
) -> Result<u64, WireError> {
    let mut chunk = vec![0u8; MAX_SEGMENT];
    let mut offset = from;
    let mut sent = 0;
    let at = |offset: u64| place + (offset - from);
    while offset < to {
        let want = (to - offset).min(MAX_SEGMENT as u64) as usize;
        let read = file.read_at(&mut chunk[..want], offset)?;
        if read == 0 {
            break; // the file shrank (a log rotated): what there was is sent
        }
        let data = &chunk[..read];
        match sparse {
            // Runs of pages that are not all zeros.
            true => {
                let mut start = None;
                for (index, page) in data.chunks(PAGE).enumerate() {
                    let zero = page.iter().all(|&b| b == 0);
                    match (start, zero) {
                        (None, false) => start = Some(index * PAGE),
                        (Some(first), true) => {
                            sent += send_segment(conn, at(offset + first as u64), &data[first..index * PAGE])?;
                            start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(first) = start {
                    sent += send_segment(conn, at(offset + first as u64), &data[first..])?;
                }
            }
            false => sent += send_segment(conn, at(offset), data)?,
        }
        offset += read as u64;
    }
    Ok(sent)
}

/// The granularity at which zeros are left out.
const PAGE: usize = 4096;

/// Sends one segment, as an LZ4 block if that is smaller; the bytes that went.
fn send_segment(conn: &mut impl Write, offset: u64, data: &[u8]) -> Result<u64, WireError> {
    let block = lz4_flex::block::compress(data);
    let (packed, bytes) = match block.len() < data.len() {
        true => (Some(block.len() as u32), block.as_slice()),
        false => (None, data),
    };
    send(
        conn,
        &Message::Segment {
            offset,
            len: data.len() as u32,
            packed,
        },
    )?;
    conn.write_all(bytes)?;
    Ok(bytes.len() as u64)
}

/// Receives a file `send_file` sends into `file`, at most `max` bytes
/// long; the file is made as long as announced (holes where nothing came).
pub fn receive_file(conn: &mut impl Read, file: &File, max: u64) -> Result<u64, WireError> {
    let bytes = match receive(conn)? {
        Message::File { bytes } if bytes <= max => bytes,
        Message::File { bytes } => return Err(WireError::Bad(format!("a file of {bytes} bytes (at most {max})"))),
        Message::Failed { reason } => return Err(WireError::Bad(format!("a failure: {reason}"))),
        other => return Err(WireError::Bad(format!("{other:?} where a file was due"))),
    };
    if file.metadata()?.len() < bytes {
        file.set_len(bytes)?;
    }
    let mut chunk = vec![0u8; MAX_SEGMENT];
    let mut block = Vec::new();
    loop {
        match receive(conn)? {
            Message::Segment { offset, len, packed }
                if len as usize <= MAX_SEGMENT
                    && offset.checked_add(u64::from(len)).is_some_and(|end| end <= bytes)
                    && packed.is_none_or(|packed| packed < len) =>
            {
                let data = &mut chunk[..len as usize];
                match packed {
                    None => conn.read_exact(data)?,
                    Some(packed) => {
                        block.resize(packed as usize, 0);
                        conn.read_exact(&mut block)?;
                        match lz4_flex::block::decompress_into(&block, data) {
                            Ok(n) if n == data.len() => {}
                            _ => {
                                return Err(WireError::Bad(format!(
                                    "a segment of {len} bytes at {offset} whose LZ4 block does not unpack to it"
                                )))
                            }
                        }
                    }
                }
                file.write_all_at(data, offset)?;
            }
            Message::Segment { offset, len, .. } => {
                return Err(WireError::Bad(format!(
                    "a segment of {len} bytes at {offset} in a file of {bytes}"
                )))
            }
            Message::FileEnd => return Ok(bytes),
            other => return Err(WireError::Bad(format!("{other:?} inside a file"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty file to receive into.
    fn empty_file(path: &std::path::Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_sparse_file_arrives_whole_and_its_zeros_do_not_travel() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("a");
        let mut bytes = vec![0u8; 3 * MAX_SEGMENT + 100];
        bytes[10] = 1;
        bytes[3 * MAX_SEGMENT + 99] = 7;
        // Scattered pages in one segment's worth: only they travel.
        bytes[MAX_SEGMENT + 5 * PAGE] = 3;
        bytes[MAX_SEGMENT + 9 * PAGE + 17] = 4;
        std::fs::write(&source, &bytes).unwrap();
        let mut wire = Vec::new();
        let file = File::open(&source).unwrap();
        let sent = send_file(&mut wire, &file, 0, bytes.len() as u64, true).unwrap();
        // Three whole pages and the file's last 100 bytes, each nearly all
        // zeros: as LZ4 blocks, a few dozen bytes each.
        assert!(sent < PAGE as u64, "{sent} bytes for the pages that are not zeros");
        assert!(
            wire.len() < 2 * MAX_SEGMENT + 1000,
            "zero chunks were sent: {}",
            wire.len()
        );
        let copy = empty_file(&dir.path().join("b"));
        let got = receive_file(&mut wire.as_slice(), &copy, 1 << 30).unwrap();
        assert_eq!(got, bytes.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), bytes);
    }

    #[test]
    fn segments_lz4_does_not_shrink_go_raw_and_a_block_must_unpack_to_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("a");
        let noise = hex::decode(crate::containers::random_hex(3 * PAGE)).unwrap();
        std::fs::write(&source, &noise).unwrap();
        let mut wire = Vec::new();
        let sent = send_file(&mut wire, &File::open(&source).unwrap(), 0, noise.len() as u64, false).unwrap();
        assert_eq!(sent, noise.len() as u64, "noise goes as it is");
        let copy = empty_file(&dir.path().join("b"));
        receive_file(&mut wire.as_slice(), &copy, 1 << 20).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), noise);

        let block = lz4_flex::block::compress(&[6u8; 1000]);
        for (len, packed, bytes) in [
            (999, block.len(), block.clone()),      // unpacks to more
            (1001, block.len(), block.clone()),     // to fewer
            (1000, block.len(), vec![0xf0; 20]),    // not LZ4
            (100, 100, vec![0; 100]),               // "packed" no smaller
            (1000, block.len() - 1, block.clone()), // cut short
        ] {
            let mut wire = Vec::new();
            send(&mut wire, &Message::File { bytes: 4096 }).unwrap();
            let packed = Some(packed as u32);
            send(&mut wire, &Message::Segment { offset: 0, len, packed }).unwrap();
            wire.extend_from_slice(&bytes);
            send(&mut wire, &Message::FileEnd).unwrap();
            let err = receive_file(&mut wire.as_slice(), &copy, 1 << 20).unwrap_err();
            assert!(err.to_string().contains("a segment of"), "{err}");
        }
    }

    #[test]
    fn files_joined_land_one_after_another_past_what_the_receiver_has() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "hello world").unwrap();
        std::fs::write(dir.path().join("b"), "and more").unwrap();
        let (a, b) = (
            File::open(dir.path().join("a")).unwrap(),
            File::open(dir.path().join("b")).unwrap(),
        );
        let mut wire = Vec::new();
        let sent = send_joined(&mut wire, 6, &[(&a, 6, 11), (&b, 0, 8)]).unwrap();
        assert!(sent <= 13, "{sent}");
        std::fs::write(dir.path().join("copy"), "hello ").unwrap();
        let copy = File::options()
            .read(true)
            .write(true)
            .open(dir.path().join("copy"))
            .unwrap();
        assert_eq!(receive_file(&mut wire.as_slice(), &copy, 100).unwrap(), 19);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("copy")).unwrap(),
            "hello worldand more"
        );
    }

    #[test]
    fn the_fuzz_targets_seed_is_a_file_that_lands() {
        // Rotated logs (none), a file of a raw and an LZ4 segment, then Moved.
        let seed = include_bytes!("../../../../fuzz/seeds/migration_wire/file");
        let mut input = &seed[..];
        assert!(matches!(
            receive(&mut input).unwrap(),
            Message::RotatedLogs { count: 0 }
        ));
        let dir = tempfile::tempdir().unwrap();
        let copy = empty_file(&dir.path().join("copy"));
        assert_eq!(receive_file(&mut input, &copy, 1 << 20).unwrap(), 8192);
        let bytes = std::fs::read(dir.path().join("copy")).unwrap();
        assert_eq!(&bytes[..4], b"log\n");
        assert_eq!(&bytes[4096..4126], &[b'a'; 30][..]);
        assert!(matches!(
            receive(&mut input).unwrap(),
            Message::Moved { output_frames: 3 }
        ));
    }

    #[test]
    fn a_segment_past_the_announced_size_or_an_oversized_message_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copy = File::create(dir.path().join("b")).unwrap();
        let mut wire = Vec::new();
        send(&mut wire, &Message::File { bytes: 10 }).unwrap();
        send(
            &mut wire,
            &Message::Segment {
                offset: 8,
                len: 4,
                packed: None,
            },
        )
        .unwrap();
        wire.extend_from_slice(&[1, 2, 3, 4]);
        let err = receive_file(&mut wire.as_slice(), &copy, 100).unwrap_err();
        assert!(err.to_string().contains("a segment of 4 bytes at 8"), "{err}");

        let mut wire = Vec::new();
        send(&mut wire, &Message::File { bytes: 1000 }).unwrap();
        let err = receive_file(&mut wire.as_slice(), &copy, 100).unwrap_err();
        assert!(err.to_string().contains("at most 100"), "{err}");

        let huge = ((MAX_MESSAGE + 1) as u32).to_le_bytes();
        let err = receive(&mut &huge[..]).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        assert!(matches!(
            receive(&mut &b"\x03\x00\x00\x00{x}"[..]),
            Err(WireError::Bad(_))
        ));
        // The copy was never written past what it announced.
        assert!(std::fs::metadata(dir.path().join("b")).unwrap().len() <= 10);
    }
}
