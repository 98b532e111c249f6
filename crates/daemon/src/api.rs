//! The Docker Engine API's frame: the router, API-version negotiation
//! (`/v1.NN/` prefixes, the `Api-Version` header), and errors in Docker's
//! shape (`{"message": "..."}` with the status code the CLI expects).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceExt;

use crate::daemon::Daemon;

/// The newest API version hulld speaks, and the oldest it accepts.
pub const API_VERSION: &str = "1.51";
pub const MIN_API_VERSION: &str = "1.24";

/// An error answered in Docker's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("{}", self.message);
        }
        (self.status, Json(json!({ "message": self.message }))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError as E;
        let status = match &e {
            E::NoSuchContainer(_) => StatusCode::NOT_FOUND,
            E::NameInUse { .. } => StatusCode::CONFLICT,
            E::Ambiguous(_) => StatusCode::BAD_REQUEST,
            E::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<image::StoreError> for ApiError {
    fn from(e: image::StoreError) -> ApiError {
        use image::StoreError as E;
        let status = match &e {
            E::NoSuchImage(_) => StatusCode::NOT_FOUND,
            E::Reference(_) | E::Digest(_) => StatusCode::BAD_REQUEST,
            E::InUse { .. } | E::MultipleTags { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<runtime::container::ContainerError> for ApiError {
    fn from(e: runtime::container::ContainerError) -> ApiError {
        use runtime::container::ContainerError;
        match e {
            ContainerError::NotRunning
            | ContainerError::Starting
            | ContainerError::Busy
            | ContainerError::NotLive(_)
            | ContainerError::NotMoved(_) => ApiError::conflict(e.to_string()),
            // A command that is missing or not executable is the request's
            // fault, as in Docker (its CLI then exits 127 or 126).
            ContainerError::DidNotStart {
                exit_code: Some(126 | 127),
                ..
            } => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e),
        }
    }
}

/// Runs blocking work (files, processes) off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("internal task failed: {e}")))?
}

/// The largest request body read whole (JSON configs); archives and images
/// are streamed instead, without a size limit, as dockerd does.
const MAX_BODY_BYTES: usize = 2 << 20;

/// How long a streamed upload (a tarball) may pause between two chunks.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// The next chunk of a streamed upload; an error when the client's body
/// breaks off or stalls for longer than `UPLOAD_IDLE`.
pub async fn next_chunk(body: &mut axum::body::BodyDataStream) -> Option<Result<axum::body::Bytes, String>> {
    use futures_util::StreamExt;
    match tokio::time::timeout(UPLOAD_IDLE, body.next()).await {
        Ok(chunk) => chunk.map(|c| c.map_err(|e| e.to_string())),
        Err(_) => Some(Err(format!("the client sent nothing for {} s", UPLOAD_IDLE.as_secs()))),
    }
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    use crate::{archive, containers, events, exec, images, monitor, networking, networks, streams, system, volumes};
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/auth", post(images::login))
        .route("/events", get(events::stream))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/rename", post(containers::rename))
        .route("/containers/{id}/update", post(crate::update::update))
        .route("/containers/{id}/resize", post(containers::resize))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/migrate", post(crate::migrate::migrate))
        .route("/containers/{id}/migrate/cancel", post(crate::migrate::cancel))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/stats", get(monitor::stats))
        .route("/containers/{id}/top", get(monitor::top))
        .route("/containers/{id}/policy", post(networking::set_policy))
        .route(
            "/containers/{id}/archive",
            get(archive::get).head(archive::stat).put(archive::put),
        )
        .route("/containers/{id}/export", get(archive::export))
        .route("/containers/{id}/changes", get(archive::changes))
        .route("/containers/{id}/logs", get(streams::logs))
        .route("/containers/{id}/attach", post(streams::attach))
        .route("/containers/{id}", delete(containers::remove))
        .route("/containers/{id}/{alias}", delete(crate::links::remove))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/commit", post(crate::commit::commit))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::pull))
        .route("/images/load", post(images::load))
        .route("/images/get", get(images::save_many))
        .route("/images/prune", post(images::prune))
        .route("/containers/prune", post(containers::prune))
        .route("/system/df", get(system::disk_usage))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route("/networks/{id}", get(networks::inspect).delete(networks::remove))
        .route("/networks/{id}/connect", post(crate::network_connect::connect))
        .route("/networks/{id}/disconnect", post(crate::network_connect::disconnect))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route("/volumes/{name}", get(volumes::inspect).delete(volumes::remove))
        .route("/build/prune", post(system::prune_build_cache))
        .route(
            "/images/{*rest}",
            get(images::get_by_name)
                .post(images::post_by_name)
                .delete(images::remove),
        )
        .fallback(|request: Request| async move {
            ApiError::not_found(format!("page not found: {} {}", request.method(), request.uri().path()))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

/// A query of only Docker's `filters` (JSON), for list and prune endpoints.
#[derive(Debug, serde::Deserialize)]
pub struct FiltersQuery {
    pub filters: Option<String>,
}

/// A query of only `force` (a Docker boolean), for remove endpoints.
#[derive(Debug, serde::Deserialize)]
pub struct ForceQuery {
    pub force: Option<String>,
}

/// Parses `1.44` into (1, 44).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Strips a `/v1.NN` prefix after checking the version, routes, and adds
/// the headers every Docker answer carries.
pub async fn dispatch(router: Router, mut request: Request) -> Result<Response, Infallible> {
    tracing::debug!("{} {}", request.method(), request.uri());
    collapse_slashes(&mut request);
    if let Err(refusal) = strip_version(&mut request) {
        return Ok(with_headers(refusal.into_response()));
    }
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's own refusal is plain text; clients expect Docker's JSON.
        let refusal = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large: at most {MAX_BODY_BYTES} bytes"),
        );
        return Ok(with_headers(refusal.into_response()));
    }
    Ok(with_headers(response))
}

/// `/containers//web/db` (the CLI's `rm --link /web/db`) as `/containers/web/db`:
/// no route has an empty segment.
fn collapse_slashes(request: &mut Request) {
    let path = request.uri().path();
    if !path.contains("//") {
        return;
    }
    let mut collapsed = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Ok(uri) = format!("{collapsed}{query}").parse::<Uri>() {
        *request.uri_mut() = uri;
    }
}

/// Docker's versioned paths: `/v1.44/containers/json` is routed as
/// `/containers/json`, refused outside the versions hull speaks.
pub fn strip_version(request: &mut Request) -> Result<(), ApiError> {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(());
    };
    let (version, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(wanted) = parse_version(version) else {
        return Ok(());
    };
    let oldest = parse_version(MIN_API_VERSION).unwrap_or((1, 24));
    let newest = parse_version(API_VERSION).unwrap_or((1, 51));
    if wanted < oldest {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if wanted > newest {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let uri: Uri = format!("/{tail}{query}")
        .parse()
        .map_err(|e| ApiError::bad_request(format!("bad request path: {e}")))?;
    *request.uri_mut() = uri;
    Ok(())
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    headers.insert("Ostype", HeaderValue::from_static("linux"));
    headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
    headers.insert(
        "Server",
        HeaderValue::from_static(concat!("hull/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    response
}

/// An empty answer with `status`.
pub fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// A streamed answer (logs, pull progress, events, wait) of `content_type`;
/// its headers go out at once.
pub fn streaming<S, B>(stream: S, content_type: &'static str) -> Response
where
    S: futures_util::Stream<Item = Result<B, std::io::Error>> + Send + 'static,
    B: Into<axum::body::Bytes> + 'static,
{
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Docker's content type for a container's streams: raw with a terminal,
/// multiplexed without.
pub fn stream_type(tty: bool) -> &'static str {
    match tty {
        true => "application/vnd.docker.raw-stream",
        false => "application/vnd.docker.multiplexed-stream",
    }
}

/// `101 Switching Protocols`: the connection now carries attach or exec streams.
pub fn hijacked(tty: bool) -> Result<Response, ApiError> {
    use axum::http::header;
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, stream_type(tty))
        .body(Body::empty())
        .map_err(ApiError::internal)
}

/// Docker's `label` filter: every wanted `KEY` is present, every
/// `KEY=VALUE` has that value.
pub fn labels_match(labels: &std::collections::BTreeMap<String, String>, wanted: &[String]) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|l| l == value),
        None => labels.contains_key(w),
    })
}

/// A boolean query parameter as Docker's clients send them (`1`, `true`).
pub fn flag(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("1" | "true" | "True" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_paths_are_stripped_and_checked() {
        let mut request = Request::builder()
            .uri("/v1.50/containers/json?all=1")
            .body(Body::empty())
            .unwrap();
        strip_version(&mut request).unwrap();
        assert_eq!(request.uri().to_string(), "/containers/json?all=1");
        let mut old = Request::builder().uri("/v1.12/info").body(Body::empty()).unwrap();
        let err = strip_version(&mut old).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("too old"), "{}", err.message);
        let mut new = Request::builder().uri("/v1.99/info").body(Body::empty()).unwrap();
        assert!(strip_version(&mut new).unwrap_err().message.contains("too new"));
        let mut plain = Request::builder().uri("/volumes/v1").body(Body::empty()).unwrap();
        strip_version(&mut plain).unwrap();
        assert_eq!(plain.uri().path(), "/volumes/v1");
    }
}
