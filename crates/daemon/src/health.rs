//! Docker healthchecks: the image's `HEALTHCHECK` or `--health-*`, run in
//! the container's VM by its agent (as an exec), with dockerd's rules:
//! `starting` until the first success, `healthy` on a success, `unhealthy`
//! after `retries` failures in a row; failures inside the start period do
//! not count, and probes come every `start-interval` then. The last five
//! results are kept; a change of status is a `health_status: …` event.
//! The state lives in hulld's memory: after a restart of hulld a running
//! container starts again from `starting`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::{read_frame, write_frame, Control, Frame, ProcessSpec};
use runtime::container::ContainerDir;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::store::ContainerRecord;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// Results kept, and output kept of each (dockerd's).
const KEPT_RESULTS: usize = 5;
const KEPT_OUTPUT: usize = 4096;

/// A container's healthcheck, merged from its config and its image's.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

/// Docker's `Config.Healthcheck` with what the container leaves unset
/// taken from the image's: what inspect shows and the monitor runs.
pub fn merge(container: &Value, image: &Value) -> Result<Value, String> {
    let mut merged = match container.as_object() {
        Some(object) => object.clone(),
        None => serde_json::Map::new(),
    };
    let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == &json!(0) || v == &json!([]));
    if let Some(image) = image.as_object() {
        for (key, value) in image {
            if unset(merged.get(key)) {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    let merged = Value::Object(merged);
    HealthCheck::of(&merged)?;
    Ok(merged)
}

/// Docker's `Healthcheck`: durations in nanoseconds, 0 for the default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct HealthConfig {
    test: Option<Vec<String>>,
    interval: Option<i64>,
    timeout: Option<i64>,
    start_period: Option<i64>,
    start_interval: Option<i64>,
    retries: Option<i64>,
}

impl HealthCheck {
    /// The check `config` (Docker's `Healthcheck`) describes; `None` for
    /// none, or `NONE`.
    pub fn of(config: &Value) -> Result<Option<HealthCheck>, String> {
        if config.is_null() {
            return Ok(None);
        }
        let config: HealthConfig =
            serde_json::from_value(config.clone()).map_err(|e| format!("invalid Healthcheck: {e}"))?;
        let test = config.test.unwrap_or_default();
        let argv = match test.split_first() {
            None => return Ok(None),
            Some((kind, _)) if kind == "NONE" => return Ok(None),
            Some((kind, args)) if kind == "CMD" && !args.is_empty() => args.to_vec(),
            Some((kind, args)) if kind == "CMD-SHELL" && !args.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), args.join(" ")]
            }
            Some((kind, _)) => return Err(format!("invalid healthcheck test {kind:?}: use CMD, CMD-SHELL or NONE")),
        };
        let duration = |key: &str, given: Option<i64>, default: Duration| -> Result<Duration, String> {
            match given.unwrap_or(0) {
                0 => Ok(default),
                ns if ns < 1_000_000 => Err(format!("{key} in Healthcheck cannot be less than 1ms")),
                ns => Ok(Duration::from_nanos(ns as u64)),
            }
        };
        let retries = match config.retries.unwrap_or(0) {
            n if n < 0 => return Err("Retries in Healthcheck cannot be negative".into()),
            0 => DEFAULT_RETRIES,
            n => u32::try_from(n).unwrap_or(u32::MAX),
        };
        Ok(Some(HealthCheck {
            argv,
            interval: duration("Interval", config.interval, DEFAULT_INTERVAL)?,
            timeout: duration("Timeout", config.timeout, DEFAULT_TIMEOUT)?,
            retries,
            start_period: duration("StartPeriod", config.start_period, Duration::ZERO)?,
            start_interval: duration("StartInterval", config.start_interval, DEFAULT_START_INTERVAL)?,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Starting,
    Healthy,
    Unhealthy,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// A running container's health.
#[derive(Debug, Clone)]
pub struct Health {
    pub status: Status,
    pub failing_streak: u32,
    pub log: VecDeque<Probe>,
}

impl Health {
    fn new() -> Health {
        Health {
            status: Status::Starting,
            failing_streak: 0,
            log: VecDeque::new(),
        }
    }

    /// Takes a probe's result (dockerd's rules); the new status if it changed.
    fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) -> Option<Status> {
        let before = self.status;
        if probe.exit_code == 0 {
            self.failing_streak = 0;
            self.status = Status::Healthy;
        } else if !(in_start_period && self.status == Status::Starting) {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = Status::Unhealthy;
            }
        }
        self.log.push_back(probe);
        while self.log.len() > KEPT_RESULTS {
            self.log.pop_front();
        }
        (self.status != before).then_some(self.status)
    }

    /// `State.Health` as dockerd shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "Status": self.status.name(),
            "FailingStreak": self.failing_streak,
            "Log": self.log.iter().map(|p| json!({
                "Start": p.start,
                "End": p.end,
                "ExitCode": p.exit_code,
                "Output": p.output,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The health of every running container that has a healthcheck.
#[derive(Default)]
pub struct HealthStates(Mutex<HashMap<String, Health>>);

impl HealthStates {
    pub fn get(&self, id: &str) -> Option<Health> {
        self.0.lock().ok()?.get(id).cloned()
    }

    fn set(&self, id: &str, health: Health) {
        if let Ok(mut states) = self.0.lock() {
            states.insert(id.to_string(), health);
        }
    }

    /// Forgets a removed container's health.
    pub fn forget(&self, id: &str) {
        if let Ok(mut states) = self.0.lock() {
            states.remove(id);
        }
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Health) -> Option<Status>) -> Option<Status> {
        self.0.lock().ok()?.get_mut(id).and_then(change)
    }
}

/// Starts probing a container that just started (or runs on after a
/// restart of hulld), if it has a healthcheck: a thread for its run.
pub fn monitor(daemon: &Arc<Daemon>, id: &str) {
    let Ok(record) = daemon.containers.find(id) else { return };
    let Some(config) = &record.config.healthcheck else {
        return;
    };
    let Ok(Some(check)) = HealthCheck::of(config) else {
        return;
    };
    let dir = ContainerDir::new(id);
    let Some(run) = dir.state().ok().flatten().map(|s| s.started_at) else {
        return;
    };
    daemon.health.set(id, Health::new());
    let daemon = daemon.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let same_run = || matches!(dir.state(), Ok(Some(s)) if s.started_at == run && dir.is_running());
        loop {
            let in_start_period = started.elapsed() < check.start_period;
            let starting = daemon
                .health
                .get(&record.id)
                .is_some_and(|h| h.status == Status::Starting);
            let wait = match in_start_period && starting {
                true => check.start_interval,
                false => check.interval,
            };
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline && same_run() {
                std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
            }
            if !same_run() {
                return;
            }
            let probe = probe(&dir, &record, &check);
            let in_start_period = started.elapsed() < check.start_period;
            let changed = daemon
                .health
                .update(&record.id, |h| h.record(probe, check.retries, in_start_period));
            if let Some(status) = changed {
                daemon.container_event_of(&record, &format!("health_status: {}", status.name()), &[]);
            }
        }
    });
}

/// Runs the check once in the container, as an exec with the container's
/// environment, user and groups.
fn probe(dir: &ContainerDir, record: &ContainerRecord, check: &HealthCheck) -> Probe {
    let start = runtime::container::now_rfc3339();
    let spec = ProcessSpec {
        argv: check.argv.clone(),
        env: record.process_env.clone(),
        cwd: record.process_workdir.clone(),
        user: record.process_user.clone(),
        groups: record.host_config.groups(),
        stdin: false,
        tty: None,
        capabilities: record.host_config.capabilities(),
        session: 0,
        container: crate::exec::joined_id(&record.id),
    };
    let (exit_code, output) = match run(dir, spec, check.timeout) {
        Ok(result) => result,
        Err(message) => (-1, message),
    };
    Probe {
        start,
        end: runtime::container::now_rfc3339(),
        exit_code,
        output,
    }
}

fn run(dir: &ContainerDir, spec: ProcessSpec, timeout: Duration) -> Result<(i32, String), String> {
    let mut conn = crate::exec::connect_agent(dir).map_err(|e| format!("cannot reach the container's agent: {e}"))?;
    write_frame(&mut conn, &Frame::Control(Control::Exec(Box::new(spec)))).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut output = Vec::new();
    let mut keep = |data: &[u8]| {
        let room = KEPT_OUTPUT.saturating_sub(output.len());
        output.extend_from_slice(&data[..data.len().min(room)]);
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            let _ = write_frame(&mut conn, &Frame::Control(Control::Signal { signal: libc::SIGKILL }));
            return Ok((-1, format!("Health check exceeded timeout ({timeout:?})")));
        }
        match read_frame(&mut conn) {
            Ok(Some(Frame::Stdout(data) | Frame::Stderr(data))) => keep(&data),
            Ok(Some(Frame::Control(Control::Exited { code, signal }))) => {
                return Ok((
                    proto::shell_status(code, signal),
                    String::from_utf8_lossy(&output).into_owned(),
                ))
            }
            Ok(Some(Frame::Control(Control::Failed { message, exit_code }))) => return Ok((exit_code, message)),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the container's agent went away".into()),
            Err(proto::ProtoError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(code: i32) -> Probe {
        Probe {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn a_forgotten_container_s_health_is_gone() {
        let states = HealthStates::default();
        states.set("a", Health::new());
        states.set("b", Health::new());
        states.forget("a");
        assert!(states.get("a").is_none() && states.get("b").is_some());
    }

    #[test]
    fn checks_merge_with_the_image_and_take_docker_defaults() {
        let image = json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 2_000_000_000i64, "Retries": 5});
        let merged = merge(&json!({"Timeout": 1_000_000_000i64}), &image).unwrap();
        let check = HealthCheck::of(&merged).unwrap().unwrap();
        assert_eq!(check.argv, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(
            (check.interval, check.timeout, check.retries),
            (Duration::from_secs(2), Duration::from_secs(1), 5)
        );
        assert_eq!(check.start_interval, DEFAULT_START_INTERVAL);
        assert_eq!(
            HealthCheck::of(&merge(&json!({"Test": ["NONE"]}), &image).unwrap()).unwrap(),
            None
        );
        assert_eq!(HealthCheck::of(&json!({})).unwrap(), None);
        assert_eq!(
            HealthCheck::of(&json!({"Test": ["CMD", "true"]}))
                .unwrap()
                .unwrap()
                .argv,
            ["true"]
        );
        for (config, message) in [
            (json!({"Test": ["SHELL", "x"]}), "invalid healthcheck test"),
            (json!({"Test": "CMD true"}), "invalid Healthcheck"),
            (
                json!({"Test": ["CMD", "true"], "Interval": 5}),
                "Interval in Healthcheck cannot be less than 1ms",
            ),
            (json!({"Test": ["CMD", "true"], "Retries": -1}), "cannot be negative"),
        ] {
            assert!(merge(&config, &json!(null)).unwrap_err().contains(message), "{config}");
        }
    }

    #[test]
    fn status_follows_dockerds_rules() {
        let mut health = Health::new();
        // Failures in the start period do not count while starting.
        assert_eq!(health.record(probe(1), 2, true), None);
        assert_eq!((health.status, health.failing_streak), (Status::Starting, 0));
        assert_eq!(health.record(probe(0), 2, true), Some(Status::Healthy));
        assert_eq!(health.record(probe(1), 2, false), None);
        assert_eq!(health.record(probe(1), 2, false), Some(Status::Unhealthy));
        assert_eq!(health.failing_streak, 2);
        for _ in 0..10 {
            health.record(probe(1), 2, false);
        }
        assert_eq!(health.log.len(), KEPT_RESULTS);
        assert_eq!(health.record(probe(0), 2, false), Some(Status::Healthy));
        assert_eq!(health.to_json()["FailingStreak"], 0);
    }
}
