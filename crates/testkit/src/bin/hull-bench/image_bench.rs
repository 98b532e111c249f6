//! The image benchmarks: pull, disk build and per-container disk cost on
//! the host, with skopeo + umoci as the peer in the same run; `hull run
//! IMAGE true` where guests can boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use testkit::bench::{self, Summary};
use testkit::oci::{busybox_layer, write_layout, Compression, ImageSpec, LayerBuilder, Registry};
use vmm::host::HostKvm;

use crate::{inside_vmhost, print_line};

/// Real files from this machine, in four layers of ~100 MiB in all.
fn big_image() -> ImageSpec {
    let tree = |dir: &str, prefix: &str| LayerBuilder::new().tree(Path::new(dir), prefix).build();
    ImageSpec {
        layers: vec![
            (busybox_layer(&["sh", "true", "ls"]), Compression::Gzip),
            (tree("/usr/lib/python3.11", "usr/lib/python3.11"), Compression::Gzip),
            (
                tree("/usr/share/perl/5.36.0", "usr/share/perl/5.36.0"),
                Compression::Gzip,
            ),
            (
                tree("/usr/lib/x86_64-linux-gnu/perl", "usr/lib/x86_64-linux-gnu/perl"),
                Compression::Gzip,
            ),
        ],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    }
}

fn run(command: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed())
}

fn hull(data: &Path) -> Result<Command> {
    let mut command = Command::new(testkit::boot::workspace_binary("hull")?);
    command.env("HULL_DATA_DIR", data);
    Ok(command)
}

pub fn pull_and_disk(runs: usize) -> Result<()> {
    let work = std::env::temp_dir().join(format!("hull-bench-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let layout = work.join("layout");
    let spec = big_image();
    let uncompressed: u64 = spec.layers.iter().map(|(tar, _)| tar.len() as u64).sum();
    write_layout(&layout, "v1", &[spec])?;
    let registry = Registry::start("bench", None)?;
    registry.push(&layout, "v1", "bench/big:v1", None)?;
    let name = format!("{}/bench/big:v1", registry.addr);

    let (mut pulls, mut disks, mut skopeo, mut umoci) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut compressed = 0;
    let mut extra_container_bytes = 0;
    for i in 1..=runs {
        eprintln!("image run {i}/{runs}");
        let data = work.join(format!("data{i}"));
        pulls.push(run(hull(&data)?.args(["pull", "-q", &name]))?);
        let store = image::Store::open(&data)?;
        let record = store.resolve(&name)?;
        compressed = record.size();
        let start = Instant::now();
        image::disk::image_disk(&store, &record)?;
        disks.push(start.elapsed());
        // One more container costs its writable disk (the image disk is shared).
        let scratch = data.join("rw-probe.ext4");
        std::env::set_var("HULL_DATA_DIR", &data);
        runtime::writable::create(&scratch, runtime::writable::DiskKind::Layer)?;
        extra_container_bytes = image::disk::allocated_bytes(&scratch);
        std::env::remove_var("HULL_DATA_DIR");

        let oci = work.join(format!("skopeo{i}"));
        skopeo.push(run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{name}"))
            .arg(format!("oci:{}:v1", oci.display())))?);
        umoci.push(run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", oci.display()))
            .arg(work.join(format!("bundle{i}"))))?);
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(&oci);
        let _ = std::fs::remove_dir_all(work.join(format!("bundle{i}")));
    }
    let mib = compressed as f64 / (1 << 20) as f64;
    let pull = Summary::of(&pulls).context("no runs")?;
    let disk = Summary::of(&disks).context("no runs")?;
    let skopeo = Summary::of(&skopeo).context("no runs")?;
    let umoci = Summary::of(&umoci).context("no runs")?;
    println!(
        "image: {} layers, {mib:.1} MiB compressed, {:.1} MiB uncompressed",
        4,
        uncompressed as f64 / (1 << 20) as f64
    );
    print_line("hull pull (loopback registry)", &pull);
    println!("  = {:.1} MiB/s at the median", mib / (pull.median_ms / 1000.0));
    print_line("hull: layers to its ext4 disk", &disk);
    print_line("peer: skopeo copy docker:// -> oci:", &skopeo);
    print_line("peer: umoci unpack", &umoci);
    println!(
        "host disk one more container costs: {:.1} MiB (its sparse writable disk; the image disk is shared)",
        extra_container_bytes as f64 / (1 << 20) as f64
    );
    let run_true = match vmm::host::classify() {
        HostKvm::Hardware { .. } => {
            run_true(10)?;
            Some(std::fs::read(bench::bench_dir().join("image-run.json"))?)
        }
        _ => {
            println!("no hardware KVM here: running `hull run IMAGE true` inside vmhost");
            inside_vmhost(vec!["image-run".into(), "--runs".into(), "10".into()])?;
            Some(std::fs::read(bench::bench_dir().join("image-run.json"))?)
        }
    };
    let report = json!({
        "bench": "image",
        "environment": bench::environment(),
        "image": {"layers": 4, "compressed_bytes": compressed, "uncompressed_bytes": uncompressed},
        "hull_pull": pull.to_json(),
        "hull_pull_mib_per_s_median": (mib / (pull.median_ms / 1000.0) * 10.0).round() / 10.0,
        "hull_disk_build": disk.to_json(),
        "peer_skopeo_copy": skopeo.to_json(),
        "peer_umoci_unpack": umoci.to_json(),
        "extra_container_host_bytes": extra_container_bytes,
        "hull_run_image_true": run_true.and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()),
    });
    drop(registry);
    let _ = std::fs::remove_dir_all(&work);
    let path = bench::write_report("image", &report)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `hull run IMAGE true` with the image (busybox, loaded from an OCI
/// layout) already in the store and its disk built by a first run.
pub fn run_true(runs: usize) -> Result<()> {
    let work: PathBuf = std::env::temp_dir().join(format!("hull-bench-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    std::fs::create_dir_all(&data)?;
    let guest = runtime::data_dir().join("guest.json");
    std::fs::copy(&guest, data.join("guest.json")).context("the guest is set up (hull setup)")?;
    let layout = work.join("layout");
    let spec = ImageSpec {
        layers: vec![(busybox_layer(&["sh", "true"]), Compression::Gzip)],
        config: json!({"Cmd": ["sh"]}),
        architecture: "amd64".into(),
    };
    write_layout(&layout, "v1", &[spec])?;
    let loaded = hull(&data)?.args(["load", "-q", "-i"]).arg(&layout).output()?;
    if !loaded.status.success() {
        bail!("hull load: {}", String::from_utf8_lossy(&loaded.stderr));
    }
    let store = image::Store::open(&data)?;
    let id = store.images()?.first().context("the image loaded")?.id.to_string();
    run(hull(&data)?.args(["run", &id, "true"]))?; // builds the image disk once
    let mut samples = Vec::new();
    for i in 1..=runs {
        eprintln!("hull run IMAGE true {i}/{runs}");
        samples.push(run(hull(&data)?.args(["run", &id, "true"]))?);
    }
    let summary = Summary::of(&samples).context("no runs")?;
    print_line("hull run IMAGE true (image present)", &summary);
    let report = json!({
        "bench": "image-run",
        "environment": bench::environment(),
        "hull_run_image_true": summary.to_json(),
    });
    let _ = std::fs::remove_dir_all(&work);
    bench::write_report("image-run", &report)?;
    Ok(())
}
