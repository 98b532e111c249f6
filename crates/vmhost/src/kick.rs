//! Keeps the test host's interrupts flowing. Under QEMU TCG (Debian's 7.2)
//! with nested SVM, the test host sometimes stops taking interrupts for
//! good: its local APIC holds a pending timer interrupt in IRR, the CPU
//! runs (or halts) with interrupts enabled, and the interrupt is never
//! delivered, so the host freezes (the "vmhost froze" of earlier CI runs,
//! most often with many nested guests). Any new interrupt makes QEMU look
//! at the APIC again and delivers the stuck one too (seen with QMP: IRR
//! 236 pending, `send-key` → IRR empty and the host went on). So a thread
//! presses a key that types nothing (shift) through QMP every half second.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the key is pressed.
const INTERVAL: Duration = Duration::from_millis(500);

/// The QEMU command-line arguments for the QMP socket at `socket`.
pub fn qmp_args(socket: &Path) -> [String; 2] {
    ["-qmp".into(), format!("unix:{},server=on,wait=off", socket.display())]
}

/// Starts pressing the key through QMP at `socket` until `stop` is set or
/// QEMU goes away.
pub fn start(socket: &Path, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let socket = socket.to_path_buf();
    thread::spawn(move || {
        let Some(mut qmp) = Qmp::connect(&socket, &stop) else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let key = r#"{"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "shift"}]}}"#;
            if qmp.execute(key).is_err() {
                return; // QEMU is gone
            }
            thread::sleep(INTERVAL);
        }
    })
}

struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects once QEMU has made the socket, and leaves capabilities
    /// negotiation mode.
    fn connect(socket: &Path, stop: &AtomicBool) -> Option<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline && !stop.load(Ordering::SeqCst) => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return None,
            }
        };
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().ok()?),
            writer: stream,
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting).ok()?;
        qmp.execute(r#"{"execute": "qmp_capabilities"}"#).ok()?;
        Some(qmp)
    }

    /// Sends one command and reads up to its answer (skipping events).
    fn execute(&mut self, command: &str) -> std::io::Result<()> {
        self.writer.write_all(command.as_bytes())?;
        self.writer.write_all(b"\n")?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let answer: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if answer.get("return").is_some() || answer.get("error").is_some() {
                return Ok(());
            }
        }
    }
}
