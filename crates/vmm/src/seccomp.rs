//! Seccomp filters, one per kind of hull-vmm thread, each allowing only the
//! system calls that thread makes (with the `ioctl` requests and socket
//! domain it uses pinned down by argument conditions).
//!
//! Every thread installs its filter itself, as its first act: vCPU, device
//! and control threads before they touch the guest or a client, the VMM
//! thread once it has started the others and before the VM runs. A call
//! outside the filter raises SIGSYS; the handler logs the syscall number and
//! the thread's kind on stderr and ends the process with `EXIT_VIOLATION`.
//! `HULL_VMM_SECCOMP=log` lets such calls through and leaves them to the
//! kernel's audit log instead (to find what a changed thread now needs).

use std::cell::Cell;
use std::collections::BTreeMap;

use kvm_bindings::*;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use crate::devices::virtio::DeviceKind;
use crate::vm::VmError;

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
}

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
// A migrated VM's state, put in by the VMM thread on arrival.
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);

/// What every thread does: allocate, wait on locks, take and return from
/// the kick signal, write to stderr, read the clock, end.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A device thread waits on its eventfds and backend and raises irqfds.
const DEVICE: &[i64] = &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_read];

fn syscalls(kind: ThreadKind) -> Vec<i64> {
    let own: &[i64] = match kind {
        ThreadKind::Vmm => &[
            libc::SYS_tgkill,
            libc::SYS_getpid,
            libc::SYS_gettid,
            // Saving a template: the snapshot's files.
            libc::SYS_openat,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_statx,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_lseek,
            libc::SYS_pwrite64,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            // Plugging a NIC into another tap.
            libc::SYS_epoll_ctl,
            // Migrating: the connection (its reads bounded in time), and
            // /proc/self/pagemap's entries.
            libc::SYS_read,
            libc::SYS_pread64,
        ],
        ThreadKind::Vcpu => &[],
        ThreadKind::Device(DeviceKind::Block) => &[
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ],
        ThreadKind::Device(DeviceKind::Net) => &[libc::SYS_epoll_ctl],
        ThreadKind::Device(DeviceKind::Vsock) => &[
            libc::SYS_epoll_ctl,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_shutdown,
            // std's unix streams read and write with recv/send.
            libc::SYS_recvfrom,
            libc::SYS_sendto,
        ],
        // FUSE requests on the shared directories, each as the guest's
        // user: the passthrough file system's calls.
        ThreadKind::Device(DeviceKind::Fs) => &[
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_lseek,
            libc::SYS_getdents64,
            libc::SYS_readlinkat,
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat2,
            libc::SYS_fchownat,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_utimensat,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_copy_file_range,
            libc::SYS_fgetxattr,
            libc::SYS_flistxattr,
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_capget,
            libc::SYS_capset,
            libc::SYS_dup,
        ],
        // getrandom(2), which every thread may call, is all it needs.
        ThreadKind::Device(DeviceKind::Rng) => &[],
        // std's unix streams read and write with recv/send.
        // recvmsg: a tap's descriptor comes with a request to plug a NIC;
        // sendmsg: the taps go with a reply lending them.
        ThreadKind::Control => &[
            libc::SYS_accept4,
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_sendto,
        ],
    };
    let device: &[i64] = match kind {
        ThreadKind::Device(_) => DEVICE,
        _ => &[],
    };
    COMMON.iter().chain(device).chain(own).copied().collect()
}

/// Calls a thread kind may make only with these values of one argument:
/// (syscall, argument index, allowed values).
fn restricted(kind: ThreadKind) -> Vec<(i64, u8, Vec<u64>)> {
    // Debug builds check a descriptor with F_GETFD before closing it.
    let mut fcntl = vec![libc::F_GETFD as u64];
    let ioctls = match kind {
        ThreadKind::Vcpu => vec![KVM_RUN()],
        ThreadKind::Vmm => vec![
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_MSRS(),
            KVM_GET_LAPIC(),
            KVM_GET_MP_STATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XSAVE2(),
            KVM_GET_XCRS(),
            KVM_GET_IRQCHIP(),
            KVM_GET_PIT2(),
            KVM_GET_CLOCK(),
            KVM_CHECK_EXTENSION(),
            // A migration's state: the MSRs to save.
            KVM_GET_MSR_INDEX_LIST(),
        ],
        // Non-blocking connections.
        ThreadKind::Device(DeviceKind::Vsock) => vec![libc::FIONBIO],
        _ => vec![],
    };
    let mut calls = vec![];
    if !ioctls.is_empty() {
        // On any fd: KVM's numbers do not clash with other devices' a VMM holds.
        calls.push((libc::SYS_ioctl, 1, ioctls));
    }
    match kind {
        // Unix sockets only: guest connections go to the host side's socket.
        ThreadKind::Device(DeviceKind::Vsock) => calls.push((libc::SYS_socket, 0, vec![libc::AF_UNIX as u64])),
        // A second handle on a client's connection.
        ThreadKind::Control => fcntl.push(libc::F_DUPFD_CLOEXEC as u64),
        // A migration's connection: made blocking, its reads and writes
        // bounded in time, nothing else.
        // A second descriptor of a tap, lent to the VMM the VM moves to.
        ThreadKind::Vmm => {
            fcntl.extend([libc::F_GETFL as u64, libc::F_SETFL as u64, libc::F_DUPFD_CLOEXEC as u64]);
            calls.push((
                libc::SYS_setsockopt,
                2,
                vec![libc::SO_RCVTIMEO as u64, libc::SO_SNDTIMEO as u64],
            ));
        }
        // Open flags of a file the guest opens again (O_APPEND, O_DIRECT).
        ThreadKind::Device(DeviceKind::Fs) => fcntl.extend([libc::F_GETFL as u64, libc::F_SETFL as u64]),
        _ => {}
    }
    calls.push((libc::SYS_fcntl, 1, fcntl));
    calls
}

fn condition(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// The number of system calls a thread kind may make (for the README).
pub fn allowed_count(kind: ThreadKind) -> usize {
    let mut calls = syscalls(kind);
    calls.extend(restricted(kind).into_iter().map(|(call, _, _)| call));
    calls.sort_unstable();
    calls.dedup();
    calls.len()
}

/// Compiles the filter of one thread kind.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, VmError> {
    compile(kind, restricted(kind))
}

/// The VMM thread's filter while a migrated VM arrives: its own, and the
/// ioctls that put the VM's state in. Installed before the pages come, so
/// that no filter is compiled and installed in the downtime; the VMM's
/// own filter goes on top once the guest runs (filters stack: from then
/// on both must allow a call).
pub fn arrival_filter() -> Result<BpfProgram, VmError> {
    let mut calls = restricted(ThreadKind::Vmm);
    let setters = [
        KVM_SET_REGS(),
        KVM_SET_SREGS(),
        KVM_SET_MSRS(),
        KVM_SET_LAPIC(),
        KVM_SET_MP_STATE(),
        KVM_SET_VCPU_EVENTS(),
        KVM_SET_DEBUGREGS(),
        KVM_SET_XSAVE(),
        KVM_SET_XCRS(),
        KVM_SET_IRQCHIP(),
        KVM_SET_PIT2(),
        KVM_SET_CLOCK(),
    ];
    let more = [
        // (The UART is made anew with the saved registers, vm-superio having
        // no setter, on handles of its interrupt's eventfd: F_DUPFD_CLOEXEC,
        // which the VMM's filter allows.)
        (libc::SYS_ioctl, 1, setters.to_vec()),
        // The VMM's own filter goes on top (`seccompiler::apply_filter`).
        (libc::SYS_prctl, 0, vec![libc::PR_SET_NO_NEW_PRIVS as u64]),
        (libc::SYS_seccomp, 0, vec![u64::from(libc::SECCOMP_SET_MODE_FILTER)]),
    ];
    for (call, arg, values) in more {
        match calls.iter_mut().find(|(c, _, _)| *c == call) {
            Some((_, _, allowed)) => allowed.extend(values),
            None => calls.push((call, arg, values)),
        }
    }
    compile(ThreadKind::Vmm, calls)
}

fn compile(kind: ThreadKind, restricted: Vec<(i64, u8, Vec<u64>)>) -> Result<BpfProgram, VmError> {
    let fail = |e: &dyn std::fmt::Display| VmError::Seccomp(format!("the {} thread's filter: {e}", kind.label()));
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = syscalls(kind).into_iter().map(|s| (s, vec![])).collect();
    for (call, arg, values) in restricted {
        let rule = values
            .into_iter()
            .map(|value| condition(arg, value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&e))?;
        rules.insert(call, rule);
    }
    let mismatch = match std::env::var("HULL_VMM_SECCOMP").as_deref() {
        Ok("log") => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let arch = std::env::consts::ARCH.try_into().map_err(|e| fail(&e))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| fail(&e))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| fail(&e))
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
            // The file server does what a whole file system's clients ask.
            let most = if kind == ThreadKind::Device(DeviceKind::Fs) {
                60
            } else {
                45
            };
            assert!(allowed_count(kind) <= most, "{kind:?}: {}", allowed_count(kind));
        }
        assert_eq!(KVM_RUN(), 0xae80);
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
            let set_regs = unsafe { libc::ioctl(-1, KVM_SET_REGS() as _, std::ptr::null::<u8>()) };
            assert_eq!(set_regs, -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
            install(&filter_for(ThreadKind::Vmm).unwrap(), ThreadKind::Vmm);
            // SAFETY: as above; the VMM's own filter forbids it.
            unsafe { libc::ioctl(-1, KVM_SET_REGS() as _, std::ptr::null::<u8>()) };
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
