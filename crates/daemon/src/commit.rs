//! Images made from containers and tarballs: `POST /commit` (`docker
//! commit`) and `POST /images/create?fromSrc=` (`docker import`). A commit
//! reads the container's writable layer through its VM (the agent's
//! `Layer` operation; a stopped container's VM is held for it, as for
//! `docker diff`); an import takes the request body or a URL. Both end in
//! `image::commit::create` with the run config the changes (`-c`) made.

use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use image::commit::{NewImage, NewImageError};
use image::ImageRef;
use serde_json::{json, Map, Value};

use crate::api::{blocking, ApiError};
use crate::daemon::Daemon;
use crate::store::ContainerRecord;

/// The query's parameters; `changes` may come many times.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, name: &str) -> String {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `repo` and `tag` as one normalized name to tag the new image with.
    fn tags(&self) -> Result<Vec<String>, ApiError> {
        let (repo, tag) = (self.get("repo"), self.get("tag"));
        if repo.is_empty() {
            if !tag.is_empty() {
                return Err(ApiError::bad_request("a tag needs a repository name"));
            }
            return Ok(Vec::new());
        }
        let name = if tag.is_empty() { repo } else { format!("{repo}:{tag}") };
        let reference = ImageRef::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if reference.digest().is_some() {
            return Err(ApiError::bad_request(format!(
                "invalid reference format: {name} names a digest, not a tag"
            )));
        }
        Ok(reference.familiar_tagged().into_iter().collect())
    }
}

fn new_image_error(e: NewImageError) -> ApiError {
    match e {
        NewImageError::Store(e) => e.into(),
        NewImageError::ParentConfig(_) => ApiError::internal(e),
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&changes=&pause=`:
/// the body, if any, is a run config that overrides the container's.
pub async fn commit(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::parse(query);
    let container = params.get("container");
    if container.is_empty() {
        return Err(ApiError::bad_request("no container given to commit"));
    }
    let tags = params.tags()?;
    let requested: Map<String, Value> = match serde_json::from_slice::<Value>(&body) {
        _ if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) => Map::new(),
        Ok(_) => return Err(ApiError::bad_request("the config to commit with must be a JSON object")),
        Err(e) => return Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
    };
    let id = blocking(move || {
        let record = daemon.containers.find(&container)?;
        let parent = daemon.images.image(
            &image::digest::Digest::parse(&record.image_id)
                .map_err(|e| ApiError::internal(format!("container {} names a bad image ID: {e}", record.id)))?,
        )?;
        let image_config = daemon.images.run_config(&parent.id)?;
        let mut config = container_run_config(image_config, &record);
        for (key, value) in requested {
            if !value.is_null() {
                config.insert(key, value);
            }
        }
        image::changes::apply(&mut config, &params.all("changes")).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Docker pauses the container unless told not to.
        let pause = !matches!(params.get("pause").as_str(), "0" | "false" | "False");
        let layer = read_layer(&daemon, &record, pause)?;
        let created_by = std::iter::once(record.path.as_str())
            .chain(record.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let new = NewImage {
            parent: Some(&parent),
            config,
            created: runtime::container::now_rfc3339(),
            created_by,
            author: params.get("author"),
            comment: params.get("comment"),
            container: Some(record.id.clone()),
            tags,
        };
        let made = image::commit::create(&daemon.images, &layer, new).map_err(|e| {
            let _ = std::fs::remove_file(&layer);
            new_image_error(e)
        })?;
        daemon.events_log.emit(
            "container",
            "commit",
            &record.id,
            &[("comment", &params.get("comment")), ("imageID", &made.id.to_string())],
        );
        Ok(made.id.to_string())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "Id": id }))).into_response())
}

/// The config a container ran with, as dockerd keeps it: the image's,
/// with what the container's create request set on top.
fn container_run_config(mut config: Map<String, Value>, record: &ContainerRecord) -> Map<String, Value> {
    // Key by key, as the image config is JSON too.
    let container = serde_json::to_value(&record.config).unwrap_or_default();
    let given = |key: &str| container.get(key).filter(|v| !v.is_null() && *v != "" && *v != false);
    if !record.process_env.is_empty() {
        config.insert("Env".into(), json!(record.process_env));
    }
    if let Some(entrypoint) = given("Entrypoint") {
        config.insert("Entrypoint".into(), entrypoint.clone());
        config.insert("Cmd".into(), given("Cmd").cloned().unwrap_or(Value::Null));
    } else if let Some(cmd) = given("Cmd") {
        config.insert("Cmd".into(), cmd.clone());
    }
    for key in [
        "WorkingDir",
        "User",
        "StopSignal",
        "Healthcheck",
        "Tty",
        "OpenStdin",
        "StdinOnce",
    ] {
        if let Some(value) = given(key) {
            config.insert(key.into(), value.clone());
        }
    }
    for key in ["Labels", "ExposedPorts", "Volumes"] {
        if let Some(Value::Object(extra)) = given(key) {
            let merged = config.entry(key).or_insert_with(|| json!({}));
            if !merged.is_object() {
                *merged = json!({});
            }
            if let Value::Object(merged) = merged {
                merged.extend(extra.clone());
            }
        }
    }
    config
}

/// The container's writable layer, through its VM, in a scratch file of
/// the image store; with `pause`, its processes are frozen meanwhile.
fn read_layer(daemon: &Daemon, record: &ContainerRecord, pause: bool) -> Result<std::path::PathBuf, ApiError> {
    let reach = crate::archive::reach(daemon, &record.id)?;
    let mut conn = crate::archive::open(&reach, proto::Control::Layer { pause })?;
    let path = image::commit::scratch_path(&daemon.images, "commit.tar");
    let mut file =
        std::fs::File::create(&path).map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
    let mut write_error = None;
    let outcome = crate::archive::finish(&mut conn, |data| match file.write_all(&data) {
        Ok(()) => true,
        Err(e) => {
            write_error = Some(e);
            false
        }
    });
    drop(reach); // a held VM ends once the layer is read
    let failure = match (write_error, outcome.code) {
        (Some(e), _) => Some(format!("writing {}: {e}", path.display())),
        (None, proto::ARCHIVE_OK) => None,
        (None, _) => Some(format!(
            "reading the container's writable layer: {}",
            outcome.message.trim()
        )),
    };
    if let Some(failure) = failure {
        let _ = std::fs::remove_file(&path);
        return Err(ApiError::internal(failure));
    }
    Ok(path)
}

/// `POST /images/create?fromSrc=-|URL&repo=&tag=&message=&changes=`: an
/// image of one layer, from the request body or a download.
pub async fn import(daemon: Arc<Daemon>, query: Option<String>, body: Body) -> Result<Response, ApiError> {
    let params = Params::parse(query);
    let source = params.get("fromSrc");
    let checked = params.tags().and_then(|tags| {
        let mut config = Map::new();
        image::changes::apply(&mut config, &params.all("changes"))
            .map(|()| (tags, config))
            .map_err(|e| ApiError::bad_request(e.to_string()))
    });
    let (tags, config) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // Read the tarball to its end first: a client still sending it
            // would see a broken pipe instead of the answer.
            let mut stream = body.into_data_stream();
            while let Some(Ok(_)) = crate::api::next_chunk(&mut stream).await {}
            return Err(e);
        }
    };
    let tarball = image::commit::scratch_path(&daemon.images, "import");
    let received = if source == "-" {
        receive(body, &tarball).await
    } else {
        image::commit::download(&source, &tarball)
            .await
            .map_err(new_image_error)
    };
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&tarball).await;
        return Err(e);
    }
    let message = params.get("message");
    let id = blocking(move || {
        let layer = image::commit::plain_layer(&daemon.images, &tarball);
        let _ = std::fs::remove_file(&tarball);
        let layer = layer.map_err(new_image_error)?;
        let new = NewImage {
            parent: None,
            config,
            created: runtime::container::now_rfc3339(),
            created_by: String::new(),
            author: String::new(),
            comment: if message.is_empty() {
                format!("Imported from {source}")
            } else {
                message
            },
            container: None,
            tags,
        };
        let made = image::commit::create(&daemon.images, &layer, new).map_err(|e| {
            let _ = std::fs::remove_file(&layer);
            new_image_error(e)
        })?;
        daemon.events_log.emit("image", "import", &made.id.to_string(), &[]);
        Ok(made.id.to_string())
    })
    .await?;
    let line = format!("{}\n", json!({ "status": id }));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], line).into_response())
}

/// Writes the request body to `path`.
async fn receive(body: Body, path: &std::path::Path) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = crate::api::next_chunk(&mut stream).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the tarball: {e}")))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_and_tag_name_the_new_image() {
        let params = |q: &str| Params::parse(Some(q.to_string()));
        assert_eq!(params("repo=app").tags().unwrap(), ["app:latest"]);
        assert_eq!(
            params("repo=registry.local:5000/app&tag=v2").tags().unwrap(),
            ["registry.local:5000/app:v2"]
        );
        assert!(params("").tags().unwrap().is_empty());
        assert!(params("tag=v1").tags().is_err());
        assert!(params("repo=UPPER").tags().is_err());
        let p = params("changes=CMD%20x&changes=ENV%20A%3D1&container=c");
        assert_eq!(p.all("changes"), ["CMD x", "ENV A=1"]);
        assert_eq!(p.get("container"), "c");
    }

    #[test]
    fn a_commit_keeps_what_the_container_was_created_with() {
        let record = ContainerRecord {
            id: "c".into(),
            name: "n".into(),
            created: String::new(),
            image: "img".into(),
            image_id: String::new(),
            path: "top".into(),
            args: vec![],
            config: serde_json::from_value(
                json!({"Entrypoint": ["top"], "Labels": {"b": "2"}, "User": "", "WorkingDir": "/w"}),
            )
            .unwrap(),
            host_config: Default::default(),
            restart_count: 0,
            manually_stopped: false,
            process_env: vec!["PATH=/bin".into(), "A=1".into()],
            process_workdir: "/w".into(),
            process_user: String::new(),
        };
        let image = json!({"Cmd": ["sh"], "Labels": {"a": "1"}, "User": "app"});
        let got = Value::Object(container_run_config(image.as_object().cloned().unwrap(), &record));
        assert_eq!(got["Entrypoint"], json!(["top"]));
        assert_eq!(
            got["Cmd"],
            Value::Null,
            "an entrypoint given at create drops the image's command"
        );
        assert_eq!(got["Labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(got["User"], "app", "an empty override keeps the image's");
        assert_eq!(got["WorkingDir"], "/w");
        assert_eq!(got["Env"], json!(["PATH=/bin", "A=1"]));
    }
}
