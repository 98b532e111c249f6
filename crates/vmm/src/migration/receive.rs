//! The destination's side: answer the source's hello, take its pages into
//! guest memory, keep its state, and run the guest only on `Go`.
//!
//! Everything from the source is checked before it is used: page numbers
//! against the guest's size, each frame in its place, the state once.
//! Until `Go`, nothing here has run the guest: a migration that fails
//! leaves a VM that its supervisor discards.

use std::io::{BufReader, Read, Write};

use crate::guest_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disks::IncomingDisks;
use super::send::unexpected;
use super::stream::{read_frame, write_frame, DiskShape, Frame, Hello, VmShape, Welcome, PAGE_SIZE, VERSION};
use super::trees::IncomingTrees;
use super::MigrationError;
use crate::devices::virtio::DeviceKind;

/// Reads the source's hello. The caller checks it against what it can
/// run (`check_hello`) and prepares guest memory to match (the template's
/// pages, or zeros) before `welcome`.
pub fn read_hello(conn: &mut impl Read) -> Result<Hello, MigrationError> {
    match read_frame(conn)? {
        Some(Frame::Hello(hello)) => Ok(hello),
        other => Err(unexpected("a hello", other)),
    }
}

/// Why this destination, made as `ours`, cannot take the VM `hello`
/// announces, if it cannot.
pub fn check_hello(hello: &Hello, ours: &VmShape) -> Result<(), String> {
    if hello.version != VERSION {
        return Err(format!(
            "the source speaks migration version {}; this hull-vmm speaks {VERSION}",
            hello.version
        ));
    }
    if hello.page_size as usize != PAGE_SIZE {
        return Err(format!("the source's pages are {} bytes", hello.page_size));
    }
    let theirs = &hello.shape;
    if theirs.memory_bytes != ours.memory_bytes {
        return Err(format!(
            "the VM has {} MiB of memory; this destination was made for {} MiB",
            theirs.memory_bytes >> 20,
            ours.memory_bytes >> 20
        ));
    }
    if theirs.vcpus != ours.vcpus {
        return Err(format!(
            "the VM has {} vCPUs; this destination was made for {}",
            theirs.vcpus, ours.vcpus
        ));
    }
    if theirs.devices != ours.devices {
        return Err(format!(
            "the VM's devices are {}; this destination was made with {}",
            device_names(&theirs.devices),
            device_names(&ours.devices)
        ));
    }
    if theirs.disks != ours.disks {
        return Err(format!(
            "the VM's disks are {}; this destination's are {}",
            disk_names(&theirs.disks),
            disk_names(&ours.disks)
        ));
    }
    if theirs.nics_on_taps != ours.nics_on_taps {
        return Err(format!(
            "the VM's NICs on host taps are {:?}; this destination has taps for {:?}",
            &theirs.nics_on_taps[..theirs.nics_on_taps.len().min(8)],
            ours.nics_on_taps
        ));
    }
    Ok(())
}

/// Disks as "[1024 MiB rw travels, 512 MiB ro]" (at most 16 named: the
/// source's list is untrusted).
fn disk_names(disks: &[DiskShape]) -> String {
    let named: Vec<String> = disks
        .iter()
        .take(16)
        .map(|d| {
            let mode = if d.read_only { "ro" } else { "rw" };
            let travels = if d.travels { " travels" } else { "" };
            format!("{} bytes {mode}{travels}", d.bytes)
        })
        .collect();
    format!("[{}]{}", named.join(", "), if disks.len() > 16 { " ..." } else { "" })
}

/// Device types as "block, vsock, rng, net" (a type this VMM does not know
/// by its number). The source's list is untrusted: at most 64 are named.
fn device_names(types: &[u32]) -> String {
    let mut names: Vec<String> = types
        .iter()
        .take(64)
        .map(|&t| DeviceKind::of(t).map_or_else(|| format!("type {t}"), |kind| kind.label().to_string()))
        .collect();
    if types.len() > 64 {
        names.push(format!("... ({} in all)", types.len()));
    }
    match names.is_empty() {
        true => "none".into(),
        false => format!("[{}]", names.join(", ")),
    }
}

/// Answers the hello: refused with `reason`, or accepted, saying whether
/// guest memory already holds the source's template.
pub fn welcome(conn: &mut impl Write, answer: Result<bool, String>) -> Result<(), MigrationError> {
    let welcome = match &answer {
        Ok(has_template) => Welcome::Accepted {
            has_template: *has_template,
        },
        Err(reason) => Welcome::Refused { reason: reason.clone() },
    };
    write_frame(conn, &Frame::Welcome(welcome))?;
    answer.map(|_| ()).map_err(MigrationError::Refused)
}

/// How much of the stream is read at once.
const IN_BUFFER: usize = 256 << 10;

/// What the source sent, once it is all here.
#[derive(Debug)]
pub struct Incoming {
    /// The VM's state, as the source's `Source::state` encoded it.
    pub state: Vec<u8>,
    pub rounds: u32,
    pub pages: u64,
}

/// Takes pages into `memory`, disk data into `disks` and shared
/// directories' files into `trees` until the source is done (the disks
/// and directories then synced), answering each round's end once its
/// pages are in; progress (round, pages it sent) goes to `progress`. An
/// early state is taken and not looked at (`receive_memory_with`).
pub fn receive_memory<C: Read + Write>(
    conn: &mut C,
    memory: &GuestMemoryMmap,
    memory_bytes: u64,
    disks: &IncomingDisks,
    trees: &mut IncomingTrees,
    progress: &mut dyn FnMut(u32, u64),
) -> Result<Incoming, MigrationError> {
    receive_memory_with(conn, memory, memory_bytes, disks, trees, progress, &mut |_| Ok(()))
}

/// `receive_memory`, the source's early state (ahead of any page) given
/// to `early_state`, which says why the VM cannot be taken if it cannot:
/// the source then hears it at round 0's end, before the rest of its
/// memory travels.
pub fn receive_memory_with<C: Read + Write>(
    conn: &mut C,
    memory: &GuestMemoryMmap,
    memory_bytes: u64,
    disks: &IncomingDisks,
    trees: &mut IncomingTrees,
    progress: &mut dyn FnMut(u32, u64),
    early_state: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<Incoming, MigrationError> {
    let guest_pages = memory_bytes / PAGE_SIZE as u64;
    let in_guest = |first: u64, count: u64| -> Result<GuestAddress, MigrationError> {
        match first.checked_add(count) {
            Some(end) if count > 0 && end <= guest_pages => Ok(GuestAddress(first * PAGE_SIZE as u64)),
            _ => Err(MigrationError::OutOfRange {
                first,
                count,
                pages: guest_pages,
            }),
        }
    };
    let write = |data: &[u8], at: GuestAddress| {
        memory
            .write_slice(data, at)
            .map_err(|e| MigrationError::Memory(format!("writing guest memory at {:#x}: {e}", at.0)))
    };
    let zeros = vec![0u8; PAGE_SIZE];
    let mut incoming = Incoming {
        state: Vec::new(),
        rounds: 0,
        pages: 0,
    };
    let mut state = None;
    let mut early = false;
    // Many frames a read: a source's late rounds are runs of small frames.
    let mut input = BufReader::with_capacity(IN_BUFFER, &mut *conn);
    loop {
        match read_frame(&mut input)? {
            Some(Frame::Pages { first, data }) => {
                let count = (data.len() / PAGE_SIZE) as u64;
                write(&data, in_guest(first, count)?)?;
                incoming.pages = incoming.pages.saturating_add(count);
            }
            Some(Frame::Zeros { first, count }) => {
                let at = in_guest(first, u64::from(count))?;
                for page in 0..u64::from(count) {
                    let page_at = GuestAddress(at.0 + page * PAGE_SIZE as u64);
                    // A page already zero here (never written, or zeroed by
                    // an earlier round) is only read: no write, no copy of a
                    // template's page made.
                    if !already_zero(memory, page_at) {
                        write(&zeros, page_at)?;
                    }
                }
                incoming.pages = incoming.pages.saturating_add(u64::from(count));
            }
            Some(Frame::Disk { disk, offset, data }) => disks.write(disk, offset, &data)?,
            Some(Frame::DiskZeros { disk, offset, bytes }) => disks.zero(disk, offset, bytes)?,
            Some(Frame::TreeEntry(entry)) => trees.entry(entry)?,
            Some(Frame::TreeData { share, offset, data }) => trees.data(share, offset, &data)?,
            Some(Frame::RoundEnd { round, pages }) => {
                write_frame(input.get_mut(), &Frame::RoundIn { round })?;
                incoming.rounds = round.saturating_add(1);
                progress(round, pages);
            }
            Some(Frame::State(bytes)) if state.is_none() => state = Some(bytes),
            // Once, first: what it is for is a refusal before the pages.
            Some(Frame::EarlyState(bytes)) if !early && incoming.rounds == 0 && incoming.pages == 0 => {
                early = true;
                early_state(&bytes).map_err(MigrationError::Refused)?;
            }
            // The source waits for `Ready` now: nothing may follow.
            Some(Frame::Done) if !input.buffer().is_empty() => {
                return Err(MigrationError::Unexpected("more after done".into()))
            }
            Some(Frame::Done) => match state.take() {
                Some(bytes) => {
                    disks.sync()?;
                    trees.finish()?;
                    incoming.state = bytes;
                    return Ok(incoming);
                }
                None => return Err(MigrationError::Unexpected("done before the VM state".into())),
            },
            Some(Frame::Abort { reason }) => return Err(MigrationError::Aborted(reason)),
            other => {
                return Err(unexpected(
                    "pages, disk data, shared files, a round's end, the state or done",
                    other,
                ))
            }
        }
    }
}

/// Whether the guest page at `at` (in range) holds only zeros.
fn already_zero(memory: &GuestMemoryMmap, at: GuestAddress) -> bool {
    let Ok(slice) = memory.get_slice(at, PAGE_SIZE) else {
        return false;
    };
    let guard = slice.ptr_guard();
    // SAFETY: the slice is PAGE_SIZE bytes of one region of `memory`, which
    // outlives the borrow, and nothing writes guest memory while a
    // migration's pages arrive (the VM's threads stand parked until `Go`).
    let page = unsafe { std::slice::from_raw_parts(guard.as_ptr(), PAGE_SIZE) };
    super::send::is_zero(page)
}

/// Tells the source the VM is ready to run here and waits for its `Go`:
/// only after `Ok` may the caller run the guest (then `resumed`).
pub fn ready<C: Read + Write>(conn: &mut C) -> Result<(), MigrationError> {
    write_frame(conn, &Frame::Ready)?;
    match read_frame(conn)? {
        Some(Frame::Go) => Ok(()),
        Some(Frame::Abort { reason }) => Err(MigrationError::Aborted(reason)),
        other => Err(unexpected("go", other)),
    }
}

/// Tells the source the guest runs here.
pub fn resumed(conn: &mut impl Write) -> Result<(), MigrationError> {
    write_frame(conn, &Frame::Resumed)?;
    Ok(())
}

/// Tells the source this side gives up (it keeps running its guest).
pub fn abort(conn: &mut impl Write, reason: &str) {
    let _ = write_frame(
        conn,
        &Frame::Abort {
            reason: reason.to_string(),
        },
    );
}
