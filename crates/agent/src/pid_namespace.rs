//! The container's own PID namespace: its command is PID 1 there, as under
//! Docker, and sees none of the VM's other processes (the agent, its mount
//! helpers); execs and hull's file helper (`docker cp`) join it. `--pid
//! host` (the VM's namespace, the only "host" a container in its own VM
//! has) keeps the command beside the agent.
//!
//! A thread's children go to its `pid_for_children` namespace, which
//! `unshare`/`setns` change for that thread alone: the spawning thread
//! switches for one spawn, under the spawn lock, and switches back.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::{Mutex, OnceLock};

/// Where a process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pids {
    /// A new namespace, whose PID 1 it is (the container's command).
    New,
    /// The container's namespace (an exec, hull's file helper), or the
    /// VM's when the container has none of its own.
    Container,
    /// The VM's, beside the agent (`--pid host`).
    Vm,
}

/// Makes and drops one PID namespace before the template's snapshot, on a
/// thread of its own: the kernel's first namespace below the VM's makes
/// the cache its PIDs come from, which every clone's first start would
/// otherwise make again.
pub fn warm_up() -> std::io::Result<()> {
    std::thread::spawn(|| {
        // SAFETY: unshare of this short-lived thread's pid_for_children only.
        match unsafe { libc::unshare(libc::CLONE_NEWPID) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the thread making a PID namespace panicked")))
}

/// Each container's namespace, once its command started in one: the VM's
/// own container under "", a joined one under its ID.
static CONTAINERS: Mutex<BTreeMap<String, File>> = Mutex::new(BTreeMap::new());

fn vm_namespace() -> std::io::Result<&'static File> {
    static VM: OnceLock<File> = OnceLock::new();
    if let Some(file) = VM.get() {
        return Ok(file);
    }
    // The agent's own (active) namespace, which unshare never changes.
    let file = File::open("/proc/self/ns/pid")?;
    Ok(VM.get_or_init(|| file))
}

fn set_for_children(namespace: &File) -> std::io::Result<()> {
    // SAFETY: setns on a namespace descriptor we hold.
    match unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWPID) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// While alive, this thread's children start in the namespace asked for;
/// dropped, in the VM's again. Held with the spawn lock.
pub struct Entered {
    switched: bool,
}

/// Makes this thread's next children start where `pids` says (`Container`:
/// `container`'s namespace, "" being the VM's own container).
pub fn enter(pids: Pids, container: &str) -> std::io::Result<Entered> {
    // Opened first: the way back must be there before leaving.
    vm_namespace()?;
    match pids {
        Pids::Vm => Ok(Entered { switched: false }),
        Pids::New => {
            // SAFETY: unshare of this thread's pid_for_children only.
            if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Entered { switched: true })
        }
        Pids::Container => {
            let containers = CONTAINERS.lock().unwrap_or_else(|e| e.into_inner());
            match containers.get(container) {
                Some(namespace) => {
                    set_for_children(namespace)?;
                    Ok(Entered { switched: true })
                }
                // The VM's own container without one runs in the VM's
                // (`--pid host`); a joined one always has its own.
                None if container.is_empty() => Ok(Entered { switched: false }),
                None => Err(std::io::Error::other(format!(
                    "container {container} has no PID namespace in this VM"
                ))),
            }
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.switched {
            if let Ok(vm) = vm_namespace() {
                // Back to the VM's (always allowed: the thread's own active
                // namespace); failing, later helpers would start in the
                // container's, so the agent says so.
                if let Err(e) = set_for_children(vm) {
                    crate::console(&format!("returning to the VM's PID namespace: {e}"));
                }
            }
        }
    }
}

/// Keeps the namespace `container`'s command `pid` (a PID of the VM's
/// namespace) started in, for its execs.
pub fn remember_container(container: &str, pid: u32) -> std::io::Result<()> {
    let namespace = File::open(format!("/proc/{pid}/ns/pid"))?;
    CONTAINERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(container.to_string(), namespace);
    Ok(())
}

/// Which of the VM's processes are `container`'s.
pub enum Members {
    /// Those in this PID namespace (its inode).
    In(u64),
    /// All but those in these (the joined containers'): a container
    /// without a namespace of its own (`--pid host`) is the VM's.
    NotIn(Vec<u64>),
}

impl Members {
    /// Whether process `pid` (of the VM's namespace) is one of them.
    pub fn has(&self, pid: u32) -> bool {
        let namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        match (self, namespace) {
            (Members::In(inode), Ok(ns)) => ns == *inode,
            (Members::NotIn(others), Ok(ns)) => !others.contains(&ns),
            (_, Err(_)) => false,
        }
    }
}

/// The processes that are `container`'s ("" being the VM's own).
pub fn members(container: &str) -> Members {
    use std::os::unix::fs::MetadataExt;
    let containers = CONTAINERS.lock().unwrap_or_else(|e| e.into_inner());
    let inode = |file: &File| file.metadata().map(|m| m.ino()).ok();
    match containers.get(container).and_then(inode) {
        Some(ns) => Members::In(ns),
        None if container.is_empty() => Members::NotIn(
            containers
                .iter()
                .filter(|(name, _)| !name.is_empty())
                .filter_map(|(_, file)| inode(file))
                .collect(),
        ),
        // A joined container that no longer runs has no processes.
        None => Members::In(0),
    }
}

/// `container` (a joined one) has ended: its namespace is not entered again.
pub fn forget_container(container: &str) {
    CONTAINERS.lock().unwrap_or_else(|e| e.into_inner()).remove(container);
}
