//! `hull`: run containers in KVM microVMs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm::host::HostKvm;

#[derive(Parser)]
#[command(name = "hull", about = "Run containers, each in its own KVM microVM", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tell whether this host's KVM can boot a standard guest kernel.
    ///
    /// Exit status: 0 hardware KVM, 2 PVM KVM (standard guest kernels cannot run), 3 no KVM.
    Host,
    /// Fetch and unpack the guest kernel into the data directory (HULL_DATA_DIR, default /var/lib/hull).
    Setup,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Host => {
            let host = vmm::host::classify();
            println!("{host}");
            match host {
                HostKvm::Hardware { .. } => ExitCode::SUCCESS,
                HostKvm::Pvm { .. } => {
                    if let Err(e) = vmm::host::check_guest_capable(host, false) {
                        eprintln!("{e}");
                    }
                    ExitCode::from(2)
                }
                HostKvm::Unavailable { .. } => ExitCode::from(3),
            }
        }
        Command::Setup => match runtime::setup_guest_kernel() {
            Ok(kernel) => {
                println!("guest kernel {} at {}", kernel.release, kernel.vmlinuz().display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hull setup: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
