//! Each container's ingress policy, enforced on the host where its frames
//! leave the bridge for its tap (nftables' bridge family, `bridge hull`),
//! so root in the guest cannot change it. The levels (VIC's) form a
//! ladder, each allowing what the one below allows and more:
//!
//! - `closed`: nothing in or out;
//! - `outbound`: the container's own connections (and their answers) only;
//! - `peers`: also connections from containers on its network;
//! - `published`: also connections to its published ports, from anywhere;
//! - `open` (the default, as Docker): everything.
//!
//! A map from tap name to a chain of the container's own sends its frames
//! through that chain; `open` containers are not in it at all.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::firewall::{apply, base_chain, family_rule, iifname, matches, oifname, saddr_in};
use super::{host, ContainerNetwork, NetworkRecord, Protocol};

const FAMILY: &str = "bridge";
const INGRESS: &str = "ingress";
const EGRESS: &str = "egress";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Closed,
    Outbound,
    Peers,
    Published,
    #[default]
    Open,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Closed,
        Policy::Outbound,
        Policy::Peers,
        Policy::Published,
        Policy::Open,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Closed => "closed",
            Policy::Outbound => "outbound",
            Policy::Peers => "peers",
            Policy::Published => "published",
            Policy::Open => "open",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| format!("invalid policy \"{text}\": one of closed, outbound, peers, published, open"))
    }
}

fn table() -> Value {
    json!({"family": FAMILY, "name": super::host_name()})
}

fn ingress_chain(tap: &str) -> String {
    format!("in-{tap}")
}

fn egress_chain(tap: &str) -> String {
    format!("out-{tap}")
}

/// The table, its maps and base chains (kept if present).
fn base() -> Vec<Value> {
    let map = |name: &str| json!({"add": {"map": {"family": FAMILY, "table": super::host_name(), "name": name, "type": "ifname", "map": "verdict"}}});
    let mut commands = vec![json!({"add": {"table": table()}}), map(INGRESS), map(EGRESS)];
    // Frames to a tap come from other ports (forward) or the host (output);
    // frames from a tap go to other ports (forward) or the host (input).
    let chains = [
        ("forward", "forward", vec![(oifname(), INGRESS), (iifname(), EGRESS)]),
        ("output", "output", vec![(oifname(), INGRESS)]),
        ("input", "input", vec![(iifname(), EGRESS)]),
    ];
    for (name, hook, lookups) in chains {
        commands.push(json!({"add": base_chain(FAMILY, name, "filter", hook, 0)}));
        commands.push(json!({"flush": {"chain": {"family": FAMILY, "table": super::host_name(), "name": name}}}));
        for (key, map) in lookups {
            commands.push(family_rule(
                FAMILY,
                name,
                vec![json!({"vmap": {"key": key, "data": format!("@{map}")}})],
            ));
        }
    }
    commands
}

fn accept() -> Value {
    json!({"accept": null})
}

/// The commands that give container `id` (its tap) `network.policy`,
/// replacing what it had: its chains are made anew, its map entries set.
fn commands_for(tap: &str, network: &ContainerNetwork, record: &NetworkRecord) -> Vec<Value> {
    let (ingress, egress) = (ingress_chain(tap), egress_chain(tap));
    let chain_ref = |name: &str| json!({"family": FAMILY, "table": super::host_name(), "name": name});
    let element = |map: &str, verb: &str, chain: Option<&str>| {
        let elem = match chain {
            Some(chain) => json!([[tap, {"goto": {"target": chain}}]]),
            None => json!([tap]),
        };
        json!({verb: {"element": {"family": FAMILY, "table": super::host_name(), "name": map, "elem": elem}}})
    };
    // Whatever it had goes first (add + delete: no error if it had nothing).
    let mut commands = Vec::new();
    for (map, chain) in [(INGRESS, &ingress), (EGRESS, &egress)] {
        // An element may only name a chain that exists.
        commands.push(json!({"add": {"chain": chain_ref(chain)}}));
        commands.push(element(map, "add", Some(chain)));
        commands.push(element(map, "delete", None));
        commands.push(json!({"delete": {"chain": chain_ref(chain)}}));
    }
    let policy = network.policy;
    if policy == Policy::Open {
        return commands;
    }
    let drop = json!({"drop": null});
    let mut rules = Vec::new();
    if policy > Policy::Closed {
        rules.push(vec![
            matches(json!({"ct": {"key": "state"}}), "in", json!(["established", "related"])),
            accept(),
        ]);
        rules.push(vec![
            matches(json!({"meta": {"key": "protocol"}}), "==", json!("arp")),
            accept(),
        ]);
    }
    if policy >= Policy::Peers {
        // The gateway is the host: masqueraded outside traffic comes from it.
        rules.push(vec![
            saddr_in(&record.subnet),
            matches(
                json!({"payload": {"protocol": "ip", "field": "saddr"}}),
                "!=",
                json!(record.gateway.to_string()),
            ),
            accept(),
        ]);
    }
    if policy >= Policy::Published {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let ports: Vec<u16> = network
                .ports
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(|p| p.container_port)
                .collect();
            if !ports.is_empty() {
                rules.push(vec![
                    matches(json!({"meta": {"key": "l4proto"}}), "==", json!(protocol.name())),
                    matches(
                        json!({"payload": {"protocol": "th", "field": "dport"}}),
                        "==",
                        json!({"set": ports}),
                    ),
                    accept(),
                ]);
            }
        }
    }
    rules.push(vec![drop.clone()]);
    commands.push(json!({"add": {"chain": chain_ref(&ingress)}}));
    for rule in rules {
        commands.push(family_rule(FAMILY, &ingress, rule));
    }
    commands.push(element(INGRESS, "add", Some(&ingress)));
    if policy == Policy::Closed {
        commands.push(json!({"add": {"chain": chain_ref(&egress)}}));
        commands.push(family_rule(FAMILY, &egress, vec![drop]));
        commands.push(element(EGRESS, "add", Some(&egress)));
    }
    commands
}

/// Gives a running container (`id`) its policy now, on each of its NICs.
pub fn apply_to(id: &str, network: &ContainerNetwork) -> Result<(), String> {
    if network.endpoints.is_empty() {
        return Ok(());
    }
    let mut commands = base();
    for endpoint in &network.endpoints {
        let record = super::load(&endpoint.network_id).map_err(|e| e.to_string())?;
        commands.extend(commands_for(&host::tap_name(id, endpoint.slot), network, &record));
    }
    apply(commands)
}

/// Takes any policy off one NIC of container `id` (it left that network).
pub fn lift(id: &str, endpoint: &super::Endpoint, network: &ContainerNetwork) -> Result<(), String> {
    let record = super::load(&endpoint.network_id).map_err(|e| e.to_string())?;
    let open = ContainerNetwork {
        policy: Policy::Open,
        ..network.clone()
    };
    let mut commands = base();
    commands.extend(commands_for(&host::tap_name(id, endpoint.slot), &open, &record));
    apply(commands)
}

/// Rebuilds the bridge table whole for the `running` containers; with no
/// policed container there is no table at all.
pub(super) fn rebuild(networks: &[NetworkRecord], running: &[(String, ContainerNetwork)]) -> Result<(), String> {
    let mut commands = vec![
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
    ];
    if running
        .iter()
        .all(|(_, n)| n.policy == Policy::Open || n.endpoints.is_empty())
    {
        return apply(commands);
    }
    commands.extend(base());
    for (id, network) in running {
        if network.policy == Policy::Open {
            continue;
        }
        for endpoint in &network.endpoints {
            if let Some(record) = networks.iter().find(|n| n.id == endpoint.network_id) {
                commands.extend(commands_for(&host::tap_name(id, endpoint.slot), network, record));
            }
        }
    }
    apply(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_order_as_a_ladder() {
        for policy in Policy::ALL {
            assert_eq!(policy.name().parse::<Policy>(), Ok(policy));
        }
        assert!("shut".parse::<Policy>().unwrap_err().contains("closed, outbound"));
        assert!(Policy::Closed < Policy::Outbound && Policy::Published < Policy::Open);
        assert_eq!(Policy::default(), Policy::Open);
    }
}
