//! Snapshot files: a paused VM's state and its memory.
//!
//! A snapshot is a directory with two files:
//! - `state`: `HULLSNAP`, the format version, the payload length, the payload's
//!   SHA-256, then the payload (`VmState`, postcard-encoded). Everything is
//!   checked before a byte is decoded, so a truncated, corrupted or foreign
//!   file is refused with a clear error and never half-restores a VM.
//! - `memory`: guest memory, byte for byte, zero pages left as holes. A
//!   restore maps it `MAP_PRIVATE`: every clone shares its pages through the
//!   page cache and pays only for the pages it writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::guest_memory::{GuestMemoryMmap, GuestRegionMmap};
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub use crate::devices::serial::SerialRegs;
pub use crate::devices::virtio::persist::{DeviceState, QueueRegs};

/// Bumped whenever `VmState` changes shape; older snapshots are refused.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"HULLSNAP";
const HEADER_BYTES: usize = 8 + 4 + 8 + 32;
/// Where the header holds the payload's length (little-endian u64) and its
/// SHA-256, which is also the snapshot's identity.
const LENGTH: std::ops::Range<usize> = 12..20;
const DIGEST: std::ops::Range<usize> = 20..HEADER_BYTES;
/// A state file is a few hundred KiB at most; anything larger is not ours.
const MAX_PAYLOAD: u64 = 64 << 20;
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
const PAGE: usize = 4096;

/// Everything but memory that a paused VM is.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub memory_mib: u64,
    pub vcpus: Vec<VcpuState>,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub serial: SerialRegs,
    /// virtio-mmio devices in slot order.
    pub devices: Vec<DeviceState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM let us read.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} is not a hull snapshot state file")]
    NotASnapshot(String),
    #[error("snapshot {path} has format version {found}; this hull-vmm reads version {FORMAT_VERSION}: recreate the template")]
    Version { path: String, found: u32 },
    #[error("snapshot {0} is truncated")]
    Truncated(String),
    #[error("snapshot {0} is corrupted (checksum mismatch)")]
    Corrupted(String),
    #[error("snapshot {path} cannot be decoded: {detail}")]
    Decode { path: String, detail: String },
    #[error(
        "snapshot memory {path} holds {found} bytes; the state says {expected}: it is truncated or not this snapshot's"
    )]
    MemorySize { path: String, found: u64, expected: u64 },
    #[error("mapping snapshot memory {path}: {detail}")]
    Map { path: String, detail: String },
    #[error("encoding the VM state: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

pub fn memory_path(dir: &Path) -> PathBuf {
    dir.join(MEMORY_FILE)
}

/// `state` as the bytes of a state file (header, checksum, payload): what
/// `write_state` stores and a migration sends.
pub fn encode_state(state: &VmState) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The state for a stream whose frames carry their own checksum (a
/// migration's): its format version and the encoded state, without the
/// file's digest, which would only be computed and checked twice more
/// while the guest stands still.
pub fn encode_unsealed(state: &VmState) -> Result<Vec<u8>, SnapshotError> {
    let bytes = FORMAT_VERSION.to_le_bytes().to_vec();
    postcard::to_extend(state, bytes).map_err(|e| SnapshotError::Encode(e.to_string()))
}

/// What `encode_unsealed` made; `what` names it in errors.
pub fn decode_unsealed(bytes: &[u8], what: &str) -> Result<VmState, SnapshotError> {
    let Some((version, payload)) = bytes.split_first_chunk::<4>() else {
        return Err(SnapshotError::Truncated(what.to_string()));
    };
    let found = u32::from_le_bytes(*version);
    if found != FORMAT_VERSION {
        return Err(SnapshotError::Decode {
            path: what.to_string(),
            detail: format!("state format version {found}; this hull-vmm reads version {FORMAT_VERSION}"),
        });
    }
    decode_payload(payload, what)
}

fn decode_payload(payload: &[u8], what: &str) -> Result<VmState, SnapshotError> {
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Decode {
        path: what.to_string(),
        detail: e.to_string(),
    })
}

/// A snapshot's identity: the SHA-256 of its state, which its state file
/// carries. States differ between any two saved VMs (registers, clock), so
/// two hosts holding a template with the same identity hold the same
/// snapshot, its memory file included (written with it, never changed).
pub fn snapshot_id(dir: &Path) -> Result<[u8; 32], SnapshotError> {
    let path = state_path(dir);
    let mut header = [0u8; HEADER_BYTES];
    File::open(&path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(io_err(&path))?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot(path.display().to_string()));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&header[DIGEST]);
    Ok(id)
}

/// Writes `state` to `dir/state` (temp file, fsync, rename).
pub fn write_state(dir: &Path, state: &VmState) -> Result<(), SnapshotError> {
    let bytes = encode_state(state)?;
    let path = state_path(dir);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Reads and checks `dir/state`.
pub fn read_state(dir: &Path) -> Result<VmState, SnapshotError> {
    read_state_with_id(dir).map(|(state, _)| state)
}

/// `read_state`, and the snapshot's identity (`snapshot_id`) from the same
/// bytes.
pub fn read_state_with_id(dir: &Path) -> Result<(VmState, [u8; 32]), SnapshotError> {
    let path = state_path(dir);
    let mut file = File::open(&path).map_err(io_err(&path))?;
    // The header, then at most the payload it announces and one byte more
    // (to tell a longer file): a foreign file is never read whole.
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    (&mut file)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    if let Some(len) = bytes
        .get(LENGTH)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    {
        if len <= MAX_PAYLOAD {
            file.take(len + 1).read_to_end(&mut bytes).map_err(io_err(&path))?;
        }
    }
    let state = decode_state(&bytes, &path.display().to_string())?;
    // Decoded, so the header is whole and its digest is the payload's.
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[DIGEST]);
    Ok((state, id))
}

/// Checks and decodes the bytes of a state file; `path_for_errors` names it
/// in the errors.
pub fn decode_state(bytes: &[u8], path_for_errors: &str) -> Result<VmState, SnapshotError> {
    let shown = || path_for_errors.to_string();
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(SnapshotError::NotASnapshot(shown()));
    }
    let Some((header, payload)) = bytes.split_at_checked(HEADER_BYTES) else {
        return Err(SnapshotError::Truncated(shown()));
    };
    let word = |range: std::ops::Range<usize>| header[range].to_vec();
    let version = u32::from_le_bytes(word(8..12).try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: shown(),
            found: version,
        });
    }
    let len = u64::from_le_bytes(word(LENGTH).try_into().unwrap_or_default());
    if len > MAX_PAYLOAD {
        return Err(SnapshotError::Corrupted(shown()));
    }
    if (payload.len() as u64) < len {
        return Err(SnapshotError::Truncated(shown()));
    }
    if payload.len() as u64 > len || Sha256::digest(payload).as_slice() != &header[DIGEST] {
        return Err(SnapshotError::Corrupted(shown()));
    }
    decode_payload(payload, path_for_errors)
}

/// Writes guest memory to `dir/memory`, leaving zero pages as holes.
pub fn write_memory(dir: &Path, memory: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    let path = memory_path(dir);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(&path))?;
    for region in memory.iter() {
        let start = region.start_addr().0;
        let len = region.len() as usize;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| SnapshotError::Map {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        // SAFETY: the region maps `len` bytes at `host` for as long as `memory`
        // lives, and every vCPU is paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host, len) };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            file.write_all_at(page, start + (i * PAGE) as u64)
                .map_err(io_err(&path))?;
        }
        file.set_len(start + len as u64).map_err(io_err(&path))?;
    }
    file.sync_all().map_err(io_err(&path))
}

/// Maps `dir/memory` copy-on-write as guest memory of `mib` MiB at address 0.
pub fn map_memory(dir: &Path, mib: u64) -> Result<GuestMemoryMmap, SnapshotError> {
    let path = memory_path(dir);
    let file = File::open(&path).map_err(io_err(&path))?;
    let expected = mib << 20;
    let found = file.metadata().map_err(io_err(&path))?.len();
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path: path.display().to_string(),
            found,
            expected,
        });
    }
    let map_err = |detail: String| SnapshotError::Map {
        path: path.display().to_string(),
        detail,
    };
    // With a bitmap as long as the region (`new` would give an empty one).
    let region = MmapRegionBuilder::new_with_bitmap(expected as usize, AtomicBitmap::with_len(expected as usize))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .with_file_offset(FileOffset::new(file, 0))
        .build()
        .map_err(|e| map_err(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| map_err("bad region".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmState {
        VmState {
            memory_mib: 1,
            vcpus: Vec::new(),
            pic_master: kvm_irqchip::default(),
            pic_slave: kvm_irqchip::default(),
            ioapic: kvm_irqchip::default(),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 12345,
                ..Default::default()
            },
            serial: SerialRegs::default(),
            devices: vec![DeviceState {
                device_type: 2,
                features: 1 << 32,
                config: vec![1, 2, 3],
                queues: Vec::new(),
                queue_select: 0,
                device_features_select: 0,
                driver_features_select: 0,
                driver_features: 0,
                status: 15,
                config_generation: 0,
                interrupt_status: 0,
            }],
        }
    }

    /// A directory of the test's own, removed when dropped.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("hull-snap-").tempdir().unwrap()
    }

    #[test]
    fn state_round_trips() {
        let scratch = scratch();
        let dir = scratch.path();
        write_state(dir, &sample()).unwrap();
        let back = read_state(dir).unwrap();
        assert_eq!(back.clock.clock, 12345);
        assert_eq!(back.devices, sample().devices);
    }

    #[test]
    fn damaged_state_files_are_refused() {
        let scratch = scratch();
        let dir = scratch.path();
        write_state(dir, &sample()).unwrap();
        let path = state_path(dir);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(read_state(dir), Err(SnapshotError::Corrupted(_))));

        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(matches!(read_state(dir), Err(SnapshotError::Truncated(_))));

        let mut old = good.clone();
        old[8..12].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        let err = read_state(dir).unwrap_err();
        assert!(err.to_string().contains("format version 0"), "{err}");

        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(read_state(dir), Err(SnapshotError::NotASnapshot(_))));

        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(read_state(dir), Err(SnapshotError::Corrupted(_))));
    }

    #[test]
    fn a_snapshot_is_known_by_its_state_digest() {
        let scratch = scratch();
        let dir = scratch.path();
        write_state(dir, &sample()).unwrap();
        let id = snapshot_id(dir).unwrap();
        assert_eq!(&id[..], &encode_state(&sample()).unwrap()[20..52]);
        assert_eq!(read_state_with_id(dir).unwrap().1, id);
        let mut other = sample();
        other.clock.clock += 1;
        write_state(dir, &other).unwrap();
        assert_ne!(snapshot_id(dir).unwrap(), id);
        std::fs::write(
            state_path(dir),
            b"not a snapshot, but long enough to hold a header......",
        )
        .unwrap();
        assert!(matches!(snapshot_id(dir), Err(SnapshotError::NotASnapshot(_))));
    }

    #[test]
    fn a_migrated_state_goes_unsealed_and_checks_its_format_version() {
        let mut bytes = encode_unsealed(&sample()).unwrap();
        assert_eq!(decode_unsealed(&bytes, "x").unwrap().devices, sample().devices);
        assert!(matches!(
            decode_unsealed(&bytes[..3], "x"),
            Err(SnapshotError::Truncated(_))
        ));
        assert!(matches!(
            decode_unsealed(&bytes[..40], "x"),
            Err(SnapshotError::Decode { .. })
        ));
        bytes[0] ^= 0x80;
        let Err(e) = decode_unsealed(&bytes, "the migrated VM's state") else {
            panic!("another format version was taken");
        };
        assert!(e.to_string().contains("format version"), "{e}");
    }

    #[test]
    fn state_bytes_decode_like_the_file() {
        let scratch = scratch();
        let dir = scratch.path();
        write_state(dir, &sample()).unwrap();
        let bytes = std::fs::read(state_path(dir)).unwrap();
        assert_eq!(decode_state(&bytes, "x").unwrap().devices, sample().devices);
        assert!(matches!(decode_state(&[], "x"), Err(SnapshotError::NotASnapshot(_))));
        assert!(matches!(
            decode_state(&bytes[..30], "x"),
            Err(SnapshotError::Truncated(_))
        ));
    }

    #[test]
    fn memory_is_sparse_and_mapped_copy_on_write() {
        let scratch = scratch();
        let dir = scratch.path();
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        use vm_memory::Bytes;
        memory.write_slice(b"template", GuestAddress(0x3000)).unwrap();
        write_memory(dir, &memory).unwrap();
        let meta = std::fs::metadata(memory_path(dir)).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "zero pages are holes");

        let clone = map_memory(dir, 1).unwrap();
        let mut buf = [0u8; 8];
        clone.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(&buf, b"template");
        clone.write_slice(b"clone-1!", GuestAddress(0x3000)).unwrap();
        let again = map_memory(dir, 1).unwrap();
        again.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(&buf, b"template", "a clone's writes stay private");

        assert!(matches!(map_memory(dir, 2), Err(SnapshotError::MemorySize { .. })));
    }
}
