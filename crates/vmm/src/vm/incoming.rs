//! Taking a running VM from another hull-vmm (`Start::Incoming`): one
//! connection on the listening socket, the source's hello, guest memory
//! mapped from the same template when this host has it (zeros otherwise),
//! the pages, then the state, from which the VM is built as a restore
//! builds it. The guest runs only once the source says `Go` (`builder`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::{VmConfig, VmError};
use crate::migration::receive::{self, check_hello, read_hello, receive_memory, welcome};
use crate::migration::MigrationError;
use crate::snapshot::{self, VmState};

/// How long the source may stay silent before this side gives up.
const SILENCE: Duration = Duration::from_secs(120);

/// A VM's memory and state, arrived; the source is still on `conn`.
pub(super) struct Arrived {
    pub memory: GuestMemoryMmap,
    pub state: VmState,
    /// A file, so that the jailed VMM writes to it with write(2).
    pub conn: std::fs::File,
    /// The template whose pages the memory is mapped from, if it is.
    pub clone_of: Option<[u8; 32]>,
}

fn failed(e: MigrationError) -> VmError {
    VmError::Migration(e.to_string())
}

/// Waits on `listen` for the source, then takes the VM `config` describes.
pub(super) fn receive(listen: &Path, template: Option<&Path>, config: &VmConfig) -> Result<Arrived, VmError> {
    let listen_err = |source| VmError::Control {
        path: listen.display().to_string(),
        source,
    };
    // Made as the control socket is: owner-only, a stale one replaced.
    let listener = crate::control::bind(listen)?;
    let (mut conn, _) = listener.accept().map_err(listen_err)?;
    let _ = std::fs::remove_file(listen);
    conn.set_read_timeout(Some(SILENCE)).map_err(listen_err)?;
    match take(&mut conn, template, config) {
        Ok((memory, state, clone_of)) => Ok(Arrived {
            memory,
            state,
            conn: std::os::fd::OwnedFd::from(conn).into(),
            clone_of,
        }),
        Err(e) => {
            receive::abort(&mut conn, &e.to_string());
            Err(e)
        }
    }
}

fn take(
    conn: &mut UnixStream,
    template: Option<&Path>,
    config: &VmConfig,
) -> Result<(GuestMemoryMmap, VmState, Option<[u8; 32]>), VmError> {
    let hello = read_hello(conn).map_err(failed)?;
    let memory_bytes = config.memory_mib << 20;
    let ours = match template.map(snapshot::snapshot_id).transpose() {
        Ok(id) => id,
        Err(e) => {
            let _ = welcome(conn, Err(format!("this host's template: {e}")));
            return Err(e.into());
        }
    };
    if let Err(reason) = check_hello(&hello, memory_bytes) {
        let _ = welcome(conn, Err(reason.clone()));
        return Err(VmError::Migration(format!("refused the VM: {reason}")));
    }
    let clone_of = ours.filter(|id| hello.template == Some(*id));
    let memory = match (clone_of, template) {
        (Some(_), Some(dir)) => snapshot::map_memory(dir, config.memory_mib)?,
        _ => super::builder::anonymous_memory(config.memory_mib)?,
    };
    welcome(conn, Ok(clone_of.is_some())).map_err(failed)?;
    let arrived = receive_memory(conn, &memory, memory_bytes, &mut |round, dirty| {
        eprintln!("hull-vmm: migration round {round} in; {dirty} pages to come again")
    })
    .map_err(failed)?;
    crate::trace::mark("migration: the state is in");
    let state = snapshot::decode_state(&arrived.state, "the migrated VM's state")?;
    super::builder::check_shape(&state, config)?;
    eprintln!(
        "hull-vmm: the VM arrived: {} pages in {} rounds",
        arrived.pages, arrived.rounds
    );
    Ok((memory, state, clone_of))
}
