//! Knowing when a container's log grew, for every `logs -f` and attach at
//! once: one inotify instance for the whole daemon (the kernel allows a
//! user 128), one watch per followed container's directory however many
//! follow it, and a counter per directory that followers wait on. A
//! directory is watched rather than the log, so a log not written yet and
//! a log that rotates are seen too. Where inotify is unavailable or out of
//! watches, followers look every quarter second instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

/// How often a follower looks at a log that cannot be watched.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The log files of a container directory (the log and its rotations).
const LOG_NAME: &str = "container-json.log";

/// The daemon's watcher; cheap to clone.
#[derive(Clone, Default)]
pub struct LogWatcher {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    /// The event task ended: no more watches, followers poll.
    stopped: bool,
    watches: Watches,
    by_dir: HashMap<PathBuf, Watched>,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
}

struct Watched {
    /// `None` once the kernel dropped the watch (the directory is gone).
    wd: Option<WatchDescriptor>,
    grew: watch::Sender<u64>,
    followers: usize,
}

impl LogWatcher {
    /// Starts the watcher's task on the current runtime; without inotify,
    /// a watcher whose followers poll.
    pub fn start() -> LogWatcher {
        match Self::start_inotify() {
            Ok(shared) => LogWatcher { shared: Some(shared) },
            Err(e) => {
                tracing::warn!("log followers will poll: inotify is unavailable: {e}");
                LogWatcher::default()
            }
        }
    }

    fn start_inotify() -> std::io::Result<Arc<Shared>> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let mut events = inotify.into_event_stream(vec![0u8; 16 * 1024])?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopped: false,
                watches,
                by_dir: HashMap::new(),
                by_wd: HashMap::new(),
            }),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(shared) = weak.upgrade() else { return };
                match event {
                    Ok(event) => shared.wake(&event.wd, event.mask, event.name.as_deref()),
                    Err(e) => {
                        tracing::warn!("the log watcher stopped; followers now poll: {e}");
                        return shared.stop();
                    }
                }
            }
        });
        Ok(shared)
    }

    /// Follows the logs in container directory `dir`.
    pub fn watch(&self, dir: &Path) -> LogWatch {
        let grew = self.shared.as_ref().and_then(|shared| shared.add(dir));
        LogWatch {
            grew,
            owner: self.shared.clone().map(|s| (s, dir.to_path_buf())),
        }
    }
}

impl Shared {
    fn add(&self, dir: &Path) -> Option<watch::Receiver<u64>> {
        let mut state = self.state.lock().ok()?;
        if state.stopped {
            return None;
        }
        if let Some(watched) = state.by_dir.get_mut(dir) {
            watched.followers += 1;
            return Some(watched.grew.subscribe());
        }
        let mask = WatchMask::MODIFY | WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM;
        let wd = match state.watches.add(dir, mask) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::debug!("watching {}: {e}; its followers poll", dir.display());
                return None;
            }
        };
        let (grew, receiver) = watch::channel(0);
        state.by_wd.insert(wd.clone(), dir.to_path_buf());
        state.by_dir.insert(
            dir.to_path_buf(),
            Watched {
                wd: Some(wd),
                grew,
                followers: 1,
            },
        );
        Some(receiver)
    }

    fn remove(&self, dir: &Path) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(watched) = state.by_dir.get_mut(dir) else {
            return;
        };
        watched.followers = watched.followers.saturating_sub(1);
        if watched.followers > 0 {
            return;
        }
        let wd = watched.wd.take();
        state.by_dir.remove(dir);
        if let Some(wd) = wd {
            state.by_wd.remove(&wd);
            let _ = state.watches.remove(wd);
        }
    }

    fn wake(&self, wd: &WatchDescriptor, mask: EventMask, name: Option<&std::ffi::OsStr>) {
        let Ok(mut state) = self.state.lock() else { return };
        if mask.contains(EventMask::Q_OVERFLOW) {
            drop(state);
            return self.wake_all();
        }
        let Some(dir) = state.by_wd.get(wd).cloned() else {
            return;
        };
        let gone = mask.contains(EventMask::IGNORED);
        if gone {
            state.by_wd.remove(wd);
        }
        let Some(watched) = state.by_dir.get_mut(&dir) else {
            return;
        };
        if gone {
            watched.wd = None;
        }
        let about_the_log = name.is_some_and(|n| n.to_string_lossy().starts_with(LOG_NAME));
        if gone || about_the_log {
            watched.grew.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Drops every follower's sender: each one's next wait finds it gone
    /// and polls from then on.
    fn stop(&self) {
        let Ok(mut state) = self.state.lock() else { return };
        state.stopped = true;
        state.by_dir.clear();
        state.by_wd.clear();
    }

    fn wake_all(&self) {
        let Ok(state) = self.state.lock() else { return };
        for watched in state.by_dir.values() {
            watched.grew.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// One follower's view of a container directory's logs.
pub struct LogWatch {
    grew: Option<watch::Receiver<u64>>,
    owner: Option<(Arc<Shared>, PathBuf)>,
}

impl LogWatch {
    /// Returns once the log may have grown since the last call (or the
    /// follower was made): at once if it did meanwhile.
    pub async fn grown(&mut self) {
        match self.grew.as_mut() {
            Some(grew) => {
                if grew.changed().await.is_err() {
                    // The watcher is gone: poll from now on.
                    self.grew = None;
                }
            }
            None => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        if let (Some(_), Some((shared, dir))) = (&self.grew, &self.owner) {
            shared.remove(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_when_the_log_is_written_and_share_one_watch() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = LogWatcher::start();
        let mut first = watcher.watch(dir.path());
        let mut second = watcher.watch(dir.path());
        let shared = watcher.shared.clone().unwrap();
        assert_eq!(shared.state.lock().unwrap().by_wd.len(), 1);
        // Unrelated files do not wake anyone.
        std::fs::write(dir.path().join("state.json"), "{}").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), first.grown()).await;
        assert!(quiet.is_err(), "woken by another file");
        std::fs::write(dir.path().join(LOG_NAME), "{}\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), first.grown())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), second.grown())
            .await
            .unwrap();
        drop(first);
        assert_eq!(shared.state.lock().unwrap().by_dir.len(), 1);
        drop(second);
        assert!(shared.state.lock().unwrap().by_dir.is_empty());
        assert!(shared.state.lock().unwrap().by_wd.is_empty());
    }

    #[tokio::test]
    async fn followers_poll_once_the_watcher_stops() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = LogWatcher::start();
        let mut follower = watcher.watch(dir.path());
        watcher.shared.as_ref().unwrap().stop();
        // Its wait ends at once (the sender is gone), then it polls.
        tokio::time::timeout(Duration::from_secs(1), follower.grown())
            .await
            .unwrap();
        assert!(follower.grew.is_none());
        let started = std::time::Instant::now();
        follower.grown().await;
        assert!(started.elapsed() >= POLL_INTERVAL);
        assert!(watcher.watch(dir.path()).grew.is_none(), "new followers poll");
    }
}
