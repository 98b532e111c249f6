//! Sending this running VM to another hull-vmm (`VmmRequest::Migrate`,
//! the connection's descriptor passed with it): the VM as a
//! `migration::Source`. Written pages come from the soft-dirty bits,
//! read and cleared with every vCPU and device thread parked (so no write
//! falls between the two); pauses and the throttle's duty cycle go
//! through the pause gate; the state is what a snapshot captures.
//!
//! Reading every page's soft-dirty bit costs time in proportion to the
//! memory the guest has touched, so the last full scan is made before the
//! pause, with the guest and its devices running on: KVM's dirty log (on
//! since the migration began) and the VMM's own record of its writes
//! (`guest_memory`), both emptied just before the scan, hold what is
//! written from then to the pause, which reads only those two bitmaps.

use std::fs::File;
use std::time::{Duration, Instant};

use crate::guest_memory::GuestMemoryMmap;
use proto::vmm_control::VmmReply;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::Vmm;
use crate::migration::pagemap::Pagemap;
use crate::migration::send::{self, Limits, Progress, Source};
use crate::migration::stream::{DiskShape, Hello, VmShape, MAX_STATE, PAGE_SIZE, VERSION};
use crate::migration::{disks, OutgoingDisk, OutgoingTree, PageSet};
use crate::{guest_memory, persist, snapshot, vcpu_state};

/// What a migration's `State` frame carries: the VM's state as a snapshot
/// holds it, and what devices' host sides hold of the guest's view, by
/// slot (`DeviceManager::backend_states`).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct MovedState {
    /// As bytes, not a sequence of them: the same on the wire, and
    /// encoded and decoded in one copy, not byte by byte, in the downtime.
    #[serde(with = "serde_bytes")]
    pub vm: Vec<u8>,
    pub backends: Vec<(u32, Vec<u8>)>,
}

/// The throttle's period: a throttled guest stands still for its share
/// of every such slice.
const THROTTLE_PERIOD: Duration = Duration::from_millis(100);

/// The host address of guest page 0 and the number of pages, for a VM's
/// one memory region.
pub(super) fn memory_span(memory: &GuestMemoryMmap) -> Option<(u64, u64)> {
    let region = memory.iter().next()?;
    let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
    Some((host as u64, region.len() / PAGE_SIZE as u64))
}

struct Outgoing<'v, 'a> {
    vmm: &'v mut Vmm<'a>,
    pagemap: &'v Pagemap,
    paused: bool,
    throttle: u8,
    /// When the throttle's current phase began, and whether it is the
    /// phase in which the guest stands still.
    phase_since: Instant,
    held: bool,
    /// The MSRs to save, read from the host before the guest is paused.
    msrs: Vec<u32>,
    /// The disks whose content travels.
    disks: Vec<OutgoingDisk>,
    /// The shared directories whose files travel.
    trees: Vec<OutgoingTree>,
    same_host: bool,
    /// Set once KVM's log and the VMM's record were emptied for the last
    /// full scan: from then on they hold every write.
    narrowed: bool,
    /// That last full scan is done: the logs are read instead.
    scanned: bool,
    /// KVM logs the guest's writes (from the migration's start).
    kvm_log: bool,
    /// The state as the log began, until it is sent ahead of the pages.
    early: Option<Result<Vec<u8>, String>>,
}

/// Where a VM goes: whether its read-write disks' content travels (the
/// destination has empty copies), whether the destination is on this
/// host (it opens the same files, through the same page cache), and
/// which shared directories' files travel (into empty ones).
#[derive(Debug, Clone, Copy)]
pub(super) struct Route<'s> {
    pub send_disks: bool,
    pub same_host: bool,
    pub send_shares: &'s [u8],
}

impl Outgoing<'_, '_> {
    fn stop_world(&mut self) -> std::io::Result<()> {
        self.vmm.pause().map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Lets the world go on, unless the throttle holds it now.
    fn restart_world(&mut self) {
        if !self.held {
            self.vmm.gate.release();
        }
    }

    /// Turns KVM's dirty log of guest memory on or off (it starts empty).
    fn log_guest_writes(&self, on: bool) -> std::io::Result<()> {
        let flags = if on { kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        super::builder::set_memory_slots(self.vmm.vm, self.vmm.memory, self.vmm.config.memory_mib, flags)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// The pages KVM logged as the guest's writes since the last call.
    fn guest_writes(&self) -> std::io::Result<PageSet> {
        let mut dirty = PageSet::empty((self.vmm.config.memory_mib << 20) / PAGE_SIZE as u64);
        let mut first_page = 0;
        for (slot, region) in self.vmm.memory.iter().enumerate() {
            let words = self
                .vmm
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(std::io::Error::other)?;
            let pages = region.len() / PAGE_SIZE as u64;
            dirty.add_region(first_page, words, pages);
            first_page += pages;
        }
        Ok(dirty)
    }

    /// The VM's state (it stands still) as the destination takes it.
    fn encoded_state(&self) -> Result<Vec<u8>, String> {
        let state = persist::capture(
            self.vmm.vm,
            self.vmm.devices,
            self.vmm.vcpus,
            &self.msrs,
            self.vmm.config.memory_mib,
        )
        .map_err(|e| e.to_string())?;
        // The shares' open files and inodes, by name (none of this host's
        // descriptors can go); a file that cannot be found again fails the
        // move here, with the guest still paused on this side.
        let backends = self.vmm.devices.backend_states()?;
        crate::trace::mark("migration: state captured, encoding");
        let vm = snapshot::encode_unsealed(&state).map_err(|e| e.to_string())?;
        let moved = postcard::to_stdvec(&MovedState { vm, backends }).map_err(|e| e.to_string())?;
        if moved.len() > MAX_STATE {
            return Err(format!(
                "the VM's state is {} MiB; a migration carries at most {} MiB (its shared directories hold too \
                 many inodes or listings)",
                moved.len() >> 20,
                MAX_STATE >> 20
            ));
        }
        Ok(moved)
    }

    /// Ends KVM's log (and so the narrowed one).
    fn widen(&mut self) {
        self.narrowed = false;
        self.scanned = false;
        if std::mem::take(&mut self.kvm_log) {
            let _ = self.log_guest_writes(false);
        }
    }
}

impl Source for Outgoing<'_, '_> {
    fn memory(&self) -> &GuestMemoryMmap {
        self.vmm.memory
    }

    fn start_dirty_log(&mut self) -> std::io::Result<()> {
        self.pagemap.check_soft_dirty()?;
        self.stop_world()?;
        let split = self.pagemap.split_huge_pages();
        // KVM's log is turned on now, with the guest out of KVM_RUN (a
        // memory slot's change waits for every vCPU to leave it: tens of
        // ms with a busy guest on one emulated CPU); it is read only at
        // the switch-over, so each page faults once, at its first write.
        self.kvm_log = self.log_guest_writes(true).is_ok();
        // The guest stands still here anyway: its state is taken for the
        // destination to check (and rehearse) before the memory travels.
        self.early = Some(self.encoded_state());
        self.restart_world();
        split?;
        // Writes from here on show; round 0 reads every page after this.
        self.pagemap.clear_soft_dirty()
    }

    fn take_dirty(&mut self) -> std::io::Result<PageSet> {
        if self.narrowed {
            if !std::mem::replace(&mut self.scanned, true) {
                // The last full scan: what is written during it is in the
                // two logs.
                return self.pagemap.soft_dirty();
            }
            let mut dirty = self.guest_writes()?;
            let vmm_writes = guest_memory::take_vmm_writes(self.vmm.memory);
            if crate::trace::enabled() {
                crate::trace::mark(&format!(
                    "migration: the logs read: {} pages by the guest, {} by the VMM",
                    dirty.count(),
                    vmm_writes.count()
                ));
            }
            dirty.add(&vmm_writes);
            return Ok(dirty);
        }
        if self.paused {
            // The last scan: the guest stands still until it moves or
            // resumes here, and a new migration clears the bits when its log
            // starts. Clearing now would walk every page table entry and
            // make KVM drop the guest's nested page tables, in the downtime.
            return self.pagemap.soft_dirty();
        }
        self.stop_world()?;
        let taken = self.pagemap.soft_dirty().and_then(|dirty| {
            self.pagemap.clear_soft_dirty()?;
            Ok(dirty)
        });
        self.restart_world();
        taken
    }

    fn narrow_dirty_log(&mut self) -> std::io::Result<bool> {
        if !self.kvm_log {
            return Ok(false);
        }
        // Both read to empty them: from here they hold every write. (The
        // VMM marks a page after writing it: a mark emptied here is of a
        // write made before the scan that follows.)
        self.guest_writes()?;
        guest_memory::take_vmm_writes(self.vmm.memory);
        crate::trace::mark("migration: KVM's log and the VMM's record emptied");
        self.narrowed = true;
        Ok(true)
    }

    fn stop_dirty_log(&mut self) {
        self.widen();
    }

    fn pause(&mut self) -> Result<(), String> {
        self.vmm.pause().map_err(|e| e.to_string())?;
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) {
        self.paused = false;
        self.held = false;
        self.vmm.gate.release();
    }

    fn throttle(&mut self, percent: u8) {
        self.throttle = percent;
        if percent == 0 && self.held {
            self.held = false;
            if !self.paused {
                self.vmm.gate.release();
            }
        }
    }

    fn tick(&mut self) {
        if self.throttle == 0 || self.paused {
            return;
        }
        let stand_still = THROTTLE_PERIOD * u32::from(self.throttle) / 100;
        let phase = match self.held {
            true => stand_still,
            false => THROTTLE_PERIOD - stand_still,
        };
        if self.phase_since.elapsed() < phase {
            return;
        }
        self.phase_since = Instant::now();
        if self.held {
            self.held = false;
            self.vmm.gate.release();
        } else {
            // No waiting for every thread to park: slowing is enough.
            self.held = true;
            self.vmm.gate.request();
            self.vmm.vcpus.iter().for_each(crate::vcpu::Vcpu::kick);
        }
    }

    fn disks(&self) -> &[OutgoingDisk] {
        &self.disks
    }

    fn trees(&mut self) -> &mut [OutgoingTree] {
        &mut self.trees
    }

    fn flush_ahead(&mut self) {
        // An error here is the pause's to report: its flush runs again.
        if !self.same_host && self.vmm.devices.flush().is_ok() {
            crate::trace::mark("migration: disks flushed ahead");
        }
    }

    fn early_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.early.take().transpose()
    }

    fn state(&mut self) -> Result<Vec<u8>, String> {
        // What the guest was told is written must be on the disks (and
        // shared files) the next host opens, not in this host's page cache;
        // a VMM on this host reads that cache.
        if !self.same_host {
            self.vmm
                .devices
                .flush()
                .map_err(|e| format!("flushing the disks and shared files: {e}"))?;
            crate::trace::mark("migration: disks flushed");
        }
        self.encoded_state()
    }
}

/// How long one read or write on the connection may wait: the guest stands
/// still while the source waits for the destination's word that it holds
/// the VM, so a destination that hangs (or stops reading) must not hold it
/// for ever.
const LINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Readies the connection (a socket): blocking (a supervisor built on an
/// async runtime may hand over a non-blocking one), and every read and
/// write bounded by `LINK_TIMEOUT`.
fn prepare_link(conn: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = conn.as_raw_fd();
    let check = |status: libc::c_int| match status {
        -1 => Err(std::io::Error::last_os_error()),
        ok => Ok(ok),
    };
    // SAFETY: fcntl(2) on a valid descriptor.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK != 0 {
        // SAFETY: as above.
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    }
    let timeout = libc::timeval {
        tv_sec: LINK_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt(2) with a valid descriptor and a timeval of
        // the size given.
        check(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Sends the VM over `conn`. Ok: the destination runs it and this VMM is
/// to end; Err: the VM runs on here.
/// Each round's progress goes to `progress` (and hull-vmm's standard error).
pub(super) fn migrate(
    vmm: &mut Vmm,
    conn: File,
    limits: proto::MoveLimits,
    route: Route,
    progress: &mut dyn FnMut(proto::MigrationProgress),
) -> Result<VmmReply, String> {
    if route.same_host && !route.send_shares.is_empty() {
        return Err("shared directories travel only to another host".into());
    }
    // Borrowed for the migration, given back if it fails.
    let pagemap = match std::mem::replace(&mut vmm.pagemap, Err("a migration is under way".into())) {
        Ok(pagemap) => pagemap,
        Err(why) => {
            vmm.pagemap = Err(why.clone());
            return Err(why);
        }
    };
    let result = match vmm.devices.migration_blocker() {
        Some(why) => Err(format!("this VM cannot be migrated: {why}")),
        None => migrate_with(vmm, &pagemap, conn, limits, route, progress),
    };
    vmm.pagemap = Ok(pagemap);
    result
}

fn migrate_with(
    vmm: &mut Vmm,
    pagemap: &Pagemap,
    conn: File,
    limits: proto::MoveLimits,
    route: Route,
    progress: &mut dyn FnMut(proto::MigrationProgress),
) -> Result<VmmReply, String> {
    let send_disks = route.send_disks;
    let disk_handles = vmm.devices.disks().map_err(|e| format!("the VM's disks: {e}"))?;
    let disk_shapes = disk_handles
        .iter()
        .map(|d| DiskShape {
            bytes: d.bytes,
            read_only: d.read_only,
            travels: disks::travels(send_disks, d.read_only),
        })
        .collect();
    let disks = (0..)
        .zip(disk_handles)
        .filter(|(_, d)| disks::travels(send_disks, d.read_only))
        .map(|(disk, d)| OutgoingDisk {
            disk,
            file: d.file,
            bytes: d.bytes,
            written: d.written,
        })
        .collect();
    let trees = vmm
        .devices
        .share_roots(route.send_shares)?
        .into_iter()
        .zip(route.send_shares)
        .map(|(root, &share)| OutgoingTree::new(share, root).map_err(|e| format!("shared directory {share}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    let memory_bytes = vmm.config.memory_mib << 20;
    let clone_of = vmm.clone_of;
    let pages = memory_bytes / PAGE_SIZE as u64;
    // Read when round 0 starts, after the dirty log: a template page the
    // clone first writes in between is then in one set or the other.
    let first_round = |has_template: bool| match (clone_of, has_template) {
        (Some(_), true) => pagemap.private_pages(),
        _ => Ok(PageSet::full(pages)),
    };
    let hello = Hello {
        version: VERSION,
        page_size: PAGE_SIZE as u32,
        shape: VmShape {
            memory_bytes,
            vcpus: vmm.vcpus.len() as u32,
            devices: vmm.devices.device_types(),
            nics_on_taps: vmm.devices.nics_on_taps(),
            disks: disk_shapes,
            travelling_shares: route.send_shares.to_vec(),
        },
        template: clone_of,
        guest_macs: vmm.devices.guest_macs(),
    };
    let limits = Limits {
        downtime: Duration::from_millis(u64::from(limits.downtime_ms)),
        max_time: Duration::from_secs(u64::from(limits.max_seconds)),
        compress: limits.compress,
        ..Limits::default()
    };
    let mut conn = conn;
    prepare_link(&conn).map_err(|e| format!("the migration connection: {e}"))?;
    // Host constants, read now rather than with the guest paused.
    vcpu_state::check_xsave_size(vmm.kvm).map_err(|e| e.to_string())?;
    let msrs = vcpu_state::msr_indices(vmm.kvm).map_err(|e| e.to_string())?;
    let mut outgoing = Outgoing {
        vmm,
        pagemap,
        paused: false,
        throttle: 0,
        phase_since: Instant::now(),
        held: false,
        msrs,
        disks,
        trees,
        same_host: route.same_host,
        narrowed: false,
        scanned: false,
        kvm_log: false,
        early: None,
    };
    let report = send::send(
        &mut conn,
        &mut outgoing,
        hello,
        &first_round,
        &limits,
        &mut |p: &Progress| {
            eprintln!(
                "hull-vmm: migration round {}: {} pages ({} bytes) sent at {} MB/s; {} pages dirtied ({} MB/s); \
                 downtime now {} ms; throttle {}%",
                p.round,
                p.pages_sent,
                p.bytes_sent,
                p.bandwidth / 1_000_000,
                p.dirty_pages,
                p.dirty_rate / 1_000_000,
                p.expected_downtime_ms,
                p.throttle
            );
            progress(*p);
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(VmmReply::Migrated {
        rounds: report.rounds,
        bytes_sent: report.bytes_sent,
        pages_sent: report.pages_sent,
        zero_pages: report.zero_pages,
        total_ms: report.total.as_millis() as u64,
        downtime_ms: report.downtime.as_millis() as u64,
        max_throttle: report.max_throttle,
        confirmed: report.confirmed,
    })
}

#[cfg(test)]
mod tests {
    use super::MovedState;

    #[test]
    fn the_moved_state_is_its_length_then_its_bytes_on_the_wire() {
        let moved = MovedState {
            vm: vec![7, 8, 9],
            backends: vec![(2, vec![5])],
        };
        let wire = postcard::to_stdvec(&moved).unwrap();
        // What a sequence of bytes was before: sources of either build agree.
        assert_eq!(wire, [3, 7, 8, 9, 1, 2, 1, 5]);
        let back: MovedState = postcard::from_bytes(&wire).unwrap();
        assert_eq!((back.vm, back.backends), (vec![7, 8, 9], vec![(2, vec![5])]));
    }
}
