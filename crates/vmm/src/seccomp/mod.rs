//! Seccomp filters, one per kind of hull-vmm thread, each allowing only the
//! system calls that thread makes (with the `ioctl` requests and socket
//! domain it uses pinned down by argument conditions). The rules live in
//! `rules`, which the build script compiles to BPF once; a VMM only
//! decodes them.
//!
//! Every thread installs its filter itself, as its first act: vCPU, device
//! and control threads before they touch the guest or a client, the VMM
//! thread once it has started the others and before the VM runs. A call
//! outside the filter raises SIGSYS; the handler logs the syscall number and
//! the thread's kind on stderr and ends the process with `EXIT_VIOLATION`.
//! `HULL_VMM_SECCOMP=log` lets such calls through and leaves them to the
//! kernel's audit log instead (to find what a changed thread now needs).

mod rules;

use std::cell::Cell;

use seccompiler::{BpfProgram, SeccompAction};

use self::rules::Filter;
use crate::devices::virtio::DeviceKind;
use crate::vm::VmError;

/// Every filter, compiled to BPF by the build script (`rules`).
const COMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_filters.bin"));

/// hull-vmm's exit status after a forbidden system call.
pub const EXIT_VIOLATION: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: builds the VM, then pauses, saves and ends it.
    Vmm,
    Vcpu,
    /// A virtio device's thread.
    Device(DeviceKind),
    Control,
}

impl ThreadKind {
    pub fn label(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device(kind) => kind.label(),
            ThreadKind::Control => "control",
        }
    }

    fn filter(self) -> Filter {
        match self {
            ThreadKind::Vmm => Filter::Vmm,
            ThreadKind::Vcpu => Filter::Vcpu,
            ThreadKind::Device(DeviceKind::Block) => Filter::Block,
            ThreadKind::Device(DeviceKind::Net) => Filter::Net,
            ThreadKind::Device(DeviceKind::Vsock) => Filter::Vsock,
            ThreadKind::Device(DeviceKind::Rng) => Filter::Rng,
            ThreadKind::Device(DeviceKind::Fs) => Filter::Fs,
            ThreadKind::Control => Filter::Control,
        }
    }
}

/// The number of system calls a thread kind may make (for the README).
pub fn allowed_count(kind: ThreadKind) -> usize {
    rules::allowed_count(kind.filter())
}

/// The filter of one thread kind, as the build compiled it.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, VmError> {
    load(kind.filter())
}

/// The VMM thread's filter while a migrated VM arrives (`Filter::Arrival`).
pub fn arrival_filter() -> Result<BpfProgram, VmError> {
    load(Filter::Arrival)
}

/// `filter` as compiled at build time; with `HULL_VMM_SECCOMP=log`,
/// compiled now to log what it would forbid.
fn load(filter: Filter) -> Result<BpfProgram, VmError> {
    if std::env::var("HULL_VMM_SECCOMP").as_deref() == Ok("log") {
        return rules::compile(filter, SeccompAction::Log).map_err(VmError::Seccomp);
    }
    rules::decode(COMPILED, filter).ok_or_else(|| VmError::Seccomp(format!("no compiled filter for {filter:?}")))
}

thread_local! {
    /// The calling thread's kind, for the SIGSYS handler (const: no lazy
    /// initialisation inside a signal handler).
    static KIND: Cell<&'static str> = const { Cell::new("vmm") };
}

/// Readies the process for filtered threads; call first in `main`, before
/// any other thread exists. glibc gives a contended thread an arena of its
/// own, and arenas other than the main one open files: the CPU count
/// (/sys/devices/system/cpu/online) when the first is made, and
/// /proc/sys/vm/overcommit_memory when one first shrinks. No device or
/// vCPU thread may open files (this ended VMs at random), so every thread
/// shares the main arena; each thread's malloc cache keeps that cheap.
pub fn prepare_process() {
    // SAFETY: mallopt takes two integers; no other thread allocates yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Confines the calling thread; a thread that cannot be confined must not
/// run, so the process ends.
pub fn install(filter: &BpfProgram, kind: ThreadKind) {
    KIND.with(|k| k.set(kind.label()));
    if let Err(e) = seccompiler::apply_filter(filter) {
        eprintln!("hull-vmm: installing the {} thread's seccomp filter: {e}", kind.label());
        std::process::exit(1);
    }
}

/// Installs the SIGSYS handler (before any filter).
pub fn install_violation_handler() -> Result<(), VmError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_violation)
        .map_err(|e| VmError::Seccomp(format!("installing the SIGSYS handler: {e}")))
}

extern "C" fn on_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS the syscall
    // number is the int at offset 24 (after si_call_addr) on x86_64.
    let syscall = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let kind = KIND.with(Cell::get);
    let mut digits = [0u8; 12];
    let mut at = digits.len();
    let mut n = syscall.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 5] = [
        b"hull-vmm: seccomp: the ",
        kind.as_bytes(),
        b" thread made system call ",
        &digits[at..],
        b", which its filter forbids; the VM ends\n",
    ];
    for part in parts {
        // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed to every thread.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    unsafe { libc::_exit(EXIT_VIOLATION) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_compiles_and_stays_small() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Device(DeviceKind::Block),
            ThreadKind::Device(DeviceKind::Net),
            ThreadKind::Device(DeviceKind::Vsock),
            ThreadKind::Device(DeviceKind::Rng),
            ThreadKind::Device(DeviceKind::Fs),
            ThreadKind::Control,
        ] {
            assert!(!filter_for(kind).unwrap().is_empty());
            eprintln!("{}: {} system calls", kind.label(), allowed_count(kind));
            // The file server does what a whole file system's clients ask;
            // the VMM thread also walks or writes the shared directories
            // that travel with a migrating VM.
            let most = match kind {
                ThreadKind::Device(DeviceKind::Fs) => 60,
                ThreadKind::Vmm => 55,
                _ => 45,
            };
            assert!(allowed_count(kind) <= most, "{kind:?}: {}", allowed_count(kind));
        }
        assert_eq!(rules::KVM_RUN(), 0xae80);
        // As the kernel's headers number them.
        assert_eq!(rules::KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(rules::KVM_GET_DIRTY_LOG(), 0x4010_ae42);
    }

    #[test]
    fn the_filters_the_build_compiled_are_the_rules_of_this_source() {
        for filter in Filter::ALL {
            let now = rules::compile(filter, SeccompAction::Trap).unwrap();
            let built = rules::decode(COMPILED, filter).unwrap();
            assert_eq!(built.len(), now.len(), "{filter:?}");
            assert!(
                built
                    .iter()
                    .zip(&now)
                    .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)),
                "{filter:?}"
            );
        }
        assert!(rules::decode(&COMPILED[..COMPILED.len() - 1], Filter::Arrival).is_none());
        assert!(rules::decode(&[], Filter::Vmm).is_none());
    }

    #[test]
    fn a_forbidden_call_ends_the_process_with_the_violation_logged() {
        // In a child process: the filter cannot be taken off again.
        if std::env::var_os("HULL_SECCOMP_CHILD").is_some() {
            install_violation_handler().unwrap();
            install(
                &filter_for(ThreadKind::Device(DeviceKind::Rng)).unwrap(),
                ThreadKind::Device(DeviceKind::Rng),
            );
            // SAFETY: getppid has no preconditions; the filter forbids it here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            unreachable!("the filter let getppid through");
        }
        violation_in_child(
            "a_forbidden_call_ends_the_process_with_the_violation_logged",
            &format!("the rng thread made system call {}", libc::SYS_getppid),
        );
    }

    #[test]
    fn a_vmm_thread_takes_a_state_in_under_the_arrival_filter_then_its_own_goes_on_top() {
        if std::env::var_os("HULL_SECCOMP_CHILD").is_some() {
            install_violation_handler().unwrap();
            install(&arrival_filter().unwrap(), ThreadKind::Vmm);
            // SAFETY: an ioctl on no descriptor: EBADF, if the filter lets it by.
            let set_regs = unsafe { libc::ioctl(-1, rules::KVM_SET_REGS() as _, std::ptr::null::<u8>()) };
            assert_eq!(set_regs, -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
            install(&filter_for(ThreadKind::Vmm).unwrap(), ThreadKind::Vmm);
            // SAFETY: as above; the VMM's own filter forbids it.
            unsafe { libc::ioctl(-1, rules::KVM_SET_REGS() as _, std::ptr::null::<u8>()) };
            unreachable!("the VMM's filter let KVM_SET_REGS through");
        }
        violation_in_child(
            "a_vmm_thread_takes_a_state_in_under_the_arrival_filter_then_its_own_goes_on_top",
            &format!("the vmm thread made system call {}", libc::SYS_ioctl),
        );
    }

    /// Runs `test` again in a child process (a filter cannot be taken off
    /// again), which must end with a violation logged as `logged`.
    fn violation_in_child(test: &str, logged: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("seccomp::tests::{test}")])
            .env("HULL_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_VIOLATION), "{stderr}");
        assert!(stderr.contains(logged), "{stderr}");
    }
}
