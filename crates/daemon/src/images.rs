//! The image endpoints: list, pull (Docker's JSON progress stream, so the
//! CLI draws its bars), inspect, tag, remove. Image names may hold slashes
//! and a registry port, so `/images/{name}/json` and `/images/{name}/tag`
//! are told apart by their last segment.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use image::pull::PullEvent;
use image::ImageRef;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{blocking, empty, flag, streaming, ApiError};
use crate::daemon::Daemon;

pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let rows = blocking(move || {
        let store = &daemon.images;
        let tags = store.tags()?;
        let users = runtime::usage::images_in_use();
        let mut rows = Vec::new();
        for record in store.images()? {
            let repo_tags: Vec<&String> = tags
                .iter()
                .filter(|(_, id)| **id == record.id)
                .map(|(t, _)| t)
                .collect();
            let created = record
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map_or(0, |t| t.timestamp());
            rows.push(json!({
                "Id": record.id.to_string(),
                "ParentId": "",
                "RepoTags": repo_tags,
                "RepoDigests": record.repo_digests,
                "Created": created,
                "Size": record.size(),
                "SharedSize": -1,
                "Labels": {},
                "Containers": users.get(&record.id).map_or(0, Vec::len),
            }));
        }
        Ok(rows)
    })
    .await?;
    Ok(Json(Value::Array(rows)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullQuery {
    from_image: Option<String>,
    from_src: Option<String>,
    tag: Option<String>,
    platform: Option<String>,
}

/// One line of Docker's progress stream.
fn progress_line(event: &PullEvent) -> Option<Value> {
    Some(match event {
        PullEvent::Resolved { .. } => return None,
        PullEvent::AlreadyExists { id } => json!({"status": "Already exists", "progressDetail": {}, "id": id}),
        PullEvent::Waiting { id, .. } => json!({"status": "Pulling fs layer", "progressDetail": {}, "id": id}),
        PullEvent::Downloading { id, current, total } => {
            let width = 50u64;
            let done = if *total > 0 {
                (current * width / total).min(width)
            } else {
                0
            };
            let bar = format!(
                "[{}>{}] {}/{}",
                "=".repeat(done as usize),
                " ".repeat((width - done) as usize),
                current,
                total
            );
            json!({"status": "Downloading", "progressDetail": {"current": current, "total": total}, "progress": bar, "id": id})
        }
        PullEvent::Complete { id } => json!({"status": "Pull complete", "progressDetail": {}, "id": id}),
        PullEvent::Done { digest, .. } => json!({"status": format!("Digest: {digest}")}),
    })
}

pub async fn pull(State(daemon): State<Arc<Daemon>>, Query(query): Query<PullQuery>) -> Result<Response, ApiError> {
    if query.from_src.is_some() {
        return Err(ApiError::bad_request(
            "importing a root filesystem (docker import) is not supported by hull yet",
        ));
    }
    if let Some(platform) = query.platform.as_deref().filter(|p| !p.is_empty()) {
        if !platform.starts_with("linux/amd64") && platform != "linux" {
            return Err(ApiError::bad_request(format!(
                "hull runs linux/amd64 images only; {platform} was asked for"
            )));
        }
    }
    let from = query.from_image.unwrap_or_default();
    let name = match query.tag.as_deref().filter(|t| !t.is_empty()) {
        Some(tag) if tag.starts_with("sha256:") => format!("{from}@{tag}"),
        Some(tag) => format!("{from}:{tag}"),
        None => from,
    };
    let reference = ImageRef::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let send = tx.clone();
    let progress: image::pull::Progress = Arc::new(move |event| {
        if let Some(line) = progress_line(&event) {
            let _ = send.send(line);
        }
    });
    let tag = reference.tag().unwrap_or("latest").to_string();
    let _ = tx.send(json!({"status": format!("Pulling from {}", reference.familiar_repository()), "id": tag}));
    let images = daemon.images.clone();
    let events = daemon.clone();
    tokio::spawn(async move {
        let before = images.resolve(&name).ok().map(|r| r.id);
        match image::pull::pull(images, &reference, progress).await {
            Ok(record) => {
                let status = if before.as_ref() == Some(&record.id) {
                    format!("Status: Image is up to date for {reference}")
                } else {
                    format!("Status: Downloaded newer image for {reference}")
                };
                let _ = tx.send(json!({ "status": status }));
                let name = reference.to_string();
                events.events_log.emit("image", "pull", &name, &[("name", &name)]);
            }
            Err(e) => {
                let message = e.to_string();
                let _ = tx.send(json!({"errorDetail": {"message": message}, "error": message}));
            }
        }
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let body = futures_util::StreamExt::map(lines, |line| {
        Ok::<_, std::io::Error>(Bytes::from(format!("{line}\r\n")))
    });
    Ok(streaming(body, "application/json"))
}

/// `GET /images/{name}/json`.
pub async fn get_by_name(State(daemon): State<Arc<Daemon>>, Path(rest): Path<String>) -> Result<Json<Value>, ApiError> {
    let Some(name) = rest.strip_suffix("/json") else {
        return Err(ApiError::not_found(format!("page not found: GET /images/{rest}")));
    };
    let name = name.to_string();
    let value = blocking(move || {
        let record = daemon.images.resolve(&name)?;
        Ok(image::inspect::docker_json(&daemon.images, &record)?)
    })
    .await?;
    Ok(Json(value))
}

#[derive(Debug, Deserialize)]
pub struct TagQuery {
    repo: Option<String>,
    tag: Option<String>,
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub async fn post_by_name(
    State(daemon): State<Arc<Daemon>>,
    Path(rest): Path<String>,
    Query(query): Query<TagQuery>,
) -> Result<Response, ApiError> {
    let Some(name) = rest.strip_suffix("/tag") else {
        return Err(ApiError::not_found(format!("page not found: POST /images/{rest}")));
    };
    let name = name.to_string();
    let repo = query.repo.unwrap_or_default();
    if repo.is_empty() {
        return Err(ApiError::bad_request(
            "repository name must have at least one component",
        ));
    }
    let target = match query.tag.as_deref().filter(|t| !t.is_empty()) {
        Some(tag) => format!("{repo}:{tag}"),
        None => repo,
    };
    blocking(move || {
        daemon.images.tag(&name, &target)?;
        daemon.events_log.emit("image", "tag", &name, &[("name", &target)]);
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::CREATED))
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    force: Option<String>,
}

/// `DELETE /images/{name}`: Docker's list of untagged and deleted images.
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    let force = flag(&query.force);
    let lines = blocking(move || {
        let users = runtime::usage::images_in_use();
        let lines = daemon
            .images
            .remove(&name, force, &|id| users.get(id).cloned().unwrap_or_default())?;
        for line in &lines {
            if let Some((kind, what)) = line.split_once(": ") {
                let action = if kind == "Deleted" { "delete" } else { "untag" };
                daemon.events_log.emit("image", action, what, &[("name", what)]);
            }
        }
        Ok(lines)
    })
    .await?;
    let items: Vec<Value> = lines
        .iter()
        .filter_map(|line| {
            let (kind, what) = line.split_once(": ")?;
            Some(json!({ kind: what }))
        })
        .collect();
    Ok(Json(Value::Array(items)))
}
