//! One microVM: memory, vCPU threads, the exit loop, and how it ended.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioSlot;
use crate::devices::legacy::{power_request, PowerRequest};
use crate::devices::serial::{self, Console, ConsoleSink};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::layout::*;
use crate::snapshot::{self, DeviceState, VmState};
use crate::{acpi, boot, cpu, trace, vcpu_state};

/// The smallest guest the stock kernel plus an initramfs boots in.
pub const MIN_MEMORY_MIB: u64 = 64;

/// Where a VM's first instruction comes from.
#[derive(Debug, Clone)]
pub enum Start {
    /// Boot a kernel through the Linux 64-bit boot protocol.
    Boot {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Resume a snapshot directory (`state` + `memory`), its memory mapped
    /// copy-on-write; the devices get this config's backends.
    Restore { snapshot: PathBuf },
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub start: Start,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The guest's console is written here.
    pub serial_log: Option<PathBuf>,
    /// Also copy the console to our stderr.
    pub console_echo: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-vsock, its host side a unix socket.
    pub vsock: Option<VsockConfig>,
    /// virtio-net on a host tap device (after the entropy source, so VMs
    /// without one keep their device slots).
    pub net: Option<NetConfig>,
    /// Make a template: when the guest asks (`proto::SNAPSHOT_PORT`), pause
    /// and save the VM into this directory, then stop.
    pub snapshot_to: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

/// What a NIC is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// The tap interface of this name (made if missing, and then gone with the VMM).
    Tap(String),
    /// A tap opened by whoever started us, passed down as this fd.
    TapFd(i32),
    /// Nothing: frames are dropped (a template's NIC slot, `--network none`).
    Detached,
}

impl std::fmt::Display for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetBackend::Tap(name) => write!(f, "{name}"),
            NetBackend::TapFd(fd) => write!(f, "fd {fd}"),
            NetBackend::Detached => write!(f, "(detached)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered itself off.
    Poweroff,
    /// The guest asked to be saved and was (`VmConfig::snapshot_to`).
    Snapshotted,
    /// The guest reset (after a kernel panic, `panic_message` holds its console).
    Reset { panic_message: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest memory must be between {MIN_MEMORY_MIB} MiB and {max} MiB; {requested} MiB was asked for")]
    MemorySize { requested: u64, max: u64 },
    #[error("{vcpus} vCPUs asked for; hull supports 1 to {max}")]
    VcpuCount { vcpus: u8, max: u8 },
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user use it?)")]
    NoKvm(kvm_ioctls::Error),
    #[error("KVM refused {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("allocating {mib} MiB of guest memory: {detail}")]
    Memory { mib: u64, detail: String },
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    #[error("{0}")]
    Cpu(#[from] cpu::CpuError),
    #[error("{0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("console log {path}: {source}")]
    SerialLog { path: String, source: std::io::Error },
    #[error("disk {path}: {source}")]
    Disk { path: String, source: std::io::Error },
    #[error("vsock socket {path}: {source}")]
    Vsock { path: String, source: std::io::Error },
    #[error("tap device {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
    #[error("{count} devices asked for; at most {max} fit")]
    TooManyDevices { count: usize, max: usize },
    #[error("vCPU {id} stopped: {reason}")]
    Vcpu { id: u8, reason: String },
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("the snapshot does not fit this VM: {0}")]
    SnapshotMismatch(String),
    #[error("saving the VM: {0}")]
    Save(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The most vCPUs hull gives one VM (APIC ids fit in the MADT's u8 ids).
pub const MAX_VCPUS: u8 = 32;

fn host_memory_mib() -> u64 {
    crate::host::meminfo_mib("MemTotal").unwrap_or(u64::MAX)
}

/// Checks a configuration before anything is allocated.
pub fn validate(config: &VmConfig) -> Result<(), VmError> {
    validate_shape(config.memory_mib, config.vcpus)
}

/// Checks a VM's memory size and vCPU count.
pub fn validate_shape(memory_mib: u64, vcpus: u8) -> Result<(), VmError> {
    let max = (MAX_MEMORY >> 20).min(host_memory_mib());
    if !(MIN_MEMORY_MIB..=max).contains(&memory_mib) {
        return Err(VmError::MemorySize {
            requested: memory_mib,
            max,
        });
    }
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(VmError::VcpuCount { vcpus, max: MAX_VCPUS });
    }
    Ok(())
}

/// Everything the vCPU threads share.
struct Shared {
    console: Mutex<Console>,
    /// virtio-mmio devices; device `i` answers at `MMIO_START + i * VIRTIO_MMIO_SIZE`.
    virtio: Vec<Mutex<MmioTransport>>,
    exits: mpsc::Sender<VcpuEnd>,
    /// Set while the VM pauses for a snapshot: every vCPU hands itself back.
    pausing: AtomicBool,
    /// Whether the guest's snapshot request is honoured (template VMs only).
    snapshots_allowed: bool,
}

impl Shared {
    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let offset = addr.checked_sub(MMIO_START)?;
        let device = self.virtio.get(usize::try_from(offset / VIRTIO_MMIO_SIZE).ok()?)?;
        Some((device, offset % VIRTIO_MMIO_SIZE))
    }
}

/// Why a vCPU thread stopped running its vCPU.
enum Stop {
    Power(PowerRequest),
    /// It saw `Shared::pausing`.
    Paused,
}

/// A vCPU thread's last word: its vCPU, handed back for saving, and why.
struct VcpuEnd {
    id: u8,
    vcpu: VcpuFd,
    stop: Result<Stop, VmError>,
}

fn eventfd() -> Result<EventFd, VmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
        what: "an eventfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

/// A device transport, and whether a restore changed its configuration.
type Attached = (MmioSlot, MmioTransport, bool);

/// The devices the guest gets: disks first (vda, vdb, ...), then vsock, then
/// the entropy source. Restoring, each takes its slot's saved driver state.
fn virtio_devices(
    vm: &VmFd,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    saved: Option<&[DeviceState]>,
) -> Result<Vec<Attached>, VmError> {
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
    if let Some(net) = &config.net {
        let tap_err = |source| VmError::Tap {
            tap: net.backend.to_string(),
            source,
        };
        let nic = match &net.backend {
            NetBackend::Tap(name) => crate::devices::virtio::net::open_tap(name).and_then(|tap| Net::new(net.mac, tap)),
            NetBackend::TapFd(fd) => Net::on_inherited_tap(net.mac, *fd),
            NetBackend::Detached => Net::detached(net.mac),
        };
        models.push(Box::new(nic.map_err(tap_err)?));
    }
    let max = (IOAPIC_PINS - VIRTIO_FIRST_IRQ) as usize;
    if models.len() > max {
        return Err(VmError::TooManyDevices {
            count: models.len(),
            max,
        });
    }
    if let Some(saved) = saved {
        if saved.len() != models.len() {
            return Err(VmError::SnapshotMismatch(format!(
                "it has {} devices, this VM {} ({} disks{}, entropy{})",
                saved.len(),
                models.len(),
                config.disks.len(),
                if config.vsock.is_some() { ", vsock" } else { "" },
                if config.net.is_some() { ", net" } else { "" }
            )));
        }
    }
    let mut devices = Vec::new();
    for (i, model) in models.into_iter().enumerate() {
        let slot = MmioSlot {
            base: MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
            irq: VIRTIO_FIRST_IRQ + i as u32,
        };
        let irq = eventfd()?;
        vm.register_irqfd(&irq, slot.irq).map_err(kvm_err("KVM_IRQFD"))?;
        let interrupt = Arc::new(Interrupt::new(irq));
        let device = match saved.and_then(|s| s.get(i)) {
            Some(state) => MmioTransport::restore(model, memory.clone(), interrupt, state)
                .map_err(|e| VmError::SnapshotMismatch(format!("device {i}: {e}")))?,
            None => (MmioTransport::new(model, memory.clone(), interrupt), false),
        };
        devices.push((slot, device.0, device.1));
    }
    Ok(devices)
}

/// The signal that knocks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Boots (or restores) the VM and runs it until the guest powers off,
/// resets, or, making a template, has been saved.
pub fn run(config: &VmConfig) -> Result<GuestExit, VmError> {
    validate(config)?;
    trace::mark("arguments checked");
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
    let msr_indices = match &config.snapshot_to {
        Some(_) => {
            vcpu_state::check_xsave_size(&kvm)?;
            vcpu_state::msr_indices(&kvm)?
        }
        None => Vec::new(),
    };
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    trace::mark("VM created");

    let restore = match &config.start {
        Start::Restore { snapshot } => {
            let state = snapshot::read_state(snapshot)?;
            if state.memory_mib != config.memory_mib || state.vcpus.len() != usize::from(config.vcpus) {
                return Err(VmError::SnapshotMismatch(format!(
                    "it is a {} MiB, {}-vCPU VM; {} MiB and {} vCPUs were asked for",
                    state.memory_mib,
                    state.vcpus.len(),
                    config.memory_mib,
                    config.vcpus
                )));
            }
            Some((snapshot.clone(), state))
        }
        Start::Boot { .. } => None,
    };
    let memory = match &restore {
        Some((dir, _)) => snapshot::map_memory(dir, config.memory_mib)?,
        None => anonymous_memory(config.memory_mib)?,
    };
    register_memory(&vm, &memory, config.memory_mib)?;
    trace::mark("memory mapped");
    let devices = virtio_devices(
        &vm,
        config,
        &memory,
        restore.as_ref().map(|(_, s)| s.devices.as_slice()),
    )?;
    let entry = match &config.start {
        Start::Boot {
            kernel,
            initrd,
            cmdline,
        } => {
            let slots: Vec<MmioSlot> = devices.iter().map(|(slot, _, _)| *slot).collect();
            let rsdp = acpi::write_tables(&memory, config.vcpus, &slots)?;
            let kernel = boot::load(&memory, kernel, initrd.as_deref(), cmdline, rsdp)?;
            cpu::write_boot_tables(&memory)?;
            Some(kernel.entry)
        }
        Start::Restore { .. } => None,
    };

    let log = match &config.serial_log {
        Some(path) => Some(File::create(path).map_err(|source| VmError::SerialLog {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("KVM_IRQFD"))?;
    let sink = ConsoleSink::new(log, config.console_echo);
    let console = match &restore {
        Some((_, state)) => serial::restored_console(serial_irq, sink, &state.serial)
            .map_err(|e| VmError::SnapshotMismatch(e.to_string()))?,
        None => serial::console(serial_irq, sink),
    };

    let cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        match (&restore, entry) {
            (Some((_, state)), _) => {
                vcpu_state::restore(&vcpu, &cpuid, id, config.vcpus, &state.vcpus[usize::from(id)])?
            }
            (None, Some(entry)) => cpu::configure(&vcpu, &cpuid, id, config.vcpus, entry)?,
            (None, None) => unreachable!("a booted VM has a kernel entry"),
        }
        vcpus.push(vcpu);
    }
    if let Some((_, state)) = &restore {
        restore_vm_state(&vm, state)?;
    }
    trace::mark("vCPUs and irqchip set");

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        console: Mutex::new(console),
        virtio: devices
            .into_iter()
            .map(|(_, mut transport, config_changed)| {
                if restore.is_some() {
                    // After the irqchip is back, so the interrupts are not lost.
                    transport.announce_restore(config_changed);
                }
                Mutex::new(transport)
            })
            .collect(),
        exits: tx,
        pausing: AtomicBool::new(false),
        snapshots_allowed: config.snapshot_to.is_some(),
    });

    for index in 0..shared.virtio.len() {
        spawn_backend(&shared, index)?;
    }
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| VmError::Vcpu {
        id: 0,
        reason: format!("installing the kick signal handler: {e}"),
    })?;
    let mut threads = Vec::new();
    for (id, mut vcpu) in vcpus.into_iter().enumerate() {
        let shared = shared.clone();
        let id = id as u8;
        let handle = thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let stop = run_vcpu(id, &mut vcpu, &shared);
                let _ = shared.exits.send(VcpuEnd { id, vcpu, stop });
            })
            .map_err(|e| VmError::Vcpu {
                id,
                reason: e.to_string(),
            })?;
        threads.push(handle);
    }
    trace::mark("vCPUs running");
    // The first vCPU to stop decides; the others die with the process.
    let first = rx.recv().map_err(|_| VmError::Vcpu {
        id: 0,
        reason: "all vCPU threads vanished".into(),
    })?;
    let request = match first.stop {
        Ok(Stop::Power(request)) => request,
        Ok(Stop::Paused) => {
            return Err(VmError::Vcpu {
                id: first.id,
                reason: "paused with no snapshot under way".into(),
            })
        }
        Err(e) => return Err(e),
    };
    if request == PowerRequest::Snapshot {
        if let Some(dir) = &config.snapshot_to {
            let vcpus = pause_all(first, &rx, &threads)?;
            save(dir, &vm, &shared, &memory, vcpus, &msr_indices, config.memory_mib)?;
            return Ok(GuestExit::Snapshotted);
        }
    }
    let mut console = shared.console.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::io::Write::flush(console.writer_mut());
    Ok(match request {
        PowerRequest::Poweroff | PowerRequest::Snapshot => GuestExit::Poweroff,
        PowerRequest::Reset => GuestExit::Reset {
            panic_message: console.writer().panic_report(),
        },
    })
}

/// Puts the in-kernel PIT, clock and interrupt controllers back.
fn restore_vm_state(vm: &VmFd, state: &VmState) -> Result<(), VmError> {
    vm.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    // The guest's clock goes on from where the template stopped (no jump
    // that would fire every timer at once); the agent sets wall time.
    let clock = kvm_bindings::kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

/// Gathers every vCPU, the first already stopped, by kicking the others
/// out of KVM_RUN until each has handed itself back.
fn pause_all(
    first: VcpuEnd,
    exits: &mpsc::Receiver<VcpuEnd>,
    threads: &[thread::JoinHandle<()>],
) -> Result<Vec<VcpuFd>, VmError> {
    use vmm_sys_util::signal::Killable;
    let mut vcpus: Vec<Option<VcpuFd>> = threads.iter().map(|_| None).collect();
    vcpus[usize::from(first.id)] = Some(first.vcpu);
    let deadline = Instant::now() + Duration::from_secs(10);
    while vcpus.iter().any(Option::is_none) {
        for (thread, vcpu) in threads.iter().zip(&vcpus) {
            if vcpu.is_none() {
                let _ = thread.kill(kick_signal());
            }
        }
        match exits.recv_timeout(Duration::from_millis(1)) {
            Ok(end) => {
                end.stop?;
                if let Some(slot) = vcpus.get_mut(usize::from(end.id)) {
                    *slot = Some(end.vcpu);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => return Err(VmError::Save("the vCPUs did not pause within 10 s".into())),
        }
    }
    Ok(vcpus.into_iter().flatten().collect())
}

/// Saves the paused VM into `dir`: memory first, the state file last (its
/// presence marks a complete snapshot).
fn save(
    dir: &Path,
    vm: &VmFd,
    shared: &Shared,
    memory: &GuestMemoryMmap,
    mut vcpus: Vec<VcpuFd>,
    msr_indices: &[u32],
    memory_mib: u64,
) -> Result<(), VmError> {
    let mut vcpu_states = Vec::with_capacity(vcpus.len());
    for vcpu in &mut vcpus {
        // Finish the exit each vCPU stopped on (the snapshot port write
        // itself, an MMIO read) so the state holds no half-done instruction.
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        vcpu_states.push(vcpu_state::save(vcpu, msr_indices)?);
    }
    let chip = |chip_id| -> Result<kvm_bindings::kvm_irqchip, VmError> {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        Ok(chip)
    };
    let state = VmState {
        memory_mib,
        vcpus: vcpu_states,
        pic_master: chip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        serial: serial::registers(&lock(&shared.console)),
        devices: shared.virtio.iter().map(|d| lock(d).state()).collect(),
    };
    std::fs::create_dir_all(dir).map_err(|e| VmError::Save(format!("{}: {e}", dir.display())))?;
    snapshot::write_memory(dir, memory)?;
    snapshot::write_state(dir, &state)?;
    Ok(())
}

fn anonymous_memory(mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let size = (mib << 20) as usize;
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| VmError::Memory {
        mib,
        detail: e.to_string(),
    })
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap, mib: u64) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory {
                mib,
                detail: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping is owned by `memory`, which outlives the VM's use of it
        // (the process exits when the VM stops).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Devices with host-side I/O (vsock sockets) get a thread that waits for it.
fn spawn_backend(shared: &Arc<Shared>, index: usize) -> Result<(), VmError> {
    let Some(fd) = lock(&shared.virtio[index]).backend_fd() else {
        return Ok(());
    };
    let shared = shared.clone();
    thread::Builder::new()
        .name(format!("virtio{index}"))
        .spawn(move || loop {
            let mut pollfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the fd lives as long as the device, which outlives this thread.
            let n = unsafe { libc::poll(&mut pollfd, 1, -1) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
            lock(&shared.virtio[index]).poll();
        })
        .map(|_| ())
        .map_err(|e| VmError::Vcpu {
            id: 0,
            reason: format!("device thread: {e}"),
        })
}

/// A device whose lock was poisoned by a panic is still the best state we have.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_vcpu(id: u8, vcpu: &mut VcpuFd, shared: &Shared) -> Result<Stop, VmError> {
    let fail = |reason: String| VmError::Vcpu { id, reason };
    loop {
        if shared.pausing.load(Ordering::SeqCst) {
            return Ok(Stop::Paused);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if (COM1_PORT..COM1_PORT + 8).contains(&port) {
                    if let (Ok(mut console), Some(&byte)) = (shared.console.lock(), data.first()) {
                        let _ = console.write((port - COM1_PORT) as u8, byte);
                    }
                } else if let Some(request) = power_request(port, data) {
                    if request != PowerRequest::Snapshot {
                        return Ok(Stop::Power(request));
                    }
                    if shared.snapshots_allowed {
                        shared.pausing.store(true, Ordering::SeqCst);
                        return Ok(Stop::Power(request));
                    }
                } else if trace::enabled() {
                    eprintln!("hull-vmm: vcpu{id} out {port:#x} {data:x?}");
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let value = if (COM1_PORT..COM1_PORT + 8).contains(&port) {
                    shared
                        .console
                        .lock()
                        .map(|mut c| c.read((port - COM1_PORT) as u8))
                        .unwrap_or(0)
                } else if port == I8042_COMMAND_PORT {
                    0 // controller idle, no data
                } else {
                    0xff // nothing there: a floating bus
                };
                data.fill(value);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => match shared.virtio_at(addr) {
                Some((device, offset)) => lock(device).read(offset, data),
                None => data.fill(0),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some((device, offset)) = shared.virtio_at(addr) {
                    lock(device).write(offset, data);
                }
            }
            Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::Shutdown) => return Ok(Stop::Power(PowerRequest::Reset)),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Ok(Stop::Power(if kind == kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN {
                    PowerRequest::Poweroff
                } else {
                    PowerRequest::Reset
                }));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(fail(format!("entry failed ({reason:#x}) on cpu {cpu}")))
            }
            Ok(VcpuExit::InternalError) => return Err(fail("KVM internal error".into())),
            Ok(other) => return Err(fail(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(fail(format!("KVM_RUN: {e}"))),
        }
    }
}
