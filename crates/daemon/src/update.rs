//! `POST /containers/{id}/update` (`docker update`): the restart policy,
//! and the VM's resources. A running container's CPU time changes at once
//! (its jailed VMM's `cpu.max`); what a running VM cannot take — more vCPUs
//! than it has, another memory size, a pids limit, which the agent sets when
//! the command starts — is kept for its next start, and the answer's
//! `Warnings` say so.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use runtime::container::ContainerDir;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, ApiError};
use crate::create::{check_restart_policy, vm_resources, RestartPolicy};
use crate::daemon::Daemon;

/// What `docker update` sends; zero (or absent) leaves a value as it is.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateBody {
    restart_policy: Option<RestartPolicy>,
    memory: i64,
    nano_cpus: i64,
    pids_limit: Option<i64>,
}

/// The changes asked for, checked.
#[derive(Debug, Default, PartialEq)]
pub struct Update {
    restart_policy: Option<(String, i64)>,
    memory_mib: Option<u64>,
    /// Thousandths of a CPU, and the vCPUs that takes.
    cpu: Option<(u32, u8)>,
    /// `Some(None)`: no limit any more.
    pids_limit: Option<Option<u64>>,
}

impl Update {
    /// A `docker update` body, checked (before any state is touched).
    pub fn parse(body: &[u8]) -> Result<Update, ApiError> {
        let body: UpdateBody = match body.iter().all(u8::is_ascii_whitespace) {
            true => UpdateBody::default(),
            false => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid update config: {e}")))?,
        };
        let restart_policy = match body.restart_policy.filter(|p| !p.name.is_empty()) {
            Some(policy) => {
                check_restart_policy(&policy.name, policy.maximum_retry_count)?;
                Some((policy.name, policy.maximum_retry_count))
            }
            None => None,
        };
        let (memory_mib, cpu) = vm_resources(body.memory, body.nano_cpus)?;
        let pids_limit = body.pids_limit.map(|n| u64::try_from(n).ok().filter(|&n| n > 0));
        Ok(Update {
            restart_policy,
            memory_mib,
            cpu,
            pids_limit,
        })
    }
}

pub async fn update(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let update = Update::parse(&body)?;
    blocking(move || {
        let record = daemon.containers.find(&id)?;
        if update.restart_policy.as_ref().is_some_and(|(name, _)| name != "no") && crate::daemon::auto_remove(&record) {
            return Err(ApiError::bad_request(
                "Restart policy cannot be updated because AutoRemove is enabled for the container",
            ));
        }
        if update.cpu.is_some() || update.memory_mib.is_some() || update.pids_limit.is_some() {
            crate::containers::needs_own_vm(&record.id, "changing CPU, memory or pids limits")?;
        }
        let dir = ContainerDir::new(&record.id);
        let spec = dir.spec()?;
        let memory_mib = update.memory_mib.unwrap_or(spec.memory_mib);
        let (cpu_millis, vcpus) = match update.cpu {
            Some((millis, vcpus)) => (Some(millis), vcpus),
            None => (spec.cpu_limit_millis, spec.cpus),
        };
        vmm::vm::validate_shape(memory_mib, vcpus).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut warnings = Vec::new();
        if dir.is_running() {
            if let Some((millis, wanted)) = update.cpu {
                // What the running VM's vCPUs can take applies now.
                let now = millis.min(u32::from(spec.cpus) * 1000);
                dir.set_cpu_limit(Some(now))?;
                if wanted > spec.cpus {
                    warnings.push(format!(
                        "the running VM has {} vCPU(s): {} CPUs apply from its next start",
                        spec.cpus,
                        f64::from(millis) / 1000.0
                    ));
                }
            }
            if update.memory_mib.is_some_and(|m| m != spec.memory_mib) {
                warnings.push(format!(
                    "the running VM has {} MiB of memory: {memory_mib} MiB apply from its next start",
                    spec.memory_mib
                ));
            }
            if update.pids_limit.is_some() {
                warnings.push("the pids limit applies from the container's next start".into());
            }
        }
        dir.update_spec(|spec| {
            spec.memory_mib = memory_mib;
            spec.cpus = vcpus;
            spec.cpu_limit_millis = cpu_millis;
            if let Some(limit) = update.pids_limit {
                spec.pids_limit = limit;
            }
        })?;
        let updated = daemon.containers.modify(&record.id, |record| {
            let host = &mut record.host_config;
            if let Some((name, max)) = &update.restart_policy {
                host.restart_policy = RestartPolicy {
                    name: name.clone(),
                    maximum_retry_count: *max,
                };
            }
            if let Some(memory) = update.memory_mib {
                host.memory = i64::try_from(memory << 20).unwrap_or(i64::MAX);
            }
            if let Some((millis, _)) = update.cpu {
                host.nano_cpus = i64::from(millis) * 1_000_000;
            }
            if let Some(limit) = update.pids_limit {
                host.pids_limit = Some(limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)));
            }
        })?;
        daemon.container_event_of(&updated, "update", &[]);
        Ok(Json(json!({ "Warnings": warnings })))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_change_nothing_and_bad_values_get_docker_errors() {
        assert_eq!(Update::parse(b"").unwrap(), Update::default());
        let cli = br#"{"Memory":0,"NanoCpus":0,"RestartPolicy":{"Name":"","MaximumRetryCount":0}}"#;
        assert_eq!(Update::parse(cli).unwrap(), Update::default());
        let all = Update::parse(
            br#"{"Memory":536870912,"NanoCpus":1500000000,"PidsLimit":-1,"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3}}"#,
        )
        .unwrap();
        assert_eq!(all.memory_mib, Some(512));
        assert_eq!(all.cpu, Some((1500, 2)));
        assert_eq!(all.pids_limit, Some(None));
        assert_eq!(all.restart_policy, Some(("on-failure".into(), 3)));
        for (body, message) in [
            (
                &br#"{"RestartPolicy":{"Name":"sometimes"}}"#[..],
                "invalid restart policy 'sometimes'",
            ),
            (
                br#"{"RestartPolicy":{"Name":"always","MaximumRetryCount":2}}"#,
                "only be used with 'on-failure'",
            ),
            (br#"{"NanoCpus":5}"#, "Range of CPUs"),
            (br#"{"Memory":-1}"#, "cannot be negative"),
            (br#"{"Memory":"lots"}"#, "invalid update config"),
        ] {
            let e = Update::parse(body).unwrap_err();
            assert!(e.message.contains(message), "{}", e.message);
        }
    }
}
