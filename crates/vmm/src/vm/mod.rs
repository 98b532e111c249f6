//! One microVM: built (`builder`), then run by its threads — one per vCPU
//! (`vcpu`), one per virtio device (`devices::virtio::worker`), the control
//! channel's (`control`) — while this, the VMM thread, waits for what they
//! report: the guest's power requests, failures, and control requests,
//! which it carries out (pause, resume, a template's save, a migration to
//! another hull-vmm: `migrate`; `incoming` is the other end).

mod builder;
mod config;
mod error;
mod incoming;
mod migrate;

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use proto::vmm_control::{VmmReply, VmmRequest};

pub use config::*;
pub use error::VmError;
pub(crate) use error::{eventfd, kvm_err, thread_err};

use crate::device_manager::DeviceManager;
use crate::devices::legacy::PowerRequest;
use crate::pause::PauseGate;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{ReplySender, Vcpu, VcpuContext, VmmEvent};
use crate::{persist, trace};

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered itself off.
    Poweroff,
    /// The guest asked to be saved and was (`VmConfig::snapshot_to`).
    Snapshotted,
    /// The guest reset (after a kernel panic, `panic_message` holds its console).
    Reset { panic_message: Option<String> },
    /// The VM was migrated: it runs on another hull-vmm now.
    MigratedAway,
}

/// Why the VMM thread stopped serving.
enum Ended {
    Power(PowerRequest),
    MigratedAway,
}

/// How long a pause may take before it is reported as failed.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Boots (or restores) the VM and runs it until the guest powers off,
/// resets, or, making a template, has been saved.
pub fn run(config: &VmConfig) -> Result<GuestExit, VmError> {
    validate(config)?;
    trace::mark("arguments checked");
    let mut built = builder::build(config)?;
    let control = config.control_socket.as_deref().map(crate::control::bind).transpose()?;
    // What a migration reads of memory pages, opened while /proc is there.
    let pagemap = match migrate::memory_span(&built.memory) {
        Some((base, pages)) if control.is_some() => crate::migration::pagemap::Pagemap::open(base, pages)
            .map_err(|e| format!("this VM cannot be migrated: /proc/self/pagemap: {e}")),
        _ => Err("this VM cannot be migrated (no control channel)".to_string()),
    };
    if let Some(jail) = &config.jail {
        let shares = config.shares.as_ref().is_some_and(|s| !s.is_empty());
        crate::jail::lock_down(jail, config.vcpus, shares)?;
        trace::mark("jailed");
    }
    let devices = Arc::new(built.devices);
    let gate = Arc::new(PauseGate::new());

    seccomp::install_violation_handler()?;
    crate::vcpu::install_kick_handler()?;
    let vmm_filter = seccomp::filter_for(ThreadKind::Vmm)?;
    trace::mark("handlers and the VMM's filter ready");
    let device_threads = devices.spawn_device_threads(&gate)?;
    trace::mark("device threads started");
    if built.incoming.is_some() {
        // A migrated VM stands still until its source lets go (below): its
        // vCPU threads park as they start.
        gate.request();
    }
    let (events, reports) = mpsc::channel();
    if let Some(listener) = control {
        crate::control::serve(listener, events.clone())?;
    }
    let context = Arc::new(VcpuContext {
        devices: devices.clone(),
        gate: gate.clone(),
        events,
        snapshots_allowed: config.snapshot_to.is_some(),
        seccomp_selftest: config.seccomp_selftest,
    });
    let vcpus = built
        .vcpus
        .into_iter()
        .enumerate()
        .map(|(id, fd)| Vcpu::spawn(id as u8, fd, context.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    drop(context);
    trace::mark("vCPU threads started");
    if let Some(mut source) = built.incoming.take() {
        // Everything so far was made while the source still runs the
        // guest: what is left for the downtime is its state, applied in
        // place while every thread is parked (none may touch guest memory
        // while pages arrive, nor a transport while its state is put in).
        if !gate.wait_parked(vcpus.len() + device_threads, PAUSE_TIMEOUT, || {}) {
            return Err(VmError::Migration("the VM's threads did not stand still".into()));
        }
        // Its state goes in under a filter installed now, not in the
        // downtime; the VMM's own goes on top once the guest runs.
        seccomp::install(&seccomp::arrival_filter()?, ThreadKind::Vmm);
        let vcpu_fds = || -> Vec<_> { vcpus.iter().map(|vcpu| crate::device_manager::lock(&vcpu.fd)).collect() };
        let arrived = incoming::receive(&mut source, &built.memory, config, &devices, &mut |early| {
            builder::rehearse_state(vcpu_fds().iter().map(|fd| &**fd), early)
        })?;
        let vcpu_fds = vcpu_fds();
        let applied = builder::apply_state(&built.vm, &devices, vcpu_fds.iter().map(|fd| &**fd), config, &arrived);
        drop(vcpu_fds);
        if let Err(e) = applied {
            // The source runs on: it is told why.
            crate::migration::receive::abort(&mut source, &e.to_string());
            return Err(e);
        }
        // Nothing left that can fail: the source may let go, and the guest
        // runs here from its `Go` on.
        crate::migration::receive::ready(&mut source).map_err(|e| VmError::Migration(e.to_string()))?;
        // Said just before the release, which cannot fail: the source's
        // downtime ends as the vCPUs are told to run (as QEMU's RESUME
        // event does), not whenever this thread next gets its core back
        // from them. Best effort: it only completes the source's report.
        let _ = crate::migration::receive::resumed(&mut source);
        gate.release();
        trace::mark("migration: go; the guest runs here");
        // The network learns the guest's new port now, not when it next speaks.
        devices.announce_moved(&built.announce);
    }
    seccomp::install(&vmm_filter, ThreadKind::Vmm);

    let mut vmm = Vmm {
        gate: &gate,
        vcpus: &vcpus,
        members: vcpus.len() + device_threads,
        config,
        devices: &devices,
        vm: &built.vm,
        kvm: &built.kvm,
        memory: &built.memory,
        pagemap,
        clone_of: built.clone_of,
    };
    let request = match vmm.serve(&reports)? {
        Ended::Power(request) => request,
        Ended::MigratedAway => return Ok(GuestExit::MigratedAway),
    };
    if request == PowerRequest::Snapshot {
        if let Some(dir) = &config.snapshot_to {
            vmm.pause()?;
            persist::save(
                dir,
                &built.vm,
                &devices,
                &built.memory,
                &vcpus,
                &built.msr_indices,
                config.memory_mib,
            )?;
            return Ok(GuestExit::Snapshotted);
        }
    }
    let panic_message = devices.finish_console();
    Ok(match request {
        PowerRequest::Poweroff | PowerRequest::Snapshot => GuestExit::Poweroff,
        PowerRequest::Reset => GuestExit::Reset { panic_message },
    })
}

/// The VMM thread's view of the running VM.
struct Vmm<'a> {
    gate: &'a PauseGate,
    vcpus: &'a [Vcpu],
    /// vCPU and device threads: all park for the VM to be paused.
    members: usize,
    config: &'a VmConfig,
    devices: &'a DeviceManager,
    vm: &'a kvm_ioctls::VmFd,
    kvm: &'a kvm_ioctls::Kvm,
    memory: &'a crate::guest_memory::GuestMemoryMmap,
    /// What a migration reads of guest pages, or why there is none.
    pagemap: Result<crate::migration::pagemap::Pagemap, String>,
    /// The identity of the template this VM is a clone of, if it is one.
    clone_of: Option<[u8; 32]>,
}

impl Vmm<'_> {
    /// Serves control requests until the guest asks for a power change or
    /// the VM has moved to another host.
    fn serve(&mut self, reports: &Receiver<VmmEvent>) -> Result<Ended, VmError> {
        loop {
            let event = reports.recv().map_err(|_| VmError::Vcpu {
                id: 0,
                reason: "all vCPU threads vanished".into(),
            })?;
            match event {
                VmmEvent::Power(request) => return Ok(Ended::Power(request)),
                VmmEvent::Failed(e) => return Err(e),
                VmmEvent::Control {
                    request,
                    fd,
                    reply,
                    written,
                } => {
                    let mut lent = Vec::new();
                    let answer = self.control(request, fd, &mut lent, &reply);
                    let migrated = matches!(answer, VmmReply::Migrated { .. });
                    let _ = reply.send((answer, lent));
                    if migrated {
                        // The supervisor learns the outcome from the reply:
                        // it goes out before this VMM ends.
                        let _ = written.recv_timeout(Duration::from_secs(5));
                        return Ok(Ended::MigratedAway);
                    }
                }
            }
        }
    }

    /// Carries out one request; descriptors to send with the reply go in
    /// `lent`, replies before the last (a migration's progress) to `early`.
    fn control(
        &mut self,
        request: VmmRequest,
        fd: Option<std::fs::File>,
        lent: &mut Vec<std::fs::File>,
        early: &ReplySender,
    ) -> VmmReply {
        let done = |result: Result<(), VmError>| match result {
            Ok(()) => VmmReply::Done,
            Err(e) => VmmReply::Failed { reason: e.to_string() },
        };
        match request {
            VmmRequest::Pause => done(self.pause()),
            VmmRequest::Resume => {
                self.gate.release();
                VmmReply::Done
            }
            VmmRequest::Describe => VmmReply::Described {
                paused: self.gate.requested(),
                vcpus: self.config.vcpus,
                memory_mib: self.config.memory_mib,
            },
            VmmRequest::PlugNic { .. } | VmmRequest::UnplugNic { .. } if self.gate.requested() => VmmReply::Failed {
                reason: "the VM is paused: resume it to change its NICs".into(),
            },
            VmmRequest::PlugNic { slot } => match fd {
                Some(tap) => done(self.devices.plug_nic(slot, Some(tap))),
                None => VmmReply::Failed {
                    reason: "no tap descriptor came with the request".into(),
                },
            },
            VmmRequest::UnplugNic { slot } => done(self.devices.plug_nic(slot, None)),
            // Taking one out changes only the host's side (a container
            // that used it ended); the guest hears when it runs again.
            VmmRequest::PlugDisk { .. } if self.gate.requested() => VmmReply::Failed {
                reason: "the VM is paused: resume it to plug a disk into it".into(),
            },
            VmmRequest::PlugDisk { slot, lasting } => match fd {
                Some(disk) => done(self.devices.plug_disk(slot, Some(disk), lasting)),
                None => VmmReply::Failed {
                    reason: "no disk descriptor came with the request".into(),
                },
            },
            VmmRequest::UnplugDisk { slot } => done(self.devices.plug_disk(slot, None, false)),
            VmmRequest::KeepDisk { slot } => done(self.devices.keep_disk(slot)),
            // For the VMM the VM is about to migrate to on this host.
            VmmRequest::Taps => match self.devices.lend_taps() {
                Ok(taps) => {
                    let slots;
                    (slots, *lent) = taps.into_iter().unzip();
                    VmmReply::Taps { slots }
                }
                Err(e) => VmmReply::Failed {
                    reason: format!("lending the taps: {e}"),
                },
            },
            VmmRequest::Migrate { .. } if self.gate.requested() => VmmReply::Failed {
                reason: "the VM is paused: resume it to migrate it".into(),
            },
            VmmRequest::Migrate {
                downtime_ms,
                max_seconds,
                send_disks,
                uncompressed,
                same_host,
                send_shares,
            } => match fd {
                Some(conn) => {
                    let limits = proto::MoveLimits {
                        downtime_ms,
                        max_seconds,
                        compress: !uncompressed,
                    };
                    let route = migrate::Route {
                        send_disks,
                        same_host,
                        send_shares: &send_shares,
                    };
                    migrate::migrate(self, conn, limits, route, &mut |progress| {
                        let _ = early.send((VmmReply::Progress(progress), Vec::new()));
                    })
                    .unwrap_or_else(|reason| VmmReply::Failed { reason })
                }
                None => VmmReply::Failed {
                    reason: "no connection descriptor came with the request".into(),
                },
            },
        }
    }

    /// Returns once every vCPU and device thread is parked.
    fn pause(&mut self) -> Result<(), VmError> {
        self.gate.request();
        let vcpus = self.vcpus;
        if self
            .gate
            .wait_parked(self.members, PAUSE_TIMEOUT, || vcpus.iter().for_each(Vcpu::kick))
        {
            return Ok(());
        }
        self.gate.release();
        if self.vcpus.iter().any(Vcpu::has_ended) {
            return Err(VmError::Save("the guest has powered off or reset".into()));
        }
        Err(VmError::Save(format!(
            "the VM's threads did not all stop within {} s",
            PAUSE_TIMEOUT.as_secs()
        )))
    }
}
