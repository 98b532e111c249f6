//! The image endpoints: list, pull (Docker's JSON progress stream, so the
//! CLI draws its bars), inspect, history, tag, remove, prune, save and
//! load. Image names may hold slashes and a registry port, so
//! `/images/{name}/json`, `/history`, `/get` and `/tag` are told apart by
//! their last segment.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use image::pull::PullEvent;
use image::ImageRef;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{blocking, empty, flag, streaming, ApiError};
use crate::daemon::Daemon;

pub async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let rows = blocking(move || rows(&daemon.images)).await?;
    Ok(Json(Value::Array(rows)))
}

/// The rows of `docker images` (also part of `docker system df`).
pub fn rows(store: &image::Store) -> Result<Vec<Value>, ApiError> {
    {
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
    }
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

/// What the CLI puts in `X-Registry-Auth` (base64url JSON), and `docker
/// login` posts to `/auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    username: String,
    password: String,
    serveraddress: String,
    registrytoken: String,
}

/// The credentials the client sent for a pull; `None` when it sent none
/// (then hulld's own Docker config is used, if it has any).
fn registry_auth(headers: &axum::http::HeaderMap) -> Result<Option<image::pull::RegistryAuth>, ApiError> {
    use base64::Engine;
    let Some(value) = headers.get("X-Registry-Auth") else {
        return Ok(None);
    };
    let invalid = || ApiError::bad_request("invalid X-Registry-Auth header: not base64-encoded JSON");
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let lenient = |alphabet| {
        base64::engine::GeneralPurpose::new(
            alphabet,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
    };
    let bytes = lenient(&base64::alphabet::URL_SAFE)
        .decode(text)
        .or_else(|_| lenient(&base64::alphabet::STANDARD).decode(text))
        .map_err(|_| invalid())?;
    let auth: AuthConfig = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok(if !auth.registrytoken.is_empty() {
        Some(image::pull::RegistryAuth::Bearer(auth.registrytoken))
    } else if !auth.username.is_empty() {
        Some(image::pull::RegistryAuth::Basic(auth.username, auth.password))
    } else {
        None
    })
}

/// `POST /auth` (`docker login`): checks the credentials with the registry.
pub async fn login(Json(auth): Json<AuthConfig>) -> Result<Json<Value>, ApiError> {
    // `https://host/v1/` or `host:port`: the registry's host and port.
    let server = auth.serveraddress.trim();
    let server = server.split_once("://").map_or(server, |(_, rest)| rest);
    let server = server.split('/').next().unwrap_or_default();
    let server = match server {
        "" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    };
    image::pull::check_login(server, &auth.username, &auth.password)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok(Json(json!({ "Status": "Login Succeeded", "IdentityToken": "" })))
}

/// `POST /images/create`: a pull (`fromImage`) or an import (`fromSrc`).
pub async fn pull(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<PullQuery>,
    RawQuery(raw_query): RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    if query.from_src.is_some() {
        return crate::commit::import(daemon, raw_query, body).await;
    }
    let sent_auth = registry_auth(&headers)?;
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
        let auth = sent_auth.unwrap_or_else(|| image::pull::credentials(&reference));
        match image::pull::pull(images, &reference, auth, progress).await {
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

/// `GET /images/{name}/json`, `/images/{name}/history`, `/images/{name}/get`.
pub async fn get_by_name(State(daemon): State<Arc<Daemon>>, Path(rest): Path<String>) -> Result<Response, ApiError> {
    let (name, what) = rest.rsplit_once('/').unwrap_or((&rest, ""));
    let name = name.to_string();
    match what {
        "json" => {
            let value = blocking(move || {
                let record = daemon.images.resolve(&name)?;
                Ok(image::inspect::docker_json(&daemon.images, &record)?)
            })
            .await?;
            Ok(Json(value).into_response())
        }
        "history" => Ok(Json(blocking(move || history(&daemon.images, &name)).await?).into_response()),
        "get" => save(daemon, vec![name]).await,
        _ => Err(ApiError::not_found(format!("page not found: GET /images/{rest}"))),
    }
}

/// `docker history`: the config's history, newest first, each entry that
/// made a layer with that layer's size.
fn history(store: &image::Store, name: &str) -> Result<Value, ApiError> {
    let record = store.resolve(name)?;
    let config = image::config::load(store, &record.id).map_err(|e| ApiError::internal(e.to_string()))?;
    let seconds = |time: Option<&String>| {
        time.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp())
    };
    let mut layers = record.layers.iter();
    let mut rows: Vec<Value> = match config.history() {
        Some(entries) if !entries.is_empty() => entries
            .iter()
            .map(|entry| {
                let size = match entry.empty_layer() {
                    Some(true) => 0,
                    _ => layers.next().map_or(0, |l| l.size),
                };
                json!({
                    "Id": "<missing>",
                    "Created": seconds(entry.created().as_ref()),
                    "CreatedBy": entry.created_by().clone().unwrap_or_default(),
                    "Tags": null,
                    "Size": size,
                    "Comment": entry.comment().clone().unwrap_or_default(),
                })
            })
            .collect(),
        // No history recorded: one row per layer.
        _ => layers
            .map(|l| {
                json!({
                    "Id": "<missing>",
                    "Created": seconds(record.created.as_ref()),
                    "CreatedBy": "",
                    "Tags": null,
                    "Size": l.size,
                    "Comment": "",
                })
            })
            .collect(),
    };
    rows.reverse();
    if let Some(newest) = rows.first_mut() {
        newest["Id"] = json!(record.id.to_string());
        newest["Tags"] = json!(store.tags_of(&record.id)?);
    }
    Ok(Value::Array(rows))
}

/// A blocking writer that hands what is written to a streamed response.
struct BodyWriter(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(data)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `docker save`: the images `names` mean, as a tar stream.
async fn save(daemon: Arc<Daemon>, names: Vec<String>) -> Result<Response, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given"));
    }
    let slot = daemon.streams.take_with_thread()?;
    let store = daemon.images.clone();
    let items = blocking(move || Ok(image::save::select(&store, &names)?)).await?;
    let (tx, rx) = mpsc::channel(16);
    let store = daemon.images.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let writer = std::io::BufWriter::with_capacity(256 * 1024, BodyWriter(tx.clone()));
        if let Err(e) = image::save::save(&store, &items, writer) {
            tracing::warn!("saving images: {e}");
            // Cut the stream short: the client must not take it for whole.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok(streaming(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        "application/x-tar",
    ))
}

/// `GET /images/get?names=a&names=b`.
pub async fn save_many(State(daemon): State<Arc<Daemon>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let names: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "names")
        .map(|(_, value)| value.into_owned())
        .collect();
    save(daemon, names).await
}

/// `POST /images/load`: a `docker save` tar or an OCI layout tar in the
/// body; answers with Docker's `Loaded image: …` lines.
pub async fn load(State(daemon): State<Arc<Daemon>>, request: axum::extract::Request) -> Result<Response, ApiError> {
    let scratch = daemon
        .images
        .root()
        .join("partial")
        .join(format!("upload.{}", crate::containers::random_hex(8)));
    let result = receive_and_load(&daemon, &scratch, request).await;
    let _ = tokio::fs::remove_file(&scratch).await;
    let loaded = result?;
    let mut lines = Vec::new();
    for image in &loaded {
        let id = image.record.id.to_string();
        if image.tags.is_empty() {
            lines.push(format!("Loaded image ID: {id}"));
        }
        for tag in &image.tags {
            lines.push(format!("Loaded image: {tag}"));
            daemon.events_log.emit("image", "load", &id, &[("name", tag)]);
        }
    }
    // Sent even with `quiet`, which silences progress only (as Docker does).
    let body: String = lines
        .iter()
        .map(|line| format!("{}\r\n", json!({ "stream": format!("{line}\n") })))
        .collect();
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Writes the request body to `scratch`, then loads the images in it.
async fn receive_and_load(
    daemon: &Arc<Daemon>,
    scratch: &std::path::Path,
    request: axum::extract::Request,
) -> Result<Vec<image::load::Loaded>, ApiError> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(scratch).await.map_err(ApiError::internal)?;
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = crate::api::next_chunk(&mut body).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the archive: {e}")))?;
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.sync_all().await.map_err(ApiError::internal)?;
    drop(file);
    let store = daemon.images.clone();
    let scratch = scratch.to_path_buf();
    blocking(move || {
        image::load::load(&store, &scratch).map_err(|e| match e {
            image::load::LoadError::Store(e) => ApiError::from(e),
            image::load::LoadError::Io { .. } => ApiError::internal(e),
            bad => ApiError::bad_request(bad.to_string()),
        })
    })
    .await
}

/// `POST /images/prune`: dangling images (or, with `dangling=false`, every
/// image no container uses).
pub async fn prune(
    State(daemon): State<Arc<Daemon>>,
    Query(query): Query<crate::api::FiltersQuery>,
) -> Result<Json<Value>, ApiError> {
    let filters = crate::containers::parse_filters(query.filters.as_deref())?;
    let mut all = false;
    for (key, values) in &filters {
        match (key.as_str(), values.as_slice()) {
            ("dangling", [v]) if v == "false" || v == "0" => all = true,
            ("dangling", [v]) if v == "true" || v == "1" => {}
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{other}': hull prunes images by 'dangling' only"
                )))
            }
        }
    }
    blocking(move || {
        let users = runtime::usage::images_in_use();
        let (lines, freed) = daemon.images.prune(all, &|id| users.contains_key(id))?;
        Ok(Json(json!({
            "ImagesDeleted": report(&daemon, &lines),
            "SpaceReclaimed": freed,
        })))
    })
    .await
}

/// Docker's `[{"Untagged": …}, {"Deleted": …}]` for the store's report
/// lines, each also an event.
fn report(daemon: &Daemon, lines: &[String]) -> Value {
    let items = lines
        .iter()
        .filter_map(|line| {
            let (kind, what) = line.split_once(": ")?;
            let action = if kind == "Deleted" { "delete" } else { "untag" };
            daemon.events_log.emit("image", action, what, &[("name", what)]);
            Some(json!({ kind: what }))
        })
        .collect();
    Value::Array(items)
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

/// `DELETE /images/{name}`: Docker's list of untagged and deleted images.
pub async fn remove(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(query): Query<crate::api::ForceQuery>,
) -> Result<Json<Value>, ApiError> {
    let force = flag(&query.force);
    blocking(move || {
        let users = runtime::usage::images_in_use();
        let lines = daemon
            .images
            .remove(&name, force, &|id| users.get(id).cloned().unwrap_or_default())?;
        Ok(Json(report(&daemon, &lines)))
    })
    .await
}
