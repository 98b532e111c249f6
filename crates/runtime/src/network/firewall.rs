//! hull's nftables table (`ip hull`), driven through nft's JSON API, each
//! change one atomic transaction:
//!
//! - published ports are elements of two maps, (protocol, port) and
//!   (host address, protocol, port) → (container address, port), looked up
//!   by one DNAT rule each for traffic arriving from outside (prerouting)
//!   and from the host itself (output): publishing 1000 ports adds 1000
//!   elements in one transaction, no rule or process per port;
//! - per network, outbound masquerade (none for `--internal`), masquerade of
//!   forwarded host-local and hairpin connections, and isolation: a
//!   network's bridge forwards to no other hull network, an internal one to
//!   nothing at all.
//!
//! The per-network rules are rebuilt whole from the network records each
//! time (flush + add in one transaction); map elements are added and
//! deleted per container, and rebuilt whole by `reconcile`.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::{NetworkRecord, PortMapping};

/// Published ports on every host address, and on one: each a pair of maps
/// (to the container's address, and to its port), since nft's JSON API
/// (1.0.6) cannot declare a map to a concatenation.
const PORTS_ANY: (&str, &str) = ("ports_any_addr", "ports_any_port");
const PORTS_AT: (&str, &str) = ("ports_at_addr", "ports_at_port");

/// One transaction through `nft -j -f`, reading standard input (named
/// through /proc: a chroot may lack /dev/stdin): all of it applies, or none.
pub(super) fn apply(commands: Vec<Value>) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let payload = json!({ "nftables": commands }).to_string();
    let mut nft = Command::new("nft")
        .args(["-j", "-f", "/proc/self/fd/0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e} (install nftables: apt-get install nftables)"))?;
    let written = nft.stdin.take().map(|mut stdin| stdin.write_all(payload.as_bytes()));
    let output = nft.wait_with_output().map_err(|e| format!("running nft: {e}"))?;
    if let Some(Err(e)) = written {
        return Err(format!("writing to nft: {e}"));
    }
    if std::env::var_os("HULL_NFT_DEBUG").is_some() {
        eprintln!("{payload}");
    }
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "nftables refused hull's rules: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn table() -> Value {
    json!({"family": "ip", "name": super::host_name()})
}

/// A base chain of hull's table in `family`, hooked at `hook`.
pub(super) fn base_chain(family: &str, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"chain": {"family": family, "table": super::host_name(), "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}})
}

fn chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    base_chain("ip", name, kind, hook, prio)
}

/// Appends a rule to a chain of hull's table in `family`.
pub(super) fn family_rule(family: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": super::host_name(), "chain": chain, "expr": expr}}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    family_rule("ip", chain, expr)
}

pub(super) fn matches(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

pub(super) fn iifname() -> Value {
    json!({"meta": {"key": "iifname"}})
}

pub(super) fn oifname() -> Value {
    json!({"meta": {"key": "oifname"}})
}

pub(super) fn saddr_in(subnet: &ipnet::Ipv4Net) -> Value {
    matches(
        json!({"payload": {"protocol": "ip", "field": "saddr"}}),
        "==",
        json!({"prefix": {"addr": subnet.network().to_string(), "len": subnet.prefix_len()}}),
    )
}

/// DNAT through the `maps` pair, keyed by `key`, for destinations that
/// are the host's own.
fn dnat_through(maps: (&str, &str), key: Vec<Value>) -> Vec<Value> {
    let lookup = |map: &str| json!({"map": {"key": {"concat": key.clone()}, "data": format!("@{map}")}});
    vec![
        matches(
            json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            "==",
            json!("local"),
        ),
        json!({"dnat": {"family": "ip", "addr": lookup(maps.0), "port": lookup(maps.1)}}),
    ]
}

fn declare_maps(maps: (&str, &str), key_type: &[&str]) -> [Value; 2] {
    let declare = |name: &str, data: &str| json!({"add": {"map": {"family": "ip", "table": super::host_name(), "name": name, "type": key_type, "map": data}}});
    [declare(maps.0, "ipv4_addr"), declare(maps.1, "inet_service")]
}

/// The mark of the rules last made: in the run directory, which a reboot
/// empties along with the kernel's tables.
fn stamp_path() -> std::path::PathBuf {
    crate::run_dir().join("net").join("rules")
}

/// What the per-network rules of `networks` in this table were made from,
/// exactly (a mark compared whole, not a digest: nothing to collide).
fn stamp(networks: &[NetworkRecord]) -> String {
    let mut stamp = format!("{}\n", super::host_name());
    for n in networks {
        stamp.push_str(&format!(
            "{} {} {} {} {}\n",
            n.id, n.bridge, n.subnet, n.gateway, n.internal
        ));
    }
    stamp
}

/// `ensure`, unless the rules for exactly these networks were made since
/// boot: a VM's start then spends no `nft` run on them.
pub fn ensure_current(networks: &[NetworkRecord]) -> Result<(), String> {
    if std::fs::read_to_string(stamp_path()).is_ok_and(|made| made == stamp(networks)) {
        return Ok(());
    }
    ensure(networks)
}

/// Makes hull's table, maps and chains (kept if present) and rebuilds the
/// per-network rules from `networks`.
pub fn ensure(networks: &[NetworkRecord]) -> Result<(), String> {
    ensure_rules(networks)?;
    // Only a mark: failing to write it costs an `nft` run next time.
    let path = stamp_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = image::store::write_atomic(&path, stamp(networks).as_bytes());
    Ok(())
}

fn ensure_rules(networks: &[NetworkRecord]) -> Result<(), String> {
    let proto_port = || {
        vec![
            json!({"meta": {"key": "l4proto"}}),
            json!({"payload": {"protocol": "th", "field": "dport"}}),
        ]
    };
    let mut at_key = vec![json!({"payload": {"protocol": "ip", "field": "daddr"}})];
    at_key.extend(proto_port());
    let mut commands = vec![json!({"add": {"table": table()}})];
    commands.extend(declare_maps(PORTS_ANY, &["inet_proto", "inet_service"]));
    commands.extend(declare_maps(PORTS_AT, &["ipv4_addr", "inet_proto", "inet_service"]));
    let chains = [
        ("prerouting", "nat", "prerouting", -100),
        ("output", "nat", "output", -100),
        ("postrouting", "nat", "postrouting", 100),
        ("forward", "filter", "forward", 0),
    ];
    for (name, kind, hook, prio) in chains {
        commands.push(json!({"add": chain(name, kind, hook, prio)}));
        commands.push(json!({"flush": {"chain": {"family": "ip", "table": super::host_name(), "name": name}}}));
    }
    for chain in ["prerouting", "output"] {
        commands.push(rule(chain, dnat_through(PORTS_AT, at_key.clone())));
        commands.push(rule(chain, dnat_through(PORTS_ANY, proto_port())));
    }
    let masquerade = json!({"masquerade": null});
    let drop = json!({"drop": null});
    for net in networks {
        let bridge = json!(net.bridge);
        if !net.internal {
            commands.push(rule(
                "postrouting",
                vec![
                    saddr_in(&net.subnet),
                    matches(oifname(), "!=", bridge.clone()),
                    masquerade.clone(),
                ],
            ));
        }
        // Connections the host made to a published port, or a container to
        // one that leads back into its own network: the answer must come
        // back through the host to be un-NATed. (Others keep their source.)
        let from_host = matches(
            json!({"fib": {"result": "type", "flags": ["saddr"]}}),
            "==",
            json!("local"),
        );
        for source in [from_host, saddr_in(&net.subnet)] {
            commands.push(rule(
                "postrouting",
                vec![
                    matches(oifname(), "==", bridge.clone()),
                    matches(json!({"ct": {"key": "status"}}), "in", json!("dnat")),
                    source,
                    masquerade.clone(),
                ],
            ));
        }
        // Isolation: to no other hull network; an internal one to nothing.
        let mut leaving = vec![matches(iifname(), "==", bridge.clone())];
        if !net.internal {
            let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
            leaving.push(matches(oifname(), "==", json!({"set": bridges})));
        }
        leaving.extend([matches(oifname(), "!=", bridge.clone()), drop.clone()]);
        commands.push(rule("forward", leaving));
        if net.internal {
            commands.push(rule(
                "forward",
                vec![
                    matches(oifname(), "==", bridge.clone()),
                    matches(iifname(), "!=", bridge.clone()),
                    drop.clone(),
                ],
            ));
        }
    }
    apply(commands)
}

/// The maps a mapping goes in, its key, and its two values.
fn element(mapping: &PortMapping, container: Ipv4Addr) -> ((&'static str, &'static str), Value, [Value; 2]) {
    let proto = mapping.protocol.name();
    let (maps, key) = match mapping.host_ip {
        Some(ip) => (PORTS_AT, json!({"concat": [ip.to_string(), proto, mapping.host_port]})),
        None => (PORTS_ANY, json!({"concat": [proto, mapping.host_port]})),
    };
    (maps, key, [json!(container.to_string()), json!(mapping.container_port)])
}

fn elements(verb: &str, mappings: &[PortMapping], container: Ipv4Addr) -> Vec<Value> {
    let mut out = Vec::new();
    for maps in [PORTS_ANY, PORTS_AT] {
        for (which, map) in [maps.0, maps.1].into_iter().enumerate() {
            let elem: Vec<Value> = mappings
                .iter()
                .map(|m| element(m, container))
                .filter(|(m, _, _)| *m == maps)
                .map(|(_, key, values)| match verb {
                    "add" => json!([key, values[which]]),
                    _ => key,
                })
                .collect();
            if !elem.is_empty() {
                out.push(json!({verb: {"element": {"family": "ip", "table": super::host_name(), "name": map, "elem": elem}}}));
            }
        }
    }
    out
}

/// Forwards `mappings` to `container`'s address (one transaction).
pub fn publish(mappings: &[PortMapping], container: Ipv4Addr) -> Result<(), String> {
    match elements("add", mappings, container) {
        commands if commands.is_empty() => Ok(()),
        commands => apply(commands),
    }
}

/// Stops forwarding `mappings`.
pub fn unpublish(mappings: &[PortMapping], container: Ipv4Addr) -> Result<(), String> {
    match elements("delete", mappings, container) {
        commands if commands.is_empty() => Ok(()),
        commands => apply(commands),
    }
}

/// Makes hull's tables say exactly this: the network rules of `networks`,
/// and the published ports and policies of the `running` containers (ID
/// and network); what containers that died with their supervisor left goes.
pub fn reconcile(networks: &[NetworkRecord], running: &[(String, super::ContainerNetwork)]) -> Result<(), String> {
    ensure(networks)?;
    let mut commands: Vec<Value> = [PORTS_ANY.0, PORTS_ANY.1, PORTS_AT.0, PORTS_AT.1]
        .iter()
        .map(|name| json!({"flush": {"map": {"family": "ip", "table": super::host_name(), "name": name}}}))
        .collect();
    for (_, network) in running {
        if let Some(endpoint) = network.primary() {
            commands.extend(elements("add", &network.ports, endpoint.address));
        }
    }
    apply(commands)?;
    // Apart: a kernel without bridge filtering still gets its NAT and ports.
    super::policy::rebuild(networks, running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Protocol;

    /// Runs `f` on a thread of its own in a fresh network namespace (as
    /// root), so the test touches no firewall but its own.
    pub(crate) fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread, which ends after `f`.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap()
    }

    fn listed() -> String {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "table", "ip", &crate::network::host_name()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn ports_and_networks_become_one_table() {
        let network = NetworkRecord {
            id: "cd".repeat(32),
            name: "t".into(),
            bridge: "hullt".into(),
            subnet: "10.99.0.0/24".parse().unwrap(),
            gateway: "10.99.0.1".parse().unwrap(),
            created: String::new(),
            internal: false,
            labels: Default::default(),
            ip_range: None,
            vxlan: None,
        };
        // The stamps of made rules go to a run directory of the test's own.
        let run = tempfile::tempdir().unwrap();
        std::env::set_var("HULL_RUN_DIR", run.path());
        let (after_publish, after_unpublish, after_reconcile) = in_new_netns(move || {
            let ports: Vec<PortMapping> = (8000..9000)
                .map(|p| PortMapping {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: p,
                    container_port: p,
                })
                .chain([PortMapping {
                    protocol: Protocol::Udp,
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    host_port: 53,
                    container_port: 5353,
                }])
                .collect();
            let ip: Ipv4Addr = "10.99.0.2".parse().unwrap();
            ensure(std::slice::from_ref(&network)).unwrap();
            ensure(std::slice::from_ref(&network)).unwrap(); // idempotent
            assert_eq!(
                std::fs::read_to_string(stamp_path()).unwrap(),
                stamp(std::slice::from_ref(&network))
            );
            ensure_current(std::slice::from_ref(&network)).unwrap();
            publish(&ports, ip).unwrap();
            let after_publish = listed();
            unpublish(&ports[..999], ip).unwrap();
            let after_unpublish = listed();
            reconcile(std::slice::from_ref(&network), &[]).unwrap();
            (after_publish, after_unpublish, listed())
        });
        assert!(
            after_publish.contains(r#"[{"concat": ["tcp", 8999]}, "10.99.0.2"]"#),
            "{after_publish}"
        );
        assert!(after_publish.contains(r#"[{"concat": ["tcp", 8999]}, 8999]"#));
        assert!(after_publish.contains(r#"{"concat": ["127.0.0.1", "udp", 53]}"#));
        assert_eq!(after_publish.matches("masquerade").count(), 3, "{after_publish}");
        assert!(!after_unpublish.contains("8998"));
        assert!(after_unpublish.contains("8999"));
        assert!(!after_reconcile.contains("8999"));
        assert!(!after_reconcile.contains("5353"));
    }
}
