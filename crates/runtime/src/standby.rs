//! Standby VMs: a clone of the template restored, jailed and with its
//! agent up before any container asks for one (as Kata's VM cache keeps
//! VMs ready), so that `docker start` and `run -d` wait for the container's
//! own set-up only, not for a VM to start.
//!
//! hulld keeps `enable`'s number of them per VM shape it has started
//! containers of (`keep_warm`), for the last `MAX_SHAPES` shapes. Each is
//! a `hull-shim --standby NAME MEMORY CPUS` (`serve`): it starts its VM
//! with every disk slot empty and every NIC on nothing, says `STANDING` on
//! its report pipe, and waits on standard input, a pipe hulld holds, for a
//! container's ID. Its end without one (hulld gone) ends it. Given an ID
//! (`claim`), it becomes that container's supervisor
//! (`shim::supervise_warm`): the container's disks are plugged in for
//! good, its taps into its NICs, and the agent runs its command. A
//! container the standby cannot serve (volumes, bind mounts, another
//! shape, a template remade meanwhile) starts a VM of its own.
//!
//! A standby started for an image (the image the last container of its
//! shape started from: `hull-shim --standby NAME MEMORY CPUS IMAGE_DISK
//! [COMMAND_PATH...]`) also has its root ready: that image's disk and a
//! fresh writable disk plugged in and mounted under their overlay by the
//! agent (`Control::Prepare`), with the program that container ran (the
//! first of the paths it was looked for under) read into the guest's page
//! cache. A new container of that image takes the whole
//! root, its writable disk included, and its start is left with the
//! kernel filesystems, the network and the command's spawn. Any other
//! container (another image, a restart with its own writable disk) has
//! the agent unmount the prepared root (`Control::Release`) and its own
//! disks plugged in instead.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use proto::vmm_control::{VmmReply, VmmRequest};
use proto::{Control, Frame};

use crate::container::{ContainerDir, Heard, Report, Starting};
use crate::run::{RunError, Shape, VmFiles, Vmm};

/// The byte a standby writes on its report pipe once its VM is ready.
pub(crate) const STANDING: u8 = b'W';

/// The file in a standby's directory (`DATA/standby/NAME/`) while it
/// stands ready.
pub const STANDING_MARKER: &str = "standing";

/// A standby's VM, running; its agent's hello not yet read unless its
/// root was prepared.
pub struct WarmVm {
    pub(crate) vmm: Vmm,
    pub(crate) conn: UnixStream,
    /// The template it is a clone of.
    pub(crate) template: crate::template::Template,
    pub(crate) memory_mib: u64,
    pub(crate) cpus: u8,
    pub(crate) prepared: Option<PreparedRoot>,
}

/// A standby's root, mounted in its VM before its container was known.
pub(crate) struct PreparedRoot {
    /// The image disk's file, as (device, inode): a container's must be
    /// that very file.
    image: (u64, u64),
    /// The fresh writable disk under the overlay, in the claiming
    /// container's directory under a name of its own until a container
    /// takes it (`adopt_root`).
    writable: PathBuf,
}

/// The standby's writable disk, in the container's directory once claimed.
const PREPARED_WRITABLE: &str = "standby-rw.ext4";

impl Drop for PreparedRoot {
    /// Its writable disk's own name goes with it, whatever became of the
    /// VM (a container that took the root holds the disk as `rw.ext4`).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.writable);
    }
}

/// Identifies a file across renames: (device, inode).
fn file_identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

/// A standby VMM's control channel, at `path`.
fn control_channel(path: &Path) -> Result<UnixStream, RunError> {
    let control =
        UnixStream::connect(path).map_err(|e| RunError::Standby(format!("its VMM's control channel: {e}")))?;
    let _ = control.set_read_timeout(Some(Duration::from_secs(15)));
    Ok(control)
}

/// The VMM's answer to `request` (with the descriptor `fd`), as a standby's error.
fn ask_vmm(control: &UnixStream, request: VmmRequest, fd: Option<&File>) -> Result<(), RunError> {
    let failed = |what: String| RunError::Standby(what);
    match vmm::control::ask(control, &request, fd) {
        Ok(VmmReply::Done) => Ok(()),
        Ok(VmmReply::Failed { reason }) => Err(failed(format!("{request:?}: {reason}"))),
        Ok(other) => Err(failed(format!("{request:?}: unexpected reply {other:?}"))),
        Err(e) => Err(failed(format!("{request:?}: {e}"))),
    }
}

fn open_disk(path: &Path, write: bool) -> Result<File, RunError> {
    File::options()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| RunError::Standby(format!("{}: {e}", path.display())))
}

/// How long a standby's agent may take to answer before its container's
/// `Run`.
const AGENT_PATIENCE: Duration = Duration::from_secs(30);

/// One exchange with the agent before its container's `Run`: `request`
/// sent, `reply` awaited (at most `AGENT_PATIENCE`).
fn ask_agent(conn: &UnixStream, request: Control, reply: &Control) -> Result<(), String> {
    let mut writer = conn;
    proto::write_frame(&mut writer, &Frame::Control(request.clone())).map_err(|e| format!("{request:?}: {e}"))?;
    let _ = conn.set_read_timeout(Some(AGENT_PATIENCE));
    let mut reader = conn;
    let heard = proto::read_frame(&mut reader);
    let _ = conn.set_read_timeout(None);
    match heard {
        Ok(Some(Frame::Control(heard))) if heard == *reply => Ok(()),
        Ok(Some(Frame::Control(Control::Failed { message, .. }))) => Err(format!("the agent: {message}")),
        Ok(other) => Err(format!("{request:?}: the agent answered {other:?}")),
        Err(e) => Err(format!("{request:?}: {e}")),
    }
}

impl WarmVm {
    /// Whether it can be `request`'s VM, a clone of `template`: no
    /// directories to share (its virtio-fs was started sharing none), no
    /// volumes, the same shape.
    pub(crate) fn fits(&self, request: &crate::run::RunRequest, template: Option<&Path>) -> bool {
        template == Some(self.template.dir.as_path())
            && request.memory_mib == self.memory_mib
            && request.cpus == self.cpus
            && request.volumes.is_empty()
            && request.binds.is_empty()
            && !request.hold
            && !request.cold_boot
    }

    /// Whether its prepared root can be the root of a new container whose
    /// image disk is `disk` and whose writable disk, not made yet, would be
    /// `writable`: then the standby's writable disk is put there.
    pub(crate) fn adopt_root(&self, disk: &Path, writable: &Path) -> bool {
        let Some(prepared) = &self.prepared else {
            return false;
        };
        // A link, not a rename: a writable disk there already (a restart's)
        // is never replaced.
        std::fs::metadata(disk).is_ok_and(|m| file_identity(&m) == prepared.image)
            && std::fs::hard_link(&prepared.writable, writable).is_ok()
    }

    /// Gives the VM the container's disks and taps (`files`) and its CPU
    /// limit (`shape`): its prepared root kept if it is the container's
    /// (`adopted`), else given back. The VMM, the agent's connection, and
    /// whether its hello was read already.
    pub(crate) fn take_over(
        self,
        files: &VmFiles,
        shape: Shape,
        adopted: bool,
    ) -> Result<(Vmm, UnixStream, bool), RunError> {
        let failed = |what: String| RunError::Standby(what);
        let control = control_channel(files.control)?;
        let greeted = self.prepared.is_some();
        if adopted {
            for slot in [0, 1] {
                ask_vmm(&control, VmmRequest::KeepDisk { slot }, None)?;
            }
        } else {
            if greeted {
                ask_agent(&self.conn, Control::Release, &Control::Released).map_err(failed)?;
                for slot in [0, 1] {
                    ask_vmm(&control, VmmRequest::UnplugDisk { slot }, None)?;
                }
            }
            // The image read-only, as the VM would have started with it.
            let image = open_disk(files.disk, false)?;
            ask_vmm(&control, VmmRequest::PlugDisk { slot: 0, lasting: true }, Some(&image))?;
            let writable = open_disk(files.writable, true)?;
            ask_vmm(
                &control,
                VmmRequest::PlugDisk { slot: 1, lasting: true },
                Some(&writable),
            )?;
        }
        for (slot, tap) in &files.taps {
            ask_vmm(&control, VmmRequest::PlugNic { slot: *slot }, Some(tap))?;
        }
        if shape.cpu_limit_millis.is_some() {
            let cgroup = self
                .vmm
                .process
                .cgroup()
                .ok_or_else(|| failed("its VMM has no cgroup for the CPU limit".into()))?;
            std::fs::write(cgroup.join("cpu.max"), vmm::jail::cpu_max(shape.cpu_limit_millis))
                .map_err(|e| failed(format!("setting its CPU limit: {e}")))?;
        }
        Ok((self.vmm, self.conn, greeted))
    }
}

/// The standby supervisor's standard error, in its files directory.
const SUPERVISOR_ERRORS: &str = "shim.err";

/// A standby's niceness until it is claimed (the lowest priority).
const BACKGROUND_NICENESS: i32 = 19;

/// A standby VMM's `cpu.weight` until it is claimed (the least), and any
/// VM's (the kernel's default). Niceness ranks threads within a cgroup
/// only; each VMM has a cgroup of its own, weighed against the others'.
const BACKGROUND_CPU_WEIGHT: u32 = 1;
const FOREGROUND_CPU_WEIGHT: u32 = 100;

/// Best effort: a kernel without the cpu controller leaves it at niceness.
fn set_cpu_weight(cgroup: &Path, weight: u32) {
    let _ = std::fs::write(cgroup.join("cpu.weight"), weight.to_string());
}

/// Sets the niceness of every thread of process `pid`.
fn set_niceness(pid: u32, niceness: i32) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok());
    for thread in threads {
        // SAFETY: setpriority on a thread ID; an ended thread only fails.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, niceness) };
    }
}

/// Where standby `name` keeps its files (its console, its empty disks).
fn files_dir(name: &str) -> PathBuf {
    crate::data_dir().join("standby").join(name)
}

/// Standby `name`'s socket directory, the root its VMM is jailed in;
/// renamed to the container's socket directory when claimed.
fn sockets_dir(name: &str) -> PathBuf {
    crate::run_dir().join("standby").join(name)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `hull-shim --standby NAME MEMORY CPUS [IMAGE_DISK [COMMAND_PATH...]]`:
/// starts a standby VM (its root prepared as `root` says), waits to be
/// claimed, then supervises the container it was given to its end.
pub fn serve(name: &str, memory_mib: u64, cpus: u8, root: Option<&RootPlan>) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!("'{name}' is no standby name"));
    }
    let files = files_dir(name);
    let sockets = sockets_dir(name);
    let result = stand_by(&files, &sockets, memory_mib, cpus, root);
    match result {
        Ok(Some((dir, warm))) => {
            let _ = std::fs::remove_dir_all(&files);
            vmm::trace::mark("standby: its own files removed");
            crate::shim::supervise_warm(&dir, warm)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        // Unclaimed, hulld gone: nothing of it stays.
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&files);
            let _ = std::fs::remove_dir_all(&sockets);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&sockets);
            match files.join(SUPERVISOR_ERRORS).exists() {
                // Unclaimed: its files (the error it ends with, its
                // console) stay for hulld, which reports and removes them.
                true => {
                    let _ = std::fs::remove_file(files.join(STANDING_MARKER));
                }
                // Claimed (its error log is the container's now): hulld
                // hears of it as the container's start failing.
                false => {
                    let _ = std::fs::remove_dir_all(&files);
                }
            }
            Err(e)
        }
    }
}

/// Starts the VM and waits for a claim: the container, its VM, or `None`
/// when hulld went away first.
fn stand_by(
    files: &Path,
    sockets: &Path,
    memory_mib: u64,
    cpus: u8,
    root: Option<&RootPlan>,
) -> Result<Option<(ContainerDir, WarmVm)>, String> {
    let text = |e: RunError| e.to_string();
    let template = crate::template::existing(memory_mib, cpus)
        .ok_or_else(|| format!("no template of {memory_mib} MiB and {cpus} vCPUs to clone"))?;
    let guest = crate::guest::Guest::current().map_err(|e| e.to_string())?;
    let binary = crate::sibling_binary("hull-vmm").ok_or("hull-vmm not found beside hull-shim")?;
    // hulld made `files` (it holds this supervisor's errors); the
    // sockets are this VM's alone.
    let _ = std::fs::remove_dir_all(sockets);
    for dir in [files, sockets] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // Its own empty disks, which the container's take the place of.
    let image_slot = files.join("image-slot");
    let writable_slot = files.join("writable-slot");
    for slot in [&image_slot, &writable_slot] {
        File::create(slot).map_err(|e| format!("{}: {e}", slot.display()))?;
    }
    // A prepared root's writable disk, beside its slot's empty file.
    let prepared_writable = files.join("writable");
    let volumes = crate::volume::slot_disks(&[]).map_err(|e| e.to_string())?;
    let uds = sockets.join("vsock.sock");
    let control = sockets.join(crate::run::VMM_CONTROL_SOCKET);
    let console_log = files.join("console.log");
    let listener = crate::run::agent_listener(&uds, true).map_err(text)?;
    let vm = VmFiles {
        binary: &binary,
        guest: &guest,
        disk: &image_slot,
        writable: &writable_slot,
        volumes: &volumes,
        shares: &[],
        uds: &uds,
        control: &control,
        console_log: &console_log,
        taps: Vec::new(),
        jailed: true,
    };
    let shape = Shape {
        memory_mib,
        cpus,
        cpu_limit_millis: None,
    };
    let mut vmm = vm.start(shape, Some(&template)).map_err(text)?;
    if let Some(cgroup) = vmm.process.cgroup() {
        set_cpu_weight(cgroup, BACKGROUND_CPU_WEIGHT);
    }
    let conn =
        crate::run::wait_for_agent(&listener.0, &mut vmm, crate::shim::boot_timeout(), &console_log).map_err(text)?;
    drop(listener);
    let mut prepared = match root {
        Some(root) => Some(prepare_root(&control, &conn, root, &prepared_writable)?),
        None => None,
    };
    // SAFETY: a one-byte write from a valid buffer to fd 1 (the report pipe).
    unsafe { libc::write(libc::STDOUT_FILENO, [STANDING].as_ptr().cast(), 1) };
    // For those who watch the host (tests, benchmarks): it stands ready.
    let _ = File::create(files.join(STANDING_MARKER));
    let mut line = String::new();
    let read = read_claim(std::io::stdin().lock(), &mut line);
    if read == 0 {
        return Ok(None);
    }
    vmm::trace::mark("standby: claimed");
    // The container's VM now: as any other's (before its root is given
    // back and its disks plugged, which its guest must do at full speed).
    for pid in [std::process::id(), vmm.process.id()] {
        set_niceness(pid, 0);
    }
    if let Some(cgroup) = vmm.process.cgroup() {
        set_cpu_weight(cgroup, FOREGROUND_CPU_WEIGHT);
    }
    vmm::trace::mark("standby: at full speed");
    let id = line.trim();
    if !proto::valid_container_id(id) {
        return Err(format!("claimed for '{id}', which is no container ID"));
    }
    let dir = ContainerDir::new(id);
    // The container's from now on: the supervisor's errors (first, so that
    // what fails next is told to hulld as the container's), its console,
    // and the VM's sockets, under the container's names.
    let moved = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))
    };
    let errors = files.join(SUPERVISOR_ERRORS);
    if errors.exists() {
        moved(&errors, &dir.supervisor_errors())?;
    }
    vmm.console
        .move_to(&dir.path.join("console.log"))
        .map_err(|e| format!("moving the console log: {e}"))?;
    let _ = std::fs::remove_dir_all(dir.socket_dir());
    if let Some(parent) = dir.socket_dir().parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    moved(sockets, &dir.socket_dir())?;
    if let Some(prepared) = &mut prepared {
        let writable = dir.path.join(PREPARED_WRITABLE);
        moved(&prepared.writable, &writable)?;
        prepared.writable = writable;
    }
    vmm::trace::mark("standby: its files the container's");
    let warm = WarmVm {
        vmm,
        conn,
        template,
        memory_mib,
        cpus,
        prepared,
    };
    Ok(Some((dir, warm)))
}

/// Has the agent of a standby's VM, just up (its hello unread), mount
/// `root`'s image and the fresh writable disk `writable` (its slots' disks
/// now) under their overlay, and read its command ahead.
fn prepare_root(control: &Path, conn: &UnixStream, root: &RootPlan, writable: &Path) -> Result<PreparedRoot, String> {
    let text = |e: RunError| e.to_string();
    let image = &root.image;
    crate::writable::create(writable, crate::writable::DiskKind::Layer).map_err(|e| e.to_string())?;
    let control = control_channel(control).map_err(text)?;
    let image_file = open_disk(image, false).map_err(text)?;
    let identity = file_identity(&image_file.metadata().map_err(|e| format!("{}: {e}", image.display()))?);
    let mut disks = Vec::new();
    for (slot, file) in [(0u8, image_file), (1, open_disk(writable, true).map_err(text)?)] {
        let bytes = file.metadata().map_err(|e| e.to_string())?.len();
        ask_vmm(&control, VmmRequest::PlugDisk { slot, lasting: false }, Some(&file)).map_err(text)?;
        disks.push(proto::DiskSize {
            device: crate::run::guest_disk(slot),
            sectors: bytes / 512,
        });
    }
    let _ = conn.set_read_timeout(Some(AGENT_PATIENCE));
    let hello = crate::run::await_hello(conn);
    let _ = conn.set_read_timeout(None);
    hello.map_err(text)?;
    let root = proto::PreparedRoot {
        root_device: crate::run::guest_disk(0),
        root_fstype: "ext4".into(),
        rw_device: crate::run::guest_disk(1),
        disks,
        command_paths: root.command_paths.clone(),
    };
    ask_agent(conn, Control::Prepare(Box::new(root)), &Control::Prepared)?;
    vmm::trace::mark("standby: root prepared");
    Ok(PreparedRoot {
        image: identity,
        writable: writable.to_path_buf(),
    })
}

/// Reads one line (at most 256 bytes) of `input` into `line`; 0 at the
/// end of input.
fn read_claim(input: impl BufRead, line: &mut String) -> usize {
    std::io::Read::take(input, 256).read_line(line).unwrap_or(0)
}

/// One standby, as hulld holds it.
struct Standby {
    name: String,
    memory_mib: u64,
    cpus: u8,
    /// The template it was started to clone; one remade since ends it.
    template: PathBuf,
    /// The image disk its root was prepared from.
    image: Option<PathBuf>,
    child: Child,
    /// Its claim channel, and its life: closing it ends an unclaimed standby.
    claim: ChildStdin,
    report: Report,
    standing: bool,
}

impl Standby {
    fn spawn(
        name: String,
        memory_mib: u64,
        cpus: u8,
        template: PathBuf,
        root: Option<RootPlan>,
    ) -> Result<Standby, String> {
        let files = files_dir(&name);
        std::fs::create_dir_all(&files).map_err(|e| format!("creating {}: {e}", files.display()))?;
        let errors =
            File::create(files.join(SUPERVISOR_ERRORS)).map_err(|e| format!("the standby's error log: {e}"))?;
        let mut command = crate::container::shim_command()?;
        command
            .arg("--standby")
            .arg(&name)
            .arg(memory_mib.to_string())
            .arg(cpus.to_string())
            .args(root.iter().flat_map(RootPlan::args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors);
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting a standby hull-shim: {e}"))?;
        let (Some(claim), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no pipes to the standby".into());
        };
        Ok(Standby {
            name,
            memory_mib,
            cpus,
            template,
            image: root.map(|r| r.image),
            child,
            claim,
            report: Report::new(stdout),
            standing: false,
        })
    }

    /// Whether its VM is ready (and it still runs).
    fn standing(&mut self) -> bool {
        if !self.standing {
            self.standing = self.report.read(Duration::ZERO) == Heard::Standing;
        }
        self.standing && matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether it still runs. One that ended unclaimed is reaped here,
    /// and what it said before it ended goes to hulld's log.
    fn alive(&mut self) -> bool {
        let status = match self.child.try_wait() {
            Ok(None) => return true,
            Ok(Some(status)) => status.to_string(),
            Err(e) => e.to_string(),
        };
        let files = files_dir(&self.name);
        let said = std::fs::read(files.join(SUPERVISOR_ERRORS)).unwrap_or_default();
        let said = String::from_utf8_lossy(&said[said.len().saturating_sub(2000)..]).into_owned();
        eprintln!(
            "hulld: standby VM {} ({} MiB, {} vCPUs) ended unclaimed ({status}): {}",
            self.name,
            self.memory_mib,
            self.cpus,
            said.trim()
        );
        let _ = std::fs::remove_dir_all(files);
        let _ = std::fs::remove_dir_all(sockets_dir(&self.name));
        false
    }

    fn shape(&self) -> (u64, u8) {
        (self.memory_mib, self.cpus)
    }

    /// Ends it unclaimed: its claim channel closes (it removes its own
    /// files then), and it is reaped apart.
    fn end(self) {
        let Standby { child, claim, .. } = self;
        drop(claim);
        reap_apart(child);
    }
}

/// Ends (unclaimed) the standbys for which `leaving` holds.
fn end_where(standbys: &mut Vec<Standby>, leaving: impl Fn(&Standby) -> bool) {
    let (ended, kept): (Vec<_>, Vec<_>) = std::mem::take(standbys).into_iter().partition(|s| leaving(s));
    *standbys = kept;
    ended.into_iter().for_each(Standby::end);
}

/// Waits for `child` to end on a thread of its own (no zombie is left).
fn reap_apart(mut child: Child) {
    std::thread::spawn(move || child.wait());
}

/// The most shapes (memory, vCPUs) with standbys at once: each costs idle
/// VMs, so the shape started longest ago gives its standbys up.
const MAX_SHAPES: usize = 4;

struct Pool {
    per_shape: usize,
    standbys: Vec<Standby>,
    next: u64,
    /// The shapes kept warm, the one started last at the end.
    shapes: Vec<(u64, u8)>,
    /// The image disk the last container of each shape started from, and
    /// where its command was found: the next standbys of that shape have
    /// their roots prepared from it.
    roots: Vec<((u64, u8), RootPlan)>,
    /// A shape for each standby being started (`keep_warm`), not in
    /// `standbys` yet.
    starting: Vec<(u64, u8)>,
}

/// Marks `shape` as started last in `shapes`; the shape that no longer
/// fits under `MAX_SHAPES`, if one does not.
fn touch(shapes: &mut Vec<(u64, u8)>, shape: (u64, u8)) -> Option<(u64, u8)> {
    shapes.retain(|s| *s != shape);
    shapes.push(shape);
    (shapes.len() > MAX_SHAPES).then(|| shapes.remove(0))
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Keeps `per_shape` standby VMs for each shape containers start with
/// (hulld; 0: none). Only jailed VMMs stand by: a VMM not jailed names its
/// sockets by their paths, which a claim renames. Leftovers of an earlier
/// hulld are removed.
pub fn enable(per_shape: usize) {
    let per_shape = if crate::run::jailing() { per_shape } else { 0 };
    for root in [crate::data_dir().join("standby"), crate::run_dir().join("standby")] {
        let _ = std::fs::remove_dir_all(root);
    }
    if let Ok(mut pool) = POOL.lock() {
        *pool = (per_shape > 0).then(|| Pool {
            per_shape,
            standbys: Vec::new(),
            next: 0,
            shapes: Vec::new(),
            roots: Vec::new(),
            starting: Vec::new(),
        });
    }
}

/// Whether hulld keeps standby VMs (`enable` was given a number, and
/// VMMs are jailed).
pub fn enabled() -> bool {
    POOL.lock().is_ok_and(|pool| pool.is_some())
}

/// Tops the standbys of this shape up to the number `enable` asked for,
/// if its template is made (a first run makes it); those it starts have
/// their roots prepared as `root` says, from what a container of this
/// shape just started with (`None`: the last one given).
pub fn keep_warm(memory_mib: u64, cpus: u8, root: Option<RootPlan>) {
    // Nothing at the lowest priority for a pool there is not: a hulld not
    // root could not give its thread its priority back.
    if !enabled() {
        return;
    }
    let shape = (memory_mib, cpus);
    // What needs no lock is done at the lowest priority too: the start
    // that called for it is still being answered.
    let template = at_lowest_priority(|| crate::template::existing(memory_mib, cpus));
    // Decided under the pool's lock (at the caller's priority); started
    // without it, so that no claim waits while a standby's supervisor is
    // spawned at the lowest priority.
    let Some((names, template, root)) = plan(shape, template, root) else {
        return;
    };
    let planned = names.len();
    let started: Vec<Standby> = at_lowest_priority(|| {
        let mut started = Vec::new();
        for name in names {
            // An idle VM never takes the memory a container's would need.
            let available = crate::run::host_available_mib();
            if available < crate::run::MIN_HOST_AVAILABLE_MIB + memory_mib {
                eprintln!("hulld: no standby VM of {memory_mib} MiB: the host has {available} MiB available");
                break;
            }
            match Standby::spawn(name, memory_mib, cpus, template.dir.clone(), root.clone()) {
                Ok(standby) => started.push(standby),
                Err(e) => {
                    eprintln!("hulld: no standby VM: {e}");
                    break;
                }
            }
        }
        started
    });
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_mut() {
        Some(pool) => {
            for _ in 0..planned {
                if let Some(i) = pool.starting.iter().position(|s| *s == shape) {
                    pool.starting.swap_remove(i);
                }
            }
            pool.standbys.extend(started);
        }
        // Standbys were turned off meanwhile.
        None => started.into_iter().for_each(Standby::end),
    }
}

/// The pool's bookkeeping for `keep_warm`: the names of the standbys of
/// `shape` to start (counted as starting from now on), the template they
/// clone and the root they prepare; `None` when there is nothing to start.
fn plan(
    shape: (u64, u8),
    template: Option<crate::template::Template>,
    root: Option<RootPlan>,
) -> Option<(Vec<String>, crate::template::Template, Option<RootPlan>)> {
    let mut guard = POOL.lock().ok()?;
    let pool = guard.as_mut()?;
    pool.standbys.retain_mut(Standby::alive);
    if let Some(oldest) = touch(&mut pool.shapes, shape) {
        end_where(&mut pool.standbys, |s| s.shape() == oldest);
        pool.roots.retain(|(s, _)| *s != oldest);
    }
    if let Some(root) = root {
        pool.roots.retain(|(s, _)| *s != shape);
        pool.roots.push((shape, root));
    }
    // An image removed since has no disk to prepare a root from.
    pool.roots.retain(|(_, root)| root.image.is_file());
    let root = pool.roots.iter().find(|(s, _)| *s == shape).map(|(_, r)| r.clone());
    // Once the shape's image is known, standbys started before (with no
    // root prepared: hulld's own start) give way to ones prepared from it.
    if root.is_some() {
        end_where(&mut pool.standbys, |s| s.shape() == shape && s.image.is_none());
    }
    let template = template?;
    // Those of a template remade since (a new hull-vmm, kernel or agent)
    // would serve no container.
    end_where(&mut pool.standbys, |s| s.shape() == shape && s.template != template.dir);
    let have = pool.standbys.iter().filter(|s| s.shape() == shape).count()
        + pool.starting.iter().filter(|s| **s == shape).count();
    let mut names = Vec::new();
    for _ in have..pool.per_shape {
        pool.next += 1;
        names.push(format!("{}-{}", std::process::id(), pool.next));
        pool.starting.push(shape);
    }
    (!names.is_empty()).then_some((names, template, root))
}

/// Runs `work` on this thread at niceness `BACKGROUND_NICENESS`, then puts
/// its niceness back. What it spawns inherits the niceness: a standby's
/// supervisor is in the background from its exec on, without hulld
/// forking itself to set it in the child.
pub(crate) fn at_lowest_priority<T>(work: impl FnOnce() -> T) -> T {
    // SAFETY: gettid and get/setpriority on this thread only.
    let thread = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: as above; errno is cleared first, as getpriority(2) asks.
    let before = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, thread)
    };
    // SAFETY: as above.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICENESS) };
    let result = work();
    // SAFETY: as above (hulld runs as root: it may raise it back).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, before) } != 0 {
        eprintln!(
            "hulld: a thread's niceness back to {before}: {}",
            std::io::Error::last_os_error()
        );
    }
    result
}

/// Hands `dir`'s container to a standby VM of its shape that is ready, if
/// there is one and the container can use it: its supervisor, starting. A
/// new container takes one whose root was prepared from its image first.
pub(crate) fn claim(dir: &ContainerDir, spec: &crate::container::ContainerSpec) -> Option<Starting> {
    if !spec.volumes.is_empty() || !spec.binds.is_empty() || spec.cold_boot || spec.joins.is_some() {
        return None;
    }
    let image = match dir.writable_disk().exists() {
        true => None,
        false => image_disk(spec),
    };
    let mut guard = POOL.lock().ok()?;
    let pool = guard.as_mut()?;
    let (index, _) = pool
        .standbys
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| {
            let ready = s.shape() == (spec.memory_mib, spec.cpus) && s.standing();
            ready.then_some((i, s))
        })
        .min_by_key(|(_, s)| image.is_none() || s.image != image)?;
    let Standby {
        child,
        mut claim,
        report,
        ..
    } = pool.standbys.swap_remove(index);
    drop(guard);
    // What a standby that fails before it supervises says is read from
    // here: not what the container's last supervisor said.
    if File::create(dir.supervisor_errors()).is_err() || writeln!(claim, "{}", dir.id).is_err() {
        drop(claim);
        reap_apart(child);
        return None;
    }
    vmm::trace::mark("start: a standby claimed");
    // Held until the command runs, as an arrival's lifeline is.
    Some(Starting::new(dir.clone(), Some(claim), child, report))
}

/// The built disk of `spec`'s image, if it has one.
pub(crate) fn image_disk(spec: &crate::container::ContainerSpec) -> Option<PathBuf> {
    let store = image::Store::open(&crate::data_dir()).ok()?;
    let record = store.image(spec.image.as_ref()?).ok()?;
    image::disk::built_image_disk(&store, &record)
}

/// How a standby's root is prepared: from an image's disk, with the
/// program found first under `command_paths` read ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct RootPlan {
    pub image: PathBuf,
    pub command_paths: Vec<String>,
}

/// At most this many paths are searched for a command (PATH's directories).
pub const MAX_COMMAND_PATHS: usize = 32;

impl RootPlan {
    /// The plan for the next container like `spec` (just started): its
    /// image's disk, and where its command is looked for. `None` without a
    /// built image disk.
    pub(crate) fn like(spec: &crate::container::ContainerSpec) -> Option<RootPlan> {
        let store = image::Store::open(&crate::data_dir()).ok()?;
        let record = store.image(spec.image.as_ref()?).ok()?;
        let image = image::disk::built_image_disk(&store, &record)?;
        let command_paths = image::config::process_of(&store, &record.id, spec.process.as_ref(), &spec.overrides)
            .ok()
            .map(|process| command_paths(&process.argv, &process.env))
            .unwrap_or_default();
        Some(RootPlan { image, command_paths })
    }

    /// As `hull-shim --standby` takes it after the shape.
    fn args(&self) -> impl Iterator<Item = std::ffi::OsString> + '_ {
        std::iter::once(self.image.clone().into_os_string()).chain(self.command_paths.iter().map(Into::into))
    }
}

/// Where `argv`'s program is looked for in the container's root, in
/// order, as execvp(3) looks: itself when it names an absolute path, otherwise under
/// each directory of `env`'s PATH (Docker's default PATH without one).
pub fn command_paths(argv: &[String], env: &[String]) -> Vec<String> {
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    if program.contains('/') {
        // One relative to the working directory is not looked for.
        return match program.starts_with('/') {
            true => vec![program.clone()],
            false => Vec::new(),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .take(MAX_COMMAND_PATHS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names_are_plain() {
        assert!(valid_name("1234-5"));
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_shape_started_longest_ago_gives_way() {
        let mut shapes = Vec::new();
        for memory in 1..=MAX_SHAPES as u64 {
            assert_eq!(touch(&mut shapes, (memory, 1)), None);
        }
        // Started again: the latest, so (2, 1) is now the oldest.
        assert_eq!(touch(&mut shapes, (1, 1)), None);
        assert_eq!(touch(&mut shapes, (99, 2)), Some((2, 1)));
        assert_eq!(shapes.len(), MAX_SHAPES);
        assert_eq!(shapes.last(), Some(&(99, 2)));
    }

    #[test]
    fn a_claim_is_one_bounded_line() {
        let mut line = String::new();
        assert_eq!(read_claim(&b"abc\nrest"[..], &mut line), 4);
        assert_eq!(line, "abc\n");
        let mut line = String::new();
        assert_eq!(
            read_claim(&[b'a'; 10_000][..], &mut line),
            256,
            "no more than 256 bytes"
        );
        assert_eq!(read_claim(&b""[..], &mut String::new()), 0, "the end of input");
    }

    #[test]
    fn a_command_is_looked_for_as_execvp_looks() {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_paths(
                &strings(&["sleep", "60"]),
                &strings(&["A=1", "PATH=/usr/bin:bin:/bin/"])
            ),
            strings(&["/usr/bin/sleep", "/bin/sleep"]),
            "relative PATH entries are passed over"
        );
        assert_eq!(command_paths(&strings(&["/app/run"]), &[]), strings(&["/app/run"]));
        assert!(command_paths(&strings(&["./run"]), &[]).is_empty());
        assert_eq!(command_paths(&strings(&["sh"]), &[]).len(), 6, "Docker's default PATH");
        assert!(command_paths(&[], &[]).is_empty());
        assert!(command_paths(&strings(&[""]), &[]).is_empty());
        let long_path = format!("PATH={}", vec!["/d"; 100].join(":"));
        assert_eq!(command_paths(&strings(&["x"]), &[long_path]).len(), MAX_COMMAND_PATHS);
        let plan = RootPlan {
            image: "/data/disk.ext4".into(),
            command_paths: strings(&["/bin/sh"]),
        };
        assert_eq!(plan.args().collect::<Vec<_>>(), ["/data/disk.ext4", "/bin/sh"]);
    }
}
