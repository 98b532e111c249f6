//! Docker's legacy links (`--link NAME[:ALIAS]`): at create, the linked
//! container's address goes into the new container's `/etc/hosts` (under
//! the alias, its hostname and its name) and, on the default bridge, its
//! ports and environment into the new container's environment
//! (`ALIAS_PORT_80_TCP=tcp://IP:80`, `ALIAS_NAME`, `ALIAS_ENV_KEY`), as
//! dockerd writes them. On a user-defined network a link is only a name,
//! as there. `DELETE /containers/PARENT/ALIAS?link=1` (`docker rm --link`)
//! removes a link from the parent's record. Addresses are leased at
//! create, so what a link says stays true while both containers exist;
//! each start checks that the linked containers still exist, run, and
//! have the address this one was given for them.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use runtime::container::ContainerDir;
use runtime::network::ContainerNetwork;
use serde_json::Value;

use crate::api::{blocking, empty, flag, ApiError};
use crate::daemon::Daemon;

/// One `--link`: the container linked to and the name it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub container: String,
    pub alias: String,
}

/// `HostConfig.Links` as a client sends them (`db`, `db:alias`) or as
/// inspect shows them (`/db:/web/alias`).
pub fn parse(entries: &[String]) -> Result<Vec<Link>, ApiError> {
    entries
        .iter()
        .map(|entry| {
            let (container, alias) = entry.split_once(':').unwrap_or((entry, entry));
            let container = container.trim_start_matches('/');
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            if container.is_empty() || alias.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "invalid link {entry:?}: expected NAME or NAME:ALIAS"
                )));
            }
            Ok(Link {
                container: container.to_string(),
                alias: alias.to_string(),
            })
        })
        .collect()
}

/// What a container's links give it.
#[derive(Debug, Default)]
pub struct Resolved {
    pub hosts: Vec<proto::HostEntry>,
    /// Before the container's own environment (its own entries win).
    pub env: Vec<String>,
    /// `HostConfig.Links` as inspect shows them.
    pub stored: Vec<String>,
}

/// The links of a container named `parent`, networked as `network`.
pub fn resolve(
    daemon: &Daemon,
    links: &[Link],
    parent: &str,
    network: &ContainerNetwork,
) -> Result<Resolved, ApiError> {
    let mut resolved = Resolved::default();
    if links.is_empty() {
        return Ok(resolved);
    }
    let Some(primary) = network.endpoints.first() else {
        return Err(ApiError::bad_request(
            "conflicting options: --network=none can't be used with links",
        ));
    };
    let primary_record = runtime::network::load(&primary.network_id).map_err(ApiError::internal)?;
    let on_default = primary_record.name == runtime::network::DEFAULT_NETWORK;
    for link in links {
        let child = daemon.containers.find(&link.container).map_err(|_| {
            ApiError::not_found(format!(
                "could not get container for {0}: No such container: {0}",
                link.container
            ))
        })?;
        let child_network = ContainerDir::new(&child.id).spec()?.network;
        let Some(address) = child_network
            .endpoints
            .iter()
            .find(|e| e.network_id == primary.network_id)
            .map(|e| e.address)
        else {
            return Err(ApiError::bad_request(format!(
                "Cannot link to /{}, as it does not belong to the network {}",
                child.name, primary_record.name
            )));
        };
        let hostname = child.config.hostname.as_str();
        let mut names = vec![link.alias.clone()];
        for name in [hostname, child.name.as_str()] {
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        resolved.hosts.push(proto::HostEntry {
            address: address.to_string(),
            names,
        });
        if on_default {
            let ports = exposed_ports(daemon, &child);
            resolved.env.extend(environment(
                &link.alias,
                &format!("/{parent}/{}", link.alias),
                &address.to_string(),
                &ports,
                &child.process_env,
            ));
        }
        resolved
            .stored
            .push(format!("/{}:/{parent}/{}", child.name, link.alias));
    }
    Ok(resolved)
}

/// The ports a container exposes (its image's and its own), as
/// (number, protocol), lowest first.
fn exposed_ports(daemon: &Daemon, child: &crate::store::ContainerRecord) -> Vec<(u16, String)> {
    let mut keys: Vec<String> = child
        .config
        .exposed_ports
        .as_ref()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let image_config = image::digest::Digest::parse(&child.image_id)
        .ok()
        .and_then(|id| daemon.images.run_config(&id).ok());
    if let Some(Value::Object(ports)) = image_config.as_ref().and_then(|c| c.get("ExposedPorts")) {
        keys.extend(ports.keys().cloned());
    }
    let mut ports: Vec<(u16, String)> = keys
        .iter()
        .filter_map(|key| {
            let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
            Some((port.parse().ok()?, protocol.to_ascii_lowercase()))
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// dockerd's link variables for a container at `address` known as `alias`.
fn environment(alias: &str, name: &str, address: &str, ports: &[(u16, String)], child_env: &[String]) -> Vec<String> {
    let prefix = alias.to_ascii_uppercase().replace('-', "_");
    let mut env = Vec::new();
    if let Some((port, protocol)) = ports.first() {
        env.push(format!("{prefix}_PORT={protocol}://{address}:{port}"));
    }
    for (port, protocol) in ports {
        let key = format!("{prefix}_PORT_{port}_{}", protocol.to_ascii_uppercase());
        env.push(format!("{key}={protocol}://{address}:{port}"));
        env.push(format!("{key}_ADDR={address}"));
        env.push(format!("{key}_PORT={port}"));
        env.push(format!("{key}_PROTO={protocol}"));
    }
    env.push(format!("{prefix}_NAME={name}"));
    for entry in child_env {
        if let Some((key, value)) = entry.split_once('=') {
            if key != "HOME" && key != "PATH" {
                env.push(format!("{prefix}_ENV_{key}={value}"));
            }
        }
    }
    env
}

/// Before each start, as dockerd checks: every container linked to still
/// exists and runs, at the address this container's `/etc/hosts` has for
/// it (hull writes links at create; a container made anew under the old
/// name has another address, and this container must be made anew too).
pub fn check_at_start(
    daemon: &Daemon,
    record: &crate::store::ContainerRecord,
    network: &ContainerNetwork,
) -> Result<(), ApiError> {
    let stored = record.host_config.links();
    for link in parse(&stored)? {
        let child = daemon
            .containers
            .find(&link.container)
            .map_err(|_| ApiError::conflict(format!("Cannot link to /{}, as it does not exist", link.container)))?;
        let running = ContainerDir::new(&child.id)
            .state()?
            .is_some_and(|s| s.status == runtime::container::RunStatus::Running);
        if !running {
            return Err(ApiError::conflict(format!(
                "Cannot link to a non running container: /{} AS /{}/{}",
                child.name, record.name, link.alias
            )));
        }
        let recorded = network
            .extra_hosts
            .iter()
            .find(|h| h.names.first() == Some(&link.alias))
            .map(|h| h.address.clone());
        let current = ContainerDir::new(&child.id)
            .spec()?
            .network
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect::<Vec<_>>();
        if let Some(recorded) = recorded {
            if !current.contains(&recorded) {
                return Err(ApiError::conflict(format!(
                    "/{} is linked to /{} at {recorded}, which that container no longer has: it was made anew; remove and create /{} again",
                    record.name, child.name, record.name
                )));
            }
        }
    }
    Ok(())
}

#[derive(Debug, serde::Deserialize)]
pub struct LinkQuery {
    link: Option<String>,
}

/// `DELETE /containers/PARENT/ALIAS?link=1`: `docker rm --link`.
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path((parent, alias)): Path<(String, String)>,
    Query(query): Query<LinkQuery>,
) -> Result<Response, ApiError> {
    if !flag(&query.link) {
        return Err(ApiError::not_found(format!("No such container: {parent}/{alias}")));
    }
    blocking(move || {
        let record = daemon.containers.find(&parent)?;
        let links = record.host_config.links();
        let suffix = format!(":/{}/{alias}", record.name);
        if !links.iter().any(|l| l.ends_with(&suffix)) {
            return Err(ApiError::not_found(format!(
                "Could not find container for entity id /{}/{alias}",
                record.name
            )));
        }
        daemon.containers.modify(&record.id, |r| {
            let kept: Vec<String> = links.iter().filter(|l| !l.ends_with(&suffix)).cloned().collect();
            r.host_config.links = (!kept.is_empty()).then_some(kept);
        })?;
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_as_clients_and_inspect_write_them() {
        let got = parse(&["db".into(), "cache:kv".into(), "/web:/app/front".into()]).unwrap();
        let pairs: Vec<(&str, &str)> = got.iter().map(|l| (l.container.as_str(), l.alias.as_str())).collect();
        assert_eq!(pairs, [("db", "db"), ("cache", "kv"), ("web", "front")]);
        assert!(parse(&[":x".into()]).is_err());
        assert!(parse(&["db:".into()]).is_err());
    }

    #[test]
    fn the_environment_is_dockerds() {
        let env = environment(
            "my-db",
            "/web/my-db",
            "172.17.0.2",
            &[(5432, "tcp".into()), (9000, "udp".into())],
            &["PATH=/bin".into(), "POSTGRES_DB=app".into(), "HOME=/root".into()],
        );
        assert_eq!(
            env,
            [
                "MY_DB_PORT=tcp://172.17.0.2:5432",
                "MY_DB_PORT_5432_TCP=tcp://172.17.0.2:5432",
                "MY_DB_PORT_5432_TCP_ADDR=172.17.0.2",
                "MY_DB_PORT_5432_TCP_PORT=5432",
                "MY_DB_PORT_5432_TCP_PROTO=tcp",
                "MY_DB_PORT_9000_UDP=udp://172.17.0.2:9000",
                "MY_DB_PORT_9000_UDP_ADDR=172.17.0.2",
                "MY_DB_PORT_9000_UDP_PORT=9000",
                "MY_DB_PORT_9000_UDP_PROTO=udp",
                "MY_DB_NAME=/web/my-db",
                "MY_DB_ENV_POSTGRES_DB=app",
            ]
        );
    }
}
