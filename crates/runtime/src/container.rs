//! A container hulld keeps, as files in its own directory: what to run
//! (`spec.json`), how its last run went (`state.json`, written by its
//! supervisor), its log (Docker's json-file format), its writable disk and,
//! while it runs, the supervisor's socket. The supervisor, `hull-shim`, is a
//! process of its own so that containers outlive hulld; this module starts
//! it, reads what it wrote and talks to it.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::config::Overrides;
use image::digest::Digest;
use proto::{write_frame, Control, Frame};
use serde::{Deserialize, Serialize};

/// Everything a container's VM is started from; written once, at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image in the store (its ID), or `None` with `rootfs`.
    pub image: Option<Digest>,
    pub rootfs: Option<PathBuf>,
    pub overrides: Overrides,
    pub memory_mib: u64,
    pub cpus: u8,
    /// CPU time the VM may take, in thousandths of a CPU (`--cpus 1.5`:
    /// 1500, on 2 vCPUs); `None`: all of its vCPUs.
    #[serde(default)]
    pub cpu_limit_millis: Option<u32>,
    /// At most this many processes in the container (`--pids-limit`).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    pub hostname: String,
    /// Keep the command's standard input open for attached clients (`-i`).
    pub open_stdin: bool,
    /// Run the command on a terminal of this (initial) size (`-t`).
    #[serde(default)]
    pub tty: Option<proto::TerminalSize>,
    pub cold_boot: bool,
    /// Named volumes and where they are mounted.
    #[serde(default)]
    pub volumes: Vec<crate::volume::VolumeMount>,
    /// Host directories and where they are mounted.
    #[serde(default)]
    pub binds: Vec<crate::bind::BindMount>,
    /// Its network, address and published ports (none for older records).
    #[serde(default)]
    pub network: crate::network::ContainerNetwork,
    /// How its log is kept (`--log-driver`, `--log-opt`).
    #[serde(default)]
    pub log: crate::log_config::LogConfig,
    /// The capabilities its processes keep (Docker's default set for older
    /// records).
    #[serde(default = "proto::capabilities::docker_default")]
    pub capabilities: Vec<String>,
    /// Its command shares the VM's PID namespace (`--pid host`).
    #[serde(default)]
    pub pid_host: bool,
    /// Docker's `--init`.
    #[serde(default)]
    pub init: bool,
    /// Removed with its disk when its command ends (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// The container (its ID) in whose VM this one runs, on its network
    /// (`--network container:NAME`); `None`: a VM of its own.
    #[serde(default)]
    pub joins: Option<String>,
    /// Its command, environment, working directory and user: the image's
    /// config under `overrides`, resolved at create as Docker fixes them
    /// then (a start need not read the image's config). `None` in a spec
    /// written before, whose start resolves them.
    #[serde(default)]
    pub process: Option<image::config::Process>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Exited,
}

/// How the container's latest run is going, as its supervisor wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub status: RunStatus,
    /// The supervisor's PID and its start time (clock ticks after boot), so
    /// a reused PID is not mistaken for it.
    pub pid: u32,
    pub pid_start: u64,
    /// RFC 3339 with nanoseconds, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the container could not run (empty when it did).
    pub error: String,
    /// The VMM's PID once the VM is up (0 before and after).
    #[serde(default)]
    pub vmm_pid: u32,
    /// Whether the whole VM is paused (read from the VMM process, not stored).
    #[serde(skip)]
    pub paused: bool,
}

/// How long an operation on a container that was just started waits for
/// its VM (a restore takes milliseconds; a cold boot under emulation, seconds).
const VM_READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("hull-shim not found beside this binary; build the workspace (cargo build)")]
    NoShim,
    #[error("the container's supervisor failed to start: {0}")]
    ShimFailed(String),
    #[error("the container's record is damaged ({path}): {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("the container is not running")]
    NotRunning,
    #[error("the container's VM is still starting")]
    Starting,
    /// The VM or the container's process did not start; `exit_code` as
    /// Docker records it (127: no such command, 126: not executable).
    #[error("{message}")]
    DidNotStart { exit_code: Option<i32>, message: String },
    /// A change a running container cannot take now.
    #[error("{0}")]
    NotLive(String),
    #[error("the container's VMM refused: {0}")]
    Control(String),
    /// A move of the VM to a new VMM failed; it runs on where it was.
    #[error("{0}")]
    NotMoved(String),
    #[error("the container's disks are in use (it started, or another file operation runs): try again")]
    Busy,
    #[error("the container's VM could not hold its files: {0}")]
    Hold(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// One container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
}

impl ContainerDir {
    pub fn new(id: &str) -> ContainerDir {
        ContainerDir {
            id: id.to_string(),
            path: crate::containers_dir().join(id),
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.path.join("spec.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path.join("container-json.log")
    }
    /// The directory of the container's sockets (its supervisor's and the
    /// VM's vsock), kept short: under the run directory, by ID prefix.
    pub fn socket_dir(&self) -> PathBuf {
        crate::run_dir().join("c").join(&self.id[..self.id.len().min(16)])
    }
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir().join("shim.sock")
    }
    /// What its supervisor wrote on its standard error.
    pub(crate) fn supervisor_errors(&self) -> PathBuf {
        self.path.join("shim.err")
    }
    pub fn writable_disk(&self) -> PathBuf {
        self.path.join("rw.ext4")
    }

    /// Where the image disk of a VM arriving from another host is copied
    /// (the source's bytes; its guest's page cache holds their blocks).
    pub fn arriving_image_disk(&self) -> PathBuf {
        self.path.join("image.arrived.ext4")
    }

    /// The template an arriving VM is a clone of, as hulld found it
    /// (`set_arriving_template`), if any.
    pub fn arriving_template(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.path.join(ARRIVING_TEMPLATE)).ok()?;
        Some(PathBuf::from(text.trim_end())).filter(|dir| dir.is_dir())
    }

    /// Forgets what the VM that arrived from another host ran on.
    pub fn forget_arrival(&self) {
        let _ = std::fs::remove_file(self.arriving_image_disk());
        let _ = std::fs::remove_file(self.path.join(ARRIVING_TEMPLATE));
    }

    /// Marks the directory as a container still arriving from another
    /// host, made here with `volumes`: a hulld that starts and finds it so
    /// marked, with no record of the container, died in the middle of the
    /// move and removes it (`pending_arrival`).
    pub fn mark_arriving(&self, volumes: &[String]) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec(volumes).map_err(|e| ContainerError::Damaged {
            path: self.path.join(ARRIVAL_PENDING),
            detail: e.to_string(),
        })?;
        image::store::write_atomic(&self.path.join(ARRIVAL_PENDING), &bytes)
            .map_err(io("marking the container as arriving"))
    }

    /// The volumes made for a container still arriving, if it is one.
    pub fn pending_arrival(&self) -> Option<Vec<String>> {
        let bytes = std::fs::read(self.path.join(ARRIVAL_PENDING)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// The container has arrived: it is this host's, recorded.
    pub fn arrival_done(&self) {
        let _ = std::fs::remove_file(self.path.join(ARRIVAL_PENDING));
    }

    /// Records the template directory an arriving VM is a clone of.
    pub fn set_arriving_template(&self, dir: &Path) -> Result<(), ContainerError> {
        image::store::write_atomic(&self.path.join(ARRIVING_TEMPLATE), dir.as_os_str().as_encoded_bytes())
            .map_err(io("recording the arriving VM's template"))
    }

    /// Makes the directory and records `spec` (and the image it uses).
    pub fn create(&self, spec: &ContainerSpec) -> Result<(), ContainerError> {
        std::fs::create_dir_all(&self.path).map_err(io(format!("creating {}", self.path.display())))?;
        let bytes = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::Damaged {
            path: self.spec_path(),
            detail: e.to_string(),
        })?;
        image::store::write_atomic(&self.spec_path(), &bytes).map_err(io("writing the container spec"))?;
        if let Some(image) = &spec.image {
            crate::usage::record(&self.path, image, None).map_err(io("recording the container's image"))?;
        }
        Ok(())
    }

    /// Changes the spec (the few things that change after create, such as
    /// the network policy), written atomically.
    pub fn update_spec(&self, change: impl FnOnce(&mut ContainerSpec)) -> Result<ContainerSpec, ContainerError> {
        let mut spec = self.spec()?;
        change(&mut spec);
        let bytes = serde_json::to_vec_pretty(&spec).map_err(|e| ContainerError::Damaged {
            path: self.spec_path(),
            detail: e.to_string(),
        })?;
        image::store::write_atomic(&self.spec_path(), &bytes).map_err(io("writing the container spec"))?;
        Ok(spec)
    }

    pub fn spec(&self) -> Result<ContainerSpec, ContainerError> {
        read_json(&self.spec_path())?.ok_or_else(|| ContainerError::Damaged {
            path: self.spec_path(),
            detail: "missing".into(),
        })
    }

    /// The latest run's state; `None` if it never ran. A supervisor that
    /// died without saying so (killed) reads as exited with status 137.
    pub fn state(&self) -> Result<Option<RunState>, ContainerError> {
        let Some(mut state) = read_json::<RunState>(&self.state_path())? else {
            return Ok(None);
        };
        if state.status == RunStatus::Running && !process_alive(state.pid, state.pid_start) {
            // It may have finished between our read and this check.
            if let Some(fresh) = read_json::<RunState>(&self.state_path())? {
                if fresh.status == RunStatus::Exited {
                    return Ok(Some(fresh));
                }
            }
            state.status = RunStatus::Exited;
            state.exit_code = Some(137);
            state.finished_at = Some(now_rfc3339());
            state.error = "the container's supervisor (hull-shim) was killed".into();
        }
        state.paused = state.status == RunStatus::Running
            && match self.vmm_of(&state) {
                Some(_) => self.socket_dir().join(crate::run::PAUSED_MARKER).exists(),
                // No VMM of its own (yet, or ever: it runs in another
                // container's VM and stands still with it).
                None => self
                    .joins()
                    .is_some_and(|vm| matches!(ContainerDir::new(&vm).state(), Ok(Some(s)) if s.paused)),
            };
        Ok(Some(state))
    }

    /// The running VMM's PID, if it is still the supervisor's child.
    fn vmm_of(&self, state: &RunState) -> Option<u32> {
        let pid = state.vmm_pid;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let parent: u32 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
        (pid != 0 && parent == state.pid).then_some(pid)
    }

    /// A connection to the VMM's control channel of a running container,
    /// once its VM is up: right after `start` it may still be restoring,
    /// and Docker's clients expect `pause` to work then (dockerd has no
    /// "still starting" answer).
    fn vmm_control(&self) -> Result<UnixStream, ContainerError> {
        let control = self.socket_dir().join(crate::run::VMM_CONTROL_SOCKET);
        let deadline = Instant::now() + VM_READY_TIMEOUT;
        loop {
            let state = self.state()?.filter(|s| s.status == RunStatus::Running);
            let state = state.ok_or(ContainerError::NotRunning)?;
            if self.vmm_of(&state).is_some() {
                if let Ok(stream) = UnixStream::connect(&control) {
                    return Ok(stream);
                }
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::Starting);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sets a running container's CPU time (`docker update --cpus`) in its
    /// jailed VMM's cgroup, at once.
    pub fn set_cpu_limit(&self, millis: Option<u32>) -> Result<(), ContainerError> {
        let state = self.state()?.filter(|s| s.status == RunStatus::Running);
        let state = state.ok_or(ContainerError::NotRunning)?;
        let pid = self.vmm_of(&state).ok_or(ContainerError::Starting)?;
        let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(io("the VMM's cgroup"))?;
        let group = line.lines().find_map(|l| l.strip_prefix("0::/")).unwrap_or_default();
        let cgroup = Path::new("/sys/fs/cgroup").join(group.trim());
        if group.is_empty() || !cgroup.starts_with(vmm::jail::CGROUP_PARENT) {
            return Err(ContainerError::NotLive(
                "the container's VM runs without a cgroup of its own (no jail, or cgroup v1): its CPU limit applies at its next start".into(),
            ));
        }
        std::fs::write(cgroup.join("cpu.max"), vmm::jail::cpu_max(millis)).map_err(io("setting the VMM's cpu.max"))
    }

    /// Pauses or resumes the whole VM through its VMM's control channel:
    /// every vCPU and device thread parks (as Docker freezes a container's
    /// processes). Returns once all have.
    pub fn set_paused(&self, paused: bool) -> Result<(), ContainerError> {
        use proto::vmm_control::VmmRequest;
        let request = if paused { VmmRequest::Pause } else { VmmRequest::Resume };
        self.ask_vmm(request, None)?;
        let marker = self.socket_dir().join(crate::run::PAUSED_MARKER);
        match paused {
            true => std::fs::write(&marker, b"").map_err(io("marking the VM paused"))?,
            false => {
                let _ = std::fs::remove_file(&marker);
            }
        }
        Ok(())
    }

    /// Plugs NIC `slot` of a running container's VM into `tap`, or into
    /// nothing (`docker network connect` and `disconnect`).
    pub fn plug_nic(&self, slot: u8, tap: Option<&std::fs::File>) -> Result<(), ContainerError> {
        use proto::vmm_control::VmmRequest;
        match tap {
            Some(tap) => self.ask_vmm(VmmRequest::PlugNic { slot }, Some(tap)),
            None => self.ask_vmm(VmmRequest::UnplugNic { slot }, None),
        }
    }

    /// The container in whose VM this one runs, on its network, if any
    /// (`ContainerSpec::joins`).
    pub fn joins(&self) -> Option<String> {
        self.spec().ok().and_then(|spec| spec.joins)
    }

    /// The container whose VM this one runs in: itself, or the one whose
    /// network it joined (`ContainerSpec::joins`).
    pub fn vm_dir(&self) -> ContainerDir {
        match self.joins() {
            Some(target) => ContainerDir::new(&target),
            None => self.clone(),
        }
    }

    /// Puts `disk` into empty disk slot `slot` of the running container's
    /// VM (a container joining its network brings its image so), or takes
    /// a disk put there out again.
    pub fn plug_disk(&self, slot: u8, disk: Option<&std::fs::File>) -> Result<(), ContainerError> {
        use proto::vmm_control::VmmRequest;
        match disk {
            Some(disk) => self.ask_vmm(VmmRequest::PlugDisk { slot, lasting: false }, Some(disk)),
            None => self.ask_vmm(VmmRequest::UnplugDisk { slot }, None),
        }
    }

    /// Sends one request (and `fd`, if any) on the VMM's control channel
    /// and waits for its reply.
    fn ask_vmm(
        &self,
        request: proto::vmm_control::VmmRequest,
        fd: Option<&std::fs::File>,
    ) -> Result<(), ContainerError> {
        use proto::vmm_control::VmmReply;
        let stream = self.vmm_control()?;
        // A pause waits for every thread to park (at most 10 s in the VMM).
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(io("the VMM's control channel"))?;
        match vmm::control::ask(&stream, &request, fd).map_err(|e| ContainerError::Control(e.to_string()))? {
            VmmReply::Done => Ok(()),
            VmmReply::Failed { reason } => Err(ContainerError::Control(reason)),
            other => Err(ContainerError::Control(format!("unexpected reply {other:?}"))),
        }
    }

    pub fn write_state(&self, state: &RunState) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| ContainerError::Damaged {
            path: self.state_path(),
            detail: e.to_string(),
        })?;
        image::store::write_atomic(&self.state_path(), &bytes).map_err(io("writing the container state"))
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state(), Ok(Some(s)) if s.status == RunStatus::Running)
    }

    /// Starts the supervisor, which starts the VM, and returns once the
    /// container's process runs (as runc's start does: a `pause` or `exec`
    /// right after it finds the command running), or with the reason it
    /// could not start. The state returned may already say "exited": the
    /// command ran and ended.
    pub fn start(&self) -> Result<RunState, ContainerError> {
        let spec = self.spec()?;
        // A standby VM if one is ready: the VM's start is then not waited for.
        let starting = match crate::standby::claim(self, &spec) {
            Some(starting) => starting,
            None => self.spawn_supervisor(None)?,
        };
        let state = starting.until_running();
        if spec.joins.is_none() && !spec.cold_boot && crate::standby::enabled() {
            // Apart, so that the answer does not wait for the next one's spawn.
            std::thread::spawn(move || {
                let root = crate::standby::at_lowest_priority(|| crate::standby::RootPlan::like(&spec));
                crate::standby::keep_warm(spec.memory_mib, spec.cpus, root)
            });
        }
        state
    }

    /// Starts the supervisor of a container whose running VM comes from
    /// another host over `conn` (`shim::supervise`); `Starting::until_running`
    /// returns once it runs here, which takes the source's word
    /// (`Control::Resume` on the supervisor's socket).
    pub fn start_arriving(&self, conn: std::os::fd::OwnedFd) -> Result<Starting, ContainerError> {
        self.spawn_supervisor(Some(conn))
    }

    fn spawn_supervisor(&self, arriving: Option<std::os::fd::OwnedFd>) -> Result<Starting, ContainerError> {
        let err_file =
            std::fs::File::create(self.supervisor_errors()).map_err(io("creating the supervisor's error log"))?;
        let mut command = shim_command().map_err(|_| ContainerError::NoShim)?;
        command
            .arg(&self.path)
            .arg(&self.id)
            // An arriving container's lifeline: its end before the VM
            // resumed here (hulld gone) ends the arrival.
            .stdin(match arriving {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            })
            // The shim writes `shim::RUNNING` here once the process runs.
            .stdout(Stdio::piped())
            .stderr(err_file);
        let arriving_fd = arriving.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        if let Some(fd) = arriving_fd {
            command.arg("--arriving-fd").arg(SHIM_ARRIVING_FD.to_string());
            // SAFETY: dup2 is async-signal-safe; it puts the arriving
            // connection at a known number (the copy stays open across exec).
            unsafe {
                command.pre_exec(move || match libc::dup2(fd, SHIM_ARRIVING_FD) {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                });
            }
        }
        let mut child = command.spawn().map_err(io("starting hull-shim"))?;
        // The supervisor has its copy.
        drop(arriving);
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ContainerError::ShimFailed("no pipe to hear it on".into()));
        };
        let lifeline = child.stdin.take();
        Ok(Starting::new(self.clone(), lifeline, child, Report::new(stdout)))
    }
}

/// `hull-shim`, ready to be given its arguments. It makes a session of
/// its own as it starts (so that nothing aimed at hulld's terminal or
/// group reaches it): nothing runs between fork and exec, so the spawn is
/// a `posix_spawn`, which does not copy hulld's page tables (a fork would,
/// and hulld's threads would then fault on every page they write, while
/// it answers the start).
pub(crate) fn shim_command() -> Result<Command, String> {
    let shim = crate::sibling_binary("hull-shim").ok_or("hull-shim not found beside this binary")?;
    let mut command = Command::new(shim);
    command.env("HULL_DATA_DIR", crate::data_dir());
    Ok(command)
}

/// The file naming an arriving VM's template directory.
const ARRIVING_TEMPLATE: &str = "template.arrived";
/// Marks a container still arriving from another host (`mark_arriving`).
const ARRIVAL_PENDING: &str = "arrival-pending.json";

/// Where an arriving container's supervisor finds its connection.
const SHIM_ARRIVING_FD: i32 = 3;

/// A supervisor started, not yet running the container's process.
pub struct Starting {
    dir: ContainerDir,
    /// Held until the arriving container runs (`shim::supervise`).
    lifeline: Option<std::process::ChildStdin>,
    child: std::process::Child,
    report: Report,
}

impl Starting {
    pub(crate) fn new(
        dir: ContainerDir,
        lifeline: Option<std::process::ChildStdin>,
        child: std::process::Child,
        report: Report,
    ) -> Starting {
        Starting {
            dir,
            lifeline,
            child,
            report,
        }
    }

    /// Whether the supervisor has ended.
    pub fn ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the supervisor (and with it its VM) before its container ran.
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the container's process runs, or for why it could not.
    pub fn until_running(self) -> Result<RunState, ContainerError> {
        let Starting {
            dir,
            lifeline,
            mut child,
            mut report,
        } = self;
        let pid = child.id();
        // Nothing is polled meanwhile (a state file read twenty times a
        // second by each of ten starts took the CPU their guests needed on
        // the emulated test host): the supervisor's byte wakes this, or the
        // pipe's end when it exits. It bounds the guest's boot itself; a
        // first run's image disk takes as long as the image is big.
        let ran = loop {
            match report.read(Duration::from_secs(1)) {
                Heard::Running => break true,
                Heard::Closed => break false,
                // A supervisor gone while a child of its holds the pipe.
                Heard::Nothing | Heard::Standing if !matches!(child.try_wait(), Ok(None)) => {
                    break report.read(Duration::ZERO) == Heard::Running
                }
                Heard::Nothing | Heard::Standing => {}
            }
        };
        // Running (or not): the arrival no longer hangs on hulld.
        drop(lifeline);
        if ran {
            // Its state was written before the byte.
            return match dir.state() {
                Ok(Some(state)) if state.pid == pid => {
                    // Whoever started it reaps it (hulld may be gone by then: init does).
                    std::thread::spawn(move || child.wait());
                    Ok(state)
                }
                Ok(_) => Err(ContainerError::ShimFailed(
                    "it started the command but left no state".into(),
                )),
                Err(e) => Err(e),
            };
        }
        // Closed without the byte: the supervisor is ending.
        let _ = child.wait();
        match dir.state() {
            Ok(Some(state)) if state.pid == pid => Err(ContainerError::DidNotStart {
                exit_code: state.exit_code,
                message: if state.error.is_empty() {
                    "the container's command did not start (see its log)".into()
                } else {
                    state.error
                },
            }),
            _ => {
                let mut text = String::new();
                let _ = std::fs::File::open(dir.supervisor_errors()).and_then(|mut f| f.read_to_string(&mut text));
                Err(ContainerError::ShimFailed(text.trim().to_string()))
            }
        }
    }
}

impl ContainerDir {
    /// A connection to the running container's supervisor.
    pub fn connect(&self) -> Result<ShimConnection, ContainerError> {
        let stream = UnixStream::connect(self.socket_path()).map_err(|_| ContainerError::NotRunning)?;
        Ok(ShimConnection(stream))
    }

    /// Kills the VM outright (its supervisor, which takes the VMM with it).
    pub fn kill_hard(&self) {
        if let Ok(Some(state)) = self.state() {
            if state.status == RunStatus::Running {
                // SAFETY: plain kill(2) of the PID the live supervisor recorded.
                unsafe { libc::kill(state.pid as i32, libc::SIGKILL) };
            }
        }
    }

    /// Locks the container's disks for one VM: the supervisor's run
    /// (`wait`ing for it) or a held container's (`Busy` if taken). The
    /// lock lasts as long as the file, and dies with its process.
    pub fn lock_disks(&self, wait: bool) -> Result<std::fs::File, ContainerError> {
        crate::lock_file(&self.path.join("disks.lock"), wait).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => ContainerError::Busy,
            _ => io("locking the container's disks")(e),
        })
    }

    /// Removes every file of the container.
    pub fn remove(&self) -> Result<(), ContainerError> {
        let _ = std::fs::remove_dir_all(self.socket_dir());
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", self.path.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// A client of one container's supervisor: signals and standard input go
/// in; `Exited` comes back when the command ends.
pub struct ShimConnection(pub UnixStream);

impl ShimConnection {
    pub fn signal(&mut self, signal: i32) -> Result<(), ContainerError> {
        self.send(&Frame::Control(Control::Signal { signal }))
    }

    pub fn resize(&mut self, size: proto::TerminalSize) -> Result<(), ContainerError> {
        self.send(&Frame::Control(Control::Resize {
            rows: size.rows,
            cols: size.cols,
        }))
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), ContainerError> {
        write_frame(&mut self.0, frame).map_err(|_| ContainerError::NotRunning)
    }

    /// Moves the container's VM to a new VMM on this host while it runs
    /// (live migration), within `limits`; or, with `away`, to another host
    /// over that connection (its hulld's to the other host's, where a VMM
    /// waits for the VM), its disks with it.
    pub fn migrate(
        &mut self,
        limits: proto::MoveLimits,
        away: Option<&std::os::fd::OwnedFd>,
        progress: &mut dyn FnMut(proto::MigrationProgress),
    ) -> Result<proto::MigrationReport, ContainerError> {
        self.send(&Frame::Control(Control::Migrate {
            downtime_ms: limits.downtime_ms,
            max_seconds: limits.max_seconds,
            away: away.is_some(),
            uncompressed: !limits.compress,
        }))?;
        if let Some(link) = away {
            use vmm_sys_util::sock_ctrl_msg::ScmSocket;
            let fds = [std::os::fd::AsRawFd::as_raw_fd(link)];
            // One byte, which carries the descriptor, right after the frame.
            match self.0.send_with_fds(&[&[0u8][..]], &fds) {
                Ok(1) => {}
                _ => return Err(ContainerError::NotRunning),
            }
        }
        loop {
            match proto::read_frame(&mut self.0) {
                Ok(Some(Frame::Control(Control::MigrationProgress(p)))) => progress(p),
                Ok(Some(Frame::Control(Control::Migrated(report)))) => return Ok(report),
                Ok(Some(Frame::Control(Control::Failed { message, .. }))) => {
                    return Err(ContainerError::NotMoved(message))
                }
                Ok(Some(Frame::Control(Control::Exited { .. }))) | Ok(None) | Err(_) => {
                    return Err(ContainerError::NotRunning)
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Gives up the container's move under way (`migrate` on another
    /// connection); false if there was none.
    pub fn cancel_migration(&mut self) -> Result<bool, ContainerError> {
        self.send(&Frame::Control(Control::CancelMigration))?;
        loop {
            match proto::read_frame(&mut self.0) {
                Ok(Some(Frame::Control(Control::MigrationCancelled { found }))) => return Ok(found),
                Ok(Some(Frame::Control(Control::Exited { .. }))) | Ok(None) | Err(_) => {
                    return Err(ContainerError::NotRunning)
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Blocks until the command ends; its exit status.
    pub fn wait_exit(&mut self) -> Option<i32> {
        loop {
            match proto::read_frame(&mut self.0) {
                Ok(Some(Frame::Control(Control::Exited { code, signal }))) => {
                    return Some(proto::shell_status(code, signal))
                }
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ContainerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ContainerError::Damaged {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it lives.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(pid: u32, start: u64) -> bool {
    let is_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(true);
    !is_zombie && process_start_time(pid) == Some(start)
}

/// Now, as Docker writes times: RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// What a starting supervisor said on its report pipe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    Running,
    /// A standby's VM is ready (`standby::STANDING`).
    Standing,
    Closed,
    Nothing,
}

/// The read end of a supervisor's report pipe (non-blocking).
pub(crate) struct Report(std::process::ChildStdout);

impl Report {
    pub(crate) fn new(pipe: std::process::ChildStdout) -> Report {
        use std::os::unix::io::AsRawFd;
        // SAFETY: F_GETFL/F_SETFL on a pipe this process owns.
        unsafe {
            let flags = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Report(pipe)
    }

    /// Waits up to `timeout` for the supervisor's word.
    pub(crate) fn read(&mut self, timeout: Duration) -> Heard {
        crate::run::wait_readable(&self.0, timeout);
        let mut bytes = [0u8; 16];
        match self.0.read(&mut bytes) {
            Ok(0) => Heard::Closed,
            Ok(n) if bytes[..n].contains(&crate::shim::RUNNING[0]) => Heard::Running,
            Ok(n) if bytes[..n].contains(&crate::standby::STANDING) => Heard::Standing,
            Ok(_) => Heard::Nothing,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Heard::Nothing
            }
            Err(_) => Heard::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_keeps_its_resolved_process_and_one_from_before_has_none() {
        let mut spec: ContainerSpec = serde_json::from_value(serde_json::json!({
            "image": null, "rootfs": "/r", "memory_mib": 256, "cpus": 1,
            "overrides": {"entrypoint": null, "cmd": [], "env": [], "workdir": null, "user": null},
            "hostname": "h", "open_stdin": false, "cold_boot": false,
        }))
        .unwrap();
        assert_eq!(spec.process, None);
        spec.process = Some(image::config::Process {
            argv: vec!["sleep".into(), "60".into()],
            env: vec!["PATH=/bin".into()],
            workdir: "/".into(),
            user: "1:2".into(),
            groups: vec!["wheel".into()],
        });
        let again: ContainerSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(again.process, spec.process);
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let start = process_start_time(me).expect("own start time");
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
        assert!(!process_alive(u32::MAX - 1, start));
    }

    #[test]
    fn a_report_pipe_tells_standing_then_running_then_its_end() {
        let mut child = Command::new("sh")
            .args(["-c", "printf W; sleep 0.3; printf R"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut report = Report::new(child.stdout.take().unwrap());
        assert_eq!(report.read(Duration::from_secs(10)), Heard::Standing);
        assert_eq!(report.read(Duration::from_secs(10)), Heard::Running);
        child.wait().unwrap();
        assert_eq!(report.read(Duration::from_secs(10)), Heard::Closed);
    }

    #[test]
    fn a_dead_supervisor_reads_as_exited_137() {
        let dir = tempfile::tempdir().unwrap();
        let container = ContainerDir {
            id: "c".into(),
            path: dir.path().to_path_buf(),
        };
        assert_eq!(container.state().unwrap(), None);
        container
            .write_state(&RunState {
                status: RunStatus::Running,
                pid: std::process::id(),
                pid_start: 1,
                started_at: now_rfc3339(),
                finished_at: None,
                exit_code: None,
                error: String::new(),
                vmm_pid: 0,
                paused: false,
            })
            .unwrap();
        let state = container.state().unwrap().unwrap();
        assert_eq!(state.status, RunStatus::Exited);
        assert_eq!(state.exit_code, Some(137));
        std::fs::write(container.state_path(), b"{not json").unwrap();
        assert!(matches!(container.state(), Err(ContainerError::Damaged { .. })));
    }
}
