//! `hull-agent`: PID 1 inside every hull guest.
//!
//! It loads the kernel modules the initramfs carries, (in a template) stops
//! at the snapshot point every clone resumes from, connects to the host
//! over vsock, and runs the one container command the host asks for: root
//! filesystem disk mounted read-only under a tmpfs overlay, the usual
//! /proc, /sys, /dev, /dev/pts, /dev/shm and /tmp, hostname, network
//! (loopback, NICs, /etc/hosts and resolv.conf), uid:gid,
//! environment and working directory. Standard streams travel over the same
//! vsock connection; signals from the host are delivered; orphans are
//! reaped; the exit status (or killing signal) is reported; then the VM
//! powers off. While the command runs, the agent listens on vsock port
//! `EXEC_PORT` for more processes in the container (`docker exec`) and for
//! containers that join the VM's network (`joined`), one connection each.

mod archive;
mod host_changes;
mod host_link;
mod init;
mod joined;
mod launch;
mod limits;
mod machine;
mod mounts;
mod network;
mod pid_namespace;
mod read_ahead;
mod report;
mod steps;
mod terminal;
mod user;
mod vsock;

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::thread;

use pid_namespace::Pids;
use proto::{read_frame, write_frame, Control, Frame, GuestNetwork, ProcessSpec, ProtoError, CHUNK, PROTOCOL_VERSION};

/// Where the container's root filesystem is assembled.
const ROOT: &str = "/mnt/root";

/// The list of modules (file names in load order) the initramfs carries.
const MODULES_DIR: &str = "/lib/modules/hull";

type Sink = Arc<host_link::HostLink>;

/// The links of running execs that have a session, by session: the host
/// claims one again when its connection broke as the VM moved.
static EXEC_SESSIONS: Mutex<std::collections::BTreeMap<u64, std::sync::Weak<host_link::HostLink>>> =
    Mutex::new(std::collections::BTreeMap::new());

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if init::is_init(&args) {
        std::process::exit(init::main(&args));
    }
    if let [_, helper, op] = args.as_slice() {
        if helper == archive::HELPER_ARG {
            std::process::exit(archive::helper_main(op));
        }
        if helper == mounts::HELPER_ARG {
            std::process::exit(mounts::helper_main(op));
        }
    }
    // Not dumpable: a container's process, root or not, can neither trace
    // the agent nor take its descriptors (the host connection) without
    // CAP_SYS_PTRACE, which Docker's default set leaves out.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if let Err(e) = mounts::early() {
        console(&format!("early mounts failed: {e}"));
    }
    load_modules();
    if let Err(e) = limits::mount_hierarchy() {
        console(&format!("mounting the cgroup hierarchy: {e}"));
    }
    if let Err(e) = network::prepare() {
        console(&format!("network: {e}"));
    }
    if let Err(e) = pid_namespace::warm_up() {
        console(&format!("making a PID namespace ahead: {e}"));
    }
    machine::snapshot_point();
    match vsock::connect_host(proto::AGENT_PORT) {
        Ok(conn) => serve(conn),
        Err(e) => console(&format!("cannot reach the host over vsock: {e}")),
    }
    power_off();
}

/// What a container's start sets up in the VM outside its root: its NICs,
/// its cgroup, the hostname.
fn set_up_the_machine(network: &GuestNetwork, pids_limit: Option<u64>, hostname: &str) -> Result<(), String> {
    network::set_nics(network).map_err(|e| format!("setting up the network: {e}"))?;
    limits::container_group(pids_limit).map_err(|e| format!("making the container's cgroup: {e}"))?;
    if let Err(e) = sethostname(hostname) {
        console(&format!("sethostname: {e}"));
    }
    steps::done("cgroup and hostname");
    Ok(())
}

fn console(message: &str) {
    eprintln!("hull-agent: {message}");
}

fn load_modules() {
    let order = std::fs::read_to_string(format!("{MODULES_DIR}/order")).unwrap_or_default();
    for name in order.split_whitespace() {
        let path = format!("{MODULES_DIR}/{name}");
        let loaded = File::open(&path).and_then(|file| {
            use std::os::unix::io::AsRawFd;
            let params = CString::default();
            // SAFETY: finit_module reads the open module file and an empty parameter string.
            let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        });
        if let Err(e) = loaded {
            console(&format!("loading {name}: {e}"));
        }
    }
}

fn send(sink: &Sink, frame: &Frame) -> bool {
    sink.send(frame)
}

fn fail(sink: &Sink, message: String, exit_code: i32) {
    console(&message);
    // Like an exit: what was written is on the disks before the host hears.
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    send(sink, &Frame::Control(Control::Failed { message, exit_code }));
}

/// Says hello to the host and waits for its request, mounting or
/// unmounting a standby's root meanwhile as the host asks (`prepared`
/// then says whether one is mounted). A connection reset meanwhile means
/// the VM was moved to another host (its VMM resets the guest's vsock
/// transport): the agent, holding no container yet, says hello again to
/// the host it is on now. The connection, its writing half and the host's
/// first frame after those.
fn await_request(
    mut conn: File,
    prepared: &mut mounts::Prepared,
) -> Option<(Sink, File, Result<Option<Frame>, ProtoError>)> {
    loop {
        let mut input = match conn.try_clone() {
            Ok(input) => input,
            Err(e) => {
                console(&format!("vsock: {e}"));
                return None;
            }
        };
        let hello = Control::Hello {
            version: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").into(),
            resume: None,
        };
        let said = write_frame(&mut conn, &Frame::Control(hello));
        let greeted = said.is_ok();
        let first = match said {
            Ok(()) => {
                let first = read_frame(&mut input);
                prepare_until_run(&mut conn, &mut input, first, prepared)
            }
            Err(e) => Err(e),
        };
        let reset = matches!(&first, Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset);
        if !reset {
            if !greeted {
                console("the host closed the connection");
                return None;
            }
            return Some((Arc::new(host_link::HostLink::resumable(conn)), input, first));
        }
        console("the host connection was reset (the VM moved?): connecting again");
        conn = match vsock::connect_host(proto::AGENT_PORT) {
            Ok(conn) => conn,
            Err(e) => {
                console(&format!("cannot reach the host over vsock: {e}"));
                return None;
            }
        };
    }
}

/// Answers the host's `Prepare` and `Release` of a standby's root, each
/// in turn, from `frame` on: the first other frame (the request).
fn prepare_until_run(
    conn: &mut File,
    input: &mut File,
    mut frame: Result<Option<Frame>, ProtoError>,
    prepared: &mut mounts::Prepared,
) -> Result<Option<Frame>, ProtoError> {
    loop {
        let failed = |message: String| Control::Failed {
            message,
            exit_code: 125,
        };
        let reply = match &frame {
            Ok(Some(Frame::Control(Control::Prepare(root)))) => match prepare(root) {
                Ok(mounted) => {
                    *prepared = mounted;
                    Control::Prepared
                }
                Err(message) => failed(message),
            },
            Ok(Some(Frame::Control(Control::Release))) => {
                match network::unbind_ahead(ROOT).and_then(|()| mounts::release_root(ROOT, *prepared)) {
                    Ok(()) => {
                        *prepared = mounts::Prepared::Nothing;
                        Control::Released
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            _ => return frame,
        };
        write_frame(conn, &Frame::Control(reply))?;
        frame = read_frame(input);
    }
}

/// Mounts a standby's root as the host asked (`Control::Prepare`): how
/// much of it; on failure, nothing of it stays mounted.
fn prepare(root: &proto::PreparedRoot) -> Result<mounts::Prepared, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mounted = root
        .disks
        .iter()
        .try_for_each(|disk| machine::wait_for_disk_size(&disk.device, disk.sectors, deadline))
        .and_then(|()| mounts::prepare_root(&root.root_device, &root.root_fstype, &root.rw_device, ROOT));
    let mounted = mounted.map_err(|e| format!("preparing the root filesystem: {e}"))?;
    // Whatever container comes: its NICs are up and its cgroup made already.
    if let Err(e) = network::raise_nics() {
        console(&format!("network: {e}"));
    }
    if let Err(e) = limits::container_group(None) {
        console(&format!("making the container's cgroup: {e}"));
    }
    if let Err(e) = network::bind_ahead(ROOT) {
        console(&format!("binding /etc files ahead: {e}"));
    }
    if let Err(e) = read_ahead::command(ROOT, &root.command_paths) {
        console(&format!("reading the command ahead: {e}"));
    }
    if let Err(e) = read_ahead::files(ROOT, &read_ahead::ALWAYS_READ) {
        console(&format!("reading the user and group files ahead: {e}"));
    }
    Ok(mounted)
}

fn serve(conn: File) {
    let mut prepared = mounts::Prepared::Nothing;
    let Some((sink, input, first)) = await_request(conn, &mut prepared) else {
        return;
    };
    let spec = match first {
        Ok(Some(Frame::Control(Control::Run(spec)))) => spec,
        Ok(Some(Frame::Control(Control::Failed { message, .. }))) => return console(&format!("host: {message}")),
        Ok(other) => return fail(&sink, format!("expected a run request, got {other:?}"), 125),
        Err(e) => return fail(&sink, format!("reading the run request: {e}"), 125),
    };
    steps::start(spec.trace);
    if let Err(e) = machine::reseed(&spec.entropy) {
        return fail(&sink, format!("reseeding the guest's random generator: {e}"), 125);
    }
    steps::done("reseeded");
    if let Err(e) = machine::set_clock(spec.wall_clock_ns) {
        console(&format!("setting the clock: {e}"));
    }
    steps::done("reseeded, clock set");
    // The NICs, cgroup and hostname need nothing of the container's root:
    // they are set while the disks are read (the vCPU would otherwise wait
    // on each read).
    let beside_the_disks = {
        let (network, pids_limit, hostname) = (
            spec.network.clone().unwrap_or_default(),
            spec.pids_limit,
            spec.hostname.clone(),
        );
        thread::spawn(move || set_up_the_machine(&network, pids_limit, &hostname))
    };
    if let Err(e) = machine::wait_for_disks(&spec) {
        return fail(&sink, format!("waiting for the disks: {e}"), 125);
    }
    steps::done("the disks have their sizes");
    if let Err(e) = mounts::container_root(&spec, ROOT, prepared) {
        return fail(&sink, format!("preparing the root filesystem: {e}"), 125);
    }
    if let Err(e) = mounts::volumes(&spec, ROOT) {
        return fail(&sink, e.to_string(), 125);
    }
    steps::done("mounted");
    let machine = beside_the_disks
        .join()
        .unwrap_or_else(|_| Err("the thread setting up the NICs and cgroup panicked".into()));
    if let Err(e) = machine {
        return fail(&sink, e, 125);
    }
    if let Err(e) = network::write_etc_files(&spec, ROOT) {
        return fail(&sink, format!("setting up the network: {e}"), 125);
    }
    steps::done("network");
    let reaper = Reaper::start();
    if spec.process.argv.is_empty() {
        return hold(&sink, input, reaper);
    }
    let pids = if spec.pid_host { Pids::Vm } else { Pids::New };
    let mut process = match spawn(&spec.process, pids, spec.init) {
        Ok(process) => process,
        Err((message, code)) => return fail(&sink, message, code),
    };
    steps::done("the command spawned");
    {
        let reaper = reaper.clone();
        thread::spawn(move || serve_execs_after(reaper, settle_raised_nics));
    }
    let ending = reaper.clone();
    let sync = !spec.disposable;
    relay(&mut process, &sink, input, &reaper, move || {
        steps::done("the command ended");
        end_container(&ending, sync);
        steps::print();
    });
}

fn settle_raised_nics() {
    if let Err(e) = network::settle_raised_nics() {
        console(&format!("settling the NICs raised ahead: {e}"));
    }
}

/// Set once the VM's own container has ended and the VM is going: what
/// dies then was killed by that end, not by its own doing.
static VM_ENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the VM is going (its own container ended).
fn vm_ending() -> bool {
    VM_ENDING.load(std::sync::atomic::Ordering::SeqCst)
}

/// The container ends with its main process: nothing else survives it, and
/// its writes are on the disks before the host hears of the end (`sync`,
/// unless the host throws them away), so the host may end the VM then
/// without waiting for the guest to power off.
fn end_container(reaper: &Reaper, sync: bool) {
    VM_ENDING.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: kill(-1) from PID 1 signals every other process in the guest.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reaper.wait_childless(std::time::Duration::from_secs(1));
    steps::done("no other process left");
    if sync {
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        steps::done("synced");
    }
}

/// A run without a command: the container's filesystems, mounted, are
/// reached only through the exec port (the host works on a stopped
/// container's files this way), until the host says it is done (end of
/// input, or closing).
fn hold(sink: &Sink, mut input: File, reaper: Reaper) {
    settle_raised_nics();
    {
        let reaper = reaper.clone();
        thread::spawn(move || serve_execs(reaper));
    }
    loop {
        match sink.receive(&mut input) {
            Ok(Some(Frame::StdinEof)) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    end_container(&reaper, true);
    send(
        sink,
        &Frame::Control(Control::Exited {
            code: Some(0),
            signal: None,
        }),
    );
    wait_for_host_close(sink, input);
}

/// Relays a started process's output to the host and the host's input and
/// signals to it, waits for it (`on_exit` runs then), and reports how it
/// ended. Closing first could drop output still queued in the vsock
/// device, so this returns once the host, having read everything, closes
/// the connection (or after 10 s).
fn relay(process: &mut Spawned, sink: &Sink, input: File, reaper: &Reaper, on_exit: impl FnOnce()) {
    let reported = || {
        on_exit();
        true
    };
    relay_until_hangup(process, sink, input, reaper, reported, None)
}

/// `relay`, running `on_hangup` once the host's side of the connection
/// has ended (after the process's end too: then it must do no harm). The
/// end is reported only if `on_exit` says so: otherwise the host learns of
/// it as the connection ends.
fn relay_until_hangup(
    process: &mut Spawned,
    sink: &Sink,
    input: File,
    reaper: &Reaper,
    on_exit: impl FnOnce() -> bool,
    on_hangup: Option<Box<dyn FnOnce() + Send>>,
) {
    let child = &mut process.child;
    let pid = child.pid;
    send(sink, &Frame::Control(Control::Started { pid }));
    let (pumped, pumps_done) = std::sync::mpsc::channel::<()>();
    let mut pumps = 0;
    let mut start_pump = |source: Box<dyn Read + Send>, wrap: fn(Vec<u8>) -> Frame| {
        let (sink, pumped) = (sink.clone(), pumped.clone());
        pumps += 1;
        thread::spawn(move || {
            pump(source, &sink, wrap);
            let _ = pumped.send(());
        });
    };
    let mut input_to = HostInput {
        stdin: None,
        terminal: None,
        pid,
    };
    match &process.terminal {
        Some(terminal) => {
            if let Ok(output) = terminal.try_clone() {
                start_pump(Box::new(output), Frame::Stdout);
            }
            input_to.terminal = terminal.try_clone().ok();
        }
        None => {
            if let Some(out) = child.stdout.take() {
                start_pump(Box::new(out), Frame::Stdout);
            }
            if let Some(err) = child.stderr.take() {
                start_pump(Box::new(err), Frame::Stderr);
            }
            input_to.stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>);
        }
    }
    let (host_gone, host_gone_rx) = std::sync::mpsc::channel();
    let link = sink.clone();
    thread::spawn(move || {
        input_to.serve(&link, input);
        if let Some(hangup) = on_hangup {
            hangup();
        }
        let _ = host_gone.send(());
    });
    let (code, signal) = reaper.wait_for(pid);
    let report = on_exit();
    // Output still buffered is sent first; a terminal may be held open by
    // something the process left running, so that wait is bounded.
    let pumps_deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let bounded = process.terminal.is_some();
    for _ in 0..pumps {
        let left = pumps_deadline.saturating_duration_since(std::time::Instant::now());
        let done = match bounded {
            true => pumps_done.recv_timeout(left).is_ok(),
            false => pumps_done.recv().is_ok(),
        };
        if !done {
            break;
        }
    }
    if report {
        send(sink, &Frame::Control(Control::Exited { code, signal }));
    }
    if host_gone_rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
        console("the host did not close the connection");
    }
}

/// Copies one of the process's outputs (a pipe, or its terminal: that
/// read fails with EIO once the process side is closed) to the host.
fn pump(mut source: impl Read, sink: &Sink, wrap: fn(Vec<u8>) -> Frame) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !send(sink, &wrap(buf[..n].to_vec())) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Where the host's frames for a running process go.
struct HostInput {
    /// The process's standard input pipe (without a terminal).
    stdin: Option<Box<dyn Write + Send>>,
    /// Its terminal: input is typed into it, and it can be resized.
    terminal: Option<File>,
    pid: u32,
}

impl HostInput {
    /// Frames from the host after the request: standard input, signals and
    /// terminal sizes. On a terminal, the end of input is not passed on
    /// (as with Docker, the process keeps its terminal).
    fn serve(mut self, link: &Sink, mut input: File) {
        loop {
            match link.receive(&mut input) {
                Ok(Some(Frame::Stdin(data))) => {
                    let writer: Option<&mut dyn Write> = match (&mut self.stdin, &mut self.terminal) {
                        (Some(pipe), _) => Some(pipe),
                        (None, Some(terminal)) => Some(terminal),
                        (None, None) => None,
                    };
                    if writer.is_some_and(|w| w.write_all(&data).is_err()) {
                        self.stdin = None;
                    }
                }
                Ok(Some(Frame::StdinEof)) => self.stdin = None,
                Ok(Some(Frame::Control(Control::Signal { signal }))) => {
                    // SAFETY: plain kill(2) to the process's pid.
                    unsafe { libc::kill(self.pid as i32, signal) };
                }
                Ok(Some(Frame::Control(Control::Resize { rows, cols }))) => {
                    if let Some(terminal) = &self.terminal {
                        if let Err(e) = terminal::resize(terminal, proto::TerminalSize { rows, cols }) {
                            console(&format!("resizing the terminal: {e}"));
                        }
                    }
                }
                Ok(Some(other)) => console(&format!("ignoring unexpected frame {other:?}")),
                Ok(None) => return,
                Err(e) => return console(&format!("host connection: {e}")),
            }
        }
    }
}

/// Held by `spawn` and by the reaper while it reaps.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Reaps every child (PID 1 inherits orphans too) and keeps the statuses
/// of the processes someone waits for: the command and each exec.
#[derive(Clone)]
struct Reaper(Arc<(Mutex<Reaped>, std::sync::Condvar)>);

#[derive(Default)]
struct Reaped {
    /// PID → (exit code, killing signal) of the processes reaped so far.
    statuses: std::collections::HashMap<i32, (Option<i32>, Option<i32>)>,
    /// The reaper found no children left (every orphan is PID 1's child).
    childless: bool,
}

impl Reaper {
    fn start() -> Reaper {
        let reaper = Reaper(Arc::default());
        let shared = reaper.clone();
        thread::spawn(move || loop {
            // Sleep until some child can be reaped, without reaping it yet.
            // SAFETY: waitid(2) with a valid, zeroed siginfo out-pointer.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) } != 0 {
                // No children at all (ECHILD), or interrupted: look again soon.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                    let (lock, changed) = &*shared.0;
                    if let Ok(mut reaped) = lock.lock() {
                        reaped.childless = true;
                    }
                    changed.notify_all();
                }
                thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            {
                // Never while a spawn is under way: std reaps a child whose
                // exec failed itself, and panics if someone else got it first.
                let _spawning = SPAWN_LOCK.lock();
                loop {
                    let mut status = 0;
                    // SAFETY: waitpid(2) with a valid out-pointer.
                    let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                    if reaped <= 0 {
                        break;
                    }
                    let status = std::process::ExitStatus::from_raw(status);
                    let (lock, changed) = &*shared.0;
                    if let Ok(mut done) = lock.lock() {
                        done.statuses.insert(reaped, (status.code(), status.signal()));
                        // Orphans nobody waits for must not pile up.
                        if done.statuses.len() > 4096 {
                            done.statuses.clear();
                        }
                    }
                    changed.notify_all();
                }
            }
        });
        reaper
    }

    /// Blocks until `pid` has ended: its exit code, or the killing signal.
    fn wait_for(&self, pid: u32) -> (Option<i32>, Option<i32>) {
        let (lock, changed) = &*self.0;
        let Ok(mut done) = lock.lock() else {
            return (None, None);
        };
        loop {
            if let Some(status) = done.statuses.remove(&(pid as i32)) {
                return status;
            }
            done = match changed.wait(done) {
                Ok(guard) => guard,
                Err(_) => return (None, None),
            };
        }
    }

    /// Blocks until the reaper finds no child left (looking afresh from
    /// now), or `limit` passes.
    fn wait_childless(&self, limit: std::time::Duration) {
        let (lock, changed) = &*self.0;
        let Ok(mut reaped) = lock.lock() else { return };
        reaped.childless = false;
        let deadline = std::time::Instant::now() + limit;
        while !reaped.childless {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            reaped = match changed.wait_timeout(reaped, left) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
    }
}

/// Accepts exec connections from the host for as long as the command runs.
fn serve_execs(reaper: Reaper) {
    serve_execs_after(reaper, || {});
}

/// `serve_execs`, running `meanwhile` once it listens: an exec asked for
/// then waits in the backlog, not refused.
fn serve_execs_after(reaper: Reaper, meanwhile: impl FnOnce()) {
    let listener = match vsock::listen(proto::EXEC_PORT) {
        Ok(listener) => listener,
        Err(e) => return console(&format!("exec listener: {e}")),
    };
    meanwhile();
    loop {
        match vsock::accept(&listener) {
            Ok(conn) => {
                let reaper = reaper.clone();
                thread::spawn(move || serve_exec(conn, reaper));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return console(&format!("exec listener: {e}")),
        }
    }
}

/// One exec: its request, the process, its streams and its exit status;
/// or one report on the guest. The connection stays open until the host
/// closes it: closing first could lose the last frame on its way out.
fn serve_exec(conn: File, reaper: Reaper) {
    let Ok(mut input) = conn.try_clone() else { return };
    let first = read_frame(&mut input);
    let session = match &first {
        Ok(Some(Frame::Control(Control::Exec(spec)))) => spec.session,
        _ => 0,
    };
    let sink: Sink = match session {
        0 => Arc::new(host_link::HostLink::plain(conn)),
        _ => {
            let sink = Arc::new(host_link::HostLink::claimable(conn));
            if let Ok(mut sessions) = EXEC_SESSIONS.lock() {
                sessions.retain(|_, link| link.strong_count() > 0);
                sessions.insert(session, Arc::downgrade(&sink));
            }
            sink
        }
    };
    let (spec, pids) = match first {
        Ok(Some(Frame::Control(Control::ResumeExec { session, output_frames }))) => {
            let link = EXEC_SESSIONS
                .lock()
                .ok()
                .and_then(|sessions| sessions.get(&session).and_then(std::sync::Weak::upgrade));
            let claimed = match (link, input.try_clone()) {
                (Some(link), Ok(conn)) => link.claim(conn, output_frames),
                _ => false,
            };
            if !claimed {
                fail(&sink, format!("no exec session {session} runs here"), 125);
                wait_for_host_close(&sink, input);
            }
            return;
        }
        Ok(Some(Frame::Control(Control::Exec(spec)))) => (spec, Pids::Container),
        Ok(Some(Frame::Control(Control::Join(spec)))) => return joined::run(*spec, &sink, input, &reaper),
        Ok(Some(Frame::Control(Control::ForgetJoined { id }))) => {
            match joined::forget(&id) {
                Ok(()) => succeeded(&sink),
                Err(e) => fail(&sink, format!("removing container {id}'s writes: {e}"), 1),
            }
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Stats))) => {
            send(&sink, &Frame::Control(Control::StatsReport(report::stats())));
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Top { container }))) => {
            let processes = report::processes(&pid_namespace::members(&container));
            send(&sink, &Frame::Control(Control::Processes { processes }));
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Network(network)))) => {
            if let Err(e) = network::reconfigure(&network, ROOT) {
                return fail(&sink, format!("changing the network: {e}"), 125);
            }
            succeeded(&sink);
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::SharesChanged { changes }))) => {
            host_changes::replay(&changes);
            succeeded(&sink);
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Diff))) => {
            let changes = archive::changes(
                std::path::Path::new(&mounts::upper()),
                std::path::Path::new(mounts::IMAGE),
            );
            for part in changes.chunks(proto::MAX_CHANGES) {
                send(&sink, &Frame::Control(Control::Changes { changes: part.to_vec() }));
            }
            succeeded(&sink);
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Layer { pause }))) => {
            if pause {
                if let Err(e) = limits::freeze(true) {
                    fail(&sink, format!("pausing the container: {e}"), 1);
                    return wait_for_host_close(&sink, input);
                }
            }
            let out = std::io::BufWriter::with_capacity(proto::CHUNK, StdoutFrames(&sink));
            let written = archive::write_layer(
                std::path::Path::new(&mounts::upper()),
                std::path::Path::new(mounts::IMAGE),
                out,
            );
            let thawed = if pause { limits::freeze(false) } else { Ok(()) };
            match (written, thawed) {
                (Ok(()), Ok(())) => succeeded(&sink),
                (Err(e), _) => fail(&sink, format!("reading the container's writable layer: {e}"), 1),
                (_, Err(e)) => fail(&sink, format!("unpausing the container: {e}"), 1),
            }
            return wait_for_host_close(&sink, input);
        }
        Ok(Some(Frame::Control(Control::Archive(op)))) => match archive::helper_argv(&op) {
            Ok(argv) => (
                Box::new(ProcessSpec {
                    argv,
                    env: vec![],
                    cwd: "/".into(),
                    user: String::new(),
                    groups: Vec::new(),
                    stdin: matches!(op, proto::ArchiveOp::Put { .. }),
                    tty: None,
                    // hull's own tool, not the container's code: it keeps
                    // owners, modes and device files as they are.
                    capabilities: proto::capabilities::ALL.iter().map(|c| c.to_string()).collect(),
                    session: 0,
                    container: String::new(),
                }),
                // In the container's namespace: after the chroot its
                // `/proc/self/exe` is looked up in the container's /proc,
                // which shows only that namespace's processes.
                Pids::Container,
            ),
            Err(e) => return fail(&sink, e, 125),
        },
        Ok(other) => {
            fail(&sink, format!("expected an exec request, got {other:?}"), 125);
            return wait_for_host_close(&sink, input);
        }
        Err(e) => return fail(&sink, format!("reading the exec request: {e}"), 125),
    };
    let mut process = match spawn(&spec, pids, false) {
        Ok(process) => process,
        Err((message, code)) => {
            fail(&sink, message, code);
            return wait_for_host_close(&sink, input);
        }
    };
    relay(&mut process, &sink, input, &reaper, || {});
}

/// Answers a request that runs no process: done.
/// Bytes written to it go to the host as standard output frames.
struct StdoutFrames<'a>(&'a Sink);

impl std::io::Write for StdoutFrames<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let part = &data[..data.len().min(proto::CHUNK)];
        if !send(self.0, &Frame::Stdout(part.to_vec())) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(part.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn succeeded(sink: &Sink) {
    let done = Control::Exited {
        code: Some(0),
        signal: None,
    };
    send(sink, &Frame::Control(done));
}

/// Reads (and drops) what the host still sends until it closes, for at
/// most 10 s.
fn wait_for_host_close(sink: &Sink, mut input: File) {
    let (done, done_rx) = std::sync::mpsc::channel();
    let sink = sink.clone();
    thread::spawn(move || {
        while let Ok(Some(_)) = sink.receive(&mut input) {}
        let _ = done.send(());
    });
    let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
}

/// A started process, and the agent's side of its terminal if it has one.
struct Spawned {
    child: launch::Launched,
    terminal: Option<File>,
}

/// Starts `spec` in the container's root, in the PID namespace `pids`
/// says; `init`, under the small init (`init`) as Docker's `--init`.
fn spawn(spec: &ProcessSpec, pids: Pids, init: bool) -> Result<Spawned, (String, i32)> {
    let Some(program) = spec.argv.first() else {
        return Err(("no command given".into(), 125));
    };
    // The VM's own container's root, or a joined one's.
    let root_path = match spec.container.as_str() {
        "" => ROOT.to_string(),
        joined => {
            joined::running_root(joined).ok_or_else(|| (format!("no container {joined} runs in this VM"), 125))?
        }
    };
    let root = std::path::Path::new(&root_path);
    let cwd = root.join(spec.cwd.trim_start_matches('/'));
    // Like Docker, a missing working directory is created.
    if let Err(e) = std::fs::create_dir_all(&cwd) {
        return Err((format!("working directory {}: {e}", spec.cwd), 125));
    }
    let identity = user::resolve(root, &spec.user, &spec.groups).map_err(|e| (e, 125))?;
    steps::done("spawn: the user resolved");
    // `/proc/self/exe` is looked up in the container's /proc, after the
    // chroot: it is this agent, which runs the command as the init.
    let (path, argv) = match init {
        true => ("/proc/self/exe", init::command_line(&spec.argv)),
        false => (program.as_str(), spec.argv.clone()),
    };
    let mut env: Vec<String> = spec.env.iter().filter(|e| e.contains('=')).cloned().collect();
    // Like Docker, HOME comes from the user's passwd entry unless it was set.
    if !spec.env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", identity.home));
    }
    if spec.tty.is_some() && !spec.env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut terminal = None;
    let stdio = match spec.tty {
        Some(size) => {
            let pty = terminal::open(&format!("{root_path}/dev/pts"), size)
                .map_err(|e| (format!("opening a terminal: {e}"), 125))?;
            let slave = |file: &File| file.try_clone().map_err(|e| (format!("opening a terminal: {e}"), 125));
            let stdio = [
                launch::Io::Fd(slave(&pty.slave)?.into()),
                launch::Io::Fd(slave(&pty.slave)?.into()),
                launch::Io::Fd(pty.slave.into()),
            ];
            terminal = Some(pty.master);
            stdio
        }
        None => [
            if spec.stdin { launch::Io::Pipe } else { launch::Io::Null },
            launch::Io::Pipe,
            launch::Io::Pipe,
        ],
    };
    let with_terminal = terminal.is_some();
    let dropped = dropped_capabilities(&spec.capabilities).map_err(|e| (e, 125))?;
    let (uid, gid, groups) = (identity.uid, identity.gid, identity.groups);
    let cwd = CString::new(spec.cwd.as_str()).map_err(|_| ("working directory contains NUL".to_string(), 125))?;
    let chroot_to = CString::new(root_path.as_str()).map_err(|_| ("root contains NUL".to_string(), 125))?;
    // Runs in the child, on the agent's memory: raw system calls only
    // (`launch`). Credentials by syscall, not glibc's wrappers, which
    // would have every thread of the agent take them.
    let set_up = move || -> std::io::Result<()> {
        // SAFETY: system calls on NUL-terminated strings and arrays of our own.
        unsafe {
            limits::join_in_child()?;
            if libc::chroot(chroot_to.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // PID 1 of a namespace of its own: a /proc of that namespace,
            // over the VM's, for it and its execs.
            if pids == Pids::New
                && libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            // The terminal on standard input becomes the session's own.
            if with_terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // While still root with every capability: what the process may
            // not keep leaves its bounding set, so no exec brings it back.
            drop_capabilities(&dropped)?;
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    let _spawning = SPAWN_LOCK.lock();
    let entered = pid_namespace::enter(pids, &spec.container)
        .map_err(|e| (format!("entering the container's PID namespace: {e}"), 125))?;
    steps::done("spawn: its PID namespace entered");
    let launched = launch::launch(path, &argv, &env, stdio, &set_up);
    drop(entered);
    steps::done("spawn: launched");
    let child = launched.map_err(
        |launch::LaunchError { error, in_set_up }| match (in_set_up, error.kind()) {
            (true, _) => (format!("starting \"{program}\": {error}"), 126),
            // Docker's words: its CLI and SDKs map them to exit statuses 127 and 126.
            (false, std::io::ErrorKind::NotFound) => {
                (format!("exec: \"{program}\": executable file not found in $PATH"), 127)
            }
            (false, std::io::ErrorKind::PermissionDenied) => (format!("exec: \"{program}\": permission denied"), 126),
            (false, _) => (format!("exec: \"{program}\": {error}"), 126),
        },
    )?;
    if pids == Pids::New {
        if let Err(e) = pid_namespace::remember_container(&spec.container, child.pid) {
            console(&format!(
                "the container's PID namespace: {e}; its execs start in the VM's"
            ));
        }
    }
    Ok(Spawned { child, terminal })
}

/// The capability numbers this kernel has that `kept` does not name.
fn dropped_capabilities(kept: &[String]) -> Result<Vec<u32>, String> {
    let kept: Vec<u32> = kept
        .iter()
        .map(|name| proto::capabilities::number(name).ok_or_else(|| format!("unknown capability {name:?}")))
        .collect::<Result<_, _>>()?;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(proto::capabilities::ALL.len() as u32 - 1);
    Ok((0..=last).filter(|n| !kept.contains(n)).collect())
}

/// In a child before exec: drops `dropped` from the bounding set and
/// empties the inheritable and ambient sets, so that what the command
/// (root or not) can ever hold is what it was given. Only raw syscalls.
fn drop_capabilities(dropped: &[u32]) -> std::io::Result<()> {
    // SAFETY: prctl and capget/capset on structures of our own.
    unsafe {
        for &cap in dropped {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for half in &mut data {
            half.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one of two 32-bit halves.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn sethostname(name: &str) -> std::io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we end the VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached when not PID 1 (a developer running the binary by hand).
    std::process::exit(0)
}
