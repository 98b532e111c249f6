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
use testkit::hulld::{eventually, ok, text, Hulld};
use testkit::oci::{busybox_image_with, host_programs_layer, push_image, Registry};

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
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

/// A hulld of its own and a registry holding a busybox image with
/// `config`, pulled.
fn with_box_image(name: &str, config: serde_json::Value) -> (Hulld, Registry, String) {
    let (hulld, registry, image) = Hulld::with_registry(name, &[], config).unwrap();
    ok(&hulld.docker(&["pull", "-q", &image]));
    (hulld, registry, image)
}

/// The body at `url`, fetched from the test host (empty if none came
/// within 5 s: what a check that nothing answers waits).
fn wget(url: &str) -> String {
    fetch(url, 5)
}

/// The body at `url`, given up to `seconds`. curl's error is printed: a
/// connection nothing answered reads differently from one with no reply.
fn fetch(url: &str, seconds: u32) -> String {
    let out = sh(&format!("curl -sS -m {seconds} {url}"));
    if !out.stderr.is_empty() {
        eprintln!("curl {url}: {}", text(&out.stderr).trim());
    }
    text(&out.stdout)
}

/// The body at `url`, which is to answer: TCP's own retransmissions are
/// given time (a SYN lost or a guest not scheduled for a while on the
/// emulated test host), and a slow answer is reported, not hidden.
fn served(url: &str) -> String {
    let started = Instant::now();
    let body = fetch(url, 30);
    if started.elapsed() > Duration::from_secs(5) {
        eprintln!("{url} answered after {:?}", started.elapsed());
    }
    body
}

/// The host's view of `hulld`'s network, for a failed check's message.
fn host_network(hulld: &Hulld) -> String {
    let script = format!(
        "nft list table bridge {n}; nft list table ip {n}; ip -4 addr; ip route; ip neigh; ss -tn; \
         cat /proc/net/nf_conntrack 2>/dev/null | grep -v ' dport=53 '",
        n = hulld.net_name
    );
    let out = sh(&script);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn containers_have_addresses_published_ports_and_outbound() {
    let (mut hulld, registry, image) = with_box_image(
        "vm-net",
        json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "ExposedPorts": {"80/tcp": {}}}),
    );
    // The first container makes (or finds, testkit::template_cache) the template every later one is cloned from.
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
    let address = hulld.inspect("{{.NetworkSettings.IPAddress}}", "web");
    let gateway = hulld.inspect("{{.NetworkSettings.Gateway}}", "web");
    let mac = hulld.inspect("{{.NetworkSettings.MacAddress}}", "web");
    assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "IPAddress {address:?}");
    assert!(gateway.parse::<std::net::Ipv4Addr>().is_ok(), "Gateway {gateway:?}");
    let octets: Vec<String> = address
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
        .collect();
    assert_eq!(mac, format!("02:42:{}", octets.join(":")));
    assert_eq!(
        hulld.inspect("{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", "web"),
        "bridge"
    );
    assert_eq!(hulld.inspect("{{.HostConfig.NetworkMode}}", "web"), "bridge");
    let ports = ok(&hulld.docker(&["port", "web"]));
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    assert!(ports.contains("80/tcp -> 127.0.0.1:9090"), "{ports}");
    let ps = ok(&hulld.docker(&["ps", "--format", "{{.Ports}}"]));
    assert!(ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");
    // -P: the image's exposed ports on free host ports.
    ok(&hulld.docker(&["run", "-d", "--name", "all", "-P", &image, "sleep", "600"]));
    let any = ok(&hulld.docker(&["port", "all", "80"]));
    let port: u16 = any.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(any.starts_with("0.0.0.0:") && port > 0, "{any}");
    ok(&hulld.docker(&["rm", "-f", "all"]));

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
            panic!(
                "the web server did not answer on {address}\nlogs: {}{}\nconsole: {console}\nhost: {}",
                text(&logs.stdout),
                text(&logs.stderr),
                host_network(&hulld)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(served("http://127.0.0.1:8080/"), "hello from web\n");
    assert_eq!(served("http://127.0.0.1:9090/"), "hello from web\n");
    // A legacy link on the default bridge: its variables and its name.
    let linked = ok(&hulld.docker(&[
        "run",
        "--rm",
        "--name",
        "client",
        "--link",
        "web:front",
        &image,
        "sh",
        "-c",
        "echo $FRONT_PORT_80_TCP $FRONT_NAME $FRONT_ENV_PATH; busybox wget -q -O- http://front/",
    ]));
    assert_eq!(linked, format!("tcp://{address}:80 /client/front\nhello from web\n"));
    let stats = ok(&hulld.docker(&["stats", "--no-stream", "--format", "{{.NetIO}}", "web"]));
    assert!(
        stats.contains(" / ") && !stats.starts_with("0B"),
        "network I/O in stats: {stats}"
    );
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

    // UDP: datagrams to a published UDP port reach the container (Debian's
    // socat in the image: busybox's nc has no UDP).
    let udp_image = push_image(
        &registry,
        &hulld.work,
        busybox_image_with(host_programs_layer(&["/usr/bin/socat"]).unwrap()),
        "test/socat:v1",
    )
    .unwrap();
    ok(&hulld.docker(&["pull", "-q", &udp_image]));
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        "127.0.0.1:5353:5353/udp",
        &udp_image,
        "socat",
        "-u",
        "UDP-RECVFROM:5353,fork",
        "STDOUT",
    ]));
    eventually("a datagram through the published UDP port", || {
        let _ = sh("echo datagram | socat -u STDIN UDP:127.0.0.1:5353");
        text(&hulld.docker(&["logs", "udp"]).stdout).contains("datagram")
    });
    ok(&hulld.docker(&["rm", "-f", "udp"]));

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

/// What `busybox nslookup NAME` in a container on `network` printed.
fn nslookup(hulld: &Hulld, image: &str, network: &str, name: &str) -> String {
    let out = hulld.docker(&["run", "--rm", "--network", network, image, "busybox", "nslookup", name]);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn user_networks_resolve_names_and_are_isolated() {
    let (hulld, _registry, image) = with_box_image("vm-usernet", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));

    ok(&hulld.docker(&[
        "network",
        "create",
        "--subnet",
        "10.77.0.0/24",
        "--label",
        "tier=web",
        "front",
    ]));
    ok(&hulld.docker(&["network", "create", "back"]));
    ok(&hulld.docker(&["network", "create", "--internal", "priv"]));
    let listed = ok(&hulld.docker(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]));
    for row in [
        "bridge bridge",
        "none null",
        "front bridge",
        "back bridge",
        "priv bridge",
    ] {
        assert!(listed.lines().any(|l| l == row), "{row} in {listed}");
    }
    let front = ok(&hulld.docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{.Labels.tier}} {{.Internal}}",
        "front",
    ]));
    assert_eq!(front.trim(), "10.77.0.0/24 10.77.0.1 web false");
    let overlap = hulld.docker(&["network", "create", "--subnet", "10.77.0.0/16", "clash"]);
    assert!(text(&overlap.stderr).contains("overlaps"), "{}", text(&overlap.stderr));
    let taken = hulld.docker(&["network", "create", "front"]);
    assert!(
        text(&taken.stderr).contains("already exists"),
        "{}",
        text(&taken.stderr)
    );

    // A server with an alias and a fixed address; names resolve on its network.
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "api",
        "--network",
        "front",
        "--network-alias",
        "svc",
        "--ip",
        "10.77.0.50",
        &image,
        "sh",
        "-c",
        "busybox mkdir -p /www && echo api > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]));
    assert_eq!(
        hulld.inspect("{{.NetworkSettings.Networks.front.IPAddress}}", "api"),
        "10.77.0.50"
    );
    assert_eq!(
        hulld.inspect("{{.NetworkSettings.IPAddress}}", "api"),
        "",
        "the legacy field is the default bridge's"
    );
    let members = ok(&hulld.docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}",
        "front",
    ]));
    assert_eq!(members.trim(), "api 10.77.0.50/24");
    for name in ["api", "svc", "API"] {
        let answer = nslookup(&hulld, &image, "front", name);
        assert!(answer.contains("10.77.0.50"), "{name}: {answer}");
    }
    assert!(
        !nslookup(&hulld, &image, "back", "api").contains("10.77.0.50"),
        "names stay on their network"
    );

    // Addresses are checked.
    let again = hulld.docker(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--ip",
        "10.77.0.50",
        &image,
        "true",
    ]);
    assert!(
        text(&again.stderr).contains("already in use"),
        "{}",
        text(&again.stderr)
    );
    let outside = hulld.docker(&["run", "--rm", "--network", "front", "--ip", "10.78.0.5", &image, "true"]);
    assert!(
        text(&outside.stderr).contains("is not in network"),
        "{}",
        text(&outside.stderr)
    );

    // The same network reaches the server; another does not; an internal one has no way out.
    let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 10.77.0.50 80";
    let same = hulld.docker(&["run", "--rm", "--network", "front", &image, "sh", "-c", get]);
    assert!(text(&same.stdout).contains("api"), "{}", text(&same.stderr));
    let other = hulld.docker(&["run", "--rm", "--network", "back", &image, "sh", "-c", get]);
    assert!(!text(&other.stdout).contains("api"), "networks are isolated");
    let private = ok(&hulld.docker(&["run", "--rm", "--network", "priv", &image, "busybox", "ip", "route"]));
    assert!(
        !private.contains("default"),
        "an internal network has no default route: {private}"
    );
    let from_private = hulld.docker(&["run", "--rm", "--network", "priv", &image, "sh", "-c", get]);
    assert!(!text(&from_private.stdout).contains("api"));

    // A network in use stays; an unused one goes, with its bridge.
    let busy = hulld.docker(&["network", "rm", "front"]);
    assert!(
        text(&busy.stderr).contains("has active endpoints"),
        "{}",
        text(&busy.stderr)
    );
    let bridge = inspect_network_bridge(&hulld, "back");
    ok(&hulld.docker(&["network", "rm", "back"]));
    assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists());
    ok(&hulld.docker(&["rm", "-f", "api"]));
    let pruned = ok(&hulld.docker(&["network", "prune", "-f"]));
    assert!(pruned.contains("front") && pruned.contains("priv"), "{pruned}");
    let listed = ok(&hulld.docker(&["network", "ls", "--format", "{{.Name}}"]));
    assert_eq!(listed.lines().count(), 2, "only bridge and none are left: {listed}");
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn running_containers_join_and_leave_networks() {
    let (hulld, _registry, image) = with_box_image("vm-join", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));
    ok(&hulld.docker(&["network", "create", "--subnet", "10.78.0.0/24", "front"]));
    ok(&hulld.docker(&["network", "create", "--subnet", "10.79.0.0/24", "back"]));
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "back",
        "--ip",
        "10.79.0.10",
        &image,
        "sh",
        "-c",
        "busybox mkdir -p /www && echo db > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]));
    let app = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "app",
        "--network",
        "front",
        &image,
        "busybox",
        "sleep",
        "600",
    ]));
    let app = app.trim();
    let exec = |script: &str| {
        let out = hulld.docker(&["exec", "app", "sh", "-c", script]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    };
    let get_db = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 db 80; \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 10.79.0.10 80";
    assert!(!exec(get_db).contains("\ndb"), "back is out of reach from front");

    // Joined while running: a second NIC, its address, names and routes.
    ok(&hulld.docker(&["network", "connect", "back", "app"]));
    let back_ip = hulld.inspect("{{.NetworkSettings.Networks.back.IPAddress}}", "app");
    assert!(back_ip.starts_with("10.79.0."), "{back_ip}");
    let addresses = exec("busybox ip -o -4 addr");
    assert!(addresses.contains(&format!("inet {back_ip}/24")), "{addresses}");
    assert!(addresses.contains("inet 10.78.0."), "still on front: {addresses}");
    let reached = exec(get_db);
    assert!(reached.contains("\ndb"), "db by name and by address: {reached}");
    let hosts = exec("cat /etc/hosts");
    assert!(hosts.contains(&back_ip), "/etc/hosts names the new address: {hosts}");
    let members = ok(&hulld.docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .Containers}}{{.Name}} {{end}}",
        "back",
    ]));
    assert!(members.contains("app") && members.contains("db"), "{members}");
    let taps = || {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("hv{}", &app[..12])))
            .count()
    };
    assert_eq!(taps(), 2, "a tap per network");
    // A paused VM's guest cannot take part: refused, and nothing changes.
    ok(&hulld.docker(&["pause", "app"]));
    let refused = hulld.docker(&["network", "disconnect", "back", "app"]);
    assert!(text(&refused.stderr).contains("is paused"), "{}", text(&refused.stderr));
    ok(&hulld.docker(&["unpause", "app"]));
    assert!(exec(get_db).contains("\ndb"), "still on back after the pause");

    // Off the first network: its address and route go, the other NIC takes the default route.
    ok(&hulld.docker(&["network", "disconnect", "front", "app"]));
    let addresses = exec("busybox ip -o -4 addr");
    assert!(!addresses.contains("10.78.0."), "{addresses}");
    let routes = exec("busybox ip route");
    assert!(routes.contains("default via 10.79.0.1"), "{routes}");
    assert!(exec(get_db).contains("\ndb"), "back still works");
    eventually("the tap to go with its NIC", || taps() == 1);
    let shown = hulld.inspect("{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", "app");
    assert_eq!(shown.trim(), "back");

    // Off every network, then back on one: slots are reused.
    ok(&hulld.docker(&["network", "disconnect", "back", "app"]));
    assert!(!exec("busybox ip -o -4 addr").contains("10.79.0."));
    ok(&hulld.docker(&["network", "connect", "front", "app"]));
    let addresses = exec("busybox ip -o -4 addr");
    assert!(addresses.contains("inet 10.78.0."), "{addresses}");
    let denied = hulld.docker(&["network", "disconnect", "back", "app"]);
    assert!(
        text(&denied.stderr).contains("is not connected"),
        "{}",
        text(&denied.stderr)
    );

    ok(&hulld.docker(&["rm", "-f", "app", "db"]));
    eventually("no tap to outlive its container", || taps() == 0);
    ok(&hulld.docker(&["network", "rm", "front", "back"]));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_container_on_anothers_network_runs_in_its_vm_with_a_root_of_its_own() {
    let (hulld, registry, image) = with_box_image("vm-joined", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));
    // Another image (same files, another config): its disk is plugged into the running VM.
    let other = testkit::oci::busybox_image(json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "Labels": {"other": "1"}}));
    let other = testkit::oci::push_image(&registry, &hulld.work, other, "test/other:v1").unwrap();
    ok(&hulld.docker(&["pull", "-q", &other]));
    let web = ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        &image,
        "sh",
        "-c",
        "busybox mkdir -p /www && echo served-by-web > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]));
    let web = web.trim().to_string();
    let web_ip = hulld.inspect("{{.NetworkSettings.IPAddress}}", "web");
    let web_host = hulld.inspect("{{.Config.Hostname}}", "web");

    // A container of web's image, attached, removed at its end: web's
    // localhost, address and hostname are its own.
    let joined = hulld.docker(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        &image,
        "sh",
        "-c",
        "busybox wget -qO- http://127.0.0.1/; busybox hostname; busybox ip -o -4 addr; ls /www 2>&1; echo pid1=$(busybox cat /proc/1/comm) etc-hostname=$(busybox cat /etc/hostname); busybox grep -c \"$(busybox hostname)\" /etc/hosts; echo dev: $(ls /dev); busybox mknod /vdb b 254 16 2>&1; echo done",
    ]);
    let said = format!("{}{}", text(&joined.stdout), text(&joined.stderr));
    eprintln!("a container on web's network said:\n{said}");
    assert!(joined.status.success(), "{said}");
    assert!(said.contains("served-by-web"), "web's localhost: {said}");
    assert!(
        said.contains(&format!("{web_host}\n")),
        "web's hostname {web_host}: {said}"
    );
    assert!(
        said.contains(&format!("inet {web_ip}/")),
        "web's address {web_ip}: {said}"
    );
    assert!(said.contains("No such file"), "a root of its own: {said}");
    assert!(said.contains("pid1=sh"), "a PID namespace of its own: {said}");
    assert!(
        said.contains(&format!("etc-hostname={web_host}\n1\n")),
        "web's hosts files: {said}"
    );
    // The VM's disks hold web's files: out of its reach.
    let dev = said.lines().find(|l| l.starts_with("dev:")).unwrap_or_default();
    assert!(
        dev.contains("null") && dev.contains("pts") && !dev.contains("vd"),
        "{said}"
    );
    assert!(
        said.contains("Operation not permitted"),
        "mknod without CAP_MKNOD: {said}"
    );

    // Another image's: its disk is plugged into web's VM while it runs.
    // Detached, exec'd into, stopped, started.
    let vdc = || {
        hulld.inspect("{{.State.Running}}", "web") == "true" && {
            let size = hulld.docker(&["exec", "web", "busybox", "cat", "/sys/block/vdc/size"]);
            text(&size.stdout).trim() != "0"
        }
    };
    assert!(!vdc(), "web's spare slot starts empty");
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "side",
        "--network",
        "container:web",
        &other,
        "sh",
        "-c",
        "echo side-up; exec busybox sleep 600",
    ]));
    assert_eq!(
        hulld.inspect("{{.HostConfig.NetworkMode}}", "side"),
        format!("container:{web}")
    );
    assert_eq!(hulld.inspect("{{.NetworkSettings.IPAddress}}", "side"), "");
    let exec = |script: &str| {
        let out = hulld.docker(&["exec", "side", "sh", "-c", script]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    };
    assert!(exec("busybox wget -qO- http://127.0.0.1/").contains("served-by-web"));
    assert!(
        exec("echo mine > /mine; cat /proc/1/cmdline").contains("sleep"),
        "its own PID 1"
    );
    let web_sees = hulld.docker(&["exec", "web", "ls", "/mine"]);
    assert!(!web_sees.status.success(), "side's files are not web's");
    eventually("side's output in its log", || {
        text(&hulld.docker(&["logs", "side"]).stdout).contains("side-up")
    });

    // What it cannot have: dockerd's refusals, and what needs a VM of its own.
    let refused = |args: &[&str], expected: &str| {
        let out = hulld.docker(args);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{args:?}: {err}");
    };
    refused(
        &["run", "--network", "container:web", "-p", "8081:80", &image, "true"],
        "conflicting options: port publishing",
    );
    refused(
        &[
            "create",
            "--network",
            "container:web",
            "--hostname",
            "h",
            &image,
            "true",
        ],
        "conflicting options: hostname",
    );
    refused(
        &["create", "--network", "container:nosuch", &image, "true"],
        "No such container",
    );
    refused(&["pause", "side"], "runs in container");
    // Each lists its own processes; neither VM moves while they share it.
    let top = |name: &str| text(&hulld.docker(&["top", name]).stdout);
    let (side_top, web_top) = (top("side"), top("web"));
    assert!(side_top.contains("sleep") && !side_top.contains("httpd"), "{side_top}");
    assert!(web_top.contains("httpd") && !web_top.contains("sleep"), "{web_top}");
    let migrate = |id: &str| {
        hulld.raw(&format!(
            "POST /containers/{id}/migrate HTTP/1.1\r\nHost: hull\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
    };
    let (head, body) = migrate("side");
    assert!(
        head.starts_with("HTTP/1.1 409") && body.contains("runs in container"),
        "{head}{body}"
    );
    let (head, body) = migrate("web");
    assert!(
        head.starts_with("HTTP/1.1 409") && body.contains("(side)"),
        "{head}{body}"
    );
    refused(
        &["network", "connect", "bridge", "side"],
        "cannot be connected to any other network",
    );

    assert!(vdc(), "side's image disk is in web's VM");
    ok(&hulld.docker(&["stop", "-t", "1", "side"]));
    assert_eq!(hulld.inspect("{{.State.Running}}", "side"), "false");
    eventually("side's disk to be unplugged", || !vdc());
    ok(&hulld.docker(&["start", "side"]));
    assert!(exec("cat /mine").contains("mine"), "its writes kept across a restart");

    // Its supervisor is its lifeline: removed by force (the supervisor
    // killed), its processes go from the VM, and its slot is taken back
    // for the next container.
    let vm_processes = || {
        let out = hulld.docker(&["stats", "--no-stream", "--format", "{{.PIDs}}", "web"]);
        text(&out.stdout).trim().parse::<u32>().unwrap_or(0)
    };
    let with_side = vm_processes();
    // Its writes live on web's disk (synced, to be read from the host)
    // until it is removed.
    let side_id = hulld.inspect("{{.Id}}", "side");
    ok(&hulld.docker(&["exec", "side", "busybox", "sync"]));
    let web_disk = hulld.data.join("containers").join(&web).join("rw.ext4");
    let joined_on_disk = || text(&sh(&format!("debugfs -R 'ls /joined' {}", web_disk.display())).stdout);
    assert!(joined_on_disk().contains(&side_id), "{}", joined_on_disk());
    ok(&hulld.docker(&["rm", "-f", "side"]));
    assert!(!joined_on_disk().contains(&side_id), "side's writes went with it");
    eventually("side's processes to go with its supervisor", || {
        let now = vm_processes();
        now > 0 && now < with_side
    });
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "side2",
        "--network",
        "container:web",
        &other,
        "busybox",
        "sleep",
        "600",
    ]));
    let vdd = hulld.docker(&["exec", "web", "busybox", "cat", "/sys/block/vdd/size"]);
    assert!(vdc() && text(&vdd.stdout).trim() == "0", "side's slot reused");

    // Its VM ends with web: so does it; it cannot start without it.
    ok(&hulld.docker(&["stop", "-t", "1", "web"]));
    eventually("side2 to end with web's VM", || {
        hulld.inspect("{{.State.Running}}", "side2") == "false"
    });
    assert!(
        hulld
            .inspect("{{.State.Error}}", "side2")
            .contains("the VM it ran in ended"),
        "why it ended"
    );
    refused(&["start", "side2"], "cannot join network of a non running container");
    ok(&hulld.docker(&["rm", "-f", "side2", "web"]));
}

fn inspect_network_bridge(hulld: &Hulld, network: &str) -> String {
    ok(&hulld.docker(&[
        "network",
        "inspect",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        network,
    ]))
    .trim()
    .to_string()
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn policies_are_enforced_on_the_host_and_change_while_running() {
    let (hulld, _registry, image) = with_box_image("vm-policy", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));
    let serve = "busybox mkdir -p /www && echo served > /www/index.html && exec busybox httpd -f -p 80 -h /www";
    ok(&hulld.docker(&["run", "-d", "--name", "other", &image, "sh", "-c", serve]));
    ok(&hulld.docker(&[
        "run",
        "-d",
        "--name",
        "guarded",
        // Root in the guest that may change its own network.
        "--cap-add",
        "NET_ADMIN",
        "--label",
        "hull.policy=outbound",
        "-p",
        "8081:80",
        &image,
        "sh",
        "-c",
        serve,
    ]));
    let guarded = hulld.inspect("{{.NetworkSettings.IPAddress}}", "guarded");
    let other = hulld.inspect("{{.NetworkSettings.IPAddress}}", "other");
    assert_eq!(
        hulld.inspect("{{index .Config.Labels \"hull.policy\"}}", "guarded"),
        "outbound"
    );
    eventually("the open container to serve", || {
        wget(&format!("http://{other}/")) == "served\n"
    });
    let get = |ip: &str| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} 80");
    let from_guarded = |ip: &str| text(&hulld.docker(&["exec", "guarded", "sh", "-c", &get(ip)]).stdout);
    let from_other = |ip: &str| text(&hulld.docker(&["exec", "other", "sh", "-c", &get(ip)]).stdout);
    eventually("the guarded container to serve itself", || {
        from_guarded("127.0.0.1").contains("served")
    });
    let set = |level: &str| {
        let out = Command::new(testkit::boot::workspace_binary("hull").unwrap())
            .args([
                "policy",
                "guarded",
                level,
                "-H",
                &format!("unix://{}", hulld.socket.display()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "hull policy {level}: {}", text(&out.stderr));
    };

    // outbound: it reaches out; nobody reaches in, not even on a new address it gives itself.
    assert!(from_guarded(&other).contains("served"));
    assert_eq!(wget(&format!("http://{guarded}/")), "");
    assert_eq!(wget("http://127.0.0.1:8081/"), "");
    assert!(!from_other(&guarded).contains("served"));
    ok(&hulld.docker(&[
        "exec",
        "guarded",
        "busybox",
        "ip",
        "addr",
        "add",
        "172.17.99.99/16",
        "dev",
        "eth0",
    ]));
    assert!(
        !from_other("172.17.99.99").contains("served"),
        "the policy follows the tap, not an address"
    );

    // peers: its network's containers reach it, the host does not.
    set("peers");
    assert!(from_other(&guarded).contains("served"), "{}", host_network(&hulld));
    assert_eq!(wget(&format!("http://{guarded}/")), "");

    // published: its published port answers on the host too.
    set("published");
    assert_eq!(served("http://127.0.0.1:8081/"), "served\n", "{}", host_network(&hulld));

    // closed: not even out.
    set("closed");
    assert!(!from_guarded(&other).contains("served"));
    assert_eq!(wget("http://127.0.0.1:8081/"), "");

    // open: everything, as Docker.
    set("open");
    assert_eq!(
        served(&format!("http://{guarded}/")),
        "served\n",
        "{}",
        host_network(&hulld)
    );
    assert!(from_guarded(&other).contains("served"), "{}", host_network(&hulld));
    let bad = Command::new(testkit::boot::workspace_binary("hull").unwrap())
        .args([
            "policy",
            "guarded",
            "shut",
            "-H",
            &format!("unix://{}", hulld.socket.display()),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success() && text(&bad.stderr).contains("invalid policy"));
    ok(&hulld.docker(&["rm", "-f", "guarded", "other"]));
}

#[test]
#[ignore = "VM test: boots real guests; run through scripts/test"]
fn a_compose_project_comes_up_finds_its_services_by_name_and_goes() {
    let (hulld, _registry, image) = with_box_image("vm-compose", json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}));
    // `$$` is compose's escape for a `$` the shell is to see.
    // The address after the `Name:` line (the one before is the server's).
    let lookup = "busybox nslookup $$1 2>/dev/null | busybox awk \"/^Name/ {n=1} n && /^Address/ {print \\$$2}\"";
    let file = format!(
        r#"version: "2.4"
services:
  web:
    image: {image}
    command: sh -c "busybox mkdir -p /www && echo from-web > /www/index.html && exec busybox httpd -f -p 80 -h /www"
    ports: ["8090:80"]
    networks: [default, back]
    healthcheck:
      test: ["CMD-SHELL", "test -e /www/index.html"]
      interval: 1s
      retries: 30
  waiter:
    image: {image}
    networks: [default, back]
    command: sh -c 'find() {{ {lookup}; }}; until [ -n "$$(find web)" ] && [ -n "$$(find client)" ]; do sleep 1; done; echo all-found; exec sleep 1000'
  client:
    image: {image}
    depends_on:
      web:
        condition: service_healthy
    command: sh -c 'find() {{ {lookup}; }}; until [ -n "$$(find web)" ]; do sleep 1; done; printf "GET / HTTP/1.0\r\n\r\n" | busybox nc -w 5 $$(find web) 80; exec sleep 1000'
  sidecar:
    image: {image}
    network_mode: "service:web"
    command: sh -c 'until busybox wget -qO- http://127.0.0.1/; do sleep 1; done; exec sleep 1000'
networks:
  back: {{}}
"#
    );
    let dir = hulld.work.join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), file).unwrap();
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .args(["-p", "proj"])
            .args(args)
            .current_dir(&dir)
            .env("DOCKER_HOST", format!("unix://{}", hulld.socket.display()))
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
            // The first start in a fresh data directory boots the template;
            // in the emulated test host, beside another test host, that
            // has taken longer than compose's 60 s for one request (CI,
            // 2026-12-05: both starts "Read timed out", nothing failed).
            .env("COMPOSE_HTTP_TIMEOUT", "300")
            .output()
            .expect("docker-compose (Debian's package) runs")
    };
    let up = compose(&["up", "-d"]);
    assert!(up.status.success(), "up: {}{}", text(&up.stdout), text(&up.stderr));
    // The client waited for web's healthcheck (compose reads State.Health).
    assert_eq!(hulld.inspect("{{.State.Health.Status}}", "proj_web_1"), "healthy");
    let ps = compose(&["ps"]);
    let listed = text(&ps.stdout);
    for service in ["proj_web_1", "proj_waiter_1", "proj_client_1", "proj_sidecar_1"] {
        assert!(listed.contains(service), "{service} in {listed}");
    }
    assert!(listed.contains("0.0.0.0:8090->80/tcp"), "{listed}");
    eventually("the client to fetch from web by name", || {
        text(&compose(&["logs", "client"]).stdout).contains("from-web")
    });
    // In web's VM: web's localhost is its own.
    eventually("the sidecar to fetch from web's localhost", || {
        text(&compose(&["logs", "sidecar"]).stdout).contains("from-web")
    });
    eventually("the waiter to find every service", || {
        text(&compose(&["logs", "waiter"]).stdout).contains("all-found")
    });
    eventually("the published port", || wget("http://127.0.0.1:8090/") == "from-web\n");
    let exec = compose(&["exec", "-T", "web", "cat", "/www/index.html"]);
    assert_eq!(text(&exec.stdout), "from-web\n", "{}", text(&exec.stderr));
    // Services on two networks (compose connects the second before start)
    // reach each other on either.
    let web_back = hulld.inspect("{{.NetworkSettings.Networks.proj_back.IPAddress}}", "proj_web_1");
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {web_back} 80");
    let across = compose(&["exec", "-T", "waiter", "sh", "-c", &get]);
    assert!(
        text(&across.stdout).contains("from-web"),
        "web at {web_back} on back: {}",
        text(&across.stderr)
    );
    let network = ok(&hulld.docker(&[
        "network",
        "inspect",
        "--format",
        "{{.Name}} {{index .Labels \"com.docker.compose.project\"}}",
        "proj_default",
    ]));
    assert_eq!(network.trim(), "proj_default proj");

    let down = compose(&["down", "-v"]);
    assert!(down.status.success(), "down: {}", text(&down.stderr));
    assert_eq!(ok(&hulld.docker(&["ps", "-aq"])), "");
    let networks = ok(&hulld.docker(&["network", "ls", "--format", "{{.Name}}"]));
    assert!(
        !networks.contains("proj_default") && !networks.contains("proj_back"),
        "{networks}"
    );
    assert_eq!(wget("http://127.0.0.1:8090/"), "");
    let taps = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hv"))
        .count();
    assert_eq!(taps, 0, "taps are left");
}
