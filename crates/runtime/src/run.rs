//! Running one container command in its own microVM: start `hull-vmm` (a
//! clone of the template for this VM shape, or a cold boot), wait for the
//! agent to call in over vsock, hand it the command with fresh entropy, the
//! time and its disks' sizes, relay standard streams and signals, and return
//! the command's exit status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::config::{ConfigError, Overrides, Process};
use image::disk::DiskError;
use image::StoreError;

use crate::volume::VolumeKind;
use proto::{read_frame, write_frame, Control, Frame, ProcessSpec, RunSpec, TerminalSize, PROTOCOL_VERSION};

use crate::console::ConsoleKeeper;
use crate::guest::{Guest, GuestError};
use crate::rootfs::{self, RootfsError};

/// What the container's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory (made into a cached ext4 image) or an ext4 image file.
    Rootfs(PathBuf),
    /// An image in the store: its shared read-only disk, and its config.
    Image(Box<image::ImageRecord>),
}

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub source: Source,
    /// Command line, environment, working directory and user, each
    /// overriding the image's config.
    pub overrides: Overrides,
    /// The image's config and `overrides` resolved already (a container's,
    /// at its create); `None`: resolved here from the image's config.
    pub process: Option<image::config::Process>,
    pub memory_mib: u64,
    pub cpus: u8,
    /// CPU time the VM may take, in thousandths of a CPU (its jail's
    /// cgroup enforces it); `None`: all of its vCPUs.
    pub cpu_limit_millis: Option<u32>,
    /// At most this many processes in the container (the agent's limit in the guest).
    pub pids_limit: Option<u64>,
    /// Relay our standard input to the command.
    pub interactive: bool,
    /// Run the command on a terminal of this size in the guest (`-t`).
    pub tty: Option<TerminalSize>,
    /// How long the guest may take to reach its agent.
    pub boot_timeout: Duration,
    /// Boot a fresh kernel instead of cloning the template (the slow path).
    pub cold_boot: bool,
    /// The guest's hostname (default: the container's ID).
    pub hostname: Option<String>,
    /// Run no command: hold the container's filesystems mounted for the
    /// agent's exec port until end of input (see `runtime::held`).
    pub hold: bool,
    /// Named volumes to mount (made if missing, as Docker does).
    pub volumes: Vec<crate::volume::VolumeMount>,
    /// Host directories to mount (checked and resolved already).
    pub binds: Vec<crate::bind::BindMount>,
    /// The container's network (its address is leased already).
    pub network: crate::network::ContainerNetwork,
    /// The capabilities the command keeps (`proto::capabilities`).
    pub capabilities: Vec<String>,
    /// The command shares the VM's PID namespace (`--pid host`).
    pub pid_host: bool,
    /// A small init starts the command (`--init`, `proto::RunSpec::init`).
    pub init: bool,
    /// The writable disk is thrown away when the command ends (`hull run`,
    /// `docker run --rm`): without volumes or binds, the guest's end skips
    /// its `sync` (`proto::RunSpec::disposable`).
    pub disposable: bool,
}

/// Which of the command's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Steers a running container's command: signals and standard input.
#[derive(Clone)]
pub struct Steer(Arc<Mutex<Steering>>);

/// Input frames sent are kept up to this much, to send again those a moving
/// VM's agent did not get.
const KEPT_INPUT_BYTES: usize = 1 << 20;

struct Steering {
    conn: UnixStream,
    /// Frames sent on the run connection after `Run`, numbered as the
    /// agent counts what it reads (`proto::ResumePoint::input_frames`).
    sent: proto::sent_frames::SentFrames,
    /// The VM is moving: a frame the old connection no longer takes is
    /// kept for the new one.
    moving: bool,
}

impl Steer {
    pub(crate) fn new(conn: UnixStream) -> Steer {
        Steer::continuing(conn, 0)
    }

    /// Steers a command whose agent has read `first` frames already (sent
    /// on another host, before its VM moved here).
    fn continuing(conn: UnixStream, first: u64) -> Steer {
        Steer(Arc::new(Mutex::new(Steering {
            conn,
            sent: proto::sent_frames::SentFrames::starting_at(first),
            moving: false,
        })))
    }

    /// The VM is moving (`true`) or stays where it was (`false`).
    pub(crate) fn set_moving(&self, moving: bool) {
        if let Ok(mut steering) = self.0.lock() {
            steering.moving = moving;
        }
    }

    /// From now on the command is reached through `conn` (its VM moved),
    /// whose agent has read `agent_read` frames: those it lacks are sent
    /// again. How many it lacks that were no longer kept (lost).
    pub(crate) fn reconnect(&self, mut conn: UnixStream, agent_read: u64) -> u64 {
        let Ok(mut steering) = self.0.lock() else { return 0 };
        // From the guest: more than was sent is nonsense, and gets nothing again.
        let (from, frames) = steering.sent.since(agent_read);
        let lost = from - agent_read.min(from);
        for frame in frames {
            if conn.write_all(frame).is_err() {
                break;
            }
        }
        steering.conn = conn;
        steering.moving = false;
        lost
    }

    fn send(&self, frame: &Frame) -> bool {
        let Ok(bytes) = proto::encode_frame(frame) else {
            return false;
        };
        let Ok(mut steering) = self.0.lock() else { return false };
        let written = steering.conn.write_all(&bytes).is_ok();
        steering.sent.push(bytes);
        steering.sent.trim(KEPT_INPUT_BYTES, u64::MAX);
        written || steering.moving
    }

    /// Delivers `signal` to the command; false once the guest is gone.
    pub fn signal(&self, signal: i32) -> bool {
        self.send(&Frame::Control(Control::Signal { signal }))
    }

    /// Feeds the command's standard input (in `proto::CHUNK` pieces).
    pub fn stdin(&self, data: &[u8]) -> bool {
        data.chunks(proto::CHUNK).all(|c| self.send(&Frame::Stdin(c.to_vec())))
    }

    pub fn stdin_eof(&self) -> bool {
        self.send(&Frame::StdinEof)
    }

    /// Resizes the command's terminal (when it runs on one).
    pub fn resize(&self, size: TerminalSize) -> bool {
        self.send(&Frame::Control(Control::Resize {
            rows: size.rows,
            cols: size.cols,
        }))
    }

    /// Passes on a frame a client of the container sent: a signal, input,
    /// or a terminal size; anything else is not a client's to send.
    pub fn forward(&self, frame: &Frame) -> bool {
        match frame {
            Frame::Control(Control::Signal { .. } | Control::Resize { .. }) | Frame::Stdin(_) | Frame::StdinEof => {
                self.send(frame)
            }
            _ => true,
        }
    }
}

/// Where a container's output goes, and who is told it started.
pub trait Attachment {
    fn output(&mut self, stream: OutputStream, data: &[u8]);
    /// The command was sent: `steer` reaches it until it ends.
    fn started(&mut self, steer: Steer);
    /// The agent started the command's process (`pid` in the guest).
    fn running(&mut self, _pid: u32) {}
    /// The command could not start (or the agent gave up on it): why.
    fn failed(&mut self, _message: &str) {}
    /// The VM's agent called in: `vmm_pid` is the VMM process running it
    /// (again after the VM moved to a new VMM).
    fn vm_ready(&mut self, _vmm_pid: u32) {}
    /// Where clients ask to move the VM to a new VMM while it runs.
    fn moves(&self) -> Option<crate::moving::Moves> {
        None
    }
    /// The VM moved to another host: everything it said here was given to
    /// `output`, and the container's life goes on there.
    fn departed(&mut self) {}
}

/// The kernel command line of every hull guest.
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet panic=-1 pci=off";
/// The same, with the kernel's messages on the console.
const GUEST_CMDLINE_VERBOSE: &str = "console=ttyS0 panic=-1 pci=off";
/// The VMM's control socket, in a VM's socket directory.
pub const VMM_CONTROL_SOCKET: &str = "vmm.ctl";
/// Present in a VM's socket directory while its VMM is paused.
pub const PAUSED_MARKER: &str = "paused";

/// The fd number the tap of a container's NIC 0 is passed to hull-vmm as
/// (NIC N's is N more; above the jail's lifeline).
const FIRST_TAP_FD: i32 = 10;
/// Where hull-vmm finds the write end of its console pipe (`crate::console`).
const CONSOLE_FD: i32 = 4;
/// Where hull-vmm finds the connection a VM from another host comes on.
const ARRIVING_FD: i32 = 5;
/// How long a VM arriving from another host may take: its pre-copy, the
/// source's word of how far its output got, and its agent calling back.
const ARRIVAL_PATIENCE: Duration = Duration::from_secs(3600);
/// hull-vmm's exit status for a snapshot it cannot use.
const VMM_EXIT_BAD_SNAPSHOT: i32 = 3;
/// Below this much available host memory no new VM is started.
pub(crate) const MIN_HOST_AVAILABLE_MIB: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Host(#[from] vmm::host::HostKvmError),
    #[error("{0}")]
    Guest(#[from] GuestError),
    #[error("{0}")]
    Rootfs(#[from] RootfsError),
    #[error("{0}")]
    Config(#[from] vmm::vm::VmError),
    #[error("{0}")]
    Image(#[from] ConfigError),
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("hull-vmm not found beside hull; build the workspace (cargo build)")]
    NoVmm,
    #[error("{0}")]
    Template(#[from] crate::template::TemplateError),
    #[error("the standby VM could not be given the container: {0}")]
    Standby(String),
    #[error("the template could not be restored: {0}")]
    BadSnapshot(String),
    #[error("the host has {available} MiB of memory available; starting another VM needs at least {MIN_HOST_AVAILABLE_MIB} MiB")]
    HostMemory { available: u64 },
    #[error("the VM stopped before its agent started ({status}).{console}")]
    EarlyExit { status: String, console: String },
    #[error("the guest did not reach its agent within {timeout:?}; it was stopped.{console}")]
    BootTimeout { timeout: Duration, console: String },
    #[error("the agent speaks protocol version {agent}, this hull speaks {PROTOCOL_VERSION}: run `hull setup` again")]
    Version { agent: u32 },
    #[error("the connection to the guest broke ({detail}).{console}")]
    Lost { detail: String, console: String },
    #[error("{0}")]
    Volume(#[from] crate::volume::VolumeError),
    #[error("{0}")]
    Mounts(String),
    #[error("{0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("{0}")]
    Connectivity(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// A per-VM directory (vsock sockets, console log), removed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The VMM process; killed if still running when dropped (and its cgroup
/// removed, `vmm::jail::VmmProcess`).
pub(crate) struct Vmm {
    pub(crate) process: vmm::jail::VmmProcess,
    pub(crate) console: ConsoleKeeper,
}

impl Vmm {
    /// How the VMM ended (waiting up to `grace`), with its stderr.
    pub(crate) fn fate(&mut self, grace: Duration) -> String {
        let deadline = Instant::now() + grace;
        let status = loop {
            match self.process.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => break None,
            }
        };
        let Some(status) = status else {
            return "hull-vmm is still running".into();
        };
        self.console.settle(Duration::from_secs(1));
        let mut stderr = String::new();
        if let Some(mut err) = self.process.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        format!("hull-vmm ended with {status}: {}", stderr.trim())
    }
}

/// Lets a jailed VMM (its group, `vmm::jail::ID_BASE`) reach what it needs
/// in its socket directory: the directory itself (search only) and the
/// listener sockets guest connections go to.
pub fn open_to_jailed_vmm(path: &Path, mode: u32) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(0), Some(vmm::jail::ID_BASE))
        .map_err(io(format!("handing {} to the VMM's group", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// Whether VMMs are jailed: always when started by root (the only one who
/// can hand them a uid of their own); `HULL_JAIL=0` turns it off, to tell
/// whether a problem comes from the jail.
pub(crate) fn jailing() -> bool {
    // SAFETY: geteuid has no preconditions.
    std::env::var_os("HULL_JAIL").is_none_or(|v| v != "0") && unsafe { libc::geteuid() == 0 }
}

fn new_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

/// The last lines of the guest console, formatted for an error message.
pub(crate) fn console_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        return String::new();
    }
    format!(
        " Last lines of the guest console:\n{}",
        tail.iter().map(|l| format!("  | {l}\n")).collect::<String>()
    )
}

/// Runs `request` in a new microVM and returns the command's exit status
/// (128 + signal when a signal killed it, 127 when it was not found). Our
/// standard streams are the command's; SIGINT, SIGTERM and SIGHUP are relayed.
pub fn run(request: &RunRequest) -> Result<i32, RunError> {
    let id = new_id();
    let dir = crate::data_dir().join("run").join(&id);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let dir = RunDir(dir);
    if let Source::Image(record) = &request.source {
        crate::usage::record(&dir.0, &record.id, Some(std::process::id()))
            .map_err(io("recording the container's image"))?;
    }
    run_in(
        &dir.0,
        &dir.0,
        &id,
        request,
        &mut Terminal {
            stdin: request.interactive,
        },
        None,
        GivenVm::None,
    )
}

/// Our own standard streams and signals, for `hull run`.
struct Terminal {
    stdin: bool,
}

impl Attachment for Terminal {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        let _ = match stream {
            OutputStream::Stdout => std::io::stdout()
                .write_all(data)
                .and_then(|_| std::io::stdout().flush()),
            OutputStream::Stderr => std::io::stderr().write_all(data),
        };
    }

    fn started(&mut self, steer: Steer) {
        if self.stdin {
            let steer = steer.clone();
            std::thread::spawn(move || relay_stdin(&steer));
        }
        relay_signals(steer);
    }
}

/// Runs `request` in a new microVM whose files (writable disk, console log)
/// live in `dir` and whose vsock sockets live in `sockets`; a writable disk
/// already there is kept, so a restarted container sees its earlier writes.
/// `nic` is the VM's place on its network if the caller made it already
/// (to report a failure as a failed start); otherwise it is made here.
/// A running VM the container is to be run in, rather than a new one.
pub enum GivenVm {
    None,
    /// From another host.
    Arriving(Arrival),
    /// A standby's, if it fits the container (`standby::WarmVm::fits`).
    Standby(Box<crate::standby::WarmVm>),
}

pub fn run_in(
    dir: &Path,
    sockets: &Path,
    id: &str,
    request: &RunRequest,
    attachment: &mut dyn Attachment,
    nic: Option<crate::network::attach::Attached>,
    given: GivenVm,
) -> Result<i32, RunError> {
    let given_standby = matches!(given, GivenVm::Standby(_));
    let (arrival, warm) = match given {
        GivenVm::None => (None, None),
        GivenVm::Arriving(arrival) => (Some(arrival), None),
        GivenVm::Standby(warm) => (None, Some(*warm)),
    };
    vmm::trace::mark("run: starting");
    vmm::host::require_guest_capable()?;
    let guest = Guest::current()?;
    let vmm_binary = crate::sibling_binary("hull-vmm").ok_or(RunError::NoVmm)?;
    vmm::vm::validate_shape(request.memory_mib, request.cpus)?;
    let available = host_available_mib();
    if available < MIN_HOST_AVAILABLE_MIB {
        return Err(RunError::HostMemory { available });
    }
    // A VM from another host is a clone of the template hulld found for
    // it (or of none); a fresh one of this host's.
    // A standby's is the one its VM is a clone of, if still current.
    let standby_template = warm
        .as_ref()
        .map(|warm| &warm.template)
        .filter(|t| (t.record.memory_mib, t.record.cpus) == (request.memory_mib, request.cpus))
        .filter(|t| crate::template::still_current(t, &guest, &vmm_binary));
    let mut template = match (request.cold_boot || arrival.is_some(), standby_template) {
        (true, _) => None,
        (false, Some(template)) => Some(template.clone()),
        (false, None) => Some(crate::template::ensure(
            &guest,
            &vmm_binary,
            request.memory_mib,
            request.cpus,
        )?),
    };
    vmm::trace::mark("run: template found");
    // Holding runs no command, whatever the image's says.
    let overrides = match request.hold {
        true => Overrides {
            entrypoint: Some(vec!["hold".into()]),
            ..request.overrides.clone()
        },
        false => request.overrides.clone(),
    };
    let (disk, mut process) = match &request.source {
        Source::Rootfs(path) => (rootfs::disk_for(path)?, image::config::process(None, &overrides)?),
        Source::Image(record) => {
            let store = image::Store::open(&crate::data_dir())?;
            // Held or not, the same environment, directory and user.
            // A held one's resolved process serves too: its argv is cleared below.
            let process = image::config::process_of(&store, &record.id, request.process.as_ref(), &overrides)?;
            let disk = match &arrival {
                // The source's own bytes: the guest's page cache holds its blocks.
                Some(arrival) => arrival.image_disk.clone(),
                None => image::disk::image_disk(&store, record)?,
            };
            (disk, process)
        }
    };
    if request.hold {
        process.argv.clear();
    }
    vmm::trace::mark("run: image config read");

    let writable = dir.join("rw.ext4");
    // A standby VM serves only a container it was made for (`WarmVm::fits`);
    // one that does not ends here (its VMM killed and reaped) and leaves
    // the socket directory to a VM of the container's own.
    let template_dir = template.as_ref().map(|t| t.dir.clone());
    let warm = warm.filter(|warm| arrival.is_none() && warm.fits(request, template_dir.as_deref()));
    // A new container of the image a standby's root was prepared from
    // takes that root, its writable disk included.
    let adopted = warm.as_ref().is_some_and(|warm| warm.adopt_root(&disk, &writable));
    if !writable.exists() {
        crate::writable::create(&writable, crate::writable::DiskKind::Layer)?;
    }
    crate::volume::check_mounts(&request.volumes).map_err(RunError::Mounts)?;
    let volume_targets: Vec<&str> = request.volumes.iter().map(|v| v.target.as_str()).collect();
    crate::bind::check(&request.binds, &volume_targets).map_err(RunError::Mounts)?;
    // What the VM's virtio-fs shares, in order (/0, /1, ...): the bind
    // mounts' directories, then the shared volumes'.
    let mut shares: Vec<crate::bind::Share> = request
        .binds
        .iter()
        .map(|bind| crate::bind::Share {
            mount: bind.clone(),
            fill_if_empty: false,
            travels: false,
        })
        .collect();
    // A disk volume is this VM's alone while it runs; a shared one is
    // held beside the other VMs that have it.
    let mut held_volumes = Vec::new();
    let mut disk_volumes = Vec::new();
    for mount in &request.volumes {
        let (record, _) = crate::volume::create(&mount.name, Default::default(), false, VolumeKind::Shared)?;
        held_volumes.push(crate::volume::lock(&mount.name)?);
        match record.kind {
            VolumeKind::Disk => disk_volumes.push(mount.clone()),
            VolumeKind::Shared => shares.push(crate::bind::Share {
                mount: crate::bind::BindMount {
                    source: crate::volume::share_source(&record)?,
                    target: mount.target.clone(),
                    read_only: mount.read_only,
                },
                fill_if_empty: true,
                travels: record.device.is_none(),
            }),
        }
    }
    let volume_disks = crate::volume::slot_disks(&disk_volumes)?;
    vmm::trace::mark("run: disks and volumes checked");
    // The published ports live as long as this VM; the taps as long as
    // its VMM holds them.
    let mut nic = match nic {
        Some(nic) => nic,
        None => crate::network::attach::Attached::new(id, &request.network).map_err(RunError::Connectivity)?,
    };
    let uds = sockets.join("vsock.sock");
    let control = sockets.join(VMM_CONTROL_SOCKET);
    // A new VM runs: whatever paused the last one is gone with it.
    let _ = std::fs::remove_file(sockets.join(PAUSED_MARKER));
    // A held VM (a stopped container's files) keeps the console of the
    // container's last run as it was.
    let console_log = match request.hold {
        true => sockets.join("console.log"),
        false => dir.join("console.log"),
    };
    let jailed = jailing();
    let listener = agent_listener(&uds, jailed)?;
    // A move starts a VMM like this one, on the taps the running VMM lends
    // it then (`moving`): its NICs may have changed since.
    let move_files = VmFiles {
        binary: &vmm_binary,
        guest: &guest,
        disk: &disk,
        writable: &writable,
        volumes: &volume_disks,
        shares: &shares,
        uds: &uds,
        control: &control,
        console_log: &console_log,
        taps: Vec::new(),
        jailed,
    };
    let vm = VmFiles {
        taps: nic.taps().collect(),
        ..move_files.clone()
    };

    // What a move within this host maps: the template this VM is a clone of.
    let clone_of = match &arrival {
        Some(arrival) => arrival.template.clone(),
        None => template.as_ref().map(|t| t.dir.clone()),
    };
    vmm::trace::mark("run: files ready, starting hull-vmm");
    // A standby VM that fails to take the container's disks and taps ends
    // here too.
    let taken = warm.and_then(|warm| match warm.take_over(&vm, request.shape(), adopted) {
        Ok(taken) => Some(taken),
        Err(e) => {
            eprintln!("hull: {e}; starting a VM of the container's own");
            None
        }
    });
    if given_standby && taken.is_none() {
        for leftover in [&uds, &control] {
            let _ = std::fs::remove_file(leftover);
        }
    }
    // A root taken from a standby that then failed: its writable disk was
    // mounted by a guest now killed; the container's VM gets a fresh one.
    if adopted && taken.is_none() {
        let _ = std::fs::remove_file(&writable);
        crate::writable::create(&writable, crate::writable::DiskKind::Layer)?;
    }
    // Whether the agent's hello was read already (a standby's, preparing its root).
    let greeted = matches!(taken, Some((_, _, true)));
    let (mut vmm, conn, resume_from) = match (arrival, taken) {
        (None, Some((vmm, conn, _))) => (vmm, conn, None),
        (Some(arrival), _) => {
            let start = VmStart::Arriving {
                conn: &arrival.conn,
                template: arrival.template.as_deref(),
            };
            let mut vmm = vm.start_as(request.shape(), start)?;
            // Only the VMM holds the connection now: its end is the source's sign.
            drop(arrival.conn);
            let frames = await_resume(&arrival.resume, &mut vmm)?;
            let conn = wait_for_agent(&listener.0, &mut vmm, ARRIVAL_PATIENCE, &console_log)?;
            (vmm, conn, Some(frames))
        }
        (None, None) => {
            let mut vmm = vm.start(request.shape(), template.as_ref())?;
            let conn = match wait_for_agent(&listener.0, &mut vmm, request.boot_timeout, &console_log) {
                // A damaged or outdated template: make it again, once.
                Err(RunError::BadSnapshot(reason)) if template.is_some() => {
                    let old = template.take().ok_or(RunError::NoVmm)?;
                    eprintln!("hull: template {} is unusable ({reason}); making it again", old.name);
                    let fresh = crate::template::rebuild(&old, &guest, &vmm_binary)?;
                    vmm = vm.start(request.shape(), Some(&fresh))?;
                    wait_for_agent(&listener.0, &mut vmm, request.boot_timeout, &console_log)?
                }
                other => other?,
            };
            (vmm, conn, None)
        }
    };
    vmm::trace::mark("run: the agent said hello");
    drop(listener);
    attachment.vm_ready(vmm.process.id());
    // Only the VMM holds the taps now, so a NIC it unplugs takes its tap away.
    nic.close_taps();
    // The host's changes in the shared directories raise inotify events in
    // the container, for as long as it runs.
    let _share_watch = match request.hold {
        true => None,
        false => crate::share_watch::start(&shares, uds.clone()),
    };
    // The guest names the disks in slot order: vda, vdb, then the volumes.
    let mut disks = vec![
        proto::DiskSize {
            device: "/dev/vda".into(),
            sectors: sectors(&disk)?,
        },
        proto::DiskSize {
            device: "/dev/vdb".into(),
            sectors: sectors(&writable)?,
        },
    ];
    let mut mounts = Vec::new();
    for ((mount, path), slot) in disk_volumes.iter().zip(&volume_disks).zip(2..) {
        let device = guest_disk(slot);
        disks.push(proto::DiskSize {
            device: device.clone(),
            sectors: sectors(path)?,
        });
        mounts.push(proto::MountSpec {
            source: proto::MountSource::Disk { device },
            target: mount.target.clone(),
            read_only: mount.read_only,
        });
    }
    for (index, share) in (0..).zip(&shares) {
        mounts.push(proto::MountSpec {
            source: proto::MountSource::Share {
                index,
                fill_if_empty: share.fill_if_empty,
                file: share.file_name(),
            },
            target: share.mount.target.clone(),
            read_only: share.mount.read_only,
        });
    }
    let hostname = request
        .hostname
        .clone()
        .unwrap_or_else(|| id.chars().take(12).collect());
    let guest_devices = GuestDevices {
        disks,
        mounts,
        network: nic.guest_network(&request.network, &hostname),
    };
    vmm::trace::mark("run: the guest's devices described");
    let moves = attachment.moves();
    let kit = crate::moving::MoveKit {
        moves: moves.as_ref(),
        files: move_files,
        request,
        template: clone_of.as_deref(),
        sockets,
    };
    let talking = match resume_from {
        Some(frames) => rejoin_arrived(conn, frames, attachment),
        None => {
            converse(conn, greeted, request, &process, &hostname, guest_devices, attachment).map(|(i, s)| (i, s, 0))
        }
    };
    let followed = talking.and_then(|(mut input, steer, first_frame)| {
        let status = follow_moving(&kit, &mut input, &steer, &mut vmm, first_frame, attachment);
        // Closing tells the agent everything arrived; it powers off only then.
        let _ = input.shutdown(std::net::Shutdown::Both);
        status
    });
    if let Some(moves) = &moves {
        moves.refuse_all("the container's command ended");
    }
    let status = match followed {
        // Say what became of the VMM: its exit status and last words.
        Err(RunError::Lost { detail, .. }) => {
            return Err(RunError::Lost {
                detail: format!("{detail}; {}", vmm.fate(Duration::from_secs(2))),
                console: console_tail(&console_log),
            })
        }
        other => other?,
    };
    // The agent reported only once the guest's disks were synced, so the VM
    // ends now, without waiting for the guest kernel to power off.
    drop(vmm);
    vmm::trace::mark("run: the VM ended");
    Ok(status)
}

/// Follows the command to its end, moving its VM to a new VMM whenever a
/// client asks (`kit.moves`).
fn follow_moving(
    kit: &crate::moving::MoveKit,
    input: &mut UnixStream,
    steer: &Steer,
    vmm: &mut Vmm,
    first_frame: u64,
    attachment: &mut dyn Attachment,
) -> Result<i32, RunError> {
    let lost = |detail: String| RunError::Lost {
        detail,
        console: String::new(),
    };
    let mut frames = first_frame;
    loop {
        match follow(input, attachment, &mut frames, kit.moves) {
            Ok(Followed::Ended(Some(status))) => return Ok(status),
            Ok(Followed::Ended(None)) => return Err(lost("the guest went away before the command finished".into())),
            Err(e) => return Err(lost(e.to_string())),
            Ok(Followed::MoveAsked(asked)) => {
                let outcome = crate::moving::move_vm(kit, &asked, vmm, input, steer, &mut frames, attachment);
                match outcome {
                    Ok(crate::moving::Moved::Running(report)) => asked.answer(Ok(report)),
                    Ok(crate::moving::Moved::Ended(status, report)) => {
                        asked.answer(Ok(report));
                        return Ok(status);
                    }
                    // Nothing is left here to run: the container goes on there.
                    Ok(crate::moving::Moved::Departed(report)) => {
                        asked.answer(Ok(report));
                        return Ok(0);
                    }
                    Err(why) => asked.answer(Err(why)),
                }
            }
        }
    }
}

/// A running container's VM coming from another host (`shim::supervise`
/// of an arriving container).
pub struct Arrival {
    /// The migration connection from the source's host (its hulld's).
    pub conn: std::os::fd::OwnedFd,
    /// The source's image disk, copied here: not rebuilt from the image,
    /// since the guest's page cache holds the source disk's blocks.
    pub image_disk: PathBuf,
    /// How many of the run connection's frames the source read: once the
    /// source's supervisor has read them all, hulld sends the number.
    pub resume: std::sync::mpsc::Receiver<u64>,
    /// The template (this host's, or one the source sent) the VM is a
    /// clone of: mapped, only the clone's own pages travel.
    pub template: Option<PathBuf>,
}

/// Waits for the number of frames the source read, while the VM arrives
/// in `vmm`; an error if the VMM ends first (the move failed).
fn await_resume(resume: &std::sync::mpsc::Receiver<u64>, vmm: &mut Vmm) -> Result<u64, RunError> {
    let deadline = Instant::now() + ARRIVAL_PATIENCE;
    loop {
        match resume.recv_timeout(Duration::from_millis(200)) {
            Ok(frames) => return Ok(frames),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(RunError::Connectivity("hulld went away while the VM arrived".into()))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !matches!(vmm.process.try_wait(), Ok(None)) {
            return Err(RunError::Connectivity(format!(
                "the VM did not arrive: {}",
                vmm.fate(Duration::from_secs(1))
            )));
        }
        if Instant::now() > deadline {
            return Err(RunError::Connectivity("the VM did not arrive in time".into()));
        }
    }
}

/// Takes the run connection of an agent whose VM arrived from another
/// host: the host there read `frames` of its frames. The run connection's
/// reading half, the way to steer the command, and the next frame's number.
fn rejoin_arrived(
    mut conn: UnixStream,
    frames: u64,
    attachment: &mut dyn Attachment,
) -> Result<(UnixStream, Steer, u64), RunError> {
    let lost = |detail: String| RunError::Lost {
        detail,
        console: String::new(),
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let rejoined = crate::rejoin::rejoin(&mut conn, frames).map_err(|e| lost(e.to_string()))?;
    let _ = conn.set_read_timeout(None);
    crate::rejoin::note_lost(&rejoined, attachment);
    let writer = conn.try_clone().map_err(io("the agent's connection"))?;
    let steer = Steer::continuing(writer, rejoined.agent.input_frames);
    attachment.started(steer.clone());
    attachment.running(0);
    Ok((conn, steer, rejoined.from))
}

/// The disks as the guest names them, the volumes among them, and the
/// network the guest is to set up.
struct GuestDevices {
    disks: Vec<proto::DiskSize>,
    mounts: Vec<proto::MountSpec>,
    network: Option<proto::GuestNetwork>,
}

fn sectors(disk: &Path) -> Result<u64, RunError> {
    Ok(std::fs::metadata(disk)
        .map_err(io(format!("{}", disk.display())))?
        .len()
        / 512)
}

pub(crate) fn host_available_mib() -> u64 {
    vmm::host::meminfo_mib("MemAvailable").unwrap_or(u64::MAX)
}

/// What a VM is given of the host: its memory, vCPUs and CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) memory_mib: u64,
    pub(crate) cpus: u8,
    /// `RunRequest::cpu_limit_millis`.
    pub(crate) cpu_limit_millis: Option<u32>,
}

impl RunRequest {
    pub(crate) fn shape(&self) -> Shape {
        Shape {
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            cpu_limit_millis: self.cpu_limit_millis,
        }
    }
}

/// How a container's VMM gets its VM.
#[derive(Clone, Copy)]
pub(crate) enum VmStart<'a> {
    /// A clone of the template, or a cold boot without one.
    Fresh(Option<&'a crate::template::Template>),
    /// From the container's running VMM, which migrates it to this one
    /// through `listen` (the template, mapped, spares sending its pages).
    Incoming {
        listen: &'a Path,
        template: Option<&'a Path>,
    },
    /// From another host, over `conn` (hulld's connection to that host's
    /// hulld); its read-write disks come with it into this VM's files.
    Arriving {
        conn: &'a std::os::fd::OwnedFd,
        template: Option<&'a Path>,
    },
}

/// Everything one container VM is started with.
#[derive(Clone)]
pub(crate) struct VmFiles<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) guest: &'a Guest,
    pub(crate) disk: &'a Path,
    pub(crate) writable: &'a Path,
    /// One per spare slot: volumes' disks, then empty placeholders.
    pub(crate) volumes: &'a [PathBuf],
    /// The directories its virtio-fs shares.
    pub(crate) shares: &'a [crate::bind::Share],
    pub(crate) uds: &'a Path,
    /// The VMM's control channel (`proto::vmm_control`).
    pub(crate) control: &'a Path,
    pub(crate) console_log: &'a Path,
    /// The container's taps, by NIC slot; the other slots are plugged into nothing.
    pub(crate) taps: Vec<(u8, &'a File)>,
    /// Jail the VMM in the socket directory (made ready for it already).
    pub(crate) jailed: bool,
}

impl<'a> VmFiles<'a> {
    /// The same VM's files, with its sockets named otherwise.
    pub(crate) fn with_sockets(&self, uds: &'a Path, control: &'a Path) -> VmFiles<'a> {
        VmFiles {
            uds,
            control,
            ..self.clone()
        }
    }

    /// Starts `hull-vmm`: a clone of `template`, or a cold boot without one.
    pub(crate) fn start(&self, shape: Shape, template: Option<&crate::template::Template>) -> Result<Vmm, RunError> {
        self.start_as(shape, VmStart::Fresh(template))
    }

    pub(crate) fn start_as(&self, shape: Shape, start: VmStart) -> Result<Vmm, RunError> {
        // HULL_DEBUG_CONSOLE=1: the whole guest console on our stderr, live.
        let debug_console = std::env::var_os("HULL_DEBUG_CONSOLE").is_some();
        let mut command = vmm::jail::VmmCommand::new(self.binary);
        if debug_console {
            command.arg("--console");
        }
        match start {
            VmStart::Incoming { listen, template } => {
                command.arg("--incoming").arg(listen);
                if let Some(template) = template {
                    command.arg("--template").arg(template);
                }
            }
            VmStart::Arriving { conn, template } => {
                command
                    .arg("--incoming-fd")
                    .arg(ARRIVING_FD.to_string())
                    .arg("--receive-disks")
                    .pass_fd(conn.as_raw_fd(), ARRIVING_FD);
                // A volume of the source host's own comes with the VM,
                // into this host's empty one.
                for share in crate::bind::travelling(self.shares) {
                    command.arg("--receive-share").arg(share.to_string());
                }
                if let Some(template) = template {
                    command.arg("--template").arg(template);
                }
            }
            VmStart::Fresh(Some(template)) => {
                command.arg("--restore").arg(&template.dir);
            }
            VmStart::Fresh(None) => {
                command
                    .arg("--kernel")
                    .arg(&self.guest.kernel)
                    .arg("--initrd")
                    .arg(&self.guest.initramfs)
                    .arg("--cmdline")
                    .arg(if debug_console {
                        GUEST_CMDLINE_VERBOSE
                    } else {
                        GUEST_CMDLINE
                    });
            }
        }
        command
            .arg("--memory")
            .arg(shape.memory_mib.to_string())
            .arg("--cpus")
            .arg(shape.cpus.to_string())
            .arg("--disk")
            .arg(format!("{}:ro", self.disk.display()))
            .arg("--disk")
            .arg(self.writable);
        for disk in self.volumes {
            command.arg("--disk").arg(disk);
        }
        // Every VM has the template's NIC slots: on the container's taps,
        // or plugged into nothing.
        command.arg("--net-slots").arg(vmm::vm::MAX_NICS.to_string());
        // And its virtio-fs device, sharing the bind mounts' and shared
        // volumes' directories.
        command.arg("--fs");
        for share in self.shares {
            command.arg("--share").arg(share.vmm_arg());
        }
        for (slot, tap) in &self.taps {
            let fd = FIRST_TAP_FD + i32::from(*slot);
            command
                .arg("--net-fd")
                .arg(format!("{slot}={fd}"))
                .pass_fd(tap.as_raw_fd(), fd);
        }
        command
            .arg("--vsock-uds")
            .arg(self.uds)
            .arg("--control-socket")
            .arg(self.control);
        if self.jailed {
            let limits = vmm::jail::Limits::new(shape.memory_mib, shape.cpus, shape.cpu_limit_millis)?;
            // The VM's socket directory holds everything it reaches after it is built.
            command.jail(self.uds.parent().unwrap_or(Path::new("/")), limits);
        }
        // The console reaches its log through a pipe (`crate::console`).
        let (console_source, console_end) = crate::console::pipe().map_err(io("the console's pipe"))?;
        let continued = matches!(start, VmStart::Incoming { .. } | VmStart::Arriving { .. });
        let keeper = crate::console::ConsoleKeeper::start(console_source, self.console_log, continued)
            .map_err(io(format!("{}", self.console_log.display())))?;
        command
            .arg("--serial-log")
            .arg(format!("/proc/self/fd/{CONSOLE_FD}"))
            .pass_fd(console_end.as_raw_fd(), CONSOLE_FD)
            .stdout(vmm::jail::Output::Null)
            .stderr(if debug_console {
                vmm::jail::Output::Inherit
            } else {
                vmm::jail::Output::Piped
            })
            // Terminal signals are ours to relay to the container, not the VMM's to die of.
            .process_group();
        // The VMM must not outlive us: it gets SIGKILL when the thread that
        // started it ends (and, jailed, when its lifeline hangs up).
        let process = command
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        // Only the VMM holds the write end now: the log ends when it does.
        drop(console_end);
        Ok(Vmm {
            process,
            console: keeper,
        })
    }
}

/// The listener the agent's first connection comes to (`uds` and the
/// agent's port), made ready for a jailed VMM; its socket goes with it.
pub(crate) struct AgentListener(pub(crate) UnixListener, PathBuf);

impl Drop for AgentListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

pub(crate) fn agent_listener(uds: &Path, jailed: bool) -> Result<AgentListener, RunError> {
    let path = PathBuf::from(format!("{}_{}", uds.display(), proto::AGENT_PORT));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("vsock listener"))?;
    let listener = AgentListener(listener, path);
    listener.0.set_nonblocking(true).map_err(io("vsock listener"))?;
    if jailed {
        if let Some(sockets) = uds.parent() {
            open_to_jailed_vmm(sockets, 0o710)?;
        }
        open_to_jailed_vmm(&listener.1, 0o660)?;
    }
    Ok(listener)
}

pub(crate) fn wait_for_agent(
    listener: &UnixListener,
    vmm: &mut Vmm,
    timeout: Duration,
    log: &Path,
) -> Result<UnixStream, RunError> {
    let deadline = Instant::now() + timeout;
    // Connections accepted, before the agent's first bytes on them.
    let mut pending = Vec::new();
    loop {
        wait_readable(listener, Duration::from_millis(20));
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true).map_err(io("vsock connection"))?;
                    pending.push(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io("accepting the agent's connection")(e)),
            }
        }
        if let Some(stream) = first_speaking(&mut pending) {
            stream.set_nonblocking(false).map_err(io("vsock connection"))?;
            return Ok(stream);
        }
        if let Ok(Some(status)) = vmm.process.try_wait() {
            vmm.console.settle(Duration::from_secs(1));
            let mut stderr = String::new();
            if let Some(mut err) = vmm.process.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            if status.code() == Some(VMM_EXIT_BAD_SNAPSHOT) {
                let reason = stderr.trim().trim_start_matches("hull-vmm: ");
                return Err(RunError::BadSnapshot(reason.to_string()));
            }
            let status = if stderr.trim().is_empty() {
                status.to_string()
            } else {
                stderr.trim().to_string()
            };
            return Err(RunError::EarlyExit {
                status,
                console: console_tail(log),
            });
        }
        if Instant::now() >= deadline {
            return Err(RunError::BootTimeout {
                timeout,
                console: console_tail(log),
            });
        }
    }
}

/// The first of `pending` on which the agent has spoken. One that ended
/// before a byte is dropped: a guest whose connect timed out (a busy host)
/// tries again on a new connection, and the VMM still completes the old
/// one, which the guest then resets.
fn first_speaking(pending: &mut Vec<UnixStream>) -> Option<UnixStream> {
    let mut byte = 0u8;
    let mut i = 0;
    while i < pending.len() {
        // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the byte queued.
        let n = unsafe {
            libc::recv(
                pending[i].as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let waiting = n < 0
            && matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            );
        match n {
            1 => return Some(pending.swap_remove(i)),
            _ if waiting => i += 1,
            // Ended unspoken, or broken.
            _ => drop(pending.swap_remove(i)),
        }
    }
    None
}

/// Sleeps until `fd` is readable (a listener: a connection is waiting) or
/// `timeout` passes. Waiting in poll(2) rather than in a sleep loop leaves
/// the CPU to the VM being waited for, which matters on a small host.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) {
    let mut ready = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call; an error or a
    // signal only ends the wait early, and the caller looks again.
    unsafe { libc::poll(&mut ready, 1, ms) };
}

/// Reads the agent's hello on `conn`; an agent of another protocol
/// version is told so and refused.
pub(crate) fn await_hello(conn: &UnixStream) -> Result<(), RunError> {
    let (mut input, mut sink) = (conn, conn);
    match read_frame(&mut input) {
        Ok(Some(Frame::Control(Control::Hello { version, .. }))) if version == PROTOCOL_VERSION => Ok(()),
        Ok(Some(Frame::Control(Control::Hello { version, .. }))) => {
            let message = format!("protocol version {PROTOCOL_VERSION} required");
            let _ = write_frame(
                &mut sink,
                &Frame::Control(Control::Failed {
                    message,
                    exit_code: 125,
                }),
            );
            Err(RunError::Version { agent: version })
        }
        other => Err(RunError::Lost {
            detail: match other {
                Ok(other) => format!("expected the agent's hello, got {other:?}"),
                Err(e) => e.to_string(),
            },
            console: String::new(),
        }),
    }
}

/// Greets the agent (unless its hello was read: `greeted`) and sends it
/// the command: the run connection's reading half, and the way to steer
/// the command.
fn converse(
    conn: UnixStream,
    greeted: bool,
    request: &RunRequest,
    process: &Process,
    hostname: &str,
    guest_devices: GuestDevices,
    attachment: &mut dyn Attachment,
) -> Result<(UnixStream, Steer), RunError> {
    let lost = |detail: String| RunError::Lost {
        detail,
        console: String::new(),
    };
    let input = conn.try_clone().map_err(io("vsock connection"))?;
    let mut sink = conn;
    let send = |sink: &mut UnixStream, frame: &Frame| -> bool { write_frame(sink, frame).is_ok() };
    if !greeted {
        await_hello(&sink)?;
    }
    let disposable = request.disposable && !request.hold && guest_devices.mounts.is_empty();
    vmm::trace::mark("run: greeted");
    let spec = RunSpec {
        process: process_spec(request, process, hostname),
        hostname: hostname.to_string(),
        root_device: "/dev/vda".into(),
        root_fstype: "ext4".into(),
        rw_device: Some("/dev/vdb".into()),
        disks: guest_devices.disks,
        mounts: guest_devices.mounts,
        entropy: host_entropy()?,
        wall_clock_ns: std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        network: guest_devices.network,
        // A held VM runs only hull's own file operations.
        pids_limit: request.pids_limit.filter(|_| !request.hold),
        disposable,
        pid_host: request.pid_host,
        init: request.init,
        trace: vmm::trace::enabled(),
    };
    vmm::trace::mark("run: Run made");
    if !send(&mut sink, &Frame::Control(Control::Run(Box::new(spec)))) {
        return Err(lost("sending the command".into()));
    }
    vmm::trace::mark("run: Run sent");
    let steer = Steer::new(sink);
    attachment.started(steer.clone());
    Ok((input, steer))
}

/// The guest's name of disk slot `slot`: vda, vdb, ... in slot order.
pub(crate) fn guest_disk(slot: u8) -> String {
    format!("/dev/vd{}", char::from(b'a'.saturating_add(slot)))
}

/// The command `request` runs, as the agent is told it: the process, its
/// streams and capabilities, `HOSTNAME` set to `hostname` unless given.
pub(crate) fn process_spec(request: &RunRequest, process: &Process, hostname: &str) -> ProcessSpec {
    let mut env = process.env.clone();
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.insert(1.min(env.len()), format!("HOSTNAME={hostname}"));
    }
    ProcessSpec {
        argv: process.argv.clone(),
        env,
        cwd: process.workdir.clone(),
        user: process.user.clone(),
        groups: process.groups.clone(),
        stdin: request.interactive,
        tty: request.tty,
        capabilities: request.capabilities.clone(),
        session: 0,
        container: String::new(),
    }
}

/// Passes the run connection's frames to `attachment` until the command
/// ends: its status, or `None` if the connection ended first. `frames`
/// counts the frames read, as the agent numbers them for a resume
/// (`proto::ResumePoint`).
pub fn follow(
    input: &mut UnixStream,
    attachment: &mut dyn Attachment,
    frames: &mut u64,
    moves: Option<&crate::moving::Moves>,
) -> Result<Followed, proto::ProtoError> {
    loop {
        if let Some(asked) = moves.and_then(|moves| moves.wait_for(input)) {
            return Ok(Followed::MoveAsked(asked));
        }
        let Some(frame) = read_frame(input)? else {
            return Ok(Followed::Ended(None));
        };
        *frames += 1;
        match frame {
            Frame::Stdout(data) => attachment.output(OutputStream::Stdout, &data),
            Frame::Stderr(data) => attachment.output(OutputStream::Stderr, &data),
            Frame::Control(Control::Exited { code, signal }) => {
                vmm::trace::mark("run: the agent reports the end");
                return Ok(Followed::Ended(Some(proto::shell_status(code, signal))));
            }
            Frame::Control(Control::Started { pid }) => {
                vmm::trace::mark("run: the command runs");
                attachment.running(pid)
            }
            Frame::Control(Control::Failed { message, exit_code }) => {
                attachment.output(OutputStream::Stderr, format!("hull: {message}\n").as_bytes());
                attachment.failed(&message);
                return Ok(Followed::Ended(Some(exit_code)));
            }
            _ => {}
        }
    }
}

/// Where following the run connection stopped.
pub enum Followed {
    /// The command ended (its status), or the connection did (`None`).
    Ended(Option<i32>),
    /// A client asked to move the VM to a new VMM.
    MoveAsked(crate::moving::MoveRequest),
}

/// 64 bytes from the host's generator for the guest to reseed with.
fn host_entropy() -> Result<Vec<u8>, RunError> {
    let mut bytes = vec![0u8; 64];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(bytes)
}

fn relay_stdin(steer: &Steer) {
    let mut stdin = std::io::stdin();
    let mut buf = vec![0u8; proto::CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                steer.stdin_eof();
                return;
            }
            Ok(n) if !steer.stdin(&buf[..n]) => return,
            Ok(_) => {}
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP to hull go to the container's command.
fn relay_signals(steer: Steer) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if !steer.signal(signal) {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_waiting(conn: &mut UnixStream) -> Vec<Frame> {
        conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        std::iter::from_fn(|| read_frame(conn).ok().flatten()).collect()
    }

    #[test]
    fn input_a_moving_vms_agent_did_not_get_is_sent_again_on_its_new_connection() {
        let (host, mut old_agent) = UnixStream::pair().unwrap();
        let steer = Steer::new(host);
        assert!(steer.stdin(b"a") && steer.signal(15));
        assert_eq!(frames_waiting(&mut old_agent).len(), 2);
        // The VM moves; the old connection goes, and input goes on meanwhile.
        steer.set_moving(true);
        drop(old_agent);
        assert!(steer.stdin(b"b") && steer.stdin_eof(), "kept while moving");
        // The agent had read only the first frame.
        let (host, mut new_agent) = UnixStream::pair().unwrap();
        assert_eq!(steer.reconnect(host, 1), 0);
        assert!(steer.resize(TerminalSize { rows: 2, cols: 3 }));
        assert_eq!(
            frames_waiting(&mut new_agent),
            vec![
                Frame::Control(Control::Signal { signal: 15 }),
                Frame::Stdin(b"b".to_vec()),
                Frame::StdinEof,
                Frame::Control(Control::Resize { rows: 2, cols: 3 }),
            ]
        );
        // Not moving, a broken connection is the guest gone.
        drop(new_agent);
        assert!(!steer.stdin(b"c"));
        // More than is kept: the oldest are counted lost; an agent that
        // claims more than was sent gets nothing again.
        let (host, mut agent) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || while let Ok(Some(_)) = read_frame(&mut agent) {});
        let big = vec![0u8; proto::CHUNK];
        steer.set_moving(true);
        assert!((0..20).all(|_| steer.stdin(&big)));
        let sent = steer.0.lock().unwrap().sent.next();
        assert!(steer.reconnect(host, 0) > 0);
        let (host, mut agent) = UnixStream::pair().unwrap();
        assert_eq!(steer.reconnect(host, sent + 5), 0);
        reader.join().unwrap();
        assert!(frames_waiting(&mut agent).is_empty());
    }

    #[test]
    fn the_agent_connection_is_the_first_that_speaks_and_abandoned_ones_go() {
        let (abandoned, guest_gave_up) = UnixStream::pair().unwrap();
        let (silent, _guest_waits) = UnixStream::pair().unwrap();
        let (agent, mut guest) = UnixStream::pair().unwrap();
        drop(guest_gave_up);
        for stream in [&abandoned, &silent, &agent] {
            stream.set_nonblocking(true).unwrap();
        }
        let mut pending = vec![abandoned, silent, agent];
        assert!(first_speaking(&mut pending).is_none(), "nobody has spoken yet");
        assert_eq!(pending.len(), 2, "the connection that ended unspoken is dropped");
        guest.write_all(b"hello").unwrap();
        let mut found = first_speaking(&mut pending).expect("the agent's connection");
        found.set_nonblocking(false).unwrap();
        let mut hello = [0u8; 5];
        found.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello", "peeking consumed nothing");
        assert_eq!(pending.len(), 1, "the silent one still waits");
    }
}
