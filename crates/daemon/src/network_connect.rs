//! `docker network connect` and `disconnect`, of stopped and running
//! containers. A container's VM has a NIC slot per network it can be on
//! (`network::MAX_NETWORKS_PER_CONTAINER`); joining a network while it runs
//! plugs a new tap into a free slot through the VMM's control channel and
//! has the agent set the guest's NIC, /etc/hosts and /etc/resolv.conf.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use proto::Control;
use runtime::container::{ContainerDir, ContainerSpec};
use runtime::network::{self, attach, ContainerNetwork, Endpoint, NetworkRecord};

use crate::api::ApiError;
use crate::daemon::Daemon;
use crate::networking::{endpoint_on, too_many_networks, ConnectBody};
use crate::store::ContainerRecord;

/// `POST /networks/{id}/connect`.
pub async fn connect(
    State(daemon): State<Arc<Daemon>>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = ConnectBody::parse(&body)?;
    crate::api::blocking(move || {
        let (record, container, dir, spec) = parties(&daemon, &reference, &body.container)?;
        if spec.joins.is_some() {
            return Err(ApiError::bad_request(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        if spec.network.on(&record.id).is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "endpoint with name {} already exists in network {}",
                    container.name, record.name
                ),
            ));
        }
        let slot = spec
            .network
            .free_slot()
            .ok_or_else(|| too_many_networks(spec.network.endpoints.len() + 1))?;
        let endpoint = endpoint_on(&container.id, &record, &body.endpoint, slot)?;
        let was_none = spec.network.endpoints.is_empty();
        let joined = endpoint.clone();
        let spec = match dir.update_spec(|s| s.network.endpoints.push(joined)) {
            Ok(spec) => spec,
            Err(e) => {
                network::release(&record.id, endpoint.address, &container.id);
                return Err(e.into());
            }
        };
        if dir.is_running() {
            if let Err(e) = join_live(&dir, &spec, &endpoint, &record) {
                let _ = forget(&dir, &endpoint);
                return Err(e);
            }
        }
        if was_none {
            daemon
                .containers
                .modify(&container.id, |r| r.host_config.network_mode = record.name.clone())?;
        }
        network_event(&daemon, "connect", &record, &container.id);
        Ok(crate::api::empty(StatusCode::OK))
    })
    .await
}

/// The network and the container a connect or disconnect names, the
/// container's directory and spec; a paused container is refused (its
/// guest cannot answer for its side of the change).
fn parties(
    daemon: &Daemon,
    network_ref: &str,
    container_ref: &str,
) -> Result<(NetworkRecord, ContainerRecord, ContainerDir, ContainerSpec), ApiError> {
    let record = match network_ref {
        network::DEFAULT_NETWORK => network::ensure_default()?,
        other => network::find(other)?,
    };
    let container = daemon.containers.find(container_ref)?;
    let dir = ContainerDir::new(&container.id);
    refuse_if_paused(&dir, &container.name)?;
    let spec = dir.spec()?;
    Ok((record, container, dir, spec))
}

/// Takes `endpoint` out of the container's spec and gives its address back.
fn forget(dir: &ContainerDir, endpoint: &Endpoint) -> Result<(), ApiError> {
    dir.update_spec(|s| s.network.endpoints.retain(|e| e.network_id != endpoint.network_id))?;
    network::release(&endpoint.network_id, endpoint.address, &dir.id);
    Ok(())
}

/// A paused VM cannot answer for its guest's side of a change.
fn refuse_if_paused(dir: &ContainerDir, name: &str) -> Result<(), ApiError> {
    match dir.state()? {
        Some(state) if state.paused => Err(ApiError::conflict(format!(
            "container {name} is paused: unpause it to change its networks"
        ))),
        _ => Ok(()),
    }
}

/// Plugs a running container's VM into one more network; on failure the
/// NIC is unplugged again (the caller forgets the endpoint).
fn join_live(
    dir: &ContainerDir,
    spec: &ContainerSpec,
    endpoint: &Endpoint,
    record: &NetworkRecord,
) -> Result<(), ApiError> {
    let failed =
        |what: &str, e: String| ApiError::internal(format!("connecting to network {}: {what}: {e}", record.name));
    let tap = attach::join(&dir.id, endpoint, &spec.network).map_err(|e| failed("the host side", e))?;
    dir.plug_nic(endpoint.slot, Some(&tap))
        .map_err(|e| failed("the VM's NIC", e.to_string()))?;
    // The VMM holds the tap now: it goes away with the VM or an unplug.
    drop(tap);
    if let Err(e) = tell_guest(dir, spec) {
        let _ = dir.plug_nic(endpoint.slot, None);
        let _ = attach::leave(&dir.id, endpoint, &spec.network);
        return Err(failed("the guest", e.message));
    }
    Ok(())
}

/// Has the agent set the guest's network to what `spec` says.
fn tell_guest(dir: &ContainerDir, spec: &ContainerSpec) -> Result<(), ApiError> {
    let guest = network::guest_network(&spec.network, &spec.hostname)?.unwrap_or_default();
    match crate::monitor::ask_agent(dir, Control::Network(guest))? {
        Control::Exited { code: Some(0), .. } => Ok(()),
        other => Err(ApiError::internal(format!("the agent answered {other:?}"))),
    }
}

/// `POST /networks/{id}/disconnect`.
pub async fn disconnect(
    State(daemon): State<Arc<Daemon>>,
    Path(reference): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = ConnectBody::parse(&body)?;
    crate::api::blocking(move || {
        let (record, container, dir, spec) = parties(&daemon, &reference, &body.container)?;
        let Some(endpoint) = spec.network.on(&record.id).cloned() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "container {} is not connected to network {}",
                    container.name, record.name
                ),
            ));
        };
        if dir.is_running() {
            leave_live(&dir, &spec, &endpoint, &record, &container.name)?;
        }
        forget(&dir, &endpoint)?;
        network_event(&daemon, "disconnect", &record, &container.id);
        Ok(crate::api::empty(StatusCode::OK))
    })
    .await
}

/// Takes a running container's VM off one network: the guest lets go of
/// the NIC first, then the VMM unplugs it (its tap goes) and the host
/// drops the NIC's policy.
fn leave_live(
    dir: &ContainerDir,
    spec: &ContainerSpec,
    endpoint: &Endpoint,
    record: &NetworkRecord,
    name: &str,
) -> Result<(), ApiError> {
    if spec.network.primary() == Some(endpoint) && !spec.network.ports.is_empty() {
        return Err(ApiError::conflict(format!(
            "container {name} publishes its ports through network {}: stop it to disconnect it from that network",
            record.name
        )));
    }
    let remaining = ContainerSpec {
        network: ContainerNetwork {
            endpoints: spec
                .network
                .endpoints
                .iter()
                .filter(|e| e.network_id != record.id)
                .cloned()
                .collect(),
            ..spec.network.clone()
        },
        ..spec.clone()
    };
    tell_guest(dir, &remaining)?;
    let failed = |e: String| ApiError::internal(format!("disconnecting from network {}: {e}", record.name));
    dir.plug_nic(endpoint.slot, None).map_err(|e| failed(e.to_string()))?;
    attach::leave(&dir.id, endpoint, &spec.network).map_err(failed)
}

/// Docker's network event: the network is the actor, the container an attribute.
fn network_event(daemon: &Daemon, action: &str, record: &NetworkRecord, container: &str) {
    let attributes = [
        ("container", container),
        ("name", record.name.as_str()),
        ("type", "bridge"),
    ];
    daemon.events_log.emit("network", action, &record.id, &attributes);
}
