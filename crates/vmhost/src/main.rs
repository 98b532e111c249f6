//! `vmhost`: run one command as root inside an emulated hardware-virtualization host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Run a command inside an emulated KVM host (QEMU TCG with AMD-V), where stock guest kernels boot",
    long_about = "Boots Debian's generic kernel under QEMU TCG with -cpu max (emulated AMD-V, so /dev/kvm inside is \
                  hardware-style KVM), shares this machine's root read-only with a writable tmpfs overlay, binds the \
                  kernel's module tree so modprobe works, runs COMMAND as root in the current directory with the \
                  current environment, streams its output and exits with its status. There is no network inside; \
                  writes vanish unless made under a --rw directory.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    action: Option<Action>,
    /// Guest memory, e.g. 6G or 4096M.
    #[arg(long, default_value = "6G", value_parser = parse_mib)]
    memory: u64,
    /// Virtual CPUs (each is a host thread under TCG).
    #[arg(long, default_value_t = default_cpus())]
    cpus: u32,
    /// Kill the test host after this many seconds (exit status 124).
    #[arg(long, default_value_t = 1800)]
    time_limit: u64,
    /// A host directory the command may write to (repeatable); everything else is a throwaway overlay.
    #[arg(long = "rw")]
    rw_shares: Vec<PathBuf>,
    /// Show the boot console, not only the command's output.
    #[arg(long, short)]
    verbose: bool,
    /// The command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum Action {
    /// Fetch the kernel and build the initramfs (done automatically before a run).
    Prepare,
}

fn default_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
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
        .ok_or_else(|| format!("not a size: {text:?} (try 6G or 4096M)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cache = vmhost::cache_dir();
    let assets = match vmhost::prepare(&cache) {
        Ok(assets) => assets,
        Err(e) => {
            eprintln!("vmhost: {e}");
            return ExitCode::from(125);
        }
    };
    if let Some(Action::Prepare) = cli.action {
        println!(
            "kernel {} ({})\ninitramfs {}",
            assets.kernel.release,
            assets.kernel.vmlinuz().display(),
            assets.initramfs.display()
        );
        return ExitCode::SUCCESS;
    }
    if cli.command.is_empty() {
        eprintln!("vmhost: no command given; usage: vmhost [OPTIONS] -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let options = vmhost::RunOptions {
        memory_mib: cli.memory,
        cpus: cli.cpus,
        time_limit: Duration::from_secs(cli.time_limit),
        rw_shares: cli.rw_shares,
        verbose: cli.verbose,
        env: std::env::vars().collect(),
        cwd,
        command: cli.command,
    };
    match vmhost::run(&assets, &options) {
        Ok(outcome) => {
            if cli.verbose {
                eprintln!(
                    "vmhost: command started after {:?}, finished after {:?}",
                    outcome.ready_after, outcome.total
                );
            }
            ExitCode::from(u8::try_from(outcome.status).unwrap_or(255))
        }
        Err(e) => {
            eprintln!("vmhost: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_mib("6G"), Ok(6144));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("300"), Ok(300));
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("99999999999999999999G").is_err());
    }
}
