//! `hull-vmm`: one microVM per process.
//!
//! Exit status: 0 the guest powered off (or, making a template, was saved);
//! 2 the guest reset or panicked; 3 the snapshot to restore is unusable
//! (missing, damaged, another format or another VM shape: make a new one);
//! 4 a thread made a system call its seccomp filter forbids (logged on
//! stderr with the call and the thread); 1 the VMM failed otherwise (the
//! reason is on stderr); killed by a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::vm::{self, DiskConfig, GuestExit, NetBackend, NetConfig, Start, VmConfig, VmError, VsockConfig};

#[derive(Parser)]
#[command(name = "hull-vmm", about = "Run one KVM microVM")]
struct Args {
    /// The guest kernel (bzImage).
    #[arg(long, required_unless_present = "restore", conflicts_with = "restore")]
    kernel: Option<PathBuf>,
    /// Resume the snapshot in this directory instead of booting; disks and
    /// vsock given here replace the snapshot's, slot for slot.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Make a template: save the VM into this directory when its agent asks.
    #[arg(long)]
    snapshot_to: Option<PathBuf>,
    /// The initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = "console=ttyS0 quiet panic=-1 pci=off")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Write the guest console here.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Copy the guest console to stderr.
    #[arg(long)]
    console: bool,
    /// A virtio-blk disk: PATH or PATH:ro (repeatable; the guest sees vda, vdb, ...).
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// virtio-vsock: the unix socket of its host side (guest→host port P connects to PATH_P).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// virtio-net on this host tap interface (made if missing).
    #[arg(long, conflicts_with_all = ["net_fd", "net_detached"])]
    net_tap: Option<String>,
    /// virtio-net on a tap the caller opened and passed down as this fd.
    #[arg(long, conflicts_with = "net_detached")]
    net_fd: Option<i32>,
    /// virtio-net plugged into nothing (a template's NIC slot).
    #[arg(long)]
    net_detached: bool,
    /// The NIC's MAC address.
    #[arg(long, default_value = "02:68:75:6c:6c:01", value_parser = parse_mac)]
    net_mac: [u8; 6],
    /// Serve the control channel (pause, resume, describe) on this unix socket.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Jail the VMM (its own uid, namespaces and cgroup), pivoted into this
    /// directory, which must hold the vsock and control sockets.
    #[arg(long, conflicts_with = "snapshot_to")]
    jail: Option<PathBuf>,
    /// The jailed VM's CPU time, in thousandths of a CPU (1500: one and a
    /// half CPUs' worth, at most its vCPUs'); default: all of its vCPUs.
    #[arg(long, requires = "jail")]
    cpu_limit_millis: Option<u32>,
    /// Tests only: a guest write to a fixed MMIO address makes a vCPU thread
    /// break its seccomp filter.
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
}

fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = match spec.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    if path.is_empty() {
        return Err("a disk needs a path: PATH or PATH:ro".into());
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("not a MAC address: {text}")))
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("a MAC address has 6 bytes: {text}"))?;
    if mac[0] & 1 != 0 {
        return Err(format!("{text} is a multicast address"));
    }
    Ok(mac)
}

fn main() -> ExitCode {
    vmm::seccomp::prepare_process();
    vmm::trace::start();
    let args = Args::parse();
    vmm::trace::mark("arguments parsed");
    if let Err(e) = vmm::host::require_guest_capable() {
        eprintln!("hull-vmm: {e}");
        return ExitCode::FAILURE;
    }
    vmm::trace::mark("host KVM checked");
    let start = match (args.restore, args.kernel) {
        (Some(snapshot), _) => Start::Restore { snapshot },
        (None, Some(kernel)) => Start::Boot {
            kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
        },
        (None, None) => {
            eprintln!("hull-vmm: give --kernel or --restore");
            return ExitCode::FAILURE;
        }
    };
    let mut config = VmConfig {
        start,
        snapshot_to: args.snapshot_to,
        control_socket: args.control_socket,
        seccomp_selftest: args.seccomp_selftest,
        jail: None,
        memory_mib: args.memory,
        vcpus: args.cpus,
        serial_log: args.serial_log,
        console_echo: args.console,
        disks: args.disks,
        net: match (args.net_tap, args.net_fd, args.net_detached) {
            (Some(tap), _, _) => Some(NetBackend::Tap(tap)),
            (_, Some(fd), _) => Some(NetBackend::TapFd(fd)),
            (_, _, true) => Some(NetBackend::Detached),
            _ => None,
        }
        .map(|backend| NetConfig {
            backend,
            mac: args.net_mac,
        }),
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
    };
    if let Some(root) = args.jail {
        match jail(&mut config, &root, args.cpu_limit_millis) {
            Ok(None) => {}
            Ok(Some(status)) => return exit_as(status),
            Err(e) => {
                eprintln!("hull-vmm: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match vm::run(&config) {
        Ok(GuestExit::Poweroff) => ExitCode::SUCCESS,
        Ok(GuestExit::Snapshotted) => {
            eprintln!("hull-vmm: the VM was saved");
            ExitCode::SUCCESS
        }
        Ok(GuestExit::Reset { panic_message }) => {
            match panic_message {
                Some(console) => eprintln!("hull-vmm: the guest kernel panicked:\n{console}"),
                None => eprintln!("hull-vmm: the guest reset itself"),
            }
            ExitCode::from(2)
        }
        Err(e @ (VmError::Snapshot(_) | VmError::SnapshotMismatch(_))) => {
            eprintln!("hull-vmm: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Forks the jailed VMM; returns its status in the waiter, None in the VMM.
fn jail(
    config: &mut VmConfig,
    root: &std::path::Path,
    cpu_limit_millis: Option<u32>,
) -> Result<Option<std::process::ExitStatus>, VmError> {
    use vmm::jail::{self, Jail, Limits, Side};
    vm::validate(config)?;
    let limits = Limits::new(config.memory_mib, config.vcpus, cpu_limit_millis)?;
    let root = root
        .canonicalize()
        .map_err(|e| VmError::Jail(format!("{}: {e}", root.display())))?;
    let (waiter, lifeline) = match jail::fork(&limits)? {
        Side::Waiter(status) => return Ok(Some(status)),
        Side::Vmm { waiter, lifeline } => (waiter, lifeline),
    };
    jail::enter_dir(&root)?;
    // Named relative to the jail, they stay valid after the pivot.
    if let Some(vsock) = &mut config.vsock {
        vsock.uds_path = jail::inside(&root, &vsock.uds_path);
    }
    if let Some(control) = &mut config.control_socket {
        *control = jail::inside(&root, control);
    }
    config.jail = Some(Jail { root, waiter, lifeline });
    Ok(None)
}

/// Ends the waiter as its VMM ended: the same code, or the same signal.
fn exit_as(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        // SAFETY: restoring the default action and raising a signal on ourselves.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_are_six_unicast_bytes() {
        assert_eq!(parse_mac("02:68:75:6c:6c:01"), Ok([2, 0x68, 0x75, 0x6c, 0x6c, 1]));
        assert!(parse_mac("02:68:75:6c:6c").is_err());
        assert!(parse_mac("02:68:75:6c:6c:01:02").is_err());
        assert!(parse_mac("zz:68:75:6c:6c:01").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").unwrap_err().contains("multicast"));
    }
}
