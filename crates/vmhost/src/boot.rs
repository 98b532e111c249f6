//! Boots the test host under QEMU TCG, streams the command's output, enforces
//! the time limit and returns the command's exit status.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::assets::{Assets, AssetsError};
use crate::kick;
use crate::script::run_script;

const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
const READY_MARKER: &str = "@@vmhost:ready@@";
const EXITED_MARKER: &str = "@@vmhost:exited@@";
const TAIL_LINES: usize = 40;
/// Room QEMU itself needs beside the guest's memory.
const QEMU_OVERHEAD_MIB: u64 = 512;

pub struct RunOptions {
    pub memory_mib: u64,
    pub cpus: u32,
    pub time_limit: Duration,
    /// Host directories the command may write to (mounted read-write at the same path).
    pub rw_shares: Vec<PathBuf>,
    /// Show the boot console too, not only the command's output.
    pub verbose: bool,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub command: Vec<String>,
}

#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status.
    pub status: i32,
    /// From QEMU's start to the command starting.
    pub ready_after: Duration,
    pub total: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{QEMU} not found ({0}); install it with: apt-get install qemu-system-x86")]
    QemuMissing(std::io::Error),
    #[error(
        "not enough memory for the test host: it needs {needed} MiB ({requested} MiB guest + {QEMU_OVERHEAD_MIB} MiB for QEMU) \
         but only {available} MiB are available; lower --memory or free memory"
    )]
    NotEnoughMemory {
        requested: u64,
        needed: u64,
        available: u64,
    },
    #[error("{0}")]
    Assets(#[from] AssetsError),
    #[error("a writable share must be an existing directory whose path has no spaces or commas: {0}")]
    BadShare(PathBuf),
    #[error("the time limit of {limit:?} was hit; the test host was killed. Last console lines:\n{tail}")]
    TimeLimit { limit: Duration, tail: String },
    #[error("interrupted; the test host was stopped")]
    Interrupted,
    #[error("the test host stopped without reporting the command's status ({qemu}). Last console lines:\n{tail}")]
    NoStatus { qemu: String, tail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl RunError {
    /// The exit code the `vmhost` command uses for this failure (124 like timeout(1)).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::TimeLimit { .. } => 124,
            RunError::Interrupted => 130,
            _ => 125,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Boots the test host, runs `options.command` in it and returns its status.
pub fn run(assets: &Assets, options: &RunOptions) -> Result<Outcome, RunError> {
    check_memory(options.memory_mib)?;
    for share in &options.rw_shares {
        let text = share.to_string_lossy();
        if !share.is_absolute() || !share.is_dir() || text.contains([' ', ',', '\n']) {
            return Err(RunError::BadShare(share.clone()));
        }
    }
    remove_stale_run_dirs();
    let run_dir = RunDir::create()?;
    let script = run_script(&options.env, &options.cwd, &options.command);
    fs::write(run_dir.0.join("run.sh"), script).map_err(io("writing run.sh"))?;

    let mut shares = vec![("run".to_string(), run_dir.0.clone())];
    shares.extend(
        options
            .rw_shares
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("rw{i}"), p.clone())),
    );
    let shares_arg: Vec<String> = shares.iter().map(|(tag, p)| format!("{tag}:{}", p.display())).collect();
    let loglevel = if options.verbose { "" } else { "quiet loglevel=1" };
    // HULL_VMHOST_APPEND: more kernel parameters for the test host (experiments).
    let extra = std::env::var("HULL_VMHOST_APPEND").unwrap_or_default();

    let mut qemu = Command::new(QEMU);
    // HULL_VMHOST_TCG=single: one host thread for every vCPU (slower; for
    // telling multi-threaded TCG races apart from other faults).
    let tcg = match std::env::var("HULL_VMHOST_TCG").as_deref() {
        Ok("single") => "tcg,thread=single",
        _ => "tcg,thread=multi",
    };
    qemu.args(["-accel", tcg, "-cpu", "max", "-display", "none"]);
    // qboot skips SeaBIOS's device scan: about a second less per boot under TCG.
    if Path::new(QBOOT).is_file() {
        qemu.args(["-bios", QBOOT]);
    }
    // QMP, for the interrupt kick (see `kick`); it also lets a developer
    // look into a test host that stopped (`info lapic`, `info registers`).
    let qmp_socket = run_dir.0.with_extension("qmp");
    let _ = fs::remove_file(&qmp_socket);
    qemu.args(kick::qmp_args(&qmp_socket));
    qemu.args(["-nodefaults", "-no-user-config", "-no-reboot", "-serial", "stdio"])
        .arg("-smp")
        .arg(options.cpus.to_string())
        .arg("-m")
        .arg(options.memory_mib.to_string())
        .arg("-kernel")
        .arg(assets.kernel.vmlinuz())
        .arg("-initrd")
        .arg(&assets.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 {loglevel} panic=-1 {extra} vmhost.shares={}",
            shares_arg.join(",")
        ))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap");
    for (tag, path) in &shares {
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap",
            path.display()
        ));
    }
    qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; QEMU must die with us, never outlive us.
    unsafe {
        qemu.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let start = Instant::now();
    let mut child = qemu.spawn().map_err(RunError::QemuMissing)?;
    // HULL_VMHOST_KICK=0 turns the kick off (to watch the freeze it prevents).
    let stop_kicking = Arc::new(AtomicBool::new(false));
    let kicker = match std::env::var("HULL_VMHOST_KICK").as_deref() {
        Ok("0") => None,
        _ => Some(kick::start(&qmp_socket, stop_kicking.clone())),
    };
    let _qmp_socket = RemoveOnDrop(qmp_socket);
    let _kicker = StopOnDrop(stop_kicking, kicker);
    let console = Console::new(options.verbose, start);
    let readers = [
        console.follow(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        console.follow(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
    ];

    let deadline = start + options.time_limit;
    let exit = loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for qemu"))? {
            break status;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            kill(&mut child);
            return Err(RunError::Interrupted);
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            readers.into_iter().for_each(|r| drop(r.join()));
            return Err(RunError::TimeLimit {
                limit: options.time_limit,
                tail: console.tail(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    };
    readers.into_iter().for_each(|r| drop(r.join()));
    let total = start.elapsed();
    let status = fs::read_to_string(run_dir.0.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match (status, console.ready_after()) {
        (Some(status), Some(ready_after)) => Ok(Outcome {
            status,
            ready_after,
            total,
        }),
        _ => Err(RunError::NoStatus {
            qemu: exit.to_string(),
            tail: console.tail(),
        }),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn check_memory(requested: u64) -> Result<(), RunError> {
    let meminfo = fs::read_to_string("/proc/meminfo").map_err(io("reading /proc/meminfo"))?;
    let available_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let available = available_kib / 1024;
    let needed = requested.saturating_add(QEMU_OVERHEAD_MIB);
    if requested < 256 || needed > available {
        return Err(RunError::NotEnoughMemory {
            requested,
            needed: needed.max(256 + QEMU_OVERHEAD_MIB),
            available,
        });
    }
    Ok(())
}

/// A file removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The kick thread, stopped and joined on drop.
struct StopOnDrop(Arc<AtomicBool>, Option<thread::JoinHandle<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

/// A per-run directory shared read-write with the guest; removed on drop.
struct RunDir(PathBuf);

const RUN_DIR_PREFIX: &str = "vmhost-run-";

impl RunDir {
    fn create() -> Result<RunDir, RunError> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(RunDir(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Run directories (and their QMP sockets, `vmhost-run-PID-N.qmp`) of
/// vmhost processes that were killed before cleaning up.
fn remove_stale_run_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(RUN_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = match entry.file_type() {
            Ok(kind) if kind.is_dir() => fs::remove_dir_all(entry.path()),
            _ => fs::remove_file(entry.path()),
        };
    }
}

/// The serial console: keeps a tail for error messages and streams the
/// command's output (between the ready and exited markers) to stdout.
#[derive(Clone)]
struct Console {
    state: Arc<Mutex<ConsoleState>>,
    start: Instant,
}

struct ConsoleState {
    tail: VecDeque<String>,
    ready_after: Option<Duration>,
    streaming: bool,
    verbose: bool,
}

impl Console {
    fn new(verbose: bool, start: Instant) -> Console {
        let state = ConsoleState {
            tail: VecDeque::new(),
            ready_after: None,
            streaming: false,
            verbose,
        };
        Console {
            state: Arc::new(Mutex::new(state)),
            start,
        }
    }

    fn follow(&self, source: Option<Box<dyn Read + Send>>) -> thread::JoinHandle<()> {
        let console = self.clone();
        thread::spawn(move || {
            let Some(mut source) = source else { return };
            let mut pending = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    console.line(&line);
                }
            }
            if !pending.is_empty() {
                console.line(&pending);
            }
        })
    }

    fn line(&self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\n', '\r']);
        let Ok(mut state) = self.state.lock() else { return };
        if text.contains(READY_MARKER) {
            state.ready_after = Some(self.start.elapsed());
            state.streaming = true;
        } else if text.contains(EXITED_MARKER) {
            state.streaming = false;
        } else if state.streaming || state.verbose {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        if state.tail.len() == TAIL_LINES {
            state.tail.pop_front();
        }
        state.tail.push_back(text.to_string());
    }

    fn tail(&self) -> String {
        self.state
            .lock()
            .map(|s| s.tail.iter().map(|l| format!("  | {l}\n")).collect())
            .unwrap_or_default()
    }

    fn ready_after(&self) -> Option<Duration> {
        self.state.lock().ok().and_then(|s| s.ready_after)
    }
}
