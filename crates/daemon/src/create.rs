//! The container create request (`POST /containers/create`), parsed and
//! checked before anything is looked up, leased or made: every refusal a
//! client can cause with its body happens here, with Docker's wording.

use std::collections::HashMap;

use image::config::Overrides;
use serde::Deserialize;
use serde_json::Value;

use crate::api::ApiError;
use crate::networking::{EndpointBody, NetworkIntent, NetworkRequest};

/// A VM's size when the client names none.
pub const DEFAULT_MEMORY_MIB: u64 = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    image: String,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: String,
    user: String,
    hostname: String,
    labels: Option<HashMap<String, String>>,
    tty: bool,
    open_stdin: bool,
    // Only checked here: hulld reads them from the record (`docker_config`).
    #[serde(rename = "StdinOnce")]
    _stdin_once: bool,
    #[serde(rename = "StopSignal")]
    _stop_signal: Option<String>,
    #[serde(rename = "StopTimeout")]
    _stop_timeout: Option<i64>,
    exposed_ports: Option<std::collections::BTreeMap<String, Value>>,
    mac_address: String,
    volumes: Option<HashMap<String, Value>>,
    host_config: HostConfigBody,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfigBody {
    memory: i64,
    nano_cpus: i64,
    /// Docker's `--pids-limit`: 0, -1 or absent is no limit.
    pids_limit: Option<i64>,
    auto_remove: bool,
    restart_policy: RestartPolicy,
    binds: Option<Vec<String>>,
    mounts: Option<Vec<crate::docker_config::Mount>>,
    privileged: bool,
    /// The client terminal's `[height, width]` (with `Tty`).
    console_size: Option<Vec<u64>>,
    log_config: LogConfigBody,
    /// `--group-add`.
    group_add: Option<Vec<String>>,
    /// `--link NAME[:ALIAS]`.
    links: Option<Vec<String>>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    /// `--pid`: "" (its own namespace) or "host" (the VM's).
    pid_mode: String,
    /// `--init`; `null` is the daemon's default (no init, as dockerd's).
    init: Option<bool>,
}

/// `--log-driver` and `--log-opt`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct LogConfigBody {
    #[serde(rename = "Type")]
    driver: Option<String>,
    config: Option<std::collections::BTreeMap<String, String>>,
}

pub use crate::docker_config::RestartPolicy;

/// `HostConfig.PidMode`: whether the command shares the VM's namespace.
/// Another container's namespace is in another VM, out of reach.
fn pid_mode(mode: &str) -> Result<bool, ApiError> {
    match mode {
        "" | "private" => Ok(false),
        "host" => Ok(true),
        _ if mode.starts_with("container:") => Err(ApiError::bad_request(format!(
            "--pid {mode} is not supported: each container runs in its own VM, so one cannot join another's PID namespace"
        ))),
        _ => Err(ApiError::bad_request(format!("invalid --pid: {mode:?}"))),
    }
}

/// A create request, checked. `raw` is the body as sent, which the record
/// keeps (inspect shows it back).
#[derive(Debug)]
pub struct CreateRequest {
    pub raw: Value,
    pub image: String,
    /// The name asked for, checked and without a leading `/`.
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub memory_mib: u64,
    pub cpus: u8,
    /// Docker's `--cpus` as a share of CPU time, for the jail's cgroup.
    pub cpu_limit_millis: Option<u32>,
    pub pids_limit: Option<u64>,
    pub overrides: Overrides,
    /// Whether the body set `Env` (else the image's environment is shown).
    pub env_given: bool,
    pub labels: HashMap<String, String>,
    pub tty: Option<proto::TerminalSize>,
    pub open_stdin: bool,
    pub binds: Vec<String>,
    pub mounts: Vec<crate::docker_config::Mount>,
    /// `-v /path`: anonymous volumes.
    pub anonymous_volumes: Vec<String>,
    pub network: NetworkIntent,
    pub links: Vec<crate::links::Link>,
    pub log: runtime::log_config::LogConfig,
    /// What the container's processes keep (`--cap-add`, `--cap-drop`).
    pub capabilities: Vec<String>,
    /// `--pid host`: the command shares the VM's PID namespace.
    pub pid_host: bool,
    /// `--init`.
    pub init: bool,
}

impl CreateRequest {
    /// `body` as sent, and the `name` query parameter.
    pub fn parse(body: &[u8], name: Option<String>) -> Result<CreateRequest, ApiError> {
        let raw: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        let body: CreateBody = serde_json::from_value(raw.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid container config: {e}")))?;
        if body.image.is_empty() {
            return Err(ApiError::bad_request(
                "no image given: the container config needs an Image",
            ));
        }
        let host = &body.host_config;
        if host.privileged {
            return Err(ApiError::bad_request(
                "--privileged is not supported: every container is its own VM",
            ));
        }
        check_restart_policy(&host.restart_policy.name, host.restart_policy.maximum_retry_count)?;
        if host.auto_remove && !matches!(host.restart_policy.name.as_str(), "" | "no") {
            return Err(ApiError::bad_request(
                "can't create 'AutoRemove' container with restart policy",
            ));
        }
        let (memory_mib, cpu) = vm_resources(host.memory, host.nano_cpus)?;
        let memory_mib = memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        let cpus = cpu.map_or(1, |(_, vcpus)| vcpus);
        vmm::vm::validate_shape(memory_mib, cpus).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let name = match name.filter(|n| !n.is_empty()) {
            Some(name) => {
                let name = name.strip_prefix('/').unwrap_or(&name).to_string();
                if !valid_name(&name) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                Some(name)
            }
            None => None,
        };
        let labels = body.labels.clone().unwrap_or_default();
        let exposed: Vec<String> = body.exposed_ports.iter().flat_map(|p| p.keys().cloned()).collect();
        let network = network_intent(&raw, &body.mac_address, &exposed, &labels)?;
        // `--entrypoint ""` arrives as [""]: no entrypoint at all.
        let overrides = Overrides {
            entrypoint: body
                .entrypoint
                .map(|e| e.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()),
            cmd: body.cmd.unwrap_or_default(),
            env: body.env.clone().unwrap_or_default(),
            workdir: Some(body.working_dir).filter(|w| !w.is_empty()),
            user: Some(body.user).filter(|u| !u.is_empty()),
            group_add: body.host_config.group_add.clone().unwrap_or_default(),
        };
        if let Some(bad) = overrides.group_add.iter().find(|g| g.is_empty() || g.contains(':')) {
            return Err(ApiError::bad_request(format!("invalid group in --group-add: {bad:?}")));
        }
        let host = body.host_config;
        let pid_host = pid_mode(&host.pid_mode)?;
        let mut cap_drop = host.cap_drop.clone().unwrap_or_default();
        // In another container's VM, a device node made would reach that
        // VM's disks, which hold the other container's files: not without
        // an explicit --cap-add (one both added and dropped is kept).
        if network.joins().is_some() {
            cap_drop.push("MKNOD".into());
        }
        let capabilities = proto::capabilities::resolve(host.cap_add.as_deref().unwrap_or_default(), &cap_drop)
            .map_err(ApiError::bad_request)?;
        let log = runtime::log_config::LogConfig::parse(
            host.log_config.driver.as_deref().unwrap_or(""),
            &host.log_config.config.clone().unwrap_or_default(),
        )
        .map_err(ApiError::bad_request)?;
        Ok(CreateRequest {
            // `"Env": null` reads as not given.
            env_given: body.env.is_some(),
            image: body.image,
            name,
            hostname: Some(body.hostname).filter(|h| !h.is_empty()),
            memory_mib,
            cpus,
            // Docker's --cpus is a share of CPU time: whole vCPUs, capped by the jail's cgroup.
            cpu_limit_millis: cpu.map(|(millis, _)| millis),
            pids_limit: host.pids_limit.and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0),
            overrides,
            labels,
            tty: body.tty.then(|| console_size(host.console_size.as_deref())),
            open_stdin: body.open_stdin,
            binds: host.binds.unwrap_or_default(),
            mounts: host.mounts.unwrap_or_default(),
            anonymous_volumes: body.volumes.map(|v| v.into_keys().collect()).unwrap_or_default(),
            network,
            links: crate::links::parse(&host.links.unwrap_or_default())?,
            log,
            capabilities,
            pid_host,
            init: host.init.unwrap_or(false),
            raw,
        })
    }
}

/// The networking fields of a create body: HostConfig's, the
/// `NetworkingConfig`, `MacAddress` and `ExposedPorts`.
fn network_intent(
    raw: &Value,
    mac: &str,
    exposed: &[String],
    labels: &HashMap<String, String>,
) -> Result<NetworkIntent, ApiError> {
    let request: NetworkRequest = raw
        .get("HostConfig")
        .filter(|h| h.is_object())
        .map(|h| serde_json::from_value(h.clone()))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid HostConfig: {e}")))?
        .unwrap_or_default();
    let endpoints: HashMap<String, EndpointBody> = raw
        .pointer("/NetworkingConfig/EndpointsConfig")
        .filter(|e| e.is_object())
        .map(|e| serde_json::from_value(e.clone()))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid NetworkingConfig: {e}")))?
        .unwrap_or_default();
    NetworkIntent::parse(&request, &endpoints, mac, exposed, labels)
}

/// Thousandths of a CPU, and the whole vCPUs they take.
pub type CpuShare = (u32, u8);

/// Docker's `Memory` (bytes) and `NanoCpus` as a VM's resources, checked
/// (create and update alike; 0 is "not given"): MiB, and the share of CPU
/// time in thousandths with the whole vCPUs it takes.
pub fn vm_resources(memory: i64, nano_cpus: i64) -> Result<(Option<u64>, Option<CpuShare>), ApiError> {
    if memory < 0 || nano_cpus < 0 {
        return Err(ApiError::bad_request("memory and CPU limits cannot be negative"));
    }
    let memory_mib = (memory > 0).then(|| (memory as u64).div_ceil(1 << 20));
    let cpu = match nano_cpus {
        0 => None,
        nano if nano < 10_000_000 => {
            return Err(ApiError::bad_request(
                "Range of CPUs is from 0.01 to 255.00: a VM gets at least 1% of a CPU",
            ))
        }
        nano => {
            let vcpus = u8::try_from((nano as u64).div_ceil(1_000_000_000))
                .map_err(|_| ApiError::bad_request("too many CPUs: a VM has at most 255"))?;
            // At most 255,000: the vCPU check above bounds it.
            Some(((nano / 1_000_000) as u32, vcpus))
        }
    };
    Ok((memory_mib, cpu))
}

/// A restart policy as Docker checks it (create and update alike).
pub fn check_restart_policy(name: &str, maximum_retry_count: i64) -> Result<(), ApiError> {
    if !matches!(name, "" | "no" | "always" | "unless-stopped" | "on-failure") {
        return Err(ApiError::bad_request(format!("invalid restart policy '{name}'")));
    }
    if maximum_retry_count < 0 {
        return Err(ApiError::bad_request(
            "invalid restart policy: maximum retry count cannot be negative",
        ));
    }
    if maximum_retry_count != 0 && name != "on-failure" {
        return Err(ApiError::bad_request(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'",
        ));
    }
    Ok(())
}

/// Docker's rule for container names: the same as for volume names.
pub fn valid_name(name: &str) -> bool {
    runtime::volume::valid_name(name)
}

/// A terminal size from the client's `ConsoleSize` (`[height, width]`;
/// missing: unknown, 0 × 0).
pub fn console_size(size: Option<&[u64]>) -> proto::TerminalSize {
    let dimension = |i: usize| {
        size.and_then(|s| s.get(i))
            .map_or(0, |&n| n.min(u64::from(u16::MAX)) as u16)
    };
    proto::TerminalSize {
        rows: dimension(0),
        cols: dimension(1),
    }
}
