//! With the host's `HULL_VMM_TRACE` (`RunSpec::trace`), the agent notes
//! when each step of a container's start and end is done, in milliseconds
//! since the run request came (the guest's own clock), and prints them
//! together once the container has ended: a console line costs the guest
//! more than most steps, so printing as it goes would change what it
//! measures.

use std::sync::Mutex;
use std::time::Instant;

struct Notes {
    since: Instant,
    lines: Vec<(f64, u64, &'static str)>,
}

static NOTES: Mutex<Option<Notes>> = Mutex::new(None);

/// Starts noting steps, if the host asked for a trace.
pub fn start(on: bool) {
    if on {
        *NOTES.lock().unwrap_or_else(|e| e.into_inner()) = Some(Notes {
            since: Instant::now(),
            lines: Vec::new(),
        });
    }
}

/// Notes that `step` is done.
pub fn done(step: &'static str) {
    if let Some(notes) = NOTES.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let at = notes.since.elapsed().as_secs_f64() * 1000.0;
        notes.lines.push((at, minor_faults(), step));
    }
}

/// Prints the steps noted so far on the console, and stops noting.
pub fn print() {
    let Some(notes) = NOTES.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let text: String = notes
        .lines
        .iter()
        .map(|(at, faults, step)| format!("hull-agent trace: {at:>9.3} ms {step} (faults {faults})\n"))
        .collect();
    eprint!("{text}");
}

/// The agent's minor page faults so far, all its threads': a fault costs
/// a nested guest tens of microseconds.
fn minor_faults() -> u64 {
    // SAFETY: getrusage fills the struct, which starts zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}
