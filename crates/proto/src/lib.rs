//! The host↔agent protocol: one definition used by both ends.
//!
//! A connection carries frames: a little-endian `u32` length (of what
//! follows), a one-byte kind, and a payload. Control messages are JSON;
//! standard streams are raw bytes, so output costs no encoding. The agent
//! opens with `Hello` carrying its protocol version; a host that speaks
//! another version answers `Failed` and closes. Frames come from the other
//! side of a VM boundary: a length over `MAX_FRAME`, an unknown kind or bad
//! JSON is an error, never a panic or an unbounded allocation.

pub mod capabilities;
pub mod host_changes;
pub mod sent_frames;
pub mod vmm_control;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes shape or meaning.
pub const PROTOCOL_VERSION: u32 = 21;
/// The vsock port the agent connects out to on the host (CID 2).
pub const AGENT_PORT: u32 = 1024;
/// The vsock port the agent listens on, once the container runs, for more
/// processes in it (`docker exec`): one connection per process, opened by
/// the host with an `Exec` request; or for one report on the guest
/// (`Stats`, `Top`) answered on the same connection.
pub const EXEC_PORT: u32 = 1025;
/// The I/O port a template guest's agent writes `SNAPSHOT_REQUEST` to once it
/// is ready: a VMM started to make a template pauses there and saves the VM;
/// every clone resumes just after that write. Other VMMs ignore it.
pub const SNAPSHOT_PORT: u16 = 0x0f00;
pub const SNAPSHOT_REQUEST: u8 = 0x5a;
/// The kernel command-line word that tells the agent it boots a template.
pub const TEMPLATE_CMDLINE_FLAG: &str = "hull.template";
/// The overlay's upper and work directories at the top of a container's
/// writable disk: the host formats the disk with them, the agent mounts
/// the overlay from them.
pub const WRITABLE_UPPER: &str = "upper";
pub const WRITABLE_WORK: &str = "work";
/// Largest frame either side accepts (kind byte + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Stream data is sent in chunks of at most this much.
pub const CHUNK: usize = 64 * 1024;

/// One process in a container: the command, or an exec beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries (for an exec, the host merges the container's
    /// and the exec's).
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as names or numbers, resolved against the container's
    /// own /etc/passwd and /etc/group (Docker's `-u`); empty means root.
    pub user: String,
    /// Supplementary groups beyond the user's own (Docker's `--group-add`),
    /// names resolved against the container's /etc/group, or numbers.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether the host will send standard input (otherwise it is /dev/null).
    pub stdin: bool,
    /// Run on a terminal of this size (a pty in the guest, Docker's `-t`):
    /// its output is one stream, sent as `Stdout`, and `Resize` changes the
    /// size. `None`: pipes.
    pub tty: Option<TerminalSize>,
    /// The capabilities the process keeps (`CAP_…` names); the agent drops
    /// the rest from its bounding set. Docker's default set when absent.
    #[serde(default = "capabilities::docker_default")]
    pub capabilities: Vec<String>,
    /// For an exec: a number the host picked, by which it takes the exec's
    /// connection back after the VM moved to a new VMM (`ResumeExec`);
    /// 0: the exec ends with its connection.
    #[serde(default)]
    pub session: u64,
    /// For an exec: the container of the VM it runs in, a joined one's ID
    /// (`Join`); empty: the VM's own container.
    #[serde(default)]
    pub container: String,
}

/// Host → agent: a second container in this VM, sharing its network
/// (Docker's `--network container:NAME`): a root of its own (its image's
/// disk, plugged into the VM while it runs, or the VM's own image; its
/// writes in a directory of the VM's writable disk), a PID namespace of its
/// own, the VM's network, hosts and DNS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The joined container's ID (lowercase hex): its directories in the
    /// guest, and what its execs name.
    pub id: String,
    /// The guest's device of its image's disk (`/dev/vdc`); `None`: the
    /// VM's own container's image.
    pub image_device: Option<String>,
    /// That disk's size in 512-byte sectors, as the guest must see it
    /// before it mounts the disk (a slot just emptied may still show the
    /// size of the disk that was there).
    #[serde(default)]
    pub image_sectors: u64,
    pub process: ProcessSpec,
    /// Under the small init (`--init`).
    #[serde(default)]
    pub init: bool,
}

/// Whether `id` can name a joined container: 1 to 64 lowercase hex digits
/// (it becomes part of paths in the guest).
pub fn valid_container_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A terminal's size in characters (0 × 0: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// What the host asks the agent to run, and the machine to run it on.
/// A process with no `argv` holds the container instead: its filesystems
/// are mounted and reached through `EXEC_PORT` until the host sends
/// `StdinEof` (or closes); then the agent reports `Exited` with status 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub process: ProcessSpec,
    pub hostname: String,
    /// The root filesystem's block device in the guest, e.g. `/dev/vda`.
    pub root_device: String,
    pub root_fstype: String,
    /// The container's own writable disk (ext4), the overlay's upper layer;
    /// `None` keeps the writes in guest memory.
    pub rw_device: Option<String>,
    /// The disks and their sizes: a clone waits until its kernel has seen
    /// each disk's new size before mounting.
    pub disks: Vec<DiskSize>,
    /// Volumes (further ext4 disks) and bind mounts (host directories
    /// shared through virtio-fs), mounted inside the container's root.
    pub mounts: Vec<MountSpec>,
    /// Random bytes from the host, mixed into the guest kernel's pool before
    /// the command runs (clones of one template must not share random state).
    pub entropy: Vec<u8>,
    /// The host's wall clock in nanoseconds since the epoch (0: leave it).
    pub wall_clock_ns: u64,
    /// The container's network identity. `None` (`--network none`): only
    /// `lo`, and the NICs stay down.
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// At most this many processes and threads in the container at once
    /// (Docker's `--pids-limit`); `None`: no limit.
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// The command shares the VM's PID namespace, beside the agent
    /// (Docker's `--pid host`); else it is PID 1 of a namespace of its own.
    #[serde(default)]
    pub pid_host: bool,
    /// A small init runs first (Docker's `--init`): it starts the command,
    /// forwards signals to it, reaps orphans and exits with its status.
    #[serde(default)]
    pub init: bool,
    /// The agent prints when each step of the start and of the end is
    /// done on the console (the host's `HULL_VMM_TRACE`).
    #[serde(default)]
    pub trace: bool,
    /// Nothing the guest writes outlives the command: the host throws the
    /// writable disk away then and there are no volumes or shared
    /// directories (`hull run`, `docker run --rm`), so the end needs no
    /// `sync`.
    #[serde(default)]
    pub disposable: bool,
}

/// A container root a standby VM mounts before its container is known
/// (`Control::Prepare`): an image's disk, a fresh writable disk, their
/// overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRoot {
    pub root_device: String,
    pub root_fstype: String,
    pub rw_device: String,
    /// The two disks' sizes, waited for as `RunSpec::disks` are.
    pub disks: Vec<DiskSize>,
    /// Where the next container's command is likely looked for (the last
    /// one's, by execvp's search): the first regular file found there in
    /// the image is read into the page cache, so its exec reads no disk.
    #[serde(default)]
    pub command_paths: Vec<String>,
}

/// How the guest's network is set up before the command starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// One per NIC the container uses, matched to a guest NIC by slot
    /// (`eth0` is slot 0): clones share their template's MAC, so the agent
    /// sets each NIC's own.
    pub interfaces: Vec<GuestInterface>,
    /// `/etc/hosts` lines beyond `localhost`: the container's own names
    /// and `--add-host` entries.
    pub hosts: Vec<HostEntry>,
    /// `/etc/resolv.conf`: nameserver addresses, search domains, options.
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub dns_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// The guest NIC's slot (0 = the first virtio-net device).
    pub slot: u8,
    /// `02:42:0a:58:00:02`.
    pub mac: String,
    /// CIDR addresses, e.g. `10.88.0.2/16`.
    pub addresses: Vec<String>,
    /// The default route's next hop through this NIC, if any.
    pub gateway: Option<String>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub address: String,
    pub names: Vec<String>,
}

/// The guest's CPU time and memory, as its kernel counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// CPU time spent working (not idle or waiting), all CPUs, in ns.
    pub cpu_busy_ns: u64,
    /// Of that, in user mode.
    pub cpu_user_ns: u64,
    /// CPU time of every kind, all CPUs, in ns (the denominator for a share).
    pub cpu_total_ns: u64,
    pub online_cpus: u32,
    pub memory_total: u64,
    pub memory_available: u64,
    /// The container's processes (the agent and kernel threads not counted).
    pub processes: u32,
    /// Bytes read from and written to the VM's disks (image, writable
    /// layer, volumes), as the guest kernel counts them.
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
}

/// One of the container's processes, for `docker top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// When it started, in seconds since the epoch (guest clock).
    pub started: u64,
    /// CPU time used so far, in ms.
    pub cpu_ms: u64,
    /// Its controlling terminal (`pts/0`), or empty.
    pub tty: String,
    pub command: String,
}

/// A file operation in a container's root; paths are absolute in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ArchiveOp {
    /// Describe `path` (JSON `PathStat` on standard output).
    Stat { path: String },
    /// A tar stream of `path` (a directory with its contents), named by
    /// its last component.
    Get { path: String },
    /// Unpack the tar stream on standard input into directory `path`.
    Put {
        path: String,
        no_overwrite_dir_non_dir: bool,
    },
    /// A tar stream of the whole root filesystem (`docker export`).
    Export,
}

/// Exit statuses of an archive operation.
pub const ARCHIVE_OK: i32 = 0;
pub const ARCHIVE_FAILED: i32 = 1;
pub const ARCHIVE_NOT_FOUND: i32 = 2;
pub const ARCHIVE_NOT_A_DIRECTORY: i32 = 3;

/// What `docker cp` learns of a path (Docker's `X-Docker-Container-Path-Stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStat {
    pub name: String,
    pub size: u64,
    /// Go's `os.FileMode` bits, as Docker sends them.
    pub mode: u32,
    /// RFC 3339.
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// One change to a container's filesystem against its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    /// Docker's kinds: 0 modified, 1 added, 2 deleted.
    pub kind: u8,
}

/// The most changes one `Changes` frame carries.
pub const MAX_CHANGES: usize = 2000;

/// The most processes one `Processes` answer lists (it must fit a frame).
pub const MAX_PROCESSES: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    /// An absolute path inside the container (created if missing).
    pub target: String,
    pub read_only: bool,
}

/// What a container mount is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSource {
    /// An ext4 disk (a volume), e.g. `/dev/vdc`.
    Disk { device: String },
    /// Host directory `index` of the VM's virtio-fs device (its `/index`);
    /// a shared volume's starts with what the container has at the mount
    /// point when it is empty.
    Share {
        index: u32,
        #[serde(default)]
        fill_if_empty: bool,
        /// One file shared (its directory with the rest hidden): its name
        /// in the share, bound on the target, which is a file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
}

/// The virtio-fs tag the agent mounts shared host directories from.
pub const SHARES_TAG: &str = "hull";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSize {
    pub device: String,
    /// In 512-byte sectors, as /sys/block/*/size counts.
    pub sectors: u64,
}

/// How a live migration may go: its downtime budget, how long it may
/// take before it is given up, and whether its data travels compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveLimits {
    pub downtime_ms: u32,
    pub max_seconds: u32,
    /// LZ4 on pages and disk data (the default): off for a link faster
    /// than LZ4 on one core (about 500 MB/s).
    pub compress: bool,
}

/// What a container's move to a new VMM took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub rounds: u32,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    pub total_ms: u64,
    /// From the source's pause to the guest running in the new VMM.
    pub downtime_ms: u64,
    /// The most the vCPUs were throttled to converge, in percent.
    pub max_throttle: u8,
    /// Output frames the agent no longer had when it came back (0: none lost).
    pub output_frames_lost: u64,
    /// The new VMM's process (0: the VM went to another host).
    pub vmm_pid: u32,
    /// Frames of the run connection the source's supervisor read: a VM
    /// gone to another host is answered there (`Resume`) from this one.
    #[serde(default)]
    pub output_frames: u64,
}

/// Where a migration's pre-copy stands after a round: what the source
/// sent, what the guest dirtied meanwhile, and the downtime a switch-over
/// now would take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    pub round: u32,
    /// What this round sent.
    pub pages_sent: u64,
    pub bytes_sent: u64,
    /// Pages written while it was sent: the next round's.
    pub dirty_pages: u64,
    /// Bytes a second the guest dirtied, and the link carried.
    pub dirty_rate: u64,
    pub bandwidth: u64,
    pub expected_downtime_ms: u64,
    /// How much the vCPUs are slowed (auto-converge), in percent.
    pub throttle: u8,
}

/// How far a run connection had got when it broke. Frames are counted
/// from the first after the host's `Run`, each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Frames the agent has produced (sent, or queued while the host was away).
    pub output_frames: u64,
    /// Frames the agent has read from the host.
    pub input_frames: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Agent → host, first: who is speaking. `resume` is set when the
    /// agent already runs a container and has lost its host connection
    /// (its VM moved to another VMM or host): the host answers `Resume`.
    Hello {
        version: u32,
        agent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumePoint>,
    },
    /// Host → agent, answering a `Hello` with `resume`: the host holds the
    /// run connection's first `output_frames` frames from the agent.
    Resume { output_frames: u64 },
    /// Agent → host, answering `Resume`: the frames that follow are the run
    /// connection's from number `from` on (frames the host lacks that the
    /// agent no longer keeps are lost: then `from` is above what it asked).
    Replay { from: u64 },
    /// Host → agent, before `Run` (a standby VM): mount this root's image
    /// and writable disks, their overlay and the kernel filesystems in it
    /// now, so that the `Run` that follows finds them mounted. Answered with `Prepared` or `Failed`.
    Prepare(Box<PreparedRoot>),
    /// Agent → host: the root `Prepare` named is mounted.
    Prepared,
    /// Host → agent, before `Run`: the prepared root is not the
    /// container's; unmount it (its disks are about to be taken out).
    /// Answered with `Released` or `Failed`.
    Release,
    /// Agent → host: nothing of the prepared root is mounted any more.
    Released,
    /// Host → agent: run this. After a `Prepare` (not released), the root
    /// mounted then is the container's.
    Run(Box<RunSpec>),
    /// Host → agent, first on an exec connection: run this process too.
    Exec(Box<ProcessSpec>),
    /// Host → agent, first on an exec connection: run a joined container
    /// (`JoinSpec`); its frames then go as an exec's do (`Started`, output,
    /// `Exited` or `Failed`), and its root is taken down when it ends.
    Join(Box<JoinSpec>),
    /// Host → agent, first on an exec connection: joined container `id`
    /// (`Join`) is removed, so its writes on the VM's writable disk go.
    /// Answered with `Exited` (code 0) or `Failed`.
    ForgetJoined { id: String },
    /// Host → agent, first on an exec connection: report CPU and memory.
    Stats,
    /// Agent → host: the answer to `Stats`.
    StatsReport(GuestStats),
    /// Host → agent, first on an exec connection: list the processes of
    /// `container` (a joined one's ID; empty: the VM's own container).
    Top {
        #[serde(default)]
        container: String,
    },
    /// Agent → host: the answer to `Top` (at most `MAX_PROCESSES`).
    Processes { processes: Vec<GuestProcess> },
    /// Host → agent, first on an exec connection: a file operation in the
    /// container's root (`docker cp`, `export`), run as a process: its
    /// output (a tar stream, or the stat as JSON) comes as `Stdout`, its
    /// input (a tar stream to unpack) goes as `Stdin`, its errors as
    /// `Stderr`, and its status (`ARCHIVE_*`) as `Exited`.
    Archive(ArchiveOp),
    /// Host → agent, first on an exec connection: what the container
    /// changed in its filesystem (`docker diff`).
    Diff,
    /// Host → agent, first on an exec connection: the container's writable
    /// layer as an image layer tar (`docker commit`) on standard output
    /// frames, then `Exited`; with `pause`, the container's processes are
    /// frozen while it is read.
    Layer { pause: bool },
    /// Host → agent, first on an exec connection: the container's networks
    /// changed while it runs (its VM's NICs were plugged or unplugged):
    /// set the guest's NICs, /etc/hosts and /etc/resolv.conf to this.
    /// Answered with `Exited` (code 0) or `Failed`.
    Network(GuestNetwork),
    /// Host → agent, first on an exec connection: the host changed these
    /// entries of the VM's shared directories (at most
    /// `host_changes::MAX_HOST_CHANGES`); raise their inotify events in the
    /// guest. Answered with `Exited` (code 0).
    SharesChanged { changes: Vec<host_changes::HostChange> },
    /// Agent → host: part of the answer to `Diff` (several may come, each
    /// at most `MAX_CHANGES` long), then `Exited`.
    Changes { changes: Vec<Change> },
    /// Agent → host: the command is running.
    Started { pid: u32 },
    /// Host → agent: deliver a signal to the command.
    Signal { signal: i32 },
    /// Host → agent: the terminal's new size (with `tty` only).
    Resize { rows: u16, cols: u16 },
    /// Agent → host: the command ended (exit code, or the signal that killed it).
    /// On the run connection it (like `Failed`) comes after every other guest
    /// process has ended and the guest's disks are synced: the host may end
    /// the VM on it.
    Exited { code: Option<i32>, signal: Option<i32> },
    /// Client → a container's supervisor (hull-shim): move the container's
    /// VM to a new VMM on this host while it runs (live migration), with
    /// this downtime budget and deadline. Answered with `Migrated` or
    /// `Failed` (the VM then runs on where it was). `away`: to another
    /// host, over the connection whose descriptor follows the frame
    /// (SCM_RIGHTS, with one byte), its disks sent with it; the supervisor
    /// ends once it has read what the VM said before it left.
    Migrate {
        downtime_ms: u32,
        max_seconds: u32,
        #[serde(default)]
        away: bool,
        /// Data travels as it is, without LZ4.
        #[serde(default)]
        uncompressed: bool,
    },
    /// Supervisor → client: the VM runs in its new VMM.
    Migrated(MigrationReport),
    /// Host → agent, first on an exec connection: the connection of the
    /// exec `session` broke as its VM moved; this one replaces it. The host
    /// has read `output_frames` of its frames. The agent answers `Hello`
    /// with its resume point (the host sends again the input the agent
    /// lacks), then `Replay` and the frames from there, or `Failed`.
    ResumeExec { session: u64, output_frames: u64 },
    /// Supervisor → the client that asked for a move, before `Migrated` or
    /// `Failed`: a pre-copy round has ended.
    MigrationProgress(MigrationProgress),
    /// Client → supervisor: give up the move under way (or asked for); the
    /// VM runs on where it is. Answered with `MigrationCancelled`.
    CancelMigration,
    /// Supervisor → client: whether there was a move to give up.
    MigrationCancelled { found: bool },
    /// Either way: the request cannot be carried out. `exit_code` follows the
    /// shell's convention (127: command not found, 126: not executable).
    Failed { message: String, exit_code: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Control(Control),
    Stdin(Vec<u8>),
    /// Host → agent: no more standard input.
    StdinEof,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

const KIND_CONTROL: u8 = 0;
const KIND_STDIN: u8 = 1;
const KIND_STDIN_EOF: u8 = 2;
const KIND_STDOUT: u8 = 3;
const KIND_STDERR: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed control message: {0}")]
    BadControl(#[from] serde_json::Error),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
}

/// Writes one frame. Payloads over `MAX_FRAME` are refused (split streams with `CHUNK`).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), ProtoError> {
    w.write_all(&encode_frame(frame)?)?;
    w.flush()?;
    Ok(())
}

/// One frame as it travels: length, kind and payload.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, ProtoError> {
    let (kind, payload): (u8, std::borrow::Cow<[u8]>) = match frame {
        Frame::Control(c) => (KIND_CONTROL, serde_json::to_vec(c)?.into()),
        Frame::Stdin(b) => (KIND_STDIN, b.as_slice().into()),
        Frame::StdinEof => (KIND_STDIN_EOF, (&[][..]).into()),
        Frame::Stdout(b) => (KIND_STDOUT, b.as_slice().into()),
        Frame::Stderr(b) => (KIND_STDERR, b.as_slice().into()),
    };
    let len = payload.len() + 1;
    if len > MAX_FRAME {
        return Err(ProtoError::Oversized(len));
    }
    let mut buf = Vec::with_capacity(len + 4);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&payload);
    Ok(buf)
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::Oversized(len));
    }
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let payload = body.split_off(1);
    Ok(Some(match body[0] {
        KIND_CONTROL => Frame::Control(serde_json::from_slice(&payload)?),
        KIND_STDIN => Frame::Stdin(payload),
        KIND_STDIN_EOF => Frame::StdinEof,
        KIND_STDOUT => Frame::Stdout(payload),
        KIND_STDERR => Frame::Stderr(payload),
        other => return Err(ProtoError::UnknownKind(other)),
    }))
}

/// The shell's exit status for a command's end: its code, or 128 + signal.
/// Both come from the guest: a code outside 0..=255 or a signal outside
/// Linux's 1..=64 is reported as 255, never added up into an overflow.
pub fn shell_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) if (0..=255).contains(&code) => code,
        (None, Some(signal)) if (1..=64).contains(&signal) => 128 + signal,
        _ => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &frame).unwrap();
        assert_eq!(read_frame(&mut buf.as_slice()).unwrap(), Some(frame));
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Control(Control::Hello {
            version: PROTOCOL_VERSION,
            agent: "x".into(),
            resume: None,
        }));
        round_trip(Frame::Control(Control::Hello {
            version: PROTOCOL_VERSION,
            agent: "x".into(),
            resume: Some(ResumePoint {
                output_frames: 7,
                input_frames: 2,
            }),
        }));
        round_trip(Frame::Control(Control::Resume { output_frames: 5 }));
        round_trip(Frame::Control(Control::Replay { from: 5 }));
        round_trip(Frame::Control(Control::Migrate {
            downtime_ms: 50,
            max_seconds: 300,
            away: true,
            uncompressed: true,
        }));
        round_trip(Frame::Control(Control::MigrationProgress(MigrationProgress {
            round: 2,
            expected_downtime_ms: 30,
            ..MigrationProgress::default()
        })));
        round_trip(Frame::Control(Control::CancelMigration));
        round_trip(Frame::Control(Control::ResumeExec {
            session: 9,
            output_frames: 3,
        }));
        round_trip(Frame::Control(Control::MigrationCancelled { found: true }));
        round_trip(Frame::Control(Control::Migrated(MigrationReport {
            rounds: 3,
            downtime_ms: 40,
            ..MigrationReport::default()
        })));
        let process = ProcessSpec {
            argv: vec!["sh".into(), "-c".into(), "echo 'hi'".into()],
            env: vec!["A=B".into()],
            cwd: "/".into(),
            user: "app:staff".into(),
            groups: vec!["audio".into(), "44".into()],
            stdin: true,
            tty: Some(TerminalSize { rows: 24, cols: 80 }),
            capabilities: capabilities::docker_default(),
            session: 0,
            container: String::new(),
        };
        round_trip(Frame::Control(Control::Run(Box::new(RunSpec {
            process: process.clone(),
            hostname: "h".into(),
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            rw_device: Some("/dev/vdb".into()),
            disks: vec![DiskSize {
                device: "/dev/vda".into(),
                sectors: 8,
            }],
            mounts: vec![
                MountSpec {
                    source: MountSource::Disk {
                        device: "/dev/vdc".into(),
                    },
                    target: "/data".into(),
                    read_only: true,
                },
                MountSpec {
                    source: MountSource::Share {
                        index: 1,
                        fill_if_empty: true,
                        file: None,
                    },
                    target: "/src".into(),
                    read_only: false,
                },
                MountSpec {
                    source: MountSource::Share {
                        index: 2,
                        fill_if_empty: false,
                        file: Some("app.conf".into()),
                    },
                    target: "/etc/app.conf".into(),
                    read_only: true,
                },
            ],
            entropy: vec![1, 2, 3],
            wall_clock_ns: 1,
            network: Some(GuestNetwork {
                interfaces: vec![GuestInterface {
                    slot: 0,
                    mac: "02:42:0a:58:00:02".into(),
                    addresses: vec!["10.88.0.2/16".into()],
                    gateway: Some("10.88.0.1".into()),
                    mtu: 1500,
                }],
                hosts: vec![HostEntry {
                    address: "10.88.0.2".into(),
                    names: vec!["web".into()],
                }],
                nameservers: vec!["10.88.0.1".into()],
                search: Vec::new(),
                dns_options: Vec::new(),
            }),
            pids_limit: Some(64),
            pid_host: true,
            init: true,
            trace: true,
            disposable: true,
        }))));
        round_trip(Frame::Control(Control::Prepare(Box::new(PreparedRoot {
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            rw_device: "/dev/vdb".into(),
            disks: vec![DiskSize {
                device: "/dev/vdb".into(),
                sectors: 16,
            }],
            command_paths: vec!["/bin/sh".into()],
        }))));
        for control in [Control::Prepared, Control::Release, Control::Released] {
            round_trip(Frame::Control(control));
        }
        round_trip(Frame::Control(Control::Exec(Box::new(process))));
        round_trip(Frame::Control(Control::Resize { rows: 40, cols: 100 }));
        round_trip(Frame::Control(Control::Archive(ArchiveOp::Put {
            path: "/tmp".into(),
            no_overwrite_dir_non_dir: true,
        })));
        round_trip(Frame::Control(Control::Changes {
            changes: vec![Change {
                path: "/etc".into(),
                kind: 0,
            }],
        }));
        round_trip(Frame::Control(Control::StatsReport(GuestStats {
            cpu_busy_ns: 5,
            online_cpus: 1,
            ..GuestStats::default()
        })));
        round_trip(Frame::Control(Control::Processes {
            processes: vec![GuestProcess {
                pid: 7,
                ppid: 1,
                uid: 0,
                started: 1,
                cpu_ms: 2,
                tty: "pts/0".into(),
                command: "sh -c x".into(),
            }],
        }));
        round_trip(Frame::Control(Control::Exited {
            code: None,
            signal: Some(9),
        }));
        round_trip(Frame::Stdout(vec![0, 1, 2, 255]));
        round_trip(Frame::Stderr(Vec::new()));
        round_trip(Frame::Stdin(b"in".to_vec()));
        round_trip(Frame::StdinEof);
    }

    #[test]
    fn hostile_frames_are_errors() {
        let frame = |bytes: &[u8]| read_frame(&mut &bytes[..]);
        assert!(matches!(frame(&u32::MAX.to_le_bytes()), Err(ProtoError::Oversized(_))));
        assert!(matches!(frame(&0u32.to_le_bytes()), Err(ProtoError::Empty)));
        assert!(matches!(frame(&[2, 0, 0, 0, 9, 0]), Err(ProtoError::UnknownKind(9))));
        assert!(matches!(
            frame(&[3, 0, 0, 0, 0, b'{', b'x']),
            Err(ProtoError::BadControl(_))
        ));
        assert!(
            matches!(frame(&[9, 0, 0, 0, 3, 1]), Err(ProtoError::Io(_))),
            "truncated"
        );
        assert!(matches!(frame(&[]), Ok(None)));
        let mut big = Vec::new();
        assert!(matches!(
            write_frame(&mut big, &Frame::Stdout(vec![0; MAX_FRAME])),
            Err(ProtoError::Oversized(_))
        ));
    }

    #[test]
    fn joined_container_ids_are_hex_only() {
        assert!(valid_container_id("0123456789abcdef"));
        assert!(valid_container_id(&"a".repeat(64)));
        for bad in ["", "../x", "ABC", "a/b", "a b", &"a".repeat(65)] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn statuses_follow_the_shell() {
        assert_eq!(shell_status(Some(42), None), 42);
        assert_eq!(shell_status(None, Some(9)), 137);
        // Numbers from a hostile guest: no overflow, no panic.
        assert_eq!(shell_status(None, Some(200)), 255);
        assert_eq!(shell_status(None, Some(i32::MAX)), 255);
        assert_eq!(shell_status(None, Some(i32::MIN)), 255);
        assert_eq!(shell_status(Some(-1), None), 255);
        assert_eq!(shell_status(Some(i32::MAX), Some(9)), 255);
    }
}
