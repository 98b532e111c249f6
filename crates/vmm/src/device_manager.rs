//! The VM's devices and the bus the vCPUs reach them on: the console and
//! power ports on PIO, the virtio-mmio windows on MMIO.
//!
//! Register accesses are served on the vCPU thread that made them. Queue
//! notifications never reach it: each queue's notify register is an
//! ioeventfd that the device's own thread waits on, and every device raises
//! its interrupt through an irqfd, so no guest I/O runs on a vCPU.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::guest_memory::GuestMemoryMmap;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioSlot;
use crate::devices::legacy::{power_request, PowerRequest};
use crate::devices::serial::{self, Console, ConsoleSink, SerialRegs};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::net::{self, Net};
use crate::devices::virtio::persist::DeviceState;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{
    worker, DeviceKind, Interrupt, VirtioDevice, TYPE_BLOCK, TYPE_FS, TYPE_NET, TYPE_RNG, TYPE_VSOCK,
};
use crate::layout::*;
use crate::migration::stream::SlotMacs;
use crate::pause::PauseGate;
use crate::snapshot::VmState;
use crate::vm::{eventfd, kvm_err, NetBackend, VmConfig, VmError};

/// One virtio-mmio window and the device behind it.
struct VirtioSlot {
    slot: MmioSlot,
    transport: Arc<Mutex<MmioTransport>>,
    /// One per queue, signalled by KVM when the guest writes that queue's
    /// index to the notify register.
    queue_events: Vec<EventFd>,
    /// A restore gave the device another configuration (a disk's size).
    config_changed: AtomicBool,
}

pub struct DeviceManager {
    console: Mutex<Console>,
    virtio: Vec<VirtioSlot>,
}

impl DeviceManager {
    /// The devices the guest gets: disks first (vda, vdb, ...), then vsock,
    /// the entropy source and the NIC. Restoring, each takes its slot's
    /// saved driver state and the console its saved registers.
    pub fn new(
        vm: &VmFd,
        config: &VmConfig,
        memory: &GuestMemoryMmap,
        saved: Option<&VmState>,
    ) -> Result<Self, VmError> {
        let models = device_models(config)?;
        let max = (IOAPIC_PINS - VIRTIO_FIRST_IRQ) as usize;
        if models.len() > max {
            return Err(VmError::TooManyDevices {
                count: models.len(),
                max,
            });
        }
        if let Some(saved) = saved {
            check_device_count(saved, models.len(), config)?;
        }
        let mut virtio = Vec::new();
        for (i, model) in models.into_iter().enumerate() {
            let slot = MmioSlot {
                base: MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
                irq: VIRTIO_FIRST_IRQ + i as u32,
            };
            let irq = eventfd()?;
            vm.register_irqfd(&irq, slot.irq).map_err(kvm_err("KVM_IRQFD"))?;
            let mut queue_events = Vec::new();
            for queue in 0..model.queue_max_sizes().len() as u32 {
                let event = eventfd()?;
                let notify = IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY);
                vm.register_ioevent(&event, &notify, queue)
                    .map_err(kvm_err("KVM_IOEVENTFD"))?;
                queue_events.push(event);
            }
            let interrupt = Arc::new(Interrupt::new(irq));
            let (transport, config_changed) = match saved.and_then(|s| s.devices.get(i)) {
                Some(state) => MmioTransport::restore(model, memory.clone(), interrupt, state)
                    .map_err(|e| VmError::SnapshotMismatch(format!("device {i}: {e}")))?,
                None => (MmioTransport::new(model, memory.clone(), interrupt), false),
            };
            virtio.push(VirtioSlot {
                slot,
                transport: Arc::new(Mutex::new(transport)),
                queue_events,
                config_changed: AtomicBool::new(config_changed),
            });
        }
        Ok(DeviceManager {
            console: Mutex::new(console(vm, config, saved.map(|s| &s.serial))?),
            virtio,
        })
    }

    /// A migrated VM's device state, taken by the devices this VMM made
    /// before it arrived (their threads parked): each transport's driver
    /// state and the console's registers. On an error the VM is discarded.
    pub fn apply_state(&self, config: &VmConfig, state: &VmState) -> Result<(), VmError> {
        check_device_count(state, self.virtio.len(), config)?;
        for (i, (device, saved)) in self.virtio.iter().zip(&state.devices).enumerate() {
            let changed = lock(&device.transport)
                .apply_state(saved)
                .map_err(|e| VmError::SnapshotMismatch(format!("device {i}: {e}")))?;
            device.config_changed.store(changed, Ordering::SeqCst);
        }
        let mut console = lock(&self.console);
        serial::continue_from(&mut console, &state.serial).map_err(|e| VmError::SnapshotMismatch(e.to_string()))
    }

    /// The virtio devices' types, in slot order.
    pub fn device_types(&self) -> Vec<u32> {
        self.virtio.iter().map(|d| lock(&d.transport).device_type()).collect()
    }

    /// A migrated VM, its state applied and its guest not yet running here:
    /// each device tells its driver what stayed behind (vsock: its
    /// connections).
    pub fn announce_arrival(&self) {
        for device in &self.virtio {
            lock(&device.transport).arrived();
        }
    }

    /// Where each virtio device sits, for the ACPI tables.
    pub fn slots(&self) -> Vec<MmioSlot> {
        self.virtio.iter().map(|d| d.slot).collect()
    }

    /// After a restore or a move, once the irqchip is back (so no
    /// interrupt is lost): tells drivers whose device configuration
    /// changed, and has every queue looked at once, as if notified. The
    /// guest may have notified a queue after its old device thread parked
    /// (the notify stayed in the old eventfd), and it waits on that
    /// request without notifying again. The device threads see it when
    /// they start or are released.
    pub fn announce_restore(&self) {
        for device in &self.virtio {
            lock(&device.transport).announce_restore(device.config_changed.load(Ordering::SeqCst));
            for event in &device.queue_events {
                let _ = event.write(1);
            }
        }
    }

    /// Starts the device threads: one per device, but one for all the
    /// NICs. Returns how many.
    pub fn spawn_device_threads(&self, gate: &Arc<PauseGate>) -> Result<usize, VmError> {
        let mut filters = HashMap::new();
        let mut groups: Vec<(String, Vec<worker::Served>)> = Vec::new();
        let mut nics: Vec<worker::Served> = Vec::new();
        let mut first_nic = None;
        for (index, device) in self.virtio.iter().enumerate() {
            let queue_events = device
                .queue_events
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(crate::vm::thread_err("device"))?;
            let served = worker::Served {
                transport: device.transport.clone(),
                queue_events,
            };
            if !lock(&device.transport).serves() {
                continue;
            }
            let kind = DeviceKind::of(lock(&device.transport).device_type());
            match kind {
                Some(DeviceKind::Net) => {
                    first_nic.get_or_insert(index);
                    nics.push(served);
                }
                _ => {
                    let label = kind.map_or("device", DeviceKind::label);
                    groups.push((format!("{label}{index}"), vec![served]));
                }
            }
        }
        if let Some(first) = first_nic {
            groups.push((format!("net{first}"), nics));
        }
        let count = groups.len();
        for (name, devices) in groups {
            worker::spawn(name, devices, gate.clone(), &mut filters)?;
        }
        Ok(count)
    }

    pub fn pio_out(&self, port: u16, data: &[u8]) -> Option<PowerRequest> {
        if let Some(register) = com1_register(port) {
            if let Some(&byte) = data.first() {
                let _ = lock(&self.console).write(register, byte);
            }
            return None;
        }
        power_request(port, data)
    }

    pub fn pio_in(&self, port: u16, data: &mut [u8]) {
        let value = match com1_register(port) {
            Some(register) => lock(&self.console).read(register),
            None if port == I8042_COMMAND_PORT => 0, // controller idle, no data
            None => 0xff,                            // nothing there: a floating bus
        };
        data.fill(value);
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0),
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((device, offset)) = self.virtio_at(addr) {
            lock(device).write(offset, data);
        }
    }

    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let offset = addr.checked_sub(MMIO_START)?;
        let device = self.virtio.get(usize::try_from(offset / VIRTIO_MMIO_SIZE).ok()?)?;
        Some((&device.transport, offset % VIRTIO_MMIO_SIZE))
    }

    /// Plugs NIC `slot` (the guest's eth`slot`) into `tap`, or into
    /// nothing, while the guest runs.
    pub fn plug_nic(&self, slot: u8, tap: Option<File>) -> Result<(), VmError> {
        let (_, nic) = self.nics().find(|(n, _)| *n == slot).ok_or(VmError::NoSuchNic(slot))?;
        lock(&nic.transport).plug(tap).map_err(|source| VmError::Tap {
            tap: format!("NIC {slot}"),
            source,
        })
    }

    /// Plugs `disk` into empty disk slot `slot` (the guest's vda is 0), or
    /// takes a disk plugged so out again, while the guest runs. A
    /// `lasting` disk becomes the slot's own, as if the VM started with it.
    pub fn plug_disk(&self, slot: u8, disk: Option<File>, lasting: bool) -> Result<(), VmError> {
        let mut transport = lock(&self.disk(slot)?.transport);
        transport
            .plug(disk)
            .map_err(|source| VmError::PlugDisk { slot, source })?;
        if lasting {
            transport
                .keep_plugged()
                .map_err(|source| VmError::PlugDisk { slot, source })?;
        }
        Ok(())
    }

    /// Makes the disk plugged into `slot` while the guest ran the slot's
    /// own, as a `lasting` plug does.
    pub fn keep_disk(&self, slot: u8) -> Result<(), VmError> {
        lock(&self.disk(slot)?.transport)
            .keep_plugged()
            .map_err(|source| VmError::PlugDisk { slot, source })
    }

    /// Disk slot `slot` (the guest's vda is 0).
    fn disk(&self, slot: u8) -> Result<&VirtioSlot, VmError> {
        self.virtio
            .iter()
            .filter(|d| lock(&d.transport).device_type() == TYPE_BLOCK)
            .nth(usize::from(slot))
            .ok_or(VmError::NoSuchDisk(slot))
    }

    /// The NICs, by slot (the guest's eth0 is slot 0).
    fn nics(&self) -> impl Iterator<Item = (u8, &VirtioSlot)> {
        let nics = self
            .virtio
            .iter()
            .filter(|d| lock(&d.transport).device_type() == crate::devices::virtio::TYPE_NET);
        (0..).zip(nics)
    }

    /// Why the VM's devices cannot move to another VMM, if one cannot.
    pub fn migration_blocker(&self) -> Option<String> {
        self.virtio.iter().find_map(|d| lock(&d.transport).migration_blocker())
    }

    /// What each device's host side holds that moves with the VM
    /// (`VirtioDevice::backend_state`), by slot; devices with nothing are
    /// left out. The VM is paused.
    pub fn backend_states(&self) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let mut states = Vec::new();
        for (slot, device) in (0..).zip(&self.virtio) {
            let state = lock(&device.transport).backend_state()?;
            if !state.is_empty() {
                states.push((slot, state));
            }
        }
        Ok(states)
    }

    /// Gives each device what its source's `backend_states` said of it,
    /// before the guest runs here (each slot once, and only a device of
    /// the type that keeps such state takes it).
    pub fn restore_backend_states(&self, states: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (slot, state) in states {
            let device = usize::try_from(*slot)
                .ok()
                .and_then(|slot| self.virtio.get(slot))
                .filter(|_| seen.insert(*slot))
                .ok_or_else(|| format!("a device state for slot {slot}, which this VM has not (or twice)"))?;
            lock(&device.transport)
                .restore_backend_state(state)
                .map_err(|e| format!("device {slot}: {e}"))?;
        }
        Ok(())
    }

    /// The VM's disks, in the guest's order (vda, vdb, ...).
    pub fn disks(&self) -> std::io::Result<Vec<crate::devices::virtio::block::DiskHandle>> {
        let mut disks = Vec::new();
        for device in &self.virtio {
            if let Some(disk) = lock(&device.transport).disk()? {
                disks.push(disk);
            }
        }
        Ok(disks)
    }

    /// A descriptor of each of shared directories `shares` (virtio-fs's).
    pub fn share_roots(&self, shares: &[u8]) -> Result<Vec<File>, String> {
        let fs = self
            .virtio
            .iter()
            .find(|device| lock(&device.transport).device_type() == crate::devices::virtio::TYPE_FS);
        shares
            .iter()
            .map(|&share| match fs {
                Some(fs) => lock(&fs.transport)
                    .share_root(share)
                    .map_err(|e| format!("shared directory {share}: {e}")),
                None => Err("the VM shares no directory".into()),
            })
            .collect()
    }

    /// The shared directories whose files come with a VM migrating here,
    /// each with a descriptor of its directory.
    pub fn receiving_roots(&self) -> Result<Vec<(u8, File)>, String> {
        let mut roots = Vec::new();
        for device in &self.virtio {
            let transport = lock(&device.transport);
            for share in transport.receiving_shares() {
                let root = transport
                    .share_root(share)
                    .map_err(|e| format!("shared directory {share}: {e}"))?;
                roots.push((share, root));
            }
        }
        Ok(roots)
    }

    /// A descriptor of each NIC's tap, by slot (the NICs on nothing left out).
    pub fn lend_taps(&self) -> std::io::Result<Vec<(u8, File)>> {
        let mut taps = Vec::new();
        for (slot, nic) in self.nics() {
            if let Some(tap) = lock(&nic.transport).lend_backend()? {
                taps.push((slot, tap));
            }
        }
        Ok(taps)
    }

    /// The MACs the guest sends from, by NIC slot (those it has sent on).
    pub fn guest_macs(&self) -> SlotMacs {
        self.nics()
            .filter_map(|(slot, nic)| Some((slot, lock(&nic.transport).guest_mac()?)))
            .collect()
    }

    /// The VM runs here now, moved from another VMM: each NIC in `macs`
    /// announces its guest's MAC on its tap.
    pub fn announce_moved(&self, macs: &SlotMacs) {
        for (slot, nic) in self.nics() {
            // A multicast address (the source is not trusted) is no NIC's.
            if let Some((_, mac)) = macs.iter().find(|(s, mac)| *s == slot && net::is_unicast(mac)) {
                lock(&nic.transport).announce(*mac);
            }
        }
    }

    /// The slots of the NICs plugged into a host tap.
    pub fn nics_on_taps(&self) -> Vec<u8> {
        self.nics()
            .filter(|(_, nic)| lock(&nic.transport).plugged())
            .map(|(slot, _)| slot)
            .collect()
    }

    /// Puts every device's writes on its backend's storage (the VM is
    /// paused and leaving this host: the next host reads the disks).
    pub fn flush(&self) -> std::io::Result<()> {
        self.virtio.iter().try_for_each(|d| lock(&d.transport).flush())
    }

    /// Every device's driver state (the VM is paused).
    pub fn device_states(&self) -> Vec<DeviceState> {
        self.virtio.iter().map(|d| lock(&d.transport).state()).collect()
    }

    pub fn serial_registers(&self) -> SerialRegs {
        serial::registers(&lock(&self.console))
    }

    /// Flushes the console log; returns the kernel's panic report, if any.
    pub fn finish_console(&self) -> Option<String> {
        let mut console = lock(&self.console);
        let _ = std::io::Write::flush(console.writer_mut());
        console.writer().panic_report()
    }
}

fn com1_register(port: u16) -> Option<u8> {
    (COM1_PORT..COM1_PORT + 8)
        .contains(&port)
        .then(|| (port - COM1_PORT) as u8)
}

/// The virtio device types `config` gives, in slot order: what
/// `device_models` makes, known before any device is (a migration's
/// destination checks its source's against it).
/// The slots of the NICs `config` plugs into a host tap.
pub fn nics_on_taps(config: &VmConfig) -> Vec<u8> {
    let on_tap = |nic: &crate::vm::NetConfig| !matches!(nic.backend, crate::vm::NetBackend::Detached);
    (0..)
        .zip(&config.nics)
        .filter(|(_, nic)| on_tap(nic))
        .map(|(slot, _)| slot)
        .collect()
}

pub fn layout(config: &VmConfig) -> Vec<u32> {
    let mut types = vec![TYPE_BLOCK; config.disks.len()];
    if config.vsock.is_some() {
        types.push(TYPE_VSOCK);
    }
    types.push(TYPE_RNG);
    types.extend(config.nics.iter().map(|_| TYPE_NET));
    if config.shares.is_some() {
        types.push(TYPE_FS);
    }
    types
}

fn device_models(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, VmError> {
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &config.disks {
        let block = Block::open(&disk.path, disk.read_only).map_err(|source| VmError::Disk {
            path: disk.path.display().to_string(),
            source,
        })?;
        models.push(Box::new(block));
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(vsock.guest_cid, &vsock.uds_path).map_err(|source| VmError::Vsock {
            path: vsock.uds_path.display().to_string(),
            source,
        })?;
        models.push(Box::new(device));
    }
    models.push(Box::new(Rng));
    for nic in &config.nics {
        let tap_err = |source| VmError::Tap {
            tap: nic.backend.to_string(),
            source,
        };
        let device = match &nic.backend {
            NetBackend::Tap(name) => net::open_tap(name).and_then(|tap| Net::new(nic.mac, tap)),
            NetBackend::TapFd(fd) => Net::on_inherited_tap(nic.mac, *fd),
            NetBackend::Detached => Net::detached(nic.mac),
        };
        models.push(Box::new(device.map_err(tap_err)?));
    }
    if let Some(shares) = &config.shares {
        models.push(Box::new(Fs::new(shares).map_err(VmError::Share)?));
    }
    debug_assert_eq!(
        models.iter().map(|m| m.device_type()).collect::<Vec<_>>(),
        layout(config)
    );
    Ok(models)
}

fn console(vm: &VmFd, config: &VmConfig, saved: Option<&SerialRegs>) -> Result<Console, VmError> {
    let log = match &config.serial_log {
        Some(path) => Some(File::create(path).map_err(|source| VmError::SerialLog {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    let irq = eventfd()?;
    vm.register_irqfd(&irq, COM1_IRQ).map_err(kvm_err("KVM_IRQFD"))?;
    let sink = ConsoleSink::new(log, config.console_echo);
    match saved {
        Some(regs) => serial::restored_console(irq, sink, regs).map_err(|e| VmError::SnapshotMismatch(e.to_string())),
        None => Ok(serial::console(irq, sink)),
    }
}

/// Whether a saved VM has as many devices as this one (`count`).
fn check_device_count(saved: &VmState, count: usize, config: &VmConfig) -> Result<(), VmError> {
    if saved.devices.len() == count {
        return Ok(());
    }
    Err(VmError::SnapshotMismatch(format!(
        "it has {} devices, this VM {} ({} disks{}, entropy, {} NICs)",
        saved.devices.len(),
        count,
        config.disks.len(),
        if config.vsock.is_some() { ", vsock" } else { "" },
        config.nics.len()
    )))
}

/// A device whose lock was poisoned by a panic is still the best state we have.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
