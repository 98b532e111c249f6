//! What each kind of hull-vmm thread may call, as seccomp rules. Shared
//! by the crate (`seccomp`) and its build script (`#[path]`), which
//! compiles every filter to BPF once, at build time, as Firecracker does:
//! compiled when a VMM started, they cost a restore 5-13 ms in the
//! emulated test host (the first compilation in a process is the dear
//! one). Depends only on libc, kvm-bindings, vmm-sys-util and seccompiler.

use std::collections::BTreeMap;

use kvm_bindings::*;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// One filter: a thread kind's, or the VMM thread's while a migrated VM
/// arrives (`Arrival`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The main thread: builds the VM, then pauses, saves and ends it.
    Vmm,
    Vcpu,
    /// A virtio device's thread, by device.
    Block,
    Net,
    Vsock,
    Rng,
    Fs,
    Control,
    /// The VMM thread's while a migrated VM arrives: its own, and the
    /// ioctls that put the VM's state in. Installed before the pages come,
    /// so that none is installed in the downtime; the VMM's own goes on
    /// top once the guest runs (filters stack: from then on both must
    /// allow a call).
    Arrival,
}

impl Filter {
    /// Every filter, in the order the build script stores them.
    pub const ALL: [Filter; 9] = [
        Filter::Vmm,
        Filter::Vcpu,
        Filter::Block,
        Filter::Net,
        Filter::Vsock,
        Filter::Rng,
        Filter::Fs,
        Filter::Control,
        Filter::Arrival,
    ];

    fn label(self) -> &'static str {
        match self {
            Filter::Vmm => "vmm",
            Filter::Vcpu => "vcpu",
            Filter::Block => "block",
            Filter::Net => "net",
            Filter::Vsock => "vsock",
            Filter::Rng => "rng",
            Filter::Fs => "fs",
            Filter::Control => "control",
            Filter::Arrival => "arriving vmm",
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
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
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

fn syscalls(kind: Filter) -> Vec<i64> {
    let own: &[i64] = match kind {
        Filter::Vmm | Filter::Arrival => &[
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
            // Shared directories that travel: walked and read on the
            // source, written on the destination, every path beneath the
            // share's directory (openat2).
            libc::SYS_openat2,
            libc::SYS_getdents64,
            libc::SYS_readlinkat,
            libc::SYS_symlinkat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_fchmod,
            libc::SYS_utimensat,
            libc::SYS_syncfs,
        ],
        Filter::Vcpu => &[],
        Filter::Block => &[
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ],
        Filter::Net => &[libc::SYS_epoll_ctl],
        Filter::Vsock => &[
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
        Filter::Fs => &[
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
        Filter::Rng => &[],
        // std's unix streams read and write with recv/send.
        // recvmsg: a tap's descriptor comes with a request to plug a NIC;
        // sendmsg: the taps go with a reply lending them.
        Filter::Control => &[
            libc::SYS_accept4,
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_sendto,
        ],
    };
    let device: &[i64] = match kind {
        Filter::Block | Filter::Net | Filter::Vsock | Filter::Rng | Filter::Fs => DEVICE,
        _ => &[],
    };
    COMMON.iter().chain(device).chain(own).copied().collect()
}

/// Calls a thread kind may make only with these values of one argument:
/// (syscall, argument index, allowed values).
fn restricted(kind: Filter) -> Vec<(i64, u8, Vec<u64>)> {
    if kind == Filter::Arrival {
        return arrival_restricted();
    }
    // Debug builds check a descriptor with F_GETFD before closing it.
    let mut fcntl = vec![libc::F_GETFD as u64];
    let ioctls = match kind {
        Filter::Vcpu => vec![KVM_RUN()],
        Filter::Vmm => vec![
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
            // A migration's last scan: KVM logs the guest's writes (the
            // memory slot's flags change) and the pause reads that log.
            KVM_SET_USER_MEMORY_REGION(),
            KVM_GET_DIRTY_LOG(),
        ],
        // Non-blocking connections.
        Filter::Vsock => vec![libc::FIONBIO],
        _ => vec![],
    };
    let mut calls = vec![];
    if !ioctls.is_empty() {
        // On any fd: KVM's numbers do not clash with other devices' a VMM holds.
        calls.push((libc::SYS_ioctl, 1, ioctls));
    }
    match kind {
        // Unix sockets only: guest connections go to the host side's socket.
        Filter::Vsock => calls.push((libc::SYS_socket, 0, vec![libc::AF_UNIX as u64])),
        // A second handle on a client's connection.
        Filter::Control => fcntl.push(libc::F_DUPFD_CLOEXEC as u64),
        // A migration's connection: made blocking, its reads and writes
        // bounded in time, nothing else.
        // A second descriptor of a tap, lent to the VMM the VM moves to.
        Filter::Vmm => {
            fcntl.extend([libc::F_GETFL as u64, libc::F_SETFL as u64, libc::F_DUPFD_CLOEXEC as u64]);
            calls.push((
                libc::SYS_setsockopt,
                2,
                vec![libc::SO_RCVTIMEO as u64, libc::SO_SNDTIMEO as u64],
            ));
        }
        // Open flags of a file the guest opens again (O_APPEND, O_DIRECT).
        Filter::Fs => fcntl.extend([libc::F_GETFL as u64, libc::F_SETFL as u64]),
        _ => {}
    }
    calls.push((libc::SYS_fcntl, 1, fcntl));
    calls
}

/// The VMM's own conditions, and the calls that take a migrated VM's
/// state in.
fn arrival_restricted() -> Vec<(i64, u8, Vec<u64>)> {
    let mut calls = restricted(Filter::Vmm);
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

/// The number of system calls a filter allows (for the README).
pub fn allowed_count(filter: Filter) -> usize {
    let mut calls = syscalls(filter);
    calls.extend(restricted(filter).into_iter().map(|(call, _, _)| call));
    calls.sort_unstable();
    calls.dedup();
    calls.len()
}

/// Compiles `filter` for x86_64; a call it does not allow gets `mismatch`.
pub fn compile(filter: Filter, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let fail = |e: &dyn std::fmt::Display| format!("the {} thread's filter: {e}", filter.label());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = syscalls(filter).into_iter().map(|s| (s, vec![])).collect();
    for (call, arg, values) in restricted(filter) {
        let rule = values
            .into_iter()
            .map(|value| condition(arg, value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&e))?;
        rules.insert(call, rule);
    }
    let compiled = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, seccompiler::TargetArch::x86_64)
        .map_err(|e| fail(&e))?;
    compiled.try_into().map_err(|e: seccompiler::BackendError| fail(&e))
}

/// The stored form of programs, in `Filter::ALL`'s order: for each, its
/// instruction count (u32), then each instruction as code (u16), jt, jf
/// (u8 each) and k (u32), little-endian.
#[allow(dead_code)] // The build script's half.
pub fn encode(programs: &[BpfProgram]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for program in programs {
        bytes.extend((program.len() as u32).to_le_bytes());
        for op in program {
            bytes.extend(op.code.to_le_bytes());
            bytes.extend([op.jt, op.jf]);
            bytes.extend(op.k.to_le_bytes());
        }
    }
    bytes
}

/// `filter`'s program from what `encode` stored.
#[allow(dead_code)] // The crate's half.
pub fn decode(stored: &[u8], filter: Filter) -> Option<BpfProgram> {
    let index = Filter::ALL.iter().position(|&f| f == filter)?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let piece = stored.get(at..at.checked_add(n)?)?;
        at += n;
        Some(piece)
    };
    for i in 0..=index {
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let instructions = take(count.checked_mul(8)?)?;
        if i == index {
            let program = instructions
                .chunks_exact(8)
                .map(|op| sock_filter {
                    code: u16::from_le_bytes([op[0], op[1]]),
                    jt: op[2],
                    jf: op[3],
                    k: u32::from_le_bytes([op[4], op[5], op[6], op[7]]),
                })
                .collect();
            return Some(program);
        }
    }
    None
}
