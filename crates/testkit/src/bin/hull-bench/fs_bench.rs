//! `hull-bench fs`: file I/O through a hull bind mount (virtio-fs served in
//! hull-vmm), a hull disk volume (virtio-blk on an ext4 image), QEMU with
//! Debian's virtiofsd on the same directory and kernel, and the host
//! itself. The same busybox guest runs fio (4 KiB random reads and writes
//! at queue depth 1, 1 MiB sequential writes and reads; O_DIRECT in the
//! guest, so its page cache is out of the way) and a metadata job: unpack a
//! tarball of 20,000 small files and list them with their attributes
//! (`ls -lR`). Runs are interleaved; figures are medians over runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testkit::bench;
use testkit::boot::{self, timed_boot};
use testkit::guest;
use vmm::host::HostKvm;

use crate::block_bench::{figures, fio_report, median, which_fio, BEGIN, END};
use crate::inside_vmhost;

const GUEST_MIB: u32 = 512;
/// A guest's whole run: fio, then 20,000 creates through FUSE, which take
/// over 10 minutes in the emulated test host.
const LIMIT: Duration = Duration::from_secs(1800);
const META: &str = "@@meta:";
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

const JOBS: &[(&str, &str)] = &[
    ("randread-4k-qd1", "--rw=randread --bs=4k"),
    ("randwrite-4k-qd1", "--rw=randwrite --bs=4k"),
    ("seqwrite-1m", "--rw=write --bs=1M"),
    ("seqread-1m", "--rw=read --bs=1M"),
];

pub fn fs_bench(runs: usize, seconds: u32, peers: &str, files: usize) -> Result<()> {
    let chosen: Vec<Peer> = peers
        .split(',')
        .map(|key| {
            Peer::ALL
                .into_iter()
                .find(|p| p.key() == key)
                .with_context(|| format!("no peer {key:?}"))
        })
        .collect::<Result<_>>()?;
    if !matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
        println!("no hardware KVM here: running the fs benchmark inside vmhost");
        let args = [
            "fs",
            "--runs",
            &runs.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--peers",
            peers,
            "--files",
            &files.to_string(),
        ];
        inside_vmhost(args.iter().map(|a| a.to_string()).collect())?;
        return Ok(());
    }
    which_fio()?;
    if !Path::new(VIRTIOFSD).exists() {
        bail!("{VIRTIOFSD} is missing (QEMU's virtiofsd: apt-get install qemu-system-x86)");
    }
    let kernel = guest::cloud_kernel()?;
    let work = std::env::temp_dir().join(format!("hull-bench-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = measure(&work, &kernel, runs, seconds, &chosen, files);
    let _ = std::fs::remove_dir_all(&work);
    result
}

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    HullShare,
    HullDisk,
    QemuVirtiofsd,
    Host,
}

impl Peer {
    const ALL: [Peer; 4] = [Peer::HullShare, Peer::HullDisk, Peer::Host, Peer::QemuVirtiofsd];

    fn name(self) -> &'static str {
        match self {
            Peer::HullShare => "hull bind mount (virtio-fs)",
            Peer::HullDisk => "hull disk volume (virtio-blk)",
            Peer::QemuVirtiofsd => "qemu + virtiofsd",
            Peer::Host => "host",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Peer::HullShare => "hull_share",
            Peer::HullDisk => "hull_disk",
            Peer::QemuVirtiofsd => "qemu_virtiofsd",
            Peer::Host => "host",
        }
    }
}

/// The guest's (or the host's) commands, on directory `$D`.
fn jobs_script(seconds: u32, direct: bool, tar: &str) -> String {
    let jobs: Vec<String> = JOBS
        .iter()
        .map(|(name, args)| format!("--name={name} {args} --stonewall"))
        .collect();
    let direct = u8::from(direct);
    format!(
        "echo {BEGIN} && /usr/bin/fio --thread --output-format=json --filename=$D/fio.dat --size=128M \
         --ioengine=psync --direct={direct} --time_based --runtime={seconds} {jobs} ; echo {END}; rm -f $D/fio.dat; \
         t0=$(cut -d' ' -f1 /proc/uptime); {tar} -xf /tree.tar -C $D; t1=$(cut -d' ' -f1 /proc/uptime); \
         ls -lR $D/tree | wc -l > /dev/null; t2=$(cut -d' ' -f1 /proc/uptime); echo \"{META} $t0 $t1 $t2\"",
        jobs = jobs.join(" ")
    )
}

fn guest_script(seconds: u32) -> String {
    format!(
        "$B mkdir -p /data /tmp; export PATH=/usr/bin:/bin; for a in cut ls wc rm; do $B ln -s busybox /bin/$a; done; \
         if [ -b /dev/vda ]; then $B mount -t ext4 /dev/vda /data; D=/data; \
         else $B mount -t virtiofs hull /data; D=/data; [ -d /data/0 ] && D=/data/0; fi; \
         {}; $B umount /data; $B poweroff -f",
        jobs_script(seconds, true, "$B tar")
    )
}

/// Unpack and list times (s) from the `META` line.
fn meta_times(lines: &[String]) -> Result<(f64, f64)> {
    let line = lines
        .iter()
        .find_map(|l| l.split(META).nth(1))
        .context("the metadata job did not report")?;
    let t: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    match t.as_slice() {
        [t0, t1, t2] => Ok((t1 - t0, t2 - t1)),
        _ => bail!("bad metadata report: {line}"),
    }
}

/// A tarball of `files` small files in 100 directories, as `tree/`.
fn make_tree(work: &Path, files: usize) -> Result<PathBuf> {
    let tree = work.join("tree");
    for i in 0..files {
        let dir = tree.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i:05}.txt")), format!("file {i}\n").repeat(8))?;
    }
    let tarball = work.join("tree.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(work)
        .arg("tree")
        .status()?;
    std::fs::remove_dir_all(&tree)?;
    if !ok.success() {
        bail!("making the tree tarball failed");
    }
    Ok(tarball)
}

/// QEMU's virtiofsd sharing `dir` on `socket`, as its users run it
/// (cache=auto), and the QEMU that mounts it.
fn virtiofsd(dir: &Path, socket: &Path, log: &Path) -> Result<Child> {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={},cache=auto", dir.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting virtiofsd")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("virtiofsd did not make its socket");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn qemu_with_virtiofs(kernel: &Path, initramfs: &Path, socket: &Path) -> Command {
    let mut command = boot::qemu_command_on("microvm,acpi=on,memory-backend=mem", kernel, initramfs, GUEST_MIB);
    command
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={GUEST_MIB}M,share=on"))
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", socket.display()))
        .args(["-device", "vhost-user-fs-device,chardev=vfs,tag=hull"])
        // QEMU's virtio-mmio speaks the legacy interface unless told not
        // to, and virtiofsd (libvhost-user) serves only modern devices.
        .args(["-global", "virtio-mmio.force-legacy=false"]);
    command
}

/// The jobs on the host's own directory `dir`: fio buffered (O_DIRECT is
/// refused by tmpfs and overlayfs, which the test host has).
fn host_run(dir: &Path, tarball: &Path, seconds: u32) -> Result<Vec<String>> {
    let script = jobs_script(seconds, false, "tar").replace("/tree.tar", &tarball.display().to_string());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("D", dir)
        .output()
        .context("running the jobs on the host")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text.lines().map(str::to_string).collect())
}

/// One run of one peer: each fio job's [IOPS, MiB/s, p50 µs, p95 µs], then
/// the unpack and list times (s).
type RunFigures = (Vec<[f64; 4]>, (f64, f64));

fn measure(
    work: &Path,
    kernel: &debkernel::KernelPackage,
    runs: usize,
    seconds: u32,
    peers: &[Peer],
    files: usize,
) -> Result<()> {
    let tarball = make_tree(work, files)?;
    let initramfs = guest::busybox_initramfs_with_files(
        kernel,
        &work.join("fs.cpio"),
        &["/usr/bin/fio"],
        &[("tree.tar", &tarball)],
        &guest_script(seconds),
    )?;
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared)?;
    // hull-vmm shares a path with no symbolic link in it.
    let shared = shared.canonicalize()?;
    let disk = work.join("disk.ext4");
    let made = Command::new("truncate").args(["-s", "1G"]).arg(&disk).status()?;
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).status()?;
    if !made.success() || !mkfs.success() {
        bail!("making the ext4 disk image failed");
    }
    let socket = work.join("virtiofsd.sock");
    let virtiofsd_log = work.join("virtiofsd.log");
    // A peer that fails is reported as failed (with its output), not left
    // out or timed: a failing peer would look fast.
    let mut failed: Vec<(usize, String)> = Vec::new();
    // results[peer] = per run: the jobs' [iops, MiB/s, p50, p95], then (unpack s, list s)
    let mut results: Vec<Vec<RunFigures>> = vec![Vec::new(); peers.len()];
    for run in 1..=runs {
        for (p, &peer) in peers.iter().enumerate() {
            if failed.iter().any(|(f, _)| *f == p) {
                continue;
            }
            eprintln!("fs bench: run {run}/{runs}, {}", peer.name());
            // Each peer unpacks into an empty directory; the host clears
            // it (through FUSE that takes minutes, and is not measured).
            let _ = std::fs::remove_dir_all(shared.join("tree"));
            let lines: Result<Vec<String>> = (|| {
                Ok(match peer {
                    Peer::Host => host_run(&shared, &tarball, seconds)?,
                    Peer::HullShare => {
                        let mut command = boot::hull_vmm_command(&kernel.vmlinuz(), &initramfs, GUEST_MIB)?;
                        command.arg("--share").arg(&shared);
                        timed_boot(command, LIMIT)?.console
                    }
                    Peer::HullDisk => {
                        let mut command = boot::hull_vmm_command(&kernel.vmlinuz(), &initramfs, GUEST_MIB)?;
                        command.arg("--disk").arg(&disk);
                        timed_boot(command, LIMIT)?.console
                    }
                    Peer::QemuVirtiofsd => {
                        let mut daemon = virtiofsd(&shared, &socket, &virtiofsd_log)?;
                        let booted = timed_boot(qemu_with_virtiofs(&kernel.vmlinuz(), &initramfs, &socket), LIMIT);
                        let _ = daemon.kill();
                        let _ = daemon.wait();
                        let log = std::fs::read_to_string(&virtiofsd_log).unwrap_or_default();
                        booted.with_context(|| format!("virtiofsd's log: {log}"))?.console
                    }
                })
            })();
            let measured = lines.and_then(|lines| {
                let context = || format!("{}: {}", peer.name(), lines.join("\n"));
                let report = fio_report(&lines).with_context(context)?;
                let jobs = JOBS
                    .iter()
                    .map(|(job, _)| figures(&report, job))
                    .collect::<Result<Vec<_>>>()
                    .with_context(context)?;
                Ok((jobs, meta_times(&lines).with_context(context)?))
            });
            match measured {
                Ok(figures) => results[p].push(figures),
                Err(e) => {
                    eprintln!("fs bench: {} FAILED: {e:#}", peer.name());
                    failed.push((p, format!("{e:#}")));
                }
            }
        }
    }
    let environment = bench::environment();
    println!("environment: {environment}");
    println!("fio {seconds} s a job (O_DIRECT in the guests, psync); {files} files unpacked then ls -lR; medians over {runs} runs");
    let mut json_peers = serde_json::Map::new();
    for (p, peer) in peers.iter().enumerate() {
        if let Some((_, why)) = failed.iter().find(|(f, _)| *f == p) {
            let why: String = why.chars().take(4000).collect();
            println!("{:<30} FAILED: {why}", peer.name());
            json_peers.insert(peer.key().to_string(), json!({"failed": why}));
            continue;
        }
        let mut rows = serde_json::Map::new();
        for (j, (job, _)) in JOBS.iter().enumerate() {
            let column = |i: usize| median(&mut results[p].iter().map(|r| r.0[j][i]).collect::<Vec<_>>());
            let (iops, mib, p50, p95) = (column(0), column(1), column(2), column(3));
            println!(
                "{:<30} {job:<17} {iops:>9.0} IOPS {mib:>8.1} MiB/s   latency median {p50:>8.0} us   p95 {p95:>8.0} us",
                peer.name()
            );
            rows.insert(
                job.to_string(),
                json!({"iops": iops.round(), "mib_per_s": (mib * 10.0).round() / 10.0, "clat_median_us": p50.round(), "clat_p95_us": p95.round()}),
            );
        }
        let unpack = median(&mut results[p].iter().map(|r| r.1 .0).collect::<Vec<_>>());
        let list = median(&mut results[p].iter().map(|r| r.1 .1).collect::<Vec<_>>());
        println!(
            "{:<30} unpack {files} files {unpack:>7.2} s   ls -lR {list:>7.2} s",
            peer.name()
        );
        rows.insert("unpack_s".into(), json!((unpack * 100.0).round() / 100.0));
        rows.insert("list_s".into(), json!((list * 100.0).round() / 100.0));
        json_peers.insert(peer.key().to_string(), Value::Object(rows));
    }
    // hull's share over QEMU + virtiofsd: above 1 is better for throughput,
    // below 1 for times.
    let ratio = |row: &str, field: Option<&str>| {
        let value = |peer: &str| {
            let cell = &json_peers.get(peer)?[row];
            match field {
                Some(f) => cell[f].as_f64(),
                None => cell.as_f64(),
            }
        };
        match (value("hull_share"), value("qemu_virtiofsd")) {
            (Some(hull), Some(qemu)) if qemu > 0.0 => Some((hull / qemu * 100.0).round() / 100.0),
            _ => None,
        }
    };
    let ratios = json!({
        "randread_iops": ratio("randread-4k-qd1", Some("iops")),
        "randwrite_iops": ratio("randwrite-4k-qd1", Some("iops")),
        "seqwrite_mib": ratio("seqwrite-1m", Some("mib_per_s")),
        "seqread_mib": ratio("seqread-1m", Some("mib_per_s")),
        "unpack_time": ratio("unpack_s", None),
        "list_time": ratio("list_s", None),
    });
    println!("hull bind mount / QEMU + virtiofsd: {ratios}");
    let report = json!({
        "bench": "fs",
        "environment": environment,
        "what": "fio --ioengine=psync (O_DIRECT in guests) and an unpack + ls -lR of small files, busybox guest, Debian cloud kernel, 512 MiB, 1 vCPU",
        "files": files,
        "runs": runs,
        "seconds_per_job": seconds,
        "peers": json_peers,
        "hull_share_over_qemu_virtiofsd": ratios,
    });
    let path = bench::write_report("fs", &report)?;
    println!("wrote {}", path.display());
    if !failed.is_empty() {
        bail!("{} peer(s) failed (see above)", failed.len());
    }
    Ok(())
}
