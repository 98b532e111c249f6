//! `hull`: run containers, each in its own KVM microVM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
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
    /// Set up the guest: fetch Debian's cloud kernel into the data directory
    /// (HULL_DATA_DIR, default /var/lib/hull; never the host's /boot) and build
    /// the initramfs around hull-agent.
    Setup {
        /// The statically linked hull-agent (default: HULL_AGENT, or the build of scripts/build-agent).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Run a command in a fresh microVM and exit with its status.
    Run(RunArgs),
}

#[derive(Args)]
#[command(
    long_about = "Run CMD in a fresh KVM microVM with ROOTFS as its root filesystem. CMD's standard output and \
                  error appear on hull's; with -i, hull's standard input is passed to it. hull exits with CMD's \
                  exit status: 128+N when signal N killed it, 127 when CMD was not found. Ctrl-C (SIGINT), \
                  SIGTERM and SIGHUP are passed on to CMD. ROOTFS may be a directory (turned into an ext4 disk \
                  image once and cached by content) or an ext4 image. The root filesystem is read-only with a \
                  throwaway writable layer on top."
)]
struct RunArgs {
    /// Root filesystem: a directory or an ext4 disk image.
    #[arg(long)]
    rootfs: PathBuf,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(long, short = 'm', default_value = "256M", value_parser = parse_mib)]
    memory: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir", default_value = "/")]
    workdir: String,
    /// Run as UID[:GID] (numeric).
    #[arg(short = 'u', long = "user", value_parser = parse_user)]
    user: Option<(u32, u32)>,
    /// Pass standard input to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Seconds the guest may take to boot to its agent.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, factor) = match text.char_indices().last() {
        Some((i, 'G' | 'g')) => (&text[..i], 1024),
        Some((i, 'M' | 'm')) => (&text[..i], 1),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("not a size: {text:?} (try 256M or 1G)"))
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() && !key.contains('\0') => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not UID or UID:GID (numbers)");
    let (uid, gid) = text.split_once(':').unwrap_or((text, text));
    Ok((uid.parse().map_err(|_| bad())?, gid.parse().map_err(|_| bad())?))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Host => host(),
        Command::Setup { agent } => setup(agent),
        Command::Run(args) => run(args),
    }
}

fn host() -> ExitCode {
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

fn setup(agent: Option<PathBuf>) -> ExitCode {
    let Some(agent) = agent.or_else(runtime::guest::find_agent) else {
        eprintln!("hull setup: {}", runtime::guest::GuestError::NoAgent);
        return ExitCode::FAILURE;
    };
    match runtime::guest::setup(&agent) {
        Ok(guest) => {
            println!("guest kernel {} at {}", guest.kernel_release, guest.kernel.display());
            println!("initramfs {} (agent {})", guest.initramfs.display(), agent.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hull setup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let (uid, gid) = args.user.unwrap_or((0, 0));
    let request = runtime::run::RunRequest {
        rootfs: args.rootfs,
        argv: args.command,
        env: args.env,
        workdir: args.workdir,
        uid,
        gid,
        memory_mib: args.memory,
        cpus: args.cpus,
        interactive: args.interactive,
        boot_timeout: Duration::from_secs(args.boot_timeout),
    };
    match runtime::run::run(&request) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(255)),
        Err(e) => {
            eprintln!("hull: {e}");
            ExitCode::from(125)
        }
    }
}
