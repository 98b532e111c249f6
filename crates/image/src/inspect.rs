//! An image as Docker's `image inspect` shows it, shared by `hull image
//! inspect` and hulld's `GET /images/{name}/json`.

use serde_json::{json, Value};

use crate::store::{ImageRecord, Store, StoreError};

pub fn docker_json(store: &Store, record: &ImageRecord) -> Result<Value, StoreError> {
    let config: Value = serde_json::from_slice(&store.read_document(&record.id)?).map_err(|e| StoreError::Damaged {
        path: store.blob_path(&record.id),
        detail: format!("the image config does not parse: {e}"),
    })?;
    Ok(json!({
        "Id": record.id.to_string(),
        "RepoTags": store.tags_of(&record.id)?,
        "RepoDigests": record.repo_digests,
        "Parent": "",
        "Comment": config.get("comment").and_then(Value::as_str).unwrap_or_default(),
        "Author": config.get("author").and_then(Value::as_str).unwrap_or_default(),
        "Created": record.created.clone().unwrap_or_default(),
        "Architecture": record.architecture,
        "Os": record.os,
        "Size": record.size(),
        "Config": config.get("config").cloned().unwrap_or(Value::Null),
        "RootFS": {
            "Type": "layers",
            "Layers": record.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "Metadata": { "hull": {
            "Manifest": record.manifest.to_string(),
            "ChainID": record.chain_id().map(|c| c.to_string()),
            "Layers": record.layers,
        }},
    }))
}
