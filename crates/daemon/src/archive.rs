//! A container's files: `docker cp` both ways (`HEAD`, `GET` and
//! `PUT /containers/{id}/archive`), `docker export` and `docker diff`. The
//! work happens inside the VM: hulld asks the agent (on its exec port) for
//! an archive operation, which runs chrooted in the container's root, and
//! relays the tar stream. A stopped container's VM is started for the
//! operation without its command (`runtime::held`) and ends with it.
//! Errors come back as Docker's: 404 for a missing path, 400 for an
//! extraction point that is not a directory.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use base64::Engine;
use proto::{read_frame, write_frame, ArchiveOp, Control, Frame, PathStat};
use runtime::container::{ContainerDir, RunStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{blocking, empty, flag, streaming, ApiError};
use crate::daemon::Daemon;
use crate::slots::StreamSlot;

/// The header `docker cp` reads a path's description from.
const PATH_STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

/// A VM with the container's files: its own run, or one held for this.
pub(crate) enum Reach {
    Running(ContainerDir),
    Held(runtime::held::HeldContainer),
}

impl Reach {
    fn id(&self) -> &str {
        match self {
            Reach::Running(dir) => &dir.id,
            Reach::Held(held) => &held.id,
        }
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        match self {
            Reach::Running(dir) => crate::exec::connect_agent(dir),
            Reach::Held(held) => crate::exec::connect_agent_at(&held.vsock_path(), &|| held.is_up()),
        }
    }
}

/// The container's files: through its running VM, or a VM held for the
/// operation if it is stopped (blocking: that VM starts first).
pub(crate) fn reach(daemon: &Daemon, reference: &str) -> Result<Reach, ApiError> {
    let record = daemon.containers.find(reference)?;
    crate::containers::needs_own_vm(&record.id, "reaching the container's files (cp, diff, export, commit)")?;
    let dir = ContainerDir::new(&record.id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match dir.state()? {
            Some(s) if s.paused => {
                return Err(ApiError::conflict(format!(
                    "Container {} is paused: hull reaches a container's files through its VM, unpause it first",
                    record.id
                )))
            }
            Some(s) if s.status == RunStatus::Running => return Ok(Reach::Running(dir)),
            _ => match runtime::held::HeldContainer::start(&dir) {
                Ok(held) => return Ok(Reach::Held(held)),
                // A supervisor that is just ending (or starting) has the disks
                // for a moment: look again.
                Err(runtime::container::ContainerError::Busy) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
}

/// Starts `op` in the container's VM.
pub(crate) fn open(reach: &Reach, request: Control) -> Result<UnixStream, ApiError> {
    crate::exec::request_agent(reach.connect(), request)
}

/// How an archive operation ended: its status and what it said on stderr.
pub(crate) struct Outcome {
    pub code: i32,
    pub message: String,
}

impl Outcome {
    /// Docker's answer for a failed operation on `path`.
    fn into_error(self, path: &str, container: &str) -> ApiError {
        match self.code {
            proto::ARCHIVE_NOT_FOUND => {
                ApiError::not_found(format!("Could not find the file {path} in container {container}"))
            }
            proto::ARCHIVE_NOT_A_DIRECTORY => ApiError::bad_request("extraction point is not a directory"),
            _ => ApiError::bad_request(self.message.trim().to_string()),
        }
    }
}

/// Reads an operation's frames to its end: standard output to `out`.
pub(crate) fn finish(conn: &mut UnixStream, mut out: impl FnMut(Vec<u8>) -> bool) -> Outcome {
    let mut message = String::new();
    let mut code = None;
    loop {
        match read_frame(conn) {
            Ok(Some(Frame::Stdout(data))) => {
                if !out(data) {
                    break; // the client went away
                }
            }
            Ok(Some(Frame::Stderr(data))) if message.len() < 4096 => message.push_str(&String::from_utf8_lossy(&data)),
            Ok(Some(Frame::Control(Control::Exited { code: c, signal }))) => {
                code = Some(proto::shell_status(c, signal));
                break;
            }
            Ok(Some(Frame::Control(Control::Failed { message: m, exit_code }))) => {
                message = m;
                code = Some(exit_code);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Outcome {
        code: code.unwrap_or(proto::ARCHIVE_FAILED),
        message: if message.is_empty() {
            "the container's VM ended the operation".into()
        } else {
            message
        },
    }
}

/// The stat of `path` in the container, as the header value Docker sends.
fn stat_header(reach: &Reach, path: &str) -> Result<HeaderValue, ApiError> {
    let mut conn = open(reach, Control::Archive(ArchiveOp::Stat { path: path.into() }))?;
    let mut answer = Vec::new();
    let outcome = finish(&mut conn, |data| {
        answer.extend_from_slice(&data);
        answer.len() < 64 * 1024
    });
    if outcome.code != proto::ARCHIVE_OK {
        return Err(outcome.into_error(path, reach.id()));
    }
    let stat: PathStat = serde_json::from_slice(&answer)
        .map_err(|e| ApiError::internal(format!("the agent's answer for {path}: {e}")))?;
    let json = serde_json::to_vec(&stat).map_err(ApiError::internal)?;
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(json)).map_err(ApiError::internal)
}

#[derive(Debug, Deserialize)]
pub struct ArchiveQuery {
    path: Option<String>,
    #[serde(rename = "noOverwriteDirNonDir")]
    no_overwrite_dir_non_dir: Option<String>,
}

impl ArchiveQuery {
    pub fn path(&self) -> Result<String, ApiError> {
        match self.path.as_deref() {
            Some(p) if !p.is_empty() => Ok(p.to_string()),
            _ => Err(ApiError::bad_request("path must not be empty")),
        }
    }
}

/// `HEAD /containers/{id}/archive`: the path's description only.
pub async fn stat(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let path = query.path()?;
    let header = blocking(move || stat_header(&reach(&daemon, &id)?, &path)).await?;
    let mut response = empty(StatusCode::OK);
    response.headers_mut().insert(PATH_STAT_HEADER, header);
    Ok(response)
}

/// Streams an archive operation's output as the response body (a held
/// VM lives until the stream ends).
fn stream_tar(reach: Reach, request: Control, what: String, slot: StreamSlot) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut conn = match open(&reach, request) {
            Ok(conn) => conn,
            Err(e) => return tracing::warn!("{what}: {e:?}"),
        };
        let outcome = finish(&mut conn, |data| tx.blocking_send(Ok(data.into())).is_ok());
        if outcome.code != proto::ARCHIVE_OK {
            // The status line is gone: cutting the stream short is all that is left.
            tracing::warn!("{what}: {}", outcome.message.trim());
            let _ = tx.blocking_send(Err(std::io::Error::other(outcome.message)));
        }
    });
    streaming(tokio_stream::wrappers::ReceiverStream::new(rx), "application/x-tar")
}

/// `GET /containers/{id}/archive`: a tar stream of the path.
pub async fn get(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let path = query.path()?;
    let slot = daemon.streams.take_with_thread()?;
    let (reach, header) = blocking({
        let path = path.clone();
        move || {
            let reach = reach(&daemon, &id)?;
            let header = stat_header(&reach, &path)?;
            Ok((reach, header))
        }
    })
    .await?;
    let what = format!("copying {path} out of {}", reach.id());
    let mut response = stream_tar(reach, Control::Archive(ArchiveOp::Get { path }), what, slot);
    response.headers_mut().insert(PATH_STAT_HEADER, header);
    Ok(response)
}

/// `GET /containers/{id}/export`: the whole root filesystem as a tar stream.
pub async fn export(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let slot = daemon.streams.take_with_thread()?;
    let reach = blocking(move || reach(&daemon, &id)).await?;
    let what = format!("exporting {}", reach.id());
    Ok(stream_tar(reach, Control::Archive(ArchiveOp::Export), what, slot))
}

/// `PUT /containers/{id}/archive`: unpacks the request's tar stream into
/// the directory `path`.
pub async fn put(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
    Query(query): Query<ArchiveQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let path = query.path()?;
    let op = ArchiveOp::Put {
        path: path.clone(),
        no_overwrite_dir_non_dir: flag(&query.no_overwrite_dir_non_dir),
    };
    let (mut conn, reach) = blocking(move || {
        let reach = reach(&daemon, &id)?;
        let conn = open(&reach, Control::Archive(op))?;
        Ok((conn, reach))
    })
    .await?;
    let container = reach.id().to_string();
    // Request body → standard input frames, written on a thread.
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let stream = &mut conn;
        let mut sent = true;
        while let Some(chunk) = rx.blocking_recv() {
            sent = chunk
                .chunks(proto::CHUNK)
                .all(|c| write_frame(stream, &Frame::Stdin(c.to_vec())).is_ok());
            if !sent {
                break;
            }
        }
        if sent {
            let _ = write_frame(stream, &Frame::StdinEof);
            let _ = stream.flush();
        }
        let outcome = finish(stream, |_| true);
        drop(reach); // a held VM ends once its work is done
        outcome
    });
    let mut body = request.into_body().into_data_stream();
    let mut body_error = None;
    while let Some(chunk) = crate::api::next_chunk(&mut body).await {
        match chunk {
            Ok(data) => {
                if tx.send(data).await.is_err() {
                    break; // the operation ended early; its outcome says why
                }
            }
            Err(e) => {
                body_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let outcome = writer.await.map_err(ApiError::internal)?;
    if let Some(e) = body_error {
        return Err(ApiError::bad_request(format!("reading the archive: {e}")));
    }
    if outcome.code != proto::ARCHIVE_OK {
        return Err(outcome.into_error(&path, &container));
    }
    Ok(empty(StatusCode::OK))
}

/// The most a `docker diff` holds in hulld (paths and their kinds).
const MAX_CHANGES_LISTED: usize = 256 << 20;

/// `GET /containers/{id}/changes`: `docker diff`.
pub async fn changes(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let changes = blocking(move || {
        let reach = reach(&daemon, &id)?;
        let mut conn = open(&reach, Control::Diff)?;
        let mut changes = Vec::new();
        let mut listed = 0usize;
        loop {
            match read_frame(&mut conn) {
                Ok(Some(Frame::Control(Control::Changes { changes: part }))) => {
                    // The guest says how long the list is: hulld bounds what it holds.
                    listed = part.iter().fold(listed, |n, c| n.saturating_add(c.path.len() + 16));
                    if listed > MAX_CHANGES_LISTED {
                        return Err(ApiError::internal(format!(
                            "the container's changes are more than hulld lists ({} MiB of paths); docker export reads them all",
                            MAX_CHANGES_LISTED >> 20
                        )));
                    }
                    changes.extend(part)
                }
                Ok(Some(Frame::Control(Control::Exited { .. }))) => break,
                Ok(other) => {
                    return Err(ApiError::internal(format!(
                        "the agent's list of changes ended with {other:?}"
                    )))
                }
                Err(e) => return Err(ApiError::internal(format!("the agent's list of changes: {e}"))),
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Both);
        Ok(changes)
    })
    .await?;
    let list: Vec<Value> = changes
        .iter()
        .map(|c| json!({ "Path": c.path, "Kind": c.kind }))
        .collect();
    Ok(Json(Value::Array(list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_get_dockers_answers() {
        let outcome = |code: i32| Outcome {
            code,
            message: "cannot overwrite\n".into(),
        };
        let status = |e: ApiError| e.status;
        assert_eq!(
            status(outcome(proto::ARCHIVE_NOT_FOUND).into_error("/x", "c")),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(outcome(proto::ARCHIVE_NOT_A_DIRECTORY).into_error("/x", "c")),
            StatusCode::BAD_REQUEST
        );
        let other = outcome(proto::ARCHIVE_FAILED).into_error("/x", "c");
        assert_eq!(other.message, "cannot overwrite");
        let missing = ArchiveQuery {
            path: None,
            no_overwrite_dir_non_dir: None,
        };
        assert!(missing.path().is_err());
    }
}
