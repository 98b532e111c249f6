//! hulld's container records in an embedded store (redb): one table from
//! container ID to its record. Every change is one transaction, so a crash
//! leaves the old record or the new one; names are unique within it.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// What hulld knows of a container beyond its files: the Docker-facing
/// configuration as the client sent it, and its life so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    pub created: String,
    /// The image as the client named it, and its ID.
    pub image: String,
    pub image_id: String,
    /// The resolved command: `Path` and `Args` in inspect.
    pub path: String,
    pub args: Vec<String>,
    /// Docker's `Config` and `HostConfig`, as created.
    pub config: crate::docker_config::Config,
    pub host_config: crate::docker_config::HostConfig,
    pub restart_count: u32,
    /// Stopped by a user (`unless-stopped` then stays stopped).
    pub manually_stopped: bool,
    /// The container process's environment, working directory and user
    /// after the image's config and the overrides: what an exec inherits.
    #[serde(default)]
    pub process_env: Vec<String>,
    #[serde(default)]
    pub process_workdir: String,
    #[serde(default)]
    pub process_user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the container store: {0}")]
    Db(String),
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse { name: String, id: String },
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("Multiple IDs found with provided prefix: {0}")]
    Ambiguous(String),
}

fn db_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct ContainerStore {
    db: Database,
}

impl ContainerStore {
    pub fn open(path: &Path) -> Result<ContainerStore, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CONTAINERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(ContainerStore { db })
    }

    pub fn all(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CONTAINERS).map_err(db_err)?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, value) = entry.map_err(db_err)?;
            // A record that no longer parses is skipped, not fatal to the rest.
            match serde_json::from_slice(value.value()) {
                Ok(record) => records.push(record),
                Err(e) => tracing::warn!("skipping a damaged container record: {e}"),
            }
        }
        Ok(records)
    }

    /// A container by full ID, name (with or without `/`) or unique ID prefix.
    pub fn find(&self, reference: &str) -> Result<ContainerRecord, StoreError> {
        let wanted = reference.strip_prefix('/').unwrap_or(reference);
        let all = self.all()?;
        if let Some(r) = all.iter().find(|r| r.id == wanted || r.name == wanted) {
            return Ok(r.clone());
        }
        let matches: Vec<&ContainerRecord> = if wanted.is_empty() {
            Vec::new()
        } else {
            all.iter().filter(|r| r.id.starts_with(wanted)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NoSuchContainer(reference.to_string())),
            _ => Err(StoreError::Ambiguous(reference.to_string())),
        }
    }

    /// Adds a new record; its name must be free.
    pub fn insert(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        self.write(record, true)
    }

    /// Replaces a record (by ID); a new name must be free.
    pub fn update(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        self.write(record, false)
    }

    fn write(&self, record: &ContainerRecord, new: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(db_err)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(db_err)?;
            for entry in table.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let Ok(other) = serde_json::from_slice::<ContainerRecord>(value.value()) else {
                    continue;
                };
                if other.name == record.name && key.value() != record.id {
                    return Err(StoreError::NameInUse {
                        name: record.name.clone(),
                        id: other.id,
                    });
                }
            }
            let exists = table.get(record.id.as_str()).map_err(db_err)?.is_some();
            if !new && !exists {
                return Err(StoreError::NoSuchContainer(record.id.clone()));
            }
            table.insert(record.id.as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Applies `change` to the record of `id` in one transaction.
    pub fn modify(&self, id: &str, change: impl FnOnce(&mut ContainerRecord)) -> Result<ContainerRecord, StoreError> {
        let mut record = self.find(id)?;
        change(&mut record);
        self.update(&record)?;
        Ok(record)
    }

    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(db_err)?;
            table.remove(id).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            created: String::new(),
            image: "busybox".into(),
            image_id: "sha256:00".into(),
            path: "sh".into(),
            args: vec![],
            config: Default::default(),
            host_config: Default::default(),
            restart_count: 0,
            manually_stopped: false,
            process_env: vec![],
            process_workdir: String::new(),
            process_user: String::new(),
        }
    }

    #[test]
    fn names_are_unique_and_lookups_follow_docker() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(&dir.path().join("db")).unwrap();
        store.insert(&record("abc123", "web")).unwrap();
        store.insert(&record("abd456", "db")).unwrap();
        assert!(matches!(
            store.insert(&record("fff", "web")),
            Err(StoreError::NameInUse { .. })
        ));
        assert_eq!(store.find("/web").unwrap().id, "abc123");
        assert_eq!(store.find("abd").unwrap().name, "db");
        assert!(matches!(store.find("ab"), Err(StoreError::Ambiguous(_))));
        assert!(matches!(store.find("zzz"), Err(StoreError::NoSuchContainer(_))));
        assert!(matches!(
            store.modify("abd456", |r| r.name = "web".into()),
            Err(StoreError::NameInUse { .. })
        ));
        store.modify("abd456", |r| r.name = "data".into()).unwrap();
        drop(store);
        // Reopened, everything is still there.
        let store = ContainerStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.find("data").unwrap().id, "abd456");
        store.remove("abc123").unwrap();
        assert_eq!(store.all().unwrap().len(), 1);
    }

    #[test]
    fn records_stored_before_config_was_typed_still_read() {
        // As hulld stored them when Config and HostConfig were kept as sent.
        let stored =
            br#"{"id":"abc","name":"web","created":"2026-11-30T10:00:00Z","image":"box","image_id":"sha256:00",
            "path":"sh","args":[],"restart_count":2,"manually_stopped":false,
            "config":{"Tty":true,"OpenStdin":true,"StdinOnce":true,"Labels":{"a":"1"},"Cmd":["sh"],"Hostname":"abc",
                      "StopTimeout":null,"Healthcheck":null,"AttachStdout":true},
            "host_config":{"NetworkMode":"bridge","RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3},
                           "LogConfig":{"Type":"json-file","Config":{"max-size":"1m"}},"GroupAdd":["wheel"],
                           "Links":null,"Binds":["/a:/b"],"Runtime":"hull"}}"#;
        let record: ContainerRecord = serde_json::from_slice(stored).unwrap();
        assert!(record.config.tty && record.config.open_stdin && record.config.stdin_once);
        assert_eq!(record.config.labels["a"], "1");
        assert_eq!(record.config.other["AttachStdout"], true);
        assert_eq!(record.host_config.restart_policy.maximum_retry_count, 3);
        assert_eq!(record.host_config.log_config.config["max-size"], "1m");
        assert_eq!(record.host_config.groups(), ["wheel"]);
        assert!(record.host_config.links().is_empty());
        assert_eq!(record.host_config.other["Binds"], serde_json::json!(["/a:/b"]));
        // Kept across a write and a read.
        let again: ContainerRecord = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(again.config, record.config);
        assert_eq!(again.host_config, record.host_config);
    }
}
