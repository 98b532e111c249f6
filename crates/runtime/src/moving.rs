//! Moving a running container's VM to a new VMM on this host while it runs
//! (live migration; `docker`'s `POST /containers/{id}/migrate`). A client
//! of the container's supervisor asks (`Moves::ask`); the thread that runs
//! the VM takes the request between two of the agent's frames
//! (`run::follow`), starts a VMM with the same devices waiting for the VM
//! (`--incoming`, the template mapped so only the clone's own pages
//! travel), has the running VMM migrate the VM into it, and takes the
//! agent's run connection back through the new VMM (`rejoin`): the
//! container's output goes on with nothing lost or repeated. The disks stay
//! where they are; this host sees them. A failure leaves the VM running in
//! the VMM it was in.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use proto::vmm_control::{VmmReply, VmmRequest};
use proto::{MigrationProgress, MigrationReport, MoveLimits};

use crate::run::{Attachment, Followed, OutputStream, RunRequest, Steer, VmFiles, VmStart, Vmm};

/// How long the new VMM may take to listen for the VM, and the agent to
/// come back through it once the VM runs there.
const NEW_VMM_PATIENCE: Duration = Duration::from_secs(60);

/// Requests to move a container's VM, from its supervisor's clients to the
/// thread that runs the VM.
#[derive(Clone)]
pub struct Moves(Arc<Asked>);

struct Asked {
    queue: Mutex<VecDeque<MoveRequest>>,
    /// One byte per request queued: the runner polls `bell` beside the
    /// agent's connection.
    bell: UnixStream,
    ring: UnixStream,
    under_way: Mutex<UnderWay>,
}

/// The move the runner has taken, for `Moves::cancel`.
#[derive(Default)]
struct UnderWay {
    moving: bool,
    cancelled: bool,
    /// The migration connection: shut down, it ends the pre-copy (before
    /// `Go` the VM runs on where it is; after it, the new VMM has it).
    link: Option<UnixStream>,
}

/// Why a move cancelled by its user did not happen.
const CANCELLED: &str = "the migration was cancelled: the VM runs on where it was";

/// What the runner tells the client that asked for a move.
enum Told {
    Progress(MigrationProgress),
    Outcome(Result<MigrationReport, String>),
}

/// One client's request, answered once (after its rounds' progress).
pub struct MoveRequest {
    limits: MoveLimits,
    /// To another host, over this connection (hulld's, to the other
    /// host's hulld); `None`: to a new VMM on this host.
    away: Option<std::os::fd::OwnedFd>,
    answer: mpsc::Sender<Told>,
}

impl MoveRequest {
    pub(crate) fn answer(self, outcome: Result<MigrationReport, String>) {
        let _ = self.answer.send(Told::Outcome(outcome));
    }

    fn progress(&self, progress: MigrationProgress) {
        let _ = self.answer.send(Told::Progress(progress));
    }
}

impl Moves {
    pub fn new() -> std::io::Result<Moves> {
        let (bell, ring) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        Ok(Moves(Arc::new(Asked {
            queue: Mutex::new(VecDeque::new()),
            bell,
            ring,
            under_way: Mutex::new(UnderWay::default()),
        })))
    }

    /// Asks for the VM to move, and waits for the outcome; each pre-copy
    /// round's progress goes to `progress` meanwhile.
    pub fn ask(
        &self,
        limits: MoveLimits,
        away: Option<std::os::fd::OwnedFd>,
        progress: &mut dyn FnMut(MigrationProgress),
    ) -> Result<MigrationReport, String> {
        let (answer, outcome) = mpsc::channel();
        let request = MoveRequest { limits, away, answer };
        self.0
            .queue
            .lock()
            .map_err(|_| "the container's supervisor is broken".to_string())?
            .push_back(request);
        (&self.0.ring)
            .write_all(&[1])
            .map_err(|e| format!("asking for the move: {e}"))?;
        // The runner answers every request, or drops it when the VM ends.
        loop {
            match outcome.recv() {
                Ok(Told::Progress(p)) => progress(p),
                Ok(Told::Outcome(outcome)) => return outcome,
                Err(_) => return Err("the container ended before its VM moved".into()),
            }
        }
    }

    /// Gives up the move under way, or asked for: the VM runs on where it
    /// is. False if there was none (or it had ended).
    pub fn cancel(&self) -> bool {
        let waiting = self.0.queue.lock().map(|mut q| std::mem::take(&mut *q));
        let mut found = false;
        for request in waiting.unwrap_or_default() {
            request.answer(Err(CANCELLED.into()));
            found = true;
        }
        if let Ok(mut under_way) = self.0.under_way.lock() {
            if under_way.moving {
                under_way.cancelled = true;
                if let Some(link) = &under_way.link {
                    let _ = link.shutdown(std::net::Shutdown::Both);
                }
                found = true;
            }
        }
        found
    }

    /// The move `take` handed out carries on over `link`; Err if it was
    /// cancelled already.
    fn carry_on_over(&self, link: &UnixStream) -> Result<(), String> {
        let mut under_way = self
            .0
            .under_way
            .lock()
            .map_err(|_| "the move's state is broken".to_string())?;
        if under_way.cancelled {
            return Err(CANCELLED.into());
        }
        under_way.link = link.try_clone().ok();
        Ok(())
    }

    fn was_cancelled(&self) -> bool {
        self.0.under_way.lock().is_ok_and(|u| u.cancelled)
    }

    fn under_way(&self, moving: bool) {
        if let Ok(mut under_way) = self.0.under_way.lock() {
            *under_way = UnderWay {
                moving,
                ..UnderWay::default()
            };
        }
    }

    /// Waits until `input` has a frame to read (then `None`) or a move is
    /// asked for (the request).
    pub(crate) fn wait_for(&self, input: &UnixStream) -> Option<MoveRequest> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.0.bell.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: input.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Read the frame; a broken connection shows there.
                return None;
            }
            if fds[0].revents != 0 {
                if let Some(request) = self.take() {
                    return Some(request);
                }
            }
            if fds[1].revents != 0 {
                return None;
            }
        }
    }

    fn take(&self) -> Option<MoveRequest> {
        let mut byte = [0u8];
        let _ = (&self.0.bell).read(&mut byte);
        let request = self.0.queue.lock().ok()?.pop_front()?;
        // Until `move_vm` ends: a cancel from here finds it.
        self.under_way(true);
        Some(request)
    }

    /// Answers every request still waiting: the VM is gone.
    pub(crate) fn refuse_all(&self, why: &str) {
        let waiting = self.0.queue.lock().map(|mut q| std::mem::take(&mut *q));
        for request in waiting.unwrap_or_default() {
            request.answer(Err(why.to_string()));
        }
    }
}

/// What a move needs of the running container.
pub(crate) struct MoveKit<'a> {
    /// Where moves are asked for (none: this VM does not move).
    pub moves: Option<&'a Moves>,
    /// The VM's devices, as its VMM was started with them (without taps).
    pub files: VmFiles<'a>,
    pub request: &'a RunRequest,
    /// The template directory the VM is a clone of (mapped by the new VMM).
    pub template: Option<&'a Path>,
    /// The VM's socket directory (its jail).
    pub sockets: &'a Path,
}

pub(crate) enum Moved {
    /// The VM runs in the new VMM, which now is `vmm`.
    Running(MigrationReport),
    /// The command ended just before the VM left (its status).
    Ended(i32, MigrationReport),
    /// The VM runs on another host; everything it said here was read.
    Departed(MigrationReport),
}

/// Clears the steer's moving state however the move ends.
struct Moving<'a>(&'a Steer);

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.set_moving(false);
    }
}

/// Marks the move taken from `Moves` over however it ends.
struct Taken<'a>(&'a Moves);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.under_way(false);
    }
}

/// The new VMM's sockets until the move is done, then renamed to the
/// VM's own; removed if the move fails.
struct Staging {
    incoming: PathBuf,
    uds: PathBuf,
    control: PathBuf,
    agent: PathBuf,
}

impl Staging {
    /// The names in `sockets`, cleared of any an earlier move left.
    fn new(sockets: &Path) -> Staging {
        let uds = sockets.join("vsock.moving.sock");
        let staging = Staging {
            incoming: sockets.join("incoming.sock"),
            agent: PathBuf::from(format!("{}_{}", uds.display(), proto::AGENT_PORT)),
            control: sockets.join("vmm.moving.ctl"),
            uds,
        };
        staging.remove_all();
        staging
    }

    fn remove_all(&self) {
        for path in [&self.incoming, &self.uds, &self.control, &self.agent] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Gives the new VMM's sockets the VM's own names: clients find it there.
    fn settle(&self, uds: &Path, control: &Path) {
        let renamed = std::fs::rename(&self.uds, uds).and_then(|()| std::fs::rename(&self.control, control));
        if let Err(e) = renamed {
            eprintln!("hull: naming the new VMM's sockets: {e}");
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Moves the VM `vmm` runs into a new VMM (see the module's doc). On
/// success `vmm` is the new VMM and `input`/`steer` reach the agent
/// through it; `frames` goes on counting the run connection's frames.
pub(crate) fn move_vm(
    kit: &MoveKit,
    asked: &MoveRequest,
    vmm: &mut Vmm,
    input: &mut UnixStream,
    steer: &Steer,
    frames: &mut u64,
    attachment: &mut dyn Attachment,
) -> Result<Moved, String> {
    let Some(moves) = kit.moves else {
        return Err("this container's VM cannot move".into());
    };
    let _taken = Taken(moves);
    if let Some(away) = &asked.away {
        return move_away(kit, asked, away, moves, input, steer, frames, attachment);
    }
    let staging = Staging::new(kit.sockets);
    let agent_port = UnixListener::bind(&staging.agent).map_err(|e| format!("the new VMM's vsock listener: {e}"))?;
    agent_port
        .set_nonblocking(true)
        .map_err(|e| format!("the new VMM's vsock listener: {e}"))?;
    if kit.files.jailed {
        crate::run::open_to_jailed_vmm(&staging.agent, 0o660).map_err(|e| e.to_string())?;
    }
    let control = UnixStream::connect(kit.files.control).map_err(|e| format!("reaching the container's VMM: {e}"))?;
    // The new VMM's NICs go on the same taps: lent by the running VMM, whose
    // NICs stop reading them at the pause; frames wait in them meanwhile.
    let taps = vmm::control::borrow_taps(&control)?;
    let mut files = kit.files.with_sockets(&staging.uds, &staging.control);
    files.taps = taps.iter().map(|(slot, tap)| (*slot, tap)).collect();
    let start = VmStart::Incoming {
        listen: &staging.incoming,
        template: kit.template,
    };
    let mut next = files.start_as(kit.request.shape(), start).map_err(|e| e.to_string())?;
    // Only the VMMs hold the taps now (a NIC unplugged later takes its tap away).
    drop(taps);
    // The socket's name appears at bind(2), before listen(2): until then
    // a connection is refused.
    let deadline = Instant::now() + NEW_VMM_PATIENCE;
    let link = loop {
        match UnixStream::connect(&staging.incoming) {
            Ok(link) => break link,
            Err(e) if Instant::now() >= deadline => return Err(format!("reaching the new VMM: {e}")),
            Err(_) if !matches!(next.process.try_wait(), Ok(None)) => {
                return Err(format!(
                    "the new VMM did not start: {}",
                    next.fate(Duration::from_secs(1))
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // This host sees the disks: they stay where they are.
    let mut report = send_vm(&control, &link, asked, moves, steer, None)?;
    report.vmm_pid = next.process.id();
    drop(link);
    // The old VMM ends now: what it passed on from the agent comes first.
    if let Ok(Followed::Ended(Some(status))) = crate::run::follow(input, attachment, frames, None) {
        return Ok(Moved::Ended(status, report));
    }
    let log = kit.files.console_log;
    let mut conn = crate::run::wait_for_agent(&agent_port, &mut next, NEW_VMM_PATIENCE, log)
        .map_err(|e| format!("the agent did not come back after the move: {e}"))?;
    let _ = conn.set_read_timeout(Some(NEW_VMM_PATIENCE));
    let rejoined = crate::rejoin::rejoin(&mut conn, *frames).map_err(|e| e.to_string())?;
    let _ = conn.set_read_timeout(None);
    crate::rejoin::note_lost(&rejoined, attachment);
    report.output_frames_lost = rejoined.lost;
    *frames = rejoined.from;
    let writer = conn.try_clone().map_err(|e| format!("the agent's connection: {e}"))?;
    let input_lost = steer.reconnect(writer, rejoined.agent.input_frames);
    if input_lost > 0 {
        let note = format!("hull: {input_lost} frames of the container's input were lost while its VM moved\n");
        attachment.output(OutputStream::Stderr, note.as_bytes());
    }
    *input = conn;
    // The old VMM has ended (its VM moved); it is reaped here.
    drop(std::mem::replace(vmm, next));
    staging.settle(kit.files.uds, kit.files.control);
    attachment.vm_ready(report.vmm_pid);
    Ok(Moved::Running(report))
}

/// Has the VMM on `control` send its VM over `link` (shut down by a
/// cancel), to another host with `send_shares` (the VM's shares): its
/// read-write disks and the shares only this host sees go too. The
/// report, or why the VM did not move (it runs on where it was).
fn send_vm(
    control: &UnixStream,
    link: &UnixStream,
    asked: &MoveRequest,
    moves: &Moves,
    steer: &Steer,
    send_shares: Option<&[crate::bind::Share]>,
) -> Result<MigrationReport, String> {
    moves.carry_on_over(link)?;
    // The disks, and the directories only this host sees, travel exactly
    // when the VM leaves this host.
    let request = VmmRequest::Migrate {
        downtime_ms: asked.limits.downtime_ms,
        max_seconds: asked.limits.max_seconds,
        send_disks: send_shares.is_some(),
        uncompressed: !asked.limits.compress,
        same_host: send_shares.is_none(),
        send_shares: send_shares.map(crate::bind::travelling).unwrap_or_default(),
    };
    // From here input the old connection may no longer take is kept for
    // the new one (`Steer::reconnect`), until the move ends either way.
    steer.set_moving(true);
    let _moving = Moving(steer);
    let answer = vmm::control::ask_following(control, &request, Some(link), &mut |p| asked.progress(p));
    migrated(answer, moves)
}

/// The report of a VMM's answer to `Migrate`, or why the VM did not move.
fn migrated(
    answer: Result<VmmReply, proto::vmm_control::ControlError>,
    moves: &Moves,
) -> Result<MigrationReport, String> {
    if let Some(report) = answer.as_ref().ok().and_then(VmmReply::migration_report) {
        return Ok(report);
    }
    match answer {
        _ if moves.was_cancelled() => Err(CANCELLED.into()),
        Ok(VmmReply::Failed { reason }) => Err(format!("the VM did not move (it runs on): {reason}")),
        Ok(other) => Err(format!("the VM did not move (it runs on): the VMM answered {other:?}")),
        Err(e) => Err(format!("the VM did not move (it runs on): {e}")),
    }
}

/// Moves the VM `vmm` runs to another host over `away` (its hulld's
/// connection to the other host's, which started a VMM waiting there),
/// the read-write disks with it. On success everything the agent said
/// through this host was read (`frames` counts it, for the other host to
/// resume from) and given to `attachment`; the VMM here has ended.
#[allow(clippy::too_many_arguments)]
fn move_away(
    kit: &MoveKit,
    asked: &MoveRequest,
    away: &std::os::fd::OwnedFd,
    moves: &Moves,
    input: &mut UnixStream,
    steer: &Steer,
    frames: &mut u64,
    attachment: &mut dyn Attachment,
) -> Result<Moved, String> {
    let control = UnixStream::connect(kit.files.control).map_err(|e| format!("reaching the container's VMM: {e}"))?;
    // `cancel` shuts this down: the connection is a socket of any family.
    let link = UnixStream::from(away.try_clone().map_err(|e| format!("the migration connection: {e}"))?);
    // The other host does not see this one's files.
    let mut report = send_vm(&control, &link, asked, moves, steer, Some(kit.files.shares))?;
    drop(link);
    // What the VMM here passed on from the agent before the VM left: all
    // of it is this host's to keep, up to the connection's end.
    match crate::run::follow(input, attachment, frames, None) {
        Ok(crate::run::Followed::Ended(None)) => {}
        Ok(crate::run::Followed::Ended(Some(_))) => {
            attachment.output(
                OutputStream::Stderr,
                b"hull: the command ended as its VM moved to another host\n",
            );
        }
        Ok(crate::run::Followed::MoveAsked(_)) | Err(_) => {}
    }
    report.output_frames = *frames;
    attachment.departed();
    Ok(Moved::Departed(report))
}
