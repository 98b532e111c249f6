//! hulld's state and the life of its containers: starting one (its
//! supervisor, `hull-shim`, runs the VM and outlives hulld), watching each
//! running container for its end, and what happens then (`--rm`, restart
//! policies), told to waiters as events.

use std::sync::Arc;
use std::time::Duration;

use runtime::container::ContainerDir;
use runtime::network::Policy;

use crate::api::ApiError;
use crate::store::{ContainerRecord, ContainerStore};

/// How many containers that moved to other hosts hulld remembers the
/// destination of (for their execs still attached here).
const MOVED_TO_KEPT: usize = 4096;

pub struct Daemon {
    pub containers: ContainerStore,
    pub images: Arc<image::Store>,
    pub execs: crate::exec::Execs,
    pub events_log: crate::events::EventLog,
    /// The runtime the container watchers (threads) report back to.
    pub handle: tokio::runtime::Handle,
    /// Name service on each user-defined network's gateway.
    pub dns: crate::dns::DnsServers,
    /// Names other hosts serve on networks that span them.
    pub remote_names: crate::span_names::RemoteNames,
    /// Containers that ended and wait out their restart policy's delay:
    /// Docker's "restarting" state.
    restarting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Running containers' healthchecks.
    pub health: crate::health::HealthStates,
    /// Places for long-lived streams (`logs -f`, attach, events…).
    pub streams: crate::slots::StreamSlots,
    /// Wakes log followers when a container's log grows.
    pub log_watcher: crate::follow::LogWatcher,
    /// Containers moving to another host: their end here is no death.
    departing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Containers that moved to another host, and where: their execs here
    /// are taken back through that host's hulld.
    moved_to: ByContainer<crate::migrate::link::Peer>,
    /// Containers that came from another host, and from where: only that
    /// host's hulld relays to their attached clients (`attach_relay`).
    arrived_from: ByContainer<std::net::IpAddr>,
    /// Arriving containers' data connections, on their way to the move
    /// that waits for them.
    pub arrivals: crate::migrate::arriving::Arrivals,
    /// How this hulld reaches other hosts' (set once at start; plain TCP
    /// on loopback only until then).
    migration: std::sync::OnceLock<crate::migrate::link::Security>,
    /// Directories every host sees at the same path (`--shared-storage`).
    shared_storage: std::sync::OnceLock<Vec<std::path::PathBuf>>,
}

impl Daemon {
    pub fn new(containers: ContainerStore, images: image::Store, streams: crate::slots::StreamSlots) -> Arc<Daemon> {
        Arc::new(Daemon {
            containers,
            images: Arc::new(images),
            execs: crate::exec::Execs::default(),
            events_log: crate::events::EventLog::default(),
            handle: tokio::runtime::Handle::current(),
            dns: crate::dns::DnsServers::default(),
            remote_names: Default::default(),
            restarting: Default::default(),
            health: Default::default(),
            streams,
            log_watcher: crate::follow::LogWatcher::start(),
            departing: Default::default(),
            moved_to: Default::default(),
            arrived_from: Default::default(),
            arrivals: Default::default(),
            migration: Default::default(),
            shared_storage: Default::default(),
        })
    }

    /// Says how this hulld reaches other hosts' hullds (once, at start).
    pub fn set_migration_security(&self, security: crate::migrate::link::Security) {
        let _ = self.migration.set(security);
    }

    /// Names the directories every host sees at the same path, resolved
    /// (`migrate::shared_storage`).
    pub fn set_shared_storage(&self, dirs: Vec<std::path::PathBuf>) {
        let _ = self.shared_storage.set(dirs);
    }

    pub fn shared_storage(&self) -> Vec<std::path::PathBuf> {
        self.shared_storage.get().cloned().unwrap_or_default()
    }

    pub fn migration_security(&self) -> crate::migrate::link::Security {
        self.migration
            .get()
            .cloned()
            .unwrap_or(crate::migrate::link::Security::Plain { insecure: false })
    }

    /// Marks container `id` as leaving for another host (`true`) or as
    /// staying after all.
    pub fn set_departing(&self, id: &str, departing: bool) {
        if let Ok(mut set) = self.departing.lock() {
            match departing {
                true => set.insert(id.to_string()),
                false => set.remove(id),
            };
        }
    }

    pub fn is_departing(&self, id: &str) -> bool {
        self.departing.lock().is_ok_and(|set| set.contains(id))
    }

    /// Records that container `id` runs on the host `to` now.
    pub fn set_moved_to(&self, id: &str, to: crate::migrate::link::Peer) {
        self.moved_to.insert(id, to);
    }

    /// Container `id` is on this host (again): its execs are reached here.
    pub fn forget_moved_to(&self, id: &str) {
        self.moved_to.remove(id);
    }

    /// Where container `id` went, if it moved to another host.
    pub fn moved_to(&self, id: &str) -> Option<crate::migrate::link::Peer> {
        self.moved_to.get(id)
    }

    /// Records (`Some`) or forgets the host container `id` is arriving from.
    pub fn set_arrived_from(&self, id: &str, from: Option<std::net::IpAddr>) {
        match from {
            Some(from) => self.arrived_from.insert(id, from),
            None => self.arrived_from.remove(id),
        }
    }

    /// The host container `id` came from, if it came from another.
    pub fn arrived_from(&self, id: &str) -> Option<std::net::IpAddr> {
        self.arrived_from.get(id)
    }

    /// Whether container `id` waits to be restarted under its policy.
    pub fn is_restarting(&self, id: &str) -> bool {
        self.restarting.lock().is_ok_and(|set| set.contains(id))
    }

    /// Marks container `id` as waiting to restart, or as no longer; says
    /// whether it was.
    fn set_restarting(&self, id: &str, restarting: bool) -> bool {
        let Ok(mut set) = self.restarting.lock() else {
            return false;
        };
        match restarting {
            true => !set.insert(id.to_string()),
            false => set.remove(id),
        }
    }

    /// Calls off a pending restart (`stop`, `rm -f`): the container stays down.
    pub fn cancel_restart(&self, id: &str) -> Result<bool, ApiError> {
        if !self.is_restarting(id) {
            return Ok(false);
        }
        self.containers.modify(id, |r| r.manually_stopped = true)?;
        Ok(self.set_restarting(id, false))
    }

    /// A container event for `docker events`: its name, image and labels
    /// as attributes, plus `extra`.
    pub fn container_event(&self, id: &str, action: &str, extra: &[(&str, &str)]) {
        let Ok(record) = self.containers.find(id) else { return };
        self.container_event_of(&record, action, extra);
    }

    pub fn container_event_of(&self, record: &ContainerRecord, action: &str, extra: &[(&str, &str)]) {
        self.container_event_with_code(record, action, extra, None);
    }

    /// As `container_event_of`, with the container's exit code (die, destroy).
    fn container_event_with_code(
        &self,
        record: &ContainerRecord,
        action: &str,
        extra: &[(&str, &str)],
        exit_code: Option<i32>,
    ) {
        let mut attributes: Vec<(&str, &str)> = vec![("name", &record.name), ("image", &record.image)];
        attributes.extend(record.config.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        attributes.extend_from_slice(extra);
        self.events_log
            .emit_with_code("container", action, &record.id, &attributes, exit_code);
    }

    /// After a restart of hulld: watch every container that still runs.
    /// The firewall is made to say exactly what the running containers
    /// publish (a supervisor killed with its VM left its ports behind).
    pub fn recover(self: &Arc<Self>) -> Result<usize, ApiError> {
        crate::migrate::arriving::sweep_half_arrived(self);
        let mut running = 0;
        for record in self.containers.all()? {
            if ContainerDir::new(&record.id).is_running() {
                running += 1;
                self.watch(&record.id);
            }
        }
        self.sync_firewall()?;
        Ok(running)
    }

    /// Makes hull's firewall say exactly what the store does: every
    /// network's rules, and the ports of the running containers (a
    /// supervisor killed with its VM could not take its own back).
    pub fn sync_firewall(&self) -> Result<(), ApiError> {
        let networks = runtime::network::list()?;
        if networks.is_empty() {
            return Ok(()); // nothing of hull's on this host's firewall
        }
        let mut running = Vec::new();
        for record in self.containers.all()? {
            let dir = ContainerDir::new(&record.id);
            if !dir.is_running() {
                continue;
            }
            if let Ok(spec) = dir.spec() {
                running.push((record.id.clone(), spec.network));
            }
        }
        if let Err(e) = runtime::network::firewall::reconcile(&networks, &running) {
            tracing::warn!("rebuilding hull's firewall rules: {e}");
        }
        Ok(())
    }

    /// Starts a container that is not running (blocking). An `--rm`
    /// container that cannot start is removed, as Docker does.
    pub fn start(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let started = self.start_once(id);
        if started.is_err() && self.containers.find(id).is_ok_and(|r| auto_remove(&r)) {
            let _ = self.remove(id, 125, true);
        }
        started
    }

    fn start_once(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        vmm::trace::mark("start: asked");
        let dir = ContainerDir::new(id);
        let spec = dir.spec()?;
        if let Some(target) = &spec.joins {
            if !ContainerDir::new(target).is_running() {
                return Err(ApiError::conflict(runtime::join::not_running(target)));
            }
        }
        crate::links::check_at_start(self, &self.containers.find(id)?, &spec.network)?;
        // A volume another VM has is refused here, with a 409, rather than
        // by the supervisor after it started (it checks again, race-free).
        for mount in &spec.volumes {
            drop(runtime::volume::lock(&mount.name)?);
        }
        // Its networks' names are served before its guest can ask.
        for endpoint in &spec.network.endpoints {
            if let Ok(network) = runtime::network::load(&endpoint.network_id) {
                self.dns.start(self, &network);
            }
        }
        vmm::trace::mark("start: checked");
        dir.start()?;
        vmm::trace::mark("start: the command runs");
        self.container_event(id, "start", &[]);
        self.watch(id);
        vmm::trace::mark("start: answered");
        Ok(())
    }

    /// A thread that waits for the container's end (told by its supervisor,
    /// or seen in its state if the supervisor cannot be reached), then
    /// hands over to `exited`.
    pub(crate) fn watch(self: &Arc<Self>, id: &str) {
        crate::health::monitor(self, id);
        let daemon = self.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let dir = ContainerDir::new(&id);
            if let Ok(mut conn) = dir.connect() {
                conn.wait_exit();
            }
            while dir.is_running() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if dir
                .spec()
                .is_ok_and(|s| !s.network.ports.is_empty() || s.network.policy != Policy::Open)
            {
                let _ = daemon.sync_firewall();
            }
            let handle = daemon.handle.clone();
            handle.spawn(async move { daemon.exited(id).await });
        });
    }

    async fn exited(self: Arc<Self>, id: String) {
        let dir = ContainerDir::new(&id);
        let code = match dir.state() {
            Ok(Some(state)) => state.exit_code.unwrap_or(255),
            _ => 255,
        };
        if self.is_departing(&id) {
            return; // it runs on another host: the move forgets it here
        }
        tracing::info!("container {id} exited with {code}");
        let Ok(record) = self.containers.find(&id) else {
            return; // removed meanwhile
        };
        self.container_event_with_code(&record, "die", &[("exitCode", &code.to_string())], Some(code));
        if auto_remove(&record) {
            let daemon = self.clone();
            let _ = crate::api::blocking(move || daemon.remove(&id, code, true)).await;
            return;
        }
        if let Some(delay) = restart_delay(&record, code) {
            self.set_restarting(&id, true);
            tokio::time::sleep(delay).await;
            let daemon = self.clone();
            let _ = crate::api::blocking(move || {
                daemon.set_restarting(&id, false);
                // Stopped, removed or started by hand meanwhile: leave it.
                let record = daemon.containers.find(&id)?;
                if record.manually_stopped || ContainerDir::new(&id).is_running() {
                    return Ok(());
                }
                daemon.containers.modify(&id, |r| r.restart_count += 1)?;
                tracing::info!("restarting container {id} (policy)");
                daemon.start(&id)
            })
            .await
            .map_err(|e| tracing::warn!("restarting {}: {}", record.id, e.message));
        }
    }

    /// Removes a container that is not running: its files, its record and
    /// its execs; with `anonymous_volumes`,
    /// also the anonymous volumes it alone used (`rm -v`, `--rm`).
    pub fn remove(&self, id: &str, code: i32, anonymous_volumes: bool) -> Result<(), ApiError> {
        let record = self.discard(id, anonymous_volumes)?;
        self.execs.forget_container(id);
        if let Some(record) = record {
            self.container_event_with_code(&record, "destroy", &[], Some(code));
        }
        Ok(())
    }

    /// Forgets a container that is not running here (it ended, or runs on
    /// another host now): its files, its addresses and ports, its record;
    /// the record it had. Its execs stay (those of a container that moved
    /// go on through the other host).
    pub fn discard(&self, id: &str, anonymous_volumes: bool) -> Result<Option<ContainerRecord>, ApiError> {
        let record = self.containers.find(id).ok();
        let spec = ContainerDir::new(id).spec().ok();
        let volumes = spec.as_ref().map(|s| s.volumes.clone()).unwrap_or_default();
        if let Some(vm) = spec.as_ref().and_then(|s| s.joins.as_deref()) {
            forget_joined(vm, id);
        }
        ContainerDir::new(id).remove()?;
        if let Some(spec) = &spec {
            crate::networking::release(id, &spec.network);
            if !spec.network.ports.is_empty() || spec.network.policy != Policy::Open {
                self.sync_firewall()?;
            }
        }
        self.containers.remove(id)?;
        self.set_restarting(id, false);
        self.health.forget(id);
        if anonymous_volumes {
            crate::volumes::remove_anonymous(self, &volumes);
        }
        self.set_departing(id, false);
        Ok(record)
    }
}

/// Tells the running VM of container `vm` that container `id`, which ran
/// in it, is gone: its writes on that VM's disk go too. A VM that does not
/// run keeps them until its own container is removed.
fn forget_joined(vm: &str, id: &str) {
    let vm = ContainerDir::new(vm);
    if !vm.is_running() {
        return;
    }
    let forget = proto::Control::ForgetJoined { id: id.to_string() };
    if let Err(e) = crate::monitor::ask_agent(&vm, forget) {
        tracing::warn!(
            "container {id}'s writes stay in container {}'s VM: {}",
            vm.id,
            e.message
        );
    }
}

/// Something known of containers by ID, at most `MOVED_TO_KEPT` of them,
/// the oldest forgotten first.
struct ByContainer<V>(std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, V)>>);

impl<V> Default for ByContainer<V> {
    fn default() -> Self {
        ByContainer(Default::default())
    }
}

impl<V: Clone> ByContainer<V> {
    fn insert(&self, id: &str, value: V) {
        if let Ok(mut known) = self.0.lock() {
            if known.len() >= MOVED_TO_KEPT && !known.contains_key(id) {
                let oldest = known.iter().min_by_key(|(_, (at, _))| *at).map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    known.remove(&oldest);
                }
            }
            known.insert(id.to_string(), (std::time::Instant::now(), value));
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut known) = self.0.lock() {
            known.remove(id);
        }
    }

    fn get(&self, id: &str) -> Option<V> {
        self.0.lock().ok()?.get(id).map(|(_, value)| value.clone())
    }
}

pub fn auto_remove(record: &ContainerRecord) -> bool {
    record.host_config.auto_remove
}

/// Whether the restart policy restarts a container that ended with
/// `code`, and after how long (doubling from 100 ms, as Docker does, up to
/// a minute).
fn restart_delay(record: &ContainerRecord, code: i32) -> Option<Duration> {
    let policy = &record.host_config.restart_policy;
    let restart = match policy.name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => {
            let max = u64::try_from(policy.maximum_retry_count).unwrap_or(0);
            code != 0 && (max == 0 || u64::from(record.restart_count) < max)
        }
        _ => false,
    };
    // A container stopped by hand stays stopped, whatever its policy.
    if !restart || record.manually_stopped {
        return None;
    }
    let doublings = record.restart_count.min(10);
    Some(Duration::from_millis(100u64 << doublings).min(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_policy(name: &str, max: u64, count: u32, stopped: bool) -> ContainerRecord {
        ContainerRecord {
            id: "x".into(),
            name: "x".into(),
            created: String::new(),
            image: String::new(),
            image_id: String::new(),
            path: String::new(),
            args: vec![],
            config: Default::default(),
            host_config: crate::docker_config::HostConfig {
                restart_policy: crate::docker_config::RestartPolicy {
                    name: name.into(),
                    maximum_retry_count: max as i64,
                },
                ..Default::default()
            },
            restart_count: count,
            manually_stopped: stopped,
            process_env: vec![],
            process_workdir: String::new(),
            process_user: String::new(),
        }
    }

    #[test]
    fn restart_policies_follow_docker() {
        assert_eq!(restart_delay(&with_policy("no", 0, 0, false), 1), None);
        assert_eq!(restart_delay(&with_policy("", 0, 0, false), 1), None);
        assert!(restart_delay(&with_policy("always", 0, 0, false), 0).is_some());
        assert!(restart_delay(&with_policy("unless-stopped", 0, 0, false), 0).is_some());
        assert_eq!(restart_delay(&with_policy("unless-stopped", 0, 0, true), 0), None);
        assert_eq!(restart_delay(&with_policy("on-failure", 0, 0, false), 0), None);
        assert!(restart_delay(&with_policy("on-failure", 2, 1, false), 3).is_some());
        assert_eq!(restart_delay(&with_policy("on-failure", 2, 2, false), 3), None);
        assert_eq!(
            restart_delay(&with_policy("always", 0, 3, false), 0),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            restart_delay(&with_policy("always", 0, 40, false), 0),
            Some(Duration::from_secs(60))
        );
    }
}
