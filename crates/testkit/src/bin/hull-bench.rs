//! `hull-bench`: benchmarks that print median and p95 and write JSON under `target/bench/`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use testkit::bench::{self, Summary};
use testkit::{guest, qemu};

#[derive(Parser)]
#[command(about = "hull's benchmarks: medians and p95s, JSON under target/bench/")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The emulated test host: time from start to the command running, and a
    /// QEMU-KVM cold boot of the cloud kernel inside it (the baseline peers).
    Vmhost {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Cold boots of the cloud kernel + busybox initramfs under QEMU-KVM microvm
    /// (needs hardware KVM: run it directly there, or inside vmhost).
    QemuBoot {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Vmhost { runs } => vmhost_bench(runs),
        Bench::QemuBoot { runs } => qemu_boot_bench(runs).map(|_| ()),
    }
}

fn print_line(what: &str, s: &Summary) {
    println!(
        "{what:<48} median {:>9.1} ms   p95 {:>9.1} ms   (n={})",
        s.median_ms, s.p95_ms, s.samples
    );
}

fn qemu_boot_bench(runs: usize) -> Result<Summary> {
    let kernel = guest::cloud_kernel()?;
    let dir = std::env::temp_dir().join(format!("hull-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let initramfs = guest::busybox_initramfs(&kernel, &dir.join("guest.cpio"))?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (elapsed, _) = qemu::microvm_boot(&kernel.vmlinuz(), &initramfs, 256, Duration::from_secs(300))?;
        samples.push(elapsed);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let summary = Summary::of(&samples).context("no runs")?;
    print_line("QEMU-KVM microvm cold boot to guest ready", &summary);
    let report = json!({
        "bench": "qemu-boot",
        "what": "qemu-system-x86_64 -accel kvm -M microvm,acpi=on: spawn to busybox init with virtio modules loaded",
        "kernel": kernel.release,
        "environment": bench::environment(),
        "cold_boot": summary.to_json(),
    });
    let path = bench::write_report("qemu-boot", &report)?;
    println!("wrote {}", path.display());
    Ok(summary)
}

fn vmhost_bench(runs: usize) -> Result<()> {
    let assets = vmhost::prepare(&vmhost::cache_dir())?;
    guest::cloud_kernel()?; // fetched here: the test host has no network
    let bench_dir = bench::bench_dir();
    std::fs::create_dir_all(&bench_dir)?;
    let bench_dir = bench_dir.canonicalize()?;
    let options = |command: Vec<String>| vmhost::RunOptions {
        memory_mib: 4096,
        cpus: 2,
        time_limit: Duration::from_secs(1200),
        rw_shares: vec![bench_dir.clone()],
        verbose: false,
        env: std::env::vars().collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        command,
    };
    let mut ready = Vec::new();
    for _ in 0..runs {
        let outcome = vmhost::run(&assets, &options(vec!["true".into()]))?;
        ready.push(outcome.ready_after);
    }
    let ready = Summary::of(&ready).context("no runs")?;
    print_line("vmhost start to command running", &ready);

    let me = std::env::current_exe()?;
    let inner = vec![
        me.display().to_string(),
        "qemu-boot".into(),
        "--runs".into(),
        runs.to_string(),
    ];
    let outcome = vmhost::run(&assets, &options(inner))?;
    if outcome.status != 0 {
        bail!(
            "the QEMU boot benchmark inside vmhost failed with status {}",
            outcome.status
        );
    }
    let inner_report: serde_json::Value = serde_json::from_slice(&std::fs::read(bench_dir.join("qemu-boot.json"))?)?;
    let report = json!({
        "bench": "vmhost",
        "environment": bench::environment(),
        "vmhost_start_to_command": ready.to_json(),
        "qemu_kvm_cold_boot_inside_vmhost": inner_report,
    });
    let path = bench::write_report("vmhost", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
