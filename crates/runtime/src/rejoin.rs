//! The host's side of a running container's agent coming back after its
//! VM moved to another VMM (live migration): the agent keeps the container
//! and its output while it has no host, says how far its run connection
//! had got, and sends again what the host lacks.

use std::os::unix::net::UnixStream;

use proto::{read_frame, write_frame, Control, Frame, ResumePoint, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    #[error("the agent speaks protocol version {0}, this hull speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the agent runs no container any more (it said hello afresh): the container was lost in the move")]
    Fresh,
    #[error("the agent's connection after the move: {0}")]
    Broken(String),
}

/// Where the agent's replay starts, against what the host asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejoined {
    /// The number of the next frame on the connection.
    pub from: u64,
    /// Frames the host lacked that the agent no longer had (output lost).
    pub lost: u64,
    /// How far the agent had got when the connection broke.
    pub agent: ResumePoint,
}

/// Takes back the run connection `conn` of an agent whose VM moved: the
/// host holds its first `output_frames` frames. After this, the frames on
/// `conn` are the run connection's from `Rejoined::from` on
/// (`run::follow` reads them).
pub fn rejoin(conn: &mut UnixStream, output_frames: u64) -> Result<Rejoined, RejoinError> {
    let broken = |e: proto::ProtoError| RejoinError::Broken(e.to_string());
    let agent = match read_frame(conn).map_err(broken)? {
        Some(Frame::Control(Control::Hello { version, .. })) if version != PROTOCOL_VERSION => {
            let message = format!("protocol version {PROTOCOL_VERSION} required");
            let _ = write_frame(
                conn,
                &Frame::Control(Control::Failed {
                    message,
                    exit_code: 125,
                }),
            );
            return Err(RejoinError::Version(version));
        }
        Some(Frame::Control(Control::Hello {
            resume: Some(point), ..
        })) => point,
        Some(Frame::Control(Control::Hello { resume: None, .. })) => return Err(RejoinError::Fresh),
        other => {
            return Err(RejoinError::Broken(format!(
                "expected the agent's hello, got {other:?}"
            )))
        }
    };
    write_frame(conn, &Frame::Control(Control::Resume { output_frames })).map_err(broken)?;
    let from = match read_frame(conn).map_err(broken)? {
        Some(Frame::Control(Control::Replay { from })) => from,
        other => {
            return Err(RejoinError::Broken(format!(
                "expected the agent's replay, got {other:?}"
            )))
        }
    };
    // From a guest: a start before what the host asked for would repeat
    // output the host has; one past what the agent produced is nonsense.
    if from < output_frames || from > agent.output_frames {
        return Err(RejoinError::Broken(format!(
            "the agent replays from frame {from}; the host asked for {output_frames} and the agent had {}",
            agent.output_frames
        )));
    }
    Ok(Rejoined {
        from,
        lost: from - output_frames,
        agent,
    })
}

/// Says in the container's output how many of its frames the agent no
/// longer had when it came back (none, almost always).
pub(crate) fn note_lost(rejoined: &Rejoined, attachment: &mut dyn crate::run::Attachment) {
    if rejoined.lost > 0 {
        let note = format!(
            "hull: {} frames of the container's output were lost while its VM moved\n",
            rejoined.lost
        );
        attachment.output(crate::run::OutputStream::Stderr, note.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_says(frames: &[Frame]) -> (UnixStream, std::thread::JoinHandle<Vec<Frame>>) {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let frames = frames.to_vec();
        let agent = std::thread::spawn(move || {
            let mut heard = Vec::new();
            for frame in &frames {
                write_frame(&mut agent, frame).unwrap();
                if matches!(frame, Frame::Control(Control::Hello { .. })) {
                    heard.extend(read_frame(&mut agent).ok().flatten());
                }
            }
            heard
        });
        (host, agent)
    }

    fn hello(resume: Option<ResumePoint>) -> Frame {
        Frame::Control(Control::Hello {
            version: PROTOCOL_VERSION,
            agent: "t".into(),
            resume,
        })
    }

    const POINT: ResumePoint = ResumePoint {
        output_frames: 9,
        input_frames: 1,
    };

    #[test]
    fn the_host_says_what_it_holds_and_learns_where_the_replay_starts() {
        let (mut host, agent) = agent_says(&[hello(Some(POINT)), Frame::Control(Control::Replay { from: 7 })]);
        let rejoined = rejoin(&mut host, 5).unwrap();
        assert_eq!(
            agent.join().unwrap(),
            vec![Frame::Control(Control::Resume { output_frames: 5 })]
        );
        assert_eq!(
            rejoined,
            Rejoined {
                from: 7,
                lost: 2,
                agent: POINT
            }
        );
    }

    #[test]
    fn a_fresh_agent_an_old_one_and_a_lying_one_are_refused() {
        let (mut host, _) = agent_says(&[hello(None)]);
        assert!(matches!(rejoin(&mut host, 0), Err(RejoinError::Fresh)));
        let old = Frame::Control(Control::Hello {
            version: PROTOCOL_VERSION - 1,
            agent: "t".into(),
            resume: Some(POINT),
        });
        let (mut host, agent) = agent_says(&[old]);
        assert!(matches!(rejoin(&mut host, 0), Err(RejoinError::Version(_))));
        assert!(matches!(
            agent.join().unwrap().as_slice(),
            [Frame::Control(Control::Failed { .. })]
        ));
        for from in [4, 10] {
            let (mut host, _) = agent_says(&[hello(Some(POINT)), Frame::Control(Control::Replay { from })]);
            assert!(matches!(rejoin(&mut host, 5), Err(RejoinError::Broken(_))), "{from}");
        }
    }
}
