//! A container's output and input as Docker streams them: `logs` (with
//! `--follow`, `--tail`, `--since`, `--until`, `--timestamps`) and the
//! hijacked `attach` connection. Without a terminal, output goes in Docker's
//! multiplexed framing (an 8-byte header naming stdout or stderr, then the
//! bytes); with one, raw. Both read the container's json-file log, so a
//! client that comes late or goes away never touches the container.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use runtime::container::ContainerDir;
use runtime::container_log::{end_offset, LogEntry, LogReader};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::api::{blocking, flag, hijacked, stream_type, streaming, ApiError};
use crate::client_input::{ClientInput, InputSink};
use crate::daemon::Daemon;

/// How often an attached client's input waits for the container's
/// supervisor to be reachable (right after start).
const CONNECT_RETRY: Duration = Duration::from_millis(10);

type Chunks = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Docker's stream framing: stream number (1 stdout, 2 stderr), three zero
/// bytes, the big-endian length, then the data.
pub fn multiplexed(stderr: bool, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(&[if stderr { 2 } else { 1 }, 0, 0, 0]);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Which entries go out, and how.
#[derive(Debug, Clone)]
pub struct Selection {
    stdout: bool,
    stderr: bool,
    tty: bool,
    timestamps: bool,
    since: Option<f64>,
    until: Option<f64>,
}

impl Selection {
    fn encode(&self, entry: &LogEntry) -> Option<Vec<u8>> {
        let wanted = if entry.is_stderr() { self.stderr } else { self.stdout };
        if !wanted {
            return None;
        }
        let time = chrono::DateTime::parse_from_rfc3339(&entry.time).ok();
        let seconds = time.map(|t| t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9);
        if let (Some(since), Some(at)) = (self.since, seconds) {
            if at < since {
                return None;
            }
        }
        if let (Some(until), Some(at)) = (self.until, seconds) {
            if at > until {
                return None;
            }
        }
        let text = match self.timestamps {
            true => format!("{} {}", entry.time, entry.log),
            false => entry.log.clone(),
        };
        Some(match self.tty {
            true => text.into_bytes(),
            false => multiplexed(entry.is_stderr(), text.as_bytes()),
        })
    }
}

/// `since`/`until` as the CLI sends them: Unix seconds with an optional
/// fraction (it turns durations and dates into that itself).
fn parse_time(text: &Option<String>) -> Result<Option<f64>, ApiError> {
    match text.as_deref() {
        None | Some("") | Some("0") => Ok(None),
        Some(t) => t
            .parse::<f64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid time value: {t}"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    stdout: Option<String>,
    stderr: Option<String>,
    follow: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

impl LogsQuery {
    /// What the query selects from a container's log (`tty`: whether it
    /// has a terminal), and how many lines from the end (`tail`).
    pub fn selection(&self, tty: bool) -> Result<(Selection, Option<usize>), ApiError> {
        let selection = Selection {
            stdout: flag(&self.stdout),
            stderr: flag(&self.stderr),
            tty,
            timestamps: flag(&self.timestamps),
            since: parse_time(&self.since)?,
            until: parse_time(&self.until)?,
        };
        if !selection.stdout && !selection.stderr {
            return Err(ApiError::bad_request(
                "Bad parameters: you must choose at least one stream",
            ));
        }
        let tail = match self.tail.as_deref() {
            None | Some("") | Some("all") => None,
            Some(n) => Some(
                n.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid tail value: {n}")))?,
            ),
        };
        Ok((selection, tail))
    }
}

pub async fn logs(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let lookup = daemon.clone();
    let record = blocking(move || Ok(lookup.containers.find(&id)?)).await?;
    if record.host_config.log_config.driver == "none" {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "configured logging driver does not support reading",
        ));
    }
    let (selection, tail) = query.selection(record.config.tty)?;
    let follow = flag(&query.follow);
    let slot = match follow {
        true => Some(daemon.streams.take()?),
        false => None,
    };
    let dir = ContainerDir::new(&record.id);
    // Listen before reading, so an end meanwhile is not missed.
    let ending = Ending::new(&daemon, &record.id, Some(dir.clone()));
    let watch = daemon.log_watcher.watch(&dir.path);
    let (first, reader) = blocking(move || {
        let (entries, reader) = LogReader::read_all(&dir.log_path()).map_err(ApiError::internal)?;
        let mut first: Vec<Vec<u8>> = entries.iter().filter_map(|e| selection.encode(e)).collect();
        if let Some(n) = tail {
            first.drain(..first.len().saturating_sub(n));
        }
        let follow = follow && dir.is_running();
        Ok((first, follow.then_some((reader, dir, selection))))
    })
    .await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for chunk in first {
            if tx.send(Ok(chunk.into())).await.is_err() {
                return;
            }
        }
        if let Some((reader, dir, selection)) = reader {
            let _slot = slot;
            follow_log(reader, &dir.log_path(), 0, &selection, &tx, watch, ending).await;
        }
    });
    Ok(streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        stream_type(record.config.tty),
    ))
}

/// When a follower is done: its container's die or destroy event, or (for
/// `logs -f`, whose container was running) a look now and then that finds
/// it no longer running.
struct Ending {
    events: tokio::sync::broadcast::Receiver<crate::events::DockerEvent>,
    id: String,
    running: Option<ContainerDir>,
    over: bool,
}

/// How often a `logs -f` follower checks that its container still runs,
/// beside its events.
const RUNNING_CHECK: Duration = Duration::from_secs(5);

impl Ending {
    fn new(daemon: &Daemon, id: &str, running: Option<ContainerDir>) -> Ending {
        Ending {
            events: daemon.events_log.subscribe(),
            id: id.to_string(),
            running,
            over: false,
        }
    }

    /// Waits for the next sign of the end.
    async fn wait(&mut self) {
        use tokio::sync::broadcast::error::RecvError;
        tokio::select! {
            event = self.events.recv() => match event {
                Ok(e) => self.over = e.is_container(&self.id, "die") || e.is_container(&self.id, "destroy"),
                Err(RecvError::Closed) => self.over = true,
                Err(RecvError::Lagged(_)) => self.check(),
            },
            _ = tokio::time::sleep(RUNNING_CHECK), if self.running.is_some() => self.check(),
        }
    }

    fn check(&mut self) {
        if let Some(dir) = &self.running {
            self.over = !dir.is_running();
        }
    }
}

/// Sends a log's new entries as they are written until `ending` says the
/// container ended (then what is left) or the client goes away. `reader`
/// is opened at `offset` of `log` once the log exists.
async fn follow_log(
    reader: impl Into<Option<LogReader>>,
    log: &std::path::Path,
    offset: u64,
    selection: &Selection,
    tx: &Chunks,
    mut watch: crate::follow::LogWatch,
    mut ending: Ending,
) {
    let mut reader = reader.into();
    loop {
        let over = ending.over;
        if reader.is_none() {
            reader = LogReader::open(log, offset).ok().flatten();
        }
        if let Some(reader) = reader.as_mut() {
            for entry in reader.read_new() {
                if let Some(chunk) = selection.encode(&entry) {
                    if tx.send(Ok(chunk.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        if over {
            return;
        }
        tokio::select! {
            _ = watch.grown() => {}
            _ = ending.wait() => {}
            _ = tx.closed() => return,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AttachQuery {
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    #[serde(rename = "detachKeys")]
    detach_keys: Option<String>,
    /// The output so far first.
    logs: Option<String>,
    /// The live streams (off: only `logs`, then the connection ends).
    stream: Option<String>,
}

/// The hijacked attach: `101 Switching Protocols`, then the container's
/// output (what it wrote so far with `logs`; from now on until its command
/// ends with `stream`) and the client's bytes to its standard input (with
/// `stream`; without it the connection ends once `logs` are sent). As in
/// dockerd, a terminal's input is watched for the detach keys, and its end
/// is not the container's (`run -it` detaches rather than ending the
/// shell); without a terminal a `StdinOnce` container's input ends with the
/// client's.
pub async fn attach(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<AttachQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let escape = crate::detach::keys(query.detach_keys.as_deref(), "detach")?;
    let lookup = daemon.clone();
    let record = blocking(move || Ok(lookup.containers.find(&id)?)).await?;
    let tty = record.config.tty;
    let selection = Selection {
        stdout: flag(&query.stdout),
        stderr: flag(&query.stderr),
        tty,
        timestamps: false,
        since: None,
        until: None,
    };
    let live = flag(&query.stream);
    let with_stdin = live && flag(&query.stdin) && record.config.open_stdin;
    // Docker's StdinOnce: the first attached client's end of input is the
    // container's (`run -i`); otherwise clients come and go (`run -dit`).
    let stdin_once = record.config.stdin_once;
    let dir = ContainerDir::new(&record.id);
    let offset = if flag(&query.logs) {
        0
    } else {
        end_offset(&dir.log_path())
    };
    let slot = daemon.streams.take()?;
    // Listen before answering, so an exit right after start is not missed.
    let mut events = daemon.events_log.subscribe();
    let ending = Ending::new(&daemon, &record.id, None);
    let watch = daemon.log_watcher.watch(&dir.path);
    let conn = request.extensions().get::<crate::listen::ConnFd>().copied();
    let upgrade = hyper::upgrade::on(&mut request);
    let id = record.id.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("attach to {id}: the upgrade failed: {e}");
                return;
            }
        };
        let (client_in, mut client_out) = tokio::io::split(TokioIo::new(upgraded));
        let ended = Arc::new(AtomicBool::new(false));
        let end_watcher = {
            let ended = ended.clone();
            let id = id.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(e) if e.is_container(&id, "die") || e.is_container(&id, "destroy") => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        _ => {}
                    }
                }
                ended.store(true, Ordering::SeqCst);
            })
        };
        let detached = Arc::new(tokio::sync::Notify::new());
        if with_stdin {
            let input = ClientInput {
                pass_eof: stdin_once && !tty,
                escape: tty.then(|| crate::detach::Escape::new(escape)),
                detached: detached.clone(),
            };
            let supervisor = SupervisorInput {
                dir: dir.clone(),
                ended: ended.clone(),
                conn: None,
            };
            tokio::spawn(crate::client_input::pump(client_in, input, supervisor));
        }
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        tokio::spawn(async move {
            let log = dir.log_path();
            match live {
                true => follow_log(None, &log, offset, &selection, &tx, watch, ending).await,
                // Only what was written so far.
                false => {
                    let entries = LogReader::open(&log, offset)
                        .ok()
                        .flatten()
                        .map(|mut r| r.read_new())
                        .unwrap_or_default();
                    for chunk in entries.iter().filter_map(|e| selection.encode(e)) {
                        if tx.send(Ok(chunk.into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        forward_output(&mut rx, &mut client_out, &detached, conn, Result::ok).await;
        // The client is gone: nothing waits on the container's end any more.
        end_watcher.abort();
        drop(slot);
    });
    hijacked(tty)
}

/// Output chunks to a hijacked client (attach or exec) until they end, the
/// client goes or it typed the detach keys; then its side is shut. A client
/// that closed its connection while no output came is noticed within
/// `LEFT_CHECK` when hulld knows its descriptor (a TCP client that vanished
/// without closing is not).
pub async fn forward_output<T>(
    chunks: &mut mpsc::Receiver<T>,
    client: &mut (impl tokio::io::AsyncWrite + Unpin),
    detached: &tokio::sync::Notify,
    conn: Option<crate::listen::ConnFd>,
    bytes: impl Fn(T) -> Option<Bytes>,
) {
    let mut left_check = tokio::time::interval(LEFT_CHECK);
    left_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let chunk = tokio::select! {
            chunk = chunks.recv() => chunk,
            _ = detached.notified() => break,
            _ = left_check.tick(), if conn.is_some() => match conn.is_some_and(|c| c.peer_left()) {
                true => break,
                false => continue,
            },
        };
        let Some(chunk) = chunk.and_then(&bytes) else { break };
        if client.write_all(&chunk).await.is_err() || client.flush().await.is_err() {
            break;
        }
    }
    let _ = client.shutdown().await;
}

/// How often a hijacked stream with no output checks that its client is there.
const LEFT_CHECK: Duration = Duration::from_secs(2);

/// The container's supervisor as the sink of an attached client's input.
/// It is reached at the first frame: the container may not have started
/// yet.
struct SupervisorInput {
    dir: ContainerDir,
    ended: Arc<AtomicBool>,
    conn: Option<tokio::net::UnixStream>,
}

impl InputSink for SupervisorInput {
    async fn send(&mut self, frame: &proto::Frame) -> bool {
        while self.conn.is_none() {
            if self.ended.load(Ordering::SeqCst) {
                return false;
            }
            match tokio::net::UnixStream::connect(self.dir.socket_path()).await {
                Ok(s) => self.conn = Some(s),
                Err(_) => tokio::time::sleep(CONNECT_RETRY).await,
            }
        }
        let mut bytes = Vec::new();
        let Some(conn) = self.conn.as_mut() else { return false };
        proto::write_frame(&mut bytes, frame).is_ok() && conn.write_all(&bytes).await.is_ok()
    }

    async fn finish(&mut self, eof: bool) {
        let Some(conn) = self.conn.as_mut() else { return };
        let _ = conn.flush().await;
        if eof {
            // Keep the connection until the supervisor has read the end.
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut sink)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_selection_follow_docker() {
        assert_eq!(multiplexed(true, b"ab"), [2, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']);
        let entry = LogEntry {
            log: "hi\n".into(),
            stream: "stdout".into(),
            time: "2026-01-01T00:00:10.5Z".into(),
        };
        let mut s = Selection {
            stdout: true,
            stderr: false,
            tty: false,
            timestamps: true,
            since: None,
            until: None,
        };
        let framed = s.encode(&entry).unwrap();
        assert_eq!(&framed[..4], &[1, 0, 0, 0]);
        assert!(framed.ends_with(b"2026-01-01T00:00:10.5Z hi\n"));
        s.since = Some(1_767_225_611.0);
        assert!(s.encode(&entry).is_none(), "before since");
        s.since = None;
        s.until = Some(1_767_225_609.0);
        assert!(s.encode(&entry).is_none(), "after until");
        s.until = None;
        s.stdout = false;
        assert!(s.encode(&entry).is_none());
        assert!(parse_time(&Some("x".into())).is_err());
        assert_eq!(parse_time(&Some("12.5".into())).unwrap(), Some(12.5));
    }
}
