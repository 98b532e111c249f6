//! `hull-vmm`: one microVM per process.
//!
//! Exit status: 0 the guest powered off (or, making a template, was saved);
//! 2 the guest reset or panicked; 3 the snapshot to restore is unusable
//! (missing, damaged, another format or another VM shape: make a new one);
//! 4 a thread made a system call its seccomp filter forbids (logged on
//! stderr with the call and the thread); 5 the VM was migrated to another
//! hull-vmm and runs there; 1 the VMM failed otherwise (the reason is on
//! stderr); killed by a signal.

mod args;

use std::process::ExitCode;

use args::{Args, Stop};

use vmm::vm::{self, GuestExit, IncomingFrom, NetBackend, NetConfig, Start, VmConfig, VmError, VsockConfig};

/// The exit status of a VMM whose VM moved to another (`--incoming`) one.
const EXIT_MIGRATED: u8 = 5;

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

fn main() -> ExitCode {
    vmm::seccomp::prepare_process();
    vmm::trace::start();
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(Stop::Help) => {
            print!("{}", args::usage());
            return ExitCode::SUCCESS;
        }
        Err(Stop::Bad(e)) => {
            eprintln!("hull-vmm: {e} (hull-vmm --help lists the options)");
            return ExitCode::FAILURE;
        }
    };
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
