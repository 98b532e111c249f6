//! Taking a running VM from another hull-vmm (`Start::Incoming`): one
//! connection on the listening socket, the source's hello, guest memory
//! mapped from the same template when this host has it (zeros otherwise).
//! Then the VMM makes the VM's devices and vCPUs, jails itself and starts
//! its device and vCPU threads (parked) while the pages come, and only the
//! state, applied in place, is left for the downtime. The guest runs only once
//! the source says `Go` (`vm::run`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::{Start, VmConfig, VmError};
use crate::device_manager::DeviceManager;
use crate::migration::receive::{self, check_hello, read_hello, receive_memory, welcome};
use crate::migration::stream::{DiskShape, SlotMacs, VmShape};
use crate::migration::{disks, IncomingDisks, MigrationError};
use crate::snapshot::{self, VmState};

/// How long the source may stay silent before this side gives up.
const SILENCE: Duration = Duration::from_secs(120);

/// A VM being taken: its source's hello answered, guest memory mapped
/// (from the same template when this host has it); its pages and state
/// are still to come on `conn` (`receive`), while the VMM makes the VM's
/// devices, vCPUs and threads, so that little is left for the downtime.
pub(super) struct Accepted {
    pub memory: GuestMemoryMmap,
    /// A file, so that the jailed VMM reads and writes it with read(2) and
    /// write(2).
    pub conn: std::fs::File,
    /// The template whose pages the memory is mapped from, if it is.
    pub clone_of: Option<[u8; 32]>,
    /// What the source's guest sends from, by NIC slot: announced here
    /// once the guest runs.
    pub guest_macs: SlotMacs,
}

fn failed(e: MigrationError) -> VmError {
    VmError::Migration(e.to_string())
}

/// Waits on `listen` for the source and accepts the VM `config` describes.
pub(super) fn accept(listen: &Path, template: Option<&Path>, config: &VmConfig) -> Result<Accepted, VmError> {
    let listen_err = |source| VmError::Control {
        path: listen.display().to_string(),
        source,
    };
    // Made as the control socket is: owner-only, a stale one replaced.
    let listener = crate::control::bind(listen)?;
    let (mut conn, _) = listener.accept().map_err(listen_err)?;
    let _ = std::fs::remove_file(listen);
    conn.set_read_timeout(Some(SILENCE)).map_err(listen_err)?;
    match hello(&mut conn, template, config) {
        Ok((memory, clone_of, guest_macs)) => Ok(Accepted {
            memory,
            conn: std::os::fd::OwnedFd::from(conn).into(),
            clone_of,
            guest_macs,
        }),
        Err(e) => {
            receive::abort(&mut conn, &e.to_string());
            Err(e)
        }
    }
}

fn hello(
    conn: &mut UnixStream,
    template: Option<&Path>,
    config: &VmConfig,
) -> Result<(GuestMemoryMmap, Option<[u8; 32]>, SlotMacs), VmError> {
    let hello = read_hello(conn).map_err(failed)?;
    let memory_bytes = config.memory_mib << 20;
    let ours = match template.map(snapshot::snapshot_id).transpose() {
        Ok(id) => id,
        Err(e) => {
            let _ = welcome(conn, Err(format!("this host's template: {e}")));
            return Err(e.into());
        }
    };
    let made = VmShape {
        memory_bytes,
        vcpus: config.vcpus.into(),
        devices: crate::device_manager::layout(config),
        nics_on_taps: crate::device_manager::nics_on_taps(config),
        disks: disk_shapes(config)?,
    };
    if let Err(reason) = check_hello(&hello, &made) {
        let _ = welcome(conn, Err(reason.clone()));
        return Err(VmError::Migration(format!("refused the VM: {reason}")));
    }
    let clone_of = ours.filter(|id| hello.template == Some(*id));
    let memory = match (clone_of, template) {
        (Some(_), Some(dir)) => snapshot::map_memory(dir, config.memory_mib)?,
        _ => super::builder::anonymous_memory(config.memory_mib)?,
    };
    welcome(conn, Ok(clone_of.is_some())).map_err(failed)?;
    Ok((memory, clone_of, hello.guest_macs))
}

/// Whether the read-write disks' content comes with the VM.
fn receives_disks(config: &VmConfig) -> bool {
    matches!(
        config.start,
        Start::Incoming {
            receive_disks: true,
            ..
        }
    )
}

/// The disks `config` gives, as the source's hello must name them.
fn disk_shapes(config: &VmConfig) -> Result<Vec<DiskShape>, VmError> {
    let receiving = receives_disks(config);
    config
        .disks
        .iter()
        .map(|disk| {
            let bytes = std::fs::metadata(&disk.path)
                .map_err(|source| VmError::Disk {
                    path: disk.path.display().to_string(),
                    source,
                })?
                .len();
            Ok(DiskShape {
                bytes: crate::devices::virtio::block::whole_sectors(bytes),
                read_only: disk.read_only,
                travels: disks::travels(receiving, disk.read_only),
            })
        })
        .collect()
}

/// Takes the pages into `memory` (and the disks that travel into the
/// devices' files) and then the VM's state, checked against `config`. On
/// an error the source is told.
pub(super) fn receive(
    conn: &mut std::fs::File,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    devices: &DeviceManager,
) -> Result<VmState, VmError> {
    let taken = incoming_disks(config, devices).and_then(|disks| take(conn, memory, config, &disks));
    if let Err(e) = &taken {
        receive::abort(conn, &e.to_string());
    }
    taken
}

/// The devices' copies of the disks that travel, emptied for the source.
fn incoming_disks(config: &VmConfig, devices: &DeviceManager) -> Result<IncomingDisks, VmError> {
    let receiving = receives_disks(config);
    let disk_err = |e: std::io::Error| VmError::Migration(format!("the disks that come with the VM: {e}"));
    let copies = devices
        .disks()
        .map_err(disk_err)?
        .into_iter()
        .map(|disk| disks::travels(receiving, disk.read_only).then_some((disk.file, disk.bytes)))
        .collect();
    IncomingDisks::new(copies).map_err(disk_err)
}

fn take(
    conn: &mut std::fs::File,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    disks: &IncomingDisks,
) -> Result<VmState, VmError> {
    let arrived = receive_memory(conn, memory, config.memory_mib << 20, disks, &mut |round, pages| {
        eprintln!("hull-vmm: migration round {round} in: {pages} pages")
    })
    .map_err(failed)?;
    crate::trace::mark("migration: the state is in");
    let state = snapshot::decode_unsealed(&arrived.state, "the migrated VM's state")?;
    super::builder::check_shape(&state, config)?;
    crate::trace::mark("migration: the state is decoded");
    eprintln!(
        "hull-vmm: the VM arrived: {} pages in {} rounds",
        arrived.pages, arrived.rounds
    );
    Ok(state)
}
