//! `docker save`: images from the store as the tar Docker 25+ writes, an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) with the
//! classic `manifest.json` beside it, so `docker load`, `hull load`,
//! skopeo and umoci all read it back. Blobs go out as stored (their digests
//! stay true); each is written once however many images share it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::store::{ImageRecord, Store, StoreError};

/// One image to save and the tags it is saved under.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub record: ImageRecord,
    /// Familiar `repo:tag` names (none when the image was named by ID).
    pub tags: Vec<String>,
}

/// The images `names` mean: a tag saves under that tag, an ID untagged.
/// Names of one image are merged.
pub fn select(store: &Store, names: &[String]) -> Result<Vec<SaveItem>, StoreError> {
    let mut items: Vec<SaveItem> = Vec::new();
    for name in names {
        let record = store.resolve(name)?;
        let tag = ImageRef::parse(name)
            .ok()
            .and_then(|r| r.familiar_tagged())
            .filter(|t| store.tags_of(&record.id).is_ok_and(|own| own.contains(t)));
        match items.iter_mut().find(|i| i.record.id == record.id) {
            Some(item) => item.tags.extend(tag.filter(|t| !item.tags.contains(t))),
            None => items.push(SaveItem {
                record,
                tags: tag.into_iter().collect(),
            }),
        }
    }
    Ok(items)
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes the tar of `items` to `out`.
pub fn save(store: &Store, items: &[SaveItem], out: impl Write) -> Result<(), StoreError> {
    let failed = |what: &str| {
        let what = what.to_string();
        move |source| StoreError::Io { what, source }
    };
    let mut tar = tar::Builder::new(out);
    let mut written = BTreeSet::new();
    for dir in ["blobs/", "blobs/sha256/"] {
        append_bytes(&mut tar, dir, &[], tar::EntryType::Directory).map_err(failed("writing the archive"))?;
    }
    let mut index_entries = Vec::new();
    let mut classic = Vec::new();
    for item in items {
        let record = &item.record;
        for digest in record.blobs() {
            if !written.insert(digest.clone()) {
                continue;
            }
            let path = store.blob_path(digest);
            let mut file = File::open(&path).map_err(failed(&format!("reading blob {digest}")))?;
            tar.append_file(blob_name(digest), &mut file)
                .map_err(failed(&format!("writing blob {digest}")))?;
        }
        let manifest = store.read_document(&record.manifest)?;
        let media_type = serde_json::from_slice::<Value>(&manifest)
            .ok()
            .and_then(|m| m["mediaType"].as_str().map(String::from))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let descriptor = |annotations: Value| {
            json!({
                "mediaType": media_type,
                "digest": record.manifest.to_string(),
                "size": manifest.len(),
                "annotations": annotations,
            })
        };
        if item.tags.is_empty() {
            index_entries.push(descriptor(json!({})));
        }
        for tag in &item.tags {
            let full = ImageRef::parse(tag)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| tag.clone());
            let short = tag.rsplit_once(':').map_or("latest", |(_, t)| t);
            index_entries.push(descriptor(json!({
                "io.containerd.image.name": full,
                "org.opencontainers.image.ref.name": short,
            })));
        }
        classic.push(json!({
            "Config": blob_name(&record.id),
            "RepoTags": item.tags,
            "Layers": record.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_entries,
    });
    let documents = [
        ("oci-layout", json!({ "imageLayoutVersion": "1.0.0" })),
        ("index.json", index),
        ("manifest.json", Value::Array(classic)),
    ];
    for (name, document) in documents {
        let bytes = serde_json::to_vec(&document).map_err(|e| StoreError::Damaged {
            path: name.into(),
            detail: e.to_string(),
        })?;
        append_bytes(&mut tar, name, &bytes, tar::EntryType::Regular).map_err(failed("writing the archive"))?;
    }
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(failed("writing the archive"))
}

fn append_bytes(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    bytes: &[u8],
    kind: tar::EntryType,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(bytes.len() as u64);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, name, bytes)
}
