//! The destination's side of a move between hosts (`hulld
//! --migration-listen`): another host's hulld offers a running container
//! (`wire::Offer`); this one checks it can take it (no such container or
//! name here, networks of the same names and subnets, the same addresses
//! free on them, bind mounts only under its shared storage), makes its
//! directory with an empty writable disk, takes the source's template and
//! image if it lacks them, its image disk and log so far, and starts the
//! container's supervisor on the data connection: its VMM takes the VM
//! and the disks from the source's. Once the source says the VM left (and
//! how far its output had got), the record is stored and the supervisor
//! takes the agent back from there. Anything short of that throws the
//! half-arrived container away; the source's runs on.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use runtime::container::ContainerDir;

use super::wire::{self, Message, Offer};
use crate::daemon::Daemon;

/// How long a peer may take to say what its connection is for.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the source may take between steps, except the move itself.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The move itself: the source's deadline is at most an hour.
const MOVE_TIMEOUT: Duration = Duration::from_secs(3700);
/// The largest image disk and log taken from a peer.
const MAX_IMAGE_DISK: u64 = 64 << 30;
/// The largest image (a `docker save` tar) taken from a peer.
const MAX_IMAGE: u64 = 64 << 30;
const MAX_LOG: u64 = 16 << 30;
/// The most files a log rotated into that a container brings.
const MAX_ROTATED_LOGS: u32 = 1000;
const MAX_WRITABLE_DISK: u64 = 1 << 40;
/// A template's saved state (vCPUs, chips, devices) is a few KiB.
const MAX_TEMPLATE_STATE: u64 = 64 << 20;

/// Data connections on their way to the arrival that gave out their token.
#[derive(Default)]
pub struct Arrivals(Mutex<HashMap<String, mpsc::SyncSender<UnixStream>>>);

impl Arrivals {
    fn expect(&self, token: &str) -> mpsc::Receiver<UnixStream> {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Ok(mut waiting) = self.0.lock() {
            waiting.insert(token.to_string(), tx);
        }
        rx
    }

    fn forget(&self, token: &str) {
        if let Ok(mut waiting) = self.0.lock() {
            waiting.remove(token);
        }
    }

    /// Hands `conn` to the arrival waiting for `token`; false if none is.
    fn hand_over(&self, token: &str, conn: UnixStream) -> bool {
        let waiting = self.0.lock().ok().and_then(|mut w| w.remove(token));
        waiting.is_some_and(|tx| tx.send(conn).is_ok())
    }
}

/// Binds `address` for other hosts' hullds (with mutual TLS, or plain
/// where `link::Security` allows it).
pub fn listen(daemon: Arc<Daemon>, address: SocketAddr) -> anyhow::Result<()> {
    daemon.migration_security().check_listener(address)?;
    let listener = TcpListener::bind(address).map_err(|e| anyhow::anyhow!("binding {address}: {e}"))?;
    tracing::info!("taking containers moved from other hosts on tcp://{address}");
    std::thread::Builder::new()
        .name("migration-listen".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        let daemon = daemon.clone();
                        std::thread::spawn(move || serve(&daemon, conn));
                    }
                    // Out of descriptors and the like: wait, do not spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(())
}

fn serve(daemon: &Arc<Daemon>, tcp: TcpStream) {
    // Networks' name servers are tasks on hulld's runtime.
    let _runtime = daemon.handle.enter();
    let Ok(peer_address) = tcp.peer_addr() else {
        return;
    };
    let peer = peer_address.to_string();
    let mut conn = match daemon.migration_security().accept(tcp, &daemon.handle) {
        Ok(conn) => conn,
        Err(e) => return tracing::warn!("a migration connection from {peer} refused: {e}"),
    };
    let _ = conn.set_read_timeout(Some(FIRST_MESSAGE_TIMEOUT));
    match wire::receive(&mut conn) {
        Ok(Message::Offer(offer)) => {
            let id = offer.record.id.clone();
            match arrive(daemon, &mut conn, *offer, peer_address.ip()) {
                Ok(()) => tracing::info!("container {id} arrived from {peer}"),
                Err(reason) => {
                    tracing::warn!("container {id} from {peer} did not arrive: {reason}");
                    let _ = wire::send(&mut conn, &Message::Failed { reason });
                }
            }
        }
        Ok(Message::AgentRelay { id }) => {
            let _ = conn.set_read_timeout(None);
            if let Err(e) = super::agent_relay::serve(daemon, conn, &id) {
                tracing::warn!("relaying an exec of container {id} for {peer}: {e}");
            }
        }
        Ok(Message::AttachRelay { id, input, after }) => {
            let _ = conn.set_read_timeout(None);
            if let Err(e) = super::attach_relay::serve(daemon, conn, peer_address.ip(), &id, input, after) {
                tracing::debug!("relaying an attached client of container {id} for {peer}: {e}");
            }
        }
        Ok(Message::Data { token }) => {
            let _ = conn.set_read_timeout(None);
            if !daemon.arrivals.hand_over(&token, conn) {
                tracing::warn!("a migration data connection from {peer} with an unknown token");
            }
        }
        Ok(Message::Names { network, subnet, names }) => {
            if let Err(e) = crate::span_names::take(daemon, peer_address.ip(), &network, &subnet, names) {
                tracing::debug!("names from {peer} not taken: {e}");
            }
        }
        Ok(other) => tracing::warn!("{peer} opened a migration connection with {other:?}"),
        Err(e) => tracing::warn!("a migration connection from {peer}: {e}"),
    }
}

/// What `prepare` made, to throw away if the container does not arrive.
struct Prepared {
    dir: ContainerDir,
    record: crate::store::ContainerRecord,
    memory_mib: u64,
    /// The source VM's template: found here, or to be sent (its identity).
    template: Template,
    /// The volumes made for it (their content comes in the VM's stream).
    volumes: Vec<String>,
    /// Its image's ID, when this host lacks the image (the source sends it).
    image_wanted: Option<image::digest::Digest>,
}

enum Template {
    None,
    Here(std::path::PathBuf),
    Wanted(String),
}

fn arrive(daemon: &Arc<Daemon>, control: &mut UnixStream, offer: Offer, from: std::net::IpAddr) -> Result<(), String> {
    let prepared = match prepare(daemon, offer) {
        Ok(prepared) => prepared,
        Err(reason) => {
            let _ = wire::send(control, &Message::Refused { reason: reason.clone() });
            return Err(reason);
        }
    };
    // Its clients attached there go on through this host from the moment
    // it runs here.
    daemon.set_arrived_from(&prepared.record.id, Some(from));
    let token = crate::containers::random_hex(16);
    let data = daemon.arrivals.expect(&token);
    let mut shim = None;
    let mut committed = false;
    let arrived = take(daemon, control, &prepared, &token, data, &mut shim, &mut committed);
    daemon.arrivals.forget(&token);
    // Once the VM has left the source the container is this host's,
    // whatever fails after: it is kept (stored, watched, restarted by its
    // policy if it ends), never thrown away.
    if arrived.is_err() && !committed {
        // Its supervisor ends with the VM it did not get; then its files go.
        if let Some(starting) = shim {
            starting.abandon();
        }
        prepared.dir.kill_hard();
        let _ = daemon.discard(&prepared.record.id, false);
        for name in &prepared.volumes {
            let _ = runtime::volume::remove(name);
        }
        daemon.container_event_of(&prepared.record, "migrate", &[("phase", "failed")]);
        daemon.set_arrived_from(&prepared.record.id, None);
    }
    arrived
}

fn take(
    daemon: &Arc<Daemon>,
    control: &mut UnixStream,
    prepared: &Prepared,
    token: &str,
    data: mpsc::Receiver<UnixStream>,
    shim: &mut Option<runtime::container::Starting>,
    committed: &mut bool,
) -> Result<(), String> {
    let failed = |e: wire::WireError| e.to_string();
    let dir = &prepared.dir;
    let record = &prepared.record;
    daemon.container_event_of(record, "migrate", &[("phase", "start")]);
    let accepted = Message::Accepted {
        token: token.into(),
        send_template: matches!(prepared.template, Template::Wanted(_)),
        send_image: prepared.image_wanted.is_some(),
    };
    wire::send(control, &accepted).map_err(failed)?;
    let _ = control.set_read_timeout(Some(STEP_TIMEOUT));
    let template = match &prepared.template {
        Template::None => None,
        Template::Here(dir) => Some(dir.clone()),
        Template::Wanted(identity) => Some(receive_template(control, identity, prepared)?),
    };
    if let Some(template) = template {
        dir.set_arriving_template(&template).map_err(|e| e.to_string())?;
    }
    if let Some(image) = &prepared.image_wanted {
        receive_image(daemon, control, image, &record.image)?;
    }
    let image_disk = new_file(&dir.arriving_image_disk())?;
    wire::receive_file(control, &image_disk, MAX_IMAGE_DISK).map_err(failed)?;
    drop(image_disk);
    receive_older_logs(control, dir)?;
    let log = new_file(&dir.log_path())?;
    wire::receive_file(control, &log, MAX_LOG).map_err(failed)?;
    let conn = data
        .recv_timeout(STEP_TIMEOUT)
        .map_err(|_| "the source did not open the data connection".to_string())?;
    *shim = Some(dir.start_arriving(OwnedFd::from(conn)).map_err(|e| e.to_string())?);
    // The source's VMM sends the VM now, until it runs here or the move is
    // off: a supervisor that ends meanwhile (its VMM failed) ends it too.
    let deadline = std::time::Instant::now() + MOVE_TIMEOUT;
    while !readable(control, Duration::from_millis(500)) {
        if shim.as_mut().is_none_or(|s| s.ended()) {
            return Err("the VM did not arrive: its supervisor here ended".into());
        }
        if std::time::Instant::now() > deadline {
            return Err("the source said nothing for the whole move".into());
        }
    }
    let output_frames = match wire::receive(control).map_err(failed)? {
        Message::Moved { output_frames } => output_frames,
        Message::Failed { reason } => return Err(format!("the source gave up: {reason}")),
        other => return Err(format!("the source sent {other:?} during the move")),
    };
    *committed = true;
    let _ = control.set_read_timeout(Some(STEP_TIMEOUT));
    // The output the source read after the log so far (lost, only those
    // lines are).
    if let Err(e) = wire::receive_file(control, &log, MAX_LOG) {
        tracing::warn!("container {}: the end of its log from the source: {e}", record.id);
    }
    drop(log);
    store(daemon, record)?;
    dir.arrival_done();
    // Back on a host it once left: its execs are reached here again.
    daemon.forget_moved_to(&record.id);
    let resumed = tell_resume(dir, output_frames).and_then(|()| {
        let starting = shim.take().ok_or("the supervisor is gone")?;
        starting.until_running().map_err(|e| e.to_string())
    });
    // Watched however it went: one that ended meets its restart policy.
    daemon.watch(&record.id);
    resumed?;
    daemon.container_event_of(record, "migrate", &[("phase", "finish")]);
    // Its names go to the other hosts now (the one it left answers for it
    // from what this host sends), not at the next round; on a thread of
    // their own: a peer that does not answer must not hold the move.
    let sharing = daemon.clone();
    let _ = std::thread::Builder::new()
        .name("span-names-now".into())
        .spawn(move || crate::span_names::share_now(&sharing));
    wire::send(control, &Message::Resumed).map_err(failed)
}

/// Takes the files the log rotated into at the source, oldest first, as
/// `LOG.k` … `LOG.1`.
fn receive_older_logs(control: &mut UnixStream, dir: &ContainerDir) -> Result<(), String> {
    let count = match wire::receive(control).map_err(|e| e.to_string())? {
        Message::RotatedLogs { count } if count <= MAX_ROTATED_LOGS => count,
        Message::RotatedLogs { count } => {
            return Err(format!("{count} rotated log files (at most {MAX_ROTATED_LOGS})"))
        }
        other => return Err(format!("the source sent {other:?} where its rotated logs were due")),
    };
    for n in (1..=count).rev() {
        let file = new_file(&runtime::container_log::rotated_path(&dir.log_path(), n))?;
        wire::receive_file(control, &file, MAX_LOG).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes what a hulld that died in the middle of a move left of a
/// container still arriving (its directory, addresses and new volumes;
/// its supervisor ended with that hulld): the source kept the container,
/// unless the VM had left it, and then it is lost either way. Called as
/// hulld starts.
pub fn sweep_half_arrived(daemon: &Arc<Daemon>) {
    let Ok(entries) = std::fs::read_dir(runtime::containers_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dir = ContainerDir::new(&id);
        let Some(volumes) = dir.pending_arrival() else {
            continue;
        };
        if daemon.containers.find(&id).is_ok() {
            // Recorded before hulld died: it arrived.
            dir.arrival_done();
            continue;
        }
        tracing::warn!("container {id}: removing what a move here left when hulld stopped in its middle");
        dir.kill_hard();
        let _ = daemon.discard(&id, false);
        for name in &volumes {
            let _ = runtime::volume::remove(name);
        }
    }
}

/// Stores the arrived container's record; under a name of its own if
/// another container took its name here during the move (it runs).
fn store(daemon: &Daemon, record: &crate::store::ContainerRecord) -> Result<(), String> {
    match daemon.containers.insert(record) {
        Err(crate::store::StoreError::NameInUse { .. }) => {
            let renamed = crate::store::ContainerRecord {
                name: format!("{}_{}", record.name, &record.id[..12]),
                ..record.clone()
            };
            tracing::warn!(
                "container {}: its name {} was taken during the move; it is {} here",
                record.id,
                record.name,
                renamed.name
            );
            daemon.containers.insert(&renamed).map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// Checks the offer against this host and makes the container's place:
/// its directory and spec (with this host's network IDs), its addresses
/// leased, an empty writable disk of the source's size.
fn prepare(daemon: &Arc<Daemon>, offer: Offer) -> Result<Prepared, String> {
    let Offer {
        version,
        record,
        mut spec,
        networks,
        writable_bytes,
        template,
        volumes,
    } = offer;
    if version != wire::VERSION {
        return Err(format!(
            "this host speaks migration protocol {}, the source {version}",
            wire::VERSION
        ));
    }
    let id = record.id.clone();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(format!("\"{id}\" is not a container ID"));
    }
    if !crate::create::valid_name(&record.name) {
        return Err(format!("\"{}\" is not a container name", record.name));
    }
    if daemon.containers.find(&id).is_ok() {
        return Err(format!("container {id} is on this host already"));
    }
    let all = daemon.containers.all().map_err(|e| e.to_string())?;
    if let Some(other) = all.iter().find(|r| r.name == record.name) {
        return Err(format!(
            "the name \"{}\" is taken on this host (by container {})",
            record.name, other.id
        ));
    }
    let Some(image) = spec.image.clone().filter(|_| spec.rootfs.is_none()) else {
        return Err("only a container of an image can move to another host".into());
    };
    // Its files stay where they are: only under what this host's
    // operator named shared, whatever the source says.
    if let Some(why) = super::shared_storage::refuse(&spec.binds, &daemon.shared_storage()) {
        return Err(format!("on this host, {why}"));
    }
    check_volumes(&spec.volumes, &volumes, &daemon.shared_storage())?;
    // An image this host lacks comes from the source (`take`).
    let image_wanted = daemon.images.image(&image).is_err();
    if writable_bytes == 0 || writable_bytes > MAX_WRITABLE_DISK {
        return Err(format!("a writable disk of {writable_bytes} bytes"));
    }
    if networks.len() != spec.network.endpoints.len() {
        return Err(format!(
            "{} network names for {} endpoints",
            networks.len(),
            spec.network.endpoints.len()
        ));
    }
    let dir = ContainerDir::new(&id);
    if dir.path.exists() {
        return Err(format!(
            "container {id} left files on this host ({})",
            dir.path.display()
        ));
    }
    // Its addresses on this host's networks of the same names.
    let mut leased = Vec::new();
    let mut lease_all = || -> Result<(), String> {
        for (endpoint, wanted) in spec.network.endpoints.iter_mut().zip(&networks) {
            // The default network is made on first need, as a start makes it.
            let found = match wanted.name == runtime::network::DEFAULT_NETWORK {
                true => runtime::network::ensure_default().ok(),
                false => runtime::network::find(&wanted.name).ok(),
            };
            let network = found
                .filter(|n| n.name == wanted.name)
                .ok_or_else(|| format!("network \"{}\" is not on this host: create it here first", wanted.name))?;
            if network.subnet.to_string() != wanted.subnet {
                return Err(format!(
                    "network \"{}\" is {} on this host and {} on the source",
                    wanted.name, network.subnet, wanted.subnet
                ));
            }
            runtime::network::lease(&network, Some(endpoint.address), &id).map_err(|e| e.to_string())?;
            leased.push((network.id.clone(), endpoint.address));
            endpoint.network_id = network.id.clone();
            daemon.dns.start(daemon, &network);
        }
        Ok(())
    };
    if let Err(reason) = lease_all() {
        for (network_id, address) in leased {
            runtime::network::release(&network_id, address, &id);
        }
        return Err(reason);
    }
    let mut made_volumes = Vec::new();
    let offered: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
    let made = dir
        .create(&spec)
        .and_then(|()| dir.mark_arriving(&offered))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            new_file(&dir.writable_disk())?
                .set_len(writable_bytes)
                .map_err(|e| format!("the writable disk: {e}"))
        })
        .and_then(|()| {
            for volume in &volumes {
                let (kind, device) = (volume.kind, volume.device.as_deref());
                match runtime::volume::create_on(&volume.name, volume.labels.clone(), volume.anonymous, kind, device) {
                    Ok((_, true)) => made_volumes.push(volume.name.clone()),
                    // The same directory's volume, kept here (checked above).
                    Ok((here, false)) if device.is_some() && here.device.as_deref() == device => {}
                    Ok((_, false)) => return Err(format!("a volume named {} is on this host already", volume.name)),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        });
    if let Err(reason) = made {
        crate::networking::release(&id, &spec.network);
        let _ = dir.remove();
        for name in &made_volumes {
            let _ = runtime::volume::remove(name);
        }
        return Err(reason);
    }
    let template = match template {
        None => Template::None,
        Some(identity) => match runtime::template::find_by_identity(&identity, spec.memory_mib, spec.cpus) {
            Some(dir) => Template::Here(dir),
            None => Template::Wanted(identity),
        },
    };
    Ok(Prepared {
        dir,
        record,
        memory_mib: spec.memory_mib,
        template,
        volumes: made_volumes,
        image_wanted: image_wanted.then_some(image),
    })
}

/// The offered volumes are the spec's: disk volumes and volumes of the
/// source's own, new here (their files come in the VM's stream; the data
/// of one this host has would be overwritten), or volumes of a directory
/// on this host's shared storage.
fn check_volumes(
    mounts: &[runtime::volume::VolumeMount],
    offered: &[runtime::volume::VolumeRecord],
    storage: &[std::path::PathBuf],
) -> Result<(), String> {
    if mounts.len() != offered.len() || mounts.iter().zip(offered).any(|(m, v)| m.name != v.name) {
        return Err("the volumes offered are not the container's".into());
    }
    for volume in offered {
        if !runtime::volume::valid_name(&volume.name) {
            return Err(format!("\"{}\" is not a volume name", volume.name));
        }
        let here = runtime::volume::get(&volume.name).ok().flatten();
        match (volume.kind, &volume.device) {
            (runtime::volume::VolumeKind::Disk, Some(_)) => {
                return Err(format!("volume {} is a disk with a host directory", volume.name));
            }
            (runtime::volume::VolumeKind::Disk, _) if here.is_some() => {
                return Err(format!("a volume named {} is on this host already", volume.name));
            }
            (runtime::volume::VolumeKind::Disk, _) => {}
            // A directory both hosts see: the same volume here, or made.
            (runtime::volume::VolumeKind::Shared, Some(device))
                if super::shared_storage::on_shared(device, storage) =>
            {
                if here.is_some_and(|here| here.device.as_ref() != Some(device)) {
                    return Err(format!(
                        "a volume named {} is on this host already, not of {}",
                        volume.name,
                        device.display()
                    ));
                }
            }
            (runtime::volume::VolumeKind::Shared, Some(_)) => {
                return Err(format!(
                    "volume {} is a directory not on this host's shared storage (hulld --shared-storage)",
                    volume.name
                ));
            }
            // A volume of the source's own: its files come in the VM's
            // stream, into a new, empty one.
            (runtime::volume::VolumeKind::Shared, None) if here.is_some() => {
                return Err(format!("a volume named {} is on this host already", volume.name));
            }
            (runtime::volume::VolumeKind::Shared, None) => {}
        }
    }
    Ok(())
}

/// Takes the template the source's VM is a clone of (its state, then its
/// memory) and keeps it, checked against its identity, for every clone of
/// it that comes later.
fn receive_template(
    control: &mut UnixStream,
    identity: &str,
    prepared: &Prepared,
) -> Result<std::path::PathBuf, String> {
    let failed = |e: wire::WireError| e.to_string();
    let staging = runtime::template::arriving_dir(identity, &prepared.record.id)?;
    let received = (|| {
        let state = new_file(&vmm::snapshot::state_path(&staging))?;
        wire::receive_file(control, &state, MAX_TEMPLATE_STATE).map_err(failed)?;
        let memory = new_file(&vmm::snapshot::memory_path(&staging))?;
        wire::receive_file(control, &memory, prepared.memory_mib << 20).map_err(failed)?;
        Ok::<_, String>(())
    })();
    if let Err(e) = received {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    runtime::template::keep_arrived(&staging, identity, prepared.memory_mib)
}

/// Takes the container's image, image `id`, as the source saved it (a
/// tar, untrusted: `image::load` unpacks it safely and checks every
/// layer's digest); it must be that image. The names the tar carries are
/// not taken (a peer must not repoint this host's names); the container's
/// (`named`) is given to it only if free here.
fn receive_image(
    daemon: &Arc<Daemon>,
    control: &mut UnixStream,
    id: &image::digest::Digest,
    named: &str,
) -> Result<(), String> {
    let tar =
        super::scratch_file(&daemon.images.root().join("partial")).map_err(|e| format!("the image's tar: {e}"))?;
    wire::receive_file(control, &tar, MAX_IMAGE).map_err(|e| e.to_string())?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tar));
    let loaded = image::load::load_untagged(&daemon.images, std::path::Path::new(&path))
        .map_err(|e| format!("the image the source sent: {e}"))?;
    if !loaded.iter().any(|image| image.record.id == *id) {
        return Err(format!("the source sent another image than the container's ({id})"));
    }
    // The container was made by the image's ID: no name to give.
    let by_id = id
        .to_string()
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.starts_with(named.trim_start_matches("sha256:")));
    if !by_id && daemon.images.resolve(named).is_err() {
        if let Err(e) = daemon.images.tag(&id.to_string(), named) {
            tracing::warn!("naming the image a move brought {named}: {e}");
        }
    }
    Ok(())
}

fn new_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Tells the arriving container's supervisor how far the source's output
/// got, once its socket is there.
fn tell_resume(dir: &ContainerDir, output_frames: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match dir.connect() {
            Ok(mut conn) => {
                return conn
                    .send(&proto::Frame::Control(proto::Control::Resume { output_frames }))
                    .map_err(|e| format!("telling the supervisor where the output resumes: {e}"))
            }
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("the arriving container's supervisor: {e}")),
        }
    }
}

/// Whether `conn` has something to read (or its end) within `timeout`.
fn readable(conn: &UnixStream, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) > 0 }
}
