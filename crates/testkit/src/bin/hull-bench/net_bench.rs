//! `hull-bench net`: what a container's network costs and carries, in one
//! run and one environment (inside vmhost where KVM is not hardware):
//!
//! - `docker run --rm IMAGE true` on the default bridge and with
//!   `--network none`, interleaved (the target: under 10% more);
//! - TCP throughput (iperf3, Debian's, copied into the image) host →
//!   container and container → container, beside a veth pair between two
//!   network namespaces and beside QEMU (the same kernel, virtio-net on a
//!   tap through vhost-net where the host has it) serving iperf3;
//! - requests per second and latency through a published port (wrk on the
//!   host, busybox httpd in the container), beside podman with `-p`;
//! - publishing a 1000-port range: the time it adds to `docker run -d` and
//!   the supervisor's memory for it, beside one socat proxy per port (the
//!   userland-proxy way), measured on 50 proxies and scaled.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testkit::bench::{self, Summary};
use testkit::hulld::Hulld;
use testkit::oci::{busybox_image_with, host_programs_layer, push_image, Registry};
use vmm::host::HostKvm;

use crate::clone_bench::timed;
use crate::{inside_vmhost, print_line};

/// iperf3's received throughput in Gbit/s from its JSON report.
fn gbits(report: &[u8]) -> Result<f64> {
    let value: Value = serde_json::from_slice(report).context("iperf3's JSON report")?;
    value["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no throughput in iperf3's report: {}", String::from_utf8_lossy(report)))
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// `wrk` for 5 s against `url`: requests per second, p50 and p95 latency (ms).
fn wrk(url: &str, work: &Path) -> Result<(f64, f64, f64)> {
    let script = work.join("p95.lua");
    std::fs::write(
        &script,
        "done = function(summary, latency, requests)\n  io.write(string.format(\"RESULT %f %f %f\\n\", summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(95) / 1000))\nend\n",
    )?;
    let out = Command::new("wrk")
        .args(["-t1", "-c10", "-d5s", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .context("wrk (install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("wrk: {text}"))?;
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    if numbers.len() != 3 || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk against {url} failed: {text}");
    }
    Ok((numbers[0], numbers[1], numbers[2]))
}

/// Proportional set size of a process and its threads, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn net_bench(runs: usize) -> Result<()> {
    if !matches!(vmm::host::classify(), HostKvm::Hardware { .. }) {
        println!("no hardware KVM here: running the network benchmark inside vmhost");
        inside_vmhost(vec!["net".into(), "--runs".into(), runs.to_string()])?;
        return Ok(());
    }
    runtime::network::host::load_modules();
    let hulld = Hulld::start("bench-net")?;
    let registry = Registry::start("bench-net", None)?;
    let image = push_image(
        &registry,
        &hulld.work,
        busybox_image_with(host_programs_layer(&["/usr/bin/iperf3"])?),
        "bench/net:v1",
    )?;
    let quiet = |args: &[&str]| -> Result<Duration> { timed(hulld.docker_command(args).stdout(Stdio::null())) };
    quiet(&["pull", "-q", &image])?;
    quiet(&["run", "--rm", &image, "true"])?; // makes the template

    // What a network adds to a run.
    let (mut bridged, mut unnetworked) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        eprintln!("net bench: run {i}/{runs}");
        bridged.push(quiet(&["run", "--rm", &image, "true"])?);
        unnetworked.push(quiet(&["run", "--rm", "--network", "none", &image, "true"])?);
    }
    let bridged = Summary::of(&bridged).context("no runs")?;
    let unnetworked = Summary::of(&unnetworked).context("no runs")?;

    // Throughput: host → container, container → container, and a veth pair.
    let server = String::from_utf8(hulld.docker(&["run", "-d", &image, "iperf3", "-s"]).stdout)?;
    let server = server.trim();
    let address = String::from_utf8(
        hulld
            .docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", server])
            .stdout,
    )?;
    let address = address.trim().to_string();
    wait_for("iperf3 in the container", || {
        std::net::TcpStream::connect_timeout(&format!("{address}:5201").parse().unwrap(), Duration::from_secs(1))
            .is_ok()
    })?;
    let (mut host_to_ctr, mut ctr_to_ctr, mut veth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let out = Command::new("iperf3")
            .args(["-c", &address, "-t", "5", "-J"])
            .output()?;
        host_to_ctr.push(gbits(&out.stdout)?);
        let out = hulld.docker(&["run", "--rm", &image, "iperf3", "-c", &address, "-t", "5", "-J"]);
        ctr_to_ctr.push(gbits(&out.stdout)?);
    }
    quiet(&["rm", "-f", server])?;
    let ns = format!("hb{}", std::process::id());
    let setup = format!(
        "ip netns add {ns}a && ip netns add {ns}b && ip link add {ns}x netns {ns}a type veth peer name {ns}y netns {ns}b && \
         ip -n {ns}a addr add 10.250.0.1/24 dev {ns}x && ip -n {ns}b addr add 10.250.0.2/24 dev {ns}y && \
         ip -n {ns}a link set {ns}x up && ip -n {ns}b link set {ns}y up && ip -n {ns}a link set lo up"
    );
    if !Command::new("sh").args(["-c", &setup]).status()?.success() {
        bail!("making the veth peer failed");
    }
    let mut iperf_server = Command::new("ip")
        .args(["netns", "exec", &format!("{ns}a"), "iperf3", "-s"])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{ns}b"),
                "iperf3",
                "-c",
                "10.250.0.1",
                "-t",
                "5",
                "-J",
            ])
            .output()?;
        veth.push(gbits(&out.stdout)?);
    }
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    let _ = Command::new("sh")
        .args(["-c", &format!("ip netns del {ns}a; ip netns del {ns}b")])
        .status();
    let qemu = qemu_iperf(&hulld.work, &ns).map_err(|e| format!("{e:#}"));

    // A published port under load, beside podman's -p.
    let serve = "busybox mkdir -p /www && echo hello > /www/index.html && exec busybox httpd -f -p 80 -h /www";
    let web = String::from_utf8(
        hulld
            .docker(&["run", "-d", "-p", "18080:80", &image, "sh", "-c", serve])
            .stdout,
    )?;
    wait_for("the published port", || {
        Command::new("curl")
            .args(["-sf", "-m", "2", "http://127.0.0.1:18080/"])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let hull_http = wrk("http://127.0.0.1:18080/", &hulld.work)?;
    quiet(&["rm", "-f", web.trim()])?;
    let podman_http = podman_http(&hulld.work, &image, &hulld).map_err(|e| e.to_string());

    // Publishing 1000 ports: time and memory, beside a proxy per port.
    let (mut plain, mut ranged, mut shim_pss) = (Vec::new(), Vec::new(), Vec::new());
    let mut plain_pss = Vec::new();
    for i in 0..runs.min(5) {
        let name = format!("r{i}");
        ranged.push(quiet(&[
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            "20000-20999:20000-20999",
            &image,
            "sleep",
            "600",
        ])?);
        shim_pss.push(supervisor_pss(&hulld, &name)? as f64);
        quiet(&["rm", "-f", &name])?;
        let name = format!("p{i}");
        plain.push(quiet(&["run", "-d", "--name", &name, &image, "sleep", "600"])?);
        plain_pss.push(supervisor_pss(&hulld, &name)? as f64);
        quiet(&["rm", "-f", &name])?;
    }
    let ranged = Summary::of(&ranged).context("no runs")?;
    let plain = Summary::of(&plain).context("no runs")?;
    let proxy_kib = socat_proxies_pss(50)?;

    let environment = bench::environment();
    println!("environment: {environment}");
    print_line("docker run --rm IMAGE true (bridge)", &bridged);
    print_line("docker run --rm --network none IMAGE true", &unnetworked);
    let added = (bridged.median_ms - unnetworked.median_ms) / unnetworked.median_ms;
    println!("networking adds {:.1}% to the median run (target < 10%)", added * 100.0);
    let (h2c, c2c, v) = (median(&mut host_to_ctr), median(&mut ctr_to_ctr), median(&mut veth));
    println!(
        "iperf3 host -> container        {h2c:>7.2} Gbit/s ({:.2} of veth)",
        h2c / v
    );
    println!(
        "iperf3 container -> container   {c2c:>7.2} Gbit/s ({:.2} of veth)",
        c2c / v
    );
    println!("iperf3 veth pair (peer)         {v:>7.2} Gbit/s");
    match &qemu {
        Ok(q) => println!(
            "iperf3 host -> QEMU guest (peer) {:>6.2} Gbit/s ({}); hull / QEMU: {:.2}",
            q.gbits,
            q.backend,
            h2c / q.gbits
        ),
        Err(e) => println!("iperf3 host -> QEMU guest (peer) failed here: {e}"),
    }
    println!(
        "published port (wrk, 10 conns)  {:>7.0} req/s, p50 {:.2} ms, p95 {:.2} ms",
        hull_http.0, hull_http.1, hull_http.2
    );
    match &podman_http {
        Ok(p) => println!(
            "podman -p (peer)                {:>7.0} req/s, p50 {:.2} ms, p95 {:.2} ms",
            p.0, p.1, p.2
        ),
        Err(e) => println!("podman -p (peer) failed here: {e}"),
    }
    print_line("docker run -d with 1000 published ports", &ranged);
    print_line("docker run -d without ports", &plain);
    let (shim, plain_shim) = (median(&mut shim_pss), median(&mut plain_pss));
    println!(
        "supervisor Pss: {shim:.0} KiB with 1000 ports, {plain_shim:.0} KiB without; one socat proxy per port: {} KiB for 1000",
        proxy_kib * 1000
    );
    let path = bench::write_report(
        "net",
        &json!({
            "environment": environment,
            "runs": runs,
            "docker_run_rm_true_bridge": bridged.to_json(),
            "docker_run_rm_true_none": unnetworked.to_json(),
            "network_overhead_fraction": added,
            "iperf3_gbits": {"host_to_container": h2c, "container_to_container": c2c, "veth_pair": v,
                "samples": {"host_to_container": host_to_ctr, "container_to_container": ctr_to_ctr, "veth": veth}},
            "qemu_host_to_guest": qemu.as_ref().map(|q| json!({"gbits": q.gbits, "backend": q.backend, "samples": q.samples, "hull_over_qemu": h2c / q.gbits})).unwrap_or_else(|e| json!({"failed": e})),
            "published_port_wrk": {"rps": hull_http.0, "p50_ms": hull_http.1, "p95_ms": hull_http.2},
            "podman_published_port_wrk": podman_http.as_ref().map(|p| json!({"rps": p.0, "p50_ms": p.1, "p95_ms": p.2})).unwrap_or_else(|e| json!({"failed": e})),
            "docker_run_detached_1000_ports": ranged.to_json(),
            "docker_run_detached_no_ports": plain.to_json(),
            "supervisor_pss_kib": {"ports_1000": shim, "no_ports": plain_shim},
            "socat_proxy_per_port_pss_kib_for_1000": proxy_kib * 1000,
        }),
    )?;
    println!("report: {}", path.display());
    Ok(())
}

/// What the QEMU peer carried.
struct QemuRun {
    gbits: f64,
    samples: Vec<f64>,
    /// `vhost-net`, or `userspace virtio-net` where the host has no vhost-net.
    backend: &'static str,
}

/// The peer the issue names: QEMU (microvm, the same kernel, one vCPU)
/// with virtio-net on a tap, through vhost-net where the host has it,
/// serving iperf3 from a busybox initramfs; the host is the client, as
/// for the container.
fn qemu_iperf(work: &Path, ns: &str) -> Result<QemuRun> {
    let kernel = testkit::guest::cloud_kernel()?;
    let vhost = Command::new("modprobe")
        .arg("vhost_net")
        .status()
        .is_ok_and(|s| s.success())
        && Path::new("/dev/vhost-net").exists();
    let tap = format!("{ns}q");
    let made = Command::new("sh")
        .args(["-c", &format!("ip tuntap add dev {tap} mode tap vnet_hdr && ip addr add 10.252.0.1/24 dev {tap} && ip link set {tap} up")])
        .status()?;
    if !made.success() {
        bail!("making tap {tap} failed");
    }
    let then =
        "$B mkdir -p /tmp; $B ip link set lo up; $B ip addr add 10.252.0.2/24 dev eth0; $B ip link set eth0 up; \
                exec /usr/bin/iperf3 -s";
    let result: Result<Vec<f64>> = (|| {
        let initramfs =
            testkit::guest::busybox_initramfs_with(&kernel, &work.join("qemu-net.cpio"), &["/usr/bin/iperf3"], then)?;
        let mut command = testkit::boot::qemu_command(&kernel.vmlinuz(), &initramfs, 256);
        command
            .args([
                "-netdev",
                &format!(
                    "tap,id=n0,ifname={tap},script=no,downscript=no,vhost={}",
                    if vhost { "on" } else { "off" }
                ),
                "-device",
                "virtio-net-device,netdev=n0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut qemu = command.spawn().context("starting qemu-system-x86_64")?;
        let served = wait_for("iperf3 in the QEMU guest", || {
            std::net::TcpStream::connect_timeout(&"10.252.0.2:5201".parse().unwrap(), Duration::from_secs(1)).is_ok()
        });
        let mut samples = Vec::new();
        if served.is_ok() {
            for _ in 0..3 {
                let out = Command::new("iperf3")
                    .args(["-c", "10.252.0.2", "-t", "5", "-J"])
                    .output()?;
                samples.push(gbits(&out.stdout)?);
            }
        }
        let _ = qemu.kill();
        let _ = qemu.wait();
        served?;
        Ok(samples)
    })();
    let _ = Command::new("ip").args(["link", "del", &tap]).status();
    let mut samples = result?;
    Ok(QemuRun {
        gbits: median(&mut samples),
        samples,
        backend: if vhost {
            "vhost-net"
        } else {
            "userspace virtio-net: no vhost-net here"
        },
    })
}

/// The Pss of container `name`'s supervisor (hull-shim), in KiB.
fn supervisor_pss(hulld: &Hulld, name: &str) -> Result<u64> {
    let pid = String::from_utf8(hulld.docker(&["inspect", "-f", "{{.State.Pid}}", name]).stdout)?;
    Ok(pss_kib(pid.trim().parse().context("the supervisor's PID")?))
}

/// Mean Pss (KiB) of `count` socat processes each forwarding one port.
fn socat_proxies_pss(count: u16) -> Result<u64> {
    let mut children = Vec::new();
    for i in 0..count {
        children.push(
            Command::new("socat")
                .arg(format!("TCP-LISTEN:{},fork,reuseaddr", 21000 + i))
                .arg(format!("TCP:127.0.0.1:{}", 22000 + i))
                .spawn()
                .context("socat (install socat)")?,
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let total: u64 = children.iter().map(|c| pss_kib(c.id())).sum();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if total == 0 {
        bail!("no socat proxy ran");
    }
    Ok(total / u64::from(count))
}

/// podman running the same image's httpd with `-p`, under wrk.
fn podman_http(work: &Path, image: &str, hulld: &Hulld) -> Result<(f64, f64, f64)> {
    let store = image::Store::open(&hulld.data)?;
    let record = store.resolve(image)?;
    let rootfs = work.join("podman-rootfs");
    crate::clone_bench::unpack_rootfs(&image::disk::image_disk(&store, &record)?, &rootfs)?;
    let serve = "busybox mkdir -p /www && echo hello > /www/index.html && exec busybox httpd -f -p 80 -h /www";
    let Some(podman) = crate::podman_peer::Podman::with_rootfs(work, &rootfs)? else {
        bail!("podman is not installed here");
    };
    let out = podman
        .command()
        .args(["run", "-d", "--name", "benchweb", "-p", "18081:80", podman.image()])
        .args(["sh", "-c", serve])
        .output()?;
    if !out.status.success() {
        bail!("podman run -p failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let result = wait_for("podman's published port", || {
        Command::new("curl")
            .args(["-sf", "-m", "2", "http://127.0.0.1:18081/"])
            .status()
            .is_ok_and(|s| s.success())
    })
    .and_then(|_| wrk("http://127.0.0.1:18081/", work));
    let _ = podman.command().args(["rm", "-f", "benchweb"]).output();
    result
}
