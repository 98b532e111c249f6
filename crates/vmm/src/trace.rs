//! Start-up phase timings on stderr, for finding where a restore spends its
//! time: set `HULL_VMM_TRACE=1`. Off, each mark costs one atomic load.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// The environment variable that turns the marks on.
pub const TRACE_ENV: &str = "HULL_VMM_TRACE";
/// Set by `jail::VmmCommand` when tracing: CLOCK_MONOTONIC at the spawn, in
/// nanoseconds, so the first mark shows what the clone and exec took.
pub const SPAWNED_ENV: &str = "HULL_VMM_TRACE_SPAWNED_NS";

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The CPU time this thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// This thread's page faults so far: minor (a page mapped from memory or
/// the page cache) and major (read from a disk).
pub fn thread_faults() -> (u64, u64) {
    // SAFETY: getrusage fills the struct, which starts zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is this thread's.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (usage.ru_minflt as u64, usage.ru_majflt as u64)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

static ORIGIN: OnceLock<Option<Instant>> = OnceLock::new();
/// Who marks: the process's name in each line.
static WHO: OnceLock<&'static str> = OnceLock::new();

/// Starts the clock (call first thing in `main`); marks are relative to it.
/// The VMM's marks leave page faults out: its seccomp filter does not
/// allow `getrusage`.
pub fn start() {
    start_as("hull-vmm");
}

/// As `start`, for another of hull's processes (`hull`, `hull-shim`): its
/// marks say `name` and line up with hull-vmm's by their monotonic times.
pub fn start_as(name: &'static str) {
    WHO.get_or_init(|| name);
    ORIGIN.get_or_init(|| std::env::var_os(TRACE_ENV).map(|_| Instant::now()));
    let spawned = std::env::var(SPAWNED_ENV).ok().and_then(|ns| ns.parse::<u64>().ok());
    if let (true, Some(spawned)) = (enabled(), spawned) {
        let ms = monotonic_ns().saturating_sub(spawned) as f64 / 1e6;
        eprintln!("{} trace: main reached {ms:.3} ms after the spawn", who());
    }
}

/// Whether marks are printed.
pub fn enabled() -> bool {
    matches!(ORIGIN.get(), Some(Some(_)))
}

/// Prints `phase` with the time since `start`, CLOCK_MONOTONIC (to line
/// up two VMMs, a migration's source and destination) and the calling
/// thread's CPU time (on a busy host, what of a phase was this thread's
/// own work) and page faults (under emulation, each costs tens of
/// microseconds), when tracing is on.
pub fn mark(phase: &str) {
    if let Some(Some(origin)) = ORIGIN.get() {
        let faults = match who() {
            "hull-vmm" => String::new(),
            _ => {
                let (minor, major) = thread_faults();
                format!(", faults {minor}/{major}")
            }
        };
        let line = format!(
            "{} trace: {:>9.3} ms {phase} (monotonic {:.3} ms, thread cpu {:.3} ms{faults})\n",
            who(),
            origin.elapsed().as_secs_f64() * 1000.0,
            monotonic_ns() as f64 / 1e6,
            thread_cpu_ns() as f64 / 1e6
        );
        // One write, not one per piece as `eprintln!` makes: a mark must
        // cost little beside the phases it times.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn who() -> &'static str {
    WHO.get().copied().unwrap_or("hull-vmm")
}
