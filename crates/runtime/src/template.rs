//! Templates: one VM per (kernel, initramfs, memory size, vCPU count, VMM),
//! booted once to "agent ready" and saved; every container VM is a clone of
//! one. A template's directory is named after a hash of all its inputs, so
//! a changed input simply means another template: the stale one is removed
//! when the new one is made. Templates live in `DATA/templates/`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::guest::Guest;

/// How long a template's boot to "agent ready" may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The record beside each template's snapshot.
const RECORD: &str = "template.json";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("making the template {name}: {detail}{console}")]
    Build {
        name: String,
        detail: String,
        console: String,
    },
    #[error("no template named {0} (see `hull template ls`)")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let what = what.into();
    move |source| TemplateError::Io { what, source }
}

/// A file a template depends on, identified without reading it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Input {
    fn of(path: &Path) -> Result<Input, TemplateError> {
        let meta = std::fs::metadata(path).map_err(io(format!("{}", path.display())))?;
        Ok(Input {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }
}

/// What a template was made from (`template.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub memory_mib: u64,
    pub cpus: u8,
    pub kernel: Input,
    pub initramfs: Input,
    pub vmm: Input,
    pub snapshot_format: u32,
    /// Spare disk slots for volumes (beyond the image and writable disks).
    #[serde(default)]
    pub volume_slots: u8,
    /// NIC slots (detached in the template; a clone plugs in its tap).
    #[serde(default)]
    pub nic_slots: u8,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

impl TemplateRecord {
    fn for_inputs(guest: &Guest, vmm: &Path, memory_mib: u64, cpus: u8) -> Result<Self, TemplateError> {
        Ok(TemplateRecord {
            memory_mib,
            cpus,
            kernel: Input::of(&guest.kernel)?,
            initramfs: Input::of(&guest.initramfs)?,
            vmm: Input::of(vmm)?,
            snapshot_format: vmm::snapshot::FORMAT_VERSION,
            volume_slots: crate::volume::MAX_PER_CONTAINER as u8,
            nic_slots: vmm::vm::MAX_NICS,
            created: 0,
        })
    }

    /// `256m-1c-<hash of every input>`.
    fn name(&self) -> String {
        let inputs = TemplateRecord {
            created: 0,
            ..self.clone()
        };
        let hash = Sha256::digest(serde_json::to_vec(&inputs).unwrap_or_default());
        format!("{}-{}", shape(self.memory_mib, self.cpus), hex::encode(&hash[..6]))
    }
}

fn shape(memory_mib: u64, cpus: u8) -> String {
    format!("{memory_mib}m-{cpus}c")
}

/// A ready template: restore `dir` to get a clone.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub dir: PathBuf,
    pub record: TemplateRecord,
}

pub fn templates_dir() -> PathBuf {
    crate::data_dir().join("templates")
}

fn lock() -> Result<std::fs::File, TemplateError> {
    let dir = templates_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let file = std::fs::File::create(dir.join("lock")).map_err(io("the templates lock"))?;
    // SAFETY: flock on an fd we own; released when the file closes.
    if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(io("locking the templates")(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// The template for these inputs, made first if there is none.
pub fn ensure(guest: &Guest, vmm: &Path, memory_mib: u64, cpus: u8) -> Result<Template, TemplateError> {
    let record = TemplateRecord::for_inputs(guest, vmm, memory_mib, cpus)?;
    if let Some(template) = made(&record) {
        return Ok(template);
    }
    let _lock = lock()?;
    // Another hull may have made it while we waited for the lock.
    if let Some(template) = made(&record) {
        return Ok(template);
    }
    build(guest, vmm, record)
}

/// The template of `record`'s inputs, if it has been made.
fn made(record: &TemplateRecord) -> Option<Template> {
    let name = record.name();
    let dir = templates_dir().join(&name);
    vmm::snapshot::state_path(&dir).is_file().then(|| Template {
        name,
        dir,
        record: record.clone(),
    })
}

/// Whether `template` is still the one for its shape, as `ensure` would
/// find it: its inputs unchanged (three `stat`s, no hashing) and its
/// snapshot there. A standby's start asks this of the template its VM is
/// a clone of.
pub fn still_current(template: &Template, guest: &Guest, vmm: &Path) -> bool {
    let (memory_mib, cpus) = (template.record.memory_mib, template.record.cpus);
    TemplateRecord::for_inputs(guest, vmm, memory_mib, cpus).is_ok_and(|record| record == template.record)
        && vmm::snapshot::state_path(&template.dir).is_file()
}

/// Makes the template for these inputs anew (replacing any).
pub fn create(guest: &Guest, vmm: &Path, memory_mib: u64, cpus: u8) -> Result<Template, TemplateError> {
    let record = TemplateRecord::for_inputs(guest, vmm, memory_mib, cpus)?;
    let _lock = lock()?;
    build(guest, vmm, record)
}

/// Throws away a template that failed to restore, and makes it again.
pub fn rebuild(template: &Template, guest: &Guest, vmm: &Path) -> Result<Template, TemplateError> {
    let _lock = lock()?;
    let _ = std::fs::remove_dir_all(&template.dir);
    build(guest, vmm, template.record.clone())
}

/// Boots the template VM; its agent asks to be saved once ready. Runs under
/// the lock; a failed attempt leaves nothing behind.
fn build(guest: &Guest, vmm: &Path, record: TemplateRecord) -> Result<Template, TemplateError> {
    let tmp = templates_dir().join(format!(".{}.tmp", record.name()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = build_in(&tmp, guest, vmm, record);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built
}

fn build_in(tmp: &Path, guest: &Guest, vmm: &Path, mut record: TemplateRecord) -> Result<Template, TemplateError> {
    let name = record.name();
    let root = templates_dir();
    let dir = root.join(&name);
    std::fs::create_dir_all(tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let fail = |detail: String| TemplateError::Build {
        name: name.clone(),
        detail,
        console: crate::run::console_tail(&tmp.join("console.log")),
    };
    // Empty disks hold the slots every clone binds its own disks to: the
    // image (read-only), the writable layer, and the volumes.
    let volume_slots: Vec<String> = (0..record.volume_slots).map(|i| format!("volume-slot-{i}")).collect();
    let slots = ["image-slot".to_string(), "writable-slot".to_string()]
        .into_iter()
        .chain(volume_slots.iter().cloned())
        .collect::<Vec<_>>();
    for slot in &slots {
        std::fs::File::create(tmp.join(slot)).map_err(io("a template disk slot"))?;
    }
    let mut child = Command::new(vmm);
    child
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initramfs)
        .arg("--cmdline")
        .arg(format!(
            "{} {}",
            crate::run::GUEST_CMDLINE,
            proto::TEMPLATE_CMDLINE_FLAG
        ))
        .arg("--memory")
        .arg(record.memory_mib.to_string())
        .arg("--cpus")
        .arg(record.cpus.to_string())
        .arg("--disk")
        .arg(format!("{}:ro", tmp.join("image-slot").display()))
        .arg("--disk")
        .arg(tmp.join("writable-slot"));
    for slot in &volume_slots {
        child.arg("--disk").arg(tmp.join(slot));
    }
    child.arg("--net-slots").arg(record.nic_slots.to_string());
    // virtio-fs, sharing nothing: a clone gives it its bind mounts' directories.
    child.arg("--fs");
    let mut child = child
        .arg("--vsock-uds")
        .arg(tmp.join("vsock.sock"))
        .arg("--serial-log")
        .arg(tmp.join("console.log"))
        .arg("--snapshot-to")
        .arg(tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {}", vmm.display())))?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for the template VM"))? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "its guest did not reach the agent within {BOOT_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() || !vmm::snapshot::state_path(tmp).is_file() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        return Err(fail(format!("hull-vmm ended with {status}: {}", stderr.trim())));
    }
    for leftover in slots.iter().map(String::as_str).chain(["vsock.sock"]) {
        let _ = std::fs::remove_file(tmp.join(leftover));
    }
    record.created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let json = serde_json::to_vec_pretty(&record).map_err(|e| fail(e.to_string()))?;
    image::store::write_atomic(&tmp.join(RECORD), &json).map_err(io("writing the template record"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp, &dir).map_err(io(format!("moving the template to {}", dir.display())))?;
    remove_stale(&root, &record, &name);
    Ok(Template { name, dir, record })
}

/// Templates of the same shape made from other inputs are stale: drop them.
fn remove_stale(root: &Path, record: &TemplateRecord, keep: &str) {
    let prefix = format!("{}-", shape(record.memory_mib, record.cpus));
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name != keep {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A template on disk, for `hull template ls`.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    /// Its directory's name; `arrived/IDENTITY` for one another host sent
    /// with a container that moved here (it has no record).
    pub name: String,
    pub record: Option<TemplateRecord>,
    /// Bytes the memory file really occupies on disk.
    pub memory_bytes: u64,
    /// Its guest memory's size.
    pub memory_size: u64,
}

/// The name prefix of templates other hosts sent.
const ARRIVED: &str = "arrived/";

pub fn list() -> Vec<TemplateInfo> {
    let mut out = Vec::new();
    for (root, prefix) in [(templates_dir(), ""), (arrived_root(), ARRIVED)] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let record = std::fs::read(entry.path().join(RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let memory = std::fs::metadata(vmm::snapshot::memory_path(&entry.path()));
            out.push(TemplateInfo {
                name: format!("{prefix}{name}"),
                record,
                memory_bytes: memory.as_ref().map_or(0, |m| m.blocks() * 512),
                memory_size: memory.map_or(0, |m| m.len()),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Removes the template `name` (`arrived/IDENTITY` for one another host
/// sent). Running clones keep their mapped memory.
pub fn remove(name: &str) -> Result<(), TemplateError> {
    let (root, own) = match name.strip_prefix(ARRIVED) {
        Some(identity) if valid_identity(identity) => (arrived_root(), identity),
        Some(_) => return Err(TemplateError::NotFound(name.into())),
        None => (templates_dir(), name),
    };
    if own.is_empty() || own.starts_with('.') || own.contains('/') || own == "lock" {
        return Err(TemplateError::NotFound(name.into()));
    }
    let _lock = lock()?;
    let dir = root.join(own);
    if !dir.is_dir() {
        return Err(TemplateError::NotFound(name.into()));
    }
    std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))
}

/// A template's identity between hosts: the SHA-256 of its saved state
/// (hex), which differs between any two saved VMs, as a migration's hello
/// names the template a clone came from.
pub fn identity(dir: &Path) -> Option<String> {
    vmm::snapshot::snapshot_id(dir).ok().map(hex::encode)
}

/// This host's template for the shape, if it has been made (none is made).
pub fn existing(memory_mib: u64, cpus: u8) -> Option<Template> {
    let guest = Guest::current().ok()?;
    let vmm = crate::sibling_binary("hull-vmm")?;
    made(&TemplateRecord::for_inputs(&guest, &vmm, memory_mib, cpus).ok()?)
}

/// Where templates other hosts sent live, by identity.
fn arrived_root() -> PathBuf {
    crate::data_dir().join("templates-arrived")
}

fn valid_identity(identity: &str) -> bool {
    identity.len() == 64 && identity.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A template of this identity and shape on this host: its own (made
/// here) or one another host sent (`keep_arrived`).
pub fn find_by_identity(identity: &str, memory_mib: u64, cpus: u8) -> Option<PathBuf> {
    if !valid_identity(identity) {
        return None;
    }
    if let Some(own) = existing(memory_mib, cpus).filter(|t| identity_matches(&t.dir, identity)) {
        return Some(own.dir);
    }
    let arrived = arrived_root().join(identity);
    vmm::snapshot::memory_path(&arrived)
        .metadata()
        .is_ok_and(|m| m.len() == memory_mib << 20)
        .then_some(arrived)
        .filter(|dir| identity_matches(dir, identity))
}

fn identity_matches(dir: &Path, identity: &str) -> bool {
    self::identity(dir).is_some_and(|found| found == identity)
}

/// A fresh directory to receive the template `identity` into, for the
/// arriving container `container` (its state and memory files, as
/// `vmm::snapshot` names them); `keep_arrived` takes it. Err for an
/// identity that is not one.
pub fn arriving_dir(identity: &str, container: &str) -> Result<PathBuf, String> {
    if !valid_identity(identity) {
        return Err(format!("\"{identity}\" is not a template identity"));
    }
    let staging = arrived_root().join(format!(".{identity}.{container}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    Ok(staging)
}

/// Keeps the template received into `staging` if it is what it claims
/// (its state hashes to `identity`, its memory is `memory_mib`): from
/// then on clones of it that move here send only their own pages.
pub fn keep_arrived(staging: &Path, identity: &str, memory_mib: u64) -> Result<PathBuf, String> {
    let refuse = |why: String| {
        let _ = std::fs::remove_dir_all(staging);
        Err(why)
    };
    if !identity_matches(staging, identity) {
        return refuse(format!("the template sent is not {identity}"));
    }
    let memory = vmm::snapshot::memory_path(staging)
        .metadata()
        .map(|m| m.len())
        .unwrap_or(0);
    if memory != memory_mib << 20 {
        return refuse(format!(
            "the template sent has {memory} bytes of memory, not {memory_mib} MiB"
        ));
    }
    let dir = arrived_root().join(identity);
    if dir.exists() {
        // Another arrival kept the same one meanwhile.
        let _ = std::fs::remove_dir_all(staging);
        return Ok(dir);
    }
    std::fs::rename(staging, &dir).map_err(|e| format!("keeping the template: {e}"))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_stays_current_until_an_input_or_its_snapshot_changes() {
        let dir = std::env::temp_dir().join(format!("hull-template-current-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("template")).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let guest = Guest {
            kernel_release: "6.1.0".into(),
            kernel: file("vmlinuz", b"kernel"),
            initramfs: file("initrd", b"initramfs"),
        };
        let vmm = file("hull-vmm", b"vmm");
        let record = TemplateRecord::for_inputs(&guest, &vmm, 256, 1).unwrap();
        let template = Template {
            name: record.name(),
            dir: dir.join("template"),
            record,
        };
        // No snapshot yet: not a made template.
        assert!(!still_current(&template, &guest, &vmm));
        std::fs::write(vmm::snapshot::state_path(&template.dir), b"state").unwrap();
        assert!(still_current(&template, &guest, &vmm));
        // A new hull-vmm (another size, another file) makes another template.
        std::fs::remove_file(&vmm).unwrap();
        file("hull-vmm", b"a newer vmm");
        assert!(!still_current(&template, &guest, &vmm));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
