//! The peer: QEMU's microvm machine booting the same kernel under KVM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::GUEST_READY_MARKER;

/// One cold boot of `kernel` + `initramfs` under `qemu-system-x86_64 -accel kvm
/// -M microvm,acpi=on`: time from spawning QEMU until the guest's init
/// reports ready, plus the console it printed.
pub fn microvm_boot(
    kernel: &Path,
    initramfs: &Path,
    memory_mib: u32,
    limit: Duration,
) -> Result<(Duration, Vec<String>)> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-M", "microvm,acpi=on", "-cpu", "host", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-m")
        .arg(memory_mib.to_string())
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let line = line.trim_end_matches('\r').to_string();
            if line.contains(GUEST_READY_MARKER) {
                let _ = tx.send(start.elapsed());
            }
            lines.push(line);
        }
        lines
    });
    let ready = rx.recv_timeout(limit);
    if ready.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let console = reader.join().unwrap_or_default();
    match ready {
        Ok(elapsed) => Ok((elapsed, console)),
        Err(_) => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            let tail = console
                .iter()
                .rev()
                .take(20)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("QEMU guest never reported ready within {limit:?} ({status}); stderr: {stderr}\nconsole:\n{tail}")
        }
    }
}
