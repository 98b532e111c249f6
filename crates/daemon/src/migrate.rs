//! `POST /containers/{id}/migrate` (`hull migrate`): live migration of a
//! running container. Within this host (no `to`), its VM moves to a new
//! VMM while it runs, keeping its memory, processes, disks, output and
//! Docker record: a new hull-vmm binary is picked up this way without a
//! restart. A move to another host is not built yet.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use runtime::container::{ContainerDir, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, ApiError};
use crate::daemon::Daemon;

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
) -> Result<Json<Value>, ApiError> {
    if let Some(to) = query.to.as_deref().filter(|t| !t.is_empty()) {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            format!("migrating to another host ({to}) is not supported yet: only a move to a new VMM on this host (leave out \"to\")"),
        ));
    }
    let downtime_ms = number(query.downtime.as_deref(), "downtime", DEFAULT_DOWNTIME_MS, 1..=60_000)?;
    let max_seconds = number(query.timeout.as_deref(), "timeout", DEFAULT_MAX_SECONDS, 1..=3600)?;
    blocking(move || {
        let record = daemon.containers.find(&id)?;
        let dir = ContainerDir::new(&record.id);
        match dir.state()? {
            Some(s) if s.status == RunStatus::Running && s.paused => {
                return Err(ApiError::conflict(format!(
                    "Container {} is paused: unpause it before migrating it",
                    record.id
                )))
            }
            Some(s) if s.status == RunStatus::Running && s.vmm_pid != 0 => {}
            Some(s) if s.status == RunStatus::Running => {
                return Err(ApiError::conflict(format!("Container {} is still starting", record.id)))
            }
            _ => return Err(ApiError::conflict(format!("Container {} is not running", record.id))),
        }
        daemon.container_event_of(&record, "migrate", &[("phase", "start")]);
        let outcome = dir
            .connect()
            .and_then(|mut conn| conn.migrate(downtime_ms, max_seconds));
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                daemon.container_event_of(&record, "migrate", &[("phase", "failed")]);
                return Err(e.into());
            }
        };
        daemon.container_event_of(&record, "migrate", &[("phase", "finish")]);
        Ok(Json(json!({
            "Id": record.id,
            "Rounds": report.rounds,
            "BytesSent": report.bytes_sent,
            "PagesSent": report.pages_sent,
            "TotalMs": report.total_ms,
            "DowntimeMs": report.downtime_ms,
            "MaxThrottle": report.max_throttle,
            "OutputFramesLost": report.output_frames_lost,
            "VmmPid": report.vmm_pid,
        })))
    })
    .await
}
