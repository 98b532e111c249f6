//! `hull-vmm`: one microVM per process.
//!
//! Exit status: 0 the guest powered off (or, making a template, was saved);
//! 2 the guest reset or panicked; 3 the snapshot to restore is unusable
//! (missing, damaged, another format or another VM shape: make a new one);
//! 4 a thread made a system call its seccomp filter forbids (logged on
//! stderr with the call and the thread); 5 the VM was migrated to another
//! hull-vmm and runs there; 1 the VMM failed otherwise (the reason is on
//! stderr); killed by a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::devices::virtio::fs::Share;
use vmm::vm::{
    self, DiskConfig, GuestExit, IncomingFrom, NetBackend, NetConfig, Start, VmConfig, VmError, VsockConfig,
};

/// The exit status of a VMM whose VM moved to another (`--incoming`) one.
const EXIT_MIGRATED: u8 = 5;

#[derive(Parser)]
#[command(name = "hull-vmm", about = "Run one KVM microVM")]
#[command(group(clap::ArgGroup::new("arriving").args(["incoming", "incoming_fd"])))]
struct Args {
    /// The guest kernel (bzImage).
    #[arg(long, required_unless_present_any = ["restore", "incoming", "incoming_fd"], conflicts_with_all = ["restore", "incoming", "incoming_fd"])]
    kernel: Option<PathBuf>,
    /// Resume the snapshot in this directory instead of booting; disks and
    /// vsock given here replace the snapshot's, slot for slot.
    #[arg(long, conflicts_with_all = ["incoming", "incoming_fd"])]
    restore: Option<PathBuf>,
    /// Take a running VM migrated from another hull-vmm, which connects to
    /// a unix socket made at this path; disks, NICs and vsock given here
    /// replace the source's, slot for slot.
    #[arg(long, conflicts_with_all = ["snapshot_to", "incoming_fd"])]
    incoming: Option<PathBuf>,
    /// As --incoming, the source already connected: this descriptor
    /// (inherited) is the migration connection, of any stream socket
    /// family (hulld's TCP connection from the source's host).
    #[arg(long, conflicts_with = "snapshot_to")]
    incoming_fd: Option<i32>,
    /// With --incoming: the template snapshot this host has; a clone of it
    /// arrives as its own pages only.
    #[arg(long, requires = "arriving")]
    template: Option<PathBuf>,
    /// With --incoming: the read-write disks given are empty copies that
    /// the source fills as it sends the VM (it comes from another host).
    #[arg(long, requires = "arriving")]
    receive_disks: bool,
    /// With --incoming: the Nth --share (from 0) is an empty directory
    /// that the source fills with its files as it sends the VM (a volume
    /// only the source's host sees; repeatable).
    #[arg(long = "receive-share", requires = "arriving")]
    receive_shares: Vec<usize>,
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
    /// NIC 0 on this host tap interface (made if missing).
    #[arg(long, conflicts_with = "net_fd")]
    net_tap: Option<String>,
    /// NIC SLOT on a tap the caller opened and passed down as FD: SLOT=FD
    /// (repeatable).
    #[arg(long, value_parser = parse_net_fd)]
    net_fd: Vec<(u8, i32)>,
    /// The VM has this many NICs (eth0, eth1, ...); those no tap is given
    /// for are plugged into nothing, until one is plugged in through the
    /// control channel.
    #[arg(long, default_value_t = 0)]
    net_slots: u8,
    /// NIC 0's MAC address (NIC N's last byte is N more).
    #[arg(long, default_value = "02:68:75:6c:6c:01", value_parser = parse_mac)]
    net_mac: [u8; 6],
    /// Give the VM its virtio-fs device (tag `hull`), sharing nothing unless
    /// --share says what. A clone must say it when its template had it.
    #[arg(long)]
    fs: bool,
    /// Share this host directory through virtio-fs: PATH or PATH:ro
    /// (repeatable; the guest sees the Nth as /N of the `hull` file system).
    #[arg(long = "share", value_parser = parse_share)]
    shares: Vec<Share>,
    /// Serve the control channel (pause, resume, describe) on this unix socket.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Lock the VMM down (its own uid, no capabilities), pivoted into this
    /// directory, which must hold the vsock and control sockets. Set by
    /// `vmm::jail::VmmCommand`, which starts it in its namespaces and cgroup.
    #[arg(long, conflicts_with = "snapshot_to", requires = "lifeline_fd")]
    jail: Option<PathBuf>,
    /// The jailed VMM ends when this descriptor (a pipe's read end) hangs up.
    #[arg(long, requires = "jail")]
    lifeline_fd: Option<i32>,
    /// Tests only: a guest write to a fixed MMIO address makes a vCPU thread
    /// break its seccomp filter.
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
}

/// `PATH`, `PATH:rw` or `PATH:ro`: the path and whether read-only.
fn split_mode(spec: &str) -> (&str, bool) {
    match spec.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    }
}

fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = split_mode(spec);
    if path.is_empty() {
        return Err("a disk needs a path: PATH or PATH:ro".into());
    }
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

fn parse_share(spec: &str) -> Result<Share, String> {
    let (path, read_only) = split_mode(spec);
    if !path.starts_with('/') {
        return Err(format!("{spec}: a shared directory is an absolute PATH or PATH:ro"));
    }
    Ok(Share {
        path: path.into(),
        read_only,
        receives: false,
    })
}

fn parse_net_fd(spec: &str) -> Result<(u8, i32), String> {
    let bad = || format!("{spec}: SLOT=FD is expected, e.g. 0=3");
    let (slot, fd) = spec.split_once('=').ok_or_else(bad)?;
    let slot = slot.parse().map_err(|_| bad())?;
    let fd = fd.parse().map_err(|_| bad())?;
    if slot >= vm::MAX_NICS || fd < 0 {
        return Err(format!("{spec}: slots are 0 to {}", vm::MAX_NICS - 1));
    }
    Ok((slot, fd))
}

/// The VM's NICs in slot order: the given taps, the rest plugged into nothing.
fn nics(args: &Args) -> Result<Vec<NetConfig>, String> {
    let given = args.net_fd.iter().map(|&(slot, _)| slot + 1).max().unwrap_or(0);
    let count = args.net_slots.max(given).max(u8::from(args.net_tap.is_some()));
    if count > vm::MAX_NICS {
        return Err(format!("{count} NICs asked for; at most {} fit", vm::MAX_NICS));
    }
    let mut nics = Vec::new();
    for slot in 0..count {
        let fds: Vec<i32> = args
            .net_fd
            .iter()
            .filter(|&&(s, _)| s == slot)
            .map(|&(_, fd)| fd)
            .collect();
        let backend = match (&args.net_tap, fds.as_slice()) {
            (Some(tap), _) if slot == 0 => NetBackend::Tap(tap.clone()),
            (_, []) => NetBackend::Detached,
            (_, [fd]) => NetBackend::TapFd(*fd),
            _ => return Err(format!("NIC {slot} is given more than one tap")),
        };
        let mut mac = args.net_mac;
        mac[5] = mac[5].wrapping_add(slot);
        nics.push(NetConfig { backend, mac });
    }
    Ok(nics)
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("not a MAC address: {text}")))
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("a MAC address has 6 bytes: {text}"))?;
    if !vmm::devices::virtio::net::is_unicast(&mac) {
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
    let nics = match nics(&args) {
        Ok(nics) => nics,
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shares = args.shares;
    for &index in &args.receive_shares {
        match shares.get_mut(index) {
            Some(share) => share.receives = true,
            None => {
                eprintln!("hull-vmm: --receive-share {index}: there are {} --share", shares.len());
                return ExitCode::FAILURE;
            }
        }
    }
    let start = match (args.restore, args.kernel) {
        _ if args.incoming.is_some() || args.incoming_fd.is_some() => Start::Incoming {
            from: match (args.incoming, args.incoming_fd) {
                (Some(path), _) => IncomingFrom::Listen(path),
                (None, fd) => IncomingFrom::Connected(fd.unwrap_or(-1)),
            },
            template: args.template,
            receive_disks: args.receive_disks,
        },
        (Some(snapshot), _) => Start::Restore { snapshot },
        (None, Some(kernel)) => Start::Boot {
            kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
        },
        (None, None) => {
            eprintln!("hull-vmm: give --kernel, --restore or --incoming");
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
        nics,
        shares: (args.fs || !shares.is_empty()).then_some(shares),
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
    };
    if let Some(root) = args.jail {
        if let Err(e) = jail(&mut config, &root, args.lifeline_fd.unwrap_or(-1)) {
            eprintln!("hull-vmm: {e}");
            return ExitCode::FAILURE;
        }
    }
    match vm::run(&config) {
        Ok(GuestExit::Poweroff) => ExitCode::SUCCESS,
        Ok(GuestExit::Snapshotted) => {
            eprintln!("hull-vmm: the VM was saved");
            ExitCode::SUCCESS
        }
        Ok(GuestExit::MigratedAway) => {
            eprintln!("hull-vmm: the VM was migrated; it runs on the destination");
            ExitCode::from(EXIT_MIGRATED)
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

/// Enters the jail: from here on the sockets are named relative to it.
fn jail(config: &mut VmConfig, root: &std::path::Path, lifeline: i32) -> Result<(), VmError> {
    use vmm::jail::{self, Jail};
    let jail = Jail::enter(root, lifeline)?;
    // Named relative to the jail, they stay valid after the pivot.
    if let Some(vsock) = &mut config.vsock {
        vsock.uds_path = jail::inside(&jail.root, &vsock.uds_path);
    }
    if let Some(control) = &mut config.control_socket {
        *control = jail::inside(&jail.root, control);
    }
    config.jail = Some(jail);
    Ok(())
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
