//! A container's network, from Docker's create request to what inspect and
//! ps show: `--network`, `--ip`, `--mac-address`, `--network-alias`,
//! `-p`/`-P`, `--add-host`, `--dns*`; and `NetworkSettings`.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use runtime::network::{self, ContainerNetwork, Endpoint, NetworkRecord, Policy, PortMapping, Protocol};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::ApiError;

/// The label that sets a container's ingress policy at create.
pub const POLICY_LABEL: &str = "hull.policy";

/// What a create request says of networking.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkRequest {
    pub network_mode: String,
    pub port_bindings: Option<HashMap<String, Option<Vec<PortBindingBody>>>>,
    pub publish_all_ports: bool,
    pub extra_hosts: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
    pub dns_search: Option<Vec<String>>,
    pub dns_options: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBindingBody {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointBody {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<IpamBody>,
    pub aliases: Option<Vec<String>>,
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IpamBody {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
}

/// `80/tcp` → (80, tcp).
fn container_port(key: &str) -> Result<(u16, Protocol), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid port specification: \"{key}\""));
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => return Err(ApiError::bad_request("sctp ports are not supported by hull")),
        _ => return Err(bad()),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, protocol)),
        _ => Err(bad()),
    }
}

fn host_ip(text: &str) -> Result<Option<Ipv4Addr>, ApiError> {
    match text {
        "" | "0.0.0.0" => Ok(None),
        "::" => Ok(None),
        other => match other.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(Some(ip)),
            Err(_) if other.parse::<std::net::Ipv6Addr>().is_ok() => Err(ApiError::bad_request(format!(
                "hull networks are IPv4: cannot publish on {other}"
            ))),
            Err(_) => Err(ApiError::bad_request(format!("invalid IP address: {other}"))),
        },
    }
}

/// The host side of a `-p` binding, as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPort {
    /// Any free port.
    Any,
    One(u16),
    /// The first free port of `low..=high`.
    Range(u16, u16),
}

impl HostPort {
    fn parse(text: &str) -> Result<HostPort, ApiError> {
        let bad = || ApiError::bad_request(format!("invalid host port: \"{text}\""));
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        match text.split_once('-') {
            _ if text.is_empty() => Ok(HostPort::Any),
            None => Ok(HostPort::One(port(text)?)),
            Some((low, high)) => match (port(low)?, port(high)?) {
                (low, high) if low <= high => Ok(HostPort::Range(low, high)),
                _ => Err(bad()),
            },
        }
    }

    /// The port to publish on: the given one, or one found free now.
    fn choose(self, protocol: Protocol, ip: Option<Ipv4Addr>) -> Result<u16, ApiError> {
        match self {
            HostPort::One(port) => Ok(port),
            HostPort::Any => network::ports::free_port(protocol, ip)
                .map_err(|_| ApiError::conflict("no free host port to publish on")),
            HostPort::Range(low, high) => (low..=high)
                .find(|p| {
                    let probe = PortMapping {
                        protocol,
                        host_ip: ip,
                        host_port: *p,
                        container_port: 1,
                    };
                    network::ports::reserve(&[probe]).is_ok()
                })
                .ok_or_else(|| ApiError::conflict(format!("no free host port in {low}-{high}"))),
        }
    }
}

/// One `-p` binding, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: HostPort,
}

/// The `-p` bindings of a request, parsed.
fn port_requests(request: &NetworkRequest) -> Result<Vec<PortRequest>, ApiError> {
    let mut out = Vec::new();
    for (key, bindings) in request.port_bindings.iter().flatten() {
        let (container_port, protocol) = container_port(key)?;
        for binding in bindings.iter().flatten() {
            out.push(PortRequest {
                protocol,
                container_port,
                host_ip: host_ip(&binding.host_ip)?,
                host_port: HostPort::parse(&binding.host_port)?,
            });
        }
    }
    Ok(out)
}

/// The published ports: the `-p` bindings, and with `-P` (`publish_all`)
/// every `exposed` port not bound otherwise, on a free host port.
fn port_mappings(
    requests: &[PortRequest],
    bound: &[(u16, Protocol)],
    publish_all: bool,
    exposed: &[(u16, Protocol)],
) -> Result<Vec<PortMapping>, ApiError> {
    let mut out: Vec<PortMapping> = Vec::new();
    for request in requests {
        let (protocol, ip) = (request.protocol, request.host_ip);
        let mapping = PortMapping {
            protocol,
            host_ip: ip,
            host_port: request.host_port.choose(protocol, ip)?,
            container_port: request.container_port,
        };
        if out.iter().any(|m| {
            m.protocol == protocol
                && m.host_port == mapping.host_port
                && (m.host_ip.is_none() || ip.is_none() || m.host_ip == ip)
        }) {
            return Err(ApiError::bad_request(format!(
                "host port {}/{} is published twice",
                mapping.host_port,
                protocol.name()
            )));
        }
        out.push(mapping);
    }
    if publish_all {
        let mut done: Vec<(u16, Protocol)> = bound.to_vec();
        for &(container_port, protocol) in exposed {
            if done.contains(&(container_port, protocol)) {
                continue;
            }
            done.push((container_port, protocol));
            out.push(PortMapping {
                protocol,
                host_ip: None,
                host_port: HostPort::Any.choose(protocol, None)?,
                container_port,
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Where an `--add-host` name points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostAddress {
    Ip(std::net::IpAddr),
    /// `host-gateway`: the default bridge's gateway, known once it exists.
    Gateway,
}

/// `--add-host name:address` (Docker also takes `name=address`).
fn extra_host(text: &str) -> Result<(String, HostAddress), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid argument \"{text}\" for \"--add-host\": expected NAME:ADDRESS"
        ))
    };
    let (name, address) = text.split_once('=').or_else(|| text.split_once(':')).ok_or_else(bad)?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return Err(bad());
    }
    let address = match address {
        "host-gateway" => HostAddress::Gateway,
        a => HostAddress::Ip(a.trim_matches(|c| c == '[' || c == ']').parse().map_err(|_| bad())?),
    };
    Ok((name.to_string(), address))
}

fn parse_mac(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid MAC address: {text}"));
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if bytes.len() != 6 || bytes[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(text.to_ascii_lowercase())
}

/// A container's place on one network as asked: aliases, address, MAC.
#[derive(Debug, Clone, Default)]
pub struct EndpointRequest {
    aliases: Vec<String>,
    address: Option<Ipv4Addr>,
    mac: Option<String>,
}

impl EndpointRequest {
    /// `body`'s fields, checked; `config_mac` (the create body's
    /// `MacAddress`) where the endpoint names none.
    pub fn parse(body: Option<&EndpointBody>, config_mac: &str) -> Result<EndpointRequest, ApiError> {
        let address = match body
            .and_then(|e| e.ipam_config.as_ref())
            .map(|i| i.ipv4_address.as_str())
        {
            None | Some("") => None,
            Some(text) => Some(
                text.parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address: {text}")))?,
            ),
        };
        let mac = match body
            .map(|e| e.mac_address.as_str())
            .filter(|m| !m.is_empty())
            .unwrap_or(config_mac)
        {
            "" => None,
            text => Some(parse_mac(text)?),
        };
        Ok(EndpointRequest {
            aliases: body.and_then(|e| e.aliases.clone()).unwrap_or_default(),
            address,
            mac,
        })
    }
}

/// Which network a container asks to be on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    None,
    Default,
    Named(String),
    /// Another container's network (`container:NAME`): its VM's.
    Container(String),
}

/// A create request's networking, parsed and checked: nothing is looked
/// up, leased or bound until `plan`.
#[derive(Debug)]
pub struct NetworkIntent {
    mode: Mode,
    /// The mode as the client wrote it (endpoints may be keyed by it).
    mode_text: String,
    policy: Policy,
    extra_hosts: Vec<(String, HostAddress)>,
    dns: Vec<String>,
    dns_search: Vec<String>,
    dns_options: Vec<String>,
    ports: Vec<PortRequest>,
    bound: Vec<(u16, Protocol)>,
    publish_all: bool,
    exposed: Vec<(u16, Protocol)>,
    endpoints: Vec<(String, EndpointRequest)>,
    config_endpoint: EndpointRequest,
}

impl NetworkIntent {
    /// The networking of a create request: its HostConfig fields, its
    /// `NetworkingConfig.EndpointsConfig`, its `MacAddress`, the ports it
    /// exposes and its labels (`hull.policy`).
    pub fn parse(
        request: &NetworkRequest,
        endpoints: &HashMap<String, EndpointBody>,
        config_mac: &str,
        exposed: &[String],
        labels: &HashMap<String, String>,
    ) -> Result<NetworkIntent, ApiError> {
        let mode_text = request.network_mode.clone();
        let mode = match mode_text.as_str() {
            "none" => Mode::None,
            "host" => {
                return Err(ApiError::bad_request(
                    "--network host is not supported: every hull container is a VM with its own network stack",
                ))
            }
            m if m.starts_with("container:") => match &m["container:".len()..] {
                "" => {
                    return Err(ApiError::bad_request(
                        "invalid --network: container: names no container",
                    ))
                }
                name => Mode::Container(name.to_string()),
            },
            "" | "default" | "bridge" => Mode::Default,
            name => Mode::Named(name.to_string()),
        };
        if mode == Mode::None
            && (request.port_bindings.as_ref().is_some_and(|p| !p.is_empty()) || request.publish_all_ports)
        {
            return Err(ApiError::bad_request(
                "conflicting options: port publishing and the container type network mode",
            ));
        }
        if matches!(mode, Mode::Container(_)) {
            joined_conflicts(request, endpoints, config_mac)?;
        }
        let policy = match labels.get(POLICY_LABEL) {
            Some(level) => level.parse().map_err(ApiError::bad_request)?,
            None => Policy::Open,
        };
        for server in request.dns.iter().flatten() {
            if server.parse::<std::net::IpAddr>().is_err() {
                return Err(ApiError::bad_request(format!("{server} is not an ip address")));
            }
        }
        let mut bound = Vec::new();
        for key in request.port_bindings.iter().flatten().map(|(k, _)| k) {
            bound.push(container_port(key)?);
        }
        let mut parsed_endpoints = Vec::new();
        for (name, body) in endpoints {
            parsed_endpoints.push((name.clone(), EndpointRequest::parse(Some(body), config_mac)?));
        }
        // Docker picks the first endpoint when none is keyed by the network.
        parsed_endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let mut intent = NetworkIntent {
            mode,
            mode_text,
            policy,
            extra_hosts: request
                .extra_hosts
                .iter()
                .flatten()
                .map(|h| extra_host(h))
                .collect::<Result<_, _>>()?,
            dns: request.dns.clone().unwrap_or_default(),
            dns_search: request.dns_search.clone().unwrap_or_default(),
            dns_options: request.dns_options.clone().unwrap_or_default(),
            ports: port_requests(request)?,
            bound,
            publish_all: request.publish_all_ports,
            exposed: Vec::new(),
            endpoints: parsed_endpoints,
            config_endpoint: EndpointRequest::parse(None, config_mac)?,
        };
        intent.expose(exposed)?;
        Ok(intent)
    }

    /// Adds exposed ports (the image's): they matter only to `-P`, and
    /// only then must they parse, as in Docker.
    pub fn expose(&mut self, keys: &[String]) -> Result<(), ApiError> {
        if self.publish_all {
            for key in keys {
                self.exposed.push(container_port(key)?);
            }
        }
        Ok(())
    }

    /// Whether the request names no network of its own (`NetworkMode` empty).
    pub fn is_default_mode(&self) -> bool {
        self.mode_text.is_empty()
    }

    /// The container whose network this one joins (`container:NAME`).
    pub fn joins(&self) -> Option<&str> {
        match &self.mode {
            Mode::Container(name) => Some(name),
            _ => None,
        }
    }
}

/// What a container on another's network cannot have of its own, refused
/// with dockerd's words: that container's network settings are its.
fn joined_conflicts(
    request: &NetworkRequest,
    endpoints: &HashMap<String, EndpointBody>,
    config_mac: &str,
) -> Result<(), ApiError> {
    let conflict = |what: &str| Err(ApiError::bad_request(format!("conflicting options: {what}")));
    if request.port_bindings.as_ref().is_some_and(|p| !p.is_empty()) || request.publish_all_ports {
        return conflict("port publishing and the container type network mode");
    }
    if request.dns.as_ref().is_some_and(|d| !d.is_empty())
        || request.dns_search.as_ref().is_some_and(|d| !d.is_empty())
        || request.dns_options.as_ref().is_some_and(|d| !d.is_empty())
    {
        return conflict("dns and the network mode");
    }
    if request.extra_hosts.as_ref().is_some_and(|h| !h.is_empty()) {
        return conflict("custom host-to-IP mapping and the network mode");
    }
    if !config_mac.is_empty() || endpoints.values().any(|e| !e.mac_address.is_empty()) {
        return conflict("mac-address and the network mode");
    }
    // The CLI sends an empty endpoint for the mode itself.
    if endpoints.keys().any(|name| *name != request.network_mode) {
        return Err(ApiError::bad_request(
            "Container sharing network namespace with another container or host cannot be connected to any other network",
        ));
    }
    if endpoints
        .values()
        .any(|e| e.aliases.as_ref().is_some_and(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_request(
            "network-scoped alias is supported only for containers in user defined networks",
        ));
    }
    if endpoints
        .values()
        .any(|e| e.ipam_config.as_ref().is_some_and(|i| !i.ipv4_address.is_empty()))
    {
        return Err(ApiError::bad_request(
            "user specified IP address is supported only when connecting to networks with user configured subnets",
        ));
    }
    Ok(())
}

/// The network `intent` asks for, its address leased to `id` and its host
/// ports chosen. On error nothing is leased.
pub fn plan(id: &str, intent: &NetworkIntent) -> Result<ContainerNetwork, ApiError> {
    let mut extra_hosts = Vec::new();
    for (name, address) in &intent.extra_hosts {
        let address = match address {
            HostAddress::Ip(ip) => ip.to_string(),
            HostAddress::Gateway => network::ensure_default()?.gateway.to_string(),
        };
        extra_hosts.push(proto::HostEntry {
            address,
            names: vec![name.clone()],
        });
    }
    let mut net = ContainerNetwork {
        endpoints: Vec::new(),
        ports: Vec::new(),
        extra_hosts,
        dns: intent.dns.clone(),
        dns_search: intent.dns_search.clone(),
        dns_options: intent.dns_options.clone(),
        policy: intent.policy,
    };
    let primary: NetworkRecord = match &intent.mode {
        // The VM it joins has the network: this container has none of its own.
        Mode::None | Mode::Container(_) => return Ok(net),
        Mode::Default => network::ensure_default()?,
        Mode::Named(name) => network::find(name)?,
    };
    // Each endpoint is keyed by a network's name or ID: the mode's network
    // first (Docker takes the only endpoint for it, however keyed), then
    // the others, each one more NIC.
    let mut wanted: Vec<(NetworkRecord, &EndpointRequest)> = Vec::new();
    let mut primary_request = None;
    for (key, request) in &intent.endpoints {
        let record = match key.as_str() {
            network::DEFAULT_NETWORK | "default" => network::ensure_default()?,
            _ if *key == intent.mode_text => primary.clone(),
            other => network::find(other)?,
        };
        if record.id == primary.id {
            primary_request = Some(request);
        } else if !wanted.iter().any(|(r, _)| r.id == record.id) {
            wanted.push((record, request));
        }
    }
    wanted.insert(0, (primary, primary_request.unwrap_or(&intent.config_endpoint)));
    if wanted.len() > usize::from(network::MAX_NETWORKS_PER_CONTAINER) {
        return Err(too_many_networks(wanted.len()));
    }
    net.ports = port_mappings(&intent.ports, &intent.bound, intent.publish_all, &intent.exposed)?;
    for (slot, (record, request)) in wanted.iter().enumerate() {
        match endpoint_on(id, record, request, slot as u8) {
            Ok(endpoint) => net.endpoints.push(endpoint),
            Err(e) => {
                release(id, &net);
                return Err(e);
            }
        }
    }
    Ok(net)
}

pub(crate) fn too_many_networks(count: usize) -> ApiError {
    ApiError::bad_request(format!(
        "{count} networks asked for: a hull container can be on at most {} networks (one NIC each in its VM)",
        network::MAX_NETWORKS_PER_CONTAINER
    ))
}

/// Container `id`'s place on `record` as `request` asks, its address
/// leased; nothing is leased on error.
pub(crate) fn endpoint_on(
    id: &str,
    record: &NetworkRecord,
    request: &EndpointRequest,
    slot: u8,
) -> Result<Endpoint, ApiError> {
    if !request.aliases.is_empty() && record.is_default() {
        return Err(ApiError::bad_request(
            "network-scoped alias is supported only for containers in user defined networks",
        ));
    }
    if request.address.is_some() && record.is_default() {
        return Err(ApiError::bad_request(
            "user specified IP address is supported on user defined networks only",
        ));
    }
    let address = network::lease(record, request.address, id)?;
    Ok(Endpoint {
        network_id: record.id.clone(),
        mac: request.mac.clone().unwrap_or_else(|| network::mac_for(address)),
        address,
        aliases: request.aliases.clone(),
        slot,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectJson {
    container: String,
    endpoint_config: Option<EndpointBody>,
}

/// The body of a network connect or disconnect, parsed and checked.
#[derive(Debug)]
pub struct ConnectBody {
    pub container: String,
    pub endpoint: EndpointRequest,
}

impl ConnectBody {
    pub fn parse(bytes: &[u8]) -> Result<ConnectBody, ApiError> {
        let json: ConnectJson =
            serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
        Ok(ConnectBody {
            endpoint: EndpointRequest::parse(json.endpoint_config.as_ref(), "")?,
            container: json.container,
        })
    }
}

/// Gives back a container's addresses (at its removal, or a failed create).
pub fn release(id: &str, net: &ContainerNetwork) {
    for endpoint in &net.endpoints {
        network::release(&endpoint.network_id, endpoint.address, id);
    }
}

/// The name the container's first network goes by (`none` without one).
pub fn mode_name(net: &ContainerNetwork) -> String {
    net.primary()
        .and_then(|e| network::load(&e.network_id).ok())
        .map_or("none".into(), |n| n.name)
}

/// `NetworkSettings.Ports`: `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
fn ports_json(net: &ContainerNetwork) -> Value {
    let mut ports: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in &net.ports {
        ports
            .entry(format!("{}/{}", m.container_port, m.protocol.name()))
            .or_default()
            .push(json!({
                "HostIp": m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
                "HostPort": m.host_port.to_string(),
            }));
    }
    json!(ports)
}

/// `docker ps`'s `Ports`.
pub fn ps_ports(net: &ContainerNetwork, running: bool) -> Value {
    if !running {
        return json!([]);
    }
    Value::Array(
        net.ports
            .iter()
            .map(|m| {
                json!({
                    "IP": m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
                    "PrivatePort": m.container_port,
                    "PublicPort": m.host_port,
                    "Type": m.protocol.name(),
                })
            })
            .collect(),
    )
}

/// `NetworkSettings`, as dockerd shows it: addresses while running.
pub fn settings_json(id: &str, net: &ContainerNetwork, running: bool) -> Value {
    let mut networks = serde_json::Map::new();
    let mut top = json!({
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": false,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
        "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
        "Ports": if running { ports_json(net) } else { json!({}) },
    });
    let on: Vec<(&Endpoint, NetworkRecord)> = net
        .endpoints
        .iter()
        .filter_map(|e| network::load(&e.network_id).ok().map(|r| (e, r)))
        .collect();
    for (endpoint, record) in &on {
        let shown = |v: String| if running { v } else { String::new() };
        let endpoint_id = shown(format!("{:0<62}{:02x}", &id[..id.len().min(31)], endpoint.slot));
        let entry = json!({
            "IPAMConfig": null, "Links": null,
            "Aliases": if endpoint.aliases.is_empty() { Value::Null } else { json!(endpoint.aliases) },
            "MacAddress": shown(endpoint.mac.clone()),
            "DriverOpts": null,
            "NetworkID": record.id,
            "EndpointID": endpoint_id,
            "Gateway": shown(record.gateway.to_string()),
            "IPAddress": shown(endpoint.address.to_string()),
            "IPPrefixLen": if running { record.subnet.prefix_len() } else { 0 },
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": null,
        });
        if record.name == network::DEFAULT_NETWORK {
            // The legacy top-level fields describe the default bridge only.
            for key in ["EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress"] {
                top[key] = entry[key].clone();
            }
        }
        networks.insert(record.name.clone(), entry);
    }
    if on.is_empty() {
        networks.insert(
            "none".into(),
            json!({
                "IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "",
                "DriverOpts": null, "NetworkID": "", "EndpointID": "", "Gateway": "",
                "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0, "DNSNames": null,
            }),
        );
    }
    top["Networks"] = Value::Object(networks);
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings(pairs: &[(&str, &str, &str)]) -> NetworkRequest {
        let mut map: HashMap<String, Option<Vec<PortBindingBody>>> = HashMap::new();
        for (key, ip, port) in pairs {
            map.entry(key.to_string())
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBindingBody {
                    host_ip: ip.to_string(),
                    host_port: port.to_string(),
                });
        }
        NetworkRequest {
            port_bindings: Some(map),
            ..Default::default()
        }
    }

    fn port_mappings(request: &NetworkRequest, exposed: &[String]) -> Result<Vec<PortMapping>, ApiError> {
        let intent = NetworkIntent::parse(request, &HashMap::new(), "", exposed, &HashMap::new())?;
        super::port_mappings(&intent.ports, &intent.bound, intent.publish_all, &intent.exposed)
    }

    #[test]
    fn another_containers_network_takes_nothing_of_its_own() {
        let parse = |request: NetworkRequest, endpoints: &[(&str, EndpointBody)], mac: &str| {
            let endpoints = endpoints.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            NetworkIntent::parse(&request, &endpoints, mac, &[], &HashMap::new())
        };
        let joining = |request: NetworkRequest| NetworkRequest {
            network_mode: "container:web".into(),
            ..request
        };
        let intent = parse(joining(NetworkRequest::default()), &[], "").unwrap();
        assert_eq!(intent.joins(), Some("web"));
        // The CLI's empty endpoint for the mode itself is no network of its own.
        let intent = parse(
            joining(NetworkRequest::default()),
            &[("container:web", EndpointBody::default())],
            "",
        );
        assert_eq!(intent.unwrap().joins(), Some("web"));
        assert_eq!(parse(NetworkRequest::default(), &[], "").unwrap().joins(), None);

        let refused = |request: NetworkRequest, endpoints: &[(&str, EndpointBody)], mac: &str, expected: &str| {
            let e = parse(request, endpoints, mac).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(expected), "{}", e.message);
        };
        refused(joining(bindings(&[("80/tcp", "", "8080")])), &[], "", "port publishing");
        let publish_all = NetworkRequest {
            publish_all_ports: true,
            ..Default::default()
        };
        refused(joining(publish_all), &[], "", "port publishing");
        let dns = NetworkRequest {
            dns: Some(vec!["1.1.1.1".into()]),
            ..Default::default()
        };
        refused(joining(dns), &[], "", "dns and the network mode");
        let hosts = NetworkRequest {
            extra_hosts: Some(vec!["a:10.0.0.1".into()]),
            ..Default::default()
        };
        refused(joining(hosts), &[], "", "host-to-IP mapping");
        refused(
            joining(NetworkRequest::default()),
            &[],
            "02:42:ac:11:00:02",
            "mac-address",
        );
        refused(
            joining(NetworkRequest::default()),
            &[("front", EndpointBody::default())],
            "",
            "cannot be connected to any other network",
        );
        let aliased = EndpointBody {
            aliases: Some(vec!["a".into()]),
            ..Default::default()
        };
        refused(
            joining(NetworkRequest::default()),
            &[("container:web", aliased)],
            "",
            "network-scoped alias",
        );
        let nameless = NetworkRequest {
            network_mode: "container:".into(),
            ..Default::default()
        };
        refused(nameless, &[], "", "names no container");
    }

    #[test]
    fn port_bindings_follow_docker() {
        let got = port_mappings(
            &bindings(&[("80/tcp", "", "8080"), ("53/udp", "127.0.0.1", "5353")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                PortMapping {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80
                },
                PortMapping {
                    protocol: Protocol::Udp,
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    host_port: 5353,
                    container_port: 53
                },
            ]
        );
        let any = port_mappings(&bindings(&[("80/tcp", "", "")]), &[]).unwrap();
        assert_ne!(any[0].host_port, 0);
        for bad in [
            ("x/tcp", "", "1"),
            ("80/tcp", "", "99999"),
            ("80/tcp", "nope", "1"),
            ("80/icmp", "", "1"),
            ("80/tcp", "", "9-3"),
        ] {
            assert!(port_mappings(&bindings(&[bad]), &[]).is_err(), "{bad:?}");
        }
        assert!(port_mappings(&bindings(&[("80/tcp", "", "8080"), ("81/tcp", "", "8080")]), &[]).is_err());
        let all = NetworkRequest {
            publish_all_ports: true,
            ..bindings(&[("80/tcp", "", "8080")])
        };
        // Exposed ports matter (and must parse) only with -P.
        assert!(port_mappings(&bindings(&[]), &["9/sctp".into()]).unwrap().is_empty());
        let got = port_mappings(&all, &["80/tcp".into(), "443/tcp".into(), "443/tcp".into()]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().any(|m| m.container_port == 443 && m.host_port != 0));
    }

    #[test]
    fn hosts_and_macs_are_checked() {
        let ip = |text: &str| HostAddress::Ip(text.parse().unwrap());
        assert_eq!(extra_host("db:10.0.0.5").unwrap(), ("db".into(), ip("10.0.0.5")));
        assert_eq!(extra_host("db=::1").unwrap(), ("db".into(), ip("::1")));
        assert_eq!(extra_host("gw:host-gateway").unwrap().1, HostAddress::Gateway);
        assert!(extra_host("db").is_err());
        assert!(extra_host("db:notanip").is_err());
        assert_eq!(parse_mac("02:42:AC:11:00:09").unwrap(), "02:42:ac:11:00:09");
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("02:42:ac:11:00").is_err());
    }
}

#[derive(Debug, Deserialize)]
pub struct PolicyQuery {
    level: String,
}

/// `POST /containers/{id}/policy?level=LEVEL` (hull's own): changes who may
/// reach a container, at once if it runs; also its `hull.policy` label.
pub async fn set_policy(
    axum::extract::State(daemon): axum::extract::State<std::sync::Arc<crate::daemon::Daemon>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<PolicyQuery>,
) -> Result<axum::response::Response, ApiError> {
    let policy: Policy = query.level.parse().map_err(ApiError::bad_request)?;
    crate::api::blocking(move || {
        let record = daemon.containers.find(&id)?;
        let dir = runtime::container::ContainerDir::new(&record.id);
        if dir.spec()?.network.endpoints.is_empty() {
            return Err(ApiError::conflict(format!(
                "container {} has no network (--network none): there is nothing to police",
                record.name
            )));
        }
        let spec = dir.update_spec(|s| s.network.policy = policy)?;
        daemon.containers.modify(&record.id, |r| {
            r.config.labels.insert(POLICY_LABEL.into(), policy.name().into());
        })?;
        if dir.is_running() {
            network::policy::apply_to(&record.id, &spec.network).map_err(ApiError::internal)?;
        }
        Ok(crate::api::empty(axum::http::StatusCode::NO_CONTENT))
    })
    .await
}
