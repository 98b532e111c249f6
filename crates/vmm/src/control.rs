//! The control channel: a unix socket on which the VM's supervisor sends
//! typed requests (`proto::vmm_control`). Its thread only parses and
//! relays: every request is carried out by the VMM thread, which owns the VM.

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};

use proto::vmm_control::{read_message, write_message, VmmReply, VmmRequest};

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
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_message::<VmmRequest>(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                let _ = write_message(&mut writer, &VmmReply::Failed { reason: e.to_string() });
                return;
            }
        };
        let (reply_to, reply) = mpsc::channel();
        if events.send(VmmEvent::Control(request, reply_to)).is_err() {
            return;
        }
        let reply = reply.recv().unwrap_or(VmmReply::Failed {
            reason: "the VM is stopping".into(),
        });
        if write_message(&mut writer, &reply).is_err() {
            return;
        }
    }
}
