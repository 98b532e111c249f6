//! `hull-bench migrate`: live migration of a running guest on one host,
//! hull-vmm to hull-vmm beside QEMU to QEMU (its `migrate` over a unix
//! socket, as its users run it: no auto-converge), both with the same
//! downtime budget (QEMU's default, 300 ms: hull's own default of 50 ms is
//! for hardware, and the emulated test host is 20-50x slower), with the
//! same kernel, busybox guest and memory size:
//! downtime, total time and bytes sent, for a guest that is idle, one that
//! rewrites a 32 MiB tmpfs file over and over with a short rest, one
//! that rewrites 64 MiB with no rest (these two write zeros, which both
//! VMMs send as a flag: inside vmhost both converge), and one that copies
//! 32 MiB of random bytes over and over, faster than the link carries
//! them (each VMM gets `CONVERGE_LIMIT`: a migration still going then is
//! cancelled and counted as not converged; QEMU, without auto-converge as
//! its users run it, is expected not to). Downtime is the
//! same window for both: the source's pause to the guest running at the
//! destination (QEMU's from its STOP and RESUME events; its own figure,
//! which ends at the source's last byte, is reported beside it). Each run checks
//! that the guest goes on at the destination (a failed peer looks fast).
//! The random-bytes guest runs again over a link paced at 8 MB/s (a relay
//! between the VMMs, the same for both): the row where a VMM without
//! auto-converge cannot finish.
//! Runs are interleaved; medians and p95. hull-vmm runs twice: as it
//! runs by default (pages as LZ4 blocks) and without LZ4 (`hull_vmm_raw`);
//! with `--baseline-vmm PATH`, another build's hull-vmm runs a third time
//! in each run (`hull_vmm_baseline`, LZ4), for a change's effect measured
//! in one boot of the test host (its speed moves from one to the next).
//!
//! Then a whole container's move through hulld (`POST
//! /containers/{id}/migrate`, as `hull migrate` asks it): an idle busybox
//! container of each size, moved `runs` times, its own report's downtime,
//! total time and bytes (the new VMM's start and the agent's return are in
//! its total), beside the QEMU idle row of the same size from this run;
//! and the same container moved between two hullds on loopback and back
//! (`to=HOST`), both holding the template.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testkit::bench::{self, Summary};
use testkit::boot::{self, timed_boot_with};
use testkit::guest;
use vmm::host::HostKvm;

use crate::inside_vmhost;

const LIMIT: Duration = Duration::from_secs(600);
/// How long either VMM may take to converge (hull-vmm's `max_seconds`;
/// QEMU's migration is cancelled then).
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);
/// A line the guest prints twice a second, wherever it runs.
const ALIVE: &str = "alive";

/// What the guest does while it is moved.
#[derive(Clone, Copy)]
enum Load {
    Idle,
    /// Rewrites a 32 MiB file on a tmpfs, with a short pause each time.
    Dirtying,
    /// Rewrites a 64 MiB file on a tmpfs without a rest.
    Continuous,
    /// Copies 32 MiB of random bytes over and over on a tmpfs: pages that
    /// are neither zeros nor compressible, written faster than the link
    /// carries them.
    Random,
    /// The same over a link of `SLOW_LINK` bytes a second (a relay between
    /// the VMMs paces what the source sends): far slower than the guest
    /// writes.
    SlowLink,
}

/// The slow link's rate: 8 MB/s (64 Mbit/s).
const SLOW_LINK: u64 = 8_000_000;

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Dirtying => "dirtying",
            Load::Continuous => "continuous",
            Load::Random => "random",
            Load::SlowLink => "slow-link",
        }
    }

    fn all() -> [Load; 5] {
        [
            Load::Idle,
            Load::Dirtying,
            Load::Continuous,
            Load::Random,
            Load::SlowLink,
        ]
    }

    /// The link's rate, if it is paced.
    fn link_limit(self) -> Option<u64> {
        match self {
            Load::SlowLink => Some(SLOW_LINK),
            _ => None,
        }
    }

    /// How long the guest runs its load before it is moved.
    fn warmup(self) -> Duration {
        match self {
            // Its 32 MiB of random bytes are made first.
            Load::Random | Load::SlowLink => Duration::from_secs(12),
            _ => Duration::from_secs(2),
        }
    }

    fn script(self) -> String {
        match self {
            Load::Idle => format!("while true; do echo {ALIVE}; $B sleep 0.5; done"),
            Load::Dirtying => format!(
                "$B mkdir -p /scratch; $B mount -t tmpfs -o size=64m tmpfs /scratch; \
                 while true; do $B dd if=/dev/zero of=/scratch/buffer bs=1M count=32 2>/dev/null; \
                 echo {ALIVE}; $B sleep 0.2; done"
            ),
            Load::Continuous => format!(
                "$B mkdir -p /scratch; $B mount -t tmpfs -o size=96m tmpfs /scratch; \
                 while true; do $B dd if=/dev/zero of=/scratch/buffer bs=1M count=64 2>/dev/null; \
                 echo {ALIVE}; done"
            ),
            Load::Random | Load::SlowLink => format!(
                "$B mkdir -p /scratch; $B mount -t tmpfs -o size=80m tmpfs /scratch; \
                 $B dd if=/dev/urandom of=/scratch/source bs=1M count=32 2>/dev/null; \
                 while true; do $B cp /scratch/source /scratch/copy; echo {ALIVE}; done"
            ),
        }
    }
}

/// One migration's figures (zero for one that did not converge).
#[derive(Clone)]
struct Moved {
    /// Within `CONVERGE_LIMIT`.
    converged: bool,
    /// From the source's pause to the guest running at the destination.
    downtime: Duration,
    /// QEMU's own downtime figure, which ends when the source has sent its
    /// last bytes: it leaves out the destination's load and start.
    reported_downtime: Option<Duration>,
    total: Duration,
    bytes: u64,
    /// hull-vmm's highest auto-converge throttle (percent), if it reports one.
    max_throttle: Option<u8>,
}

impl Moved {
    /// A migration cancelled at `CONVERGE_LIMIT`.
    fn not_converged() -> Moved {
        Moved {
            converged: false,
            downtime: Duration::ZERO,
            reported_downtime: None,
            total: CONVERGE_LIMIT,
            bytes: 0,
            max_throttle: None,
        }
    }
}

/// `loads`: the rows to run, by load name, and `container` for the
/// container rows.
pub fn migrate_bench(
    runs: usize,
    sizes: &[u32],
    downtime_ms: u32,
    loads: &[String],
    baseline: Option<&Path>,
) -> Result<()> {
    let wanted = |name: &str| loads.iter().any(|l| l == name);
    if let Some(unknown) = loads
        .iter()
        .find(|l| l.as_str() != "container" && !Load::all().iter().any(|load| load.name() == l.as_str()))
    {
        bail!("no load {unknown:?}: idle, dirtying, continuous, random, slow-link or container");
    }
    if !matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
        println!("no hardware KVM here: running the migration benchmark inside vmhost");
        let sizes: Vec<String> = sizes.iter().map(u32::to_string).collect();
        let mut args = vec![
            "migrate".into(),
            "--runs".into(),
            runs.to_string(),
            "--memory".into(),
            sizes.join(","),
            "--downtime-ms".into(),
            downtime_ms.to_string(),
            "--loads".into(),
            loads.join(","),
        ];
        if let Some(path) = baseline {
            args.extend(["--baseline-vmm".into(), path.canonicalize()?.display().to_string()]);
        }
        inside_vmhost(args)?;
        return Ok(());
    }
    let kernel = guest::cloud_kernel()?;
    let work = std::env::temp_dir().join(format!("hull-bench-migrate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ours = boot::workspace_binary("hull-vmm")?;
    let mut rows = Vec::new();
    for &mib in sizes {
        for load in Load::all().into_iter().filter(|l| wanted(l.name())) {
            let initramfs =
                guest::busybox_initramfs(&kernel, &work.join(format!("{}.cpio", load.name())), &load.script())?;
            let (mut hull, mut hull_raw, mut qemu) = (Vec::new(), Vec::new(), Vec::new());
            let mut earlier = Vec::new();
            for run in 1..=runs {
                eprintln!("migrate {mib} MiB {} run {run}/{runs}", load.name());
                let dir = work.join(format!("{mib}-{}-{run}", load.name()));
                std::fs::create_dir_all(&dir)?;
                let mut builds: Vec<(&Path, bool, &mut Vec<Moved>)> =
                    vec![(&ours, true, &mut hull), (&ours, false, &mut hull_raw)];
                if let Some(path) = baseline {
                    builds.push((path, true, &mut earlier));
                }
                for (at, (vmm, compress, moves)) in builds.into_iter().enumerate() {
                    moves.push(hull_run(
                        vmm,
                        (&kernel.vmlinuz(), &initramfs),
                        mib,
                        downtime_ms,
                        compress,
                        load,
                        &dir.join(format!("hull-{at}")),
                    )?);
                }
                qemu.push(qemu_run(
                    &kernel.vmlinuz(),
                    &initramfs,
                    mib,
                    downtime_ms,
                    load,
                    &dir.join("qemu"),
                )?);
                let _ = std::fs::remove_dir_all(&dir);
            }
            let mut peers = vec![("hull_vmm", &hull), ("hull_vmm_raw", &hull_raw), ("qemu", &qemu)];
            if baseline.is_some() {
                peers.push(("hull_vmm_baseline", &earlier));
            }
            rows.push(report_row(mib, load, &peers)?);
        }
        if !wanted("container") {
            continue;
        }
        eprintln!("migrate {mib} MiB container: {runs} moves through hulld");
        let (moves, _) = container_moves(mib, runs, downtime_ms, false)?;
        rows.push(container_row(mib, &moves, &rows, None)?);
        eprintln!("migrate {mib} MiB container: {runs} moves between two hullds");
        let (moves, files) = container_moves(mib, runs, downtime_ms, true)?;
        rows.push(container_row(mib, &moves, &rows, Some(&files))?);
    }
    let _ = std::fs::remove_dir_all(&work);
    let report = json!({
        "bench": "migrate",
        "what": "live migration of a running busybox guest (Debian cloud kernel, 1 vCPU) between two VMMs on one host, over a unix socket",
        "downtime_budget_ms": downtime_ms,
        "hull_vmm": "auto-converge, pages as LZ4 blocks (the default)",
        "hull_vmm_raw": "auto-converge, pages as they are (compress=0)",
        "qemu": "QEMU's defaults but the downtime limit: no auto-converge, migrate unix:",
        "kernel": kernel.release,
        "environment": bench::environment(),
        "runs": runs,
        "rows": rows,
    });
    let path = bench::write_report("migrate", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A load's row: each peer's moves (`hull_vmm_raw`: without LZ4).
fn report_row(mib: u32, load: Load, runs: &[(&str, &Vec<Moved>)]) -> Result<Value> {
    let summary =
        |moved: &[Moved], pick: fn(&Moved) -> Duration| Summary::of(&moved.iter().map(pick).collect::<Vec<_>>());
    let bytes = |moved: &[Moved]| -> Vec<u64> {
        let mut b: Vec<u64> = moved.iter().map(|m| m.bytes).collect();
        b.sort_unstable();
        b
    };
    let mut peers = serde_json::Map::new();
    for &(name, moved) in runs {
        let converged: Vec<Moved> = moved.iter().filter(|m| m.converged).cloned().collect();
        if converged.is_empty() {
            println!(
                "{mib:>5} MiB {:<11} {name:<12} did not converge within {} s ({} runs, cancelled)",
                load.name(),
                CONVERGE_LIMIT.as_secs(),
                moved.len()
            );
            peers.insert(name.into(), json!({ "converged_runs": 0, "runs": moved.len() }));
            continue;
        }
        let moved = &converged[..];
        let downtime = summary(moved, |m| m.downtime).context("no runs")?;
        let total = summary(moved, |m| m.total).context("no runs")?;
        let sent = bytes(moved);
        let median_bytes = sent[sent.len() / 2];
        println!(
            "{mib:>5} MiB {:<11} {name:<12} downtime median {:>7.1} ms p95 {:>7.1} ms   total median {:>8.1} ms   sent median {:>7.2} MiB",
            load.name(),
            downtime.median_ms,
            downtime.p95_ms,
            total.median_ms,
            median_bytes as f64 / (1 << 20) as f64
        );
        let mut peer = json!({
            "converged_runs": moved.len(),
            "downtime": downtime.to_json(),
            "total": total.to_json(),
            "bytes_sent_median": median_bytes,
            "bytes_sent": sent,
        });
        let reported: Vec<Duration> = moved.iter().filter_map(|m| m.reported_downtime).collect();
        if let Some(reported) = Summary::of(&reported) {
            println!(
                "{:>28} its own downtime figure (to the source's last byte) median {:>7.1} ms p95 {:>7.1} ms",
                name, reported.median_ms, reported.p95_ms
            );
            peer["reported_downtime"] = reported.to_json();
        }
        let throttles: Vec<u8> = moved.iter().filter_map(|m| m.max_throttle).collect();
        if !throttles.is_empty() {
            println!("{:>28} auto-converge's highest throttle per run: {throttles:?} %", name);
            peer["max_throttle"] = json!(throttles);
        }
        peers.insert(name.into(), peer);
    }
    Ok(json!({ "memory_mib": mib, "load": load.name(), "peers": peers }))
}

/// An idle container of `mib` moved `runs` times through hulld; each move
/// checked (the container prints on and `docker exec` reaches it). With
/// `between_hulls`, to another hulld (its own data, run directory and
/// firewall names, on loopback) and back, in turn.
fn container_moves(mib: u32, runs: usize, downtime_ms: u32, between_hulls: bool) -> Result<(Vec<Moved>, Vec<u64>)> {
    use testkit::hulld::{text, Hulld};
    let port = |p: u16| format!("127.0.0.1:{p}");
    let free_port = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let listens = [port(free_port()?), port(free_port()?)];
    let args: Vec<&str> = match between_hulls {
        true => vec!["--migration-listen", &listens[0]],
        false => Vec::new(),
    };
    let (first, _registry, image) = Hulld::with_busybox_args("bench-migrate", &args)?;
    let second = match between_hulls {
        true => {
            let second = Hulld::start_with("bench-migrate-to", &["--migration-listen", &listens[1]])?;
            let pulled = second.docker(&["pull", "-q", &image]);
            if !pulled.status.success() {
                bail!("docker pull on the second hulld: {}", text(&pulled.stderr));
            }
            Some(second)
        }
        false => None,
    };
    let name = "moving";
    let script = format!("while true; do echo {ALIVE}; sleep 0.5; done");
    // Two hullds on one host's network stack cannot have one default
    // network (their bridges take different subnets): no network there.
    let network = match between_hulls {
        true => "none",
        false => "bridge",
    };
    let started = first.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "-m",
        &format!("{mib}m"),
        &image,
        "sh",
        "-c",
        &script,
    ]);
    if !started.status.success() {
        bail!("docker run: {}", text(&started.stderr));
    }
    let alive = |hulld: &Hulld| text(&hulld.docker(&["logs", name]).stdout).matches(ALIVE).count();
    let goes_on = |hulld: &Hulld, after: usize| -> Result<()> {
        let deadline = Instant::now() + LIMIT;
        while alive(hulld) <= after || !hulld.docker(&["exec", name, "true"]).status.success() {
            if Instant::now() > deadline {
                bail!("the container did not go on after its move:\n{}", hulld.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    };
    goes_on(&first, 0)?;
    let mut moves = Vec::new();
    // Between hullds: the image disk, log and template sent beside the VM.
    let mut files = Vec::new();
    for run in 1..=runs {
        eprintln!("migrate {mib} MiB container move {run}/{runs}");
        // Where it is, and where it goes (`to`: none within one host).
        let (from, to, query) = match &second {
            Some(second) if run % 2 == 1 => (&first, second, format!("&to={}", listens[1])),
            Some(second) => (second, &first, format!("&to={}", listens[0])),
            None => (&first, &first, String::new()),
        };
        let before = alive(from);
        let (head, body) = from.raw(&format!(
            "POST /containers/{name}/migrate?downtime={downtime_ms}{query} HTTP/1.1\r\nHost: hull\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        let report: Value = serde_json::from_str(body.trim()).unwrap_or_default();
        let field = |key: &str| report.get(key).and_then(Value::as_u64);
        let (Some(downtime), Some(total), Some(bytes)) = (field("DowntimeMs"), field("TotalMs"), field("BytesSent"))
        else {
            bail!(
                "the move failed: {} {}",
                head.lines().next().unwrap_or_default(),
                body.trim()
            );
        };
        goes_on(to, before)?;
        if between_hulls {
            files.push(
                ["TemplateBytes", "ImageDiskBytes", "LogBytes"]
                    .iter()
                    .filter_map(|k| field(k))
                    .sum(),
            );
        }
        moves.push(Moved {
            converged: true,
            downtime: Duration::from_millis(downtime),
            reported_downtime: None,
            total: Duration::from_millis(total),
            bytes,
            max_throttle: None,
        });
    }
    for hulld in std::iter::once(&first).chain(second.as_ref()) {
        let _ = hulld.docker(&["rm", "-f", name]);
    }
    Ok((moves, files))
}

/// The container's row, with the ratio to QEMU's idle guest of the same size.
/// `files`: between hullds, the bytes of the files sent beside each move.
fn container_row(mib: u32, moves: &[Moved], rows: &[Value], files: Option<&[u64]>) -> Result<Value> {
    let between_hulls = files.is_some();
    let (label, what) = match between_hulls {
        true => (
            "between hullds",
            "a busybox container (--network none) moved between two hullds on loopback and back (POST /containers/{id}/migrate?to=HOST): \
             the VM's stream (its own pages: both hullds have the template) and its writable disk; the image disk \
             and log go beside it (files_bytes)",
        ),
        false => (
            "container",
            "a busybox container moved to a new VMM on its host through hulld (POST /containers/{id}/migrate)",
        ),
    };
    let downtime = Summary::of(&moves.iter().map(|m| m.downtime).collect::<Vec<_>>()).context("no moves")?;
    let total = Summary::of(&moves.iter().map(|m| m.total).collect::<Vec<_>>()).context("no moves")?;
    let mut sent: Vec<u64> = moves.iter().map(|m| m.bytes).collect();
    sent.sort_unstable();
    let median_bytes = sent[sent.len() / 2];
    println!(
        "{mib:>5} MiB {:<11} {:<9} downtime median {:>7.1} ms p95 {:>7.1} ms   total median {:>8.1} ms   sent median {:>7.2} MiB",
        "idle",
        label,
        downtime.median_ms,
        downtime.p95_ms,
        total.median_ms,
        median_bytes as f64 / (1 << 20) as f64
    );
    let qemu_idle = rows
        .iter()
        .find(|r| r["memory_mib"] == mib && r["load"] == "idle")
        .and_then(|r| r["peers"]["qemu"]["downtime"]["median_ms"].as_f64());
    let ratio = qemu_idle.filter(|q| *q > 0.0).map(|q| downtime.median_ms / q);
    if let Some(ratio) = ratio {
        println!("{label:>28} downtime {ratio:.2}x QEMU's idle guest of the same size (this run)");
    }
    Ok(json!({
        "memory_mib": mib,
        "load": "idle",
        "what": what,
        "peers": {
            (if between_hulls { "hull_container_between_hullds" } else { "hull_container" }): {
                "moves": moves.len(),
                "downtime": downtime.to_json(),
                "total": total.to_json(),
                "bytes_sent_median": median_bytes,
                "bytes_sent": sent,
                "downtime_vs_qemu_idle": ratio,
                "files_bytes": files,
            }
        }
    }))
}

/// Where the source connects to reach the destination listening on
/// `incoming`: that socket, or with `limit` a relay in `dir` that passes
/// the source's bytes on at `limit` bytes a second (the answers unpaced),
/// for one connection.
fn link_to(incoming: &Path, limit: Option<u64>, dir: &Path) -> Result<PathBuf> {
    match limit {
        Some(limit) => Ok(testkit::paced_link::paced_relay(
            incoming,
            limit,
            &dir.join("slow-link.sock"),
        )?),
        None => Ok(incoming.to_path_buf()),
    }
}

/// Waits until `path` exists.
fn wait_for(path: &Path) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} never appeared", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until QEMU's cancelled migration has ended (its guest runs on).
fn wait_cancelled(qmp: &mut Qmp) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = qmp.execute("query-migrate", json!({}))?;
        match status.get("status").and_then(Value::as_str) {
            Some("cancelled") => return Ok(()),
            _ if Instant::now() > deadline => bail!("QEMU's migration was not cancelled: {status}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until the destination's console (`log`) shows the guest alive,
/// then ends the destination.
fn check_alive_and_end(mut destination: Child, log: &Path, who: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let result = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains(ALIVE)) {
            break Ok(());
        }
        if let Ok(Some(status)) = destination.try_wait() {
            break Err(anyhow::anyhow!(
                "{who}: the destination ended ({status}) without the guest going on"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("{who}: the guest did not go on at the destination"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = destination.kill();
    let _ = destination.wait();
    result
}

/// One move from a hull-vmm to another, both the binary `vmm`;
/// `compress`: LZ4 on the pages.
fn hull_run(
    vmm: &Path,
    (kernel, initramfs): (&Path, &Path),
    mib: u32,
    downtime_ms: u32,
    compress: bool,
    load: Load,
    dir: &Path,
) -> Result<Moved> {
    std::fs::create_dir_all(dir)?;
    let (control, incoming, dest_log) = (dir.join("source.ctl"), dir.join("in.sock"), dir.join("dest.log"));
    let mut source = boot::hull_vmm_command_of(vmm, kernel, initramfs, mib);
    source.arg("--control-socket").arg(&control);
    let mut destination = Command::new(vmm);
    destination
        .arg("--incoming")
        .arg(&incoming)
        .args(["--memory", &mib.to_string(), "--serial-log"])
        .arg(&dest_log)
        .stdout(Stdio::null());
    // Traced (HULL_VMM_TRACE), the destination's marks go beside the source's.
    let traced = std::env::var_os(vmm::trace::TRACE_ENV).is_some();
    if !traced {
        destination.stderr(Stdio::null());
    }
    let (run, moved) = timed_boot_with(source, LIMIT, |pid| -> Result<(proto::vmm_control::VmmReply, Child)> {
        let mut destination = destination.spawn().context("starting the destination hull-vmm")?;
        wait_for(&incoming)?;
        let to = link_to(&incoming, load.link_limit(), dir)?;
        // The load runs a while first.
        std::thread::sleep(load.warmup());
        let link = UnixStream::connect(&to)?;
        let control = UnixStream::connect(&control)?;
        let request = proto::vmm_control::VmmRequest::Migrate {
            downtime_ms,
            max_seconds: CONVERGE_LIMIT.as_secs() as u32,
            send_disks: false,
            uncompressed: !compress,
            // As if to another host: the disks are flushed in the pause, as QEMU does.
            same_host: false,
            send_shares: Vec::new(),
        };
        let reply = vmm::control::ask(&control, &request, Some(&link))?;
        if let proto::vmm_control::VmmReply::Failed { .. } = reply {
            // Given up: the source runs on; both VMMs are ended here.
            let _ = destination.kill();
            let _ = destination.wait();
            // SAFETY: kill(2) of the source VMM this bench started (by its pid).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        Ok((reply, destination))
    })?;
    let (reply, destination) = moved?;
    if let proto::vmm_control::VmmReply::Failed { reason } = &reply {
        if reason.contains("faster than it could be sent") {
            return Ok(Moved::not_converged());
        }
    }
    if traced {
        run.console
            .iter()
            .filter(|line| line.contains("hull-vmm trace: "))
            .for_each(|line| eprintln!("source {line}"));
    }
    let proto::vmm_control::VmmReply::Migrated {
        downtime_ms,
        total_ms,
        bytes_sent,
        max_throttle,
        confirmed: true,
        ..
    } = reply
    else {
        bail!("hull-vmm did not migrate: {reply:?}\n{}", run.console.join("\n"));
    };
    if run.status.code() != Some(5) {
        bail!("the source hull-vmm ended with {}", run.status);
    }
    check_alive_and_end(destination, &dest_log, "hull-vmm")?;
    Ok(Moved {
        converged: true,
        downtime: Duration::from_millis(downtime_ms),
        reported_downtime: None,
        total: Duration::from_millis(total_ms),
        bytes: bytes_sent,
        max_throttle: Some(max_throttle),
    })
}

/// A QMP connection, and the events it has heard.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Qmp> {
        wait_for(path)?;
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(LIMIT))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting)?;
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// The next message, events kept aside.
    fn next(&mut self, during: &str) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP closed during {during}");
        }
        let message: Value = serde_json::from_str(&line)?;
        if message.get("event").is_some() {
            self.events.push(message.clone());
        }
        Ok(message)
    }

    /// Runs one command; its `return`, past any events.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let line = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{line}")?;
        loop {
            let answer = self.next(command)?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                bail!("QMP {command}: {error}");
            }
        }
    }
}

impl Qmp {
    /// When the event `name` happened (QEMU's wall clock), waiting for it.
    fn event_time(&mut self, name: &str) -> Result<Duration> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let seen = self.events.iter().find(|e| e["event"] == name);
            if let Some(timestamp) = seen.map(|e| &e["timestamp"]) {
                let (seconds, micros) = (timestamp["seconds"].as_u64(), timestamp["microseconds"].as_u64());
                let (Some(seconds), Some(micros)) = (seconds, micros) else {
                    bail!("QMP event {name} without a timestamp: {timestamp}");
                };
                return Ok(Duration::from_secs(seconds) + Duration::from_micros(micros));
            }
            if Instant::now() > deadline {
                bail!("QEMU never sent {name}");
            }
            self.next(name)?;
        }
    }
}

fn qemu_run(kernel: &Path, initramfs: &Path, mib: u32, downtime_ms: u32, load: Load, dir: &Path) -> Result<Moved> {
    std::fs::create_dir_all(dir)?;
    let (source_qmp, dest_qmp) = (dir.join("source.qmp"), dir.join("dest.qmp"));
    let (incoming, dest_log): (PathBuf, PathBuf) = (dir.join("in.sock"), dir.join("dest.log"));
    let mut source = boot::qemu_command(kernel, initramfs, mib);
    source
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", source_qmp.display()));
    let mut destination = boot::qemu_command(kernel, initramfs, mib);
    destination
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dest_qmp.display()))
        .arg("-incoming")
        .arg(format!("unix:{}", incoming.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dest_log)?)
        .stderr(Stdio::null());
    let (run, moved) = timed_boot_with(source, LIMIT, |_| -> Result<(Option<(Value, Duration)>, Child)> {
        let mut destination = destination.spawn().context("starting the destination QEMU")?;
        wait_for(&incoming)?;
        let mut arriving = Qmp::connect(&dest_qmp)?;
        let mut qmp = Qmp::connect(&source_qmp)?;
        let to = link_to(&incoming, load.link_limit(), dir)?;
        std::thread::sleep(load.warmup());
        qmp.execute("migrate-set-parameters", json!({ "downtime-limit": downtime_ms }))?;
        qmp.execute("migrate", json!({ "uri": format!("unix:{}", to.display()) }))?;
        let deadline = Instant::now() + CONVERGE_LIMIT;
        let status = loop {
            let status = qmp.execute("query-migrate", json!({}))?;
            match status.get("status").and_then(Value::as_str) {
                Some("completed") => break status,
                Some("failed" | "cancelled") => bail!("QEMU's migration failed: {status}"),
                _ if Instant::now() > deadline => {
                    // Not converging: cancelled, as hull-vmm gives up; the
                    // source runs on.
                    qmp.execute("migrate_cancel", json!({}))?;
                    wait_cancelled(&mut qmp)?;
                    let _ = qmp.execute("quit", json!({}));
                    let _ = destination.kill();
                    let _ = destination.wait();
                    return Ok((None, destination));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        // The same window as hull-vmm's figure: the source's stop to the
        // guest running at the destination (both QEMUs stamp events with
        // this host's clock).
        let stopped = qmp.event_time("STOP")?;
        let resumed = arriving.event_time("RESUME")?;
        let _ = qmp.execute("quit", json!({}));
        let stopped_to_running = resumed
            .checked_sub(stopped)
            .context("QEMU's destination resumed before its source stopped")?;
        Ok((Some((status, stopped_to_running)), destination))
    })?;
    let _ = run;
    let (Some((status, stopped_to_running)), destination) = moved? else {
        return Ok(Moved::not_converged());
    };
    let number = |key: &str| status.get(key).and_then(Value::as_u64);
    let downtime = number("downtime").context("QEMU gave no downtime")?;
    let total = number("total-time").context("QEMU gave no total time")?;
    let bytes = status
        .get("ram")
        .and_then(|r| r.get("transferred"))
        .and_then(Value::as_u64)
        .context("QEMU gave no bytes transferred")?;
    check_alive_and_end(destination, &dest_log, "QEMU")?;
    Ok(Moved {
        converged: true,
        downtime: stopped_to_running,
        reported_downtime: Some(Duration::from_millis(downtime)),
        total: Duration::from_millis(total),
        bytes,
        max_throttle: None,
    })
}
