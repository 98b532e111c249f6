//! The container's limits inside its guest: Docker's `--pids-limit` as a
//! cgroup v2 group (`/sys/fs/cgroup/container`) whose `pids.max` bounds the
//! container's processes and threads, its command's and its execs' alike.
//! (Memory and CPU are the VM's own size and its VMM's cgroup on the host.)

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::OnceLock;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTAINER: &str = "/sys/fs/cgroup/container";

/// The container group's `cgroup.procs`, open for the children to join it.
static CONTAINER_PROCS: OnceLock<File> = OnceLock::new();

/// Puts every process started from now on into a group of at most `max`
/// tasks.
pub fn limit_pids(max: u64) -> io::Result<()> {
    std::fs::create_dir_all(CGROUP_ROOT)?;
    let cgroup2 = |path: &str| std::ffi::CString::new(path).map_err(io::Error::other);
    let (source, target, fstype) = (cgroup2("cgroup2")?, cgroup2(CGROUP_ROOT)?, cgroup2("cgroup2")?);
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        let e = io::Error::last_os_error();
        // A held VM mounted it for an earlier hold, or a re-run of this step.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    std::fs::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+pids")?;
    match std::fs::create_dir(CONTAINER) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::fs::write(format!("{CONTAINER}/pids.max"), max.to_string())?;
    let procs = File::options().write(true).open(format!("{CONTAINER}/cgroup.procs"))?;
    let _ = CONTAINER_PROCS.set(procs);
    Ok(())
}

/// In a child between fork and exec: joins the container's group, if it
/// has one. Only write(2): async-signal-safe.
pub fn join_in_child() -> io::Result<()> {
    if let Some(procs) = CONTAINER_PROCS.get() {
        // SAFETY: writes one byte ("0": the writer itself) from a static to an open descriptor.
        if unsafe { libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
