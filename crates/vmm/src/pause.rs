//! Pausing a running VM: every vCPU and device thread parks at a point where
//! it holds no guest state in flight, until the VM is resumed.
//!
//! The VMM thread requests a pause, knocks the vCPUs out of `KVM_RUN` and
//! wakes the device threads (each polls a waker eventfd), then waits until
//! all of them have parked. Parked vCPU threads have released their vCPU,
//! so the VMM thread can read its state (a snapshot, a migration).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// How often a pause knocks the vCPUs that have not parked yet.
const KICK_EVERY: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct PauseGate {
    /// Read on every vCPU exit and device event: the fast path.
    requested: AtomicBool,
    parked: Mutex<usize>,
    changed: Condvar,
    /// One per device thread, written to get it out of `epoll_wait`.
    wakers: Mutex<Vec<EventFd>>,
}

impl PauseGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// A device thread's waker: it polls the returned eventfd.
    pub fn waker(&self) -> std::io::Result<EventFd> {
        let waker = EventFd::new(libc::EFD_NONBLOCK)?;
        let ours = waker.try_clone()?;
        lock(&self.wakers).push(ours);
        Ok(waker)
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks every member to park (a vCPU that asks for its own VM's save
    /// calls this before it parks).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        for waker in lock(&self.wakers).iter() {
            let _ = waker.write(1);
        }
    }

    /// Called by a member that saw a request: blocks until the VM resumes.
    pub fn park(&self) {
        let mut parked = lock(&self.parked);
        *parked += 1;
        self.changed.notify_all();
        while self.requested() {
            parked = self.changed.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    /// Waits until `members` threads have parked, calling `kick` at once
    /// and then every millisecond (to knock vCPUs out of `KVM_RUN`; not
    /// again as each device thread parks: a signal to a vCPU is a VM exit).
    pub fn wait_parked(&self, members: usize, timeout: Duration, mut kick: impl FnMut()) -> bool {
        let deadline = Instant::now() + timeout;
        let mut next_kick = Instant::now();
        let mut parked = lock(&self.parked);
        while *parked < members {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now >= next_kick {
                drop(parked);
                kick();
                next_kick = now + KICK_EVERY;
                parked = lock(&self.parked);
                continue;
            }
            parked = self
                .changed
                .wait_timeout(parked, next_kick - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Lets every parked member go on.
    pub fn release(&self) {
        let _parked = lock(&self.parked);
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn members_park_until_released() {
        let gate = Arc::new(PauseGate::new());
        let waker = gate.waker().unwrap();
        let member = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                // A device thread: wait for its waker, then park.
                while waker.read().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert!(gate.requested());
                gate.park();
            })
        };
        gate.request();
        assert!(gate.wait_parked(1, Duration::from_secs(10), || {}));
        assert!(!member.is_finished());
        gate.release();
        member.join().unwrap();
        assert!(
            !gate.wait_parked(1, Duration::from_millis(5), || {}),
            "nobody parked now"
        );
    }
}
