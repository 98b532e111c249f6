//! Container networks: each a Linux bridge on the host with a subnet of its
//! own, its gateway address on the bridge. A container's VM has a tap on
//! its network's bridge and an address leased from the subnet; outbound
//! NAT, published ports and isolation are nftables rules in hull's own
//! table (`firewall`), made when a VM starts and gone with it.
//!
//! Networks live in `DATA/networks/ID/network.json`; each address in use is
//! a lease file `DATA/networks/ID/leases/ADDRESS` naming its container,
//! created exclusively, so two containers never get one address.

pub mod attach;
pub mod firewall;
pub mod host;
pub mod policy;
pub mod ports;
pub mod vxlan;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use policy::Policy;
pub use ports::{PortMapping, Protocol};

/// Docker's default network, and the one `docker run` uses without `--network`.
pub const DEFAULT_NETWORK: &str = "bridge";

/// The name of hull's nftables table and the stem of its bridges' names
/// (`HULL_NET_NAME`, default `hull`: bridge `hull0`, table `ip hull`). A
/// test's hulld takes one of its own, so it never touches the host's.
pub fn host_name() -> String {
    std::env::var("HULL_NET_NAME")
        .ok()
        .filter(|n| (1..=8).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "hull".into())
}
/// Where the default network's subnet is chosen from, first free first
/// (Docker's defaults, then further private ranges).
const DEFAULT_POOL: &[&str] = &[
    "172.17.0.0/16",
    "172.18.0.0/16",
    "172.19.0.0/16",
    "172.20.0.0/16",
    "10.88.0.0/16",
    "10.89.0.0/16",
    "192.168.200.0/24",
];
/// Where hull takes new networks' subnets from: hulld's `--bip` and
/// `--default-address-pool`, as dockerd's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPlan {
    /// The default bridge's gateway address and prefix (`--bip 10.1.0.1/24`).
    pub bip: Option<(Ipv4Addr, u8)>,
    /// Pools carved into subnets of a size (`base=10.10.0.0/16,size=24`).
    pub pools: Vec<(Ipv4Net, u8)>,
}

static ADDRESS_PLAN: std::sync::OnceLock<AddressPlan> = std::sync::OnceLock::new();

/// Sets this process's address plan (once, before any network is made).
pub fn set_address_plan(plan: AddressPlan) {
    let _ = ADDRESS_PLAN.set(plan);
}

impl AddressPlan {
    /// `base=CIDR,size=N`, dockerd's syntax for `--default-address-pool`.
    pub fn parse_pool(text: &str) -> Result<(Ipv4Net, u8), String> {
        let (mut base, mut size) = (None, None);
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("base", cidr)) => base = cidr.parse::<Ipv4Net>().ok(),
                Some(("size", n)) => size = n.parse::<u8>().ok(),
                _ => return Err(format!("invalid address pool \"{text}\": expected base=CIDR,size=N")),
            }
        }
        match (base, size) {
            (Some(base), Some(size)) if size >= base.prefix_len() && size <= 30 => Ok((base.trunc(), size)),
            _ => Err(format!(
                "invalid address pool \"{text}\": base must be an IPv4 CIDR and size a prefix between its own and 30"
            )),
        }
    }

    /// `--bip ADDRESS/PREFIX`: the default bridge's gateway and subnet.
    pub fn parse_bip(text: &str) -> Result<(Ipv4Addr, u8), String> {
        let net: Ipv4Net = text
            .parse()
            .map_err(|_| format!("invalid --bip \"{text}\": expected ADDRESS/PREFIX"))?;
        let usable = net.prefix_len() <= 30 && net.addr() != net.network() && net.addr() != net.broadcast();
        match usable {
            true => Ok((net.addr(), net.prefix_len())),
            false => Err(format!(
                "invalid --bip \"{text}\": the address must be a host address of a subnet of at most /30"
            )),
        }
    }

    /// The subnets new networks may take, in order.
    fn candidates(&self) -> Box<dyn Iterator<Item = Ipv4Net> + '_> {
        if self.pools.is_empty() {
            return Box::new(DEFAULT_POOL.iter().filter_map(|s| s.parse::<Ipv4Net>().ok()));
        }
        Box::new(
            self.pools
                .iter()
                .flat_map(|(base, size)| base.subnets(*size).into_iter().flatten().take(65536)),
        )
    }
}

fn address_plan() -> AddressPlan {
    ADDRESS_PLAN.get().cloned().unwrap_or_default()
}

/// The MTU of every hull network (the VMM's NIC takes Ethernet frames).
pub const MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("no free subnet for a network: every candidate clashes with a host route or another network")]
    NoSubnet,
    #[error("no available IPv4 addresses on network {0}")]
    Exhausted(String),
    #[error("address {address} is not in network {network}'s subnet {subnet}")]
    OutsideSubnet {
        address: Ipv4Addr,
        network: String,
        subnet: Ipv4Net,
    },
    #[error("address {address} is already in use on network {network}")]
    AddressInUse { address: Ipv4Addr, network: String },
    #[error("network {name}: {detail}")]
    Damaged { name: String, detail: String },
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("invalid network name \"{0}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    #[error("invalid pool request: Pool overlaps with other one on this address space ({0})")]
    Overlaps(Ipv4Net),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("error while removing network: network {name} id {id} has active endpoints")]
    HasEndpoints { name: String, id: String },
    #[error("{0} is a pre-defined network and cannot be removed")]
    Predefined(String),
    #[error("{0}")]
    Host(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// A network, as `docker network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// The Linux bridge on the host.
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where automatic addresses come from (`--ip-range`); the whole subnet if `None`.
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// The network spans hosts through this VXLAN (`hull.vxlan.*` options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<vxlan::Vxlan>,
}

impl NetworkRecord {
    /// Its containers' MTU: a spanning network leaves room for VXLAN.
    pub fn mtu(&self) -> u32 {
        match self.vxlan {
            Some(_) => vxlan::SPANNING_MTU,
            None => MTU,
        }
    }

    /// The default network: Docker's `bridge`, with no names served.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_NETWORK
    }
}

/// What `docker network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkRequest {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub vxlan: Option<vxlan::Vxlan>,
}

/// The most networks one container can be on at once: one NIC slot of its
/// VM each (every clone has its template's slots; virtio-mmio has no hot-plug).
pub const MAX_NETWORKS_PER_CONTAINER: u8 = vmm::vm::MAX_NICS;

/// One container's place on a network, chosen at create (or connect) and
/// kept until it leaves that network (a VM keeps its address across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network_id: String,
    pub address: Ipv4Addr,
    /// `02:42:xx:xx:xx:xx`, from the address, as Docker makes it.
    pub mac: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The VM's NIC on this network: the guest's eth`slot`.
    #[serde(default)]
    pub slot: u8,
}

/// How a container is networked (part of its spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredNetwork")]
pub struct ContainerNetwork {
    /// The networks it is on, in the order it joined them; empty:
    /// `--network none` (only `lo`). The first holds its default route, its
    /// published ports and the name it is known by outside.
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// `--add-host` entries.
    #[serde(default)]
    pub extra_hosts: Vec<proto::HostEntry>,
    /// `--dns`, `--dns-search`, `--dns-option`; empty: the host's resolvers.
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// Who may reach the container (`hull.policy` label, `hull policy`).
    #[serde(default)]
    pub policy: Policy,
}

/// A stored spec, from before a container could be on several networks
/// (`endpoint`) or after (`endpoints`).
#[derive(Deserialize)]
struct StoredNetwork {
    #[serde(default)]
    endpoint: Option<Endpoint>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    ports: Vec<PortMapping>,
    #[serde(default)]
    extra_hosts: Vec<proto::HostEntry>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    dns_search: Vec<String>,
    #[serde(default)]
    dns_options: Vec<String>,
    #[serde(default)]
    policy: Policy,
}

impl From<StoredNetwork> for ContainerNetwork {
    fn from(stored: StoredNetwork) -> Self {
        let mut endpoints = stored.endpoints;
        if endpoints.is_empty() {
            endpoints.extend(stored.endpoint);
        }
        ContainerNetwork {
            endpoints,
            ports: stored.ports,
            extra_hosts: stored.extra_hosts,
            dns: stored.dns,
            dns_search: stored.dns_search,
            dns_options: stored.dns_options,
            policy: stored.policy,
        }
    }
}

impl ContainerNetwork {
    /// The network that holds the default route and the published ports.
    pub fn primary(&self) -> Option<&Endpoint> {
        self.endpoints.first()
    }

    pub fn on(&self, network_id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.network_id == network_id)
    }

    /// The lowest NIC slot no endpoint uses, if one is left.
    pub fn free_slot(&self) -> Option<u8> {
        (0..MAX_NETWORKS_PER_CONTAINER).find(|slot| self.endpoints.iter().all(|e| e.slot != *slot))
    }
}

pub fn networks_dir() -> PathBuf {
    crate::data_dir().join("networks")
}

fn record_path(id: &str) -> PathBuf {
    networks_dir().join(id).join("network.json")
}

fn leases_dir(id: &str) -> PathBuf {
    networks_dir().join(id).join("leases")
}

/// Every network hull knows.
pub fn list() -> Result<Vec<NetworkRecord>, NetworkError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(networks_dir()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing networks")(e)),
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        if let Ok(record) = load(&id) {
            out.push(record);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The network with this ID.
pub fn load(id: &str) -> Result<NetworkRecord, NetworkError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NetworkError::NotFound(id.into()));
    }
    let bytes = std::fs::read(record_path(id)).map_err(|_| NetworkError::NotFound(id.into()))?;
    serde_json::from_slice(&bytes).map_err(|e| NetworkError::Damaged {
        name: id.into(),
        detail: e.to_string(),
    })
}

/// A network by name, full ID or unique ID prefix, as Docker looks them up.
pub fn find(reference: &str) -> Result<NetworkRecord, NetworkError> {
    let all = list()?;
    if let Some(n) = all.iter().find(|n| n.name == reference || n.id == reference) {
        return Ok(n.clone());
    }
    let mut prefixed = all
        .iter()
        .filter(|n| !reference.is_empty() && n.id.starts_with(reference));
    match (prefixed.next(), prefixed.next()) {
        (Some(n), None) => Ok(n.clone()),
        _ => Err(NetworkError::NotFound(reference.into())),
    }
}

fn save(record: &NetworkRecord) -> Result<(), NetworkError> {
    let dir = networks_dir().join(&record.id);
    std::fs::create_dir_all(dir.join("leases")).map_err(io(format!("creating {}", dir.display())))?;
    let json = serde_json::to_vec_pretty(record).map_err(|e| NetworkError::Damaged {
        name: record.name.clone(),
        detail: e.to_string(),
    })?;
    image::store::write_atomic(&record_path(&record.id), &json).map_err(io("writing the network record"))
}

fn networks_lock() -> Result<std::fs::File, NetworkError> {
    std::fs::create_dir_all(networks_dir()).map_err(io("creating the networks directory"))?;
    crate::lock_file(&networks_dir().join(".lock"), true).map_err(io("locking the networks"))
}

/// The default `bridge` network, made on first need on a subnet that
/// clashes with no host route and no other network.
pub fn ensure_default() -> Result<NetworkRecord, NetworkError> {
    if let Ok(record) = find(DEFAULT_NETWORK) {
        return Ok(record);
    }
    let _lock = networks_lock()?;
    if let Ok(record) = find(DEFAULT_NETWORK) {
        return Ok(record);
    }
    let bip = address_plan().bip;
    make(
        NetworkRequest {
            name: DEFAULT_NETWORK.into(),
            subnet: bip.and_then(|(address, prefix)| Ipv4Net::new(address, prefix).ok()),
            gateway: bip.map(|(address, _)| address),
            ..Default::default()
        },
        format!("{}0", host_name()),
    )
}

/// Docker's rule for network names.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.len() <= 128
}

/// A user-defined network (`docker network create`): its subnet as asked,
/// or the first free one of the pool.
pub fn create(request: NetworkRequest) -> Result<NetworkRecord, NetworkError> {
    if !valid_name(&request.name) || ["none", "host", "default"].contains(&request.name.as_str()) {
        return Err(NetworkError::InvalidName(request.name));
    }
    let _lock = networks_lock()?;
    if list()?.iter().any(|n| n.name == request.name) {
        return Err(NetworkError::Exists(request.name));
    }
    let id = random_id();
    // Bridge names have at most 15 bytes: the stem (8 at most), a dash, 6 of the ID.
    let bridge = format!("{}-{}", host_name(), &id[..6]);
    make_with_id(request, bridge, id)
}

fn make(request: NetworkRequest, bridge: String) -> Result<NetworkRecord, NetworkError> {
    make_with_id(request, bridge, random_id())
}

fn make_with_id(request: NetworkRequest, bridge: String, id: String) -> Result<NetworkRecord, NetworkError> {
    let taken = taken_subnets()?;
    if let Some(vxlan) = &request.vxlan {
        // The same subnet on every host: one picked here would differ.
        if request.subnet.is_none() {
            return Err(NetworkError::InvalidConfig(format!(
                "a network that spans hosts ({}) needs --subnet, the same on every host",
                vxlan::ID_OPTION
            )));
        }
        if let Some(other) = list()?
            .iter()
            .find(|n| n.vxlan.as_ref().is_some_and(|v| v.id == vxlan.id))
        {
            return Err(NetworkError::InvalidConfig(format!(
                "network {} already uses VXLAN {} on this host",
                other.name, vxlan.id
            )));
        }
    }
    let subnet = match request.subnet {
        Some(subnet) => {
            let subnet = subnet.trunc();
            if let Some(clash) = taken.iter().find(|t| overlaps(t, &subnet)) {
                return Err(NetworkError::Overlaps(*clash));
            }
            subnet
        }
        None => address_plan()
            .candidates()
            .find(|candidate| !taken.iter().any(|t| overlaps(t, candidate)))
            .ok_or(NetworkError::NoSubnet)?,
    };
    if subnet.prefix_len() > 30 {
        return Err(NetworkError::InvalidConfig(format!(
            "subnet {subnet} is too small: a network needs room for a gateway and a container"
        )));
    }
    let gateway = request.gateway.unwrap_or_else(|| first_host(&subnet));
    if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(NetworkError::InvalidConfig(format!(
            "invalid gateway {gateway}: it must be a host address of the subnet {subnet}"
        )));
    }
    if let Some(range) = request.ip_range {
        if !subnet.contains(&range) {
            return Err(NetworkError::InvalidConfig(format!(
                "invalid ip-range {range}: it must lie inside the subnet {subnet}"
            )));
        }
    }
    let record = NetworkRecord {
        id,
        name: request.name,
        bridge,
        subnet,
        gateway,
        created: crate::container::now_rfc3339(),
        internal: request.internal,
        labels: request.labels,
        ip_range: request.ip_range,
        vxlan: request.vxlan,
    };
    save(&record)?;
    Ok(record)
}

/// Removes a network no container uses: its record, its bridge and rules.
pub fn remove(record: &NetworkRecord) -> Result<(), NetworkError> {
    if record.is_default() {
        return Err(NetworkError::Predefined(record.name.clone()));
    }
    let _lock = networks_lock()?;
    if !leases(&record.id).is_empty() {
        return Err(NetworkError::HasEndpoints {
            name: record.name.clone(),
            id: record.id.clone(),
        });
    }
    // A network no container ever used has touched nothing on the host.
    let was_used = std::path::Path::new("/sys/class/net").join(&record.bridge).exists();
    let dir = networks_dir().join(&record.id);
    // Renamed away first: a half-removed network is never listed.
    let doomed = networks_dir().join(format!(".removed-{}", record.id));
    std::fs::rename(&dir, &doomed).map_err(io(format!("removing network {}", record.name)))?;
    let _ = std::fs::remove_dir_all(&doomed);
    // The VXLAN port first, whatever became of the bridge.
    if let Some(vxlan) = &record.vxlan {
        host::remove_link(&vxlan.link_name()).map_err(NetworkError::Host)?;
        vxlan.forget();
    }
    if was_used {
        host::remove_link(&record.bridge).map_err(NetworkError::Host)?;
        // Its rules go with it.
        firewall::ensure(&list()?).map_err(NetworkError::Host)?;
    }
    Ok(())
}

/// Subnets already routed on the host or held by a hull network.
fn taken_subnets() -> Result<Vec<Ipv4Net>, NetworkError> {
    let mut taken: Vec<Ipv4Net> = list()?.into_iter().map(|n| n.subnet).collect();
    taken.extend(host::routed_subnets().map_err(NetworkError::Host)?);
    Ok(taken)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    hex::encode(bytes)
}

/// Docker's MAC for an address: 02:42 and the four address bytes.
pub fn mac_for(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Leases an address on `network` to container `owner`: `requested`
/// (`--ip`), or the lowest free one.
pub fn lease(network: &NetworkRecord, requested: Option<Ipv4Addr>, owner: &str) -> Result<Ipv4Addr, NetworkError> {
    let dir = leases_dir(&network.id);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let usable = |a: Ipv4Addr| {
        network.subnet.contains(&a)
            && a != network.subnet.network()
            && a != network.subnet.broadcast()
            && a != network.gateway
    };
    let automatic = |a: &Ipv4Addr| usable(*a) && network.ip_range.is_none_or(|r| r.contains(a));
    let take = |address: Ipv4Addr| -> std::io::Result<bool> {
        match std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(dir.join(address.to_string()))
        {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, owner.as_bytes())?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    };
    if let Some(address) = requested {
        if !usable(address) {
            return Err(NetworkError::OutsideSubnet {
                address,
                network: network.name.clone(),
                subnet: network.subnet,
            });
        }
        return match take(address).map_err(io("leasing an address"))? {
            true => Ok(address),
            false => Err(NetworkError::AddressInUse {
                address,
                network: network.name.clone(),
            }),
        };
    }
    for address in network.subnet.hosts().filter(automatic) {
        if take(address).map_err(io("leasing an address"))? {
            return Ok(address);
        }
    }
    Err(NetworkError::Exhausted(network.name.clone()))
}

/// Gives back `owner`'s lease of `address` (someone else's is left alone).
pub fn release(network_id: &str, address: Ipv4Addr, owner: &str) {
    let path = leases_dir(network_id).join(address.to_string());
    if std::fs::read_to_string(&path).is_ok_and(|held| held == owner) {
        let _ = std::fs::remove_file(path);
    }
}

/// Every lease on a network: address and owner.
pub fn leases(network_id: &str) -> Vec<(Ipv4Addr, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(leases_dir(network_id))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(address) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
            continue;
        };
        if let Ok(owner) = std::fs::read_to_string(entry.path()) {
            out.push((address, owner));
        }
    }
    out.sort();
    out
}

/// The guest's side of a container's network, for the agent.
pub fn guest_network(network: &ContainerNetwork, hostname: &str) -> Result<Option<proto::GuestNetwork>, NetworkError> {
    let records = network
        .endpoints
        .iter()
        .map(|e| load(&e.network_id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(guest_network_on(network, hostname, &records))
}

/// `guest_network` with each endpoint's network read already (`records`,
/// in the endpoints' order).
pub fn guest_network_on(
    network: &ContainerNetwork,
    hostname: &str,
    records: &[NetworkRecord],
) -> Option<proto::GuestNetwork> {
    if network.endpoints.is_empty() {
        return None;
    }
    let mut hosts = Vec::new();
    for endpoint in &network.endpoints {
        let mut names = vec![hostname.to_string()];
        names.extend(endpoint.aliases.iter().filter(|a| a.as_str() != hostname).cloned());
        hosts.push(proto::HostEntry {
            address: endpoint.address.to_string(),
            names,
        });
    }
    hosts.extend(network.extra_hosts.iter().cloned());
    // User-defined networks have hulld's name service on their gateway
    // (each answers for every network the asking container is on); the
    // default bridge uses the host's resolvers, as in Docker.
    let named = network.endpoints.iter().zip(records).find(|(_, r)| !r.is_default());
    let nameservers = match (network.dns.is_empty(), named) {
        (false, _) => network.dns.clone(),
        (true, Some((_, record))) => vec![record.gateway.to_string()],
        (true, None) => host::resolvers(),
    };
    // One default route: through the first network that has a way out.
    let routed = network
        .endpoints
        .iter()
        .zip(records)
        .find(|(_, r)| !r.internal)
        .map(|(e, _)| e.slot);
    let interfaces = network
        .endpoints
        .iter()
        .zip(records)
        .map(|(endpoint, record)| proto::GuestInterface {
            slot: endpoint.slot,
            mac: endpoint.mac.clone(),
            addresses: vec![format!("{}/{}", endpoint.address, record.subnet.prefix_len())],
            gateway: (routed == Some(endpoint.slot)).then(|| record.gateway.to_string()),
            mtu: record.mtu(),
        })
        .collect();
    Some(proto::GuestNetwork {
        interfaces,
        hosts,
        nameservers,
        search: network.dns_search.clone(),
        dns_options: network.dns_options.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> NetworkRecord {
        NetworkRecord {
            id: "ab".repeat(32),
            name: "t".into(),
            bridge: "hullt".into(),
            subnet: "10.99.0.0/29".parse().unwrap(),
            gateway: "10.99.0.1".parse().unwrap(),
            created: String::new(),
            internal: false,
            labels: BTreeMap::new(),
            ip_range: None,
            vxlan: None,
        }
    }

    /// One data directory for every test here: the variable is the
    /// process's, and tests run in parallel.
    fn use_test_data_dir() {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        std::env::set_var("HULL_DATA_DIR", dir.path());
    }

    #[test]
    fn specs_from_before_several_networks_still_read() {
        let old =
            r#"{"endpoint": {"network_id": "n1", "address": "10.0.0.2", "mac": "02:42:0a:00:00:02"}, "ports": []}"#;
        let network: ContainerNetwork = serde_json::from_str(old).unwrap();
        assert_eq!(network.endpoints.len(), 1);
        assert_eq!(
            (network.endpoints[0].network_id.as_str(), network.endpoints[0].slot),
            ("n1", 0)
        );
        let none: ContainerNetwork = serde_json::from_str(r#"{"endpoint": null}"#).unwrap();
        assert!(none.endpoints.is_empty());
        // And what is written now reads back the same.
        let again: ContainerNetwork = serde_json::from_str(&serde_json::to_string(&network).unwrap()).unwrap();
        assert_eq!(again, network);
    }

    #[test]
    fn a_guest_on_several_networks_gets_one_default_route_and_every_name() {
        use_test_data_dir();
        let private = NetworkRecord {
            id: "cd".repeat(32),
            name: "p".into(),
            bridge: "hullp".into(),
            internal: true,
            subnet: "10.98.0.0/24".parse().unwrap(),
            gateway: "10.98.0.1".parse().unwrap(),
            ..network()
        };
        let public = network();
        save(&private).unwrap();
        save(&public).unwrap();
        let endpoint = |record: &NetworkRecord, address: &str, slot| Endpoint {
            network_id: record.id.clone(),
            address: address.parse().unwrap(),
            mac: mac_for(address.parse().unwrap()),
            aliases: vec!["db".into()],
            slot,
        };
        let mut net = ContainerNetwork {
            endpoints: vec![endpoint(&private, "10.98.0.2", 0), endpoint(&public, "10.99.0.3", 2)],
            ..ContainerNetwork::default()
        };
        let guest = guest_network(&net, "app").unwrap().unwrap();
        let routes: Vec<_> = guest.interfaces.iter().map(|i| (i.slot, i.gateway.clone())).collect();
        assert_eq!(
            routes,
            vec![(0, None), (2, Some("10.99.0.1".into()))],
            "the way out is the public network's"
        );
        assert_eq!(guest.nameservers, vec!["10.98.0.1".to_string()]);
        let named: Vec<_> = guest.hosts.iter().map(|h| h.address.as_str()).collect();
        assert_eq!(named, ["10.98.0.2", "10.99.0.3"]);
        assert_eq!(net.free_slot(), Some(1));
        net.endpoints.push(endpoint(&public, "10.99.0.4", 1));
        net.endpoints.push(endpoint(&public, "10.99.0.5", 3));
        assert_eq!(net.free_slot(), None, "every NIC slot is taken");
    }

    #[test]
    fn leases_are_exclusive_and_stay_in_the_subnet() {
        use_test_data_dir();
        let net = network();
        save(&net).unwrap();
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 are free.
        let got: Vec<Ipv4Addr> = (0..5).map(|i| lease(&net, None, &format!("c{i}")).unwrap()).collect();
        assert_eq!(got[0], "10.99.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(got[4], "10.99.0.6".parse::<Ipv4Addr>().unwrap());
        assert!(matches!(lease(&net, None, "x"), Err(NetworkError::Exhausted(_))));
        release(&net.id, got[1], "somebody-else");
        assert!(matches!(
            lease(&net, Some(got[1]), "x"),
            Err(NetworkError::AddressInUse { .. })
        ));
        release(&net.id, got[1], "c1");
        assert_eq!(lease(&net, Some(got[1]), "x").unwrap(), got[1]);
        for outside in ["10.99.0.1", "10.99.0.7", "10.98.0.3"] {
            assert!(matches!(
                lease(&net, Some(outside.parse().unwrap()), "x"),
                Err(NetworkError::OutsideSubnet { .. })
            ));
        }
        assert_eq!(leases(&net.id).len(), 5);
        assert_eq!(find("t").unwrap(), net);
        assert_eq!(find(&net.id[..6]).unwrap(), net);
        assert!(find("nope").is_err());
    }

    #[test]
    fn address_plans_parse_like_dockerd() {
        assert_eq!(
            AddressPlan::parse_pool("base=10.10.0.0/16,size=24"),
            Ok(("10.10.0.0/16".parse().unwrap(), 24))
        );
        assert!(AddressPlan::parse_pool("base=10.10.0.0/16,size=8").is_err());
        assert!(AddressPlan::parse_pool("10.10.0.0/16").is_err());
        assert_eq!(
            AddressPlan::parse_bip("10.1.0.1/24"),
            Ok(("10.1.0.1".parse().unwrap(), 24))
        );
        assert!(
            AddressPlan::parse_bip("10.1.0.0/24").is_err(),
            "the network address is no gateway"
        );
        let plan = AddressPlan {
            bip: None,
            pools: vec![AddressPlan::parse_pool("base=10.10.0.0/16,size=24").unwrap()],
        };
        let first: Vec<String> = plan.candidates().take(2).map(|n| n.to_string()).collect();
        assert_eq!(first, ["10.10.0.0/24", "10.10.1.0/24"]);
    }

    #[test]
    fn macs_follow_docker() {
        assert_eq!(mac_for("172.17.0.2".parse().unwrap()), "02:42:ac:11:00:02");
    }
}
