//! Timed guest boots: hull-vmm, and the peer it is measured against, QEMU's
//! microvm machine booting the same kernel and initramfs under KVM.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest::GUEST_READY_MARKER;

/// One boot: when the guest reported ready, what it printed, how it ended.
pub struct BootRun {
    pub ready_after: Duration,
    pub console: Vec<String>,
    pub status: ExitStatus,
}

/// The kernel command line both VMMs boot with.
pub const CMDLINE: &str = "console=ttyS0 quiet panic=-1 pci=off";

/// A binary of this workspace, found beside the running executable
/// (`target/debug/` for binaries, `target/debug/deps/` for tests).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dirs = exe.ancestors().skip(1).take(2);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found next to {}: run `cargo build --workspace` first",
        exe.display()
    )
}

/// `qemu-system-x86_64 -accel kvm -M microvm,acpi=on` booting `kernel`.
pub fn qemu_command(kernel: &Path, initramfs: &Path, memory_mib: u32) -> Command {
    qemu_command_on("microvm,acpi=on", kernel, initramfs, memory_mib)
}

/// The same on the machine `machine` (`-M`), e.g. with a memory backend.
pub fn qemu_command_on(machine: &str, kernel: &Path, initramfs: &Path, memory_mib: u32) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "kvm", "-M", machine, "-cpu", "host", "-smp", "1"])
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
        .args(["-append", CMDLINE]);
    cmd
}

/// `hull-vmm` booting `kernel`, its console on stderr (add `--disk` and more to it).
pub fn hull_vmm_command(kernel: &Path, initramfs: &Path, memory_mib: u32) -> Result<Command> {
    Ok(hull_vmm_command_of(
        &workspace_binary("hull-vmm")?,
        kernel,
        initramfs,
        memory_mib,
    ))
}

/// As `hull_vmm_command`, with the hull-vmm binary `vmm` (another build's).
pub fn hull_vmm_command_of(vmm: &Path, kernel: &Path, initramfs: &Path, memory_mib: u32) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs)
        .args(["--cmdline", CMDLINE, "--console", "--memory"])
        .arg(memory_mib.to_string());
    cmd
}

/// Runs a VMM until it exits, timing spawn to the guest's ready marker.
pub fn timed_boot(command: Command, limit: Duration) -> Result<BootRun> {
    timed_boot_with(command, limit, |_| ()).map(|(run, _)| run)
}

/// Like `timed_boot`, calling `at_ready` with the VMM's pid when the guest reports ready.
pub fn timed_boot_with<T>(
    mut command: Command,
    limit: Duration,
    at_ready: impl FnOnce(u32) -> T,
) -> Result<(BootRun, T)> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let streams: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().context("stdout")?),
        Box::new(child.stderr.take().context("stderr")?),
    ];
    watch(child, streams, start, limit, at_ready)
}

/// Like `timed_boot_with`, the hull-vmm `command` jailed in `root` as the
/// runtime jails it (`vmm::jail::VmmCommand`).
pub fn timed_jailed_boot_with<T>(
    command: &Command,
    root: &Path,
    limits: vmm::jail::Limits,
    limit: Duration,
    at_ready: impl FnOnce(u32) -> T,
) -> Result<(BootRun, T)> {
    use vmm::jail::{Output, VmmCommand};
    let start = Instant::now();
    let mut child = VmmCommand::from_command(command)
        .jail(root, limits)
        .stdout(Output::Piped)
        .stderr(Output::Piped)
        .spawn()
        .with_context(|| format!("starting {command:?} jailed"))?;
    let streams: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().context("stdout")?),
        Box::new(child.stderr.take().context("stderr")?),
    ];
    watch(child, streams, start, limit, at_ready)
}

/// A VMM process being timed: std's, or one started by `vmm::jail`.
trait Watched {
    fn id(&self) -> u32;
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>>;
    fn kill(&mut self) -> std::io::Result<()>;
    fn wait(&mut self) -> std::io::Result<ExitStatus>;
}

impl Watched for std::process::Child {
    fn id(&self) -> u32 {
        std::process::Child::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        std::process::Child::try_wait(self)
    }
    fn kill(&mut self) -> std::io::Result<()> {
        std::process::Child::kill(self)
    }
    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        std::process::Child::wait(self)
    }
}

impl Watched for vmm::jail::VmmProcess {
    fn id(&self) -> u32 {
        vmm::jail::VmmProcess::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        vmm::jail::VmmProcess::try_wait(self)
    }
    fn kill(&mut self) -> std::io::Result<()> {
        vmm::jail::VmmProcess::kill(self)
    }
    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        vmm::jail::VmmProcess::wait(self)
    }
}

fn watch<T>(
    mut child: impl Watched,
    streams: Vec<Box<dyn Read + Send>>,
    start: Instant,
    limit: Duration,
    at_ready: impl FnOnce(u32) -> T,
) -> Result<(BootRun, T)> {
    let (tx, rx) = mpsc::channel();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    let line = line.trim_end_matches('\r').to_string();
                    if line.contains(GUEST_READY_MARKER) {
                        let _ = tx.send(start.elapsed());
                    }
                    lines.push(line);
                }
                lines
            })
        })
        .collect();
    drop(tx);
    let deadline = start + limit;
    let ready = rx.recv_timeout(limit);
    let probed = ready.is_ok().then(|| at_ready(child.id()));
    // The limit covers the whole run: a VMM stuck after ready is killed too.
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait()?;
            let console: Vec<String> = readers.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
            let tail = console
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("the VMM did not exit within {limit:?} ({status}); last output:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let console: Vec<String> = readers.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
    match (ready, probed) {
        (Ok(ready_after), Some(probed)) => Ok((
            BootRun {
                ready_after,
                console,
                status,
            },
            probed,
        )),
        _ => {
            let tail = console
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("the guest never reported ready within {limit:?} ({status}); last output:\n{tail}")
        }
    }
}

/// Resident memory of a VMM process beyond its guest's RAM, in KiB: the total
/// RSS minus the RSS of the anonymous mapping that is exactly the guest's size.
pub fn vmm_own_rss_kib(pid: u32, guest_memory_mib: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let guest_kib = u64::from(guest_memory_mib) * 1024;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let size = u64::from_str_radix(end, 16)
                .ok()?
                .saturating_sub(u64::from_str_radix(start, 16).ok()?);
            in_guest = size / 1024 == guest_kib;
        } else if first == "Rss:" {
            let kib: u64 = words.next()?.parse().ok()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    Some(total - guest)
}
