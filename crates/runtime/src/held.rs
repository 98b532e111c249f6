//! A stopped container's files, reachable: its VM (a clone like any run)
//! is started with the container's disks and no command, so the agent
//! holds its filesystems mounted and serves its exec port, exactly as for a
//! running container (`docker cp`, `diff` and `export` of a stopped one).
//! The container's disk lock keeps its supervisor from starting the same
//! disks meanwhile. Dropping the hold powers the VM off.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::container::{ContainerDir, ContainerError};
use crate::run::{Attachment, OutputStream, RunError, Steer};

/// A held container's VM, up until dropped.
pub struct HeldContainer {
    pub id: String,
    steer: Steer,
    run: Option<JoinHandle<Result<i32, RunError>>>,
    sockets: PathBuf,
    _disks: std::fs::File,
}

/// Hands the steer over once the agent has the (empty) run request.
struct Handover(Option<mpsc::Sender<Steer>>);

impl Attachment for Handover {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        if stream == OutputStream::Stderr {
            eprint!("{}", String::from_utf8_lossy(data));
        }
    }

    fn started(&mut self, steer: Steer) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(steer);
        }
    }
}

impl HeldContainer {
    /// Starts the container's VM without its command; returns once the
    /// agent has been asked to hold (its exec port follows shortly: see
    /// `is_up`).
    pub fn start(dir: &ContainerDir) -> Result<HeldContainer, ContainerError> {
        let disks = dir.lock_disks(false)?;
        let spec = dir.spec()?;
        let mut request = crate::shim::request_for(&spec).map_err(ContainerError::Hold)?;
        request.hold = true;
        // A held VM only serves file operations: no NIC, no published ports.
        request.network = Default::default();
        let sockets = crate::run_dir().join("h").join(&dir.id[..dir.id.len().min(16)]);
        let _ = std::fs::remove_dir_all(&sockets);
        std::fs::create_dir_all(&sockets).map_err(|source| ContainerError::Io {
            what: "creating the held container's socket directory".into(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let run = {
            let (path, sockets, id) = (dir.path.clone(), sockets.clone(), dir.id.clone());
            std::thread::spawn(move || {
                crate::run::run_in(
                    &path,
                    &sockets,
                    &id,
                    &request,
                    &mut Handover(Some(tx)),
                    None,
                    crate::run::GivenVm::None,
                )
            })
        };
        match rx.recv() {
            Ok(steer) => Ok(HeldContainer {
                id: dir.id.clone(),
                steer,
                run: Some(run),
                sockets,
                _disks: disks,
            }),
            // The run ended before the agent took the request: say why.
            Err(_) => {
                let _ = std::fs::remove_dir_all(&sockets);
                Err(ContainerError::Hold(match run.join() {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(code)) => format!("the VM ended at once (status {code})"),
                    Err(_) => "the VM's thread panicked".into(),
                }))
            }
        }
    }

    /// The VM's vsock socket (the VMM's `CONNECT port` handshake).
    pub fn vsock_path(&self) -> PathBuf {
        self.sockets.join("vsock.sock")
    }

    /// Whether the VM still runs.
    pub fn is_up(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.is_finished())
    }
}

impl Drop for HeldContainer {
    fn drop(&mut self) {
        self.steer.stdin_eof();
        if let Some(run) = self.run.take() {
            if let Ok(Err(e)) = run.join() {
                eprintln!("hull: the held container {}: {e}", self.id);
            }
        }
        let _ = std::fs::remove_dir_all(&self.sockets);
    }
}
