//! Containers that join this VM's network (Docker's `--network
//! container:NAME`): a VM has one network stack, so a second container
//! sharing it runs in the same VM, beside the VM's own container.
//!
//! Each has a root of its own: its image's disk (plugged into the running
//! VM by the host; or the VM's own image) under an overlay whose writes go
//! to a directory of the VM's writable disk, kept while the VM lives, so a
//! restart of the joined container finds them. It has its own PID
//! namespace, and the VM's own container's `/etc/hosts`, `/etc/resolv.conf`
//! and `/etc/hostname` bound in, so a change of the VM's networks shows in
//! both. When its command ends, its root is taken down and the host
//! unplugs its disk.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::JoinSpec;

use crate::pid_namespace::{self, Pids};
use crate::{mounts, network};

/// Where each joined container's image and root are mounted.
const JOINED: &str = "/mnt/joined";
/// How long a plugged disk may take to show its size in the guest.
const DISK_PATIENCE: Duration = Duration::from_secs(10);

/// The joined containers whose roots are up.
static RUNNING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn root(id: &str) -> String {
    format!("{JOINED}/{id}/root")
}

/// The root of joined container `id`, if it runs (its execs start there).
pub fn running_root(id: &str) -> Option<String> {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    running.contains(id).then(|| root(id))
}

/// Runs joined container `spec` on the exec connection it came on: its
/// frames go as an exec's, and its root is taken down when it ends.
pub fn run(mut spec: JoinSpec, sink: &crate::Sink, input: File, reaper: &crate::Reaper) {
    let refuse = |message: String, code: i32, input: File| {
        crate::fail(sink, message, code);
        crate::wait_for_host_close(sink, input);
    };
    if !proto::valid_container_id(&spec.id) {
        return refuse(format!("{:?} is no container ID", spec.id), 125, input);
    }
    let started = RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(spec.id.clone());
    if !started {
        return refuse(format!("container {} runs in this VM already", spec.id), 125, input);
    }
    if let Err(e) = prepare(&spec) {
        take_down(&spec.id);
        return refuse(format!("preparing the container's root: {e}"), 125, input);
    }
    spec.process.container = spec.id.clone();
    let mut process = match crate::spawn(&spec.process, Pids::New, spec.init) {
        Ok(process) => process,
        Err((message, code)) => {
            take_down(&spec.id);
            return refuse(message, code, input);
        }
    };
    let id = spec.id.clone();
    // Its supervisor on the host is its lifeline: when that connection
    // ends (the supervisor killed, `docker rm -f`), so does the container.
    // A pidfd: the process may be gone and its PID reused by then.
    let lifeline = pidfd(process.child.pid).map(|pidfd| {
        Box::new(move || {
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }) as Box<dyn FnOnce() + Send>
    });
    // Its PID namespace ends with its command; its mounts then go. Killed
    // as the VM's own container ended, it ends with the VM: the host hears
    // that from the connection's end, not as an exit of its own.
    let ended = move || {
        take_down(&id);
        !crate::vm_ending()
    };
    crate::relay_until_hangup(&mut process, sink, input, reaper, ended, lifeline);
}

/// A descriptor of process `pid` that stays its own (`pidfd_open(2)`).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    match fd {
        fd if fd >= 0 => {
            // SAFETY: a descriptor just returned to us alone.
            Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        }
        _ => {
            crate::console(&format!(
                "container process {pid}: no pidfd ({}): it outlives a lost host",
                io::Error::last_os_error()
            ));
            None
        }
    }
}

/// Removes joined container `id`'s writes from the VM's writable disk (it
/// was removed); it may still be ending (its supervisor killed a moment
/// ago), so that is waited for, briefly.
pub fn forget(id: &str) -> io::Result<()> {
    if !proto::valid_container_id(id) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no container ID"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_root(id).is_some() {
        if Instant::now() > deadline {
            return Err(io::Error::other("it still runs in this VM"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match std::fs::remove_dir_all(format!("{}/joined/{id}", mounts::WRITABLE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // On the disk, not only in the guest's cache: the host may read it.
    let disk = File::open(mounts::WRITABLE)?;
    // SAFETY: syncfs on a descriptor we own.
    match unsafe { libc::syncfs(disk.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Mounts the container's image, its overlay and the kernel filesystems,
/// and binds the VM's network files into it.
fn prepare(spec: &JoinSpec) -> io::Result<()> {
    let base = format!("{JOINED}/{}", spec.id);
    let lower = match &spec.image_device {
        Some(device) => {
            wait_for_disk(device, spec.image_sectors)?;
            let image = format!("{base}/image");
            mounts::mount(device, &image, "ext4", libc::MS_RDONLY, "noload")?;
            image
        }
        None => mounts::IMAGE.to_string(),
    };
    let writes = format!("{}/joined/{}", mounts::WRITABLE, spec.id);
    let (upper, work) = (format!("{writes}/upper"), format!("{writes}/work"));
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir)?;
    }
    let root = root(&spec.id);
    mounts::mount(
        "overlay",
        &root,
        "overlay",
        0,
        &format!("lowerdir={lower},upperdir={upper},workdir={work}"),
    )?;
    mounts::confined_kernel_filesystems(&root)?;
    // The VM's own files, as its own container has them bound (a link in
    // the image is replaced, never followed).
    for name in network::GENERATED_FILES {
        let source = std::path::Path::new(network::FILES).join(name);
        if source.is_file() {
            let target = network::mount_point(std::path::Path::new(&root), name)?;
            network::bind(&source, &target)?;
        }
    }
    Ok(())
}

/// Waits until `device` (`/dev/vdX`, plugged just now) shows `sectors`:
/// the driver learns of it from a configuration change, a moment later.
fn wait_for_disk(device: &str, sectors: u64) -> io::Result<()> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    device
        .strip_prefix("/dev/")
        .filter(|n| n.len() == 3 && n.starts_with("vd") && n.as_bytes()[2].is_ascii_lowercase())
        .ok_or_else(|| invalid(format!("{device:?} is no virtio disk")))?;
    if sectors == 0 {
        return Err(invalid(format!("no size given for {device}")));
    }
    crate::machine::wait_for_disk_size(device, sectors, Instant::now() + DISK_PATIENCE)
}

/// Takes joined container `id`'s root and image down (lazily: a process
/// still ending lets go of them after), so the host may unplug its disk.
fn take_down(id: &str) {
    // Out of `RUNNING` first: no exec may start in it from here.
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    pid_namespace::forget_container(id);
    let base = format!("{JOINED}/{id}");
    for mount in [root(id), format!("{base}/image")] {
        if let Ok(path) = std::ffi::CString::new(mount) {
            // SAFETY: umount2 with a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virtio_disks_are_waited_for() {
        for bad in ["/dev/sda", "/dev/vd", "/dev/vdaa", "vdc", "/dev/../vdc", "/dev/vdC"] {
            assert_eq!(
                wait_for_disk(bad, 8).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
        let sizeless = wait_for_disk("/dev/vdc", 0).unwrap_err();
        assert_eq!(sizeless.kind(), io::ErrorKind::InvalidInput);
    }
}
