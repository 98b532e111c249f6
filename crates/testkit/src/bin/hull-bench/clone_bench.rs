//! `hull-bench clone`: instant clone against a cold boot, podman and QEMU.
//!
//! In one run, one environment (inside vmhost where KVM is not hardware):
//! `hull run IMAGE true` cloned (its VMM jailed, and with `HULL_JAIL=0`)
//! and `--cold-boot`; restore to agent-ready alone, jailed and not; clones started per second with 20 at once; Pss and Private_Dirty
//! per idle clone; `podman run --rm --network=none` of the same rootfs as an
//! image in podman's overlay store (a plain container, no VM) and a QEMU-KVM cold boot of the same kernel as peers.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use testkit::bench::{self, Summary};
use testkit::boot::{self, timed_boot};
use testkit::guest;
use testkit::oci::{busybox_layer, write_layout, Compression, ImageSpec};
use vmm::host::HostKvm;

use crate::{inside_vmhost, print_line};

const GUEST_MIB: u64 = 256;
const READY_LIMIT: Duration = Duration::from_secs(120);

pub struct Options {
    pub runs: usize,
    pub idle: usize,
    pub parallel: usize,
}

pub fn clone_bench(options: Options) -> Result<()> {
    if !matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
        println!("no hardware KVM here: running the clone benchmark inside vmhost");
        inside_vmhost(vec![
            "clone".into(),
            "--runs".into(),
            options.runs.to_string(),
            "--idle".into(),
            options.idle.to_string(),
            "--parallel".into(),
            options.parallel.to_string(),
        ])?;
        return Ok(());
    }
    let work = std::env::temp_dir().join(format!("hull-bench-clone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::copy(runtime::data_dir().join("guest.json"), data.join("guest.json"))
        .context("the guest is set up (hull setup)")?;
    // The QEMU peer's kernel, from the real data directory (before it changes).
    let kernel = guest::cloud_kernel()?;
    // This process makes writable disks itself, in the bench's data directory.
    std::env::set_var("HULL_DATA_DIR", &data);
    let result = measure(&work, &data, &kernel, &options);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn hull(data: &Path) -> Result<Command> {
    let mut command = Command::new(boot::workspace_binary("hull")?);
    command.env("HULL_DATA_DIR", data);
    Ok(command)
}

pub(crate) fn timed(command: &mut Command) -> Result<Duration> {
    if std::env::var_os("HULL_BENCH_VERBOSE").is_some() {
        eprintln!("  {command:?}");
    }
    let start = Instant::now();
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Traced (HULL_VMM_TRACE), the command's phases, and those of the
    // hull-vmm it ran with HULL_DEBUG_CONSOLE, are shown.
    if std::env::var_os(vmm::trace::TRACE_ENV).is_some() {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|line| line.contains(" trace: "))
            .for_each(|line| eprintln!("{line}"));
    }
    Ok(start.elapsed())
}

fn measure(work: &Path, data: &Path, kernel: &debkernel::KernelPackage, options: &Options) -> Result<()> {
    // A busybox image in the store, its disk built and the template made.
    let layout = work.join("layout");
    let spec = ImageSpec {
        layers: vec![(busybox_layer(&["sh", "true", "sleep"]), Compression::Gzip)],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    };
    write_layout(&layout, "v1", &[spec])?;
    timed(hull(data)?.args(["load", "-q", "-i"]).arg(&layout))?;
    let store = image::Store::open(data)?;
    let record = store.images()?.into_iter().next().context("the image loaded")?;
    let id = record.id.to_string();
    let template_made = timed(hull(data)?.args(["template", "create"]))?;
    timed(hull(data)?.args(["run", &id, "true"]))?;
    let disk = image::disk::image_disk(&store, &record)?;
    let template = only_template(data)?;

    // The same root filesystem as a directory, for podman.
    let rootfs = work.join("rootfs");
    unpack_rootfs(&disk, &rootfs)?;
    let podman = crate::podman_peer::Podman::with_rootfs(work, &rootfs)?;

    let (mut cloned, mut unjailed, mut cold, mut peer_podman) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 1..=options.runs {
        eprintln!("clone bench: run {i}/{}", options.runs);
        cloned.push(timed(hull(data)?.args(["run", &id, "true"]))?);
        unjailed.push(timed(hull(data)?.env("HULL_JAIL", "0").args(["run", &id, "true"]))?);
        cold.push(timed(hull(data)?.args(["run", "--cold-boot", &id, "true"]))?);
        // hull run has no network: neither has the peer.
        if let Some(podman) = &podman {
            peer_podman.push(timed(&mut podman.run_rm(false, &["true"]))?);
        }
    }

    let restore_dir = work.join("restores");
    std::fs::create_dir_all(&restore_dir)?;
    let harness = Restore::new(&template, &disk, &restore_dir)?;
    let (mut restore, mut restore_jailed) = (Vec::new(), Vec::new());
    for i in 0..options.runs {
        restore.push(harness.start(&format!("r{i}"), false)?.ready_after);
        restore_jailed.push(harness.start(&format!("j{i}"), true)?.ready_after);
    }

    // N at once: spawn all, wait until every agent has called in.
    let start = Instant::now();
    let burst: Vec<ReadyClone> = (0..options.parallel)
        .map(|i| harness.spawn(&format!("p{i}"), false))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|pending| pending.wait())
        .collect::<Result<Vec<_>>>()?;
    let burst_elapsed = start.elapsed();
    drop(burst);
    let per_second = options.parallel as f64 / burst_elapsed.as_secs_f64();

    // Idle clones: restored, agent connected, nothing running.
    let mut idle = Vec::new();
    let idle_start = Instant::now();
    for i in 0..options.idle {
        idle.push(harness.start(&format!("i{i}"), false)?);
        if (i + 1) % 10 == 0 || i + 1 == options.idle {
            // Where a large count stops scaling shows here, not only at the end.
            eprintln!(
                "clone bench: {} idle clones ready after {:.1} s; host MemAvailable {} MiB; load {}",
                i + 1,
                idle_start.elapsed().as_secs_f64(),
                vmm::host::meminfo_mib("MemAvailable").unwrap_or(0),
                std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
            );
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let memory: Vec<Rollup> = idle.iter().filter_map(|c| Rollup::of(c.child.id())).collect();
    drop(idle);

    let initramfs = guest::busybox_initramfs(kernel, &work.join("qemu.cpio"), "$B poweroff -f")?;
    let mut qemu = Vec::new();
    for _ in 0..options.runs.min(5) {
        let run = timed_boot(
            boot::qemu_command(&kernel.vmlinuz(), &initramfs, GUEST_MIB as u32),
            READY_LIMIT * 3,
        )?;
        qemu.push(run.ready_after);
    }

    report(Report {
        options,
        template_made,
        template_disk: allocated(&vmm::snapshot::memory_path(&template)),
        cloned: Summary::of(&cloned).context("no runs")?,
        unjailed: Summary::of(&unjailed).context("no runs")?,
        cold: Summary::of(&cold).context("no runs")?,
        restore: Summary::of(&restore).context("no runs")?,
        restore_jailed: Summary::of(&restore_jailed).context("no runs")?,
        per_second,
        burst_elapsed,
        memory,
        podman: Summary::of(&peer_podman),
        qemu: Summary::of(&qemu).context("no runs")?,
    })
}

struct Report<'a> {
    options: &'a Options,
    template_made: Duration,
    template_disk: u64,
    cloned: Summary,
    unjailed: Summary,
    cold: Summary,
    restore: Summary,
    restore_jailed: Summary,
    per_second: f64,
    burst_elapsed: Duration,
    memory: Vec<Rollup>,
    podman: Option<Summary>,
    qemu: Summary,
}

fn report(r: Report) -> Result<()> {
    let environment = bench::environment();
    println!("environment: {environment}");
    println!(
        "template: made in {:.1} s, its memory file occupies {:.1} MiB",
        r.template_made.as_secs_f64(),
        r.template_disk as f64 / (1 << 20) as f64
    );
    print_line("hull run IMAGE true (clone, jailed VMM)", &r.cloned);
    print_line("hull run IMAGE true (clone, HULL_JAIL=0)", &r.unjailed);
    print_line("hull run --cold-boot IMAGE true", &r.cold);
    print_line("restore to agent ready (hull-vmm alone)", &r.restore);
    print_line("restore to agent ready (hull-vmm --jail)", &r.restore_jailed);
    let jail_run = r.cloned.median_ms / r.unjailed.median_ms - 1.0;
    let jail_restore = r.restore_jailed.median_ms / r.restore.median_ms - 1.0;
    println!(
        "the jail adds {:+.1}% to hull run and {:+.1}% to a restore (medians)",
        jail_run * 100.0,
        jail_restore * 100.0
    );
    print_line("peer: QEMU-KVM microvm cold boot to ready", &r.qemu);
    match &r.podman {
        Some(p) => print_line("peer: podman run --rm (no VM)", p),
        None => println!("peer: podman is not installed here; no podman figures"),
    }
    println!(
        "{} clones at once: all ready in {:.0} ms = {:.1} clones/s",
        r.options.parallel,
        r.burst_elapsed.as_secs_f64() * 1000.0,
        r.per_second
    );
    let kib = |f: fn(&Rollup) -> u64| -> Vec<u64> {
        let mut v: Vec<u64> = r.memory.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let (pss, dirty, rss) = (kib(|m| m.pss_kib), kib(|m| m.private_dirty_kib), kib(|m| m.rss_kib));
    let med = |v: &[u64]| v.get(v.len() / 2).copied().unwrap_or(0);
    let p95 = |v: &[u64]| {
        v.get((v.len() * 95).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{} idle clones (agent ready, no command): Pss median {} KiB p95 {} KiB; Private_Dirty median {} KiB p95 {} KiB; Rss median {} KiB",
        r.memory.len(),
        med(&pss),
        p95(&pss),
        med(&dirty),
        p95(&dirty),
        med(&rss)
    );
    let ratio_qemu = r.restore.median_ms / r.qemu.median_ms;
    println!("restore / QEMU cold boot (median): {ratio_qemu:.3} (target at most 0.05)");
    let ratio_podman = r.podman.as_ref().map(|p| r.cloned.median_ms / p.median_ms);
    if let Some(ratio) = ratio_podman {
        println!("hull run (clone) / podman run (median): {ratio:.2} (target at most 2)");
    }
    let json = json!({
        "bench": "clone",
        "environment": environment,
        "guest_memory_mib": GUEST_MIB,
        "template_made_ms": r.template_made.as_millis() as u64,
        "template_memory_file_bytes": r.template_disk,
        "hull_run_image_true_clone": r.cloned.to_json(),
        "hull_run_image_true_clone_unjailed": r.unjailed.to_json(),
        "hull_run_image_true_cold_boot": r.cold.to_json(),
        "restore_to_agent_ready": r.restore.to_json(),
        "restore_to_agent_ready_jailed": r.restore_jailed.to_json(),
        "jail_adds_to_run_median": (jail_run * 1000.0).round() / 1000.0,
        "jail_adds_to_restore_median": (jail_restore * 1000.0).round() / 1000.0,
        "parallel": {"clones": r.options.parallel, "all_ready_ms": r.burst_elapsed.as_millis() as u64, "clones_per_second": (r.per_second * 10.0).round() / 10.0},
        "idle_clones": {
            "count": r.memory.len(),
            "pss_kib": {"median": med(&pss), "p95": p95(&pss)},
            "private_dirty_kib": {"median": med(&dirty), "p95": p95(&dirty)},
            "rss_kib": {"median": med(&rss)},
        },
        "peer_qemu_microvm_cold_boot": r.qemu.to_json(),
        "peer_podman_run_rm": r.podman.as_ref().map(Summary::to_json),
        "restore_over_qemu_median": (ratio_qemu * 1000.0).round() / 1000.0,
        "clone_run_over_podman_median": ratio_podman.map(|r| (r * 100.0).round() / 100.0),
    });
    let path = bench::write_report("clone", &json)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn only_template(data: &Path) -> Result<PathBuf> {
    std::fs::read_dir(data.join("templates"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .context("the template was made")
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Copies the image disk's files out with debugfs (no mount needed).
pub(crate) fn unpack_rootfs(disk: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let status = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dest.display()))
        .arg(disk)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("debugfs rdump of {} failed", disk.display());
    }
    Ok(())
}

/// hull-vmm restores of one template, each with its own writable disk and
/// vsock socket, timed from spawn to the agent's hello.
struct Restore {
    vmm: PathBuf,
    template: PathBuf,
    disk: PathBuf,
    dir: PathBuf,
}

struct PendingClone {
    start: Instant,
    child: vmm::jail::VmmProcess,
    listener: UnixListener,
}

/// Dropped, its VMM is killed (`vmm::jail::VmmProcess`).
struct ReadyClone {
    ready_after: Duration,
    child: vmm::jail::VmmProcess,
    _agent: UnixStream,
}

impl Restore {
    fn new(template: &Path, disk: &Path, dir: &Path) -> Result<Restore> {
        Ok(Restore {
            vmm: boot::workspace_binary("hull-vmm")?,
            template: template.to_path_buf(),
            disk: disk.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// Starts a clone; `jailed`, its VMM is jailed in a directory of its
    /// own holding its sockets, as the runtime does.
    fn spawn(&self, name: &str, jailed: bool) -> Result<PendingClone> {
        let writable = self.dir.join(format!("{name}.ext4"));
        runtime::writable::create(&writable, runtime::writable::DiskKind::Layer)?;
        let sockets = self.dir.join(name);
        std::fs::create_dir_all(&sockets)?;
        let uds = sockets.join("vsock.sock");
        let agent_port = PathBuf::from(format!("{}_{}", uds.display(), proto::AGENT_PORT));
        let listener = UnixListener::bind(&agent_port)?;
        listener.set_nonblocking(true)?;
        if jailed {
            runtime::run::open_to_jailed_vmm(&sockets, 0o710)?;
            runtime::run::open_to_jailed_vmm(&agent_port, 0o660)?;
        }
        // The template's volume slots, bound to nothing (as for a container without volumes).
        let spare_slots = runtime::volume::slot_disks(&[])?;
        let start = Instant::now();
        let mut command = vmm::jail::VmmCommand::new(&self.vmm);
        command
            .arg("--restore")
            .arg(&self.template)
            .args(["--memory", &GUEST_MIB.to_string(), "--cpus", "1"])
            .arg("--disk")
            .arg(format!("{}:ro", self.disk.display()))
            .arg("--disk")
            .arg(&writable);
        for slot in &spare_slots {
            command.arg("--disk").arg(slot);
        }
        if jailed {
            command.jail(&sockets, vmm::jail::Limits::new(GUEST_MIB, 1, None)?);
        }
        // The template's NIC slots, plugged into nothing (as for `--network none`).
        command.arg("--net-slots").arg(vmm::vm::MAX_NICS.to_string());
        // And its virtio-fs device, sharing nothing (a container without binds).
        command.arg("--fs");
        let child = command
            .arg("--vsock-uds")
            .arg(&uds)
            .stdout(vmm::jail::Output::Null)
            .spawn()
            .with_context(|| format!("starting {}", self.vmm.display()))?;
        Ok(PendingClone { start, child, listener })
    }

    fn start(&self, name: &str, jailed: bool) -> Result<ReadyClone> {
        self.spawn(name, jailed)?.wait()
    }
}

impl PendingClone {
    /// Waits for the agent's connection and its hello frame.
    fn wait(mut self) -> Result<ReadyClone> {
        loop {
            runtime::run::wait_readable(&self.listener, Duration::from_millis(50));
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    let mut len = [0u8; 4];
                    stream.read_exact(&mut len)?;
                    let mut hello = vec![0u8; u32::from_le_bytes(len) as usize];
                    stream.read_exact(&mut hello)?;
                    return Ok(ReadyClone {
                        ready_after: self.start.elapsed(),
                        child: self.child,
                        _agent: stream,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("a restored clone's hull-vmm exited: {status}");
            }
            if self.start.elapsed() > READY_LIMIT {
                let _ = self.child.kill();
                bail!("a clone did not reach its agent within {READY_LIMIT:?}");
            }
        }
    }
}

/// A process's memory from /proc/PID/smaps_rollup.
struct Rollup {
    rss_kib: u64,
    pss_kib: u64,
    private_dirty_kib: u64,
}

impl Rollup {
    fn of(pid: u32) -> Option<Rollup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let label = format!("{name}:");
            text.lines()
                .find_map(|l| l.strip_prefix(label.as_str()))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Some(Rollup {
            rss_kib: field("Rss")?,
            pss_kib: field("Pss")?,
            private_dirty_kib: field("Private_Dirty")?,
        })
    }
}
