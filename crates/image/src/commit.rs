//! Images made on this host from one new layer: `docker commit` (a
//! container's writable layer on top of its image) and `docker import` (a
//! root filesystem tarball on nothing). The layer is kept as a plain tar,
//! so its digest is its diff ID; the config carries the parent's layers
//! and history plus one entry for this layer, so chain IDs, `docker
//! history`, save and the image disk all work as for a pulled image.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::digest::{Digest, HashingReader};
use crate::load::{write_manifest, PLAIN_LAYER};
use crate::store::{io_err, ImageRecord, LayerRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NewImageError {
    #[error("the layer is not a tar archive: {0}")]
    NotATar(String),
    #[error("the parent image's config: {0}")]
    ParentConfig(String),
    #[error("{0} tarballs are not supported: compress with gzip or zstd, or not at all")]
    Compression(&'static str),
    #[error("downloading {url}: {detail}")]
    Download { url: String, detail: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A fresh name in the store's scratch directory for `what`.
pub fn scratch_path(store: &Store, what: &str) -> std::path::PathBuf {
    crate::store::temp_sibling(&store.root().join("partial").join(what))
}

/// The plain tar inside `tarball` (gzip, zstd or none), written to a
/// scratch file whose path is returned; `tarball` itself is left alone.
pub fn plain_layer(store: &Store, tarball: &Path) -> Result<std::path::PathBuf, NewImageError> {
    let mut input = File::open(tarball).map_err(io_err(format!("opening {}", tarball.display())))?;
    let mut head = [0u8; 6];
    let n = input
        .read(&mut head)
        .map_err(io_err(format!("reading {}", tarball.display())))?;
    if head[..n].starts_with(b"BZh") {
        return Err(NewImageError::Compression("bzip2"));
    }
    if head[..n].starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(NewImageError::Compression("xz"));
    }
    let input = File::open(tarball).map_err(io_err(format!("opening {}", tarball.display())))?;
    let mut plain = crate::unpack::decompressed(input).map_err(io_err(format!("reading {}", tarball.display())))?;
    let layer = scratch_path(store, "layer.tar");
    let result = File::create(&layer)
        .and_then(|mut out| io::copy(&mut plain, &mut out))
        .map_err(|e| NewImageError::NotATar(format!("decompressing: {e}")));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&layer);
        return Err(e);
    }
    Ok(layer)
}

/// Fetches `url` (http or https) to `out`, for `docker import URL`.
pub async fn download(url: &str, out: &Path) -> Result<(), NewImageError> {
    let failed = |detail: String| NewImageError::Download {
        url: url.to_string(),
        detail,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(failed("only http and https URLs can be imported".into()));
    }
    let mut response = reqwest::get(url).await.map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("the server answered {}", response.status())));
    }
    let mut file = tokio::fs::File::create(out)
        .await
        .map_err(|e| failed(format!("creating {}: {e}", out.display())))?;
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| failed(format!("writing {}: {e}", out.display())))?;
    }
    // A tokio file's last write may still be under way when `write_all`
    // returns; without this, the tarball was sometimes read before it was
    // all there (an import from a URL came out as an empty layer).
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| failed(format!("writing {}: {e}", out.display())))
}

/// What the new image is made of, beside its layer.
pub struct NewImage<'a> {
    /// The image the layer goes on (`commit`), or none (`import`).
    pub parent: Option<&'a ImageRecord>,
    /// Docker's run config (`Cmd`, `Env`, ...) for the new image.
    pub config: Map<String, Value>,
    /// RFC 3339, the creation time of the image and its history entry.
    pub created: String,
    /// The history entry's `created_by` (the container's command).
    pub created_by: String,
    pub author: String,
    pub comment: String,
    /// The container committed, if any.
    pub container: Option<String>,
    /// Normalized `repo:tag` names to point at the image.
    pub tags: Vec<String>,
}

/// Makes an image of `layer` (an uncompressed tar, moved into the store)
/// on `new.parent`, and tags it.
pub fn create(store: &Store, layer: &Path, new: NewImage) -> Result<ImageRecord, NewImageError> {
    let (diff_id, size) = check_and_hash(layer)?;
    if store.has_blob(&diff_id, Some(size)) {
        let _ = std::fs::remove_file(layer);
    } else {
        store.commit_blob(&diff_id, layer)?;
    }
    let mut document = match new.parent {
        Some(parent) => {
            let bytes = store.read_document(&parent.id)?;
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(NewImageError::ParentConfig("not a JSON object".into())),
                Err(e) => return Err(NewImageError::ParentConfig(e.to_string())),
            }
        }
        None => Map::new(),
    };
    document.insert("architecture".into(), json!(crate::pull::PLATFORM_ARCH));
    document.insert("os".into(), json!(crate::pull::PLATFORM_OS));
    document.insert("created".into(), json!(new.created));
    document.insert("config".into(), Value::Object(new.config));
    for (key, value) in [("author", &new.author), ("comment", &new.comment)] {
        if value.is_empty() {
            document.remove(key);
        } else {
            document.insert(key.into(), json!(value));
        }
    }
    match &new.container {
        Some(id) => document.insert("container".into(), json!(id)),
        None => document.remove("container"),
    };
    // A parent's record of the container it came from says nothing of this one.
    document.remove("container_config");
    let mut diff_ids: Vec<Digest> = new.parent.map(|p| p.diff_ids.clone()).unwrap_or_default();
    diff_ids.push(diff_id.clone());
    document.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>() }),
    );
    let mut entry = json!({ "created": new.created, "created_by": new.created_by });
    if !new.author.is_empty() {
        entry["author"] = json!(new.author);
    }
    if !new.comment.is_empty() {
        entry["comment"] = json!(new.comment);
    }
    let history = document.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    if let Value::Array(history) = history {
        history.push(entry);
    }
    let config_bytes = Value::Object(document).to_string().into_bytes();
    let id = Digest::of(&config_bytes);
    store.put_blob(&id, &config_bytes)?;
    let mut layers: Vec<LayerRecord> = new.parent.map(|p| p.layers.clone()).unwrap_or_default();
    layers.push(LayerRecord {
        digest: diff_id,
        size,
        media_type: PLAIN_LAYER.into(),
    });
    let manifest = write_manifest(store, &config_bytes, &id, &layers)?;
    let record = ImageRecord {
        id,
        manifest,
        repo_digests: Vec::new(),
        layers,
        diff_ids,
        created: Some(new.created),
        architecture: crate::pull::PLATFORM_ARCH.into(),
        os: crate::pull::PLATFORM_OS.into(),
    };
    store.put_image(&record, &new.tags)?;
    Ok(record)
}

/// The layer's digest and size, after checking that it reads as a tar to
/// its end (the image disk unpacks it later, and must not find it broken).
fn check_and_hash(layer: &Path) -> Result<(Digest, u64), NewImageError> {
    let file = File::open(layer).map_err(io_err(format!("opening {}", layer.display())))?;
    let mut hashed = HashingReader::new(file);
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let entries = archive.entries().map_err(|e| NewImageError::NotATar(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| NewImageError::NotATar(e.to_string()))?;
            entry.path().map_err(|e| NewImageError::NotATar(e.to_string()))?;
            io::copy(&mut entry, &mut io::sink()).map_err(|e| NewImageError::NotATar(e.to_string()))?;
        }
    }
    // What follows the end-of-archive blocks is hashed too: it is part of the blob.
    Ok(hashed
        .finish()
        .map_err(io_err(format!("reading {}", layer.display())))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn new_image<'a>(parent: Option<&'a ImageRecord>, tags: &[&str]) -> NewImage<'a> {
        NewImage {
            parent,
            config: json!({"Cmd": ["/app"]}).as_object().cloned().unwrap(),
            created: "2026-12-02T08:00:00Z".into(),
            created_by: "/bin/sh -c make".into(),
            author: "Ann".into(),
            comment: "built".into(),
            container: Some("c0ffee".into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn an_imported_layer_and_a_commit_on_it_chain_their_layers() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let tar = tar_of(&[("bin/app", b"#!/bin/sh\n")]);
        let layer = data.path().join("layer.tar");
        std::fs::write(&layer, &tar).unwrap();
        let base = create(&store, &layer, new_image(None, &["base:1"])).unwrap();
        assert!(!layer.exists(), "the layer moved into the store");
        assert_eq!(base.diff_ids, [Digest::of(&tar)]);
        assert_eq!(store.resolve("base:1").unwrap().id, base.id);

        let top_tar = tar_of(&[("etc/app.conf", b"x"), (".wh.gone", b"")]);
        std::fs::write(&layer, &top_tar).unwrap();
        let top = create(&store, &layer, new_image(Some(&base), &["top:latest"])).unwrap();
        assert_eq!(top.diff_ids, [Digest::of(&tar), Digest::of(&top_tar)]);
        assert_eq!(top.layers.len(), 2);
        let config: Value = serde_json::from_slice(&store.read_document(&top.id).unwrap()).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["/app"]));
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
        assert_eq!(config["history"][1]["comment"], "built");
        assert_eq!(config["author"], "Ann");
        assert_eq!(config["container"], "c0ffee");
        // The stored image reads back as any other: its disk's chain and its save.
        assert_eq!(top.chain_id(), crate::digest::chain_id(&top.diff_ids));
        let mut saved = Vec::new();
        let items = crate::save::select(&store, &["top:latest".to_string()]).unwrap();
        crate::save::save(&store, &items, &mut saved).unwrap();
        assert!(!saved.is_empty());
    }

    #[test]
    fn something_that_is_not_a_tar_is_refused_and_nothing_is_stored() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let layer = data.path().join("layer.tar");
        std::fs::write(&layer, vec![b'x'; 1500]).unwrap();
        let err = create(&store, &layer, new_image(None, &["junk:1"])).unwrap_err();
        assert!(matches!(err, NewImageError::NotATar(_)), "{err}");
        assert!(store.resolve("junk:1").is_err());
        assert!(store.images().unwrap().is_empty());
    }
}
