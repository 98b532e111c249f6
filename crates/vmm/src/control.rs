//! The control channel: a unix socket on which the VM's supervisor sends
//! typed requests (`proto::vmm_control`), a tap's descriptor with a
//! request to plug a NIC. Its thread only parses and
//! relays: every request is carried out by the VMM thread, which owns the VM.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use proto::vmm_control::{parse_message, write_message, ControlError, VmmReply, VmmRequest, MAX_LINE};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::vcpu::VmmEvent;
use crate::vm::{thread_err, VmError};

/// Binds the control socket at `path`, owner-only (before the VMM is
/// jailed: the jail's directory is not writable to it).
pub fn bind(path: &Path) -> Result<UnixListener, VmError> {
    let fail = |source| VmError::Control {
        path: path.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// The client's side: sends `request` (with `fd`, in the same sendmsg so
/// that the descriptor travels with its line) on a connected control
/// socket and reads the reply.
pub fn ask(
    stream: &UnixStream,
    request: &VmmRequest,
    fd: Option<&impl std::os::unix::io::AsRawFd>,
) -> Result<VmmReply, ControlError> {
    ask_following(stream, request, fd, &mut |_| {})
}

/// `ask`, with each `Progress` that comes before the reply (a migration's
/// rounds) given to `progress`.
pub fn ask_following(
    stream: &UnixStream,
    request: &VmmRequest,
    fd: Option<&impl std::os::unix::io::AsRawFd>,
    progress: &mut dyn FnMut(proto::MigrationProgress),
) -> Result<VmmReply, ControlError> {
    let line = proto::vmm_control::encode_message(request)?;
    let fds: Vec<std::os::unix::io::RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let sent = stream
        .send_with_fds(&[&line[..]], &fds)
        .map_err(|e| ControlError::Io(e.into()))?;
    if sent != line.len() {
        return Err(ControlError::Io(std::io::Error::other(
            "the VMM took part of a request",
        )));
    }
    let mut replies = std::io::BufReader::new(stream);
    loop {
        match proto::vmm_control::read_message(&mut replies)? {
            Some(VmmReply::Progress(p)) => progress(p),
            Some(reply) => return Ok(reply),
            None => return Err(ControlError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

/// The most descriptors one reply brings (a VM's taps).
const MAX_LENT: usize = 8;

/// Borrows the VM's taps (`VmmRequest::Taps`): each NIC slot on a tap,
/// with a descriptor of that tap, for a VMM the VM moves to on this host.
pub fn borrow_taps(stream: &UnixStream) -> Result<Vec<(u8, File)>, String> {
    use std::io::Write;
    use std::os::unix::io::FromRawFd;
    let failed = |e: &dyn std::fmt::Display| format!("borrowing the VM's taps: {e}");
    let line = proto::vmm_control::encode_message(&VmmRequest::Taps).map_err(|e| failed(&e))?;
    (&*stream).write_all(&line).map_err(|e| failed(&e))?;
    let mut received = Vec::new();
    let mut lent = Vec::new();
    let line = loop {
        let mut chunk = [0u8; 512];
        let mut fds = [-1; MAX_LENT];
        let mut iov = [libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: chunk.len(),
        }];
        // SAFETY: the iovec points into `chunk`, which outlives the call and
        // may take any bytes.
        let (read, count) = unsafe { stream.recv_with_fds(&mut iov, &mut fds) }.map_err(|e| failed(&e))?;
        // SAFETY: the first `count` are descriptors just received, ours alone.
        lent.extend(fds[..count].iter().map(|&fd| unsafe { File::from_raw_fd(fd) }));
        if read == 0 {
            return Err(failed(&"the VMM closed the connection"));
        }
        received.extend_from_slice(&chunk[..read]);
        if let Some(end) = received.iter().position(|&b| b == b'\n') {
            break received[..=end].to_vec();
        }
        if received.len() > MAX_LINE {
            return Err(failed(&ControlError::Oversized));
        }
    };
    match proto::vmm_control::parse_message::<VmmReply>(&line).map_err(|e| failed(&e))? {
        VmmReply::Taps { slots } if slots.len() == lent.len() => Ok(slots.into_iter().zip(lent).collect()),
        VmmReply::Taps { slots } => Err(failed(&format!(
            "{} descriptors came for {} NICs",
            lent.len(),
            slots.len()
        ))),
        VmmReply::Failed { reason } => Err(reason),
        other => Err(failed(&format!("the VMM answered {other:?}"))),
    }
}

/// Serves the control socket on a thread of its own.
pub fn serve(listener: UnixListener, events: Sender<VmmEvent>) -> Result<(), VmError> {
    let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Control)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Control);
            // One client at a time: the supervisor is the only one.
            for stream in listener.incoming().flatten() {
                serve_client(stream, &events);
            }
        })
        .map(|_| ())
        .map_err(thread_err("control"))
}

fn serve_client(stream: UnixStream, events: &Sender<VmmEvent>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut incoming = Incoming {
        stream,
        buffer: Vec::new(),
        fd: None,
    };
    loop {
        let (request, fd) = match incoming.next() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                let _ = write_message(&mut writer, &VmmReply::Failed { reason: e.to_string() });
                return;
            }
        };
        let (reply_to, reply) = mpsc::channel();
        let (written_tx, written) = mpsc::channel();
        let event = VmmEvent::Control {
            request,
            fd,
            reply: reply_to,
            written,
        };
        if events.send(event).is_err() {
            return;
        }
        // A migration's progress first, then the one reply that ends the request.
        loop {
            let (reply, lent) = reply.recv().unwrap_or_else(|_| {
                let stopping = VmmReply::Failed {
                    reason: "the VM is stopping".into(),
                };
                (stopping, Vec::new())
            });
            let last = !matches!(reply, VmmReply::Progress(_));
            let sent = match lent.is_empty() {
                true => write_message(&mut writer, &reply),
                false => send_with_descriptors(&writer, &reply, &lent),
            };
            if last {
                let _ = written_tx.send(());
            }
            if sent.is_err() {
                return;
            }
            if last {
                break;
            }
        }
    }
}

/// One reply line with `lent` beside it, in one sendmsg.
fn send_with_descriptors(writer: &UnixStream, reply: &VmmReply, lent: &[File]) -> Result<(), ControlError> {
    use std::os::unix::io::AsRawFd;
    let line = proto::vmm_control::encode_message(reply)?;
    let fds: Vec<_> = lent.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = writer.send_with_fds(&[&line[..]], &fds).map_err(std::io::Error::from)?;
    if sent != line.len() {
        return Err(std::io::Error::other("the client took part of a reply").into());
    }
    Ok(())
}

/// Requests as they arrive, each with the descriptor (a tap) that came
/// with it, if any.
struct Incoming {
    stream: UnixStream,
    buffer: Vec<u8>,
    /// A descriptor received and not yet given to a request.
    fd: Option<File>,
}

impl Incoming {
    fn next(&mut self) -> Result<Option<(VmmRequest, Option<File>)>, ControlError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let request = parse_message(&line)?;
                return Ok(Some((request, self.fd.take())));
            }
            if self.buffer.len() > MAX_LINE {
                return Err(ControlError::Oversized);
            }
            let mut chunk = [0u8; 512];
            // One descriptor at most: the kernel closes any more that were sent.
            let (read, fd) = self.stream.recv_with_fd(&mut chunk).map_err(std::io::Error::from)?;
            if read == 0 {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    false => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                };
            }
            self.buffer.extend_from_slice(&chunk[..read]);
            if fd.is_some() {
                self.fd = fd;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    fn connected() -> (Incoming, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let incoming = Incoming {
            stream: ours,
            buffer: Vec::new(),
            fd: None,
        };
        (incoming, theirs)
    }

    #[test]
    fn a_descriptor_comes_with_its_request() {
        let (mut incoming, client) = connected();
        let tap = File::open("/dev/null").unwrap();
        client
            .send_with_fd(&b"{\"plug_nic\":{\"slot\":2}}\n"[..], tap.as_raw_fd())
            .unwrap();
        std::io::Write::write_all(&mut &client, b"\"describe\"\n").unwrap();
        let (request, fd) = incoming.next().unwrap().unwrap();
        assert_eq!(request, VmmRequest::PlugNic { slot: 2 });
        assert!(fd.is_some());
        let (request, fd) = incoming.next().unwrap().unwrap();
        assert_eq!(request, VmmRequest::Describe);
        assert!(fd.is_none(), "a descriptor goes with one request only");
        drop(client);
        assert!(incoming.next().unwrap().is_none());
    }

    #[test]
    fn hostile_lines_end_the_connection_with_an_error() {
        let (mut incoming, client) = connected();
        std::io::Write::write_all(&mut &client, &vec![b'x'; MAX_LINE * 2]).unwrap();
        assert!(matches!(incoming.next(), Err(ControlError::Oversized)));
        let (mut incoming, client) = connected();
        std::io::Write::write_all(&mut &client, b"{\"plug_nic\":{\"slot\":300}}\n").unwrap();
        assert!(matches!(incoming.next(), Err(ControlError::Malformed(_))));
        let (mut incoming, client) = connected();
        std::io::Write::write_all(&mut &client, b"\"pause\"").unwrap();
        drop(client);
        assert!(matches!(incoming.next(), Err(ControlError::Io(_))));
    }
}
