//! The volume endpoints (create, list, inspect, remove, prune) and what a
//! container's create asks of volumes and host directories: `-v
//! NAME:/path[:ro]` and `-v /host/dir:/path[:ro]` (Binds), `--mount
//! type=volume|bind,...` (Mounts) and `-v /path` (an anonymous volume). A
//! volume is a shared directory by default, or an ext4 disk with `-o
//! type=disk` (`runtime::volume`); shared volumes and host directories
//! reach the VM through virtio-fs (`runtime::bind`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use runtime::bind::{BindMount, MissingSource};
use runtime::container::ContainerDir;
use runtime::volume::{self, VolumeError, VolumeFlag, VolumeKind, VolumeMount, VolumeRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, empty, flag, ApiError};
use crate::daemon::Daemon;
use crate::docker_config::Mount;

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> ApiError {
        let status = match &e {
            VolumeError::InvalidName(_) => StatusCode::BAD_REQUEST,
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeError::InUse(_) | VolumeError::SharedInUse(_) => StatusCode::CONFLICT,
            VolumeError::TooManyDisks(_) | VolumeError::Device { .. } => StatusCode::BAD_REQUEST,
            VolumeError::Damaged { .. } | VolumeError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Docker's JSON for a volume.
fn volume_json(record: &VolumeRecord) -> Value {
    let (options, format) = match record.kind {
        VolumeKind::Disk => (
            json!({"type": "disk"}),
            "ext4 disk, for one running container at a time",
        ),
        VolumeKind::Shared => match &record.device {
            Some(device) => (
                json!({"type": "none", "o": "bind", "device": device}),
                "host directory, shared through virtio-fs",
            ),
            None => (json!({}), "directory, shared through virtio-fs"),
        },
    };
    json!({
        "Name": record.name,
        "Driver": "local",
        "Mountpoint": volume::mountpoint(record),
        "CreatedAt": record.created_at,
        "Labels": labels_of(record),
        "Scope": "local",
        "Options": options,
        "Status": { "Format": format },
    })
}

/// The volume's labels; an anonymous one carries Docker's mark of that.
fn labels_of(record: &VolumeRecord) -> BTreeMap<String, String> {
    let mut labels = record.labels.clone();
    if record.anonymous {
        labels.insert("com.docker.volume.anonymous".into(), String::new());
    }
    labels
}

/// The volumes each container uses: volume name → container IDs.
pub fn users(daemon: &Daemon) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    for record in daemon.containers.all()? {
        let Ok(spec) = ContainerDir::new(&record.id).spec() else {
            continue;
        };
        for mount in spec.volumes {
            users.entry(mount.name).or_default().push(record.id.clone());
        }
    }
    Ok(users)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    name: String,
    driver: String,
    driver_opts: Option<HashMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// A volume create request, checked: the name (a random one when unnamed,
/// and then anonymous, as in Docker) and the labels.
#[derive(Debug)]
pub struct VolumeRequest {
    pub name: String,
    pub anonymous: bool,
    pub labels: BTreeMap<String, String>,
    pub kind: VolumeKind,
    /// A host directory the volume is (`-o type=none -o o=bind -o device=DIR`).
    pub device: Option<std::path::PathBuf>,
}

impl VolumeRequest {
    pub fn parse(body: &[u8]) -> Result<VolumeRequest, ApiError> {
        let body: CreateBody = match body.is_empty() {
            true => CreateBody::default(),
            false => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid volume config: {e}")))?,
        };
        if !matches!(body.driver.as_str(), "" | "local") {
            return Err(ApiError::bad_request(format!(
                "volume driver \"{}\" is not supported: hull's volumes are local disks",
                body.driver
            )));
        }
        let (kind, device) = volume_kind(body.driver_opts.unwrap_or_default())?;
        let (name, anonymous) = match body.name.as_str() {
            "" => (crate::containers::random_hex(32), true),
            name if volume::valid_name(name) => (name.to_string(), false),
            name => return Err(VolumeError::InvalidName(name.to_string()).into()),
        };
        Ok(VolumeRequest {
            name,
            anonymous,
            labels: body.labels.unwrap_or_default(),
            kind,
            device,
        })
    }
}

/// What the local driver's options ask for. Docker's are mount(8)'s; hull
/// takes `type=disk` (an ext4 disk instead of a shared directory) and
/// Docker's bind of a host directory, `type=none`, `o=bind` and
/// `device=DIR` together.
fn volume_kind(options: HashMap<String, String>) -> Result<(VolumeKind, Option<std::path::PathBuf>), ApiError> {
    let unsupported = |option: &str, value: &str| {
        ApiError::bad_request(format!(
            "volume option {option}={value} is not supported: hull's local volumes are shared directories, with \
             type=disk ext4 disks for one running container, or with type=none,o=bind,device=DIR a host directory"
        ))
    };
    let mut kind = VolumeKind::Shared;
    let (mut none, mut bind, mut device) = (false, false, None);
    for (option, value) in &options {
        match (option.as_str(), value.as_str()) {
            ("type", "disk") => kind = VolumeKind::Disk,
            ("type", "" | "shared") => kind = VolumeKind::Shared,
            ("type", "none") => none = true,
            ("o", "bind" | "rbind") => bind = true,
            ("device", dir) => device = Some(dir),
            (option, value) => return Err(unsupported(option, value)),
        }
    }
    match (none, bind, device) {
        (false, false, None) => Ok((kind, None)),
        (true, true, Some(dir)) if dir.starts_with('/') => Ok((VolumeKind::Shared, Some(dir.into()))),
        (true, true, Some(dir)) => Err(ApiError::bad_request(format!(
            "volume option device={dir}: a host directory's absolute path is expected"
        ))),
        _ => Err(ApiError::bad_request(
            "a host directory as a volume takes all three of type=none, o=bind and device=DIR".to_string(),
        )),
    }
}

pub async fn create(body: axum::body::Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = VolumeRequest::parse(&body)?;
    let (record, _) = blocking(move || {
        Ok(volume::create_on(
            &request.name,
            request.labels,
            request.anonymous,
            request.kind,
            request.device.as_deref(),
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(volume_json(&record))))
}

/// `docker volume ls`, with the `name`, `dangling` and `label` filters.
pub async fn list(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<crate::api::FiltersQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = crate::containers::parse_filters(query.filters.as_deref())?;
    blocking(move || {
        let users = users(&daemon)?;
        let mut rows = Vec::new();
        for record in volume::list()? {
            let keep = filters.iter().all(|(key, values)| match key.as_str() {
                "name" => values.iter().any(|v| record.name.contains(v.as_str())),
                "dangling" => values
                    .iter()
                    .any(|v| matches!(v.as_str(), "true" | "1") == !users.contains_key(&record.name)),
                "label" => crate::api::labels_match(&record.labels, values),
                "driver" => values.iter().any(|v| v == "local"),
                _ => true,
            });
            if keep {
                rows.push(volume_json(&record));
            }
        }
        Ok(Json(json!({ "Volumes": rows, "Warnings": [] })))
    })
    .await
}

pub async fn inspect(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let record = volume::get(&name)?.ok_or_else(|| ApiError::not_found(format!("get {name}: no such volume")))?;
        Ok(Json(volume_json(&record)))
    })
    .await
}

/// Refused while a container refers to the volume, as Docker does (even a
/// stopped one: it mounts the volume again when started), unless forced;
/// never while a VM has it mounted.
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<crate::api::ForceQuery>,
) -> Result<Response, ApiError> {
    blocking(move || {
        if volume::get(&name)?.is_none() {
            return match flag(&query.force) {
                true => Ok(empty(StatusCode::NO_CONTENT)),
                false => Err(ApiError::not_found(format!("get {name}: no such volume"))),
            };
        }
        if let Some(ids) = users(&daemon)?.get(&name) {
            if !flag(&query.force) {
                let short: Vec<&str> = ids.iter().map(|id| &id[..12.min(id.len())]).collect();
                return Err(ApiError::conflict(format!(
                    "remove {name}: volume is in use - [{}]",
                    short.join(", ")
                )));
            }
        }
        volume::remove(&name)?;
        Ok(empty(StatusCode::NO_CONTENT))
    })
    .await
}

/// Removes unused volumes: anonymous ones only, unless `all=true` (Docker
/// 23+'s rule).
pub async fn prune(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<crate::api::FiltersQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = crate::containers::parse_filters(query.filters.as_deref())?;
    let all = filters
        .get("all")
        .is_some_and(|v| v.iter().any(|v| matches!(v.as_str(), "true" | "1")));
    blocking(move || {
        let users = users(&daemon)?;
        let (mut deleted, mut reclaimed) = (Vec::new(), 0u64);
        for record in volume::list()? {
            if users.contains_key(&record.name) || !(all || record.anonymous) {
                continue;
            }
            let size = volume::size_on_disk(&record);
            match volume::remove(&record.name) {
                Ok(()) => {
                    reclaimed += size;
                    deleted.push(record.name);
                }
                Err(VolumeError::InUse(_) | VolumeError::SharedInUse(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Json(json!({ "VolumesDeleted": deleted, "SpaceReclaimed": reclaimed })))
    })
    .await
}

/// `docker system df`'s volume rows.
pub fn usage_rows(daemon: &Daemon) -> Result<Vec<Value>, ApiError> {
    let users = users(daemon)?;
    Ok(volume::list()?
        .iter()
        .map(|record| {
            let mut row = volume_json(record);
            row["UsageData"] = json!({
                "Size": volume::size_on_disk(record),
                "RefCount": users.get(&record.name).map_or(0, Vec::len),
            });
            row
        })
        .collect())
}

/// A container's volumes, checked, and whether each is anonymous, and its
/// bind mounts; nothing is made or looked up on the host yet
/// (`resolve_binds`, `create_planned`).
pub struct VolumePlan {
    volumes: Vec<(VolumeMount, bool)>,
    binds: Vec<(BindMount, MissingSource)>,
}

/// The volumes and host directories a container create asks for: Binds
/// (`NAME:/path[:ro]`, `/host/dir:/path[:ro]`), Mounts of type volume or
/// bind, and anonymous volumes for the `anonymous` paths (`-v /path`, the
/// image's VOLUMEs) not already mounted.
pub fn plan(binds: &[String], mounts: &[Mount], anonymous: &[String]) -> Result<VolumePlan, ApiError> {
    let mut wanted = Vec::new();
    let mut host_dirs = Vec::new();
    for bind in binds {
        match volume::parse_volume_flag(bind).map_err(ApiError::bad_request)? {
            VolumeFlag::Volume(volume) => wanted.push((volume, false)),
            VolumeFlag::Bind(bind) => host_dirs.push((bind, MissingSource::Create)),
        }
    }
    for mount in mounts {
        let kind = match mount.kind.as_str() {
            "" => "volume",
            kind => kind,
        };
        let target = mount.target.as_str();
        if kind == "bind" {
            let mode = match mount.read_only {
                true => "ro",
                false => "",
            };
            let propagation = &mount.bind_options.propagation;
            let bind = BindMount::parse(&mount.source, target, &format!("{mode},{propagation}"))
                .map_err(|e| ApiError::bad_request(format!("invalid mount config for type \"bind\": {e}")))?;
            host_dirs.push((bind, MissingSource::Refuse));
            continue;
        }
        if kind != "volume" {
            return Err(ApiError::bad_request(format!(
                "mounts of type {kind} are not supported: use a volume or a bind mount"
            )));
        }
        let target = volume::check_target(target).map_err(ApiError::bad_request)?;
        let read_only = mount.read_only;
        let (name, anonymous) = match mount.source.as_str() {
            "" => (crate::containers::random_hex(32), true),
            source => (source.to_string(), false),
        };
        if !volume::valid_name(&name) {
            return Err(VolumeError::InvalidName(name).into());
        }
        wanted.push((
            VolumeMount {
                name,
                target,
                read_only,
            },
            anonymous,
        ));
    }
    for path in anonymous {
        let target = volume::check_target(path).map_err(ApiError::bad_request)?;
        if wanted.iter().any(|(m, _)| m.target == target) {
            continue;
        }
        let name = crate::containers::random_hex(32);
        wanted.push((
            VolumeMount {
                name,
                target,
                read_only: false,
            },
            true,
        ));
    }
    let mounts: Vec<VolumeMount> = wanted.iter().map(|(m, _)| m.clone()).collect();
    volume::check_mounts(&mounts).map_err(ApiError::bad_request)?;
    let targets: Vec<&str> = mounts.iter().map(|m| m.target.as_str()).collect();
    let binds: Vec<BindMount> = host_dirs.iter().map(|(b, _)| b.clone()).collect();
    runtime::bind::check(&binds, &targets).map_err(ApiError::bad_request)?;
    Ok(VolumePlan {
        volumes: wanted,
        binds: host_dirs,
    })
}

/// Looks the planned bind mounts' directories up on the host (`-v` makes a
/// missing one, as Docker does; `--mount` refuses it).
pub fn resolve_binds(plan: &VolumePlan) -> Result<Vec<BindMount>, ApiError> {
    plan.binds
        .iter()
        .map(|(bind, missing)| bind.clone().resolve(*missing).map_err(ApiError::bad_request))
        .collect()
}

/// Makes the planned volumes (named ones only if missing).
pub fn create_planned(plan: &VolumePlan) -> Result<Vec<VolumeMount>, ApiError> {
    for (mount, anonymous) in &plan.volumes {
        volume::create(&mount.name, BTreeMap::new(), *anonymous, VolumeKind::Shared)?;
    }
    Ok(plan.volumes.iter().map(|(m, _)| m.clone()).collect())
}

/// Removes a removed container's anonymous volumes (`docker rm -v`, and
/// `--rm`), unless another container uses them too.
pub fn remove_anonymous(daemon: &Daemon, mounts: &[VolumeMount]) {
    remove_unused(daemon, mounts, |record| record.anonymous);
}

/// Removes the volumes a container that moved to another host took with
/// it (their data is there now), unless another container here uses them.
pub fn remove_moved(daemon: &Daemon, mounts: &[VolumeMount]) {
    remove_unused(daemon, mounts, |_| true);
}

fn remove_unused(daemon: &Daemon, mounts: &[VolumeMount], which: impl Fn(&VolumeRecord) -> bool) {
    let users = users(daemon).unwrap_or_default();
    for mount in mounts {
        let chosen = volume::get(&mount.name).ok().flatten().is_some_and(|r| which(&r));
        if chosen && !users.contains_key(&mount.name) {
            if let Err(e) = volume::remove(&mount.name) {
                tracing::warn!("removing volume {}: {e}", mount.name);
            }
        }
    }
}

/// A container's `Mounts` in inspect and list answers.
pub fn mounts_json(mounts: &[VolumeMount], binds: &[BindMount]) -> Value {
    let volumes = mounts.iter().map(|m| {
        json!({
            "Type": "volume",
            "Name": m.name,
            "Source": volume::get(&m.name).ok().flatten().map(|r| volume::mountpoint(&r)).unwrap_or_default(),
            "Destination": m.target,
            "Driver": "local",
            "Mode": if m.read_only { "ro" } else { "" },
            "RW": !m.read_only,
            "Propagation": "",
        })
    });
    let binds = binds.iter().map(|b| {
        json!({
            "Type": "bind",
            "Source": b.source,
            "Destination": b.target,
            "Mode": if b.read_only { "ro" } else { "" },
            "RW": !b.read_only,
            "Propagation": "rprivate",
        })
    });
    json!(volumes.chain(binds).collect::<Vec<_>>())
}
