//! The source's side of a move between hosts (`to=HOST`): offers the
//! container to the other host's hulld, sends it the template and the image
//! if it lacks them, the image disk the VM runs on and the log so far,
//! opens the data connection and hands it to
//! the container's supervisor, whose VMM sends the VM and its writable
//! disk over it. Once the VM has left, the rest of the log and how far
//! the output had got go to the other host, and when it says the
//! container runs there, the container is forgotten here. Until the VM
//! has left, any failure leaves it running here, untouched.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use proto::{MigrationProgress, MigrationReport};
use runtime::container::ContainerDir;

use super::link::Peer;
use super::wire::{self, Message, NetworkName, Offer};
use crate::api::ApiError;
use crate::daemon::Daemon;
use crate::store::ContainerRecord;

/// How long the other host may take between steps (checking the offer,
/// taking the files, resuming the container).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the supervisor here may take to end once its VM left.
const SUPERVISOR_END: Duration = Duration::from_secs(30);

/// Moves the running container `record` (in `dir`) to the hulld `peer`.
pub fn move_to(
    daemon: &Arc<Daemon>,
    record: &ContainerRecord,
    dir: &ContainerDir,
    peer: &Peer,
    limits: proto::MoveLimits,
    progress: &mut dyn FnMut(MigrationProgress),
) -> Result<Moved, ApiError> {
    let spec = dir.spec()?;
    if spec.image.is_none() || spec.rootfs.is_some() {
        return Err(ApiError::conflict(
            "only a container of an image can move to another host".to_string(),
        ));
    }
    if let Some(why) = super::shared_storage::refuse(&spec.binds, &daemon.shared_storage()) {
        return Err(ApiError::conflict(why));
    }
    // Disk volumes go in the VM's stream, and so do the files of a volume
    // of hull's own, with its only user; a volume of a directory stays
    // where it is, on storage both hosts see.
    let storage = daemon.shared_storage();
    let users = crate::volumes::users(daemon)?;
    let mut volumes = Vec::new();
    for mount in &spec.volumes {
        let volume = runtime::volume::get(&mount.name)?
            .ok_or_else(|| ApiError::internal(format!("volume {} is gone", mount.name)))?;
        if let Some(device) = &volume.device {
            if !super::shared_storage::on_shared(device, &storage) {
                return Err(ApiError::conflict(format!(
                    "volume {} is the directory {}, which is not on storage this host shares with others: a \
                     volume of a directory moves between hosts only from under a directory every host sees at \
                     the same path, named on both with hulld --shared-storage DIR",
                    mount.name,
                    device.display()
                )));
            }
        }
        let others: Vec<&String> = users
            .get(&mount.name)
            .into_iter()
            .flatten()
            .filter(|id| **id != record.id)
            .collect();
        if volume.device.is_none() && !others.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {} is also used by container {} on this host: a volume's files move to another host \
                 only with its one container (remove the others, or use a volume of a directory on shared \
                 storage)",
                mount.name, others[0]
            )));
        }
        volumes.push(volume);
    }
    let to = peer.address;
    let unreachable = |e: String| ApiError::new(StatusCode::BAD_GATEWAY, format!("the hulld at {to}: {e}"));
    let failed = |e: wire::WireError| unreachable(e.to_string());
    let mut networks = Vec::new();
    for endpoint in &spec.network.endpoints {
        let network = runtime::network::load(&endpoint.network_id)?;
        networks.push(NetworkName {
            name: network.name,
            subnet: network.subnet.to_string(),
        });
    }
    let writable_bytes = std::fs::metadata(dir.writable_disk())
        .map_err(|e| ApiError::internal(format!("the writable disk: {e}")))?
        .len();
    let image_disk = running_image_disk(daemon, dir, &spec)?;
    let image_id = spec.image.clone();
    let security = daemon.migration_security();
    let connect = || security.connect(peer, &daemon.handle).map_err(unreachable);
    let mut control = connect()?;
    let _ = control.set_read_timeout(Some(STEP_TIMEOUT));
    let template = running_template(dir, &spec);
    // The disk volumes that go with it: its copies here go once it runs there.
    let mounts = spec.volumes.clone();
    let offer = Offer {
        version: wire::VERSION,
        record: record.clone(),
        spec,
        networks,
        writable_bytes,
        template: template.as_deref().and_then(runtime::template::identity),
        volumes,
    };
    wire::send(&mut control, &Message::Offer(Box::new(offer))).map_err(failed)?;
    let (token, send_template, send_image) = match wire::receive(&mut control).map_err(failed)? {
        Message::Accepted {
            token,
            send_template,
            send_image,
        } => (token, send_template, send_image),
        Message::Refused { reason } | Message::Failed { reason } => {
            return Err(ApiError::conflict(format!(
                "the hulld at {to} cannot take the container: {reason}"
            )))
        }
        other => return Err(unreachable(format!("it answered {other:?}"))),
    };
    let template_bytes = match send_template {
        true => {
            let template = template.ok_or_else(|| unreachable("it asked for a template there is not".into()))?;
            Some(send_template_files(&mut control, &template).map_err(failed)?)
        }
        false => None,
    };
    let image_bytes = match send_image {
        true => {
            let id = image_id.ok_or_else(|| unreachable("it asked for an image there is not".into()))?;
            Some(send_image_tar(daemon, record, &id, &mut control)?)
        }
        false => None,
    };
    // Read-only while the VM runs: a plain copy.
    let disk = std::fs::File::open(&image_disk).map_err(|e| ApiError::internal(format!("the image disk: {e}")))?;
    let disk_bytes = disk.metadata().map_err(ApiError::internal)?.len();
    let image_disk_bytes = wire::send_file(&mut control, &disk, 0, disk_bytes, true).map_err(failed)?;
    let log = std::fs::File::open(dir.log_path()).map_err(|e| ApiError::internal(format!("the log: {e}")))?;
    let mut log_bytes = send_older_logs(&mut control, dir, &log).map_err(failed)?;
    let logged = log.metadata().map_err(ApiError::internal)?.len();
    log_bytes += wire::send_file(&mut control, &log, 0, logged, false).map_err(failed)?;
    let mut data = connect()?;
    wire::send(&mut data, &Message::Data { token }).map_err(failed)?;
    daemon.set_departing(&record.id, true);
    let moved = dir
        .connect()
        .and_then(|mut shim| shim.migrate(limits, Some(&OwnedFd::from(data)), progress));
    let report = match moved {
        Ok(report) => report,
        Err(e) => {
            daemon.set_departing(&record.id, false);
            let _ = wire::send(&mut control, &Message::Failed { reason: e.to_string() });
            return Err(e.into());
        }
    };
    // The VM has left: the container is the other host's from here.
    let resumed = finish(&mut control, &report, dir, &log, logged);
    // Its execs here are taken back through the other host from now on.
    daemon.set_moved_to(&record.id, peer.clone());
    wait_ended(dir);
    let _ = daemon.discard(&record.id, false);
    crate::volumes::remove_moved(daemon, &mounts);
    log_bytes += resumed.map_err(|e| {
        ApiError::internal(format!(
            "the VM left for {to}, but the hulld there did not say the container runs: {e}"
        ))
    })?;
    Ok(Moved {
        report,
        template_bytes,
        image_bytes,
        image_disk_bytes,
        log_bytes,
    })
}

/// What a move to another host took: the VM's stream, and the files
/// hulld sent beside it.
pub struct Moved {
    pub report: MigrationReport,
    /// The template's, when the destination lacked it.
    pub template_bytes: Option<u64>,
    /// The image's (a `docker save` tar), when the destination lacked it.
    pub image_bytes: Option<u64>,
    pub image_disk_bytes: u64,
    pub log_bytes: u64,
}

/// Sends the files the log (open as `log`) rotated into, oldest first;
/// their bytes.
fn send_older_logs(control: &mut UnixStream, dir: &ContainerDir, log: &std::fs::File) -> Result<u64, wire::WireError> {
    use std::os::unix::fs::MetadataExt;
    let current = log.metadata()?.ino();
    // Opened before any is sent; one the log became since it was opened is
    // not older than it.
    let older: Vec<std::fs::File> = runtime::container_log::older_files(&dir.log_path())
        .iter()
        .filter_map(|path| std::fs::File::open(path).ok())
        .filter(|file| file.metadata().is_ok_and(|m| m.ino() != current))
        .collect();
    wire::send(
        control,
        &Message::RotatedLogs {
            count: older.len() as u32,
        },
    )?;
    let mut bytes = 0;
    for file in &older {
        bytes += wire::send_file(control, file, 0, file.metadata()?.len(), false)?;
    }
    Ok(bytes)
}

/// Tells the other host how far the output got, with the log the
/// supervisor here wrote meanwhile (from `sent` on in `log`, then in the
/// files the log rotated into since), and waits for its word that the
/// container runs there; the log's bytes sent.
fn finish(
    control: &mut UnixStream,
    report: &MigrationReport,
    dir: &ContainerDir,
    log: &std::fs::File,
    sent: u64,
) -> Result<u64, wire::WireError> {
    use std::os::unix::fs::MetadataExt;
    wire::send(
        control,
        &Message::Moved {
            output_frames: report.output_frames,
        },
    )?;
    let meta = log.metadata()?;
    let newer: Vec<std::fs::File> = runtime::container_log::newer_than(&dir.log_path(), meta.ino())
        .iter()
        .filter_map(|path| std::fs::File::open(path).ok())
        .collect();
    let mut parts = vec![(log, sent, meta.len().max(sent))];
    for file in &newer {
        parts.push((file, 0, file.metadata()?.len()));
    }
    let bytes = wire::send_joined(control, sent, &parts)?;
    match wire::receive(control)? {
        Message::Resumed => Ok(bytes),
        Message::Failed { reason } => Err(wire::WireError::Bad(format!("a failure: {reason}"))),
        other => Err(wire::WireError::Bad(format!("{other:?}"))),
    }
}

/// The image disk the container's VM runs on: the one it arrived with
/// from another host, or its image's.
fn running_image_disk(
    daemon: &Daemon,
    dir: &ContainerDir,
    spec: &runtime::container::ContainerSpec,
) -> Result<std::path::PathBuf, ApiError> {
    let arrived = dir.arriving_image_disk();
    if arrived.exists() {
        return Ok(arrived);
    }
    let id = spec.image.as_ref().ok_or_else(|| ApiError::internal("no image"))?;
    let image = daemon.images.image(id)?;
    image::disk::image_disk(&daemon.images, &image).map_err(|e| ApiError::internal(e.to_string()))
}

/// The template directory the container's VM is a clone of: the one it
/// arrived with from another host, or this host's of its shape (a
/// template made again since the VM started is another one: the
/// destination then maps nothing and every page travels).
fn running_template(dir: &ContainerDir, spec: &runtime::container::ContainerSpec) -> Option<std::path::PathBuf> {
    if let Some(arrived) = dir.arriving_template() {
        return Some(arrived);
    }
    match spec.cold_boot {
        true => None,
        false => runtime::template::existing(spec.memory_mib, spec.cpus).map(|t| t.dir),
    }
}

/// The container's image as `docker save` writes it (under the name the
/// container was made with, if that still names it), for a destination
/// that lacks it; the bytes that went.
fn send_image_tar(
    daemon: &Arc<Daemon>,
    record: &ContainerRecord,
    id: &image::digest::Digest,
    control: &mut UnixStream,
) -> Result<u64, ApiError> {
    let image = daemon.images.image(id)?;
    let named = daemon
        .images
        .resolve(&record.image)
        .is_ok_and(|by_name| by_name.id == image.id && record.image != id.to_string());
    let item = image::save::SaveItem {
        record: image,
        tags: named.then(|| record.image.clone()).into_iter().collect(),
    };
    let tar = super::scratch_file(&daemon.images.root().join("partial")).map_err(ApiError::internal)?;
    let mut out = std::io::BufWriter::new(&tar);
    image::save::save(&daemon.images, &[item], &mut out)?;
    std::io::Write::flush(&mut out).map_err(ApiError::internal)?;
    drop(out);
    let bytes = tar.metadata().map_err(ApiError::internal)?.len();
    wire::send_file(control, &tar, 0, bytes, false).map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// A template's state and memory (its zero pages left out), as the
/// destination keeps it; the bytes that went.
fn send_template_files(control: &mut UnixStream, template: &std::path::Path) -> Result<u64, wire::WireError> {
    let mut sent = 0;
    for (path, sparse) in [
        (vmm::snapshot::state_path(template), false),
        (vmm::snapshot::memory_path(template), true),
    ] {
        let file = std::fs::File::open(&path)?;
        let bytes = file.metadata()?.len();
        sent += wire::send_file(control, &file, 0, bytes, sparse)?;
    }
    Ok(sent)
}

/// Waits for the supervisor here to end (its VM left).
fn wait_ended(dir: &ContainerDir) {
    let deadline = Instant::now() + SUPERVISOR_END;
    while dir.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
