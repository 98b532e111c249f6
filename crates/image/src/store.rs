//! The content-addressed image store under `DATA/images`:
//!
//! ```text
//! blobs/sha256/HEX     verified blobs (manifests, configs, layers)
//! partial/HEX          downloads in progress (resumed, never trusted)
//! images/HEX.json      one record per image, named by its config digest (its ID)
//! tags.json            "repo:tag" -> image ID
//! disks/CHAIN.ext4     the read-only disk of each layer stack
//! lock                 serializes every read-modify-write of the records
//! ```
//!
//! A blob enters `blobs/` only by rename after its digest was verified, and
//! records are written to a temporary file and renamed, so a crash or a
//! failed pull leaves the store as it was plus complete, verified blobs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{BadDigest, Digest};
use crate::reference::{BadReference, ImageRef};

/// Largest manifest, index or config accepted (they are JSON documents).
pub const MAX_DOCUMENT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("{0}")]
    Reference(#[from] BadReference),
    #[error("{0}")]
    Digest(#[from] BadDigest),
    #[error("conflict: unable to remove {name} (must force) - image is being used by {users}")]
    InUse { name: String, users: String },
    #[error("conflict: unable to delete {id} (must be forced) - image is referenced in multiple repositories")]
    MultipleTags { id: String },
    #[error("blob {digest} failed verification: {detail}")]
    Verification { digest: Digest, detail: String },
    #[error("the image store at {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config blob's digest: Docker's image ID.
    pub id: Digest,
    pub manifest: Digest,
    /// `repo@sha256:…` for each repository it was pulled from.
    pub repo_digests: Vec<String>,
    pub layers: Vec<LayerRecord>,
    /// Uncompressed layer digests, from the config.
    pub diff_ids: Vec<Digest>,
    /// The config's creation time, as written there (RFC 3339).
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
}

impl ImageRecord {
    /// Compressed size of all layers, as registries count it.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    pub fn chain_id(&self) -> Option<Digest> {
        crate::digest::chain_id(&self.diff_ids)
    }

    /// Every blob the image needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.id, &self.manifest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

pub struct Store {
    root: PathBuf,
}

/// An exclusive hold on the store's records, released when dropped.
pub struct StoreLock(#[allow(dead_code)] File);

/// A hidden temporary name beside `path`, unique to this call: two
/// threads making the same file at once (two pulls of one image's
/// manifest, two containers' first writable disk) must not write into or
/// rename away each other's.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.{made}.tmp", std::process::id()))
}

/// Writes `data` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Takes an exclusive `flock` on `file`, waiting for other holders.
pub fn flock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let root = data_dir.join("images");
        for sub in ["blobs/sha256", "partial", "images", "disks"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        flock_exclusive(&file).map_err(io_err("locking the image store"))?;
        Ok(StoreLock(file))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.hex())
    }

    pub fn disks_dir(&self) -> PathBuf {
        self.root.join("disks")
    }

    /// Whether a complete blob is present (with the expected size, if given).
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(meta) => meta.is_file() && size.is_none_or(|s| s == meta.len()),
            Err(_) => false,
        }
    }

    /// Stores `bytes` as a blob after checking them against `expected`.
    pub fn put_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::Verification {
                digest: expected.clone(),
                detail: format!("content hashes to {actual}"),
            });
        }
        if self.has_blob(expected, Some(bytes.len() as u64)) {
            return Ok(());
        }
        let path = self.blob_path(expected);
        write_atomic(&path, bytes).map_err(io_err(format!("writing {}", path.display())))
    }

    /// Moves a fully downloaded and verified file into `blobs/`.
    pub fn commit_blob(&self, digest: &Digest, verified_file: &Path) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        File::open(verified_file)
            .and_then(|f| f.sync_all())
            .and_then(|_| fs::rename(verified_file, &path))
            .map_err(io_err(format!("storing {}", path.display())))
    }

    /// Reads a JSON document blob (manifest, config), bounded in size.
    pub fn read_document(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(io_err(format!("reading blob {digest}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("reading blob {digest}")))?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(StoreError::Damaged {
                path,
                detail: format!("document blob {digest} is larger than {MAX_DOCUMENT} bytes"),
            });
        }
        Ok(bytes)
    }

    /// An image's run config (Docker's `config` object in its config
    /// document: `Cmd`, `Env`, `Healthcheck`, ...), as stored, unknown keys
    /// kept; empty if the document has none.
    pub fn run_config(&self, id: &Digest) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
        let bytes = self.read_document(id)?;
        let document: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            path: self.blob_path(id),
            detail: format!("the image config does not parse: {e}"),
        })?;
        Ok(document
            .get("config")
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn tags_path(&self) -> PathBuf {
        self.root.join("tags.json")
    }

    pub fn tags(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        let path = self.tags_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_tags(&self, tags: &BTreeMap<String, Digest>, _lock: &StoreLock) -> Result<(), StoreError> {
        let path = self.tags_path();
        let bytes = serde_json::to_vec_pretty(tags).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io_err(format!("writing {}", path.display())))
    }

    pub fn image(&self, id: &Digest) -> Result<ImageRecord, StoreError> {
        let path = self.record_path(id);
        let bytes = fs::read(&path).map_err(|_| StoreError::NoSuchImage(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
            path,
            detail: e.to_string(),
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            records.push(self.image(&id)?);
        }
        Ok(records)
    }

    /// Records an image (its blobs must be in the store) and points `tags` at it.
    pub fn put_image(&self, record: &ImageRecord, tags: &[String]) -> Result<(), StoreError> {
        for blob in record.blobs() {
            if !self.has_blob(blob, None) {
                return Err(StoreError::Damaged {
                    path: self.blob_path(blob),
                    detail: format!("image {} needs blob {blob}, which is missing", record.id),
                });
            }
        }
        let lock = self.lock()?;
        let mut record = record.clone();
        if let Ok(existing) = self.image(&record.id) {
            for repo_digest in existing.repo_digests {
                if !record.repo_digests.contains(&repo_digest) {
                    record.repo_digests.push(repo_digest);
                }
            }
        }
        let path = self.record_path(&record.id);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io_err(format!("writing {}", path.display())))?;
        let mut all = self.tags()?;
        for tag in tags {
            all.insert(tag.clone(), record.id.clone());
        }
        self.write_tags(&all, &lock)
    }

    /// The image a user means by `name`: a tag (`busybox`, `busybox:1.36`,
    /// `host:5000/app:v1`), `repo@sha256:…`, a full ID or an unambiguous ID
    /// prefix (at least 4 hex digits, with or without `sha256:`).
    pub fn resolve(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let no_such = || StoreError::NoSuchImage(name.to_string());
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            let matches: Vec<ImageRecord> = self
                .images()?
                .into_iter()
                .filter(|r| r.id.hex().starts_with(hex))
                .collect();
            if matches.len() == 1 {
                return matches.into_iter().next().ok_or_else(no_such);
            }
        }
        let reference = ImageRef::parse(name).map_err(|_| no_such())?;
        if let Some(digest) = reference.digest() {
            let wanted = format!("{}@{digest}", reference.familiar_repository());
            return self
                .images()?
                .into_iter()
                .find(|r| r.repo_digests.contains(&wanted))
                .ok_or_else(no_such);
        }
        let tag = reference.familiar_tagged().ok_or_else(no_such)?;
        let id = self.tags()?.get(&tag).cloned().ok_or_else(no_such)?;
        self.image(&id).map_err(|_| no_such())
    }

    /// The tags pointing at `id`.
    pub fn tags_of(&self, id: &Digest) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tags()?
            .into_iter()
            .filter(|(_, v)| v == id)
            .map(|(k, _)| k)
            .collect())
    }

    /// `hull tag SOURCE TARGET`.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), StoreError> {
        let record = self.resolve(source)?;
        let target_ref = ImageRef::parse(target)?;
        let tag = target_ref.familiar_tagged().ok_or_else(|| BadReference {
            text: target.to_string(),
            reason: "a tag cannot carry a digest".into(),
        })?;
        let lock = self.lock()?;
        let mut tags = self.tags()?;
        tags.insert(tag, record.id);
        self.write_tags(&tags, &lock)
    }

    /// `hull rmi`: untags `name`, and deletes the image when no tag is left
    /// (or when `name` is its ID). `users` names the containers using each
    /// image; an image in use is kept unless `force`. Returns Docker's lines
    /// (`Untagged: …`, `Deleted: …`).
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        users: &dyn Fn(&Digest) -> Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let record = self.resolve(name)?;
        let lock = self.lock()?;
        let mut tags = self.tags()?;
        let own_tags: Vec<String> = tags
            .iter()
            .filter(|(_, v)| **v == record.id)
            .map(|(k, _)| k.clone())
            .collect();
        let by_tag = ImageRef::parse(name)
            .ok()
            .and_then(|r| r.familiar_tagged())
            .filter(|t| own_tags.contains(t));
        let mut report = Vec::new();
        if let Some(tag) = &by_tag {
            if own_tags.len() > 1 {
                tags.remove(tag);
                self.write_tags(&tags, &lock)?;
                return Ok(vec![format!("Untagged: {tag}")]);
            }
        } else if own_tags.len() > 1 && !force {
            return Err(StoreError::MultipleTags {
                id: record.id.short().to_string(),
            });
        }
        let in_use = users(&record.id);
        if !in_use.is_empty() && !force {
            return Err(StoreError::InUse {
                name: name.to_string(),
                users: in_use.join(", "),
            });
        }
        for tag in &own_tags {
            tags.remove(tag);
            report.push(format!("Untagged: {tag}"));
        }
        self.write_tags(&tags, &lock)?;
        let path = self.record_path(&record.id);
        fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
        report.push(format!("Deleted: {}", record.id));
        drop(lock);
        self.collect_garbage()?;
        Ok(report)
    }

    /// `docker image prune`: removes images no container uses that have no
    /// tag (or, with `all`, every image no container uses), then what only
    /// they referenced. Docker's lines (`Untagged: …`, `Deleted: …`) and the
    /// bytes freed.
    pub fn prune(&self, all: bool, in_use: &dyn Fn(&Digest) -> bool) -> Result<(Vec<String>, u64), StoreError> {
        let mut report = Vec::new();
        for record in self.images()? {
            if in_use(&record.id) || (!all && !self.tags_of(&record.id)?.is_empty()) {
                continue;
            }
            report.extend(self.remove(record.id.hex(), true, &|_| Vec::new())?);
        }
        let freed = self.collect_garbage()?;
        Ok((report, freed))
    }

    /// Removes blobs, stale partial downloads and disks that no image
    /// record references. Returns the bytes freed.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _lock = self.lock()?;
        let images = self.images()?;
        let wanted: BTreeSet<String> = images
            .iter()
            .flat_map(|r| r.blobs().map(|d| d.hex().to_string()))
            .collect();
        let wanted_disks: BTreeSet<String> = images
            .iter()
            .filter_map(|r| r.chain_id())
            .map(|c| format!("{}.ext4", c.hex()))
            .collect();
        let mut freed = 0;
        let mut sweep = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| -> Result<(), StoreError> {
            for entry in fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))? {
                let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep(&name) {
                    continue;
                }
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let path = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if removed.is_ok() {
                    freed += len;
                }
            }
            Ok(())
        };
        sweep(self.root.join("blobs/sha256"), &|name| wanted.contains(name))?;
        // Partial downloads of blobs still wanted are kept: a pull resumes them.
        sweep(self.root.join("partial"), &|name| {
            let hex = name.split('.').next().unwrap_or(name);
            wanted.contains(hex) || !name.contains('.') && partial_in_use(&self.root.join("partial").join(name))
        })?;
        sweep(self.disks_dir(), &|name| {
            wanted_disks.contains(name) || name.ends_with(".building")
        })?;
        Ok(freed)
    }
}

/// Whether a pull holds `path` (its lock) right now.
fn partial_in_use(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    // SAFETY: a non-blocking flock probe on our own descriptor.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !free
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("hull-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        (dir, store)
    }

    fn record_with_blobs(store: &Store, seed: &str) -> ImageRecord {
        let config = format!("{{\"seed\":\"{seed}\"}}");
        let manifest = format!("{{\"m\":\"{seed}\"}}");
        let layer = format!("layer {seed}");
        for blob in [&config, &manifest, &layer] {
            store.put_blob(&Digest::of(blob.as_bytes()), blob.as_bytes()).unwrap();
        }
        ImageRecord {
            id: Digest::of(config.as_bytes()),
            manifest: Digest::of(manifest.as_bytes()),
            repo_digests: vec![],
            layers: vec![LayerRecord {
                digest: Digest::of(layer.as_bytes()),
                size: layer.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            }],
            diff_ids: vec![Digest::of(layer.as_bytes())],
            created: None,
            architecture: "amd64".into(),
            os: "linux".into(),
        }
    }

    #[test]
    fn one_path_written_from_many_threads_at_once_always_succeeds() {
        let dir = std::env::temp_dir().join(format!("hull-store-writes-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manifest");
        std::thread::scope(|scope| {
            for thread in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[thread; 64]).unwrap();
                    }
                });
            }
        });
        let written = std::fs::read(&path).unwrap();
        assert!(written.len() == 64 && written.iter().all(|b| *b == written[0]));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blobs_are_verified_before_they_are_stored() {
        let (dir, store) = temp_store("verify");
        let digest = Digest::of(b"hello");
        assert!(matches!(
            store.put_blob(&digest, b"hellO"),
            Err(StoreError::Verification { .. })
        ));
        assert!(!store.has_blob(&digest, None));
        store.put_blob(&digest, b"hello").unwrap();
        assert!(store.has_blob(&digest, Some(5)));
        assert!(!store.has_blob(&digest, Some(6)));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tags_resolve_untag_and_delete_like_docker() {
        let (dir, store) = temp_store("tags");
        let record = record_with_blobs(&store, "one");
        store.put_image(&record, &["busybox:latest".into()]).unwrap();
        assert_eq!(store.resolve("busybox").unwrap().id, record.id);
        assert_eq!(store.resolve("docker.io/library/busybox:latest").unwrap().id, record.id);
        assert_eq!(store.resolve(&record.id.hex()[..8]).unwrap().id, record.id);
        assert!(matches!(store.resolve("busybox:2"), Err(StoreError::NoSuchImage(_))));
        store.tag("busybox", "127.0.0.1:5000/bb:v2").unwrap();
        assert_eq!(store.tags_of(&record.id).unwrap().len(), 2);
        assert!(matches!(
            store.remove(record.id.hex(), false, &|_| vec![]),
            Err(StoreError::MultipleTags { .. })
        ));
        assert_eq!(
            store.remove("busybox", false, &|_| vec![]).unwrap(),
            vec!["Untagged: busybox:latest"]
        );
        assert!(matches!(
            store.remove("127.0.0.1:5000/bb:v2", false, &|_| vec!["ctr1".into()]),
            Err(StoreError::InUse { .. })
        ));
        let lines = store.remove("127.0.0.1:5000/bb:v2", false, &|_| vec![]).unwrap();
        assert_eq!(lines.len(), 2);
        // Its blobs went with it.
        assert!(!store.has_blob(&record.id, None));
        assert!(store.images().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_collection_keeps_what_images_reference() {
        let (dir, store) = temp_store("gc");
        let kept = record_with_blobs(&store, "kept");
        store.put_image(&kept, &["kept:1".into()]).unwrap();
        let stray = Digest::of(b"stray");
        store.put_blob(&stray, b"stray").unwrap();
        fs::write(store.partial_path(&Digest::of(b"other")), b"half").unwrap();
        assert!(store.collect_garbage().unwrap() >= 5);
        assert!(!store.has_blob(&stray, None));
        assert!(kept.blobs().all(|b| store.has_blob(b, None)));
        assert!(!store.partial_path(&Digest::of(b"other")).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_tag_file_is_reported_not_overwritten() {
        let (dir, store) = temp_store("damaged");
        fs::write(store.root().join("tags.json"), b"{not json").unwrap();
        assert!(matches!(store.tags(), Err(StoreError::Damaged { .. })));
        let record = record_with_blobs(&store, "x");
        assert!(store.put_image(&record, &["x:1".into()]).is_err());
        assert_eq!(fs::read(store.root().join("tags.json")).unwrap(), b"{not json");
        fs::remove_dir_all(dir).unwrap();
    }
}
