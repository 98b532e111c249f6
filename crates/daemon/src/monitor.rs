//! `docker stats` and `docker top`, read from inside the VM: hulld asks
//! the container's agent (on its exec port) for the guest kernel's CPU
//! time, memory and process list, and answers in Docker's shapes. A paused
//! VM cannot answer: its stats read as idle, and top says why it cannot.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use proto::{read_frame, Control, Frame, GuestStats};
use runtime::container::{ContainerDir, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{blocking, streaming, ApiError};
use crate::daemon::Daemon;
use crate::store::ContainerRecord;

/// How long the agent may take to answer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Docker samples stats once a second.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// What a single document's CPU share is measured over. The docker CLI
/// gives up on `stats --no-stream` after 2 s, and that document needs two
/// samples, each a round trip to the agent (slow on a loaded host).
const ONE_DOCUMENT_INTERVAL: Duration = Duration::from_millis(500);
/// A first sample slower than this is sent alone (CPU share since boot)
/// rather than risk a second slow round trip past the CLI's 2 s.
const SECOND_SAMPLE_BUDGET: Duration = Duration::from_millis(600);

/// Asks the agent of a running container for one report.
pub(crate) fn ask_agent(dir: &ContainerDir, request: Control) -> Result<Control, ApiError> {
    let unreachable = |e: String| ApiError::conflict(format!("cannot reach the container's agent: {e}"));
    let mut conn = crate::exec::request_agent(crate::exec::connect_agent(dir), request)?;
    conn.set_read_timeout(Some(REPORT_TIMEOUT))
        .map_err(ApiError::internal)?;
    let answer = read_frame(&mut conn);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    match answer {
        Ok(Some(Frame::Control(Control::Failed { message, .. }))) => Err(unreachable(message)),
        Ok(Some(Frame::Control(control))) => Ok(control),
        Ok(other) => Err(unreachable(format!("unexpected answer {other:?}"))),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct TopQuery {
    ps_args: Option<String>,
}

/// `ps -ef`'s columns, for the processes in the guest (guest PIDs).
pub async fn top(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(args) = query.ps_args.as_deref().filter(|a| !a.is_empty() && *a != "-ef") {
        return Err(ApiError::bad_request(format!(
            "ps options are not supported (got \"{args}\"): hull lists the guest's processes in ps -ef's columns"
        )));
    }
    let processes = blocking(move || {
        let record = daemon.containers.find(&id)?;
        let dir = ContainerDir::new(&record.id);
        match dir.state()? {
            Some(s) if s.paused => Err(ApiError::conflict(format!(
                "Container {} is paused: its processes are read from inside the VM, unpause it first",
                record.id
            ))),
            Some(s) if s.status == RunStatus::Running => match ask_agent(
                &dir,
                Control::Top {
                    container: crate::exec::joined_id(&record.id),
                },
            )? {
                Control::Processes { processes } => Ok(processes),
                other => Err(ApiError::internal(format!("the agent answered {other:?}"))),
            },
            _ => Err(ApiError::conflict(format!("Container {} is not running", record.id))),
        }
    })
    .await?;
    let now = chrono::Utc::now();
    let rows: Vec<Value> = processes
        .iter()
        .map(|p| {
            let started = chrono::DateTime::from_timestamp(p.started as i64, 0).unwrap_or(now);
            let stime = match now.signed_duration_since(started) < chrono::Duration::hours(24) {
                true => started.format("%H:%M").to_string(),
                false => started.format("%b%d").to_string(),
            };
            let elapsed_ms = now.signed_duration_since(started).num_milliseconds().max(1) as u64;
            let cpu_s = p.cpu_ms / 1000;
            json!([
                p.uid.to_string(),
                p.pid.to_string(),
                p.ppid.to_string(),
                (p.cpu_ms * 100 / elapsed_ms).to_string(),
                stime,
                if p.tty.is_empty() {
                    "?".to_string()
                } else {
                    p.tty.clone()
                },
                format!("{:02}:{:02}:{:02}", cpu_s / 3600, cpu_s / 60 % 60, cpu_s % 60),
                p.command,
            ])
        })
        .collect();
    Ok(Json(json!({
        "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "Processes": rows,
    })))
}

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

/// One sample: when, and what the guest said (`None`: it could not say).
struct Sample {
    read: String,
    guest: Option<GuestStats>,
}

fn sample(dir: &ContainerDir) -> Sample {
    let read = runtime::container::now_rfc3339();
    let guest = match dir.state() {
        Ok(Some(s)) if s.status == RunStatus::Running && !s.paused => match ask_agent(dir, Control::Stats) {
            Ok(Control::StatsReport(stats)) => Some(stats),
            _ => None,
        },
        _ => None,
    };
    Sample { read, guest }
}

/// Docker's stats document: `now` against `before` (the CLI's CPU share is
/// the change in busy time over the change in total time).
fn stats_json(record: &ContainerRecord, memory_limit: u64, now: &Sample, before: Option<&Sample>) -> Value {
    let cpu = |s: Option<&Sample>| {
        let g = s.and_then(|s| s.guest.clone()).unwrap_or_default();
        json!({
            "cpu_usage": {
                "total_usage": g.cpu_busy_ns,
                "usage_in_usermode": g.cpu_user_ns,
                "usage_in_kernelmode": g.cpu_busy_ns.saturating_sub(g.cpu_user_ns),
            },
            "system_cpu_usage": g.cpu_total_ns,
            "online_cpus": g.online_cpus,
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        })
    };
    let guest = now.guest.clone().unwrap_or_default();
    json!({
        "id": record.id,
        "name": format!("/{}", record.name),
        "read": now.read,
        "preread": before.map_or("0001-01-01T00:00:00Z".to_string(), |b| b.read.clone()),
        "pids_stats": { "current": guest.processes },
        "cpu_stats": cpu(Some(now)),
        "precpu_stats": cpu(before),
        "memory_stats": {
            "usage": guest.memory_total.saturating_sub(guest.memory_available),
            "limit": memory_limit,
            "stats": {},
        },
        // The VM's disks as one device (Docker sums these per operation).
        "blkio_stats": {
            "io_service_bytes_recursive": [
                { "major": 253, "minor": 0, "op": "read", "value": guest.disk_read_bytes },
                { "major": 253, "minor": 0, "op": "write", "value": guest.disk_write_bytes },
            ],
        },
        "networks": network_stats(&record.id, &ContainerDir::new(&record.id).spec().map(|s| s.network).unwrap_or_default()),
        "num_procs": 0,
        "storage_stats": {},
    })
}

/// The container's NICs as Docker shows them (`eth0`, ...), read from
/// their taps on the host: what the host received, the container sent.
fn network_stats(id: &str, network: &runtime::network::ContainerNetwork) -> Value {
    let mut nics = serde_json::Map::new();
    for endpoint in &network.endpoints {
        let tap = runtime::network::host::tap_name(id, endpoint.slot);
        let Some(c) = runtime::network::host::tap_counters(&tap) else {
            continue;
        };
        nics.insert(
            format!("eth{}", endpoint.slot),
            json!({
                "rx_bytes": c.rx_bytes, "rx_packets": c.rx_packets, "rx_errors": 0, "rx_dropped": 0,
                "tx_bytes": c.tx_bytes, "tx_packets": c.tx_packets, "tx_errors": 0, "tx_dropped": 0,
            }),
        );
    }
    Value::Object(nics)
}

/// `GET /containers/{id}/stats`: a JSON document a second (streamed), or
/// one (after half a second's sampling, unless `one-shot`).
pub async fn stats(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    let stream = query.stream.as_deref().is_none_or(|s| s == "1" || s == "true");
    let one_shot = crate::api::flag(&query.one_shot);
    let lookup = daemon.clone();
    let record = blocking(move || Ok(lookup.containers.find(&id)?)).await?;
    let dir = ContainerDir::new(&record.id);
    let memory_limit = dir.spec().map_or(0, |s| s.memory_mib * 1024 * 1024);
    let slot = match stream {
        true => Some(daemon.streams.take()?),
        false => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(2);
    tokio::spawn(async move {
        let _slot = slot;
        let sampled = |dir: &ContainerDir| {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || (sample(&dir), dir.is_running()))
        };
        let mut before = None;
        let mut first = None;
        if !stream && !one_shot {
            let started = std::time::Instant::now();
            let Ok((early, _)) = sampled(&dir).await else { return };
            if started.elapsed() < SECOND_SAMPLE_BUDGET {
                before = Some(early);
                tokio::time::sleep(ONE_DOCUMENT_INTERVAL.saturating_sub(started.elapsed())).await;
            } else {
                first = Some(early);
            }
        }
        loop {
            let (now, running) = match first.take() {
                Some(now) => (now, true),
                None => match sampled(&dir).await {
                    Ok(sampled) => sampled,
                    Err(_) => return,
                },
            };
            let document = stats_json(&record, memory_limit, &now, before.as_ref());
            if tx.send(Ok(format!("{document}\n"))).await.is_err() || !stream || !running {
                return;
            }
            before = Some(now);
            tokio::select! {
                _ = tokio::time::sleep(STATS_INTERVAL) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "application/json",
    ))
}
