//! A VM's guest console, kept on the host within a fixed size: hull-vmm
//! writes the console into a pipe, and a thread here copies it to
//! `console.log`, starting afresh (the full file kept as `console.log.1`)
//! each time it reaches `log_max()` bytes (1 MiB; `HULL_CONSOLE_LOG_MAX`
//! sets another). A guest that floods its console costs the host at most
//! two such files, and the VMM (jailed or not) needs no access to the
//! log's directory.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of console one log file holds before it is rotated, by default.
pub const CONSOLE_LOG_MAX: u64 = 1 << 20;

/// Bytes of console one log file holds: `HULL_CONSOLE_LOG_MAX` (at least
/// 4 KiB), or `CONSOLE_LOG_MAX`.
pub fn log_max() -> u64 {
    std::env::var("HULL_CONSOLE_LOG_MAX")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(CONSOLE_LOG_MAX, |max| max.max(4096))
}

/// The copying thread of one VM's console, and where its log is.
pub struct ConsoleKeeper {
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<PathBuf>>,
}

impl ConsoleKeeper {
    /// Starts keeping what arrives on `source` in `log` (truncated first,
    /// or, for a VM that moved to a new VMM, continued).
    pub fn start(source: File, log: &Path, continued: bool) -> std::io::Result<ConsoleKeeper> {
        let mut writer = match continued {
            true => RotatingLog::append(log.to_path_buf(), log_max())?,
            false => RotatingLog::create(log.to_path_buf(), log_max())?,
        };
        let log = writer.path.clone();
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || writer.copy_from(source))?;
        Ok(ConsoleKeeper {
            thread: Some(thread),
            log,
        })
    }

    /// Moves the log to `to` (same file system) while the VM runs: a
    /// standby VM's console becomes its container's. What `to` held of an
    /// earlier run goes.
    pub fn move_to(&self, to: &Path) -> std::io::Result<()> {
        let mut path = self
            .log
            .lock()
            .map_err(|_| std::io::Error::other("the console keeper failed"))?;
        std::fs::rename(&*path, to)?;
        let _ = std::fs::remove_file(rotated(to));
        let _ = std::fs::rename(rotated(&path), rotated(to));
        *path = to.to_path_buf();
        Ok(())
    }

    /// Waits (up to `grace`) until everything the ended VM wrote is in the
    /// log, so that its tail explains the end.
    pub fn settle(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            let _ = self.thread.take().map(JoinHandle::join);
        }
    }
}

/// A close-on-exec pipe: its read end, and its write end numbered 10 or
/// above, clear of the low numbers descriptors are passed to a child at
/// (moving one there cannot clobber the other).
pub fn pipe() -> std::io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor from a valid one.
    match unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) } {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: a fresh descriptor that nothing else owns.
        high => Ok((read, unsafe { OwnedFd::from_raw_fd(high) })),
    }
}

/// A log file that is moved to `NAME.1` once it holds `max` bytes.
struct RotatingLog {
    /// Shared with the keeper, which may move it (`ConsoleKeeper::move_to`).
    path: Arc<Mutex<PathBuf>>,
    file: Option<File>,
    written: u64,
    max: u64,
}

impl RotatingLog {
    fn create(path: PathBuf, max: u64) -> std::io::Result<RotatingLog> {
        let file = File::create(&path)?;
        // A rotated file of an earlier run is not this run's.
        let _ = std::fs::remove_file(rotated(&path));
        Ok(RotatingLog {
            path: Arc::new(Mutex::new(path)),
            file: Some(file),
            written: 0,
            max,
        })
    }

    fn append(path: PathBuf, max: u64) -> std::io::Result<RotatingLog> {
        let file = File::options().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: Arc::new(Mutex::new(path)),
            file: Some(file),
            written,
            max,
        })
    }

    /// Copies until the writer hangs up. Never stops reading early: a VMM
    /// blocked on a full pipe would stall its guest.
    fn copy_from(&mut self, mut source: impl Read) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.write(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.written >= self.max {
                self.rotate();
            }
            let room = (self.max - self.written).min(data.len() as u64) as usize;
            // A log that cannot be written (a full disk) loses console, not the VM.
            if let Some(file) = self.file.as_mut() {
                if file.write_all(&data[..room]).is_err() {
                    self.file = None;
                }
            }
            self.written += room as u64;
            data = &data[room..];
        }
    }

    fn rotate(&mut self) {
        let Ok(path) = self.path.lock() else {
            self.file = None;
            return;
        };
        self.file = std::fs::rename(&*path, rotated(&path))
            .and_then(|()| File::create(&*path))
            .ok();
        self.written = 0;
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_two_files_of_the_cap_with_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(rotated(&path), "an earlier run").unwrap();
        let mut log = RotatingLog::create(path.clone(), 100).unwrap();
        assert!(!rotated(&path).exists(), "an earlier run's rotated file goes");
        let flood: Vec<u8> = (0..1050u32).map(|i| b'a' + (i / 100) as u8).collect();
        log.copy_from(&flood[..]);
        let current = std::fs::read(&path).unwrap();
        let older = std::fs::read(rotated(&path)).unwrap();
        assert_eq!(current, &flood[1000..]);
        assert_eq!(older, &flood[900..1000]);
    }

    #[test]
    fn the_keeper_copies_a_pipe_until_its_writer_hangs_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (read, write) = pipe().unwrap();
        let mut keeper = ConsoleKeeper::start(read, &path, false).unwrap();
        let mut write = File::from(write);
        write.write_all(b"[    0.000000] Linux version\n").unwrap();
        drop(write);
        keeper.settle(Duration::from_secs(10));
        assert!(keeper.thread.is_none(), "the thread ended at the hang-up");
        assert_eq!(std::fs::read(&path).unwrap(), b"[    0.000000] Linux version\n");
        // The VM moved to a new VMM: its console goes on in the same log.
        let (read, write) = pipe().unwrap();
        let mut keeper = ConsoleKeeper::start(read, &path, true).unwrap();
        File::from(write).write_all(b"moved\n").unwrap();
        keeper.settle(Duration::from_secs(10));
        assert_eq!(std::fs::read(&path).unwrap(), b"[    0.000000] Linux version\nmoved\n");
    }

    #[test]
    fn a_moved_log_goes_on_and_rotates_where_it_went() {
        let dir = tempfile::tempdir().unwrap();
        let standby = dir.path().join("standby.log");
        let container = dir.path().join("console.log");
        std::fs::write(rotated(&container), "an earlier run").unwrap();
        let (read, write) = pipe().unwrap();
        let mut writer = RotatingLog::create(standby.clone(), 8).unwrap();
        let keeper = ConsoleKeeper {
            thread: None,
            log: writer.path.clone(),
        };
        writer.write(b"restored");
        keeper.move_to(&container).unwrap();
        assert!(!standby.exists());
        assert!(!rotated(&container).exists(), "an earlier run's rotated file goes");
        let copier = std::thread::spawn(move || writer.copy_from(read));
        File::from(write).write_all(b"ran").unwrap();
        copier.join().unwrap();
        assert_eq!(std::fs::read(rotated(&container)).unwrap(), b"restored");
        assert_eq!(std::fs::read(&container).unwrap(), b"ran");
        assert!(!standby.exists() && !rotated(&standby).exists());
    }
}
