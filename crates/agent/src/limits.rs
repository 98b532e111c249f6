//! The container's cgroup inside its guest (`/sys/fs/cgroup/container`,
//! cgroup v2): every process of the container, its command's and its
//! execs' alike, joins it. Its `pids.max` is Docker's `--pids-limit`, and
//! freezing it holds the container still while `docker commit` reads its
//! files. (Memory and CPU are the VM's own size and its VMM's cgroup on
//! the host.)

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::OnceLock;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTAINER: &str = "/sys/fs/cgroup/container";

/// The container group's `cgroup.procs`, open for the children to join it.
static CONTAINER_PROCS: OnceLock<File> = OnceLock::new();

/// Mounts the cgroup2 hierarchy; done once at boot, so every clone has it.
pub fn mount_hierarchy() -> io::Result<()> {
    std::fs::create_dir_all(CGROUP_ROOT)?;
    let cgroup2 = |path: &str| std::ffi::CString::new(path).map_err(io::Error::other);
    let (source, target, fstype) = (cgroup2("cgroup2")?, cgroup2(CGROUP_ROOT)?, cgroup2("cgroup2")?);
    // Every command the agent spawns moves into the container's group: with
    // `favordynmods` (Linux 6.0) a move does not wait for an RCU grace
    // period (10 of a traced spawn's 31-35 ms in vmhost), at the price of
    // a slightly dearer fork and exit. An older kernel refuses the option.
    let mount = |options: *const libc::c_void| {
        // SAFETY: NUL-terminated strings that outlive the call; `options`
        // is one too, or null.
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, options) }
    };
    let mut mounted = mount(c"favordynmods".as_ptr().cast());
    if mounted != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        mounted = mount(std::ptr::null());
    }
    if mounted != 0 {
        let e = io::Error::last_os_error();
        // A held VM mounted it for an earlier hold, or a re-run of this step.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Ok(())
}

/// Makes the container's group, which every process started from now on
/// joins, bounded to `pids_max` tasks if given.
pub fn container_group(pids_max: Option<u64>) -> io::Result<()> {
    if !std::path::Path::new(CGROUP_ROOT).join("cgroup.procs").exists() {
        mount_hierarchy()?;
    }
    match std::fs::create_dir(CONTAINER) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if let Some(max) = pids_max {
        std::fs::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+pids")?;
        std::fs::write(format!("{CONTAINER}/pids.max"), max.to_string())?;
    }
    let procs = File::options().write(true).open(format!("{CONTAINER}/cgroup.procs"))?;
    let _ = CONTAINER_PROCS.set(procs);
    Ok(())
}

/// Holds every process of the container still (`true`) or lets them go
/// on; a freeze returns once the kernel reports the group frozen.
pub fn freeze(frozen: bool) -> io::Result<()> {
    std::fs::write(format!("{CONTAINER}/cgroup.freeze"), if frozen { "1" } else { "0" })?;
    if frozen {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(format!("{CONTAINER}/cgroup.events"))?.contains("frozen 1") {
            if std::time::Instant::now() > deadline {
                let _ = std::fs::write(format!("{CONTAINER}/cgroup.freeze"), "0");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the container did not freeze within 10 s",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
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
