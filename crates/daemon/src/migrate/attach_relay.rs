//! A client attached at the source (`docker attach`, `docker run -i`) to
//! a container that moved to another host: its output goes on from the
//! log of the hulld the container runs at now, from the entry after the
//! last one the client got, and its standard input goes there too. Each
//! is a connection of its own to that hulld (`Message::AttachRelay`),
//! which sends the container's log entries as they come (`LogEntries`)
//! until the container no longer runs there, or passes the client's
//! `Stdin`/`StdinEof` frames to the container's supervisor — nothing else
//! a peer sends through it reaches the container, and only the host the
//! container came from is relayed to.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use proto::{read_frame, write_frame, Frame};
use runtime::container::ContainerDir;
use runtime::container_log::{LogEntry, LogReader};
use serde::{Deserialize, Serialize};

use super::link::Peer;
use super::wire::{self, Message};
use crate::daemon::Daemon;

/// How often the destination looks at the log for new entries.
const LOG_POLL: Duration = Duration::from_millis(50);
/// With nothing new, an empty batch this often: a source whose client
/// left finds out, and lets the connection go.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// A batch of entries is sent once it holds about this many bytes.
const BATCH_BYTES: usize = 256 << 10;

/// How far a client got in a container's log: the time of the last entry
/// it was sent, and how many entries of that time it was sent (times are
/// not unique).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub time: Option<String>,
    pub at_time: u32,
}

fn parse(time: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(time).ok()
}

impl Position {
    /// Past every entry written until now.
    pub fn now() -> Position {
        Position {
            time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
            at_time: u32::MAX,
        }
    }

    /// `entry` was sent.
    pub fn record(&mut self, entry: &LogEntry) {
        match self.time.as_deref() == Some(entry.time.as_str()) {
            true => self.at_time = self.at_time.saturating_add(1),
            false => {
                self.time = Some(entry.time.clone());
                self.at_time = 1;
            }
        }
    }

    /// What skips the entries up to here when a log is read again.
    pub fn skipper(&self) -> Skip {
        Skip {
            time: self.time.as_deref().and_then(parse),
            left: self.at_time,
        }
    }
}

/// Skips a log's entries up to a `Position`.
#[derive(Debug, Clone, Default)]
pub struct Skip {
    time: Option<DateTime<FixedOffset>>,
    left: u32,
}

impl Skip {
    /// Whether `entry` is past the position.
    pub fn is_new(&mut self, entry: &LogEntry) -> bool {
        let Some(after) = self.time else { return true };
        let Some(time) = parse(&entry.time) else { return false };
        match time.cmp(&after) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal if self.left > 0 => {
                self.left -= 1;
                false
            }
            _ => true,
        }
    }
}

/// A connection to the hulld `peer` relaying container `id`'s output
/// from `after` on (`input` false: `LogEntries` come), or taking its
/// input (`input` true: write `Stdin`/`StdinEof` frames).
pub fn connect(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    id: &str,
    input: bool,
    after: Position,
) -> Result<UnixStream, String> {
    let ask = Message::AttachRelay {
        id: id.to_string(),
        input,
        after,
    };
    super::agent_relay::open_relay(daemon, peer, &ask)
}

/// The destination's side, for container `id` running here, asked by the
/// host at `from`: only the host it came from.
pub fn serve(
    daemon: &Arc<Daemon>,
    mut link: UnixStream,
    from: std::net::IpAddr,
    id: &str,
    input: bool,
    after: Position,
) -> Result<(), String> {
    let dir = super::agent_relay::accept_relay(daemon, &mut link, id, |r| daemon.arrived_from(&r.id) == Some(from))?;
    match input {
        true => {
            // Let go as soon as the container leaves: the source then takes
            // the client's next input where the container is, not into a
            // supervisor that is gone.
            let watched = link.try_clone().map_err(|e| e.to_string())?;
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watcher = {
                let (daemon, id, dir, done) = (daemon.clone(), id.to_string(), dir.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        if !runs_here(&daemon, &id, &dir) {
                            let _ = watched.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        std::thread::sleep(LOG_POLL);
                    }
                })
            };
            let passed = pass_input(link, &dir);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = watcher.join();
            passed
        }
        false => send_output(daemon, link, id, &dir, after),
    }
}

/// Whether container `id` (in `dir`) runs on this host, and has not left.
fn runs_here(daemon: &Daemon, id: &str, dir: &ContainerDir) -> bool {
    dir.is_running() && daemon.moved_to(id).is_none()
}

/// The client's frames to the container's supervisor: standard input only.
fn pass_input(mut link: UnixStream, dir: &ContainerDir) -> Result<(), String> {
    let mut supervisor = UnixStream::connect(dir.socket_path()).map_err(|e| format!("the supervisor: {e}"))?;
    loop {
        let frame = match read_frame(&mut link) {
            Ok(Some(frame @ (Frame::Stdin(_) | Frame::StdinEof))) => frame,
            Ok(None) => return Ok(()),
            Ok(Some(other)) => return Err(format!("{other:?} is not a client's input")),
            Err(e) => return Err(e.to_string()),
        };
        let eof = frame == Frame::StdinEof;
        write_frame(&mut supervisor, &frame).map_err(|e| format!("the supervisor: {e}"))?;
        supervisor.flush().map_err(|e| format!("the supervisor: {e}"))?;
        if eof {
            // Kept until the supervisor has read the end.
            let _ = supervisor.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = std::io::Read::read(&mut supervisor, &mut [0u8; 64]);
            return Ok(());
        }
    }
}

/// The container's log entries past `after`, as they are written, until
/// it no longer runs here.
fn send_output(
    daemon: &Arc<Daemon>,
    mut link: UnixStream,
    id: &str,
    dir: &ContainerDir,
    after: Position,
) -> Result<(), String> {
    let mut skip = after.skipper();
    let (old, mut reader) = LogReader::read_all(&dir.log_path()).map_err(|e| format!("the log: {e}"))?;
    let mut last_sent = Instant::now();
    let mut pending: Vec<LogEntry> = old.into_iter().filter(|e| skip.is_new(e)).collect();
    loop {
        // Read before looking: what it wrote before it ended is sent.
        let here = runs_here(daemon, id, dir);
        if reader.is_none() {
            reader = LogReader::open(&dir.log_path(), 0).ok().flatten();
        }
        if let Some(reader) = reader.as_mut() {
            pending.extend(reader.read_new().into_iter().filter(|e| skip.is_new(e)));
        }
        if !pending.is_empty() || last_sent.elapsed() >= KEEPALIVE {
            for batch in batches(std::mem::take(&mut pending)) {
                wire::send(&mut link, &Message::LogEntries(batch)).map_err(|e| e.to_string())?;
            }
            last_sent = Instant::now();
        }
        if !here {
            return Ok(());
        }
        std::thread::sleep(LOG_POLL);
    }
}

/// `entries` in batches of about `BATCH_BYTES` (one at least, maybe empty).
fn batches(entries: Vec<LogEntry>) -> Vec<Vec<LogEntry>> {
    let mut batches = vec![Vec::new()];
    let mut bytes = 0;
    for entry in entries {
        let size = entry.log.len() + entry.time.len() + 32;
        if bytes + size > BATCH_BYTES && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(batch) = batches.last_mut() {
            batch.push(entry);
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: &str, log: &str) -> LogEntry {
        LogEntry {
            log: log.into(),
            stream: "stdout".into(),
            time: time.into(),
        }
    }

    #[test]
    fn a_position_skips_exactly_what_was_sent() {
        let log = [
            entry("2026-12-04T10:00:00.1Z", "a\n"),
            entry("2026-12-04T10:00:00.25Z", "b\n"),
            entry("2026-12-04T10:00:00.25Z", "c\n"),
            entry("2026-12-04T10:00:00.25Z", "d\n"),
            entry("2026-12-04T10:00:01Z", "e\n"),
        ];
        let mut sent = Position::default();
        for e in &log[..3] {
            sent.record(e);
        }
        assert_eq!(sent.time.as_deref(), Some("2026-12-04T10:00:00.25Z"));
        assert_eq!(sent.at_time, 2);
        let mut skip = sent.skipper();
        let rest: Vec<&str> = log.iter().filter(|e| skip.is_new(e)).map(|e| e.log.as_str()).collect();
        assert_eq!(rest, ["d\n", "e\n"]);
        // Attached now: past what is there already.
        let mut attached = Position::now().skipper();
        assert!(log.iter().all(|e| !attached.is_new(e)));
        let later = chrono::Utc::now() + chrono::Duration::seconds(1);
        let later = later.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        assert!(attached.is_new(&entry(&later, "new\n")));
        // Nothing sent: everything is new; a damaged time is not.
        let mut all = Position::default().skipper();
        assert!(log.iter().all(|e| all.is_new(e)));
        let mut after = sent.skipper();
        assert!(!after.is_new(&entry("not a time", "x\n")));
    }

    #[test]
    fn batches_stay_under_their_size_and_keep_every_entry() {
        let big = "x".repeat(100 << 10);
        let entries: Vec<LogEntry> = (0..7).map(|_| entry("2026-12-04T10:00:00Z", &big)).collect();
        let batches = batches(entries);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 7);
        assert!(
            batches.iter().all(|b| b.len() <= 2),
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(super::batches(Vec::new()), vec![Vec::<LogEntry>::new()]);
    }
}
