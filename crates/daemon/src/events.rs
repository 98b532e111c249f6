//! `docker events`: what happened to containers and images, in Docker's
//! message shape, streamed as it happens. The last `HISTORY` events are kept
//! in memory so `--since` can look back; `--until` ends the stream; filters
//! select by type, action, container, image and label.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};

use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::api::ApiError;
use crate::containers::parse_filters;
use crate::daemon::Daemon;

const HISTORY: usize = 1024;

/// One event, as the docker CLI prints it.
#[derive(Debug, Clone)]
pub struct DockerEvent {
    pub kind: &'static str,
    pub action: String,
    pub id: String,
    pub attributes: HashMap<String, String>,
    pub time_nano: i128,
    /// A container's exit code, on its `die` and `destroy`: for hulld's
    /// waiters (`docker events` shows die's as the `exitCode` attribute).
    pub exit_code: Option<i32>,
}

impl DockerEvent {
    pub fn to_json(&self) -> Value {
        json!({
            "status": self.action,
            "id": self.id,
            "from": self.attributes.get("image"),
            "Type": self.kind,
            "Action": self.action,
            "Actor": { "ID": self.id, "Attributes": self.attributes },
            "scope": "local",
            "time": self.time_nano / 1_000_000_000,
            "timeNano": self.time_nano,
        })
    }

    /// Whether this is container `id`'s `action`.
    pub fn is_container(&self, id: &str, action: &str) -> bool {
        self.kind == "container" && self.id == id && self.action == action
    }

    fn seconds(&self) -> f64 {
        self.time_nano as f64 / 1e9
    }
}

/// The event feed: a broadcast for followers and a bounded history.
pub struct EventLog {
    history: Mutex<VecDeque<DockerEvent>>,
    live: broadcast::Sender<DockerEvent>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            history: Mutex::new(VecDeque::new()),
            live: broadcast::channel(HISTORY).0,
        }
    }
}

impl EventLog {
    /// Events from now on, as they happen: `docker events`, and hulld's
    /// own waiters (`wait`, an attach's end) on a container's die/destroy.
    pub fn subscribe(&self) -> broadcast::Receiver<DockerEvent> {
        self.live.subscribe()
    }

    /// Records `action` on a container or an image with its attributes.
    pub fn emit(&self, kind: &'static str, action: &str, id: &str, attributes: &[(&str, &str)]) {
        self.emit_with_code(kind, action, id, attributes, None);
    }

    /// As `emit`, with a container's exit code for hulld's waiters.
    pub fn emit_with_code(
        &self,
        kind: &'static str,
        action: &str,
        id: &str,
        attributes: &[(&str, &str)],
        exit_code: Option<i32>,
    ) {
        let event = DockerEvent {
            kind,
            action: action.to_string(),
            id: id.to_string(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            time_nano: chrono::Utc::now().timestamp_nanos_opt().map_or(0, i128::from),
            exit_code,
        };
        if let Ok(mut history) = self.history.lock() {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(event.clone());
        }
        let _ = self.live.send(event);
    }
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

fn time_arg(text: &Option<String>) -> Result<Option<f64>, ApiError> {
    match text.as_deref().filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t
            .parse::<f64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid time value: {t}"))),
    }
}

fn matches(filters: &HashMap<String, Vec<String>>, event: &DockerEvent) -> bool {
    filters.iter().all(|(key, wanted)| {
        let attr = |name: &str| event.attributes.get(name).map(String::as_str).unwrap_or("");
        match key.as_str() {
            "type" => wanted.iter().any(|w| w == event.kind),
            "event" => wanted
                .iter()
                .any(|w| *w == event.action || event.action.starts_with(&format!("{w}:"))),
            "container" => {
                event.kind == "container"
                    && wanted
                        .iter()
                        .any(|w| event.id.starts_with(w.as_str()) || attr("name") == w)
            }
            "image" => wanted
                .iter()
                .any(|w| attr("image") == w || (event.kind == "image" && event.id == *w)),
            "label" => wanted.iter().all(|w| match w.split_once('=') {
                Some((k, v)) => attr(k) == v,
                None => event.attributes.contains_key(w),
            }),
            _ => false,
        }
    })
}

pub async fn stream(State(daemon): State<Arc<Daemon>>, Query(query): Query<EventsQuery>) -> Result<Response, ApiError> {
    let since = time_arg(&query.since)?;
    let until = time_arg(&query.until)?;
    let filters = parse_filters(query.filters.as_deref())?;
    if let Some(bad) = filters
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "event" | "container" | "image" | "label"))
    {
        return Err(ApiError::bad_request(format!("invalid filter '{bad}'")));
    }
    let slot = daemon.streams.take()?;
    // Subscribe before reading the history, so nothing falls between them.
    let mut live = daemon.events_log.subscribe();
    let past: Vec<DockerEvent> = match since {
        Some(since) => daemon
            .events_log
            .history
            .lock()
            .map(|h| h.iter().filter(|e| e.seconds() >= since).cloned().collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let _slot = slot;
        let line = |e: &DockerEvent| Ok(Bytes::from(format!("{}\n", e.to_json())));
        let mut last_seen = 0i128;
        for event in &past {
            if until.is_some_and(|u| event.seconds() > u) {
                return;
            }
            last_seen = event.time_nano;
            if matches(&filters, event) && tx.send(line(event)).await.is_err() {
                return;
            }
        }
        loop {
            let remaining = match until {
                Some(u) => {
                    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as f64 / 1e9;
                    if now >= u {
                        return;
                    }
                    Duration::from_secs_f64(u - now)
                }
                None => Duration::from_secs(3600),
            };
            let next = tokio::select! {
                next = tokio::time::timeout(remaining, live.recv()) => next,
                // The client went away.
                _ = tx.closed() => return,
            };
            match next {
                Ok(Ok(event)) => {
                    // Already sent from the history.
                    if event.time_nano <= last_seen {
                        continue;
                    }
                    if matches(&filters, &event) && tx.send(line(&event)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) if until.is_some() => return,
                Err(_) => {}
            }
        }
    });
    Ok(crate::api::streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "application/json",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_events_as_docker_does() {
        let log = EventLog::default();
        log.emit(
            "container",
            "die",
            "abc123",
            &[("name", "web"), ("image", "box:v1"), ("exitCode", "3")],
        );
        let event = log.history.lock().unwrap()[0].clone();
        let f = |text: &str| parse_filters(Some(text)).unwrap();
        assert!(matches(&f(r#"{"type":["container"],"event":["die"]}"#), &event));
        assert!(matches(&f(r#"{"container":["web"]}"#), &event));
        assert!(matches(&f(r#"{"container":["abc"]}"#), &event));
        assert!(matches(&f(r#"{"image":["box:v1"]}"#), &event));
        assert!(!matches(&f(r#"{"event":["start"]}"#), &event));
        assert!(!matches(&f(r#"{"type":["image"]}"#), &event));
        let json = event.to_json();
        assert_eq!(json["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(json["status"], "die");
    }
}
