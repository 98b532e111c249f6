//! Taking a running VM from another hull-vmm (`Start::Incoming`): one
//! connection on the listening socket, the source's hello, guest memory
//! mapped from the same template when this host has it (zeros otherwise).
//! Then the VMM makes the VM's devices and vCPUs, jails itself and starts
//! its device and vCPU threads (parked) while the pages come, and only the
//! state, applied in place, is left for the downtime. The guest runs only once
//! the source says `Go` (`vm::run`).

use std::path::Path;
use std::time::Duration;

use crate::guest_memory::GuestMemoryMmap;

use super::{IncomingFrom, Start, VmConfig, VmError};
use crate::device_manager::DeviceManager;
use crate::migration::receive::{self, check_hello, read_hello, receive_memory_with, welcome};
use crate::migration::stream::{DiskShape, SlotMacs, VmShape};
use crate::migration::{disks, IncomingDisks, IncomingTrees, MigrationError};
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

/// Waits for the source (on the socket `from` names, or on the connection
/// it is) and accepts the VM `config` describes.
pub(super) fn accept(from: &IncomingFrom, template: Option<&Path>, config: &VmConfig) -> Result<Accepted, VmError> {
    let conn_err = |source| VmError::Control {
        path: match from {
            IncomingFrom::Listen(path) => path.display().to_string(),
            IncomingFrom::Connected(fd) => format!("the migration connection (descriptor {fd})"),
        },
        source,
    };
    let conn = match from {
        IncomingFrom::Listen(listen) => {
            // Made as the control socket is: owner-only, a stale one replaced.
            let listener = crate::control::bind(listen)?;
            let (conn, _) = listener.accept().map_err(conn_err)?;
            let _ = std::fs::remove_file(listen);
            std::os::fd::OwnedFd::from(conn)
        }
        IncomingFrom::Connected(fd) => inherited(*fd).map_err(conn_err)?,
    };
    set_silence(&conn, SILENCE).map_err(conn_err)?;
    let mut file = std::fs::File::from(conn);
    match hello(&mut file, template, config) {
        Ok((memory, clone_of, guest_macs)) => Ok(Accepted {
            memory,
            conn: file,
            clone_of,
            guest_macs,
        }),
        Err(e) => {
            receive::abort(&mut file, &e.to_string());
            Err(e)
        }
    }
}

/// Takes the socket this process was given at descriptor `fd` (a stream
/// socket of any family: hulld's TCP connection to the source's host).
fn inherited(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`; an fd
    // that is not an open socket makes it fail, and nothing is taken.
    let got = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut kind).cast(), &mut len) };
    if got != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if kind != libc::SOCK_STREAM {
        return Err(std::io::Error::other(format!("descriptor {fd} is not a stream socket")));
    }
    // SAFETY: an open stream socket handed to this process for it alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Bounds each read on `conn` by `silence` (SO_RCVTIMEO: any socket family).
fn set_silence(conn: &impl std::os::fd::AsRawFd, silence: Duration) -> std::io::Result<()> {
    let timeout = libc::timeval {
        tv_sec: silence.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given, on an open socket.
    let set = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    match set {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn hello(
    conn: &mut std::fs::File,
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
        travelling_shares: receiving_shares(config),
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

/// The shared directories whose files come with the VM, by number.
fn receiving_shares(config: &VmConfig) -> Vec<u8> {
    (0..)
        .zip(config.shares.iter().flatten())
        .filter(|(_, share)| share.receives)
        .map(|(index, _)| index)
        .collect()
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

/// A migrated VM's state, arrived: what a snapshot holds, and what its
/// devices' host sides held by slot (`DeviceManager::backend_states`).
pub(super) struct Arrived {
    pub state: VmState,
    pub backends: Vec<(u32, Vec<u8>)>,
}

/// Takes the pages into `memory` (and the disks that travel into the
/// devices' files) and then the VM's state, checked against `config`. The
/// source's early state, ahead of the pages, is decoded and checked the
/// same way and given to `rehearse` (which sets what it can of it, the
/// guest not run): an error there refuses the VM before its memory
/// travels. On an error the source is told.
pub(super) fn receive(
    conn: &mut std::fs::File,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    devices: &DeviceManager,
    rehearse: &mut dyn FnMut(&Arrived) -> Result<(), VmError>,
) -> Result<Arrived, VmError> {
    let taken = incoming_disks(config, devices)
        .and_then(|disks| Ok((disks, incoming_trees(devices)?)))
        .and_then(|(disks, mut trees)| take(conn, memory, config, &disks, &mut trees, rehearse));
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

/// The shared directories the source fills, by share number.
fn incoming_trees(devices: &DeviceManager) -> Result<IncomingTrees, VmError> {
    let mut roots: Vec<Option<std::os::fd::OwnedFd>> = Vec::new();
    for (share, root) in devices.receiving_roots().map_err(VmError::Migration)? {
        let at = usize::from(share);
        if roots.len() <= at {
            roots.resize_with(at + 1, || None);
        }
        roots[at] = Some(root.into());
    }
    Ok(IncomingTrees::new(roots))
}

fn take(
    conn: &mut std::fs::File,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    disks: &IncomingDisks,
    trees: &mut IncomingTrees,
    rehearse: &mut dyn FnMut(&Arrived) -> Result<(), VmError>,
) -> Result<Arrived, VmError> {
    let arrived = receive_memory_with(
        conn,
        memory,
        config.memory_mib << 20,
        disks,
        trees,
        &mut |round, pages| eprintln!("hull-vmm: migration round {round} in: {pages} pages"),
        &mut |early| {
            decode(early, config)
                .and_then(|early| rehearse(&early))
                .map_err(|e| format!("its state as the migration began: {e}"))
        },
    )
    .map_err(failed)?;
    crate::trace::mark("migration: the state is in");
    let state = decode(&arrived.state, config)?;
    crate::trace::mark("migration: the state is decoded");
    eprintln!(
        "hull-vmm: the VM arrived: {} pages in {} rounds",
        arrived.pages, arrived.rounds
    );
    Ok(state)
}

/// A state the source encoded (`MovedState`), checked against `config`.
fn decode(bytes: &[u8], config: &VmConfig) -> Result<Arrived, VmError> {
    let moved: super::migrate::MovedState = postcard::from_bytes(bytes)
        .map_err(|e| VmError::Migration(format!("the migrated VM's state cannot be decoded: {e}")))?;
    let state = snapshot::decode_unsealed(&moved.vm, "the migrated VM's state")?;
    super::builder::check_shape(&state, config)?;
    Ok(Arrived {
        state,
        backends: moved.backends,
    })
}
