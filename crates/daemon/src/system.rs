//! `/_ping`, `/version` and `/info` (what the docker CLI asks first),
//! `docker system df`, and the prune `docker system prune` asks for of
//! what hull does not have (a build cache).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use runtime::container::ContainerDir;
use serde_json::{json, Value};

use crate::api::{ApiError, API_VERSION, MIN_API_VERSION};
use crate::daemon::Daemon;

pub async fn ping() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        "OK",
    )
        .into_response()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn version() -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": { "Name": "hull" },
        "Components": [{
            "Name": "hull",
            "Version": version,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux",
                "Arch": "amd64",
                "Runtime": "hull microVM (one KVM VM per container)",
            },
        }],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": kernel_release(),
        "BuildTime": "",
    }))
}

pub async fn info(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let info = crate::api::blocking(move || {
        let records = daemon.containers.all()?;
        let running = records
            .iter()
            .filter(|r| ContainerDir::new(&r.id).is_running())
            .count();
        let images = daemon.images.images()?.len();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = runtime::host_memory_bytes();
        Ok(json!({
            "ID": "hull",
            "Containers": records.len(),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": records.len() - running,
            "Images": images,
            "Driver": "hull",
            "DriverStatus": [["Root disk per image", "ext4, shared read-only"], ["Writable layer", "ext4 disk per container"]],
            "Plugins": { "Volume": [], "Network": [], "Log": ["json-file"] },
            "MemoryLimit": true,
            "SwapLimit": false,
            "CpuCfsPeriod": false,
            "CpuCfsQuota": false,
            "IPv4Forwarding": false,
            "Debug": false,
            "NFd": 0,
            "NGoroutines": 0,
            "SystemTime": runtime::container::now_rfc3339(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "none",
            "CgroupVersion": "2",
            "NEventsListener": 0,
            "KernelVersion": kernel_release(),
            "OperatingSystem": "hull (containers in KVM microVMs)",
            "OSType": "linux",
            "Architecture": "x86_64",
            "NCPU": cpus,
            "MemTotal": memory,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": { "InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": [] },
            "DockerRootDir": runtime::data_dir(),
            "Name": hostname(),
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": { "hull": { "path": "hull-shim" } },
            "DefaultRuntime": "hull",
            "Swarm": { "LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null },
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "SecurityOptions": ["name=kvm-microvm"],
            "Warnings": [],
        }))
    })
    .await?;
    Ok(Json(info))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `docker system df`: images, containers (their writable disks), volumes,
/// and the build cache hull does not have.
pub async fn disk_usage(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    crate::api::blocking(move || {
        let mut images = crate::images::rows(&daemon.images)?;
        // Layers count once however many images share them.
        let records = daemon.images.images()?;
        let mut layer_users: std::collections::HashMap<&image::digest::Digest, (u64, usize)> = Default::default();
        for layer in records.iter().flat_map(|r| &r.layers) {
            layer_users.entry(&layer.digest).or_insert((layer.size, 0)).1 += 1;
        }
        let layers_size: u64 = layer_users.values().map(|(size, _)| size).sum();
        for row in &mut images {
            let record = records.iter().find(|r| row["Id"].as_str() == Some(&r.id.to_string()));
            let shared: u64 = record.map_or(0, |r| {
                r.layers
                    .iter()
                    .filter(|l| layer_users.get(&l.digest).is_some_and(|(_, users)| *users > 1))
                    .map(|l| l.size)
                    .sum()
            });
            row["SharedSize"] = json!(shared);
        }
        let mut containers = Vec::new();
        for record in daemon.containers.all()? {
            let state = ContainerDir::new(&record.id).state().unwrap_or(None);
            let mut row = crate::containers::row(&record, &state, daemon.is_restarting(&record.id));
            let size_rw = crate::containers::writable_size(&record.id);
            let image_size = daemon.images.resolve(&record.image_id).map_or(0, |i| i.size());
            row["SizeRw"] = json!(size_rw);
            row["SizeRootFs"] = json!(size_rw + image_size);
            containers.push(row);
        }
        Ok(Json(json!({
            "LayersSize": layers_size,
            "Images": images,
            "Containers": containers,
            "Volumes": crate::volumes::usage_rows(&daemon)?,
            "BuildCache": [],
        })))
    })
    .await
}

/// hull builds no images: there is no build cache to prune.
pub async fn prune_build_cache() -> Json<Value> {
    Json(json!({ "CachesDeleted": [], "SpaceReclaimed": 0 }))
}
