//! Name resolution for user-defined networks, served by hulld on each
//! network's gateway address (port 53, UDP), where a guest can reach it:
//! Docker's 127.0.0.11 lives in a namespace a VM cannot see. Containers
//! resolve each other by name, short ID and network alias (compose's
//! service names are aliases) while they run; every other name is relayed
//! to the host's own resolvers (loopback ones too: hulld runs on the host).
//! On a network that spans hosts, names the other hosts sent are answered
//! too (`span_names`).
//! Messages are parsed and built with `hickory-proto`; a query hulld cannot
//! parse is dropped, never answered from a guess.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use runtime::container::ContainerDir;
use runtime::network::NetworkRecord;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::daemon::Daemon;

/// How long a container's name may be cached (Docker's embedded server says 600).
const TTL: u32 = 600;
/// How long an upstream resolver has to answer a relayed query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest UDP message taken or relayed.
const MAX_MESSAGE: usize = 4096;

/// The running servers, by network ID.
#[derive(Default)]
pub struct DnsServers(Mutex<HashMap<String, JoinHandle<()>>>);

impl DnsServers {
    /// Serves `network`'s names on its gateway (its bridge made first), if
    /// it is not served yet.
    pub fn start(&self, daemon: &Arc<Daemon>, network: &NetworkRecord) {
        if network.is_default() {
            return; // Docker's default bridge has no name service
        }
        // Held from the check to the insert: two starts at once (two
        // containers of one network) bind once, not once and then fail.
        let Ok(mut servers) = self.0.lock() else { return };
        if servers.get(&network.id).is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Err(e) = runtime::network::host::ensure_bridge(network) {
            tracing::warn!("no name service on network {}: {e}", network.name);
            return;
        }
        let address = SocketAddr::from((network.gateway, 53));
        let socket = match std::net::UdpSocket::bind(address)
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .and_then(UdpSocket::from_std)
        {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                tracing::warn!("no name service on network {} ({address}): {e}", network.name);
                return;
            }
        };
        let task = daemon.handle.spawn(serve(daemon.clone(), network.clone(), socket));
        if let Some(old) = servers.insert(network.id.clone(), task) {
            old.abort();
        }
    }

    pub fn stop(&self, network_id: &str) {
        if let Some(task) = self.0.lock().ok().and_then(|mut s| s.remove(network_id)) {
            task.abort();
        }
    }
}

/// After a restart of hulld: serves the names of every network whose
/// bridge is up (a network is served from its first container's start on,
/// so a network nobody used has changed nothing on the host).
pub fn start_all(daemon: &Arc<Daemon>) {
    for network in runtime::network::list().unwrap_or_default() {
        if std::path::Path::new("/sys/class/net").join(&network.bridge).exists() {
            daemon.dns.start(daemon, &network);
        }
    }
}

async fn serve(daemon: Arc<Daemon>, network: NetworkRecord, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..len].to_vec();
        let (daemon, network, socket) = (daemon.clone(), network.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&daemon, &network, client.ip(), &query).await {
                let _ = socket.send_to(&answer, client).await;
            }
        });
    }
}

/// The names of the running containers on network `network_id` (what this
/// host tells the other hosts of a spanning network).
pub fn names_on(daemon: &Daemon, network_id: &str) -> HashMap<String, Ipv4Addr> {
    names_for(daemon, network_id, std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The names a container asking from `client` on network `network_id`
/// may resolve: those of the running containers on any network it is on
/// (as Docker's resolver answers), each name, short ID and alias in lower
/// case. A name on several of those networks resolves to its address on
/// the network asked.
fn names_for(daemon: &Daemon, network_id: &str, client: std::net::IpAddr) -> HashMap<String, Ipv4Addr> {
    let running: Vec<(crate::store::ContainerRecord, runtime::network::ContainerNetwork)> = daemon
        .containers
        .all()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|record| {
            let dir = ContainerDir::new(&record.id);
            let network = dir.spec().ok()?.network;
            dir.is_running().then_some((record, network))
        })
        .collect();
    let mut networks = vec![network_id.to_string()];
    let asking = running.iter().find(|(_, n)| {
        n.on(network_id)
            .is_some_and(|e| std::net::IpAddr::V4(e.address) == client)
    });
    if let Some((_, network)) = asking {
        networks.extend(network.endpoints.iter().map(|e| e.network_id.clone()));
    }
    let mut names = HashMap::new();
    // The networks in order, the one asked first: its addresses win.
    for net in networks.iter().rev() {
        for (record, network) in &running {
            let Some(endpoint) = network.on(net) else { continue };
            let short = record.id.chars().take(12).collect::<String>();
            for name in [record.name.clone(), short]
                .into_iter()
                .chain(endpoint.aliases.iter().cloned())
            {
                names.insert(name.to_ascii_lowercase(), endpoint.address);
            }
        }
    }
    names
}

async fn answer(
    daemon: &Arc<Daemon>,
    network: &NetworkRecord,
    client: std::net::IpAddr,
    query: &[u8],
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let [question] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response.to_vec().ok();
    }
    let wanted = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let names = {
        let (daemon, id) = (daemon.clone(), network.id.clone());
        tokio::task::spawn_blocking(move || names_for(&daemon, &id, client))
            .await
            .ok()?
    };
    // This host's containers first, then those other hosts of a spanning
    // network sent.
    let found = names
        .get(&wanted)
        .copied()
        .or_else(|| daemon.remote_names.lookup(&network.id, &wanted));
    if let Some(address) = found {
        response.metadata.authoritative = true;
        // A container's own name has an IPv4 address only: an empty
        // answer for other types (not NXDOMAIN, and not a 5 s wait).
        if question.query_type() == RecordType::A {
            response.add_answer(Record::from_rdata(question.name().clone(), TTL, RData::A(A(address))));
        }
        return response.to_vec().ok();
    }
    if network.internal {
        // No way out of an internal network, names included.
        response.metadata.response_code = ResponseCode::NXDomain;
        return response.to_vec().ok();
    }
    match relay(query).await {
        Some(answer) => Some(answer),
        None => {
            response.metadata.response_code = ResponseCode::ServFail;
            response.to_vec().ok()
        }
    }
}

/// The host's resolvers, loopback ones included (hulld can reach them).
fn upstreams() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Sends `query` to each upstream in turn; the first answer with the
/// query's ID comes back as it is.
async fn relay(query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for upstream in upstreams() {
        let bind: SocketAddr = match upstream {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let received = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((len, from)) if from == upstream && buf.get(..2) == Some(id) => return Some(len),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await;
        if let Ok(Some(len)) = received {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}
