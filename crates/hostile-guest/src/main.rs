//! hull-hostile: what a hostile container does, as root in its guest, to
//! the host side of its VM (tests only: `vm_hostile_guest` runs it). Each
//! argument is one act, done in order:
//!
//! - `console:BYTES`: writes BYTES to the serial console (a node it makes).
//! - `ports:FIRST-LAST`: opens vsock connections to the host on every port
//!   in the range.
//! - `hijack-flood:BYTES`: takes the agent's own connection to the host
//!   (pidfd_getfd on PID 1: run with `--pid host` to share the agent's PID namespace;
//!   it needs `--cap-add SYS_PTRACE`) and sends BYTES of output frames in
//!   the agent's name.
//! - `hijack-exit`: in the agent's name, reports an exit with code 99999
//!   and signal 200.
//! - `hijack-garbage`: in the agent's name, sends a frame header claiming
//!   4 GiB and then noise.
//!
//! - `inotify:DIR[,DIR...]`: watches the directories with inotify and
//!   prints each event as `inotify DIR EVENTS NAME`, without end (the
//!   inotify test of vm_binds: what a dev server's file watcher sees).
//!
//! It prints what it did; it stops at the first act it cannot do.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use proto::{write_frame, Control, Frame};

fn main() {
    for act in std::env::args().skip(1) {
        let started = Instant::now();
        let (name, arg) = act.split_once(':').unwrap_or((act.as_str(), ""));
        let done = match name {
            "console" => number(arg).and_then(flood_console),
            "ports" => port_range(arg).and_then(|(first, last)| connect_every_port(first, last)),
            "hijack-flood" => number(arg).and_then(|bytes| hijack(|conn| flood_output(conn, bytes))),
            "hijack-exit" => hijack(report_impossible_exit),
            "hijack-garbage" => hijack(send_garbage),
            "inotify" => print_inotify_events(arg),
            _ => Err(format!("unknown act {act}")),
        };
        match done {
            Ok(what) => println!("hull-hostile: {act}: {what} in {:?}", started.elapsed()),
            Err(e) => {
                println!("hull-hostile: {act}: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn print_inotify_events(dirs: &str) -> Result<String, String> {
    use inotify::{EventMask, Inotify, WatchMask};
    let mut inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
    let mut watched = std::collections::HashMap::new();
    for dir in dirs.split(',') {
        let wd = inotify
            .watches()
            .add(dir, WatchMask::ALL_EVENTS)
            .map_err(|e| format!("watching {dir}: {e}"))?;
        watched.insert(wd, dir.to_owned());
    }
    println!("hull-hostile: inotify: watching {dirs}");
    let names = [
        (EventMask::CREATE, "CREATE"),
        (EventMask::DELETE, "DELETE"),
        (EventMask::MODIFY, "MODIFY"),
        (EventMask::ATTRIB, "ATTRIB"),
        (EventMask::CLOSE_WRITE, "CLOSE_WRITE"),
        (EventMask::MOVED_FROM, "MOVED_FROM"),
        (EventMask::MOVED_TO, "MOVED_TO"),
        (EventMask::ISDIR, "ISDIR"),
    ];
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let events = inotify
            .read_events_blocking(&mut buffer)
            .map_err(|e| format!("reading events: {e}"))?;
        for event in events {
            let masks: Vec<&str> = names
                .iter()
                .filter(|(mask, _)| event.mask.contains(*mask))
                .map(|(_, name)| *name)
                .collect();
            if masks.is_empty() || masks == ["ISDIR"] {
                continue;
            }
            let dir = watched.get(&event.wd).map_or("?", String::as_str);
            let name = event.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            println!("inotify {dir} {} {name}", masks.join(","));
        }
    }
}

fn number(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("not a number: {text:?}"))
}

fn port_range(text: &str) -> Result<(u32, u32), String> {
    let (first, last) = text.split_once('-').ok_or("ports:FIRST-LAST")?;
    let port = |p: &str| p.parse::<u32>().map_err(|_| format!("not a port: {p:?}"));
    Ok((port(first)?, port(last)?))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn flood_console(bytes: u64) -> Result<String, String> {
    let node = c"/hostile-ttyS0";
    // SAFETY: a NUL-terminated path; ttyS0 is character device 4:64.
    unsafe {
        libc::unlink(node.as_ptr());
        if libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(4, 64)) != 0 {
            return Err(os_err("mknod ttyS0"));
        }
    }
    let mut console = File::options()
        .write(true)
        .open("/hostile-ttyS0")
        .map_err(|e| format!("opening ttyS0: {e}"))?;
    let line = b"hull-hostile floods the console: 0123456789abcdefghijklmnopqrstuvwxyz\n";
    let mut written = 0;
    while written < bytes {
        console
            .write_all(line)
            .map_err(|e| format!("writing the console: {e}"))?;
        written += line.len() as u64;
    }
    Ok(format!("wrote {written} bytes"))
}

fn vsock_to_host(port: u32) -> Result<OwnedFd, String> {
    // SAFETY: plain socket calls on a sockaddr_vm we own.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket(AF_VSOCK)"));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_HOST;
        addr.svm_port = port;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        if libc::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), (&raw const addr).cast(), len) != 0 {
            return Err(os_err("connect"));
        }
        Ok(fd)
    }
}

fn connect_every_port(first: u32, last: u32) -> Result<String, String> {
    let (mut refused, mut accepted) = (0, 0);
    for port in first..=last {
        match vsock_to_host(port) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    Ok(format!("{accepted} connections accepted, {refused} refused"))
}

/// Runs `act` on a copy of the agent's vsock connection to the host.
fn hijack(act: impl FnOnce(&mut File) -> Result<String, String>) -> Result<String, String> {
    // SAFETY: pidfd_open and pidfd_getfd take integers; a descriptor they
    // return is ours.
    let agent = unsafe { libc::syscall(libc::SYS_pidfd_open, 1, 0) };
    if agent < 0 {
        return Err(os_err("pidfd_open(1)"));
    }
    // SAFETY: a fresh descriptor.
    let agent = unsafe { OwnedFd::from_raw_fd(agent as i32) };
    for target in 0..256 {
        // SAFETY: as above.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&agent),
                target,
                0,
            )
        };
        if fd < 0 {
            // Not allowed (no CAP_SYS_PTRACE, or the agent not dumpable):
            // say so rather than look on.
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                return Err(os_err("pidfd_getfd on the agent (PID 1)"));
            }
            continue;
        }
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if peer_port(&fd) == Some(proto::AGENT_PORT) {
            return act(&mut File::from(fd)).map(|what| format!("{what} on the agent's descriptor {target}"));
        }
    }
    Err("the agent holds no connection to the host's agent port".into())
}

/// The host port a vsock socket is connected to.
fn peer_port(fd: &OwnedFd) -> Option<u32> {
    // SAFETY: getpeername fills at most `len` bytes of an address we own.
    unsafe {
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let ok = libc::getpeername(std::os::fd::AsRawFd::as_raw_fd(fd), (&raw mut addr).cast(), &mut len) == 0;
        (ok && i32::from(addr.svm_family) == libc::AF_VSOCK && addr.svm_cid == libc::VMADDR_CID_HOST)
            .then_some(addr.svm_port)
    }
}

fn flood_output(conn: &mut File, bytes: u64) -> Result<String, String> {
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        write_frame(conn, &Frame::Stdout(chunk.clone())).map_err(|e| format!("after {sent} bytes: {e}"))?;
        sent += chunk.len() as u64;
    }
    Ok(format!("sent {sent} bytes of output"))
}

fn report_impossible_exit(conn: &mut File) -> Result<String, String> {
    let exit = Control::Exited {
        code: Some(99999),
        signal: Some(200),
    };
    write_frame(conn, &Frame::Control(exit)).map_err(|e| e.to_string())?;
    Ok("reported exit code 99999 and signal 200".into())
}

fn send_garbage(conn: &mut File) -> Result<String, String> {
    let mut noise = u32::MAX.to_le_bytes().to_vec();
    noise.extend((0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    conn.write_all(&noise).map_err(|e| e.to_string())?;
    Ok(format!(
        "sent a 4 GiB frame header and {} bytes of noise",
        noise.len() - 4
    ))
}
