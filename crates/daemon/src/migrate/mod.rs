//! `POST /containers/{id}/migrate` (`hull migrate`): live migration of a
//! running container. Within this host (no `to`), its VM moves to a new
//! VMM while it runs, keeping its memory, processes, disks, output and
//! Docker record: a new hull-vmm binary is picked up this way without a
//! restart. With `to=HOST[:PORT]` it moves to the hulld there
//! (`outgoing`, `arriving`, over `wire`), its writable disk, log and
//! record with it. With `progress=1` each pre-copy round is streamed as a
//! JSON line before the report; `POST /containers/{id}/migrate/cancel`
//! gives a move under way up.

pub mod agent_relay;
pub mod arriving;
pub mod attach_relay;
pub mod link;
mod outgoing;
pub mod shared_storage;
pub mod wire;

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use proto::{MigrationProgress, MigrationReport};
use runtime::container::{ContainerDir, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{blocking, ApiError};
use crate::daemon::Daemon;

/// A file in `dir` that no name reaches (gone when closed): an image's
/// tar on its way to or from another host.
fn scratch_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("move.{}.tar", crate::containers::random_hex(8)));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// The downtime budget when the request names none, as the issue and QEMU's
/// tuned setups use (QEMU's own default is 300 ms).
const DEFAULT_DOWNTIME_MS: u32 = 50;
/// How long pre-copy may go on before the move is given up (the VM runs on).
const DEFAULT_MAX_SECONDS: u32 = 300;

#[derive(Debug, Deserialize)]
pub struct MigrateQuery {
    to: Option<String>,
    /// The downtime budget in ms.
    downtime: Option<String>,
    /// Seconds the move may take before it is given up.
    timeout: Option<String>,
    /// `1`: stream each pre-copy round's progress as a JSON line, then the
    /// report (or `error`), as `docker pull` streams.
    progress: Option<String>,
    /// `0`: the VM's pages and disks travel without LZ4 (a link faster
    /// than LZ4 on a core); `1`, the default: compressed.
    compress: Option<String>,
}

/// A yes/no query parameter: `1`/`true` or `0`/`false`, `default` if absent.
fn switch(value: Option<&str>, name: &str, default: bool) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(default),
        Some("1" | "true" | "True") => Ok(true),
        Some("0" | "false" | "False") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!("invalid {name} \"{other}\": 1 or 0"))),
    }
}

fn number(
    value: Option<&str>,
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    text.parse::<u32>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid {name} \"{text}\": a whole number from {} to {}",
            range.start(),
            range.end()
        ))
    })
}

pub async fn migrate(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<MigrateQuery>,
) -> Result<Response, ApiError> {
    let to = query
        .to
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(link::resolve)
        .transpose()?;
    let downtime_ms = number(query.downtime.as_deref(), "downtime", DEFAULT_DOWNTIME_MS, 1..=60_000)?;
    let max_seconds = number(query.timeout.as_deref(), "timeout", DEFAULT_MAX_SECONDS, 1..=3600)?;
    let progress = crate::api::flag(&query.progress);
    let limits = proto::MoveLimits {
        downtime_ms,
        max_seconds,
        compress: switch(query.compress.as_deref(), "compress", true)?,
    };
    let (record, dir) = {
        let daemon = daemon.clone();
        blocking(move || {
            let record = daemon.containers.find(&id)?;
            crate::containers::needs_own_vm(&record.id, "migration")?;
            let guests = crate::containers::running_in_vm_of(&daemon, &record.id)?;
            // Disks of containers that ran in it and were killed go first.
            runtime::join::take_back_slots(&ContainerDir::new(&record.id));
            if !guests.is_empty() {
                return Err(ApiError::conflict(format!(
                    "container {} cannot move while containers on its network run in its VM ({}): stop them first",
                    record.name,
                    guests.join(", ")
                )));
            }
            let dir = ContainerDir::new(&record.id);
            movable(&record.id, &dir)?;
            Ok((record, dir))
        })
        .await?
    };
    // Each round's progress, as JSON lines before the report when asked for.
    let (lines, rounds) = mpsc::unbounded_channel::<Value>();
    let last_line = lines.clone();
    let moving = tokio::task::spawn_blocking(move || {
        daemon.container_event_of(&record, "migrate", &[("phase", "start")]);
        let mut told = |p: MigrationProgress| {
            let _ = lines.send(json!({ "Progress": progress_json(&p) }));
        };
        let outcome = match &to {
            Some(peer) => outgoing::move_to(&daemon, &record, &dir, peer, limits, &mut told).map(|moved| {
                let mut json = report_json(&record.id, &moved.report);
                json["To"] = json!(peer.named);
                json["TemplateBytes"] = json!(moved.template_bytes);
                json["ImageBytes"] = json!(moved.image_bytes);
                json["ImageDiskBytes"] = json!(moved.image_disk_bytes);
                json["LogBytes"] = json!(moved.log_bytes);
                json
            }),
            None => dir
                .connect()
                .and_then(|mut conn| conn.migrate(limits, None, &mut told))
                .map(|report| report_json(&record.id, &report))
                .map_err(ApiError::from),
        };
        match outcome {
            Ok(json) => {
                let to_host = to.as_ref().map(|peer| peer.named.as_str());
                let extra: Vec<(&str, &str)> = std::iter::once(("phase", "finish"))
                    .chain(to_host.map(|t| ("to", t)))
                    .collect();
                daemon.container_event_of(&record, "migrate", &extra);
                Ok(json)
            }
            Err(e) => {
                daemon.container_event_of(&record, "migrate", &[("phase", "failed")]);
                Err(e)
            }
        }
    });
    if !progress {
        let outcome = moving.await.map_err(|e| ApiError::internal(e.to_string()))?;
        return outcome.map(|report| Json(report).into_response());
    }
    // The rounds' lines are all sent before the move's outcome is known.
    tokio::spawn(async move {
        let last = match moving.await {
            Ok(Ok(report)) => json!({ "Report": report }),
            Ok(Err(e)) => json!({"errorDetail": {"message": e.message}, "error": e.message}),
            Err(e) => json!({"errorDetail": {"message": e.to_string()}, "error": e.to_string()}),
        };
        let _ = last_line.send(last);
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rounds);
    let body = futures_util::StreamExt::map(lines, |line| {
        Ok::<_, std::io::Error>(axum::body::Bytes::from(format!("{line}\r\n")))
    });
    Ok(crate::api::streaming(body, "application/json"))
}

/// `POST /containers/{id}/migrate/cancel` (`hull migrate --cancel`): gives up
/// the container's move under way; it runs on where it was. 204, or 409
/// when no move is under way.
pub async fn cancel(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || {
        let record = daemon.containers.find(&id)?;
        let dir = ContainerDir::new(&record.id);
        let found = match dir.state()? {
            Some(s) if s.status == RunStatus::Running => dir.connect()?.cancel_migration()?,
            _ => false,
        };
        match found {
            true => Ok(crate::api::empty(axum::http::StatusCode::NO_CONTENT)),
            false => Err(ApiError::conflict(format!(
                "Container {} is not being migrated",
                record.id
            ))),
        }
    })
    .await
}

/// A running, unpaused container whose VM has started can move.
fn movable(id: &str, dir: &ContainerDir) -> Result<(), ApiError> {
    match dir.state()? {
        Some(s) if s.status == RunStatus::Running && s.paused => Err(ApiError::conflict(format!(
            "Container {id} is paused: unpause it before migrating it"
        ))),
        Some(s) if s.status == RunStatus::Running && s.vmm_pid != 0 => Ok(()),
        Some(s) if s.status == RunStatus::Running => {
            Err(ApiError::conflict(format!("Container {id} is still starting")))
        }
        _ => Err(ApiError::conflict(format!("Container {id} is not running"))),
    }
}

fn progress_json(p: &MigrationProgress) -> Value {
    json!({
        "Round": p.round,
        "PagesSent": p.pages_sent,
        "BytesSent": p.bytes_sent,
        "DirtyPages": p.dirty_pages,
        "DirtyRate": p.dirty_rate,
        "Bandwidth": p.bandwidth,
        "ExpectedDowntimeMs": p.expected_downtime_ms,
        "Throttle": p.throttle,
    })
}

fn report_json(id: &str, report: &MigrationReport) -> Value {
    json!({
        "Id": id,
        "Rounds": report.rounds,
        "BytesSent": report.bytes_sent,
        "PagesSent": report.pages_sent,
        "TotalMs": report.total_ms,
        "DowntimeMs": report.downtime_ms,
        "MaxThrottle": report.max_throttle,
        "OutputFramesLost": report.output_frames_lost,
        "VmmPid": report.vmm_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_is_on_unless_turned_off_and_anything_else_is_refused() {
        assert!(switch(None, "compress", true).unwrap());
        assert!(switch(Some(""), "compress", true).unwrap());
        assert!(switch(Some("1"), "compress", false).unwrap());
        assert!(!switch(Some("0"), "compress", true).unwrap());
        assert!(!switch(Some("false"), "compress", true).unwrap());
        let refused = switch(Some("lz4"), "compress", true).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.message.as_str()),
            (400, "invalid compress \"lz4\": 1 or 0")
        );
    }
}
