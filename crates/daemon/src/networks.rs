//! The network endpoints: create, list, inspect, remove, prune. A network
//! is a bridge on the host with a subnet (`runtime::network`); `none` is
//! listed too, as Docker lists it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use runtime::container::ContainerDir;
use runtime::network::{self, NetworkError, NetworkRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, empty, ApiError};
use crate::daemon::Daemon;

/// The ID `none` goes by (it has no record).
const NONE_ID: &str = "6e6f6e6500000000000000000000000000000000000000000000000000000000";

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> ApiError {
        use NetworkError::*;
        let status = match &e {
            NotFound(_) => StatusCode::NOT_FOUND,
            Exists(_) => StatusCode::CONFLICT,
            HasEndpoints { .. } | Predefined(_) | Overlaps(_) => StatusCode::FORBIDDEN,
            InvalidName(_) | InvalidConfig(_) | OutsideSubnet { .. } | AddressInUse { .. } => StatusCode::BAD_REQUEST,
            NoSubnet | Exhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
            Damaged { .. } | Host(_) | Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A running container on a network: its ID, name and endpoint.
type Member = (String, String, network::Endpoint);

/// The running containers on each network, by network ID.
fn attached(daemon: &Daemon) -> Result<HashMap<String, Vec<Member>>, ApiError> {
    let mut out: HashMap<String, Vec<_>> = HashMap::new();
    for record in daemon.containers.all()? {
        let dir = ContainerDir::new(&record.id);
        if !dir.is_running() {
            continue;
        }
        for endpoint in dir.spec().map(|s| s.network.endpoints).unwrap_or_default() {
            out.entry(endpoint.network_id.clone()).or_default().push((
                record.id.clone(),
                record.name.clone(),
                endpoint,
            ));
        }
    }
    Ok(out)
}

/// Docker's JSON for a network; `containers` lists the running ones.
fn network_json(record: &NetworkRecord, containers: Option<&[Member]>) -> Value {
    let mut ipam = json!({"Subnet": record.subnet.to_string(), "Gateway": record.gateway.to_string()});
    if let Some(range) = record.ip_range {
        ipam["IPRange"] = json!(range.to_string());
    }
    let attached: serde_json::Map<String, Value> = containers
        .unwrap_or_default()
        .iter()
        .map(|(id, name, endpoint)| {
            (
                id.clone(),
                json!({
                    "Name": name,
                    "EndpointID": format!("{:0<64}", &id[..id.len().min(32)]),
                    "MacAddress": endpoint.mac,
                    "IPv4Address": format!("{}/{}", endpoint.address, record.subnet.prefix_len()),
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    let mut options = serde_json::Map::new();
    options.insert("com.docker.network.bridge.name".into(), json!(record.bridge));
    if let Some(vxlan) = &record.vxlan {
        options.insert("com.docker.network.driver.mtu".into(), json!(record.mtu().to_string()));
        for (key, value) in vxlan.options() {
            options.insert(key.into(), json!(value));
        }
    }
    json!({
        "Name": record.name,
        "Id": record.id,
        "Created": record.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [ipam]},
        "Internal": record.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": attached,
        "Options": options,
        "Labels": record.labels,
    })
}

fn none_json() -> Value {
    json!({
        "Name": "none", "Id": NONE_ID, "Created": "0001-01-01T00:00:00Z", "Scope": "local",
        "Driver": "null", "EnableIPv4": false, "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": []},
        "Internal": false, "Attachable": false, "Ingress": false, "ConfigFrom": {"Network": ""},
        "ConfigOnly": false, "Containers": {}, "Options": {}, "Labels": {},
    })
}

/// Whether `record` passes Docker's network filters.
fn passes(
    filters: &HashMap<String, Vec<String>>,
    name: &str,
    id: &str,
    driver: &str,
    labels: &BTreeMap<String, String>,
    builtin: bool,
) -> bool {
    filters.iter().all(|(key, values)| match key.as_str() {
        "name" => values.iter().any(|v| name.contains(v.as_str())),
        "id" => values.iter().any(|v| id.starts_with(v.as_str())),
        "driver" => values.iter().any(|v| v == driver),
        "type" => values.iter().any(|v| (v == "builtin") == builtin),
        "label" => crate::api::labels_match(labels, values),
        _ => true,
    })
}

pub async fn list(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<crate::api::FiltersQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = crate::containers::parse_filters(query.filters.as_deref())?;
    blocking(move || {
        network::ensure_default()?;
        let attached = attached(&daemon)?;
        let mut rows = Vec::new();
        if passes(&filters, "none", NONE_ID, "null", &BTreeMap::new(), true) {
            rows.push(none_json());
        }
        for record in network::list()? {
            if passes(
                &filters,
                &record.name,
                &record.id,
                "bridge",
                &record.labels,
                record.is_default(),
            ) {
                rows.push(network_json(&record, attached.get(&record.id).map(Vec::as_slice)));
            }
        }
        Ok(Json(Value::Array(rows)))
    })
    .await
}

pub async fn inspect(
    State(daemon): State<Arc<Daemon>>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        if reference == "none" || reference == NONE_ID {
            return Ok(Json(none_json()));
        }
        if reference == network::DEFAULT_NETWORK {
            network::ensure_default()?;
        }
        let record = network::find(&reference)?;
        let attached = attached(&daemon)?;
        Ok(Json(network_json(&record, attached.get(&record.id).map(Vec::as_slice))))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    name: String,
    driver: String,
    internal: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<IpamBody>,
    labels: Option<BTreeMap<String, String>>,
    options: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamBody {
    driver: String,
    config: Option<Vec<IpamConfigBody>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfigBody {
    subnet: String,
    gateway: String,
    #[serde(rename = "IPRange")]
    ip_range: String,
}

fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<Option<T>, ApiError> {
    match text {
        "" => Ok(None),
        t => t
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid {what}: {t} (hull networks are IPv4)"))),
    }
}

/// A network create body as the runtime takes it, or what in it hull refuses.
pub fn parse_create(body: &[u8]) -> Result<network::NetworkRequest, ApiError> {
    let body: CreateBody =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid network config: {e}")))?;
    if !matches!(body.driver.as_str(), "" | "bridge") {
        return Err(ApiError::bad_request(format!(
            "network driver {} is not supported: hull networks are bridges",
            body.driver
        )));
    }
    if body.enable_ipv6 {
        return Err(ApiError::bad_request("IPv6 networks are not supported by hull yet"));
    }
    let options = body.options.unwrap_or_default();
    // hull's own options only: a network spanning hosts (`network::vxlan`).
    if let Some(option) = options.keys().find(|k| !network::vxlan::OPTIONS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "network option {option} is not supported by hull"
        )));
    }
    let vxlan = network::vxlan::Vxlan::from_options(&options).map_err(ApiError::bad_request)?;
    let ipam = body.ipam.unwrap_or_default();
    if !matches!(ipam.driver.as_str(), "" | "default") {
        return Err(ApiError::bad_request(format!(
            "IPAM driver {} is not supported",
            ipam.driver
        )));
    }
    let configs = ipam.config.unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::bad_request("hull networks have one IPv4 subnet"));
    }
    let config = configs.into_iter().next().unwrap_or_default();
    let subnet: Option<ipnet::Ipv4Net> = parse("subnet", &config.subnet)?;
    let gateway: Option<Ipv4Addr> = parse("gateway", &config.gateway)?;
    let ip_range: Option<ipnet::Ipv4Net> = parse("ip-range", &config.ip_range)?;
    if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
        return Err(ApiError::bad_request("a gateway or ip-range needs a --subnet"));
    }
    Ok(network::NetworkRequest {
        name: body.name,
        subnet,
        gateway,
        ip_range,
        internal: body.internal,
        labels: body.labels.unwrap_or_default(),
        vxlan,
    })
}

pub async fn create(body: axum::body::Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = parse_create(&body)?;
    let record = blocking(move || Ok(network::create(request)?)).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": record.id, "Warning": ""}))))
}

pub async fn remove(State(daemon): State<Arc<Daemon>>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    blocking(move || {
        if reference == "none" || reference == NONE_ID {
            return Err(NetworkError::Predefined("none".into()).into());
        }
        let record = network::find(&reference)?;
        network::remove(&record)?;
        daemon.dns.stop(&record.id);
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

/// Removes every user-defined network no container uses.
pub async fn prune(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<crate::api::FiltersQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = crate::containers::parse_filters(query.filters.as_deref())?;
    blocking(move || {
        let mut used = std::collections::HashSet::new();
        for record in daemon.containers.all()? {
            if let Ok(spec) = ContainerDir::new(&record.id).spec() {
                used.extend(spec.network.endpoints.into_iter().map(|e| e.network_id));
            }
        }
        let mut deleted = Vec::new();
        for record in network::list()? {
            let wanted = filters.get("label").map_or(&[][..], Vec::as_slice);
            if record.is_default() || used.contains(&record.id) || !crate::api::labels_match(&record.labels, wanted) {
                continue;
            }
            match network::remove(&record) {
                Ok(()) => {
                    daemon.dns.stop(&record.id);
                    deleted.push(record.name)
                }
                Err(NetworkError::HasEndpoints { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Json(json!({ "NetworksDeleted": deleted })))
    })
    .await
}
