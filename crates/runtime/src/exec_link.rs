//! The host's side of an exec's connection to the agent, kept across a move
//! of the container's VM to a new VMM: the old VMM's connections end with
//! it, so the host connects again through the VM's socket (the new VMM's
//! once the move is done; another host's hulld's after a move there:
//! the caller says how, `Reached`) and claims the exec by its session
//! (`Control::ResumeExec`), saying how many of its frames it read. The
//! agent answers with how many of the host's it read and sends again what
//! the host lacks; the host sends again what the agent lacks. Nothing of
//! the exec's output or input is lost or repeated.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::sent_frames::SentFrames;
use proto::{encode_frame, read_frame, write_frame, Control, Frame};

use crate::container::ContainerDir;

/// Input frames kept for an agent that may not have read them.
const KEPT_BYTES: usize = 1 << 20;
/// How long the host tries to take an exec back: a move's switch-over and
/// the agent's return through the new VMM take seconds.
const RESUME_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct ExecLink {
    session: u64,
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    conn: UnixStream,
    /// Frames to the agent after the exec request, the last of them kept.
    sent: SentFrames,
}

/// What taking the exec back gave: its new reading half, and how many of
/// the agent's frames the host will never see (no longer kept).
pub struct Resumed {
    pub reader: UnixStream,
    pub lost: u64,
}

impl ExecLink {
    /// Sends `request` (the exec) to the agent of the container `dir`; the
    /// link and the connection's reading half.
    pub fn open(dir: &ContainerDir, session: u64, request: &Frame) -> std::io::Result<(ExecLink, UnixStream)> {
        let mut conn = crate::agent_link::connect_to(dir)?;
        write_frame(&mut conn, request).map_err(std::io::Error::other)?;
        let reader = conn.try_clone()?;
        let link = ExecLink {
            session,
            writer: Mutex::new(Writer {
                conn,
                sent: SentFrames::default(),
            }),
        };
        Ok((link, reader))
    }

    /// Sends `frame` (input, a signal, a size), kept for a connection made
    /// again; false only if it cannot be encoded or the link is broken. A
    /// write that fails is sent again once the exec is taken back.
    pub fn send(&self, frame: &Frame) -> bool {
        let Ok(bytes) = encode_frame(frame) else { return false };
        let Ok(mut writer) = self.writer.lock() else {
            return false;
        };
        let _ = writer.conn.write_all(&bytes);
        writer.sent.push(bytes);
        let next = writer.sent.next();
        writer.sent.trim(KEPT_BYTES, next);
        true
    }

    /// Takes the exec back after its connection ended without its status,
    /// `received` of the agent's frames read, reaching the agent with
    /// `reach` (asked again at each try: the VM may be moving to a new VMM
    /// here, or to another host, then reached through that host's hulld).
    /// `None` if the container is gone, the exec has no session, or the
    /// agent does not know it.
    pub fn resume(&self, received: u64, reach: &dyn Fn() -> Reached) -> Option<Resumed> {
        if self.session == 0 {
            return None;
        }
        let deadline = Instant::now() + RESUME_PATIENCE;
        while Instant::now() < deadline {
            let conn = match reach() {
                Reached::Agent(conn) => conn,
                Reached::NotYet => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Reached::Gone => return None,
            };
            match self.try_resume(conn, received) {
                Ok(resumed) => return Some(resumed),
                // The agent does not know the session: the exec is gone.
                Err(Attempt::Refused) => return None,
                Err(Attempt::Retry) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        None
    }

    fn try_resume(&self, mut conn: UnixStream, received: u64) -> Result<Resumed, Attempt> {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|_| Attempt::Retry)?;
        let claim = Control::ResumeExec {
            session: self.session,
            output_frames: received,
        };
        write_frame(&mut conn, &Frame::Control(claim)).map_err(|_| Attempt::Retry)?;
        let input_read = match read_frame(&mut conn) {
            Ok(Some(Frame::Control(Control::Hello {
                resume: Some(point), ..
            }))) => point.input_frames,
            Ok(Some(Frame::Control(Control::Failed { .. }))) => return Err(Attempt::Refused),
            _ => return Err(Attempt::Retry),
        };
        let from = match read_frame(&mut conn) {
            Ok(Some(Frame::Control(Control::Replay { from }))) => from,
            _ => return Err(Attempt::Retry),
        };
        // The agent starts where it can: frames the host read already are
        // read again and dropped; frames it no longer keeps are lost.
        for _ in from..received {
            read_frame(&mut conn).map_err(|_| Attempt::Retry)?;
        }
        let lost = from.saturating_sub(received);
        conn.set_read_timeout(None).map_err(|_| Attempt::Retry)?;
        let reader = conn.try_clone().map_err(|_| Attempt::Retry)?;
        let mut writer = self.writer.lock().map_err(|_| Attempt::Refused)?;
        let (_, missing) = writer.sent.since(input_read);
        let again: Vec<u8> = missing.flatten().copied().collect();
        conn.write_all(&again).map_err(|_| Attempt::Retry)?;
        writer.conn = conn;
        Ok(Resumed { reader, lost })
    }

    /// Ends the connection both ways (the exec is over).
    pub fn shutdown(&self) {
        if let Ok(writer) = self.writer.lock() {
            let _ = writer.conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

enum Attempt {
    Retry,
    Refused,
}

/// Where an exec's agent is, for one try at taking the exec back.
pub enum Reached {
    /// A connection to the agent's exec port.
    Agent(UnixStream),
    /// Not reachable now (the VM is moving): try again.
    NotYet,
    /// The container is gone: the exec with it.
    Gone,
}
