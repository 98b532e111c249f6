//! The agent's side of a connection to the host for one process: frames
//! out, and frames in. The run connection outlives a move of the VM: its
//! new VMM resets the guest's vsock connections, and the agent connects
//! again, says how far it had got, and sends again what the new host lacks
//! from the frames it keeps, so the container's output has no gap and no
//! repeat. An exec's connection is taken back the other way: the host
//! connects again to the exec port and claims it by the exec's session
//! (`ResumeExec`); an exec without a session ends with its connection.

use std::fs::File;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::sent_frames::SentFrames;
use proto::{encode_frame, read_frame, write_frame, Control, Frame, ProtoError, ResumePoint, PROTOCOL_VERSION};

use crate::{console, vsock};

/// Frames already written are kept up to this much for a host that may not
/// have got them: far more than the guest's vsock buffers hold in flight.
const KEPT_BYTES: usize = 2 << 20;
/// Output queued while the host is away, beyond which the container's
/// writers wait, as on a full pipe.
const QUEUED_BYTES: usize = 4 << 20;
/// How long the agent looks for a host after its connection broke: a
/// migration's destination takes the VM's connections once it runs it.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(600);
/// How long an exec's link waits for its host to claim it again: the host
/// does so as soon as the moved VM's new VMM takes connections.
const CLAIM_PATIENCE: Duration = Duration::from_secs(120);

pub struct HostLink {
    state: Mutex<State>,
    changed: Condvar,
    /// How a new connection to the host is made, if one is.
    reach: Reach,
    /// A connection the host claimed this link with, and how many of the
    /// link's frames it had read (`Reach::Claimed`).
    claim: Mutex<Option<(File, u64)>>,
    claimed: Condvar,
}

enum Reach {
    /// The agent connects (the run connection).
    Connect(fn() -> std::io::Result<File>),
    /// The host connects and claims the link (`HostLink::claim`; an exec
    /// with a session).
    Claimed,
    /// None is: a broken connection ends the link.
    Never,
}

fn reach_host() -> std::io::Result<File> {
    vsock::connect_host(proto::AGENT_PORT)
}

struct State {
    /// The writing half; `None` while the host is away.
    conn: Option<File>,
    /// Frames out (the first after `Run` is number 0), the last of them kept.
    sent: SentFrames,
    /// The first frame not written whole to a connection; it and the
    /// frames after it are queued.
    unwritten: u64,
    queued_bytes: usize,
    /// Frames read from the host.
    input_frames: u64,
    /// No host any more: senders give up.
    ended: bool,
}

/// Why one attempt to rejoin a host failed.
enum Rejoin {
    /// Try again (the host went away again, or said something else).
    Retry(String),
    /// The host refused this VM: give up.
    Refused(String),
}

impl HostLink {
    /// The run connection: kept across a move of the VM.
    pub fn resumable(conn: File) -> HostLink {
        HostLink::new(conn, Reach::Connect(reach_host))
    }

    /// An exec's connection with a session: kept across a move, the host
    /// claiming it again (`claim`).
    pub fn claimable(conn: File) -> HostLink {
        HostLink::new(conn, Reach::Claimed)
    }

    /// A connection that ends the link when it breaks.
    pub fn plain(conn: File) -> HostLink {
        HostLink::new(conn, Reach::Never)
    }

    fn new(conn: File, reach: Reach) -> HostLink {
        HostLink {
            state: Mutex::new(State {
                conn: Some(conn),
                sent: SentFrames::default(),
                unwritten: 0,
                queued_bytes: 0,
                input_frames: 0,
                ended: false,
            }),
            changed: Condvar::new(),
            reach,
            claim: Mutex::new(None),
            claimed: Condvar::new(),
        }
    }

    /// Whether a broken connection is made again rather than ending the link.
    fn reconnects(&self) -> bool {
        !matches!(self.reach, Reach::Never)
    }

    /// The host takes this link back over `conn`, having read
    /// `output_frames` of its frames; false if the link has ended.
    pub fn claim(&self, conn: File, output_frames: u64) -> bool {
        if self.lock().is_none_or(|state| state.ended) {
            return false;
        }
        let Ok(mut claim) = self.claim.lock() else { return false };
        *claim = Some((conn, output_frames));
        self.claimed.notify_all();
        true
    }

    /// The next claim, waiting until `deadline`.
    fn next_claim(&self, deadline: Instant) -> Option<(File, u64)> {
        let mut claim = self.claim.lock().ok()?;
        loop {
            if let Some(claimed) = claim.take() {
                return Some(claimed);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            claim = self.claimed.wait_timeout(claim, left).ok()?.0;
        }
    }

    /// Bytes of written frames kept for a replay: none on an exec's link.
    fn kept_bytes(&self) -> usize {
        if self.reconnects() {
            KEPT_BYTES
        } else {
            0
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        self.state.lock().ok()
    }

    /// Sends `frame`, or queues it while the host is away (waiting while
    /// the queue is full); false once no host will take it.
    pub fn send(&self, frame: &Frame) -> bool {
        let Ok(bytes) = encode_frame(frame) else { return false };
        let Some(mut state) = self.lock() else { return false };
        while !state.ended && state.conn.is_none() && state.queued_bytes >= QUEUED_BYTES {
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(_) => return false,
            };
        }
        if state.ended {
            return false;
        }
        let number = state.sent.next();
        let nothing_queued = state.unwritten == number;
        let written = match (&mut state.conn, nothing_queued) {
            (Some(conn), true) => conn.write_all(&bytes).and_then(|()| conn.flush()).is_ok(),
            _ => false,
        };
        if written {
            state.unwritten = number + 1;
        } else {
            state.conn = None;
            if !self.reconnects() {
                state.ended = true;
                return false;
            }
            state.queued_bytes += bytes.len();
        }
        state.sent.push(bytes);
        state.trim(self.kept_bytes());
        true
    }

    /// One frame read from the host: counted, and across a reset of a
    /// resumable connection read from the host the agent reaches next
    /// (`input` becomes that connection's reading half).
    pub fn receive(&self, input: &mut File) -> Result<Option<Frame>, ProtoError> {
        loop {
            match read_frame(input) {
                Ok(Some(frame)) => {
                    if let Some(mut state) = self.lock() {
                        state.input_frames += 1;
                    }
                    return Ok(Some(frame));
                }
                Err(ProtoError::Io(e)) if self.reconnects() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    console("the host connection was reset (the VM moved?): connecting again");
                    match self.reconnect() {
                        Some(again) => *input = again,
                        None => return Err(ProtoError::Io(e)),
                    }
                }
                Ok(None) => {
                    // The host closed: nothing more will be taken.
                    self.end();
                    return Ok(None);
                }
                other => {
                    self.end();
                    return other;
                }
            }
        }
    }

    /// Whether the host is gone for good.
    #[cfg(test)]
    fn ended(&self) -> bool {
        self.lock().is_none_or(|state| state.ended)
    }

    fn end(&self) {
        if let Some(mut state) = self.lock() {
            state.ended = true;
            state.conn = None;
        }
        self.changed.notify_all();
    }

    /// Finds a host again; the new connection's reading half, or `None`
    /// (and the link ends) if none takes the VM back in time.
    fn reconnect(&self) -> Option<File> {
        if let Some(mut state) = self.lock() {
            state.conn = None;
        }
        let patience = match self.reach {
            Reach::Connect(_) => RECONNECT_PATIENCE,
            Reach::Claimed => CLAIM_PATIENCE,
            Reach::Never => Duration::ZERO,
        };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            let outcome = match self.reach {
                Reach::Connect(reach) => match reach() {
                    Ok(conn) => self.rejoin(conn, None),
                    Err(e) => Err(Rejoin::Retry(format!("cannot reach the host over vsock: {e}"))),
                },
                Reach::Claimed => match self.next_claim(deadline) {
                    Some((conn, output_frames)) => self.rejoin(conn, Some(output_frames)),
                    None => break,
                },
                Reach::Never => break,
            };
            match outcome {
                Ok(input) => return Some(input),
                Err(Rejoin::Retry(why)) => {
                    console(&why);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Rejoin::Refused(why)) => {
                    console(&format!("the host refused this VM: {why}"));
                    break;
                }
            }
        }
        self.end();
        None
    }

    /// Says where the connection had got, and sends what the host asks
    /// for again (in its `Resume`, or in its claim: `asked`); the
    /// connection's reading half.
    fn rejoin(&self, mut conn: File, asked: Option<u64>) -> Result<File, Rejoin> {
        let retry = |e: &dyn std::fmt::Display| Rejoin::Retry(format!("rejoining the host: {e}"));
        let mut input = conn.try_clone().map_err(|e| retry(&e))?;
        let point = self.lock().map(|state| ResumePoint {
            output_frames: state.sent.next(),
            input_frames: state.input_frames,
        });
        let hello = Control::Hello {
            version: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").into(),
            resume: point,
        };
        write_frame(&mut conn, &Frame::Control(hello)).map_err(|e| retry(&e))?;
        let asked = match asked {
            Some(asked) => asked,
            None => match read_frame(&mut input) {
                Ok(Some(Frame::Control(Control::Resume { output_frames }))) => output_frames,
                Ok(Some(Frame::Control(Control::Failed { message, .. }))) => return Err(Rejoin::Refused(message)),
                Ok(other) => return Err(retry(&format!("expected Resume, got {other:?}"))),
                Err(e) => return Err(retry(&e)),
            },
        };
        let Some(mut state) = self.lock() else {
            return Err(Rejoin::Refused("the agent's link is broken".into()));
        };
        // A host may ask for more than it can lack, or for frames no longer
        // kept: it gets what there is, and learns where that starts.
        let (from, frames) = state.sent.since(asked);
        let mut replay = encode_frame(&Frame::Control(Control::Replay { from })).map_err(|e| retry(&e))?;
        frames.for_each(|frame| replay.extend_from_slice(frame));
        conn.write_all(&replay).map_err(|e| retry(&e))?;
        state.unwritten = state.sent.next();
        state.queued_bytes = 0;
        state.conn = Some(conn);
        state.trim(self.kept_bytes());
        drop(state);
        self.changed.notify_all();
        Ok(input)
    }
}

impl State {
    /// Drops the oldest frames written beyond `kept` bytes (queued ones stay).
    fn trim(&mut self, kept: usize) {
        let unwritten = self.unwritten;
        self.sent.trim(kept + self.queued_bytes, unwritten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (File, UnixStream) {
        let (agent, host) = UnixStream::pair().unwrap();
        (File::from(std::os::fd::OwnedFd::from(agent)), host)
    }

    /// The host goes away. Shut down, not only closed: a process that a
    /// test beside this one forks meanwhile holds a copy of the descriptor
    /// until it execs, and the agent's writes would still go through.
    fn hang_up(host: UnixStream) {
        host.shutdown(std::net::Shutdown::Both).unwrap();
    }

    fn frames(host: &mut UnixStream) -> Vec<Frame> {
        host.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut got = Vec::new();
        while let Ok(Some(frame)) = read_frame(host) {
            got.push(frame);
        }
        got
    }

    #[test]
    fn frames_written_before_a_break_are_kept_and_later_ones_queued_in_order() {
        let (agent, mut host) = pair();
        let link = HostLink::resumable(agent);
        assert!(link.send(&Frame::Stdout(b"0".to_vec())));
        assert_eq!(frames(&mut host), vec![Frame::Stdout(b"0".to_vec())]);
        hang_up(host);
        // Written into a closed connection: queued, not lost.
        assert!(link.send(&Frame::Stdout(b"1".to_vec())));
        assert!(link.send(&Frame::Stderr(b"2".to_vec())));
        let state = link.lock().unwrap();
        assert!(state.conn.is_none());
        assert_eq!((state.sent.since(0).0, state.unwritten, state.sent.next()), (0, 1, 3));
        assert_eq!(state.sent.since(0).1.count(), 3);
    }

    static NEXT_HOST: Mutex<Option<File>> = Mutex::new(None);

    fn next_host() -> std::io::Result<File> {
        NEXT_HOST
            .lock()
            .unwrap()
            .take()
            .ok_or(std::io::ErrorKind::ConnectionRefused.into())
    }

    #[test]
    fn a_new_host_gets_what_it_lacks_once_in_order_and_then_the_rest() {
        let (agent, mut first_host) = pair();
        let mut link = HostLink::resumable(agent);
        link.reach = Reach::Connect(next_host);
        let out = |n: u8| Frame::Stdout(vec![n]);
        assert!(link.send(&out(0)) && link.send(&out(1)));
        // The old host read frame 0; frame 1 was lost in flight.
        assert_eq!(read_frame(&mut first_host).unwrap(), Some(out(0)));
        hang_up(first_host);
        assert!(link.send(&out(2)), "queued while the host is away");
        let (agent, mut host) = pair();
        *NEXT_HOST.lock().unwrap() = Some(agent);
        let new_host = std::thread::spawn(move || {
            let hello = read_frame(&mut host).unwrap();
            let Some(Frame::Control(Control::Hello {
                resume: Some(point), ..
            })) = hello
            else {
                panic!("{hello:?}")
            };
            assert_eq!(point.output_frames, 3);
            write_frame(&mut host, &Frame::Control(Control::Resume { output_frames: 1 })).unwrap();
            frames(&mut host)
        });
        assert!(link.reconnect().is_some());
        assert!(link.send(&out(3)));
        let got = new_host.join().unwrap();
        assert_eq!(
            got,
            vec![Frame::Control(Control::Replay { from: 1 }), out(1), out(2), out(3)]
        );
        // A host that asks for more than was ever sent gets from the end.
        let (agent, mut host) = pair();
        *NEXT_HOST.lock().unwrap() = Some(agent);
        let greedy = std::thread::spawn(move || {
            read_frame(&mut host).unwrap();
            write_frame(&mut host, &Frame::Control(Control::Resume { output_frames: 99 })).unwrap();
            frames(&mut host)
        });
        assert!(link.reconnect().is_some());
        assert_eq!(
            greedy.join().unwrap(),
            vec![Frame::Control(Control::Replay { from: 4 })]
        );
    }

    #[test]
    fn an_exec_link_is_claimed_back_by_its_host_and_gets_what_it_lacks() {
        let (agent, mut first_host) = pair();
        let link = std::sync::Arc::new(HostLink::claimable(agent));
        let out = |n: u8| Frame::Stdout(vec![n]);
        assert!(link.send(&out(0)));
        assert_eq!(read_frame(&mut first_host).unwrap(), Some(out(0)));
        hang_up(first_host);
        assert!(link.send(&out(1)), "queued while the host is away");
        let (agent, mut host) = pair();
        let claimer = link.clone();
        let new_host = std::thread::spawn(move || {
            assert!(claimer.claim(agent, 1));
            frames(&mut host)
        });
        assert!(link.reconnect().is_some());
        assert!(link.send(&out(2)));
        let got = new_host.join().unwrap();
        let Some(Frame::Control(Control::Hello {
            resume: Some(point), ..
        })) = got.first()
        else {
            panic!("{got:?}")
        };
        assert_eq!((point.output_frames, point.input_frames), (2, 0));
        assert_eq!(got[1..], [Frame::Control(Control::Replay { from: 1 }), out(1), out(2)]);
    }

    #[test]
    fn an_exec_link_ends_with_its_connection() {
        let (agent, host) = pair();
        let link = HostLink::plain(agent);
        hang_up(host);
        assert!(!link.send(&Frame::Stdout(b"x".to_vec())));
        assert!(link.ended());
        assert_eq!(link.lock().unwrap().sent.bytes(), 0);
    }

    #[test]
    fn only_written_frames_beyond_the_bound_are_dropped() {
        let (agent, mut host) = pair();
        let link = HostLink::resumable(agent);
        let reader = std::thread::spawn(move || while let Ok(Some(_)) = read_frame(&mut host) {});
        let chunk = vec![7u8; proto::CHUNK];
        for _ in 0..(KEPT_BYTES / proto::CHUNK) * 2 {
            assert!(link.send(&Frame::Stdout(chunk.clone())));
        }
        {
            let state = link.lock().unwrap();
            assert!(
                state.sent.bytes() <= KEPT_BYTES + proto::CHUNK + 5,
                "{}",
                state.sent.bytes()
            );
            let (first, kept) = state.sent.since(0);
            assert!(first > 0);
            assert_eq!(first + kept.count() as u64, state.sent.next());
        }
        link.end();
        drop(link);
        reader.join().unwrap();
    }
}
