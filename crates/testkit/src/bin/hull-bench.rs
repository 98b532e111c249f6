//! `hull-bench`: benchmarks that print median and p95 and write JSON under `target/bench/`.
//!
//! Guest boots need hardware KVM: where this host has none, a boot benchmark
//! re-runs itself inside `vmhost` and says so in its report.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use testkit::bench::{self, Summary};
use testkit::boot::{self, timed_boot, timed_boot_with};
use testkit::guest;
use vmm::host::HostKvm;

#[derive(Parser)]
#[command(about = "hull's benchmarks: medians and p95s, JSON under target/bench/")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The emulated test host: time from its start to the command running,
    /// then the `boot` benchmark inside it.
    Vmhost {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Cold boots of the cloud kernel + a busybox initramfs (virtio modules
    /// loaded) under hull-vmm and under QEMU-KVM microvm, interleaved; and
    /// hull-vmm's own resident memory beyond guest RAM.
    Boot {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// OCI images: pull of a ~100 MiB multi-layer image from a loopback
    /// registry, building its disk, and the host disk one more container
    /// costs, beside skopeo copy + umoci unpack of the same image; then
    /// `hull run IMAGE true` with the image present (inside vmhost here).
    Image {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Instant clone: `hull run IMAGE true` cloned and cold-booted, restore to
    /// agent ready, clones per second, memory per idle clone; peers podman
    /// (same rootfs, no VM) and a QEMU-KVM cold boot (inside vmhost here).
    Clone {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Idle clones kept at once for the memory figures.
        #[arg(long, default_value_t = 50)]
        idle: usize,
        /// Clones started at once.
        #[arg(long, default_value_t = 20)]
        parallel: usize,
    },
    /// The docker CLI against hulld: `docker run --rm IMAGE true` and a
    /// detached run, beside `podman run --rm` of the same rootfs (inside
    /// vmhost here).
    Docker {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Another build's `target/release` (its guest set up into the
        /// `test-guest` beside it): its hulld's `docker run -d` is timed in
        /// the same runs, alternating with this build's, for a ratio that
        /// the test host's speed from one boot to the next does not move.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// Networking: what it adds to `docker run`, iperf3 throughput beside a
    /// veth pair, a published port under wrk beside podman -p, and a
    /// 1000-port range beside a proxy per port (inside vmhost here).
    Net {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Block I/O: fio in the same guest on the same ext4 image under
    /// hull-vmm, QEMU and (optionally) an earlier hull-vmm (inside vmhost here).
    Block {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds each fio job runs.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// An earlier hull-vmm binary to measure beside this one.
        #[arg(long)]
        baseline_vmm: Option<std::path::PathBuf>,
    },
    /// File I/O: fio and a 20k-file unpack through a hull bind mount
    /// (virtio-fs), a hull disk volume, QEMU + virtiofsd on the same
    /// directory, and the host (inside vmhost here).
    Fs {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds each fio job runs.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// The peers to run, comma-separated (hull_share, hull_disk, host,
        /// qemu_virtiofsd); all by default.
        #[arg(long, default_value = "hull_share,hull_disk,host,qemu_virtiofsd")]
        peers: String,
        /// Small files in the metadata job (unpacked, then listed).
        #[arg(long, default_value_t = 20_000)]
        files: usize,
    },
    /// Live migration of a running guest between two VMMs on this host:
    /// downtime, total time and bytes sent, hull-vmm beside QEMU, idle and
    /// dirtying memory (inside vmhost here).
    Migrate {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Guest memory sizes in MiB, comma-separated.
        #[arg(long, default_value = "256,1024", value_delimiter = ',')]
        memory: Vec<u32>,
        /// Both VMMs' downtime budget (QEMU's default; hull's own default,
        /// 50 ms, is for hardware, not the emulated test host).
        #[arg(long, default_value_t = 300)]
        downtime_ms: u32,
        /// The rows to run: idle, dirtying, continuous, random, slow-link
        /// (random bytes over an 8 MB/s link) and container (the container
        /// moves through hulld).
        #[arg(
            long,
            default_value = "idle,dirtying,continuous,random,slow-link,container",
            value_delimiter = ','
        )]
        loads: Vec<String>,
        /// An earlier hull-vmm binary to measure beside this one (both
        /// ends of its moves, pages as LZ4 blocks), in the same runs.
        #[arg(long)]
        baseline_vmm: Option<std::path::PathBuf>,
    },
    /// `hull run IMAGE true` end to end with the image in the store (needs
    /// hardware KVM: `image` runs it inside vmhost where there is none).
    ImageRun {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

const GUEST_MIB: u32 = 256;
const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Vmhost { runs } => vmhost_bench(runs),
        Bench::Image { runs } => image_bench::pull_and_disk(runs),
        Bench::ImageRun { runs } => image_bench::run_true(runs),
        Bench::Docker { runs, baseline } => docker_bench::docker_bench(runs, baseline.as_deref()),
        Bench::Net { runs } => net_bench::net_bench(runs),
        Bench::Migrate {
            runs,
            memory,
            downtime_ms,
            loads,
            baseline_vmm,
        } => migrate_bench::migrate_bench(runs, &memory, downtime_ms, &loads, baseline_vmm.as_deref()),
        Bench::Fs {
            runs,
            seconds,
            peers,
            files,
        } => fs_bench::fs_bench(runs, seconds, &peers, files),
        Bench::Block {
            runs,
            seconds,
            baseline_vmm,
        } => block_bench::block_bench(runs, seconds, baseline_vmm),
        Bench::Clone { runs, idle, parallel } => {
            clone_bench::clone_bench(clone_bench::Options { runs, idle, parallel })
        }
        Bench::Boot { runs } => {
            if matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
                boot_bench(runs)
            } else {
                println!("no hardware KVM here: running the boot benchmark inside vmhost");
                let args = vec!["boot".to_string(), "--runs".into(), runs.to_string()];
                inside_vmhost(args).map(|_| ())
            }
        }
    }
}

#[path = "hull-bench/block_bench.rs"]
mod block_bench;
#[path = "hull-bench/clone_bench.rs"]
mod clone_bench;
#[path = "hull-bench/docker_bench.rs"]
mod docker_bench;
#[path = "hull-bench/fs_bench.rs"]
mod fs_bench;
#[path = "hull-bench/image_bench.rs"]
mod image_bench;
#[path = "hull-bench/migrate_bench.rs"]
mod migrate_bench;
#[path = "hull-bench/net_bench.rs"]
mod net_bench;
#[path = "hull-bench/podman_peer.rs"]
mod podman_peer;

pub(crate) fn print_line(what: &str, s: &Summary) {
    println!(
        "{what:<44} median {:>9.1} ms   p95 {:>9.1} ms   (n={})",
        s.median_ms, s.p95_ms, s.samples
    );
}

fn boot_bench(runs: usize) -> Result<()> {
    let kernel = guest::cloud_kernel()?;
    let dir = std::env::temp_dir().join(format!("hull-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The guest lingers a second after ready so hull-vmm's memory can be read.
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("guest.cpio"), "$B sleep 1; $B poweroff -f")?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let hull_cli = boot::workspace_binary("hull")?;
    let (mut hull, mut qemu, mut rss, mut run_true) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        eprintln!("boot run {run}/{runs}");
        let command = boot::hull_vmm_command(&kernel.vmlinuz(), &initramfs, GUEST_MIB)?;
        let (run, own_rss) = timed_boot_with(command, BOOT_LIMIT, |pid| boot::vmm_own_rss_kib(pid, GUEST_MIB))?;
        if !run.status.success() {
            bail!("hull-vmm failed ({}): {}", run.status, run.console.join("\n"));
        }
        hull.push(run.ready_after);
        rss.extend(own_rss);
        let run = timed_boot(boot::qemu_command(&kernel.vmlinuz(), &initramfs, GUEST_MIB), BOOT_LIMIT)?;
        qemu.push(run.ready_after);
        let start = std::time::Instant::now();
        let status = std::process::Command::new(&hull_cli)
            .arg("run")
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["--", "true"])
            .status()?;
        if !status.success() {
            bail!("hull run ... true failed: {status}");
        }
        run_true.push(start.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let hull = Summary::of(&hull).context("no runs")?;
    let qemu = Summary::of(&qemu).context("no runs")?;
    print_line("hull-vmm: spawn to guest ready", &hull);
    print_line("QEMU-KVM microvm: spawn to guest ready", &qemu);
    let run_true = Summary::of(&run_true).context("no runs")?;
    print_line("hull run --rootfs busybox -- true, end to end", &run_true);
    let ratio = hull.median_ms / qemu.median_ms;
    println!("hull/QEMU median ratio: {ratio:.2}");
    rss.sort_unstable();
    let rss_median = rss.get(rss.len() / 2).copied();
    let rss_max = rss.last().copied();
    if let (Some(median), Some(max)) = (rss_median, rss_max) {
        println!("hull-vmm resident memory beyond guest RAM: median {median} KiB, max {max} KiB");
    }
    let report = json!({
        "bench": "boot",
        "what": "spawn to busybox init with virtio modules loaded, Debian cloud kernel, 256 MiB, 1 vCPU",
        "kernel": kernel.release,
        "environment": bench::environment(),
        "hull_vmm": hull.to_json(),
        "qemu_microvm": qemu.to_json(),
        "hull_run_true_end_to_end": run_true.to_json(),
        "hull_over_qemu_median": (ratio * 1000.0).round() / 1000.0,
        "hull_vmm_own_rss_kib": { "median": rss_median, "max": rss_max, "samples": rss.len() },
    });
    let path = bench::write_report("boot", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Runs `hull-bench ARGS` inside vmhost, with target/bench writable.
pub(crate) fn inside_vmhost(args: Vec<String>) -> Result<vmhost::Outcome> {
    let assets = vmhost::prepare(&vmhost::cache_dir())?;
    guest::cloud_kernel()?; // fetched out here: the test host has no network
    let bench_dir = bench::bench_dir();
    std::fs::create_dir_all(&bench_dir)?;
    let mut command = vec![std::env::current_exe()?.display().to_string()];
    command.extend(args);
    let outcome = vmhost::run(&assets, &vmhost_options(bench_dir.canonicalize()?, command))?;
    if outcome.status != 0 {
        bail!("the benchmark inside vmhost failed with status {}", outcome.status);
    }
    Ok(outcome)
}

fn vmhost_options(bench_dir: std::path::PathBuf, command: Vec<String>) -> vmhost::RunOptions {
    vmhost::RunOptions {
        // HULL_BENCH_VMHOST_MIB: the test host's memory (many idle clones need more).
        memory_mib: std::env::var("HULL_BENCH_VMHOST_MIB")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(4096),
        // HULL_BENCH_VMHOST_CPUS: the test host's vCPUs. 1 by default: with
        // 2, the test host still loses interrupts between its CPUs (soft
        // lockups); vmhost's kick keeps 1 going (see crates/vmhost/src/kick.rs).
        cpus: std::env::var("HULL_BENCH_VMHOST_CPUS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        time_limit: Duration::from_secs(1800),
        rw_shares: vec![bench_dir],
        verbose: false,
        env: std::env::vars().collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        command,
    }
}

fn vmhost_bench(runs: usize) -> Result<()> {
    let assets = vmhost::prepare(&vmhost::cache_dir())?;
    let bench_dir = bench::bench_dir();
    std::fs::create_dir_all(&bench_dir)?;
    let mut ready = Vec::new();
    for _ in 0..runs {
        let outcome = vmhost::run(&assets, &vmhost_options(bench_dir.canonicalize()?, vec!["true".into()]))?;
        ready.push(outcome.ready_after);
    }
    let ready = Summary::of(&ready).context("no runs")?;
    print_line("vmhost: start to command running", &ready);
    inside_vmhost(vec!["boot".into(), "--runs".into(), runs.to_string()])?;
    let inner: serde_json::Value = serde_json::from_slice(&std::fs::read(bench_dir.join("boot.json"))?)?;
    let report = json!({
        "bench": "vmhost",
        "environment": bench::environment(),
        "vmhost_start_to_command": ready.to_json(),
        "boots_inside_vmhost": inner,
    });
    let path = bench::write_report("vmhost", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
