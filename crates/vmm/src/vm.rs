//! One microVM: memory, vCPU threads, the exit loop, and how it ended.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioSlot;
use crate::devices::legacy::{power_request, PowerRequest};
use crate::devices::serial::{self, Console, ConsoleSink};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::layout::*;
use crate::{acpi, boot, cpu};

/// The smallest guest the stock kernel plus an initramfs boots in.
pub const MIN_MEMORY_MIB: u64 = 64;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
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
    #[error("{count} devices asked for; at most {max} fit")]
    TooManyDevices { count: usize, max: usize },
    #[error("vCPU {id} stopped: {reason}")]
    Vcpu { id: u8, reason: String },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The most vCPUs hull gives one VM (APIC ids fit in the MADT's u8 ids).
pub const MAX_VCPUS: u8 = 32;

fn host_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX)
}

/// Checks a configuration before anything is allocated.
pub fn validate(config: &VmConfig) -> Result<(), VmError> {
    let max = (MAX_MEMORY >> 20).min(host_memory_mib());
    if config.memory_mib < MIN_MEMORY_MIB || config.memory_mib > max {
        return Err(VmError::MemorySize {
            requested: config.memory_mib,
            max,
        });
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmError::VcpuCount {
            vcpus: config.vcpus,
            max: MAX_VCPUS,
        });
    }
    Ok(())
}

/// Everything the vCPU threads share.
struct Shared {
    console: Mutex<Console>,
    /// virtio-mmio devices; device `i` answers at `MMIO_START + i * VIRTIO_MMIO_SIZE`.
    virtio: Vec<Mutex<MmioTransport>>,
    exits: mpsc::Sender<Result<PowerRequest, VmError>>,
}

impl Shared {
    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let offset = addr.checked_sub(MMIO_START)?;
        let device = self.virtio.get(usize::try_from(offset / VIRTIO_MMIO_SIZE).ok()?)?;
        Some((device, offset % VIRTIO_MMIO_SIZE))
    }
}

fn eventfd() -> Result<EventFd, VmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
        what: "an eventfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

/// The devices the guest gets: disks first (vda, vdb, ...), then the entropy source.
fn virtio_devices(
    vm: &VmFd,
    config: &VmConfig,
    memory: &GuestMemoryMmap,
) -> Result<Vec<(MmioSlot, MmioTransport)>, VmError> {
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
    let max = (IOAPIC_PINS - VIRTIO_FIRST_IRQ) as usize;
    if models.len() > max {
        return Err(VmError::TooManyDevices {
            count: models.len(),
            max,
        });
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
        devices.push((slot, MmioTransport::new(model, memory.clone(), interrupt)));
    }
    Ok(devices)
}

/// Boots the VM and runs it until the guest powers off or resets.
pub fn run(config: &VmConfig) -> Result<GuestExit, VmError> {
    validate(config)?;
    let kvm = Kvm::new().map_err(VmError::NoKvm)?;
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

    let memory = guest_memory(&vm, config.memory_mib)?;
    let devices = virtio_devices(&vm, config, &memory)?;
    let slots: Vec<MmioSlot> = devices.iter().map(|(slot, _)| *slot).collect();
    let rsdp = acpi::write_tables(&memory, config.vcpus, &slots)?;
    let kernel = boot::load(&memory, &config.kernel, config.initrd.as_deref(), &config.cmdline, rsdp)?;
    cpu::write_boot_tables(&memory)?;

    let log = match &config.serial_log {
        Some(path) => Some(File::create(path).map_err(|source| VmError::SerialLog {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("KVM_IRQFD"))?;
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        console: Mutex::new(serial::console(serial_irq, ConsoleSink::new(log, config.console_echo))),
        virtio: devices
            .into_iter()
            .map(|(_, transport)| Mutex::new(transport))
            .collect(),
        exits: tx,
    });

    for index in 0..shared.virtio.len() {
        spawn_backend(&shared, index)?;
    }

    let cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        cpu::configure(&vcpu, &cpuid, id, config.vcpus, kernel.entry)?;
        vcpus.push(vcpu);
    }
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let shared = shared.clone();
        thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let result = run_vcpu(id as u8, vcpu, &shared);
                let _ = shared.exits.send(result);
            })
            .map_err(|e| VmError::Vcpu {
                id: id as u8,
                reason: e.to_string(),
            })?;
    }
    // The first vCPU to stop decides; the others die with the process.
    let request = rx.recv().map_err(|_| VmError::Vcpu {
        id: 0,
        reason: "all vCPU threads vanished".into(),
    })??;
    let mut console = shared.console.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::io::Write::flush(console.writer_mut());
    Ok(match request {
        PowerRequest::Poweroff => GuestExit::Poweroff,
        PowerRequest::Reset => GuestExit::Reset {
            panic_message: console.writer().panic_report(),
        },
    })
}

fn guest_memory(vm: &VmFd, mib: u64) -> Result<GuestMemoryMmap, VmError> {
    let size = (mib << 20) as usize;
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| VmError::Memory {
        mib,
        detail: e.to_string(),
    })?;
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
    Ok(memory)
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

fn run_vcpu(id: u8, mut vcpu: VcpuFd, shared: &Shared) -> Result<PowerRequest, VmError> {
    let fail = |reason: String| VmError::Vcpu { id, reason };
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if (COM1_PORT..COM1_PORT + 8).contains(&port) {
                    if let (Ok(mut console), Some(&byte)) = (shared.console.lock(), data.first()) {
                        let _ = console.write((port - COM1_PORT) as u8, byte);
                    }
                } else if let Some(request) = power_request(port, data) {
                    return Ok(request);
                } else if std::env::var_os("HULL_VMM_TRACE").is_some() {
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
            Ok(VcpuExit::Shutdown) => return Ok(PowerRequest::Reset),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Ok(if kind == kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN {
                    PowerRequest::Poweroff
                } else {
                    PowerRequest::Reset
                });
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
