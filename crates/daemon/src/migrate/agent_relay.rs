//! Execs of a container that moved to another host: the process runs on
//! there, and the `docker exec` client is still connected to the source's
//! hulld, which takes the exec back (`runtime::exec_link`, as after a move
//! within a host) through a connection to the destination's hulld that
//! relays to the container's agent. The destination relays only a claim
//! of an exec (`Control::ResumeExec`, by a session number the agent gave
//! out): a peer cannot start anything through it.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use proto::{read_frame, write_frame, Control, Frame};
use runtime::container::ContainerDir;
use runtime::exec_link::Reached;

use super::link::Peer;
use super::wire::{self, Message};
use crate::daemon::Daemon;

/// How long the other hulld may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where container `id`'s agent is now, for an exec taken back: through
/// its VM's socket here, through the hulld it moved to, or not yet (it is
/// moving).
pub fn reach_agent(daemon: &Arc<Daemon>, id: &str) -> Reached {
    if let Some(to) = daemon.moved_to(id) {
        return connect(daemon, &to, id).map_or(Reached::NotYet, Reached::Agent);
    }
    let dir = ContainerDir::new(id);
    match (dir.is_running(), daemon.is_departing(id)) {
        (true, false) => runtime::agent_link::connect_to(&dir).map_or(Reached::NotYet, Reached::Agent),
        (_, true) => Reached::NotYet,
        (false, false) => Reached::Gone,
    }
}

/// A connection to container `id`'s agent through the hulld `peer`.
fn connect(daemon: &Arc<Daemon>, peer: &Peer, id: &str) -> Result<UnixStream, String> {
    open_relay(daemon, peer, &Message::AgentRelay { id: id.to_string() })
}

/// A connection to the hulld `peer` that asked it for the relay `ask`,
/// and was answered `Relaying`.
pub(super) fn open_relay(daemon: &Arc<Daemon>, peer: &Peer, ask: &Message) -> Result<UnixStream, String> {
    let mut link = daemon.migration_security().connect(peer, &daemon.handle)?;
    let failed = |e: wire::WireError| e.to_string();
    link.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| e.to_string())?;
    wire::send(&mut link, ask).map_err(failed)?;
    match wire::receive(&mut link).map_err(failed)? {
        Message::Relaying => {}
        Message::Failed { reason } => return Err(reason),
        other => return Err(format!("it answered {other:?}")),
    }
    link.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(link)
}

/// The destination's side: relays `link` to the agent of container `id`
/// (running here) once its first frame proves to be an exec's claim.
pub fn serve(daemon: &Arc<Daemon>, mut link: UnixStream, id: &str) -> Result<(), String> {
    let dir = accept_relay(daemon, &mut link, id, |_| true)?;
    link.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| e.to_string())?;
    let claim = match read_frame(&mut link) {
        Ok(Some(claim @ Frame::Control(Control::ResumeExec { .. }))) => claim,
        other => return Err(format!("the first frame is not an exec's claim: {other:?}")),
    };
    link.set_read_timeout(None).map_err(|e| e.to_string())?;
    let mut agent = runtime::agent_link::connect_to(&dir).map_err(|e| format!("the agent: {e}"))?;
    write_frame(&mut agent, &claim).map_err(|e| e.to_string())?;
    splice(link, agent).map_err(|e| e.to_string())
}

/// Answers a relay's ask on `link` for container `id`: `Relaying` if it
/// runs here and `allowed`, else `Failed`; its directory.
pub(super) fn accept_relay(
    daemon: &Daemon,
    link: &mut UnixStream,
    id: &str,
    allowed: impl Fn(&crate::store::ContainerRecord) -> bool,
) -> Result<ContainerDir, String> {
    let running = daemon
        .containers
        .find(id)
        .ok()
        .filter(|r| r.id == id && allowed(r))
        .map(|r| ContainerDir::new(&r.id))
        .filter(ContainerDir::is_running);
    let Some(dir) = running else {
        let reason = format!("no container {id} runs here");
        let _ = wire::send(link, &Message::Failed { reason: reason.clone() });
        return Err(reason);
    };
    wire::send(link, &Message::Relaying).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Copies both ways until either side ends, then ends the other.
fn splice(link: UnixStream, agent: UnixStream) -> std::io::Result<()> {
    let (mut link_in, mut agent_out) = (link.try_clone()?, agent.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut link_in, &mut agent_out);
        let _ = agent_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut agent_in, mut link_out) = (agent, link);
    let _ = std::io::copy(&mut agent_in, &mut link_out);
    let _ = link_out.shutdown(std::net::Shutdown::Both);
    let _ = agent_in.shutdown(std::net::Shutdown::Both);
    let _ = upstream.join();
    Ok(())
}
