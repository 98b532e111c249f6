//! With the host's `HULL_VMM_TRACE` (`RunSpec::trace`), the agent says on
//! the console when each step of a container's start and end is done, in
//! milliseconds since the run request came (the guest's own clock).

use std::time::Instant;

#[derive(Clone, Copy)]
pub struct Steps {
    since: Option<Instant>,
}

impl Steps {
    pub fn new(on: bool) -> Steps {
        Steps {
            since: on.then(Instant::now),
        }
    }

    pub fn done(&self, step: &str) {
        if let Some(since) = self.since {
            eprintln!(
                "hull-agent trace: {:>9.3} ms {step}",
                since.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}
