//! Start-up phase timings on stderr, for finding where a restore spends its
//! time: set `HULL_VMM_TRACE=1`. Off, each mark costs one atomic load.

use std::sync::OnceLock;
use std::time::Instant;

/// The environment variable that turns the marks on.
pub const TRACE_ENV: &str = "HULL_VMM_TRACE";

static ORIGIN: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (call first thing in `main`); marks are relative to it.
pub fn start() {
    ORIGIN.get_or_init(|| std::env::var_os(TRACE_ENV).map(|_| Instant::now()));
}

/// Whether marks are printed.
pub fn enabled() -> bool {
    matches!(ORIGIN.get(), Some(Some(_)))
}

/// Prints `phase` with the time since `start`, when tracing is on.
pub fn mark(phase: &str) {
    if let Some(Some(origin)) = ORIGIN.get() {
        eprintln!(
            "hull-vmm trace: {:>9.3} ms {phase}",
            origin.elapsed().as_secs_f64() * 1000.0
        );
    }
}
