//! The jail a container's VMM runs in.
//!
//! The process that starts a jailed VMM (`spawn`) makes its cgroup v2
//! group (`cgroup`: memory, CPU and thread limits from the VM's shape) and
//! starts hull-vmm in it, in new PID and IPC namespaces, with one `clone3`
//! and an exec: no waiter process, no move between groups. It keeps the
//! write end of a lifeline pipe, reaps the VMM and removes its group.
//!
//! hull-vmm (`--jail DIR`) builds the VM while it is still root (it opens
//! /dev/kvm, the disks, the snapshot memory, binds its sockets), then,
//! before any guest code runs, pivots into DIR in a mount namespace of its
//! own, takes a uid of its own (`ID_BASE` + its PID on the host: unique
//! while it runs) and hull's VMM group, drops every capability, sets
//! `no_new_privs` and resource limits. DIR is the VM's socket directory:
//! what the VMM needs after that is there (the runtime's listener sockets
//! for guest connections), reachable through the group.

mod cgroup;
mod spawn;

pub use cgroup::{cpu_max, Limits, CGROUP_PARENT};
pub use spawn::{Output, VmmCommand, VmmProcess, LIFELINE_FD};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::vm::VmError;

/// hull owns uids `ID_BASE ..= ID_BASE + pid_max` for jailed VMMs; `ID_BASE`
/// is also the group every jailed VMM runs in.
pub const ID_BASE: u32 = 0x5E00_0000;
const OPEN_FILES: u64 = 4096;
/// A VM that shares host directories holds a descriptor per file its guest
/// has looked up (until the guest forgets it).
const OPEN_FILES_SHARING: u64 = crate::devices::virtio::fs::OPEN_FILES;

/// What a VMM that shares host directories keeps: virtio-fs acts on files
/// as the guest's user (its thread takes that uid and gid for each
/// request), so it stays uid 0 with these and nothing else, as virtiofsd
/// does. A VMM that shares nothing keeps no capability and runs as a uid
/// of its own.
const FILE_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    // linkat(AT_EMPTY_PATH), for the guest's hard links. It would also
    // allow open_by_handle_at, which no thread's seccomp filter allows.
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
];

fn jail_err(what: &str) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |e| VmError::Jail(format!("{what}: {e}"))
}

fn check(ret: libc::c_int, what: &str) -> Result<(), VmError> {
    match ret {
        0 => Ok(()),
        _ => Err(jail_err(what)(std::io::Error::last_os_error())),
    }
}

/// Where a jailed VMM is confined.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The VM's socket directory, the VMM's root once locked down.
    pub root: PathBuf,
    /// The uid the VMM takes (`uid_of` its PID on the host).
    pub uid: u32,
    /// The read end of a pipe whose write end only the VMM's starter
    /// holds: hung up, the starter died (`lock_down`).
    pub lifeline: i32,
}

/// The uid a jailed VMM whose PID on the host is `pid` runs as.
pub fn uid_of(pid: u32) -> u32 {
    ID_BASE + pid
}

impl Jail {
    /// In hull-vmm, first thing: checks that it was started into its
    /// namespaces (by `VmmCommand::jail`), enters `root`.
    pub fn enter(root: &Path, lifeline: i32) -> Result<Jail, VmError> {
        if std::process::id() != 1 {
            return Err(VmError::Jail(
                "hull-vmm --jail must be started by hull (vmm::jail::VmmCommand), which makes its namespaces and cgroup"
                    .into(),
            ));
        }
        let root = root
            .canonicalize()
            .map_err(|e| VmError::Jail(format!("{}: {e}", root.display())))?;
        // /proc is still the host's: /proc/self names our PID there.
        let host_pid: u32 = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse().ok())
            .ok_or_else(|| VmError::Jail("reading the VMM's PID from /proc/self".into()))?;
        enter_dir(&root)?;
        Ok(Jail {
            root,
            uid: uid_of(host_pid),
            lifeline,
        })
    }
}

/// In the jailed VMM, before the VM is built: from here on, paths inside
/// `root` are used relative to it (they stay valid after the pivot).
fn enter_dir(root: &Path) -> Result<(), VmError> {
    std::env::set_current_dir(root).map_err(jail_err("the jail directory"))
}

/// `path` as the jailed VMM must name it: relative, if it lies in `root`.
pub fn inside(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(root) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// Once the VM is built and before its threads start: a mount namespace
/// whose root is `root`, the VMM's own uid and group, no capabilities,
/// `no_new_privs`, resource limits. A VMM that `shares` host directories
/// stays uid 0 with only `FILE_CAPS`.
pub fn lock_down(jail: &Jail, vcpus: u8, shares: bool) -> Result<(), VmError> {
    let root = jail.root.as_path();
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| VmError::Jail("a path holds a NUL".into()));
    let root_c = c(root)?;
    let dot = c(Path::new("."))?;
    let slash = c(Path::new("/"))?;
    // SAFETY: the calls below take NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
        crate::trace::mark("jail: mount namespace");
        check(
            libc::mount(
                std::ptr::null(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making mounts private",
        )?;
        check(
            libc::mount(
                root_c.as_ptr(),
                root_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            "bind-mounting the jail directory",
        )?;
        check(libc::chdir(root_c.as_ptr()), "entering the jail directory")?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        crate::trace::mark("jail: pivoted");
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detaching the host's root",
        )?;
        crate::trace::mark("jail: host root detached");
        check(libc::chdir(slash.as_ptr()), "chdir /")?;
        let mut limits = vec![
            (
                libc::RLIMIT_NOFILE,
                if shares { OPEN_FILES_SHARING } else { OPEN_FILES },
            ),
            (libc::RLIMIT_CORE, 0),
        ];
        if !shares {
            // Threads count against the uid, which is this VMM's alone
            // (uid 0's count is the whole host's: the cgroup's pids.max
            // bounds a sharing VMM's threads).
            limits.push((libc::RLIMIT_NPROC, u64::from(vcpus) + cgroup::EXTRA_THREADS));
        }
        for (resource, limit) in limits {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            check(libc::setrlimit(resource, &limit), "setrlimit")?;
        }
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        if shares {
            keep_only_file_caps()?;
        } else {
            let uid = jail.uid;
            check(libc::setresgid(ID_BASE, ID_BASE, ID_BASE), "setresgid")?;
            check(libc::setresuid(uid, uid, uid), "setresuid")?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")?;
        // Changing credentials cleared the parent-death signal the starter
        // set: set it again, then make sure the starter did not die in
        // between (its lifeline would have hung up). No thread has to watch.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "parent-death signal",
        )?;
        let mut lifeline = libc::pollfd {
            fd: jail.lifeline,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut lifeline, 1, 0) != 0 {
            return Err(VmError::Jail("the VMM's starter is gone".into()));
        }
        libc::close(jail.lifeline);
    }
    Ok(())
}

/// Drops every capability but `FILE_CAPS`, from the bounding set too.
fn keep_only_file_caps() -> Result<(), VmError> {
    let keep: caps::CapsHashSet = FILE_CAPS.iter().copied().collect();
    let fail = |e: caps::errors::CapsError| VmError::Jail(format!("dropping capabilities: {e}"));
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(fail)?;
        }
    }
    caps::set(None, caps::CapSet::Inheritable, &caps::CapsHashSet::new()).map_err(fail)?;
    caps::set(None, caps::CapSet::Effective, &keep).map_err(fail)?;
    caps::set(None, caps::CapSet::Permitted, &keep).map_err(fail)?;
    Ok(())
}
