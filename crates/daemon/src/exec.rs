//! `docker exec`: more processes in a running container. hulld opens a
//! vsock connection into the container's VM (the VMM's `CONNECT port`
//! handshake on its socket), asks the agent to run the process, and relays
//! its streams over the hijacked connection (multiplexed without a terminal,
//! raw with one) and its exit status to `GET /exec/{id}/json`. Frames from
//! the guest are bounds-checked by the protocol. A connection that ends
//! without the exit status while the container runs (its VM moved to a new
//! VMM) is taken back through the VM's socket (`runtime::exec_link`); one
//! that cannot be ends the exec, never hulld.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use proto::{read_frame, write_frame, Control, Frame, ProcessSpec};
use runtime::container::{ContainerDir, RunStatus};
use runtime::exec_link::ExecLink;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{blocking, empty, hijacked, ApiError};
use crate::daemon::Daemon;
use crate::streams::multiplexed;

/// One exec instance, as `GET /exec/{id}/json` shows it.
#[derive(Debug, Clone)]
pub struct ExecRecord {
    pub id: String,
    pub container: String,
    /// `spec.stdin`: the client sends standard input (`OpenStdin`).
    pub spec: ProcessSpec,
    /// As the client wrote them, and as read (Docker's default if none).
    pub detach_keys: (String, Vec<u8>),
    pub started: bool,
    pub exit_code: Option<i32>,
    pub pid: u32,
    /// The connection to the agent while the process runs: input, and
    /// terminal sizes, go through it.
    pub guest: Option<Arc<ExecLink>>,
    /// When its process ended (kept a while after for `exec inspect`).
    pub finished: Option<Instant>,
}

impl ExecRecord {
    /// Started and not yet ended.
    pub fn running(&self) -> bool {
        self.started && self.finished.is_none()
    }
}

impl ExecRecord {
    /// A new exec, not yet started.
    fn new(id: &str, container: &str, spec: ProcessSpec, detach_keys: (String, Vec<u8>)) -> ExecRecord {
        ExecRecord {
            id: id.to_string(),
            container: container.to_string(),
            spec,
            detach_keys,
            started: false,
            exit_code: None,
            pid: 0,
            guest: None,
            finished: None,
        }
    }
}

/// How long an ended exec stays inspectable (dockerd's exec GC runs every
/// five minutes).
const FINISHED_KEPT: Duration = Duration::from_secs(300);

/// Exec instances by ID (kept in memory, as Docker keeps them).
#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, ExecRecord>>);

impl Execs {
    /// Adds an exec, and drops those that ended long ago: a client making
    /// execs in a long-lived container must not grow hulld without bound.
    fn insert(&self, exec: ExecRecord) {
        if let Ok(mut execs) = self.0.lock() {
            execs.retain(|_, e| e.finished.is_none_or(|at| at.elapsed() < FINISHED_KEPT));
            execs.insert(exec.id.clone(), exec);
        }
    }

    /// Records the end of an exec's process.
    fn finish(&self, id: &str, code: i32) {
        self.update(id, |e| {
            e.exit_code = Some(code);
            e.guest = None;
            e.finished = Some(Instant::now());
        });
    }

    /// The container's execs whose process runs (inspect's `ExecIDs`).
    pub fn running_in(&self, container: &str) -> Vec<String> {
        let Ok(execs) = self.0.lock() else { return Vec::new() };
        let mut ids: Vec<String> = execs
            .values()
            .filter(|e| e.container == container && e.running())
            .map(|e| e.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Forgets a removed container's execs, as dockerd does.
    pub fn forget_container(&self, container: &str) {
        if let Ok(mut execs) = self.0.lock() {
            execs.retain(|_, e| e.container != container);
        }
    }

    fn get(&self, id: &str) -> Result<ExecRecord, ApiError> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut ExecRecord)) {
        if let Some(record) = self.0.lock().ok().as_mut().and_then(|m| m.get_mut(id)) {
            change(record);
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    user: String,
    working_dir: String,
    tty: bool,
    attach_stdin: bool,
    detach_keys: String,
    privileged: bool,
    /// The client terminal's `[height, width]` (with `Tty`).
    console_size: Option<Vec<u64>>,
}

pub async fn create(
    State(daemon): State<Arc<Daemon>>,
    Path(container): Path<String>,
    Json(body): Json<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let argv = body.cmd.clone().unwrap_or_default();
    if argv.is_empty() {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let detach_keys = crate::detach::keys(Some(&body.detach_keys), "escape")?;
    if body.privileged {
        return Err(ApiError::bad_request(
            "--privileged is not supported: every container is its own VM",
        ));
    }
    let lookup = daemon.clone();
    let record = blocking(move || {
        let record = lookup.containers.find(&container)?;
        match ContainerDir::new(&record.id).state()? {
            Some(s) if s.paused => {
                return Err(ApiError::conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    record.id
                )))
            }
            Some(s) if s.status == RunStatus::Running => {}
            _ => return Err(ApiError::conflict(format!("container {} is not running", record.id))),
        }
        Ok(record)
    })
    .await?;
    let mut env = record.process_env.clone();
    for entry in body.env.unwrap_or_default() {
        image::config::set_env(&mut env, &entry);
    }
    let spec = ProcessSpec {
        argv,
        env,
        cwd: Some(body.working_dir)
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| record.process_workdir.clone()),
        user: Some(body.user)
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| record.process_user.clone()),
        // The container's --group-add holds for its execs too, as in Docker.
        groups: record.host_config.groups(),
        stdin: body.attach_stdin,
        tty: body
            .tty
            .then(|| crate::create::console_size(body.console_size.as_deref())),
        // The container's, as in Docker.
        capabilities: record.host_config.capabilities(),
        // Its connection is taken back through the new VMM when the VM moves.
        session: rand_session(),
        container: joined_id(&record.id),
    };
    let id = crate::containers::random_hex(32);
    let exec = ExecRecord::new(&id, &record.id, spec, (body.detach_keys, detach_keys));
    daemon.execs.insert(exec);
    Ok((StatusCode::CREATED, Json(json!({ "Id": id }))))
}

pub async fn inspect(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let e = daemon.execs.get(&id)?;
    Ok(Json(json!({
        "ID": e.id,
        "ContainerID": e.container,
        "Running": e.running(),
        "ExitCode": e.exit_code,
        "Pid": e.pid,
        "OpenStdin": e.spec.stdin,
        "OpenStdout": true,
        "OpenStderr": true,
        "CanRemove": false,
        "DetachKeys": e.detach_keys.0,
        "ProcessConfig": {
            "entrypoint": e.spec.argv.first(),
            "arguments": e.spec.argv.get(1..).unwrap_or_default(),
            "privileged": false,
            "tty": e.spec.tty.is_some(),
            "user": e.spec.user,
        },
    })))
}

/// A session number for an exec, by which its connection is taken back
/// when the VM moves (never 0: no session).
fn rand_session() -> u64 {
    u64::from_str_radix(&crate::containers::random_hex(8), 16).map_or(1, |n| n.max(1))
}

/// Resizes a running exec's terminal (without one it is accepted and does nothing).
pub async fn resize(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<crate::containers::ResizeQuery>,
) -> Result<Response, ApiError> {
    let size = query.size()?;
    let exec = daemon.execs.get(&id)?;
    let running = exec.running();
    let (Some(guest), true) = (exec.guest, running) else {
        return Err(ApiError::conflict(format!("exec {id} is not running")));
    };
    if exec.spec.tty.is_some() {
        let resize = Frame::Control(Control::Resize {
            rows: size.rows,
            cols: size.cols,
        });
        blocking(move || match guest.send(&resize) {
            true => Ok(()),
            false => Err(ApiError::conflict(format!("exec {id} is not running"))),
        })
        .await?;
    }
    Ok(empty(StatusCode::OK))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StartBody {
    detach: bool,
}

/// How an exec names container `id` to its VM's agent: by its ID if it
/// runs in another container's VM (on that one's network), else "".
pub fn joined_id(id: &str) -> String {
    match ContainerDir::new(id).joins() {
        Some(_) => id.to_string(),
        None => String::new(),
    }
}

/// Sends the first request on a new agent connection (`connection`, from
/// `connect_agent` or `connect_agent_at`); an agent that cannot be reached
/// is a 409.
pub fn request_agent(connection: std::io::Result<UnixStream>, request: Control) -> Result<UnixStream, ApiError> {
    let unreachable = |e: String| ApiError::conflict(format!("cannot reach the container's agent: {e}"));
    let mut conn = connection.map_err(|e| unreachable(e.to_string()))?;
    write_frame(&mut conn, &Frame::Control(request)).map_err(|e| unreachable(e.to_string()))?;
    Ok(conn)
}

/// Opens a connection to a running container's agent (see `connect_agent_at`).
pub fn connect_agent(dir: &ContainerDir) -> std::io::Result<UnixStream> {
    runtime::agent_link::connect_to(dir)
}

/// Opens a connection to the agent's exec port through the VMM's socket
/// `vsock`, waiting for the agent while `alive()`.
pub fn connect_agent_at(vsock: &std::path::Path, alive: &dyn Fn() -> bool) -> std::io::Result<UnixStream> {
    runtime::agent_link::connect(vsock, alive)
}

pub async fn start(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(std::mem::take(request.body_mut()), 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?;
    let start: StartBody = match body.is_empty() {
        true => StartBody::default(),
        false => serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?,
    };
    let exec = daemon.execs.get(&id)?;
    if exec.started {
        return Err(ApiError::conflict(format!("exec {id} has already been started")));
    }
    // The guest's output is relayed by a thread for the exec's whole life.
    let slot = daemon.streams.take_with_thread()?;
    let conn = request.extensions().get::<crate::listen::ConnFd>().copied();
    daemon.execs.update(&id, |e| e.started = true);
    let dir = ContainerDir::new(&exec.container);
    let spec = exec.spec.clone();
    let guest = blocking(move || {
        let session = spec.session;
        let request = Frame::Control(Control::Exec(Box::new(spec)));
        ExecLink::open(&dir, session, &request).map_err(|e| {
            // The CLI shows a failed upgrade as its status alone: say why here.
            tracing::warn!("exec in {}: the agent could not be reached: {e}", dir.id);
            ApiError::conflict(format!("container is not running: {e}"))
        })
    })
    .await;
    let (guest, reader) = match guest {
        Ok(g) => g,
        Err(e) => {
            daemon.execs.finish(&id, 126);
            return Err(e);
        }
    };
    // Guest frames → client bytes, on a thread (the protocol reads blocking).
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    let tty = exec.spec.tty.is_some();
    let guest = Arc::new(guest);
    {
        let daemon = daemon.clone();
        let id = id.clone();
        let container = exec.container.clone();
        let link = guest.clone();
        daemon.execs.update(&id, |e| e.guest = Some(link.clone()));
        tokio::task::spawn_blocking(move || {
            relay_guest_output(reader, &link, &out_tx, &daemon, (&id, &container), tty);
            drop(slot);
        });
    }
    if start.detach {
        tokio::spawn(async move {
            let mut out_rx = out_rx;
            while out_rx.recv().await.is_some() {}
        });
        return Ok(empty(StatusCode::OK));
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let with_stdin = exec.spec.stdin;
    // As for an attach: a terminal's input is watched for the detach keys
    // and its end is not the process's.
    let detached = Arc::new(tokio::sync::Notify::new());
    let input = crate::client_input::ClientInput {
        pass_eof: !tty,
        escape: tty.then(|| crate::detach::Escape::new(exec.detach_keys.1.clone())),
        detached: detached.clone(),
    };
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (client_in, mut client_out) = tokio::io::split(TokioIo::new(upgraded));
        if with_stdin {
            tokio::spawn(crate::client_input::pump(client_in, input, GuestInput(guest)));
        }
        let mut out_rx = out_rx;
        crate::streams::forward_output(&mut out_rx, &mut client_out, &detached, conn, Some).await;
    });
    hijacked(tty)
}

/// The agent's exec connection as the sink of the client's input: a
/// blocking socket (shared with resizes), written off the runtime.
struct GuestInput(Arc<ExecLink>);

impl crate::client_input::InputSink for GuestInput {
    async fn send(&mut self, frame: &Frame) -> bool {
        let (guest, frame) = (self.0.clone(), frame.clone());
        tokio::task::spawn_blocking(move || guest.send(&frame))
            .await
            .unwrap_or(false)
    }

    async fn finish(&mut self, _eof: bool) {}
}

/// Reads the agent's frames for one exec: output to the client, then the
/// exit status into the exec's record (before the client's stream ends, so
/// the CLI's `GET /exec/{id}/json` that follows sees it). A connection that
/// ends without the status (the VM moved to a new VMM) is taken back.
fn relay_guest_output(
    mut reader: UnixStream,
    link: &ExecLink,
    out: &mpsc::Sender<Bytes>,
    daemon: &Arc<Daemon>,
    (id, container): (&str, &str),
    tty: bool,
) {
    let encode = |stderr: bool, data: &[u8]| -> Bytes {
        match tty {
            true => Bytes::copy_from_slice(data),
            false => multiplexed(stderr, data).into(),
        }
    };
    let mut code = None;
    let mut received = 0u64;
    loop {
        let frame = read_frame(&mut reader);
        if matches!(frame, Ok(Some(_))) {
            received += 1;
        }
        match frame {
            Ok(Some(Frame::Stdout(data))) => {
                let _ = out.blocking_send(encode(false, &data));
            }
            Ok(Some(Frame::Stderr(data))) => {
                let _ = out.blocking_send(encode(true, &data));
            }
            Ok(Some(Frame::Control(Control::Started { pid }))) => daemon.execs.update(id, |e| e.pid = pid),
            Ok(Some(Frame::Control(Control::Exited { code: c, signal }))) => {
                code = Some(proto::shell_status(c, signal));
                break;
            }
            Ok(Some(Frame::Control(Control::Failed { message, exit_code }))) => {
                let _ = out.blocking_send(encode(true, format!("hull: exec failed: {message}\n").as_bytes()));
                code = Some(exit_code);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => match link.resume(received, &|| {
                crate::migrate::agent_relay::reach_agent(daemon, container)
            }) {
                Some(resumed) => {
                    if resumed.lost > 0 {
                        let note = format!(
                            "hull: {} frames of the exec's output were lost while its VM moved\n",
                            resumed.lost
                        );
                        let _ = out.blocking_send(encode(true, note.as_bytes()));
                    }
                    received += resumed.lost;
                    reader = resumed.reader;
                }
                None => break,
            },
        }
    }
    // A guest that went away without a status: the container ended under it.
    let code = code.unwrap_or(137);
    daemon.execs.finish(id, code);
    link.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str, container: &str) -> ExecRecord {
        let spec = ProcessSpec {
            argv: vec!["true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            groups: Vec::new(),
            stdin: false,
            tty: None,
            capabilities: Vec::new(),
            session: 0,
            container: String::new(),
        };
        ExecRecord::new(id, container, spec, (String::new(), Vec::new()))
    }

    #[test]
    fn execs_are_kept_while_inspectable_and_go_with_their_container() {
        let execs = Execs::default();
        execs.insert(exec("a", "one"));
        execs.insert(exec("b", "one"));
        execs.insert(exec("c", "two"));
        execs.update("a", |e| e.started = true);
        execs.update("c", |e| e.started = true);
        assert_eq!(execs.running_in("one"), ["a"]);
        execs.finish("a", 3);
        let a = execs.get("a").unwrap();
        assert!(!a.running() && a.exit_code == Some(3) && a.finished.is_some());
        assert!(execs.running_in("one").is_empty());

        // One that ended long ago goes when the next is made.
        execs.update("a", |e| e.finished = Instant::now().checked_sub(FINISHED_KEPT * 2));
        execs.insert(exec("d", "two"));
        assert!(execs.get("a").is_err(), "ended long ago");
        assert!(execs.get("b").is_ok(), "never started: kept");

        execs.forget_container("two");
        assert!(execs.get("c").is_err() && execs.get("d").is_err());
        assert!(execs.get("b").is_ok());
    }
}
