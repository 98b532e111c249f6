//! `hull-bench block`: hull-vmm's virtio-blk beside QEMU's, and beside an
//! earlier hull-vmm (`--baseline-vmm`, e.g. one built from before device
//! threads). Each VMM boots the same busybox guest with Debian's fio on the
//! same ext4 disk image (a container's writable disk and its volumes are
//! such images on the host), and fio runs, with O_DIRECT so the guest's
//! page cache is out of the way: 4 KiB random reads and writes at queue
//! depth 1 (latency) and 1 MiB sequential writes and reads (throughput).
//! Runs are interleaved; each figure is the median over runs of fio's own
//! (IOPS, MiB/s, and its completion-latency median and p95).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testkit::bench;
use testkit::boot::{self, timed_boot};
use testkit::guest;
use vmm::host::HostKvm;

use crate::inside_vmhost;

const GUEST_MIB: u32 = 512;
const LIMIT: Duration = Duration::from_secs(900);
pub(crate) const BEGIN: &str = "@@fio:begin@@";
pub(crate) const END: &str = "@@fio:end@@";

/// fio's jobs, one after another (`--stonewall`), as its command line.
const JOBS: &[(&str, &str)] = &[
    ("randread-4k-qd1", "--rw=randread --bs=4k"),
    ("randwrite-4k-qd1", "--rw=randwrite --bs=4k"),
    ("seqwrite-1m", "--rw=write --bs=1M"),
    ("seqread-1m", "--rw=read --bs=1M"),
];

pub fn block_bench(runs: usize, seconds: u32, baseline: Option<PathBuf>) -> Result<()> {
    if !matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
        println!("no hardware KVM here: running the block benchmark inside vmhost");
        let mut args = vec![
            "block".to_string(),
            "--runs".into(),
            runs.to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ];
        if let Some(path) = baseline {
            args.extend(["--baseline-vmm".into(), path.canonicalize()?.display().to_string()]);
        }
        inside_vmhost(args)?;
        return Ok(());
    }
    which_fio()?;
    let kernel = guest::cloud_kernel()?;
    let work = std::env::temp_dir().join(format!("hull-bench-block-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = measure(&work, &kernel, runs, seconds, baseline.as_deref());
    let _ = std::fs::remove_dir_all(&work);
    result
}

pub(crate) fn which_fio() -> Result<()> {
    if !Path::new("/usr/bin/fio").exists() {
        bail!("fio is missing (scripts/bench installs it: apt-get install fio)");
    }
    Ok(())
}

/// A VMM under test.
enum Peer {
    Hull,
    Qemu,
    /// An earlier hull-vmm binary.
    Baseline(PathBuf),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Hull => "hull-vmm",
            Peer::Qemu => "qemu",
            Peer::Baseline(_) => "baseline hull-vmm",
        }
    }

    /// Boots the fio guest with `disk` as its one disk.
    fn command(&self, kernel: &Path, initramfs: &Path, disk: &Path) -> Result<Command> {
        Ok(match self {
            Peer::Hull => {
                let mut command = boot::hull_vmm_command(kernel, initramfs, GUEST_MIB)?;
                command.arg("--disk").arg(disk);
                command
            }
            Peer::Qemu => {
                let mut command = boot::qemu_command(kernel, initramfs, GUEST_MIB);
                // QEMU's defaults, as its users run it: writeback cache, thread pool.
                command
                    .arg("-drive")
                    .arg(format!("id=d0,file={},format=raw,if=none", disk.display()))
                    .args(["-device", "virtio-blk-device,drive=d0"]);
                command
            }
            Peer::Baseline(path) => {
                let mut command = Command::new(path);
                command
                    .arg("--kernel")
                    .arg(kernel)
                    .arg("--initrd")
                    .arg(initramfs)
                    .args(["--cmdline", boot::CMDLINE, "--console", "--memory"])
                    .arg(GUEST_MIB.to_string())
                    .arg("--disk")
                    .arg(disk);
                command
            }
        })
    }
}

fn guest_script(seconds: u32) -> String {
    let jobs: Vec<String> = JOBS
        .iter()
        .map(|(name, args)| format!("--name={name} {args} --stonewall"))
        .collect();
    format!(
        "$B mkdir -p /data /tmp && $B mount -t ext4 /dev/vda /data && \
         echo {BEGIN} && /usr/bin/fio --thread --output-format=json --filename=/data/fio.dat --size=256M \
         --ioengine=psync --direct=1 --time_based --runtime={seconds} {} ; echo {END}; \
         $B umount /data; $B poweroff -f",
        jobs.join(" ")
    )
}

/// fio's JSON between the markers on a console.
pub(crate) fn fio_report(console: &[String]) -> Result<Value> {
    let begin = console
        .iter()
        .position(|l| l.contains(BEGIN))
        .context("fio did not start")?;
    let end = console
        .iter()
        .position(|l| l.contains(END))
        .context("fio did not end")?;
    let text: String = console[begin + 1..end].join("\n");
    let start = text.find('{').context("no JSON from fio")?;
    serde_json::from_str(&text[start..]).with_context(|| format!("fio's output: {text}"))
}

/// A job's figures: IOPS, MiB/s, completion latency median and p95 (µs).
pub(crate) fn figures(report: &Value, job: &str) -> Result<[f64; 4]> {
    let entry = report["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["jobname"] == job))
        .with_context(|| format!("job {job} in fio's report"))?;
    let side = if entry["read"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
        &entry["read"]
    } else {
        &entry["write"]
    };
    if side["io_bytes"].as_u64().unwrap_or(0) == 0 {
        bail!("job {job} moved no data: {entry}");
    }
    let percentile = |p: &str| side["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    Ok([
        side["iops"].as_f64().unwrap_or(0.0),
        side["bw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        percentile("50.000000"),
        percentile("95.000000"),
    ])
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn measure(
    work: &Path,
    kernel: &debkernel::KernelPackage,
    runs: usize,
    seconds: u32,
    baseline: Option<&Path>,
) -> Result<()> {
    let initramfs = guest::busybox_initramfs_with(
        kernel,
        &work.join("fio.cpio"),
        &["/usr/bin/fio"],
        &guest_script(seconds),
    )?;
    let disk = work.join("disk.ext4");
    let status = Command::new("truncate").args(["-s", "1G"]).arg(&disk).status()?;
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).status()?;
    if !status.success() || !mkfs.success() {
        bail!("making the ext4 disk image failed");
    }
    let mut peers = vec![Peer::Hull, Peer::Qemu];
    peers.extend(baseline.map(|path| Peer::Baseline(path.to_path_buf())));
    // figures[peer][job] = one [iops, MiB/s, p50, p95] per run
    let mut results: Vec<Vec<Vec<[f64; 4]>>> = vec![vec![Vec::new(); JOBS.len()]; peers.len()];
    for run in 1..=runs {
        for (p, peer) in peers.iter().enumerate() {
            eprintln!("block bench: run {run}/{runs}, {}", peer.name());
            let command = peer.command(&kernel.vmlinuz(), &initramfs, &disk)?;
            let boot = timed_boot(command, LIMIT)?;
            let report =
                fio_report(&boot.console).with_context(|| format!("{}: {}", peer.name(), boot.console.join("\n")))?;
            for (j, (job, _)) in JOBS.iter().enumerate() {
                results[p][j].push(figures(&report, job).with_context(|| peer.name())?);
            }
        }
    }
    let environment = bench::environment();
    println!("environment: {environment}");
    println!(
        "fio in the guest, O_DIRECT, psync, {seconds} s a job, one 1 GiB ext4 disk image; medians over {runs} runs"
    );
    let mut json_peers = serde_json::Map::new();
    for (p, peer) in peers.iter().enumerate() {
        let mut json_jobs = serde_json::Map::new();
        for (j, (job, _)) in JOBS.iter().enumerate() {
            let column = |i: usize| median(&mut results[p][j].iter().map(|f| f[i]).collect::<Vec<_>>());
            let (iops, mib, p50, p95) = (column(0), column(1), column(2), column(3));
            println!(
                "{:<18} {job:<17} {iops:>9.0} IOPS {mib:>8.1} MiB/s   latency median {p50:>8.0} us   p95 {p95:>8.0} us",
                peer.name()
            );
            json_jobs.insert(
                job.to_string(),
                json!({"iops": iops.round(), "mib_per_s": (mib * 10.0).round() / 10.0, "clat_median_us": p50.round(), "clat_p95_us": p95.round()}),
            );
        }
        json_peers.insert(peer.name().to_string(), Value::Object(json_jobs));
    }
    let ratio = |job: &str, field: &str| {
        let value = |peer: &str| json_peers.get(peer).and_then(|p| p[job][field].as_f64());
        match (value("hull-vmm"), value("qemu")) {
            (Some(hull), Some(qemu)) if qemu > 0.0 => Some((hull / qemu * 100.0).round() / 100.0),
            _ => None,
        }
    };
    let ratios = json!({
        "randread_iops_hull_over_qemu": ratio("randread-4k-qd1", "iops"),
        "randwrite_iops_hull_over_qemu": ratio("randwrite-4k-qd1", "iops"),
        "seqwrite_mib_hull_over_qemu": ratio("seqwrite-1m", "mib_per_s"),
        "seqread_mib_hull_over_qemu": ratio("seqread-1m", "mib_per_s"),
    });
    println!("hull-vmm / QEMU: {ratios}");
    let report = json!({
        "bench": "block",
        "environment": environment,
        "what": "fio --direct=1 --ioengine=psync in a busybox guest on a 1 GiB ext4 image, Debian cloud kernel, 512 MiB, 1 vCPU",
        "runs": runs,
        "seconds_per_job": seconds,
        "peers": json_peers,
        "ratios": ratios,
    });
    let path = bench::write_report("block", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}
