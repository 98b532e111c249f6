//! Making this VM its own machine: the template snapshot point, and what a
//! clone must not share with its siblings (entropy, wall clock, disk sizes).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use proto::{RunSpec, SNAPSHOT_PORT, SNAPSHOT_REQUEST, TEMPLATE_CMDLINE_FLAG};

/// Booted as a template (the kernel command line says so): ask the VMM to
/// save the VM here. The write returns in every clone restored from it.
pub fn snapshot_point() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|w| w == TEMPLATE_CMDLINE_FLAG) {
        return;
    }
    // SAFETY: ioperm grants this process the one port; PID 1 is root.
    if unsafe { libc::ioperm(u64::from(SNAPSHOT_PORT), 1, 1) } != 0 {
        eprintln!("hull-agent: ioperm: {}", io::Error::last_os_error());
        return;
    }
    // SAFETY: a byte write to an I/O port this process was granted above.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") SNAPSHOT_PORT, in("al") SNAPSHOT_REQUEST, options(nomem, nostack));
    }
}

/// RNDADDENTROPY and RNDRESEEDCRNG from <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes the host's random bytes into the kernel's pool, credits them, and
/// makes the kernel reseed its generator now: clones of one template must
/// never hand out the same random numbers.
pub fn reseed(entropy: &[u8]) -> io::Result<()> {
    if entropy.is_empty() {
        return Ok(());
    }
    let random = File::options().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a complete rand_pool_info that outlives the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an argument-less ioctl on an open fd.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the wall clock to the host's (a clone wakes with its template's).
pub fn set_clock(unix_ns: u64) -> io::Result<()> {
    if unix_ns == 0 {
        return Ok(());
    }
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec for the call's duration.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A clone's disks were swapped under the driver, which learns their new
/// size from a config-change interrupt, handled asynchronously: waits until
/// each disk shows the size the host gave it.
pub fn wait_for_disks(spec: &RunSpec) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for disk in &spec.disks {
        wait_for_disk_size(&disk.device, disk.sectors, deadline)?;
    }
    Ok(())
}

/// Waits until `device` (`/dev/vdX`) shows `sectors`, until `deadline`: a
/// disk swapped or plugged under the driver shows its size a moment later.
pub fn wait_for_disk_size(device: &str, sectors: u64, deadline: Instant) -> io::Result<()> {
    let name = device.trim_start_matches("/dev/");
    let path = format!("/sys/block/{name}/size");
    loop {
        let size = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if size == Some(sectors) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{device} still has {} sectors, not {sectors}",
                    size.map_or("unknown".into(), |s| s.to_string()),
                ),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
