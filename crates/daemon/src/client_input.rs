//! A client's standard input on a hijacked connection (`attach`, `exec`):
//! what each read passes on (a terminal's detach keys, the end of input),
//! and the one pump that carries it to where the process reads it — the
//! container's supervisor for an attach, the agent's exec connection for
//! an exec.

use std::sync::Arc;

use proto::Frame;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How a client's input is passed on.
pub struct ClientInput {
    /// Its end is the process's end of input.
    pub pass_eof: bool,
    /// A terminal's: watched for the detach keys.
    pub escape: Option<crate::detach::Escape>,
    /// Told when the client typed them.
    pub detached: Arc<tokio::sync::Notify>,
}

impl ClientInput {
    /// What one read of the client's input (`None`: its end, or an error)
    /// passes on, and whether to read on.
    pub fn take(&mut self, read: Option<&[u8]>) -> (Option<Frame>, bool) {
        let Some(bytes) = read.filter(|b| !b.is_empty()) else {
            return (self.pass_eof.then_some(Frame::StdinEof), false);
        };
        let Some(escape) = self.escape.as_mut() else {
            return (Some(Frame::Stdin(bytes.to_vec())), true);
        };
        let (typed, detached) = escape.feed(bytes);
        if detached {
            self.detached.notify_one();
        }
        ((!typed.is_empty()).then_some(Frame::Stdin(typed)), !detached)
    }
}

/// Where the frames of a client's input go.
pub(crate) trait InputSink {
    /// Passes one frame on; false once it cannot take more.
    async fn send(&mut self, frame: &Frame) -> bool;
    /// The client's input is over (`eof`: the process was told so).
    async fn finish(&mut self, eof: bool);
}

/// Client bytes → `sink`, framed, as `input` says, until the client's
/// input ends, it detaches or the sink goes away.
pub(crate) async fn pump(mut client: impl AsyncRead + Unpin, mut input: ClientInput, mut sink: impl InputSink) {
    let mut buf = vec![0u8; proto::CHUNK];
    loop {
        let read = client.read(&mut buf).await.ok();
        let (frame, more) = input.take(read.map(|n| &buf[..n]));
        let eof = frame == Some(Frame::StdinEof);
        if let Some(frame) = frame {
            if !sink.send(&frame).await {
                return;
            }
        }
        if eof || !more {
            return sink.finish(eof).await;
        }
    }
}
