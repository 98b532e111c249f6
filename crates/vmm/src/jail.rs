//! The jail a container's VMM runs in (`hull-vmm --jail DIR`).
//!
//! Before anything else, hull-vmm forks into new PID and IPC namespaces and
//! a cgroup v2 group of its own (`/sys/fs/cgroup/hull/vmm-PID`: memory,
//! CPU and thread limits from the VM's shape); the parent only waits, then
//! removes the group and ends as its child ended. The child builds the VM
//! while it is still root (it opens /dev/kvm, the disks, the snapshot
//! memory, binds its sockets), then, before any guest code runs, pivots
//! into DIR in a mount namespace of its own, takes a uid of its own
//! (`ID_BASE` + the parent's PID: unique while the VM runs) and hull's
//! VMM group, drops every capability, sets `no_new_privs` and resource
//! limits. DIR is the VM's socket directory: what the VMM needs after
//! that is there (the runtime's listener sockets for guest connections),
//! reachable through the group.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::vm::VmError;

/// hull owns uids `ID_BASE ..= ID_BASE + pid_max` for jailed VMMs; `ID_BASE`
/// is also the group every jailed VMM runs in.
pub const ID_BASE: u32 = 0x5E00_0000;
/// Where each jailed VMM's cgroup is made.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/hull";
/// Guest memory plus this is what the VMM's cgroup may use: page tables,
/// KVM's own structures, device buffers.
const MEMORY_OVERHEAD_MIB: u64 = 128;
/// The VMM's threads beyond one per vCPU (devices, control, waiter).
const EXTRA_THREADS: u64 = 32;
const OPEN_FILES: u64 = 4096;

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
    /// The waiter's PID (outside the VMM's PID namespace): names its uid.
    pub waiter: u32,
    /// The read end of a pipe whose write end only the waiter holds: it
    /// hangs up when the waiter dies. (PR_SET_PDEATHSIG does not reach the
    /// init of a PID namespace, which the VMM is.)
    pub lifeline: i32,
}

/// Which side of the fork we are on.
pub enum Side {
    /// The jailed VMM: goes on to build and run the VM.
    Vmm { waiter: u32, lifeline: i32 },
    /// The waiter: the VMM ended with this status.
    Waiter(std::process::ExitStatus),
}

/// The cgroup of the VMM whose waiter has PID `pid`.
pub fn cgroup_of(pid: u32) -> PathBuf {
    Path::new(CGROUP_PARENT).join(format!("vmm-{pid}"))
}

/// Removes the cgroup of a VMM whose waiter (PID `pid`) was killed before
/// it could: the VMM ends with its waiter (its lifeline hangs up) and the
/// group stays busy until it has, so this waits up to a second.
pub fn remove_cgroup_of(pid: u32) {
    let cgroup = cgroup_of(pid);
    for _ in 0..100 {
        match std::fs::remove_dir(&cgroup) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => break,
        }
    }
}

/// The uid a VMM whose waiter has PID `pid` runs as.
pub fn uid_of(pid: u32) -> u32 {
    ID_BASE + pid
}

/// Makes the cgroup, forks into new PID and IPC namespaces. Call while
/// the process has one thread.
pub fn fork(limits: &Limits) -> Result<Side, VmError> {
    let waiter = std::process::id();
    let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Waiter)?;
    crate::seccomp::install_violation_handler()?;
    let cgroup = make_cgroup(waiter, limits)?;
    let mut lifeline = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check(unsafe { libc::pipe2(lifeline.as_mut_ptr(), libc::O_CLOEXEC) }, "pipe2")?;
    // SAFETY: unshare has no memory-safety preconditions.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWIPC) },
        "unshare",
    )?;
    // SAFETY: the process is single-threaded here (the caller's contract),
    // so the child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(jail_err("fork")(std::io::Error::last_os_error())),
        0 => {
            if let Some(cgroup) = &cgroup {
                std::fs::write(cgroup.join("cgroup.procs"), b"0").map_err(jail_err("joining the VMM's cgroup"))?;
            }
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(lifeline[1]) };
            Ok(Side::Vmm {
                waiter,
                lifeline: lifeline[0],
            })
        }
        child => {
            // SAFETY: the waiter keeps only the write end, open until it ends.
            unsafe { libc::close(lifeline[0]) };
            crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Waiter);
            let status = wait(child);
            if let Some(cgroup) = cgroup {
                let _ = std::fs::remove_dir(cgroup);
            }
            Ok(Side::Waiter(status))
        }
    }
}

fn wait(child: libc::pid_t) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let ret = unsafe { libc::waitpid(child, &mut status, 0) };
        if ret == child || (ret < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return std::process::ExitStatus::from_raw(status);
        }
    }
}

/// What a jailed VMM's cgroup allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    memory_mib: u64,
    vcpus: u8,
    cpu_millis: u32,
}

impl Limits {
    /// The limits of a VM of `memory_mib` and `vcpus`, whose CPU time is
    /// `cpu_millis` thousandths of a CPU (default: all of its vCPUs).
    pub fn new(memory_mib: u64, vcpus: u8, cpu_millis: Option<u32>) -> Result<Limits, VmError> {
        let all = u32::from(vcpus) * 1000;
        let cpu_millis = cpu_millis.unwrap_or(all);
        // cpu.max takes a quota of at least 1 ms per 100 ms period.
        if !(10..=all).contains(&cpu_millis) {
            return Err(VmError::Jail(format!(
                "a CPU limit of {cpu_millis} thousandths of a CPU: it must lie between 10 and {all} (its {vcpus} vCPUs)"
            )));
        }
        Ok(Limits {
            memory_mib,
            vcpus,
            cpu_millis,
        })
    }

    /// The cgroup v2 files that set them, and their contents.
    fn cgroup_files(&self) -> [(&'static str, String); 4] {
        [
            (
                "memory.max",
                ((self.memory_mib + MEMORY_OVERHEAD_MIB) << 20).to_string(),
            ),
            ("memory.swap.max", "0".to_string()),
            (
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", u64::from(self.cpu_millis) * CPU_PERIOD_US / 1000),
            ),
            ("pids.max", (u64::from(self.vcpus) + EXTRA_THREADS).to_string()),
        ]
    }
}

/// cgroup v2's CPU accounting period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The VMM's cgroup (cgroup v2), or None where /sys/fs/cgroup is not a
/// cgroup v2 hierarchy (a cgroup v1 host: the VMM runs without limits).
fn make_cgroup(waiter: u32, limits: &Limits) -> Result<Option<PathBuf>, VmError> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return Ok(None);
    }
    let enable = |dir: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.subtree_control"))
            .and_then(|mut f| f.write_all(b"+memory +cpu +pids"))
    };
    enable(root).map_err(jail_err("enabling the memory, cpu and pids controllers"))?;
    let parent = Path::new(CGROUP_PARENT);
    std::fs::create_dir_all(parent).map_err(jail_err(CGROUP_PARENT))?;
    enable(parent).map_err(jail_err(CGROUP_PARENT))?;
    let cgroup = cgroup_of(waiter);
    // A VMM of an earlier process with this PID that was killed outright.
    let _ = std::fs::remove_dir(&cgroup);
    std::fs::create_dir(&cgroup).map_err(jail_err("making the VMM's cgroup"))?;
    for (file, value) in limits.cgroup_files() {
        let path = cgroup.join(file);
        // memory.swap.max is absent without swap accounting.
        if file == "memory.swap.max" && !path.exists() {
            continue;
        }
        std::fs::write(&path, value).map_err(jail_err(file))?;
    }
    Ok(Some(cgroup))
}

/// In the jailed VMM, before the VM is built: from here on, paths inside
/// `root` are used relative to it (they stay valid after the pivot).
pub fn enter_dir(root: &Path) -> Result<(), VmError> {
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
/// `no_new_privs`, resource limits.
pub fn lock_down(jail: &Jail, vcpus: u8) -> Result<(), VmError> {
    let root = jail.root.as_path();
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| VmError::Jail("a path holds a NUL".into()));
    let root_c = c(root)?;
    let dot = c(Path::new("."))?;
    let slash = c(Path::new("/"))?;
    // SAFETY: the calls below take NUL-terminated strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
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
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detaching the host's root",
        )?;
        check(libc::chdir(slash.as_ptr()), "chdir /")?;
        for (resource, limit) in [
            (libc::RLIMIT_NOFILE, OPEN_FILES),
            (libc::RLIMIT_CORE, 0),
            // Threads count against the uid, which is this VMM's alone.
            (libc::RLIMIT_NPROC, u64::from(vcpus) + EXTRA_THREADS),
        ] {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            check(libc::setrlimit(resource, &limit), "setrlimit")?;
        }
        let uid = uid_of(jail.waiter);
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(ID_BASE, ID_BASE, ID_BASE), "setresgid")?;
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")?;
    }
    Ok(())
}

/// Ends the VMM when its waiter dies (its lifeline hangs up).
pub fn watch_waiter(jail: &Jail) -> Result<(), VmError> {
    let lifeline = jail.lifeline;
    let filter = crate::seccomp::filter_for(crate::seccomp::ThreadKind::Lifeline)?;
    std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(move || {
            crate::seccomp::install(&filter, crate::seccomp::ThreadKind::Lifeline);
            let mut fd = libc::pollfd {
                fd: lifeline,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; nothing writes to the pipe, so any
            // wake-up other than EINTR is the hang-up.
            while unsafe { libc::poll(&mut fd, 1, -1) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            // SAFETY: ends the whole process at once.
            unsafe { libc::_exit(137) };
        })
        .map(|_| ())
        .map_err(crate::vm::thread_err("lifeline"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(limits: &Limits, name: &str) -> String {
        limits.cgroup_files().into_iter().find(|(f, _)| *f == name).unwrap().1
    }

    #[test]
    fn limits_follow_the_container_shape_and_its_share_of_cpu() {
        let whole = Limits::new(512, 2, None).unwrap();
        assert_eq!(file(&whole, "cpu.max"), "200000 100000");
        assert_eq!(
            file(&whole, "memory.max"),
            ((512 + MEMORY_OVERHEAD_MIB) << 20).to_string()
        );
        assert_eq!(file(&whole, "pids.max"), (2 + EXTRA_THREADS).to_string());
        // docker run --cpus 1.5: two vCPUs, one and a half CPUs' time.
        assert_eq!(
            file(&Limits::new(512, 2, Some(1500)).unwrap(), "cpu.max"),
            "150000 100000"
        );
        assert_eq!(file(&Limits::new(512, 1, Some(10)).unwrap(), "cpu.max"), "1000 100000");
    }

    #[test]
    fn a_cpu_limit_beyond_the_vcpus_or_below_a_millisecond_is_refused() {
        for (vcpus, millis) in [(1, 1001), (2, 2001), (1, 9), (1, 0)] {
            let e = Limits::new(256, vcpus, Some(millis)).unwrap_err().to_string();
            assert!(e.contains("must lie between 10 and"), "{e}");
        }
    }
}
