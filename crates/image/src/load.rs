//! `hull load`: images from `docker save` tarballs (the classic
//! `manifest.json` layout, which Docker 25+ writes beside an OCI layout) and
//! from OCI image layouts, as a directory or a tar. Every blob is hashed as
//! it is copied in; one whose content does not match its name is refused.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::pull::{PLATFORM_ARCH, PLATFORM_OS};
use crate::reference::ImageRef;
use crate::store::{ImageRecord, LayerRecord, Store, StoreError, MAX_DOCUMENT};
use crate::unpack::{self, path_parts, resolve_in_root};

/// The media type of a layer stored as a plain tar (its digest is its diff ID).
pub const PLAIN_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: neither a docker save archive (manifest.json) nor an OCI image layout (index.json)")]
    UnknownFormat { path: PathBuf },
    #[error("{path} in the archive: {detail}")]
    Bad { path: String, detail: String },
    #[error("the archive is damaged: {0}")]
    Archive(#[from] unpack::UnpackError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::Io { what, source }
}

/// One loaded image and the tags it arrived with.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: ImageRecord,
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Loads every image in `input` (a tar file, or a directory), under the
/// names it carries.
pub fn load(store: &Store, input: &Path) -> Result<Vec<Loaded>, LoadError> {
    load_as(store, input, true)
}

/// [`load`], the names it carries ignored: what another host sends takes
/// no name of this one's.
pub fn load_untagged(store: &Store, input: &Path) -> Result<Vec<Loaded>, LoadError> {
    load_as(store, input, false)
}

/// Numbers this process's loads, whose scratch files must not meet.
static NEXT_LOAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn load_as(store: &Store, input: &Path, keep_tags: bool) -> Result<Vec<Loaded>, LoadError> {
    let token = NEXT_LOAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let meta = fs::metadata(input).map_err(io_err(format!("reading {}", input.display())))?;
    if meta.is_dir() {
        return load_dir(store, input, keep_tags, token);
    }
    // A tar is unpacked (safely: it is untrusted) into a scratch directory.
    let scratch = store
        .root()
        .join("partial")
        .join(format!("load.{}.{token}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).map_err(io_err(format!("creating {}", scratch.display())))?;
    let result = File::open(input)
        .map_err(io_err(format!("opening {}", input.display())))
        .and_then(|file| Ok(unpack::apply_layer(&scratch, file)?))
        .and_then(|_| load_dir(store, &scratch, keep_tags, token));
    let _ = fs::remove_dir_all(&scratch);
    result
}

struct Layout<'a> {
    root: &'a Path,
    store: &'a Store,
    /// Whether the images take the names the input carries.
    keep_tags: bool,
    /// This load's number, in its scratch files' names.
    token: u64,
}

impl Layout<'_> {
    fn path(&self, relative: &str) -> Result<PathBuf, LoadError> {
        resolve_in_root(self.root, &path_parts(Path::new(relative)), true).map_err(|e| LoadError::Bad {
            path: relative.to_string(),
            detail: e.to_string(),
        })
    }

    fn document(&self, relative: &str) -> Result<Vec<u8>, LoadError> {
        let path = self.path(relative)?;
        let file = File::open(&path).map_err(|e| LoadError::Bad {
            path: relative.to_string(),
            detail: e.to_string(),
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("reading {relative}")))?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(LoadError::Bad {
                path: relative.to_string(),
                detail: "document too large".into(),
            });
        }
        Ok(bytes)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, relative: &str) -> Result<(T, Vec<u8>), LoadError> {
        let bytes = self.document(relative)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| LoadError::Bad {
            path: relative.to_string(),
            detail: e.to_string(),
        })?;
        Ok((value, bytes))
    }

    /// Copies a file into the store, hashing it; `expected` must match if given.
    fn import(&self, relative: &str, expected: Option<&Digest>) -> Result<(Digest, u64), LoadError> {
        let path = self.path(relative)?;
        let mut source = File::open(&path).map_err(|e| LoadError::Bad {
            path: relative.to_string(),
            detail: e.to_string(),
        })?;
        let tmp = self.store.root().join("partial").join(format!(
            "import.{}.{}.{}",
            std::process::id(),
            self.token,
            relative.replace('/', "_")
        ));
        let mut out = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = source.read(&mut buf).map_err(io_err(format!("reading {relative}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_err(format!("writing {}", tmp.display())))?;
            size += n as u64;
        }
        drop(out);
        let digest = Digest::from_hasher(hasher);
        if expected.is_some_and(|e| e != &digest) {
            let _ = fs::remove_file(&tmp);
            return Err(LoadError::Bad {
                path: relative.to_string(),
                detail: format!(
                    "content hashes to {digest}, not {}",
                    expected.map(|e| e.to_string()).unwrap_or_default()
                ),
            });
        }
        if self.store.has_blob(&digest, Some(size)) {
            let _ = fs::remove_file(&tmp);
        } else {
            self.store.commit_blob(&digest, &tmp)?;
        }
        Ok((digest, size))
    }

    fn blob_document(&self, digest: &Digest) -> Result<Vec<u8>, LoadError> {
        let relative = format!("blobs/sha256/{}", digest.hex());
        let bytes = self.document(&relative)?;
        self.store.put_blob(digest, &bytes)?;
        Ok(bytes)
    }
}

fn load_dir(store: &Store, root: &Path, keep_tags: bool, token: u64) -> Result<Vec<Loaded>, LoadError> {
    let layout = Layout {
        root,
        store,
        keep_tags,
        token,
    };
    if root.join("manifest.json").is_file() {
        load_docker_save(&layout)
    } else if root.join("index.json").is_file() {
        load_oci_layout(&layout)
    } else {
        Err(LoadError::UnknownFormat {
            path: root.to_path_buf(),
        })
    }
}

fn load_docker_save(layout: &Layout) -> Result<Vec<Loaded>, LoadError> {
    let (entries, _): (Vec<SaveEntry>, _) = layout.json("manifest.json")?;
    let mut loaded = Vec::new();
    for entry in entries {
        let (config, config_bytes): (ImageConfiguration, _) = layout.json(&entry.config)?;
        let config_digest = Digest::of(&config_bytes);
        layout.store.put_blob(&config_digest, &config_bytes)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (digest, size) = layout.import(layer, None)?;
            layers.push(LayerRecord {
                digest,
                size,
                media_type: PLAIN_LAYER.into(),
            });
        }
        // The classic format has no manifest: write the one a registry would serve.
        let manifest_digest = write_manifest(layout.store, &config_bytes, &config_digest, &layers)?;
        let tags = match layout.keep_tags {
            true => normalize_tags(entry.repo_tags.unwrap_or_default())?,
            false => Vec::new(),
        };
        loaded.push(finish(
            layout.store,
            &config,
            config_digest,
            manifest_digest,
            layers,
            tags,
        )?);
    }
    Ok(loaded)
}

fn load_oci_layout(layout: &Layout) -> Result<Vec<Loaded>, LoadError> {
    let (index, _): (ImageIndex, _) = layout.json("index.json")?;
    let mut loaded = Vec::new();
    for descriptor in index.manifests() {
        let annotations = descriptor.annotations().clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        let mut digest = parse_digest(descriptor.digest().as_ref())?;
        let mut bytes = layout.blob_document(&digest)?;
        // A nested index (multi-platform): take linux/amd64.
        if let Ok(nested) = serde_json::from_slice::<ImageIndex>(&bytes) {
            if !nested.manifests().is_empty() && !String::from_utf8_lossy(&bytes).contains("\"layers\"") {
                let entry = nested
                    .manifests()
                    .iter()
                    .find(|m| {
                        m.platform().as_ref().is_some_and(|p| {
                            p.os().to_string() == PLATFORM_OS && p.architecture().to_string() == PLATFORM_ARCH
                        })
                    })
                    .ok_or_else(|| LoadError::Bad {
                        path: format!("blobs/sha256/{}", digest.hex()),
                        detail: format!("no {PLATFORM_OS}/{PLATFORM_ARCH} manifest in the index"),
                    })?;
                digest = parse_digest(entry.digest().as_ref())?;
                bytes = layout.blob_document(&digest)?;
            }
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| LoadError::Bad {
            path: format!("blobs/sha256/{}", digest.hex()),
            detail: e.to_string(),
        })?;
        let config_digest = parse_digest(manifest.config().digest().as_ref())?;
        let config_bytes = layout.blob_document(&config_digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| LoadError::Bad {
            path: format!("blobs/sha256/{}", config_digest.hex()),
            detail: e.to_string(),
        })?;
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            let expected = parse_digest(layer.digest().as_ref())?;
            let (digest, size) = layout.import(&format!("blobs/sha256/{}", expected.hex()), Some(&expected))?;
            layers.push(LayerRecord {
                digest,
                size,
                media_type: layer.media_type().to_string(),
            });
        }
        let tags = match name {
            // A bare tag in an OCI layout has no repository to go with it.
            Some(name) if layout.keep_tags && (name.contains('/') || name.contains(':')) => normalize_tags(vec![name])?,
            _ => Vec::new(),
        };
        loaded.push(finish(layout.store, &config, config_digest, digest, layers, tags)?);
    }
    Ok(loaded)
}

/// Stores the manifest a registry would serve for an image that arrived
/// without one (the classic save format, commit, import).
pub(crate) fn write_manifest(
    store: &Store,
    config_bytes: &[u8],
    config_digest: &Digest,
    layers: &[LayerRecord],
) -> Result<Digest, StoreError> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config_bytes.len(),
            "digest": config_digest.to_string(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "size": l.size, "digest": l.digest.to_string(),
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = manifest.to_string().into_bytes();
    let manifest_digest = Digest::of(&manifest_bytes);
    store.put_blob(&manifest_digest, &manifest_bytes)?;
    Ok(manifest_digest)
}

fn parse_digest(text: &str) -> Result<Digest, LoadError> {
    Digest::parse(text).map_err(|e| LoadError::Bad {
        path: "descriptor".into(),
        detail: e.to_string(),
    })
}

fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>, LoadError> {
    tags.iter()
        .map(|t| {
            ImageRef::parse(t)
                .ok()
                .and_then(|r| r.familiar_tagged())
                .ok_or_else(|| LoadError::Bad {
                    path: "manifest.json".into(),
                    detail: format!("invalid tag {t:?}"),
                })
        })
        .collect()
}

fn finish(
    store: &Store,
    config: &ImageConfiguration,
    id: Digest,
    manifest: Digest,
    layers: Vec<LayerRecord>,
    tags: Vec<String>,
) -> Result<Loaded, LoadError> {
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| parse_digest(d))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers.len() {
        return Err(LoadError::Bad {
            path: format!("config {id}"),
            detail: format!("{} layers but {} diff_ids", layers.len(), diff_ids.len()),
        });
    }
    let record = ImageRecord {
        id,
        manifest,
        repo_digests: Vec::new(),
        layers,
        diff_ids,
        created: config.created().clone(),
        architecture: config.architecture().to_string(),
        os: config.os().to_string(),
    };
    store.put_image(&record, &tags)?;
    Ok(Loaded { record, tags })
}
