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
use crate::migrate::attach_relay::{Position, Skip};

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
        let mut place = Place::default();
        entries.iter().for_each(|e| place.sent.record(e));
        let follow = follow && dir.is_running();
        Ok((first, follow.then_some((reader, dir, selection, place))))
    })
    .await?;
    let (tx, rx) = mpsc::channel(64);
    let id = record.id.clone();
    tokio::spawn(async move {
        for chunk in first {
            if tx.send(Ok(chunk.into())).await.is_err() {
                return;
            }
        }
        if let Some((reader, dir, selection, mut place)) = reader {
            let _slot = slot;
            follow_log(reader, &dir.log_path(), 0, &selection, &tx, watch, ending, &mut place).await;
            follow_moves(daemon, id, selection, tx, place).await;
        }
    });
    Ok(streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        stream_type(record.config.tty),
    ))
}

/// When a follower is done: its container's die or destroy event, its move
/// to another host, or (for `logs -f`, whose container was running) a look
/// now and then that finds
/// it no longer running.
struct Ending {
    events: tokio::sync::broadcast::Receiver<crate::events::DockerEvent>,
    daemon: Arc<Daemon>,
    id: String,
    running: Option<ContainerDir>,
    over: bool,
}

/// How often a `logs -f` follower checks that its container still runs,
/// beside its events.
const RUNNING_CHECK: Duration = Duration::from_secs(5);

impl Ending {
    fn new(daemon: &Arc<Daemon>, id: &str, running: Option<ContainerDir>) -> Ending {
        Ending {
            events: daemon.events_log.subscribe(),
            daemon: daemon.clone(),
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
                // Its end here, or its move to another host.
                Ok(e) => {
                    self.over = e.is_container(&self.id, "die")
                        || e.is_container(&self.id, "destroy")
                        || (e.is_container(&self.id, "migrate") && self.daemon.moved_to(&self.id).is_some())
                }
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

/// A follower's place in its container's log: what it sent, and what to
/// skip when it reads a log again (the container's on another host, or
/// back here after a move).
#[derive(Debug, Default)]
struct Place {
    sent: Position,
    skip: Skip,
}

/// Sends `entry` if it is past `place` and `selection` wants it; false
/// once the client is gone.
async fn send_entry(entry: &LogEntry, selection: &Selection, tx: &Chunks, place: &mut Place) -> bool {
    if !place.skip.is_new(entry) {
        return true;
    }
    place.sent.record(entry);
    match selection.encode(entry) {
        Some(chunk) => tx.send(Ok(chunk.into())).await.is_ok(),
        None => true,
    }
}

/// How long a follower waits for its container to run again somewhere
/// after the host it followed it on lets it go (a move back here).
const MOVE_WAIT: Duration = Duration::from_secs(30);

/// After `follow_log` ended: while the container runs on another host
/// (`hull migrate --to`), its output goes on from the hulld there
/// (`attach_relay`), and when it comes back here, from its log here, each
/// from the entry after the last one sent, until it ends or the client
/// goes.
async fn follow_moves(daemon: Arc<Daemon>, id: String, selection: Selection, tx: Chunks, mut place: Place) {
    // Since when the container could not be reached after a relay ended
    // (a move back here is settling).
    let mut after_relay: Option<std::time::Instant> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let dir = ContainerDir::new(&id);
        if let Some(peer) = daemon.moved_to(&id) {
            place.skip = place.sent.skipper();
            if relay_output(&daemon, &peer, &id, &selection, &tx, &mut place).await {
                after_relay = Some(std::time::Instant::now());
                continue;
            }
        } else if after_relay.is_some() && dir.is_running() {
            // Back here.
            after_relay = None;
            place.skip = place.sent.skipper();
            let ending = Ending::new(&daemon, &id, Some(dir.clone()));
            let watch = daemon.log_watcher.watch(&dir.path);
            follow_log(None, &dir.log_path(), 0, &selection, &tx, watch, ending, &mut place).await;
            continue;
        }
        // It ended here (the common case: no waiting), or cannot be
        // reached where it went, or is settling after a move.
        if after_relay.is_none() && !daemon.is_departing(&id) {
            return;
        }
        if after_relay.get_or_insert_with(std::time::Instant::now).elapsed() > MOVE_WAIT {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Container `id`'s output from the hulld `peer`, past `place`, until that
/// stream ends; false if it could not be had.
async fn relay_output(
    daemon: &Arc<Daemon>,
    peer: &crate::migrate::link::Peer,
    id: &str,
    selection: &Selection,
    tx: &Chunks,
    place: &mut Place,
) -> bool {
    let (daemon, to, who, after) = (daemon.clone(), peer.clone(), id.to_string(), place.sent.clone());
    let connected =
        tokio::task::spawn_blocking(move || crate::migrate::attach_relay::connect(&daemon, &to, &who, false, after))
            .await;
    let mut link = match connected {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            tracing::debug!("container {id}'s output from {}: {e}", peer.address);
            return false;
        }
        Err(_) => return false,
    };
    let (batches_tx, mut batches) = mpsc::channel::<Vec<LogEntry>>(4);
    tokio::task::spawn_blocking(move || loop {
        match crate::migrate::wire::receive(&mut link) {
            Ok(crate::migrate::wire::Message::LogEntries(entries)) => {
                if batches_tx.blocking_send(entries).is_err() {
                    return;
                }
            }
            _ => return,
        }
    });
    while let Some(entries) = batches.recv().await {
        for entry in &entries {
            if !send_entry(entry, selection, tx, place).await {
                return true;
            }
        }
    }
    true
}

/// Sends a log's new entries as they are written until `ending` says the
/// container ended (then what is left) or the client goes away. `reader`
/// is opened at `offset` of `log` once the log exists.
#[allow(clippy::too_many_arguments)]
async fn follow_log(
    reader: impl Into<Option<LogReader>>,
    log: &std::path::Path,
    offset: u64,
    selection: &Selection,
    tx: &Chunks,
    mut watch: crate::follow::LogWatch,
    mut ending: Ending,
    place: &mut Place,
) {
    let mut reader = reader.into();
    loop {
        let over = ending.over;
        if reader.is_none() {
            reader = LogReader::open(log, offset).ok().flatten();
        }
        if let Some(reader) = reader.as_mut() {
            for entry in reader.read_new() {
                if !send_entry(&entry, selection, tx, place).await {
                    return;
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
                daemon: daemon.clone(),
                id: id.clone(),
                dir: dir.clone(),
                ended: ended.clone(),
                conn: None,
            };
            tokio::spawn(crate::client_input::pump(client_in, input, supervisor));
        }
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let (moves, who) = (daemon.clone(), id.clone());
        tokio::spawn(async move {
            let log = dir.log_path();
            match live {
                true => {
                    let mut place = Place::default();
                    if offset > 0 {
                        // Attached now: what the log held already is not
                        // the client's, wherever it is read again.
                        place.sent = Position::now();
                    }
                    follow_log(None, &log, offset, &selection, &tx, watch, ending, &mut place).await;
                    follow_moves(moves, who, selection, tx, place).await;
                }
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
/// An attached client's input: to the container's supervisor here, or,
/// once the container moved to another host, through the hulld there
/// (`attach_relay`).
struct SupervisorInput {
    daemon: Arc<Daemon>,
    id: String,
    dir: ContainerDir,
    ended: Arc<AtomicBool>,
    conn: Option<tokio::net::UnixStream>,
}

impl SupervisorInput {
    /// Where the container takes input now; `None` once it ended, or
    /// when the host it went to has not taken it for `MOVE_WAIT` (it may
    /// be on its way back here meanwhile).
    async fn reach(&self) -> Option<tokio::net::UnixStream> {
        let mut refused_since: Option<std::time::Instant> = None;
        loop {
            if self.ended.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(peer) = self.daemon.moved_to(&self.id) {
                let (daemon, id) = (self.daemon.clone(), self.id.clone());
                let relayed = tokio::task::spawn_blocking(move || {
                    let link = crate::migrate::attach_relay::connect(&daemon, &peer, &id, true, Position::default())?;
                    link.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok::<_, String>(link)
                })
                .await;
                match relayed {
                    Ok(Ok(link)) => return tokio::net::UnixStream::from_std(link).ok(),
                    Ok(Err(e)) if refused_since.is_none() => {
                        tracing::debug!("container {}'s input through the host it went to: {e}", self.id)
                    }
                    _ => {}
                }
                if refused_since.get_or_insert_with(std::time::Instant::now).elapsed() > MOVE_WAIT {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if let Ok(conn) = tokio::net::UnixStream::connect(self.dir.socket_path()).await {
                return Some(conn);
            }
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    }
}

/// Whether the other end of `conn` has closed it (nothing is ever read
/// from it otherwise).
fn let_go(conn: &tokio::net::UnixStream) -> bool {
    let mut byte = [0u8; 1];
    match conn.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

impl InputSink for SupervisorInput {
    async fn send(&mut self, frame: &proto::Frame) -> bool {
        let mut bytes = Vec::new();
        if proto::write_frame(&mut bytes, frame).is_err() {
            return false;
        }
        // A connection its other end let go of (the supervisor ended, or
        // the host the container went to let it go as it left): a write
        // could still land in its buffer and be lost.
        if self.conn.as_ref().is_some_and(let_go) {
            self.conn = None;
        }
        // A write that fails: the container may have moved; reached again.
        for _ in 0..3 {
            if self.conn.is_none() {
                self.conn = self.reach().await;
            }
            let Some(conn) = self.conn.as_mut() else { return false };
            if conn.write_all(&bytes).await.is_ok() {
                return true;
            }
            self.conn = None;
        }
        false
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
