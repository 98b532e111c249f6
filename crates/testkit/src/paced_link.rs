//! A slow link between two VMMs on one machine: a relay socket whose
//! connection is passed on to another socket, the source's bytes paced at
//! a given rate (the answers back are not). A migration over it meets a
//! guest that writes memory faster than the link carries it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Listens at `relay` for one connection and passes it on to `to`, at most
/// `bytes_per_second` towards `to`. Returns at once; the relay runs on
/// threads of its own until either side ends.
pub fn paced_relay(to: &Path, bytes_per_second: u64, relay: &Path) -> std::io::Result<PathBuf> {
    let _ = std::fs::remove_file(relay);
    let listener = UnixListener::bind(relay)?;
    let to = to.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        let (mut source, _) = listener.accept()?;
        let mut destination = UnixStream::connect(&to)?;
        let (mut answers_in, mut answers_out) = (destination.try_clone()?, source.try_clone()?);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut answers_in, &mut answers_out);
            let _ = answers_out.shutdown(std::net::Shutdown::Write);
        });
        let started = Instant::now();
        let (mut passed, mut buf) = (0u64, vec![0u8; 64 << 10]);
        loop {
            let n = source.read(&mut buf)?;
            if n == 0 {
                return destination.shutdown(std::net::Shutdown::Write);
            }
            destination.write_all(&buf[..n])?;
            passed += n as u64;
            let due = Duration::from_secs_f64(passed as f64 / bytes_per_second.max(1) as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
    });
    Ok(relay.to_path_buf())
}
