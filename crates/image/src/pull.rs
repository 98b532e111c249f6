//! Pulling an image over the OCI distribution API (`oci-client` speaks
//! HTTP, the `WWW-Authenticate` token flow and basic auth): the manifest
//! (an index or manifest list resolves to linux/amd64), the config and the
//! layers, several at once. Every blob streams into `partial/`, is checked
//! for its declared size and digest while it arrives, and only then moves
//! into the store. An interrupted download resumes with a range request.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
pub use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::store::{flock_exclusive, ImageRecord, LayerRecord, Store, StoreError, MAX_DOCUMENT};

/// Media types a pull accepts for the manifest, most preferred first.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Layers downloaded at once.
const PARALLEL_LAYERS: usize = 3;
/// Tries per blob before a broken transfer fails the pull (each resumes).
const DOWNLOAD_ATTEMPTS: u32 = 3;
pub const PLATFORM_OS: &str = "linux";
pub const PLATFORM_ARCH: &str = "amd64";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("manifest for {0} not found: manifest unknown")]
    ManifestUnknown(String),
    #[error("pull access denied for {0}, repository does not exist or may require authentication")]
    Denied(String),
    #[error("no matching manifest for {PLATFORM_OS}/{PLATFORM_ARCH} in the manifest list entries of {0}")]
    NoPlatform(String),
    #[error("unsupported manifest for {reference}: {detail}")]
    Unsupported { reference: String, detail: String },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("blob {digest}: {detail}")]
    Blob { digest: Digest, detail: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What a pull reports as it goes, per blob (`id` is the short digest, as
/// Docker shows layer IDs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    Resolved { manifest: Digest, layers: usize },
    AlreadyExists { id: String },
    Waiting { id: String, total: u64 },
    Downloading { id: String, current: u64, total: u64 },
    Complete { id: String },
    Done { id: Digest, digest: Digest },
}

pub type Progress = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// Credentials for the registry from the user's Docker config
/// (`~/.docker/config.json`, or `$DOCKER_CONFIG/config.json`), else none.
pub fn credentials(reference: &ImageRef) -> RegistryAuth {
    let server = match reference.registry() {
        "docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    match docker_credential::get_credential(server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => RegistryAuth::Bearer(token),
        Err(_) => RegistryAuth::Anonymous,
    }
}

fn client_for(reference: &ImageRef) -> Client {
    let protocol = if reference.insecure_registry_allowed() {
        ClientProtocol::HttpsExcept(vec![reference.registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
}

fn registry_error(reference: &ImageRef, e: OciDistributionError) -> PullError {
    match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NotFound))
            {
                return PullError::ManifestUnknown(reference.to_string());
            }
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::NameUnknown | OciErrorCode::Unauthorized | OciErrorCode::Denied
                )
            }) {
                return PullError::Denied(reference.familiar_repository());
            }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            return PullError::ManifestUnknown(reference.to_string());
        }
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            return PullError::Denied(reference.familiar_repository());
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            return PullError::ManifestUnknown(reference.to_string());
        }
        _ => {}
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        detail = format!("{detail}: {inner}");
        source = inner.source();
    }
    PullError::Registry {
        registry: reference.registry().to_string(),
        detail,
    }
}

/// Checks a login the way `docker login` does: the registry's `/v2/`
/// with the credentials, and, when it answers with a bearer challenge, a
/// token from its token service with them. `server` is `host[:port]`.
pub async fn check_login(server: &str, user: &str, password: &str) -> Result<(), PullError> {
    let failed = |detail: String| PullError::Registry {
        registry: server.to_string(),
        detail,
    };
    let probe = ImageRef::parse(&format!("{server}/hull-login-check")).map_err(|e| failed(e.to_string()))?;
    let scheme = if probe.insecure_registry_allowed() {
        "http"
    } else {
        "https"
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let answer = client
        .get(format!("{scheme}://{server}/v2/"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if answer.status().is_success() {
        return Ok(());
    }
    let challenge = answer
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let denied = || PullError::Registry {
        registry: server.to_string(),
        detail: "login failed: unauthorized: incorrect username or password".into(),
    };
    let Some(params) = challenge.strip_prefix("Bearer ") else {
        return Err(denied());
    };
    // realm="…",service="…": ask the token service with the credentials.
    let field = |name: &str| {
        params.split(',').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
    };
    let realm = field("realm").ok_or_else(denied)?;
    let mut request = client.get(&realm).basic_auth(user, Some(password));
    if let Some(service) = field("service") {
        request = request.query(&[("service", service)]);
    }
    let token = request.send().await.map_err(|e| failed(e.to_string()))?;
    match token.status().is_success() {
        true => Ok(()),
        false => Err(denied()),
    }
}

/// Pulls `reference` into `store` with `auth`, tags it, and returns its record.
pub async fn pull(
    store: Arc<Store>,
    reference: &ImageRef,
    auth: RegistryAuth,
    progress: Progress,
) -> Result<ImageRecord, PullError> {
    let client = Arc::new(client_for(reference));
    let oci_ref = reference.oci().clone();
    let (bytes, _) = client
        .pull_manifest_raw(&oci_ref, &auth, MANIFEST_TYPES)
        .await
        .map_err(|e| registry_error(reference, e))?;
    let first = document(reference, &bytes)?;
    store.put_blob(&first.0, &bytes)?;
    // An index (manifest list) names one manifest per platform.
    let (manifest_digest, manifest_bytes, repo_digest) = match first.1 {
        Document::Index(index) => {
            let entry = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == PLATFORM_OS && p.architecture().to_string() == PLATFORM_ARCH
                    })
                })
                .ok_or_else(|| PullError::NoPlatform(reference.to_string()))?;
            let digest = Digest::parse(entry.digest().as_ref()).map_err(|e| PullError::Unsupported {
                reference: reference.to_string(),
                detail: e.to_string(),
            })?;
            let (bytes, _) = client
                .pull_manifest_raw(&oci_ref.clone_with_digest(digest.to_string()), &auth, MANIFEST_TYPES)
                .await
                .map_err(|e| registry_error(reference, e))?;
            if Digest::of(&bytes) != digest {
                return Err(PullError::Blob {
                    digest,
                    detail: "the registry sent a manifest with another digest".into(),
                });
            }
            store.put_blob(&digest, &bytes)?;
            (digest, bytes.to_vec(), first.0)
        }
        Document::Manifest(_) => (first.0.clone(), bytes.to_vec(), first.0),
    };
    let Document::Manifest(manifest) = document(reference, &manifest_bytes)?.1 else {
        return Err(PullError::Unsupported {
            reference: reference.to_string(),
            detail: "an index points at another index".into(),
        });
    };
    progress(PullEvent::Resolved {
        manifest: manifest_digest.clone(),
        layers: manifest.layers().len(),
    });

    let descriptor = |d: &oci_spec::image::Descriptor| -> Result<(Digest, u64, String), PullError> {
        let digest = Digest::parse(d.digest().as_ref()).map_err(|e| PullError::Unsupported {
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
        Ok((digest, d.size(), d.media_type().to_string()))
    };
    let (config_digest, config_size, _) = descriptor(manifest.config())?;
    if config_size > MAX_DOCUMENT {
        return Err(PullError::Blob {
            digest: config_digest,
            detail: format!("config of {config_size} bytes is over the {MAX_DOCUMENT}-byte limit"),
        });
    }
    let layers: Vec<(Digest, u64, String)> = manifest.layers().iter().map(descriptor).collect::<Result<_, _>>()?;

    let mut blobs = vec![(config_digest.clone(), config_size)];
    blobs.extend(layers.iter().map(|(d, s, _)| (d.clone(), *s)));
    futures_util::stream::iter(blobs.into_iter().map(|(digest, size)| {
        let (client, store, progress, oci_ref) = (client.clone(), store.clone(), progress.clone(), oci_ref.clone());
        async move { fetch_blob(&client, &oci_ref, &store, &digest, size, &progress).await }
    }))
    .buffer_unordered(PARALLEL_LAYERS)
    .try_collect::<Vec<()>>()
    .await?;

    let config_bytes = store.read_document(&config_digest)?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| PullError::Unsupported {
        reference: reference.to_string(),
        detail: format!("image config: {e}"),
    })?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PullError::Unsupported {
            reference: reference.to_string(),
            detail: format!("image config diff_ids: {e}"),
        })?;
    if diff_ids.len() != layers.len() {
        return Err(PullError::Unsupported {
            reference: reference.to_string(),
            detail: format!("{} layers but {} diff_ids in the config", layers.len(), diff_ids.len()),
        });
    }
    let record = ImageRecord {
        id: config_digest,
        manifest: manifest_digest,
        repo_digests: vec![format!("{}@{repo_digest}", reference.familiar_repository())],
        layers: layers
            .into_iter()
            .map(|(digest, size, media_type)| LayerRecord {
                digest,
                size,
                media_type,
            })
            .collect(),
        diff_ids,
        created: config.created().clone(),
        architecture: config.architecture().to_string(),
        os: config.os().to_string(),
    };
    let tags: Vec<String> = reference.familiar_tagged().into_iter().collect();
    store.put_image(&record, &tags)?;
    progress(PullEvent::Done {
        id: record.id.clone(),
        digest: repo_digest,
    });
    Ok(record)
}

enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest or index, bounded in size, and returns its digest.
fn document(reference: &ImageRef, bytes: &[u8]) -> Result<(Digest, Document), PullError> {
    let unsupported = |detail: String| PullError::Unsupported {
        reference: reference.to_string(),
        detail,
    };
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(unsupported(format!("manifest of {} bytes is too large", bytes.len())));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| unsupported(e.to_string()))?;
    let document = if value.get("manifests").is_some() {
        Document::Index(Box::new(
            serde_json::from_value(value).map_err(|e| unsupported(e.to_string()))?,
        ))
    } else if value.get("layers").is_some() {
        Document::Manifest(Box::new(
            serde_json::from_value(value).map_err(|e| unsupported(e.to_string()))?,
        ))
    } else {
        let version = value.get("schemaVersion").and_then(|v| v.as_i64()).unwrap_or(0);
        return Err(unsupported(format!(
            "schema version {version} manifests are not supported (only Docker schema 2 and OCI)"
        )));
    };
    Ok((Digest::of(bytes), document))
}

/// Downloads one blob into the store unless it is there; resumes a partial
/// download left by an earlier pull.
async fn fetch_blob(
    client: &Client,
    oci_ref: &oci_client::Reference,
    store: &Arc<Store>,
    digest: &Digest,
    size: u64,
    progress: &Progress,
) -> Result<(), PullError> {
    let id = digest.short().to_string();
    if store.has_blob(digest, Some(size)) {
        progress(PullEvent::AlreadyExists { id });
        return Ok(());
    }
    progress(PullEvent::Waiting {
        id: id.clone(),
        total: size,
    });
    let blob_err = |detail: String| PullError::Blob {
        digest: digest.clone(),
        detail,
    };
    let partial_path = store.partial_path(digest);
    // Another pull of the same blob holds this lock; wait for it.
    let partial = {
        let path = partial_path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)?;
            flock_exclusive(&file)?;
            Ok(file)
        })
        .await
        .map_err(|e| blob_err(e.to_string()))?
        .map_err(|e| blob_err(format!("opening {}: {e}", partial_path.display())))?
    };
    if store.has_blob(digest, Some(size)) {
        progress(PullEvent::AlreadyExists { id });
        return Ok(());
    }
    let mut partial = partial;
    let mut attempt = 1;
    loop {
        match download(client, oci_ref, digest, size, &mut partial, progress).await? {
            Attempt::Complete => break,
            // What arrived stays in partial/: the next attempt (or pull) resumes from there.
            Attempt::Interrupted(why) if attempt >= DOWNLOAD_ATTEMPTS => return Err(blob_err(why)),
            Attempt::Interrupted(_) => attempt += 1,
        }
    }
    // Renamed while still locked, so a waiting pull finds the blob in place.
    store.commit_blob(digest, &partial_path)?;
    drop(partial);
    progress(PullEvent::Complete { id });
    Ok(())
}

enum Attempt {
    Complete,
    Interrupted(String),
}

/// One attempt at bringing `partial` up to the whole blob, resuming from
/// what it holds. A mismatched digest empties it and is an error.
async fn download(
    client: &Client,
    oci_ref: &oci_client::Reference,
    digest: &Digest,
    size: u64,
    partial: &mut File,
    progress: &Progress,
) -> Result<Attempt, PullError> {
    let id = digest.short().to_string();
    let blob_err = |detail: String| PullError::Blob {
        digest: digest.clone(),
        detail,
    };
    let mut hasher = Sha256::new();
    let mut have = partial.metadata().map(|m| m.len()).unwrap_or(0);
    if have > size {
        partial.set_len(0).map_err(|e| blob_err(e.to_string()))?;
        have = 0;
    }
    if have > 0 {
        // Resuming: the digest must cover the bytes already there.
        partial.seek(SeekFrom::Start(0)).map_err(|e| blob_err(e.to_string()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut reader = (&*partial).take(have);
        loop {
            let n = reader.read(&mut buf).map_err(|e| blob_err(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let stream: SizedStream = if have == 0 || have == size {
        if have == size {
            partial.set_len(0).map_err(|e| blob_err(e.to_string()))?;
            hasher = Sha256::new();
            have = 0;
        }
        client
            .pull_blob_stream(oci_ref, digest.to_string().as_str())
            .await
            .map_err(|e| blob_err(e.to_string()))?
    } else {
        match client
            .pull_blob_stream_partial(oci_ref, digest.to_string().as_str(), have, None)
            .await
            .map_err(|e| blob_err(e.to_string()))?
        {
            BlobResponse::Partial(stream) => stream,
            BlobResponse::Full(stream) => {
                // The registry ignored the range: start over.
                partial.set_len(0).map_err(|e| blob_err(e.to_string()))?;
                hasher = Sha256::new();
                have = 0;
                stream
            }
        }
    };
    partial
        .seek(SeekFrom::Start(have))
        .map_err(|e| blob_err(e.to_string()))?;
    let mut written = have;
    let mut last_report = 0u64;
    let mut chunks = stream.stream;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // With every byte in, the client's own digest check failed: ours below decides.
            Err(_) if written == size => break,
            Err(e) => {
                return Ok(Attempt::Interrupted(format!(
                    "download interrupted after {written} bytes: {e}"
                )));
            }
        };
        if written + chunk.len() as u64 > size {
            partial.set_len(0).map_err(|e| blob_err(e.to_string()))?;
            return Err(blob_err(format!(
                "the registry sent more than the declared {size} bytes"
            )));
        }
        hasher.update(&chunk);
        partial
            .write_all(&chunk)
            .map_err(|e| blob_err(format!("writing: {e}")))?;
        written += chunk.len() as u64;
        if written - last_report >= 256 * 1024 || written == size {
            last_report = written;
            progress(PullEvent::Downloading {
                id: id.clone(),
                current: written,
                total: size,
            });
        }
    }
    if written != size {
        return Ok(Attempt::Interrupted(format!(
            "download ended after {written} of {size} bytes"
        )));
    }
    let actual = Digest::from_hasher(hasher);
    if &actual != digest {
        partial.set_len(0).map_err(|e| blob_err(e.to_string()))?;
        return Err(blob_err(format!("content hashes to {actual}; rejected")));
    }
    Ok(Attempt::Complete)
}

/// `pull` for callers without an async runtime of their own.
pub fn pull_blocking(store: Arc<Store>, reference: &ImageRef, progress: Progress) -> Result<ImageRecord, PullError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| PullError::Registry {
            registry: reference.registry().to_string(),
            detail: format!("starting the network runtime: {e}"),
        })?;
    runtime.block_on(pull(store, reference, credentials(reference), progress))
}
