//! vCPU threads: each runs its vCPU until the guest powers off or resets,
//! serving port and MMIO exits through the device manager, and parks at the
//! pause gate when the VMM thread pauses the VM.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::device_manager::{lock, DeviceManager};
use crate::devices::legacy::PowerRequest;
use crate::pause::PauseGate;
use crate::vm::{thread_err, VmError};

/// Where the VMM thread sends a control request's replies, with the
/// descriptors to send beside each (a migration's progress comes before
/// the last reply).
pub type ReplySender = Sender<(proto::vmm_control::VmmReply, Vec<std::fs::File>)>;

/// What the VMM thread hears from vCPU threads and the control channel.
pub enum VmmEvent {
    /// The guest powered off, reset or (a template) asked to be saved.
    Power(PowerRequest),
    /// A vCPU could not go on.
    Failed(VmError),
    /// A request on the control channel, the descriptor that came with it,
    /// where its reply goes, and word that the reply was written (a VMM
    /// that ends after its reply waits for that).
    Control {
        request: proto::vmm_control::VmmRequest,
        fd: Option<std::fs::File>,
        reply: ReplySender,
        written: std::sync::mpsc::Receiver<()>,
    },
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    pub devices: Arc<DeviceManager>,
    pub gate: Arc<PauseGate>,
    pub events: Sender<VmmEvent>,
    /// Whether the guest's snapshot request is honoured (template VMs only).
    pub snapshots_allowed: bool,
    /// See `VmConfig::seccomp_selftest`.
    pub seccomp_selftest: bool,
}

/// A running vCPU thread. Its vCPU is locked while it runs and free while
/// it is parked, so a paused VM's vCPU state can be read.
pub struct Vcpu {
    pub fd: Arc<Mutex<VcpuFd>>,
    thread: JoinHandle<()>,
}

/// The signal that knocks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler: the signal only interrupts KVM_RUN.
pub fn install_kick_handler() -> Result<(), VmError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| VmError::Vcpu {
        id: 0,
        reason: format!("installing the kick signal handler: {e}"),
    })
}

impl Vcpu {
    pub fn spawn(id: u8, fd: VcpuFd, context: Arc<VcpuContext>) -> Result<Vcpu, VmError> {
        let fd = Arc::new(Mutex::new(fd));
        let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Vcpu)?;
        let name = format!("vcpu{id}");
        let thread = {
            let fd = fd.clone();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Vcpu);
                    let event = match run(id, &fd, &context) {
                        Ok(request) => VmmEvent::Power(request),
                        Err(e) => VmmEvent::Failed(e),
                    };
                    let _ = context.events.send(event);
                })
                .map_err(thread_err(format!("vcpu{id}")))?
        };
        Ok(Vcpu { fd, thread })
    }

    /// Whether the vCPU's thread has ended (the guest powered off, reset,
    /// or the vCPU failed): it will never park.
    pub fn has_ended(&self) -> bool {
        self.thread.is_finished()
    }

    /// Knocks the vCPU out of KVM_RUN (to see a pause request).
    pub fn kick(&self) {
        use vmm_sys_util::signal::Killable;
        if !self.thread.is_finished() {
            let _ = self.thread.kill(kick_signal());
        }
    }
}

/// Runs the vCPU until the guest asks for a power change; parks whenever
/// the gate asks.
fn run(id: u8, fd: &Mutex<VcpuFd>, context: &VcpuContext) -> Result<PowerRequest, VmError> {
    // A migrated VM's vCPUs park before they ever run: their state is
    // still to come, and there is no exit in flight to finish.
    let mut entered = false;
    loop {
        let mut vcpu = lock(fd);
        while !context.gate.requested() {
            entered = true;
            if let Some(request) = run_once(id, &mut vcpu, context)? {
                return Ok(request);
            }
        }
        if entered {
            // Finish the exit in flight (a port write, an MMIO read) so the
            // vCPU holds no half-done instruction while parked.
            vcpu.set_kvm_immediate_exit(1);
            let _ = vcpu.run();
            vcpu.set_kvm_immediate_exit(0);
        }
        drop(vcpu);
        context.gate.park();
    }
}

/// Enters the guest once and serves the exit.
fn run_once(id: u8, vcpu: &mut VcpuFd, context: &VcpuContext) -> Result<Option<PowerRequest>, VmError> {
    let fail = |reason: String| VmError::Vcpu { id, reason };
    let devices = &context.devices;
    match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => match devices.pio_out(port, data) {
            Some(PowerRequest::Snapshot) if context.snapshots_allowed => {
                // Park here: the VMM thread saves the VM with this vCPU just
                // past the guest's request.
                context.gate.request();
                let _ = context.events.send(VmmEvent::Power(PowerRequest::Snapshot));
            }
            Some(PowerRequest::Snapshot) => {}
            Some(request) => return Ok(Some(request)),
            None => {}
        },
        Ok(VcpuExit::IoIn(port, data)) => devices.pio_in(port, data),
        Ok(VcpuExit::MmioRead(addr, data)) => devices.mmio_read(addr, data),
        Ok(VcpuExit::MmioWrite(crate::layout::SECCOMP_SELFTEST_ADDR, _)) if context.seccomp_selftest => {
            // SAFETY: getppid has no preconditions; the vCPU filter forbids it.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => devices.mmio_write(addr, data),
        Ok(VcpuExit::Hlt) => {}
        Ok(VcpuExit::Shutdown) => return Ok(Some(PowerRequest::Reset)),
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            return Ok(Some(match kind == kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN {
                true => PowerRequest::Poweroff,
                false => PowerRequest::Reset,
            }))
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => return Err(fail(format!("entry failed ({reason:#x}) on cpu {cpu}"))),
        Ok(VcpuExit::InternalError) => return Err(fail("KVM internal error".into())),
        Ok(other) => return Err(fail(format!("unexpected exit {other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
        Err(e) => return Err(fail(format!("KVM_RUN: {e}"))),
    }
    Ok(None)
}
