//! A jailed VMM's cgroup v2 group: made by the process that starts the VMM
//! (which is born in it, `CLONE_INTO_CGROUP`), with memory, CPU and thread
//! limits from the VM's shape, and removed by that process once the VMM
//! has been reaped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::vm::VmError;

/// Where each jailed VMM's cgroup is made.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/hull";
/// Guest memory plus this is what the VMM's cgroup may use: page tables,
/// KVM's own structures, device buffers.
const MEMORY_OVERHEAD_MIB: u64 = 128;
/// The VMM's threads beyond one per vCPU (devices, control).
pub(crate) const EXTRA_THREADS: u64 = 32;
/// cgroup v2's CPU accounting period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// What a jailed VMM's cgroup allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    memory_mib: u64,
    vcpus: u8,
    /// `None`: no CPU quota, as Docker without `--cpus` (the vCPUs bound
    /// the guest; a quota of exactly them throttled restores by ~10%).
    cpu_millis: Option<u32>,
}

impl Limits {
    /// The limits of a VM of `memory_mib` and `vcpus`, whose CPU time is
    /// `cpu_millis` thousandths of a CPU (default: no quota).
    pub fn new(memory_mib: u64, vcpus: u8, cpu_millis: Option<u32>) -> Result<Limits, VmError> {
        let all = u32::from(vcpus) * 1000;
        // cpu.max takes a quota of at least 1 ms per 100 ms period.
        if let Some(millis) = cpu_millis.filter(|m| !(10..=all).contains(m)) {
            return Err(VmError::Jail(format!(
                "a CPU limit of {millis} thousandths of a CPU: it must lie between 10 and {all} (its {vcpus} vCPUs)"
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
            ("cpu.max", cpu_max(self.cpu_millis)),
            ("pids.max", (u64::from(self.vcpus) + EXTRA_THREADS).to_string()),
        ]
    }
}

/// `cpu.max` for `millis` thousandths of a CPU (`None`: no quota).
pub fn cpu_max(millis: Option<u32>) -> String {
    match millis {
        Some(millis) => format!("{} {CPU_PERIOD_US}", u64::from(millis) * CPU_PERIOD_US / 1000),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

fn cgroup_err(what: &str) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |e| VmError::Jail(format!("{what}: {e}"))
}

/// Numbers this process's VMM groups: `vmm-PID-N`.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A new group for one VMM, with `limits`; None where /sys/fs/cgroup is
/// not a cgroup v2 hierarchy (a cgroup v1 host: the VMM runs without).
pub(crate) fn make(limits: &Limits) -> Result<Option<PathBuf>, VmError> {
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
    let parent = Path::new(CGROUP_PARENT);
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    if seq == 0 || !parent.exists() {
        enable(root).map_err(cgroup_err("enabling the memory, cpu and pids controllers"))?;
        std::fs::create_dir_all(parent).map_err(cgroup_err(CGROUP_PARENT))?;
        enable(parent).map_err(cgroup_err(CGROUP_PARENT))?;
    }
    remove_orphans(parent);
    let cgroup = parent.join(format!("vmm-{}-{seq}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cgroup) {
        // Left by an earlier process with our PID, killed outright.
        if e.kind() != std::io::ErrorKind::AlreadyExists || std::fs::remove_dir(&cgroup).is_err() {
            return Err(cgroup_err("making the VMM's cgroup")(e));
        }
        std::fs::create_dir(&cgroup).map_err(cgroup_err("making the VMM's cgroup"))?;
    }
    for (file, value) in limits.cgroup_files() {
        let path = cgroup.join(file);
        // memory.swap.max is absent without swap accounting.
        if file == "memory.swap.max" && !path.exists() {
            continue;
        }
        if let Err(e) = std::fs::write(&path, value) {
            let _ = std::fs::remove_dir(&cgroup);
            return Err(cgroup_err(file)(e));
        }
    }
    Ok(Some(cgroup))
}

/// Removes the groups left by processes that died before they could
/// (killed outright: their VMMs ended with them). Only groups whose
/// maker is gone are touched, so none another process is filling.
fn remove_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let maker = name
            .to_str()
            .and_then(|n| n.strip_prefix("vmm-"))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .filter(|&pid| pid > 0);
        if maker.is_some_and(|pid| !alive(pid)) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) }
}

/// Removes a VMM's group once its VMM has ended: the group stays busy for
/// a moment after its last process is reaped, so this waits up to a second.
pub(crate) fn remove(cgroup: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(cgroup) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
            _ => break,
        }
    }
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
        assert_eq!(file(&whole, "cpu.max"), "max 100000", "no quota unless asked");
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
