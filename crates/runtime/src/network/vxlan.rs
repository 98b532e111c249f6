//! Networks that span hosts: a VXLAN port on the network's bridge, with
//! the other hosts as its flood list, so a container's MAC and IP reach
//! (and, after a live migration, stay reachable from) the same network on
//! every host. Asked for with driver options, as the docker CLI passes them:
//!
//! ```text
//! docker network create --subnet 10.90.0.0/24 --ip-range 10.90.0.0/25 \
//!     -o hull.vxlan.id=42 -o hull.vxlan.peers=192.0.2.2[,...] [-o hull.vxlan.local=192.0.2.1] \
//!     [-o hull.vxlan.port=4789] app
//! ```
//!
//! on each host, with the same subnet and VNI, its own `--ip-range` (each
//! host leases from its own part) and the others as peers. Every host's
//! bridge has the same gateway address and the same MAC (derived from the
//! VNI, as an EVPN "anycast gateway"): a container that moves keeps a valid
//! ARP entry for its gateway, which is then the new host's. The hosts' own
//! frames (from that MAC) never cross the tunnel: a bridge-family nftables
//! rule drops them on the way into any VXLAN link of hull's, so each
//! host's gateway answers only its own containers and no host sees frames
//! from its own address come back.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The overhead VXLAN adds to a frame (outer Ethernet, IPv4, UDP, VXLAN):
/// a spanning network's MTU is this much below the underlay's 1500.
pub const OVERHEAD: u32 = 50;
/// The MTU of a network that spans hosts.
pub const SPANNING_MTU: u32 = super::MTU - OVERHEAD;
/// IANA's VXLAN port (Linux's default is the older 8472).
pub const DEFAULT_PORT: u16 = 4789;
/// At most this many peers (each is one flood entry and one copy of every
/// broadcast).
pub const MAX_PEERS: usize = 64;
const MAX_VNI: u32 = (1 << 24) - 1;

/// The option names `docker network create -o` takes.
pub const ID_OPTION: &str = "hull.vxlan.id";
const PEERS_OPTION: &str = "hull.vxlan.peers";
const LOCAL_OPTION: &str = "hull.vxlan.local";
const PORT_OPTION: &str = "hull.vxlan.port";
/// Every option hull takes on `docker network create`.
pub const OPTIONS: [&str; 4] = [ID_OPTION, PEERS_OPTION, LOCAL_OPTION, PORT_OPTION];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vxlan {
    /// The VNI: the same on every host of the network.
    pub id: u32,
    /// The other hosts' underlay addresses.
    pub peers: Vec<Ipv4Addr>,
    pub port: u16,
    /// The address VXLAN packets leave from (the kernel picks by route if `None`).
    pub local: Option<Ipv4Addr>,
}

impl Vxlan {
    /// The `hull.vxlan.*` options of `options` (`None` without `hull.vxlan.id`);
    /// a bad value is an error naming it. Other options are the caller's.
    pub fn from_options(options: &HashMap<String, String>) -> Result<Option<Vxlan>, String> {
        let Some(id) = options.get(ID_OPTION) else {
            if let Some(name) = [PEERS_OPTION, LOCAL_OPTION, PORT_OPTION]
                .into_iter()
                .find(|o| options.contains_key(*o))
            {
                return Err(format!("network option {name} needs {ID_OPTION}"));
            }
            return Ok(None);
        };
        let id = id
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|id| (1..=MAX_VNI).contains(id))
            .ok_or_else(|| format!("invalid {ID_OPTION} {id:?}: a VNI from 1 to {MAX_VNI}"))?;
        let peers: Vec<Ipv4Addr> = match options.get(PEERS_OPTION) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<Ipv4Addr>()
                        .ok()
                        .filter(|a| !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() && !a.is_loopback())
                        .ok_or_else(|| format!("invalid {PEERS_OPTION} entry {p:?}: a host's IPv4 address"))
                })
                .collect::<Result<_, _>>()?,
        };
        if peers.len() > MAX_PEERS {
            return Err(format!("{PEERS_OPTION}: at most {MAX_PEERS} peers"));
        }
        if let Some(twice) = peers
            .iter()
            .enumerate()
            .find_map(|(i, p)| peers[..i].contains(p).then_some(p))
        {
            return Err(format!("{PEERS_OPTION} names {twice} twice"));
        }
        let local = match options.get(LOCAL_OPTION) {
            None => None,
            Some(local) => Some(
                local
                    .trim()
                    .parse::<Ipv4Addr>()
                    .ok()
                    .filter(|a| !a.is_unspecified() && !a.is_multicast())
                    .ok_or_else(|| format!("invalid {LOCAL_OPTION} {local:?}: this host's IPv4 address"))?,
            ),
        };
        // Flooding to itself would loop this host's frames back in.
        if let Some(local) = local.filter(|l| peers.contains(l)) {
            return Err(format!(
                "{PEERS_OPTION} names this host ({LOCAL_OPTION} {local}): give the other hosts only"
            ));
        }
        let port = match options.get(PORT_OPTION) {
            None => DEFAULT_PORT,
            Some(port) => port
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid {PORT_OPTION} {port:?}: a UDP port"))?,
        };
        Ok(Some(Vxlan { id, peers, port, local }))
    }

    /// The options as `docker network inspect` shows them.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        let mut options = vec![(ID_OPTION, self.id.to_string()), (PORT_OPTION, self.port.to_string())];
        let peers: Vec<String> = self.peers.iter().map(Ipv4Addr::to_string).collect();
        options.push((PEERS_OPTION, peers.join(",")));
        if let Some(local) = self.local {
            options.push((LOCAL_OPTION, local.to_string()));
        }
        options
    }

    /// The VXLAN link's name: this hulld's stem (as its bridges'), `x` and
    /// the VNI in hex (15 bytes at most: IFNAMSIZ).
    pub fn link_name(&self) -> String {
        format!("{}x{:06x}", super::host_name(), self.id)
    }

    /// The bridge's MAC on every host: locally administered, from the VNI.
    pub fn gateway_mac(&self) -> [u8; 6] {
        let [_, a, b, c] = self.id.to_be_bytes();
        [0x02, 0x68, 0x78, a, b, c]
    }

    /// Makes the VXLAN link (or finds it), a port of `bridge` with the
    /// network's MTU, up, flooding to every peer.
    pub fn attach(&self, nl: &mut netlink::Netlink, bridge: u32) -> Result<(), String> {
        let name = self.link_name();
        let step = |what: &str| {
            let what = format!("{what} {name}");
            move |e: netlink::NetlinkError| format!("{what}: {e}")
        };
        // Every container start on the network comes here; the link is
        // put on the bridge and up last, so one found so was set up whole
        // (peers, MTU, the gateway rule) by an earlier start.
        if let Some(link) = nl.link(&name).map_err(step("finding VXLAN link"))? {
            if link.up && link.master == Some(bridge) {
                return Ok(());
            }
        }
        nl.create_vxlan(&name, self.id, self.port, self.local)
            .map_err(step("creating VXLAN link"))?;
        let index = nl
            .link_index(&name)
            .map_err(step("finding VXLAN link"))?
            .ok_or_else(|| format!("VXLAN link {name} vanished"))?;
        nl.set_mtu(index, SPANNING_MTU).map_err(step("setting the MTU of"))?;
        for peer in &self.peers {
            nl.add_vxlan_peer(index, *peer).map_err(step("adding a peer to"))?;
        }
        // Before a frame can cross: the hosts' own stay home.
        self.keep_gateway_home()?;
        nl.set_master(index, bridge)
            .and_then(|_| nl.set_up(index))
            .map_err(step("attaching VXLAN link"))
    }

    /// Drops frames from the gateway's MAC on their way into this VXLAN
    /// link (idempotent: the rule is made anew, the sets' elements stay).
    fn keep_gateway_home(&self) -> Result<(), String> {
        let table = gateway_table();
        let set = |name: &str, kind: &str| json!({"add": {"set": {"family": "bridge", "table": table, "name": name, "type": kind}}});
        let chain = json!({"family": "bridge", "table": table, "name": "out"});
        let rule = vec![
            json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": format!("@{LINKS_SET}")}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}}, "right": format!("@{GATEWAYS_SET}")}}),
            json!({"drop": null}),
        ];
        let commands = vec![
            json!({"add": {"table": {"family": "bridge", "name": table}}}),
            set(LINKS_SET, "ifname"),
            set(GATEWAYS_SET, "ether_addr"),
            json!({"add": {"chain": {"family": "bridge", "table": table, "name": "out", "type": "filter", "hook": "postrouting", "prio": 0, "policy": "accept"}}}),
            json!({"flush": {"chain": chain}}),
            json!({"add": {"rule": {"family": "bridge", "table": table, "chain": "out", "expr": rule}}}),
            self.element("add", LINKS_SET, json!(self.link_name())),
            self.element("add", GATEWAYS_SET, json!(mac_text(self.gateway_mac()))),
        ];
        super::firewall::apply(commands).map_err(|e| format!("keeping the gateway of VXLAN {} home: {e}", self.id))
    }

    fn element(&self, verb: &str, set: &str, value: Value) -> Value {
        json!({verb: {"element": {"family": "bridge", "table": gateway_table(), "name": set, "elem": [value]}}})
    }

    /// Takes this network out of the rule (its network is removed); best
    /// effort: without the table there is nothing to take.
    pub fn forget(&self) {
        let _ = super::firewall::apply(vec![
            self.element("delete", LINKS_SET, json!(self.link_name())),
            self.element("delete", GATEWAYS_SET, json!(mac_text(self.gateway_mac()))),
        ]);
    }
}

/// hull's bridge table for spanning networks (apart from the policy's,
/// which is rebuilt whole).
fn gateway_table() -> String {
    format!("{}vx", super::host_name())
}

const LINKS_SET: &str = "links";
const GATEWAYS_SET: &str = "gateways";

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkRecord;

    fn sh(script: &str) {
        let out = std::process::Command::new("sh").args(["-ec", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread of its own in the named network namespace.
    fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        std::thread::spawn(move || {
            use std::os::unix::io::AsRawFd;
            // SAFETY: setns affects only this thread, which ends after `f`.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            f()
        })
        .join()
        .unwrap()
    }

    /// A raw socket (every protocol) on `interface`, reads timing out
    /// after 100 ms.
    fn raw_socket(interface: &str) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2); the descriptor is owned from here.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(interface).unwrap();
        // SAFETY: sockaddr_ll is plain data; if_nametoindex takes a C string.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        // SAFETY: bind(2) and setsockopt(2) with arguments of the sizes given.
        unsafe {
            let size = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd.as_raw_fd(), (&address as *const libc::sockaddr_ll).cast(), size),
                0
            );
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let size = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            let option = (&timeout as *const libc::timeval).cast();
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, option, size);
        }
        fd
    }

    /// Named network namespaces, deleted (with their links) when dropped.
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    #[test]
    fn a_network_on_two_hosts_is_one_ethernet_with_one_gateway_mac() {
        let tag = std::process::id() % 100_000;
        let [host_a, host_b, ctr_a, ctr_b] = ["ha", "hb", "ca", "cb"].map(|n| format!("hxt{n}{tag}"));
        let namespaces = Namespaces(vec![host_a.clone(), host_b.clone(), ctr_a.clone(), ctr_b.clone()]);
        for name in &namespaces.0 {
            sh(&format!("ip netns add {name}; ip -n {name} link set lo up"));
        }
        // The underlay: the two hosts on one link.
        sh(&format!(
            "ip link add u{tag} netns {host_a} type veth peer name u{tag} netns {host_b}; \
             ip -n {host_a} addr add 192.0.2.1/24 dev u{tag}; ip -n {host_a} link set u{tag} up; \
             ip -n {host_b} addr add 192.0.2.2/24 dev u{tag}; ip -n {host_b} link set u{tag} up"
        ));
        let record = |peer: &str, range: &str| NetworkRecord {
            id: "ef".repeat(32),
            name: "span".into(),
            bridge: format!("hxbr{tag}"),
            subnet: "10.97.0.0/24".parse().unwrap(),
            gateway: "10.97.0.1".parse().unwrap(),
            created: String::new(),
            internal: false,
            labels: Default::default(),
            ip_range: Some(range.parse().unwrap()),
            vxlan: Some(Vxlan {
                id: 4242,
                peers: vec![peer.parse().unwrap()],
                port: DEFAULT_PORT,
                local: None,
            }),
        };
        let mut macs = Vec::new();
        for (host, ctr, peer, range, address) in [
            (&host_a, &ctr_a, "192.0.2.2", "10.97.0.0/25", "10.97.0.10"),
            (&host_b, &ctr_b, "192.0.2.1", "10.97.0.128/25", "10.97.0.130"),
        ] {
            let network = record(peer, range);
            let bridge = network.bridge.clone();
            let mac = in_netns(host, move || {
                // Twice: a second start of a container finds it all there.
                crate::network::host::ensure_bridge(&network).unwrap();
                crate::network::host::ensure_bridge(&network).unwrap();
                let mut nl = netlink::Netlink::open().unwrap();
                let mac = nl.link(&network.bridge).unwrap().unwrap().mac;
                let vxlan = nl.link(&network.vxlan.as_ref().unwrap().link_name()).unwrap().unwrap();
                assert_eq!(vxlan.kind.as_deref(), Some("vxlan"));
                assert_eq!(vxlan.master, nl.link_index(&network.bridge).unwrap());
                mac
            });
            macs.push(mac);
            // A container: a veth on the bridge, its other end in a namespace of its own.
            sh(&format!(
                "ip -n {host} link add p{tag} type veth peer name c{tag} netns {ctr}; \
                 ip -n {host} link set p{tag} master {bridge} mtu 1450 up; \
                 ip -n {ctr} addr add {address}/24 dev c{tag}; ip -n {ctr} link set c{tag} mtu 1450 up; \
                 ip -n {ctr} route add default via 10.97.0.1"
            ));
        }
        assert_eq!(
            macs[0],
            Some(record("192.0.2.2", "10.97.0.0/25").vxlan.unwrap().gateway_mac())
        );
        assert_eq!(macs[0], macs[1], "one gateway MAC on both hosts");
        let link = record("192.0.2.2", "10.97.0.0/25").vxlan.unwrap().link_name();
        let mtu = std::process::Command::new("ip")
            .args(["-n", &host_a, "-o", "link", "show", &link])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&mtu.stdout).contains("mtu 1450"), "{mtu:?}");
        // A TCP exchange from the container on host A to the one on host B,
        // larger than a frame.
        let listener = in_netns(&ctr_b, || std::net::TcpListener::bind("10.97.0.130:5000").unwrap());
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, from) = listener.accept().unwrap();
            let mut bytes = vec![0u8; 20_000];
            conn.read_exact(&mut bytes).unwrap();
            conn.write_all(&bytes).unwrap();
            from
        });
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let to_send = sent.clone();
        let got = in_netns(&ctr_a, move || {
            use std::io::{Read, Write};
            let address = "10.97.0.130:5000".parse().unwrap();
            let mut conn = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(10)).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            conn.write_all(&to_send).unwrap();
            let mut back = vec![0u8; 20_000];
            conn.read_exact(&mut back).unwrap();
            back
        });
        assert!(got == sent, "the bytes came back changed");
        // Host A's own frames stay on host A: its ARP for the container on
        // host B (from the shared gateway MAC) does not reach it.
        let gateway_mac = macs[0].unwrap();
        let sniffer = in_netns(&ctr_b, move || raw_socket(&format!("c{tag}")));
        in_netns(&host_a, || {
            let socket = std::net::UdpSocket::bind("10.97.0.1:0").unwrap();
            let _ = socket.send_to(b"hello", "10.97.0.130:9");
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let mut frame = vec![0u8; 1600];
        while std::time::Instant::now() < deadline {
            use std::os::fd::AsRawFd;
            // SAFETY: recv(2) into a buffer of the length given.
            let n = unsafe { libc::recv(sniffer.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), 0) };
            let for_b = n >= 42 && frame[12..14] == [0x08, 0x06] && frame[38..42] == [10, 97, 0, 130];
            assert!(
                !(for_b && frame[6..12] == gateway_mac),
                "host A's ARP crossed the tunnel from the shared gateway MAC"
            );
        }
        assert_eq!(echo.join().unwrap().ip().to_string(), "10.97.0.10");
        drop(namespaces);
    }

    fn options(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_are_read_and_checked() {
        assert_eq!(Vxlan::from_options(&options(&[])).unwrap(), None);
        let vxlan = Vxlan::from_options(&options(&[
            ("hull.vxlan.id", "42"),
            ("hull.vxlan.peers", "192.0.2.2, 192.0.2.3"),
            ("hull.vxlan.local", "192.0.2.1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(vxlan.id, 42);
        assert_eq!(
            vxlan.peers,
            vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)]
        );
        assert_eq!(vxlan.port, DEFAULT_PORT);
        assert!(vxlan.link_name().ends_with("x00002a"), "{}", vxlan.link_name());
        assert!(vxlan.link_name().len() <= 15);
        assert_eq!(vxlan.gateway_mac(), [2, 0x68, 0x78, 0, 0, 42]);
        for bad in [
            vec![("hull.vxlan.id", "0")],
            vec![("hull.vxlan.id", "16777216")],
            vec![("hull.vxlan.id", "x")],
            vec![("hull.vxlan.id", "1"), ("hull.vxlan.peers", "224.0.0.1")],
            vec![("hull.vxlan.id", "1"), ("hull.vxlan.peers", "host.example")],
            vec![("hull.vxlan.id", "1"), ("hull.vxlan.port", "0")],
            vec![("hull.vxlan.id", "1"), ("hull.vxlan.local", "0.0.0.0")],
            vec![("hull.vxlan.id", "1"), ("hull.vxlan.peers", "192.0.2.2,192.0.2.2")],
            vec![
                ("hull.vxlan.id", "1"),
                ("hull.vxlan.peers", "192.0.2.2,192.0.2.1"),
                ("hull.vxlan.local", "192.0.2.1"),
            ],
            vec![("hull.vxlan.peers", "192.0.2.2")],
        ] {
            let err = Vxlan::from_options(&options(&bad)).unwrap_err();
            assert!(err.contains("hull.vxlan"), "{err}");
        }
        let many: Vec<String> = (1..=65).map(|i| format!("192.0.2.{i}")).collect();
        assert!(Vxlan::from_options(&options(&[
            ("hull.vxlan.id", "1"),
            ("hull.vxlan.peers", &many.join(","))
        ]))
        .is_err());
    }
}
