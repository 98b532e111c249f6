//! The supervisor of one hulld container (`hull-shim DIR ID`): runs its VM,
//! appends the command's output to the container's log, records its state,
//! and serves a unix socket on which clients (hulld, before and after a
//! restart of hulld) send signals and standard input and hear when the
//! command ends. It is a process of its own so the container outlives hulld.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{read_frame, write_frame, Control, Frame};

use crate::container::{now_rfc3339, process_start_time, ContainerDir, ContainerError, RunState, RunStatus};
use crate::container_log::LogWriter;
use crate::run::{Attachment, OutputStream, RunRequest, Source, Steer};

/// How long a container's guest may take to reach its agent, unless
/// `HULL_BOOT_TIMEOUT` (seconds, 1 to 3600) says otherwise: a host that
/// starts many VMs at once on few cores needs longer.
pub(crate) fn boot_timeout() -> Duration {
    std::env::var("HULL_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .map_or(Duration::from_secs(120), Duration::from_secs)
}

/// What clients sent before the command was running, and the way to it after.
#[derive(Default)]
struct Pending {
    steer: Option<Steer>,
    queued: Vec<Frame>,
}

#[derive(Clone)]
struct Shared {
    control: Arc<Mutex<Pending>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    /// Clients' requests to move the VM to a new VMM.
    moves: crate::moving::Moves,
    /// An arriving VM's runner waits on this for how far the source's
    /// output got (hulld sends `Control::Resume`).
    resume: Arc<Mutex<Option<std::sync::mpsc::Sender<u64>>>>,
}

impl Shared {
    /// Passes a client's frame to the command, or keeps it until it runs.
    fn deliver(&self, frame: Frame) {
        let Ok(mut control) = self.control.lock() else { return };
        match &control.steer {
            Some(steer) => {
                steer.forward(&frame);
            }
            None => control.queued.push(frame),
        }
    }
}

struct Supervised {
    log: LogWriter,
    shared: Shared,
    dir: ContainerDir,
    state: RunState,
    /// Why the command could not start, as the agent said.
    failure: Option<String>,
    /// The VM went to another host.
    departed: bool,
}

impl Attachment for Supervised {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        self.log.write(stream, data);
    }

    fn started(&mut self, steer: Steer) {
        if let Ok(mut control) = self.shared.control.lock() {
            for frame in std::mem::take(&mut control.queued) {
                steer.forward(&frame);
            }
            control.steer = Some(steer);
        }
    }

    fn running(&mut self, _pid: u32) {
        tell_starter();
    }

    fn failed(&mut self, message: &str) {
        self.failure = Some(message.to_string());
    }

    fn moves(&self) -> Option<crate::moving::Moves> {
        Some(self.shared.moves.clone())
    }

    fn departed(&mut self) {
        // hulld sends the log to the other host once the move is answered.
        self.log.flush();
        self.departed = true;
    }

    fn vm_ready(&mut self, vmm_pid: u32) {
        // A standby's was recorded with the container's first state.
        if self.state.vmm_pid == vmm_pid {
            return;
        }
        // Recorded so that hulld can pause and resume the whole VM.
        self.state.vmm_pid = vmm_pid;
        if let Err(e) = self.dir.write_state(&self.state) {
            eprintln!("hull-shim: recording the VMM's PID: {e}");
        }
    }
}

/// What the message in an arriving container's state says once it left again.
pub const DEPARTED: &str = "the container moved to another host";

/// Runs the container in `dir` to its end; the container's exit status.
/// `arriving`: its VM comes, running, from another host over this
/// connection (hulld's, from that host's hulld), with the source's image
/// disk copied into the container's directory (`ContainerDir::arriving_image_disk`).
pub fn supervise(dir: &ContainerDir, arriving: Option<std::os::fd::OwnedFd>) -> Result<i32, ContainerError> {
    supervise_with(dir, arriving, None)
}

/// Runs the container in `dir` to its end in `warm`, a standby's VM whose
/// socket directory is the container's already (`standby::serve`).
pub(crate) fn supervise_warm(dir: &ContainerDir, warm: crate::standby::WarmVm) -> Result<i32, ContainerError> {
    supervise_with(dir, None, Some(warm))
}

fn supervise_with(
    dir: &ContainerDir,
    arriving: Option<std::os::fd::OwnedFd>,
    warm: Option<crate::standby::WarmVm>,
) -> Result<i32, ContainerError> {
    let spec = dir.spec()?;
    vmm::trace::mark("supervise: spec read");
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ContainerError::Io { what, source }
    };
    let socket = dir.socket_path();
    // A container on another's network has no VM of its own to be given.
    let warm = warm.filter(|_| spec.joins.is_none());
    if warm.is_none() {
        let _ = std::fs::remove_dir_all(dir.socket_dir());
        std::fs::create_dir_all(dir.socket_dir()).map_err(io("creating the socket directory"))?;
    }
    let listener = UnixListener::bind(&socket).map_err(io("binding the supervisor's socket"))?;
    let shared = Shared {
        control: Arc::default(),
        clients: Arc::default(),
        moves: crate::moving::Moves::new().map_err(io("the supervisor's move requests"))?,
        resume: Arc::default(),
    };
    let arrived = arriving.is_some();
    let arrival = arriving.map(|conn| {
        let (told, resume) = std::sync::mpsc::channel();
        if let Ok(mut waiting) = shared.resume.lock() {
            *waiting = Some(told);
        }
        watch_lifeline(shared.resume.clone());
        crate::run::Arrival {
            conn,
            image_disk: dir.arriving_image_disk(),
            resume,
            template: dir.arriving_template(),
        }
    });
    let pid = std::process::id();
    let mut state = RunState {
        status: RunStatus::Running,
        pid,
        pid_start: process_start_time(pid).unwrap_or_default(),
        started_at: now_rfc3339(),
        finished_at: None,
        exit_code: None,
        error: String::new(),
        // A standby's VMM runs already: one state write instead of two.
        vmm_pid: warm.as_ref().map_or(0, |warm| warm.vmm.process.id()),
        paused: false,
    };
    if let Some(target) = &spec.joins {
        return supervise_joined(dir, &spec, target, state, listener, shared);
    }
    vmm::trace::mark("supervise: socket bound");
    // Its network first: a port that is taken fails the start, as in Docker.
    let nic = match crate::network::attach::Attached::new(&dir.id, &spec.network) {
        Ok(nic) => nic,
        Err(message) => {
            state.status = RunStatus::Exited;
            state.exit_code = Some(125);
            state.finished_at = Some(now_rfc3339());
            state.error = message;
            dir.write_state(&state)?;
            return Ok(125);
        }
    };
    vmm::trace::mark("supervise: network attached");
    // Written before the VM starts, so that hulld can stop a container
    // whose guest is still booting.
    dir.write_state(&state)?;
    vmm::trace::mark("supervise: state written");
    // The disks are this run's alone (a held container may have them for a
    // moment: then this waits).
    let disks = dir.lock_disks(true)?;
    vmm::trace::mark("supervise: disks locked");
    {
        let shared = shared.clone();
        std::thread::spawn(move || serve(listener, shared));
    }

    let mut supervised = Supervised {
        log: LogWriter::open(&dir.log_path(), &spec.log).map_err(io("opening the container log"))?,
        shared: shared.clone(),
        dir: dir.clone(),
        state: state.clone(),
        failure: None,
        departed: false,
    };
    vmm::trace::mark("supervise: log open");
    let result = request_for(&spec).and_then(|request| {
        crate::run::run_in(
            &dir.path,
            &dir.socket_dir(),
            &dir.id,
            &request,
            &mut supervised,
            Some(nic),
            match (arrival, warm) {
                (Some(arrival), _) => crate::run::GivenVm::Arriving(arrival),
                (None, Some(warm)) => crate::run::GivenVm::Standby(Box::new(warm)),
                (None, None) => crate::run::GivenVm::None,
            },
        )
        .map_err(|e| e.to_string())
    });
    if arrived {
        // The next run is a fresh VM, on its image's own disk, cloned from
        // this host's template.
        dir.forget_arrival();
    }
    // The VM is gone: its disks are free before anyone reads "exited".
    drop(disks);
    finish(dir, supervised, result, state, &shared)
}

/// A container on another's network: it runs in that container's VM
/// (`join`), with no VM, network or disks of its own to start.
fn supervise_joined(
    dir: &ContainerDir,
    spec: &crate::container::ContainerSpec,
    target: &str,
    state: RunState,
    listener: UnixListener,
    shared: Shared,
) -> Result<i32, ContainerError> {
    dir.write_state(&state)?;
    {
        let shared = shared.clone();
        std::thread::spawn(move || serve(listener, shared));
    }
    let mut supervised = Supervised {
        log: LogWriter::open(&dir.log_path(), &spec.log).map_err(|source| ContainerError::Io {
            what: "opening the container log".into(),
            source,
        })?,
        shared: shared.clone(),
        dir: dir.clone(),
        state: state.clone(),
        failure: None,
        departed: false,
    };
    let result = crate::join::join_in(dir, spec, target, &mut supervised);
    finish(dir, supervised, result, state, &shared)
}

/// Records how the container's run ended (`result`: its status, or why
/// it could not run) and tells the clients.
fn finish(
    dir: &ContainerDir,
    mut supervised: Supervised,
    result: Result<i32, String>,
    mut state: RunState,
    shared: &Shared,
) -> Result<i32, ContainerError> {
    let code = match result {
        Ok(code) => code,
        Err(message) => {
            supervised
                .log
                .write(OutputStream::Stderr, format!("hull: {message}\n").as_bytes());
            state.error = message;
            125
        }
    };
    if let Some(message) = supervised.failure.take() {
        state.error = message;
    }
    if supervised.departed {
        state.error = DEPARTED.into();
    }
    supervised.log.flush();
    state.status = RunStatus::Exited;
    state.vmm_pid = 0;
    state.exit_code = Some(code);
    state.finished_at = Some(now_rfc3339());
    let _ = std::fs::remove_dir_all(dir.socket_dir());
    dir.write_state(&state)?;
    let exited = Frame::Control(Control::Exited {
        code: Some(code),
        signal: None,
    });
    if let Ok(clients) = shared.clients.lock() {
        for mut client in clients.iter() {
            let _ = write_frame(&mut client, &exited);
        }
    }
    Ok(code)
}

/// Ends an arrival whose hulld went away before the VM resumed here:
/// standard input is a pipe hulld holds until then; at its end, the word
/// the arrival waits for (`resume`) can no longer come, and the arrival
/// ends, taking its VMM with it (the source's VM runs on there).
fn watch_lifeline(resume: Arc<Mutex<Option<std::sync::mpsc::Sender<u64>>>>) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        loop {
            // SAFETY: reads into a valid buffer from fd 0.
            let read = unsafe { libc::read(libc::STDIN_FILENO, sink.as_mut_ptr().cast(), sink.len()) };
            let interrupted = read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
            if read == 0 || (read < 0 && !interrupted) {
                break;
            }
        }
        if let Ok(mut waiting) = resume.lock() {
            waiting.take();
        }
    });
}

/// Tells `ContainerDir::start`, on standard output (a pipe), that the
/// container's process runs: one byte, then the pipe is closed. A pipe
/// closed without it (the supervisor ended) means the start failed.
fn tell_starter() {
    // SAFETY: a one-byte write from a valid buffer to fd 1.
    unsafe { libc::write(libc::STDOUT_FILENO, RUNNING.as_ptr().cast(), RUNNING.len()) };
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 replaces the pipe with /dev/null; both fds are valid.
        unsafe { libc::dup2(std::os::unix::io::AsRawFd::as_raw_fd(&null), libc::STDOUT_FILENO) };
    }
}

/// The byte `tell_starter` writes once the container's process runs.
pub(crate) const RUNNING: &[u8; 1] = b"R";

/// How a container's VM is started from its spec.
pub(crate) fn request_for(spec: &crate::container::ContainerSpec) -> Result<RunRequest, String> {
    let source = match (&spec.image, &spec.rootfs) {
        (Some(id), _) => {
            let store = image::Store::open(&crate::data_dir()).map_err(|e| e.to_string())?;
            Source::Image(Box::new(store.image(id).map_err(|e| e.to_string())?))
        }
        (None, Some(rootfs)) => Source::Rootfs(rootfs.clone()),
        (None, None) => return Err("the container has neither an image nor a root filesystem".into()),
    };
    Ok(RunRequest {
        source,
        overrides: spec.overrides.clone(),
        process: spec.process.clone(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        cpu_limit_millis: spec.cpu_limit_millis,
        pids_limit: spec.pids_limit,
        interactive: spec.open_stdin,
        tty: spec.tty,
        boot_timeout: boot_timeout(),
        cold_boot: spec.cold_boot,
        hostname: Some(spec.hostname.clone()),
        hold: false,
        volumes: spec.volumes.clone(),
        binds: spec.binds.clone(),
        network: spec.network.clone(),
        capabilities: spec.capabilities.clone(),
        pid_host: spec.pid_host,
        init: spec.init,
        disposable: spec.auto_remove,
    })
}

/// Accepts clients: each may send signals and standard input, and is told
/// when the command ends.
fn serve(listener: UnixListener, shared: Shared) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if let (Ok(copy), Ok(mut clients)) = (conn.try_clone(), shared.clients.lock()) {
            clients.push(copy);
        }
        let shared = shared.clone();
        std::thread::spawn(move || {
            // Frames from a client are untrusted too: a bad one ends that client.
            while let Ok(Some(frame)) = read_frame(&mut conn) {
                match frame {
                    Frame::Control(Control::Migrate {
                        downtime_ms,
                        max_seconds,
                        away,
                        uncompressed,
                    }) => {
                        let limits = proto::MoveLimits {
                            downtime_ms,
                            max_seconds,
                            compress: !uncompressed,
                        };
                        // To another host: the connection to it follows the frame.
                        let link = match away {
                            true => match receive_fd(&conn) {
                                Ok(link) => Some(link),
                                Err(message) => {
                                    let failed = Control::Failed { message, exit_code: 1 };
                                    let _ = write_frame(&mut conn, &Frame::Control(failed));
                                    break;
                                }
                            },
                            false => None,
                        };
                        let mut told = |p| {
                            let _ = write_frame(&mut conn, &Frame::Control(Control::MigrationProgress(p)));
                        };
                        let answer = match shared.moves.ask(limits, link, &mut told) {
                            Ok(report) => Control::Migrated(report),
                            Err(message) => Control::Failed { message, exit_code: 1 },
                        };
                        if write_frame(&mut conn, &Frame::Control(answer)).is_err() {
                            break;
                        }
                    }
                    Frame::Control(Control::CancelMigration) => {
                        let found = shared.moves.cancel();
                        let answer = Frame::Control(Control::MigrationCancelled { found });
                        if write_frame(&mut conn, &answer).is_err() {
                            break;
                        }
                    }
                    Frame::Control(Control::Resume { output_frames }) => {
                        let waiting = shared.resume.lock().ok().and_then(|mut w| w.take());
                        if let Some(told) = waiting {
                            let _ = told.send(output_frames);
                        }
                    }
                    frame => shared.deliver(frame),
                }
            }
        });
    }
}

/// The descriptor a client sends after a frame (one byte with SCM_RIGHTS).
fn receive_fd(conn: &UnixStream) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut byte = [0u8; 1];
    let mut fds = [-1; 1];
    let mut iov = [libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    }];
    // SAFETY: the iovec points into `byte`, which outlives the call.
    let (read, count) =
        unsafe { conn.recv_with_fds(&mut iov, &mut fds) }.map_err(|e| format!("receiving the connection: {e}"))?;
    match (read, count) {
        // SAFETY: a descriptor just received, ours alone.
        (1, 1) => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) }),
        _ => Err("the migration request came without its connection".into()),
    }
}
