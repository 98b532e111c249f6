//! Names across hosts, on networks that span them (VXLAN): each hulld
//! sends the names of its running containers on such a network to the
//! network's other hosts every few seconds (`wire::Message::Names`, on the
//! hulld-to-hulld connection a move takes: mutual TLS, or plain where
//! allowed), and answers for theirs from what they sent while it is
//! fresh. A container on host B then resolves one on host A by name, alias
//! or short ID, as it would on its own host. A host takes names for a
//! network only from that network's peers, only inside its subnet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runtime::network::NetworkRecord;

use crate::daemon::Daemon;
use crate::migrate::link::{Peer, DEFAULT_PORT};
use crate::migrate::wire::{self, Message};

/// How often a host sends its names to its peers.
pub const SHARE_EVERY: Duration = Duration::from_secs(5);
/// How long names a peer sent are answered for without a word from it.
const FRESH_FOR: Duration = Duration::from_secs(20);
/// The most names a peer may send for one network.
const MAX_NAMES: usize = 4096;

/// A host's names on a network, and when it sent them.
type Sent = (Instant, HashMap<String, Ipv4Addr>);

/// What other hosts sent, by network ID and sending host.
#[derive(Default)]
pub struct RemoteNames(Mutex<HashMap<(String, IpAddr), Sent>>);

impl RemoteNames {
    /// The address of `name` on `network_id` as a peer sent it lately.
    pub fn lookup(&self, network_id: &str, name: &str) -> Option<Ipv4Addr> {
        let names = self.0.lock().ok()?;
        names
            .iter()
            .filter(|((network, _), (at, _))| network == network_id && at.elapsed() < FRESH_FOR)
            .max_by_key(|(_, (at, _))| *at)
            .and_then(|(_, (_, names))| names.get(name).copied())
    }

    fn put(&self, network_id: &str, from: IpAddr, names: HashMap<String, Ipv4Addr>) {
        if let Ok(mut all) = self.0.lock() {
            all.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
            all.insert((network_id.to_string(), from), (Instant::now(), names));
        }
    }
}

/// Takes the names host `from` sent for its network `network` (`subnet`):
/// kept if this host has a network of that name and subnet that spans to
/// `from`, and every name is a name and every address in the subnet.
pub fn take(
    daemon: &Daemon,
    from: IpAddr,
    network: &str,
    subnet: &str,
    names: Vec<(String, Ipv4Addr)>,
) -> Result<(), String> {
    let here = runtime::network::find(network).map_err(|_| format!("no network {network:?} here"))?;
    let spans_to_sender = here
        .vxlan
        .as_ref()
        .is_some_and(|v| matches!(from, IpAddr::V4(ip) if v.peers.contains(&ip)));
    if here.name != network || here.subnet.to_string() != subnet || !spans_to_sender {
        return Err(format!("network {network:?} here is not {subnet} spanning to {from}"));
    }
    if names.len() > MAX_NAMES {
        return Err(format!("{} names (at most {MAX_NAMES})", names.len()));
    }
    let mut kept = HashMap::new();
    for (name, address) in names {
        if !valid_name(&name) || !here.subnet.contains(&address) {
            return Err(format!("{name:?} at {address} is not a name on {subnet}"));
        }
        kept.insert(name, address);
    }
    daemon.remote_names.put(&here.id, from, kept);
    Ok(())
}

/// A name as the name service answers for: lower case, at most 253
/// characters of letters, digits, `-`, `_` and `.`.
fn valid_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// Sends this host's names on every spanning network to its peers, every
/// `SHARE_EVERY`, for as long as hulld runs.
pub fn share(daemon: Arc<Daemon>) {
    let spawned = std::thread::Builder::new()
        .name("span-names".into())
        .spawn(move || loop {
            share_now(&daemon);
            std::thread::sleep(SHARE_EVERY);
        });
    if let Err(e) = spawned {
        tracing::warn!("no names shared with other hosts: {e}");
    }
}

/// Sends this host's names on every spanning network to its peers now (a
/// container just arrived: the host it left learns its name is here at
/// once, not at the next round).
pub fn share_now(daemon: &Arc<Daemon>) {
    for network in runtime::network::list().unwrap_or_default() {
        if network.vxlan.is_some() && std::path::Path::new("/sys/class/net").join(&network.bridge).exists() {
            share_network(daemon, &network);
        }
    }
}

fn share_network(daemon: &Arc<Daemon>, network: &NetworkRecord) {
    let Some(vxlan) = &network.vxlan else { return };
    let names: Vec<(String, Ipv4Addr)> = crate::dns::names_on(daemon, &network.id).into_iter().collect();
    for &peer_ip in &vxlan.peers {
        let peer = Peer {
            named: peer_ip.to_string(),
            host: peer_ip.to_string(),
            address: SocketAddr::from((peer_ip, DEFAULT_PORT)),
        };
        let message = Message::Names {
            network: network.name.clone(),
            subnet: network.subnet.to_string(),
            names: names.clone(),
        };
        let sent = daemon
            .migration_security()
            .connect(&peer, &daemon.handle)
            .and_then(|mut conn| wire::send(&mut conn, &message).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            tracing::debug!("the names of network {} to {peer_ip}: {e}", network.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_answered_while_fresh_and_only_valid_ones_pass() {
        let remote = RemoteNames::default();
        let from: IpAddr = "198.51.100.2".parse().unwrap();
        let address: Ipv4Addr = "10.91.0.70".parse().unwrap();
        remote.put("net", from, HashMap::from([("web".to_string(), address)]));
        assert_eq!(remote.lookup("net", "web"), Some(address));
        assert_eq!(remote.lookup("net", "db"), None);
        assert_eq!(remote.lookup("other", "web"), None);
        assert!(valid_name("web.app_1-x"));
        for bad in ["", "Web", "a b", "a/b", &"x".repeat(254)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
