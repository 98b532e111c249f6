//! Connections to a running guest's agent, on its exec port, through the
//! VMM's vsock socket (`CONNECT port` handshake).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a container that runs may take to start taking execs: its VM
/// may still be starting right after `docker run -d` returns, and its
/// supervisor gives the guest `shim::boot_timeout()` to reach its agent,
/// then mounts and starts the command (a shorter wait here failed execs
/// into containers that went on to start, on a slow test host).
fn agent_ready_timeout() -> Duration {
    crate::shim::boot_timeout() + Duration::from_secs(60)
}

/// Opens a connection to the agent's exec port through the VMM's socket
/// `vsock`, waiting for the agent while `alive()` (the VM may still be
/// starting, as right after `docker run -d` returns).
pub fn connect(vsock: &Path, alive: &dyn Fn() -> bool) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + agent_ready_timeout();
    loop {
        match try_connect(vsock) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline || !alive() => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `connect` to a running container's agent through its VM's socket (the
/// VM it joined, for a container on another's network), waiting while the
/// container runs.
pub fn connect_to(dir: &crate::container::ContainerDir) -> std::io::Result<UnixStream> {
    let vm = dir.vm_dir();
    connect(&vm.socket_dir().join("vsock.sock"), &|| {
        dir.is_running() && vm.is_running()
    })
}

fn try_connect(vsock: &Path) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(vsock)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("CONNECT {}\n", proto::EXEC_PORT).as_bytes())?;
    // The answer is one short line; more than 64 bytes is not the VMM talking.
    let mut line = Vec::new();
    let mut reader = BufReader::new(std::io::Read::take(stream.try_clone()?, 64));
    reader.read_until(b'\n', &mut line)?;
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "the VM refused the connection: {}",
            String::from_utf8_lossy(&line).trim()
        )));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}
