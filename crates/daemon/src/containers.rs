//! The container endpoints: create, list, inspect, start, stop, restart,
//! kill, wait, pause, unpause, rename, resize, remove. Each container is a microVM run by
//! its own supervisor; its Docker configuration lives in the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use runtime::container::{ContainerDir, ContainerSpec, RunState, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, empty, flag, ApiError};
use crate::create::{valid_name, CreateRequest};
use crate::daemon::Daemon;
use crate::docker_config::{Config, HostConfig};
use crate::store::{ContainerRecord, StoreError};

/// How long `stop` waits after SIGTERM by default, and after SIGKILL.
const DEFAULT_STOP_SECONDS: u64 = 10;
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub struct NameQuery {
    name: Option<String>,
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    hex::encode(buf)
}

/// A name like Docker's (`adjective_noun`), for containers created without one.
fn generated_name(taken: &dyn Fn(&str) -> bool) -> String {
    const LEFT: &[&str] = &[
        "agile", "bold", "brave", "calm", "clever", "eager", "fair", "gentle", "happy", "keen", "lucid", "merry",
        "nimble", "proud", "quick", "quiet", "sharp", "steady", "swift", "tidy", "vivid", "wise", "witty", "zen",
    ];
    const RIGHT: &[&str] = &[
        "babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "hypatia", "kepler", "lamport", "lovelace",
        "noether", "pascal", "ritchie", "shannon", "thompson", "torvalds", "turing", "wozniak",
    ];
    loop {
        let r = random_hex(4);
        let n = u32::from_str_radix(&r, 16).unwrap_or(0) as usize;
        let name = format!("{}_{}", LEFT[n % LEFT.len()], RIGHT[(n / LEFT.len()) % RIGHT.len()]);
        if !taken(&name) {
            return name;
        }
        let numbered = format!("{name}_{}", n % 100);
        if !taken(&numbered) {
            return numbered;
        }
    }
}

/// A generated name no container has now.
fn unused_generated_name(daemon: &Daemon) -> Result<String, ApiError> {
    let records = daemon.containers.all()?;
    Ok(generated_name(&|n| records.iter().any(|r| r.name == n)))
}

pub async fn create(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<NameQuery>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = CreateRequest::parse(&body, query.name)?;
    let id = blocking(move || create_blocking(&daemon, request)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "Id": id, "Warnings": [] }))))
}

fn create_blocking(daemon: &Daemon, mut request: CreateRequest) -> Result<String, ApiError> {
    vmm::trace::mark("create: asked");
    let image = daemon.images.resolve(&request.image)?;
    let config = image::config::load(&daemon.images, &image.id).map_err(ApiError::internal)?;
    vmm::trace::mark("create: image config");
    let image_config = config.config().as_ref();
    // `-v /path` and the image's own VOLUMEs become anonymous volumes where
    // no named one is mounted.
    let mut anonymous = request.anonymous_volumes.clone();
    for path in image_config.and_then(|c| c.volumes().clone()).unwrap_or_default() {
        if !anonymous.contains(&path) {
            anonymous.push(path);
        }
    }
    // On another's network, it runs in that container's VM.
    let joins = match request.network.joins() {
        Some(target) => {
            let target = joined_vm(daemon, target, &request)?;
            // Its image's VOLUMEs stay in its own writable layer.
            anonymous.clear();
            Some(target)
        }
        None => None,
    };
    let volumes = crate::volumes::plan(&request.binds, &request.mounts, &anonymous)?;
    request
        .network
        .expose(&image_config.and_then(|c| c.exposed_ports().clone()).unwrap_or_default())?;
    let mut process =
        image::config::process(Some(&config), &request.overrides).map_err(|e| ApiError::bad_request(e.to_string()))?;

    let id = random_hex(32);
    let generated = request.name.is_none();
    let name = match request.name.take() {
        Some(name) => name,
        None => unused_generated_name(daemon)?,
    };
    let hostname = match &joins {
        // The VM's, which it shares.
        Some(target) => ContainerDir::new(target).spec()?.hostname,
        None => request.hostname.take().unwrap_or_else(|| id[..12].to_string()),
    };
    let raw = &request.raw;
    let mut docker_config = raw.clone();
    if let Some(object) = docker_config.as_object_mut() {
        object.remove("HostConfig");
        object.remove("NetworkingConfig");
        object.insert("Hostname".into(), json!(hostname));
        object.insert("Image".into(), json!(request.image));
        if !request.env_given {
            object.insert("Env".into(), json!(process.env));
        }
        object.insert("Labels".into(), json!(request.labels));
        // The image's HEALTHCHECK under what the client set.
        let image_check = daemon
            .images
            .run_config(&image.id)
            .ok()
            .and_then(|config| config.get("Healthcheck").cloned())
            .unwrap_or(Value::Null);
        let given = object.get("Healthcheck").cloned().unwrap_or(Value::Null);
        let merged = crate::health::merge(&given, &image_check).map_err(ApiError::bad_request)?;
        if merged.as_object().is_some_and(|m| !m.is_empty()) {
            object.insert("Healthcheck".into(), merged);
        }
    }
    let (path, args) = process
        .argv
        .split_first()
        .map_or((String::new(), Vec::new()), |(p, a)| (p.clone(), a.to_vec()));
    let mut record = ContainerRecord {
        id: id.clone(),
        name,
        created: runtime::container::now_rfc3339(),
        image: request.image.clone(),
        image_id: image.id.to_string(),
        path,
        args,
        config: serde_json::from_value(docker_config)
            .map_err(|e| ApiError::bad_request(format!("invalid container config: {e}")))?,
        host_config: host_config_with_defaults(raw.get("HostConfig")),
        restart_count: 0,
        manually_stopped: false,
        process_env: process.env.clone(),
        process_workdir: process.workdir.clone(),
        process_user: process.user.clone(),
    };
    vmm::trace::mark("create: record");
    let mut network = crate::networking::plan(&id, &request.network)?;
    vmm::trace::mark("create: network planned");
    // Links add names and (on the default bridge) variables before the
    // container's own environment, which wins over them.
    let links = match crate::links::resolve(daemon, &request.links, &record.name, &network) {
        Ok(links) => links,
        Err(e) => {
            crate::networking::release(&id, &network);
            return Err(e);
        }
    };
    if !links.stored.is_empty() {
        network.extra_hosts.extend(links.hosts);
        request.overrides.env = links.env.into_iter().chain(request.overrides.env).collect();
        process = image::config::process(Some(&config), &request.overrides)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        record.process_env = process.env.clone();
        record.host_config.links = Some(links.stored);
    }
    record.host_config.network_mode = match (&joins, request.network.is_default_mode()) {
        (Some(target), _) => format!("container:{target}"),
        (None, true) => "bridge".to_string(),
        (None, false) => crate::networking::mode_name(&network),
    };
    let binds = match crate::volumes::resolve_binds(&volumes) {
        Ok(binds) => binds,
        Err(e) => {
            crate::networking::release(&id, &network);
            return Err(e);
        }
    };
    let mounts = match crate::volumes::create_planned(&volumes) {
        Ok(mounts) => mounts,
        Err(e) => {
            crate::networking::release(&id, &network);
            return Err(e);
        }
    };
    vmm::trace::mark("create: volumes");
    let inserted = loop {
        match daemon.containers.insert(&record) {
            // A create running beside this one took the same generated name
            // between the choice and the insert: choose again.
            Err(StoreError::NameInUse { .. }) if generated => record.name = unused_generated_name(daemon)?,
            other => break other,
        }
    };
    if let Err(e) = inserted {
        crate::volumes::remove_anonymous(daemon, &mounts);
        crate::networking::release(&id, &network);
        return Err(e.into());
    }
    vmm::trace::mark("create: inserted");
    let spec = ContainerSpec {
        image: Some(image.id),
        rootfs: None,
        overrides: request.overrides,
        memory_mib: request.memory_mib,
        cpus: request.cpus,
        cpu_limit_millis: request.cpu_limit_millis,
        pids_limit: request.pids_limit,
        hostname,
        open_stdin: request.open_stdin,
        tty: request.tty,
        cold_boot: false,
        volumes: mounts.clone(),
        binds,
        network,
        log: request.log,
        capabilities: request.capabilities,
        pid_host: request.pid_host,
        init: request.init,
        auto_remove: record.host_config.auto_remove,
        joins,
        process: Some(process),
    };
    if let Err(e) = ContainerDir::new(&id).create(&spec) {
        let _ = daemon.containers.remove(&id);
        let _ = ContainerDir::new(&id).remove();
        crate::volumes::remove_anonymous(daemon, &mounts);
        crate::networking::release(&id, &spec.network);
        return Err(e.into());
    }
    vmm::trace::mark("create: written");
    tracing::info!("created container {id} ({})", record.name);
    daemon.container_event_of(&record, "create", &[]);
    vmm::trace::mark("create: answered");
    Ok(id)
}

/// The container whose VM a container on `target`'s network runs in:
/// `target`'s own, or the one `target` itself joined. What such a
/// container cannot have of its own is refused (dockerd's words where it
/// refuses too).
fn joined_vm(daemon: &Daemon, target: &str, request: &CreateRequest) -> Result<String, ApiError> {
    if request.hostname.is_some() {
        return Err(ApiError::bad_request(
            "conflicting options: hostname and the network mode",
        ));
    }
    if !request.links.is_empty() {
        return Err(ApiError::bad_request(
            "conflicting options: container type network can't be used with links. This would result in undefined behavior",
        ));
    }
    if !request.binds.is_empty() || !request.mounts.is_empty() || !request.anonymous_volumes.is_empty() {
        return Err(ApiError::bad_request(
            "volumes and bind mounts are not supported yet for a container on another container's network: it runs in that container's VM, whose disk slots and shares are fixed when it starts",
        ));
    }
    let memory_given = request.raw["HostConfig"]["Memory"].as_i64().is_some_and(|m| m > 0);
    let limits = [
        (request.pids_limit.is_some(), "--pids-limit"),
        (request.cpu_limit_millis.is_some(), "--cpus"),
        (memory_given, "--memory"),
        (request.pid_host, "--pid host"),
    ];
    if let Some((_, flag)) = limits.iter().find(|(given, _)| *given) {
        return Err(ApiError::bad_request(format!(
            "{flag} is not supported for a container on another container's network: it shares that container's VM, its processes and its limits"
        )));
    }
    let record = daemon.containers.find(target)?;
    Ok(ContainerDir::new(&record.id).spec()?.joins.unwrap_or(record.id))
}

/// The client's HostConfig with what Docker fills in and tools read.
fn host_config_with_defaults(given: Option<&Value>) -> HostConfig {
    let given = given.cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    serde_json::from_value::<HostConfig>(given)
        .unwrap_or_default()
        .with_defaults()
}

/// A container's record and the state of its latest run.
fn lookup(daemon: &Daemon, reference: &str) -> Result<(ContainerRecord, Option<RunState>), ApiError> {
    let record = daemon.containers.find(reference)?;
    let state = ContainerDir::new(&record.id).state()?;
    Ok((record, state))
}

fn is_running(state: &Option<RunState>) -> bool {
    matches!(state, Some(s) if s.status == RunStatus::Running)
}

/// Docker's state word (`restarting`: waiting out its restart delay).
fn status_word(state: &Option<RunState>, restarting: bool) -> &'static str {
    match state {
        _ if restarting => "restarting",
        None => "created",
        Some(s) if s.paused => "paused",
        Some(s) if s.status == RunStatus::Running => "running",
        Some(_) => "exited",
    }
}

/// "3 seconds", "About a minute", as Docker's `ps` prints durations.
fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 14 * 86400 => format!("{} days", s / 86400),
        s if s < 60 * 86400 => format!("{} weeks", s / (7 * 86400)),
        s if s < 730 * 86400 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

fn since(time: &str) -> chrono::Duration {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .unwrap_or_default()
}

fn status_line(state: &Option<RunState>, restarting: bool) -> String {
    let ended = |s: &RunState| human_duration(since(s.finished_at.as_deref().unwrap_or_default()));
    match state {
        Some(s) if restarting => format!("Restarting ({}) {} ago", s.exit_code.unwrap_or(0), ended(s)),
        None => "Created".into(),
        Some(s) if s.paused => format!("Up {} (Paused)", human_duration(since(&s.started_at))),
        Some(s) if s.status == RunStatus::Running => format!("Up {}", human_duration(since(&s.started_at))),
        Some(s) => format!("Exited ({}) {} ago", s.exit_code.unwrap_or(0), ended(s)),
    }
}

fn unix_seconds(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time).map_or(0, |t| t.timestamp())
}

fn command_line(record: &ContainerRecord) -> String {
    std::iter::once(record.path.as_str())
        .chain(record.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    all: Option<String>,
    limit: Option<i64>,
    filters: Option<String>,
}

/// `filters` as the CLI sends it: `{"key":["v"]}` or the older `{"key":{"v":true}}`.
pub fn parse_filters(text: Option<&str>) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(HashMap::new());
    };
    let value: HashMap<String, Value> =
        serde_json::from_str(text).map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
    let mut filters = HashMap::new();
    for (key, v) in value {
        let values = match v {
            Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => return Err(ApiError::bad_request(format!("invalid filter '{key}'"))),
        };
        filters.insert(key, values);
    }
    Ok(filters)
}

fn matches_filters(
    filters: &HashMap<String, Vec<String>>,
    record: &ContainerRecord,
    state: &Option<RunState>,
    restarting: bool,
    health: Option<&crate::health::Health>,
) -> Result<bool, ApiError> {
    for (key, wanted) in filters {
        let ok = match key.as_str() {
            "status" => wanted.iter().any(|w| w == status_word(state, restarting)),
            "name" => wanted.iter().any(|w| record.name.contains(w.trim_start_matches('/'))),
            "id" => wanted.iter().any(|w| record.id.starts_with(w.as_str())),
            "ancestor" => wanted
                .iter()
                .any(|w| record.image == *w || record.image_id.contains(w.as_str()) || record.image.split(':').next() == Some(w)),
            "label" => wanted.iter().all(|w| {
                let labels = &record.config.labels;
                match w.split_once('=') {
                    Some((k, v)) => labels.get(k).is_some_and(|l| l == v),
                    None => labels.contains_key(w),
                }
            }),
            "health" => wanted
                .iter()
                .any(|w| w == health.map_or("none", |h| h.status.name())),
            "exited" => wanted
                .iter()
                .any(|w| matches!(state, Some(s) if s.status == RunStatus::Exited && s.exit_code.map(|c| c.to_string()).as_deref() == Some(w))),
            other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn list(State(daemon): State<Arc<Daemon>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    let all = flag(&query.all) || query.limit.is_some_and(|l| l > 0) || filters.contains_key("status");
    let rows = blocking(move || {
        let mut records = daemon.containers.all()?;
        records.sort_by(|a, b| b.created.cmp(&a.created));
        let mut rows = Vec::new();
        for record in records {
            let state = ContainerDir::new(&record.id).state().unwrap_or(None);
            let restarting = daemon.is_restarting(&record.id);
            let health = running_health(&daemon, &record.id, &state);
            // As in Docker, a container waiting to restart counts as running.
            if (!all && !is_running(&state) && !restarting)
                || !matches_filters(&filters, &record, &state, restarting, health.as_ref())?
            {
                continue;
            }
            let mut row = row(&record, &state, restarting);
            if let (Some(health), Some(status)) = (&health, row["Status"].as_str()) {
                row["Status"] = json!(match health.status {
                    crate::health::Status::Starting => format!("{status} (health: starting)"),
                    other => format!("{status} ({})", other.name()),
                });
            }
            rows.push(row);
            if query.limit.is_some_and(|l| l > 0 && rows.len() as i64 >= l) {
                break;
            }
        }
        Ok(rows)
    })
    .await?;
    Ok(Json(Value::Array(rows)))
}

/// The health of a running container that has a healthcheck.
fn running_health(daemon: &Daemon, id: &str, state: &Option<RunState>) -> Option<crate::health::Health> {
    daemon.health.get(id).filter(|_| is_running(state))
}

/// A container as `docker ps` lists it.
pub fn row(record: &ContainerRecord, state: &Option<RunState>, restarting: bool) -> Value {
    let network = container_network(&record.id);
    let settings = crate::networking::settings_json(&record.id, &network, is_running(state));
    json!({
        "Id": record.id,
        "Names": [format!("/{}", record.name)],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": command_line(record),
        "Created": unix_seconds(&record.created),
        "Ports": crate::networking::ps_ports(&network, is_running(state)),
        "Labels": record.config.labels,
        "State": status_word(state, restarting),
        "Status": status_line(state, restarting),
        "HostConfig": { "NetworkMode": record.host_config.network_mode },
        "NetworkSettings": { "Networks": settings["Networks"] },
        "Mounts": container_mounts(&record.id),
    })
}

/// The container's network (none for a record without a spec).
fn container_network(id: &str) -> runtime::network::ContainerNetwork {
    ContainerDir::new(id).spec().map(|s| s.network).unwrap_or_default()
}

/// The container's volumes, as Docker lists its mounts.
fn container_mounts(id: &str) -> Value {
    let spec = ContainerDir::new(id).spec().ok();
    let (volumes, binds) = spec.map(|s| (s.volumes, s.binds)).unwrap_or_default();
    crate::volumes::mounts_json(&volumes, &binds)
}

/// The space a container's own writes take: its writable disk's blocks.
pub fn writable_size(id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(ContainerDir::new(id).writable_disk()).map_or(0, |m| m.blocks() * 512)
}

/// `POST /containers/prune`: removes every container that is not running
/// (optionally only those with the `label` filters).
pub async fn prune(State(daemon): State<Arc<Daemon>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let filters = parse_filters(query.filters.as_deref())?;
    if let Some(other) = filters.keys().find(|k| *k != "label") {
        return Err(ApiError::bad_request(format!(
            "invalid filter '{other}': hull prunes containers by 'label' only"
        )));
    }
    blocking(move || {
        let mut deleted = Vec::new();
        let mut freed = 0;
        for record in daemon.containers.all()? {
            let state = ContainerDir::new(&record.id).state().unwrap_or(None);
            let restarting = daemon.is_restarting(&record.id);
            if is_running(&state) || restarting || !matches_filters(&filters, &record, &state, restarting, None)? {
                continue;
            }
            let size = writable_size(&record.id);
            daemon.remove(&record.id, state.as_ref().and_then(|s| s.exit_code).unwrap_or(0), false)?;
            freed += size;
            deleted.push(record.id);
        }
        Ok(Json(json!({ "ContainersDeleted": deleted, "SpaceReclaimed": freed })))
    })
    .await
}

pub async fn inspect(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (record, state, restarting, health, execs) = blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        let restarting = daemon.is_restarting(&record.id);
        let health = running_health(&daemon, &record.id, &state);
        let execs = daemon.execs.running_in(&record.id);
        Ok((record, state, restarting, health, execs))
    })
    .await?;
    let mut inspected = inspect_json(&record, &state, restarting);
    if let Some(health) = health {
        inspected["State"]["Health"] = health.to_json();
    }
    if !execs.is_empty() {
        inspected["ExecIDs"] = json!(execs);
    }
    Ok(Json(inspected))
}

/// `restarting`: waiting out its restart delay, which Docker shows as
/// running and restarting at once.
pub fn inspect_json(record: &ContainerRecord, state: &Option<RunState>, restarting: bool) -> Value {
    let dir = ContainerDir::new(&record.id);
    let zero_time = "0001-01-01T00:00:00Z";
    let running = is_running(state);
    json!({
        "Id": record.id,
        "Created": record.created,
        "Path": record.path,
        "Args": record.args,
        "State": {
            "Status": status_word(state, restarting),
            "Running": running || restarting,
            "Paused": state.as_ref().is_some_and(|s| s.paused),
            "Restarting": restarting,
            "OOMKilled": false,
            "Dead": false,
            "Pid": state.as_ref().filter(|_| running).map_or(0, |s| s.pid),
            "ExitCode": state.as_ref().and_then(|s| s.exit_code).unwrap_or(0),
            "Error": state.as_ref().map(|s| s.error.clone()).unwrap_or_default(),
            "StartedAt": state.as_ref().map_or(zero_time.to_string(), |s| s.started_at.clone()),
            "FinishedAt": state.as_ref().and_then(|s| s.finished_at.clone()).unwrap_or(zero_time.to_string()),
        },
        "Image": record.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": dir.log_path(),
        "Name": format!("/{}", record.name),
        "RestartCount": record.restart_count,
        "Driver": "hull",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": record.host_config,
        "GraphDriver": { "Name": "hull", "Data": { "WritableDisk": dir.writable_disk() } },
        "Mounts": container_mounts(&record.id),
        "Config": record.config,
        "NetworkSettings": crate::networking::settings_json(&record.id, &container_network(&record.id), running),
    })
}

pub async fn start(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        if is_running(&state) {
            return Ok(empty(StatusCode::NOT_MODIFIED));
        }
        // A store commit (two fsyncs) only when there is something to change.
        if record.manually_stopped {
            daemon.containers.modify(&record.id, |r| r.manually_stopped = false)?;
        }
        daemon.start(&record.id)?;
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct StopQuery {
    t: Option<i64>,
    signal: Option<String>,
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(text: &str) -> Result<i32, ApiError> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return Err(ApiError::bad_request(format!("Invalid signal: {text}"))),
    };
    Ok(number)
}

/// Waits until the container is no longer running, up to `limit` (one
/// beyond any clock, as a client's `-t` may ask: until it stops).
fn wait_stopped(dir: &ContainerDir, limit: Duration) -> bool {
    let deadline = Instant::now().checked_add(limit);
    while dir.is_running() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// SIGTERM (or the container's stop signal), then SIGKILL after `timeout`,
/// then the VM itself if the guest does not answer.
fn stop_blocking(daemon: &Daemon, record: &ContainerRecord, timeout: Duration, signal: i32) -> Result<(), ApiError> {
    daemon.containers.modify(&record.id, |r| r.manually_stopped = true)?;
    let dir = ContainerDir::new(&record.id);
    resume_for_signal(daemon, record, &dir);
    if let Ok(mut conn) = dir.connect() {
        let _ = conn.signal(signal);
        if wait_stopped(&dir, timeout) {
            return Ok(());
        }
        let _ = conn.signal(libc::SIGKILL);
        if wait_stopped(&dir, KILL_GRACE) {
            return Ok(());
        }
    }
    dir.kill_hard();
    if wait_stopped(&dir, KILL_GRACE) {
        Ok(())
    } else {
        Err(ApiError::internal(format!("container {} did not stop", record.id)))
    }
}

fn stop_settings(config: &Config, query: &StopQuery) -> Result<(Duration, i32), ApiError> {
    // As dockerd: a negative timeout waits for the container to stop.
    let seconds = match query.t.or(config.stop_timeout) {
        Some(t) => u64::try_from(t).unwrap_or(u64::MAX),
        None => DEFAULT_STOP_SECONDS,
    };
    let signal = match query.signal.as_deref().or(config.stop_signal.as_deref()) {
        Some(s) if !s.is_empty() => parse_signal(s)?,
        _ => libc::SIGTERM,
    };
    Ok((Duration::from_secs(seconds), signal))
}

pub async fn stop(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<StopQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        if !is_running(&state) {
            // Waiting to restart: it stays down now, as Docker's stop does.
            if daemon.cancel_restart(&record.id)? {
                daemon.container_event_of(&record, "stop", &[]);
                return Ok(empty(StatusCode::NO_CONTENT));
            }
            return Ok(empty(StatusCode::NOT_MODIFIED));
        }
        let (timeout, signal) = stop_settings(&record.config, &query)?;
        stop_blocking(&daemon, &record, timeout, signal)?;
        daemon.container_event_of(&record, "stop", &[]);
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

pub async fn restart(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<StopQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        if is_running(&state) {
            let (timeout, signal) = stop_settings(&record.config, &query)?;
            stop_blocking(&daemon, &record, timeout, signal)?;
        }
        daemon.containers.modify(&record.id, |r| r.manually_stopped = false)?;
        daemon.start(&record.id)?;
        daemon.container_event_of(&record, "restart", &[]);
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct KillQuery {
    signal: Option<String>,
}

pub async fn kill(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<KillQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        let signal = match query.signal.as_deref() {
            Some(s) if !s.is_empty() => parse_signal(s)?,
            _ => libc::SIGKILL,
        };
        let not_running = || {
            ApiError::conflict(format!(
                "Cannot kill container: {id}: container {} is not running",
                record.id
            ))
        };
        if !is_running(&state) {
            return Err(not_running());
        }
        let dir = ContainerDir::new(&record.id);
        resume_for_signal(&daemon, &record, &dir);
        let mut conn = dir.connect().map_err(|_| not_running())?;
        conn.signal(signal).map_err(|_| not_running())?;
        daemon.container_event_of(&record, "kill", &[("signal", &signal.to_string())]);
        if signal == libc::SIGKILL && !wait_stopped(&dir, KILL_GRACE) {
            // The guest did not act on it: end the VM.
            dir.kill_hard();
        }
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

/// A paused VM cannot act on a signal: as Docker does, it is resumed.
fn resume_for_signal(daemon: &Daemon, record: &ContainerRecord, dir: &ContainerDir) {
    if matches!(dir.state(), Ok(Some(s)) if s.paused) && dir.set_paused(false).is_ok() {
        daemon.container_event_of(record, "unpause", &[]);
    }
}

/// Refuses `what` for a container that runs in another container's VM
/// (on its network): it has no VM of its own to act on.
pub(crate) fn needs_own_vm(id: &str, what: &str) -> Result<(), ApiError> {
    match ContainerDir::new(id).joins() {
        Some(target) => Err(ApiError::conflict(format!(
            "{what} is not supported for container {id}: it runs in container {target}'s VM, on its network (--network container:), and has no VM of its own"
        ))),
        None => Ok(()),
    }
}

/// The names of the running containers on `id`'s network, in its VM.
pub(crate) fn running_in_vm_of(daemon: &Daemon, id: &str) -> Result<Vec<String>, ApiError> {
    Ok(daemon
        .containers
        .all()?
        .into_iter()
        .filter(|r| {
            let dir = ContainerDir::new(&r.id);
            dir.joins().as_deref() == Some(id) && dir.is_running()
        })
        .map(|r| r.name)
        .collect())
}

/// `pause` (true) or `unpause`: the whole VM stops or goes on.
fn set_paused(daemon: &Daemon, reference: &str, paused: bool) -> Result<Response, ApiError> {
    let (record, state) = lookup(daemon, reference)?;
    let id = &record.id;
    needs_own_vm(id, if paused { "pause" } else { "unpause" })?;
    match &state {
        Some(s) if s.status == RunStatus::Running && s.paused == paused => {
            let already = if paused { "already paused" } else { "not paused" };
            return Err(ApiError::conflict(format!("Container {id} is {already}")));
        }
        Some(s) if s.status == RunStatus::Running => {}
        _ => return Err(ApiError::conflict(format!("Container {id} is not running"))),
    }
    ContainerDir::new(id).set_paused(paused)?;
    daemon.container_event_of(&record, if paused { "pause" } else { "unpause" }, &[]);
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn pause(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || set_paused(&daemon, &id, true)).await
}

pub async fn unpause(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || set_paused(&daemon, &id, false)).await
}

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    condition: Option<String>,
}

/// Answers at once with the headers, then with the exit status when the
/// condition is met (the CLI waits on this before it starts the container).
pub async fn wait(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let condition = query.condition.unwrap_or_else(|| "not-running".into());
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(ApiError::bad_request(format!("invalid condition: \"{condition}\"")));
    }
    // Listen before looking, so an exit in between is not missed.
    let mut events = daemon.events_log.subscribe();
    let lookup_daemon = daemon.clone();
    let (record, state) = blocking(move || lookup(&lookup_daemon, &id)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    tokio::spawn(async move {
        let body = |code: i32| json!({ "StatusCode": code, "Error": null }).to_string();
        if condition == "not-running" && !is_running(&state) {
            let code = state.as_ref().and_then(|s| s.exit_code).unwrap_or(0);
            let _ = tx.send(Ok(body(code))).await;
            return;
        }
        loop {
            match events.recv().await {
                Ok(e) if e.is_container(&record.id, "die") && condition != "removed" => {
                    let _ = tx.send(Ok(body(e.exit_code.unwrap_or(255)))).await;
                    return;
                }
                Ok(e) if e.is_container(&record.id, "destroy") => {
                    let _ = tx.send(Ok(body(e.exit_code.unwrap_or(0)))).await;
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
            if tx.is_closed() {
                return; // the client went away
            }
        }
    });
    Ok(crate::api::streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "application/json",
    ))
}

pub async fn rename(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<NameQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let name = query.name.unwrap_or_default();
        let name = name.strip_prefix('/').unwrap_or(&name).to_string();
        if !valid_name(&name) {
            return Err(ApiError::bad_request(format!(
                "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let record = daemon.containers.find(&id)?;
        let renamed = daemon.containers.modify(&record.id, |r| r.name = name)?;
        daemon.container_event_of(&renamed, "rename", &[("oldName", &format!("/{}", record.name))]);
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct ResizeQuery {
    h: Option<String>,
    w: Option<String>,
}

impl ResizeQuery {
    /// The terminal size asked for; Docker's 400 for a bad number.
    pub fn size(&self) -> Result<proto::TerminalSize, ApiError> {
        let dimension = |text: &Option<String>, what: &str| -> Result<u16, ApiError> {
            match text.as_deref() {
                None | Some("") => Ok(0),
                Some(t) => t
                    .parse::<u16>()
                    .map_err(|_| ApiError::bad_request(format!("invalid terminal {what}: {t}"))),
            }
        };
        Ok(proto::TerminalSize {
            rows: dimension(&self.h, "height")?,
            cols: dimension(&self.w, "width")?,
        })
    }
}

/// Resizes the terminal of a container started with `-t` (without one,
/// there is nothing to size and the request is accepted, as Docker does).
pub async fn resize(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<ResizeQuery>,
) -> Result<Response, ApiError> {
    let size = query.size()?;
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        if !is_running(&state) {
            return Err(ApiError::conflict(format!("Container {} is not running", record.id)));
        }
        if record.config.tty {
            ContainerDir::new(&record.id).connect()?.resize(size)?;
        }
        Ok(empty(StatusCode::OK))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    force: Option<String>,
    /// Remove the container's anonymous volumes too.
    v: Option<String>,
}

pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let (record, state) = lookup(&daemon, &id)?;
        if !is_running(&state) && daemon.is_restarting(&record.id) {
            if !flag(&query.force) {
                return Err(ApiError::conflict(format!(
                    "cannot remove container \"/{}\": container is restarting: stop the container before removing or force remove",
                    record.name
                )));
            }
            daemon.cancel_restart(&record.id)?;
        }
        if is_running(&state) {
            if !flag(&query.force) {
                return Err(ApiError::conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    record.name
                )));
            }
            daemon.containers.modify(&record.id, |r| r.manually_stopped = true)?;
            let dir = ContainerDir::new(&record.id);
            dir.kill_hard();
            if !wait_stopped(&dir, KILL_GRACE) {
                return Err(ApiError::internal(format!("container {} did not stop", record.id)));
            }
        }
        let code = ContainerDir::new(&record.id)
            .state()
            .ok()
            .flatten()
            .and_then(|s| s.exit_code)
            .unwrap_or(0);
        daemon.remove(&record.id, code, flag(&query.v))?;
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::console_size;

    #[test]
    fn terminal_sizes_come_from_console_size_and_resize() {
        let size = console_size(Some(&[40, 100]));
        assert_eq!((size.rows, size.cols), (40, 100));
        let unknown = console_size(None);
        assert_eq!((unknown.rows, unknown.cols), (0, 0));
        assert_eq!(console_size(Some(&[1 << 40, 3])).rows, u16::MAX, "clamped, not wrapped");
        let query = |h: &str, w: &str| ResizeQuery {
            h: Some(h.into()),
            w: Some(w.into()),
        };
        assert_eq!(query("50", "120").size().unwrap().cols, 120);
        assert!(query("tall", "1").size().is_err());
        assert!(query("-1", "1").size().is_err());
        assert!(query("70000", "1").size().is_err());
    }

    #[test]
    fn names_signals_and_filters_follow_docker() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("a"));
        assert!(!valid_name("we b"));
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("BOGUS").is_err());
        assert!(parse_signal("0").is_err());
        let f = parse_filters(Some(r#"{"status":["exited"],"label":{"a=b":true}}"#)).unwrap();
        assert_eq!(f["status"], ["exited"]);
        assert_eq!(f["label"], ["a=b"]);
        assert!(parse_filters(Some("{bad")).is_err());
        assert_eq!(human_duration(chrono::Duration::seconds(75)), "About a minute");
        assert_eq!(human_duration(chrono::Duration::seconds(5)), "5 seconds");
        let taken = |n: &str| n.starts_with('a');
        assert!(!generated_name(&taken).starts_with('a'));
    }

    #[test]
    fn stop_timeouts_of_any_size_are_waits_not_overflows() {
        let query = |t| StopQuery { t, signal: None };
        let config = Config {
            stop_timeout: Some(3),
            stop_signal: Some("SIGINT".into()),
            ..Config::default()
        };
        assert_eq!(
            stop_settings(&config, &query(None)).unwrap(),
            (Duration::from_secs(3), 2)
        );
        assert_eq!(
            stop_settings(&config, &query(Some(1))).unwrap().0,
            Duration::from_secs(1)
        );
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(stop_settings(&config, &query(Some(-1))).unwrap().0, forever);
        assert_eq!(
            stop_settings(&config, &query(Some(i64::MAX))).unwrap().0.as_secs(),
            i64::MAX as u64
        );
        let negative = Config {
            stop_timeout: Some(-1),
            ..Config::default()
        };
        assert_eq!(
            stop_settings(&negative, &query(None)).unwrap(),
            (forever, libc::SIGTERM)
        );
        let unset = Config::default();
        assert_eq!(
            stop_settings(&unset, &query(None)).unwrap().0,
            Duration::from_secs(DEFAULT_STOP_SECONDS)
        );
        // A container that is not running has stopped, whatever the limit.
        assert!(wait_stopped(&ContainerDir::new("no-such-container"), forever));
    }
}
