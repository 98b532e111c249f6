//! VM tests of container networking through the docker CLI: each
//! container VM has its own address on the default bridge, reaches the
//! others and the outside (masqueraded), publishes ports on the host
//! (127.0.0.1, another network namespace, and back from a container),
//! `--network none` has only `lo`, clashing ports are refused, and nothing
//! (tap, rule, lease) outlives a container; hulld rebuilds its firewall
//! from its store when it starts.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::hulld::{ok, text, Hulld};
use testkit::oci::{busybox_image, push_image, Registry};

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

fn inspect(hulld: &Hulld, format: &str, container: &str) -> String {
    ok(&hulld.docker(&["inspect", "--format", format, container]))
        .trim()
        .to_string()
}

/// A network namespace with a veth to the test host: `peer` at
/// 192.0.2.2/24, the host's side 192.0.2.1/24. Removed when dropped.
struct Peer(String);

impl Peer {
    fn new(name: &str) -> Peer {
        let peer = Peer(name.to_string());
        let script = format!(
            "ip netns add {n} && ip link add {n}h type veth peer name {n}p && ip link set {n}p netns {n} && \
             ip addr add 192.0.2.1/24 dev {n}h && ip link set {n}h up && \
             ip netns exec {n} ip addr add 192.0.2.2/24 dev {n}p && ip netns exec {n} ip link set {n}p up && \
             ip netns exec {n} ip link set lo up",
            n = peer.0
        );
        let out = sh(&script);
        assert!(out.status.success(), "making the peer namespace: {}", text(&out.stderr));
        peer
    }

    fn run(&self, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", script])
            .output()
            .unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {n}; ip link del {n}h 2>/dev/null", n = self.0));
    }
}

/// The body at `url`, fetched from the test host (empty if none came).
fn wget(url: &str) -> String {
    text(&sh(&format!("curl -sS -m 5 {url}")).stdout)
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn containers_have_addresses_published_ports_and_outbound() {
    let mut hulld = Hulld::start("vm-net").unwrap();
    let registry = Registry::start("vm-net", None).unwrap();
    let image = push_image(
        &registry,
        &hulld.work,
        busybox_image(json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "ExposedPorts": {"80/tcp": {}}})),
        "test/box:v1",
    )
    .unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    // The first container makes the template every later one is cloned from.
    assert_eq!(ok(&hulld.docker(&["run", "--rm", &image, "echo", "first"])), "first\n");
    let peer = Peer::new(&format!("p{}", &hulld.net_name[1..]));

    // A web server with two published ports, one on 127.0.0.1 only.
    let web = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:9090:80/tcp",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello from web > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]));
    let web = web.trim();
    let address = inspect(&hulld, "{{.NetworkSettings.IPAddress}}", "web");
    let gateway = inspect(&hulld, "{{.NetworkSettings.Gateway}}", "web");
    let mac = inspect(&hulld, "{{.NetworkSettings.MacAddress}}", "web");
    assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "IPAddress {address:?}");
    assert!(gateway.parse::<std::net::Ipv4Addr>().is_ok(), "Gateway {gateway:?}");
    let octets: Vec<String> = address
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
        .collect();
    assert_eq!(mac, format!("02:42:{}", octets.join(":")));
    assert_eq!(
        inspect(
            &hulld,
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
            "web"
        ),
        "bridge"
    );
    assert_eq!(inspect(&hulld, "{{.HostConfig.NetworkMode}}", "web"), "bridge");
    let ports = ok(&hulld.docker(&["port", "web"]));
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    assert!(ports.contains("80/tcp -> 127.0.0.1:9090"), "{ports}");
    let ps = ok(&hulld.docker(&["ps", "--format", "{{.Ports}}"]));
    assert!(ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");

    // The host reaches it directly and through both published ports.
    let deadline = Instant::now() + Duration::from_secs(120);
    while wget(&format!("http://{address}/")) != "hello from web\n" {
        if Instant::now() > deadline {
            let logs = hulld.docker(&["logs", "web"]);
            let console: String = std::fs::read_dir(hulld.data.join("containers"))
                .unwrap()
                .flatten()
                .map(|d| std::fs::read_to_string(d.path().join("console.log")).unwrap_or_default())
                .collect();
            let host = sh("ip addr; ip route; nft list ruleset");
            panic!(
                "the web server did not answer on {address}\nlogs: {}{}\nconsole: {console}\nhost: {}{}",
                text(&logs.stdout),
                text(&logs.stderr),
                text(&host.stdout),
                text(&host.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(wget("http://127.0.0.1:8080/"), "hello from web\n");
    assert_eq!(wget("http://127.0.0.1:9090/"), "hello from web\n");
    // Another namespace reaches the port published on every address, not the 127.0.0.1 one.
    let from_peer = peer.run("curl -sS -m 5 http://192.0.2.1:8080/");
    assert_eq!(
        text(&from_peer.stdout),
        "hello from web\n",
        "{}",
        text(&from_peer.stderr)
    );
    assert!(!peer
        .run("busybox wget -q -T 3 -O- http://192.0.2.1:9090/")
        .status
        .success());

    // Container to container, by hairpin through the published port, and
    // outbound (masqueraded: the peer has no route back to the bridge).
    let listener = std::thread::spawn({
        let name = peer.0.clone();
        move || {
            Command::new("ip")
                .args(["netns", "exec", &name, "busybox", "nc", "-l", "-p", "7000"])
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let script = format!(
        "get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 $1 $2; }}; \
         get {address} 80 && get {gateway} 8080 && echo out | busybox nc -w 5 192.0.2.2 7000; \
         cat /etc/hosts /etc/resolv.conf; busybox ip -o -4 addr show eth0"
    );
    let client = hulld.docker(&["run", "--rm", "--name", "client", &image, "sh", "-c", &script]);
    let out = text(&client.stdout);
    assert!(client.status.success(), "{out}{}", text(&client.stderr));
    assert_eq!(out.matches("hello from web").count(), 2, "{out}");
    assert_eq!(text(&listener.join().unwrap().stdout), "out\n");
    assert!(out.contains("nameserver "), "resolv.conf: {out}");
    assert!(out.contains("mtu") || out.contains("eth0"), "{out}");

    // --network none: lo only, and no ports.
    let none = ok(&hulld.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "busybox",
        "ip",
        "-o",
        "link",
        "show",
        "up",
    ]));
    assert!(none.contains(": lo:") && !none.contains("eth0"), "{none}");
    let refused = hulld.docker(&["run", "--rm", "--network", "none", "-p", "81:80", &image, "true"]);
    assert!(!refused.status.success());

    // A port a container holds, or any host process holds, is refused.
    let clash = hulld.docker(&["run", "--rm", "-p", "8080:80", &image, "true"]);
    assert_eq!(clash.status.code(), Some(125));
    assert!(
        text(&clash.stderr).contains("port is already allocated"),
        "{}",
        text(&clash.stderr)
    );
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let clash = hulld.docker(&["run", "--rm", "-p", &format!("{port}:80"), &image, "true"]);
    assert!(
        text(&clash.stderr).contains("port is already allocated"),
        "{}",
        text(&clash.stderr)
    );
    drop(held);
    let bad = hulld.docker(&["run", "--rm", "-p", "99999:80", &image, "true"]);
    assert!(!bad.status.success());

    // hulld rebuilds its rules from its store: a lost table comes back.
    let net_name = hulld.net_name.clone();
    ok(&Command::new("nft")
        .args(["delete", "table", "ip", &net_name])
        .output()
        .unwrap());
    assert_ne!(wget("http://127.0.0.1:8080/"), "hello from web\n");
    hulld.restart().unwrap();
    eventually("the published port after hulld's restart", || {
        wget("http://127.0.0.1:8080/") == "hello from web\n"
    });

    // Removed: no tap, no published port, no lease.
    ok(&hulld.docker(&["rm", "-f", "web"]));
    let tap = format!("/sys/class/net/hv{}", &web[..12]);
    eventually("the tap to go", || !std::path::Path::new(&tap).exists());
    let table = text(
        &Command::new("nft")
            .args(["list", "table", "ip", &net_name])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(!table.contains("8080") && !table.contains("9090"), "{table}");
    let leases: usize = std::fs::read_dir(hulld.data.join("networks"))
        .unwrap()
        .flatten()
        .filter_map(|n| std::fs::read_dir(n.path().join("leases")).ok())
        .map(|l| l.count())
        .sum();
    assert_eq!(leases, 0, "leases are left");
}
