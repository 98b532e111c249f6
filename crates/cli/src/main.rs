//! `hull`: run containers, each in its own KVM microVM.

mod hulld_api;
mod images;
mod migrate;
mod policy;
mod progress;
mod templates;
mod volumes;

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
    /// Download an image from a registry: [REGISTRY/]NAME[:TAG|@DIGEST].
    ///
    /// Plain HTTP is used only for loopback registries and those listed in
    /// HULL_INSECURE_REGISTRIES (comma-separated host:port). Credentials come
    /// from ~/.docker/config.json (`docker login`).
    Pull {
        name: String,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Images {
        /// Only image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Give an image another name: hull tag SOURCE TARGET.
    Tag { source: String, target: String },
    /// Remove images (refused while a container uses one, unless forced).
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Load images from a `docker save` tarball or an OCI image layout (directory or tar).
    Load {
        #[arg(short, long, value_name = "FILE")]
        input: PathBuf,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage templates: VMs booted once and saved, that every container VM is cloned from.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Manage named volumes: ext4 disks that outlive containers (`hull run -v NAME:/path`).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Set who may reach a container hulld runs (enforced on the host, at its
    /// tap): closed, outbound, peers, published or open (the default).
    Policy {
        container: String,
        level: String,
        /// hulld's socket (unix://PATH; default DOCKER_HOST, then /run/hull/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Move a running container that hulld runs to a new VMM while it runs
    /// (live migration: memory, processes, disks and output stay).
    Migrate {
        container: String,
        /// The host to move it to: HOST[:PORT] of a hulld started with
        /// --migration-listen (port 2734 if none); without it, a new VMM here.
        #[arg(long)]
        to: Option<String>,
        /// The longest the container may stand still, in ms.
        #[arg(long, default_value_t = 50)]
        downtime: u32,
        /// Send its memory and disks as they are, without LZ4 (for a link
        /// faster than LZ4 on one core, about 500 MB/s).
        #[arg(long)]
        no_compress: bool,
        /// Give up the container's move under way instead (it runs on where it was).
        #[arg(long, conflicts_with_all = ["to", "downtime", "no_compress"])]
        cancel: bool,
        /// hulld's socket (unix://PATH; default DOCKER_HOST, then /run/hull/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Run a benchmark (hull-bench: boot, clone, image, vmhost); medians and
    /// p95s, JSON under target/bench/. Example: hull bench clone.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Make (or remake) the template for a VM size; `hull run` makes it on first need.
    Create {
        /// Guest memory, e.g. 256M or 1G.
        #[arg(long, short = 'm', default_value = "256M", value_parser = parse_mib)]
        memory: u64,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u8,
    },
    /// List templates.
    Ls,
    /// Remove templates (running clones are not affected).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Make a volume (an existing one of that name is kept): a directory
    /// shared by every container that mounts it, or with --disk an ext4
    /// disk for one running container at a time.
    Create {
        name: String,
        #[arg(long)]
        disk: bool,
    },
    /// List volumes.
    Ls,
    /// Remove volumes (refused while a running VM has one).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List images.
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show images' details as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove images.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove untagged unused images, and blobs, partial downloads and disks nothing references.
    Prune,
}

#[derive(Args)]
#[command(
    long_about = "Run CMD in a fresh KVM microVM, with IMAGE (pulled first if it is not in the store) or \
                  --rootfs as its root filesystem. The image's Entrypoint, Cmd, Env, WorkingDir and User apply as \
                  in Docker; CMD replaces Cmd. CMD's standard output and error appear on hull's; with -i, hull's \
                  standard input is passed to it. hull exits with CMD's exit status: 128+N when signal N killed \
                  it, 127 when CMD was not found, 125 when hull itself failed. Ctrl-C (SIGINT), SIGTERM and \
                  SIGHUP are passed on to CMD. The image is shared read-only; the container writes to its own \
                  sparse disk, discarded when it ends.\n\nExamples:\n  hull run busybox echo hello\n  \
                  hull run --rootfs ./rootfs -- sh -c 'echo hi'"
)]
struct RunArgs {
    /// Root filesystem instead of an image: a directory (made into an ext4
    /// disk image once, cached by content) or an ext4 image.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Guest memory, e.g. 256M or 1G.
    #[arg(long, short = 'm', default_value = "256M", value_parser = parse_mib)]
    memory: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Set an environment variable (repeatable); a bare KEY takes hull's own value.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Run as USER[:GROUP], names (from the container's /etc/passwd and /etc/group) or numbers.
    #[arg(short = 'u', long = "user", value_parser = parse_user)]
    user: Option<String>,
    /// Replace the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Keep a capability beyond Docker's default set (NAME or ALL; repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability of Docker's default set (NAME or ALL; repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// PID namespace: "host" shares the VM's (the agent's) instead of the
    /// command being PID 1 of its own.
    #[arg(long = "pid", value_name = "host", value_parser = ["host"])]
    pid: Option<String>,
    /// Run a small init as PID 1 that starts the command, forwards signals
    /// to it and reaps orphaned processes (Docker's `--init`).
    #[arg(long)]
    init: bool,
    /// Pass standard input to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Mount a named volume (NAME:/path[:ro], made if missing; at most 4) or
    /// a host directory (/host/dir:/path[:ro], shared with the VM); repeatable.
    #[arg(short = 'v', long = "volume", value_name = "NAME|/DIR:PATH[:ro]", value_parser = runtime::volume::parse_volume_flag)]
    volumes: Vec<runtime::volume::VolumeFlag>,
    /// Seconds the guest may take to boot to its agent.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Boot the guest kernel afresh instead of cloning the template VM (slow).
    #[arg(long)]
    cold_boot: bool,
    /// IMAGE then CMD and its arguments (with --rootfs: only CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "IMAGE [CMD]")]
    args: Vec<String>,
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
        None if !text.is_empty() && !text.contains('\0') => match std::env::var(text) {
            Ok(value) => Ok(format!("{text}={value}")),
            Err(_) => Ok(text.to_string()),
        },
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn parse_user(text: &str) -> Result<String, String> {
    let valid_part = |p: &str| !p.is_empty() && !p.contains(['\0', '/', ' ']);
    match text.split_once(':') {
        None if valid_part(text) => Ok(text.to_string()),
        Some((user, group)) if valid_part(user) && valid_part(group) && !group.contains(':') => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not USER, USER:GROUP, UID or UID:GID")),
    }
}

fn main() -> ExitCode {
    // HULL_VMM_TRACE=1: `hull run`'s phases beside its hull-vmm's.
    vmm::trace::start_as("hull");
    runtime::private_files();
    match Cli::parse().command {
        Command::Host => host(),
        Command::Setup { agent } => setup(agent),
        Command::Run(args) => run(args),
        Command::Pull { name, quiet } => done(images::pull(&name, quiet).map(|_| true)),
        Command::Images { quiet } | Command::Image(ImageCommand::Ls { quiet }) => {
            done(images::list(quiet).map(|_| true))
        }
        Command::Image(ImageCommand::Inspect { names }) => done(images::inspect(&names)),
        Command::Tag { source, target } => done(images::tag(&source, &target).map(|_| true)),
        Command::Rmi { force, names } | Command::Image(ImageCommand::Rm { force, names }) => {
            done(images::remove(&names, force))
        }
        Command::Load { input, quiet } => done(images::load(&input, quiet).map(|_| true)),
        Command::Image(ImageCommand::Prune) => done(images::prune().map(|_| true)),
        Command::Template(TemplateCommand::Create { memory, cpus }) => done(templates::create(memory, cpus)),
        Command::Template(TemplateCommand::Ls) => done(templates::list()),
        Command::Volume(VolumeCommand::Create { name, disk }) => done(volumes::create(&name, disk)),
        Command::Volume(VolumeCommand::Ls) => done(volumes::list()),
        Command::Volume(VolumeCommand::Rm { names }) => done(volumes::remove(&names)),
        Command::Bench { args } => bench(&args),
        Command::Policy { container, level, host } => done(policy::set(&container, &level, host)),
        Command::Migrate {
            container,
            to,
            downtime,
            no_compress,
            cancel,
            host,
        } => done(match cancel {
            true => migrate::cancel(&container, host),
            false => migrate::run(&container, to.as_deref(), downtime, !no_compress, host),
        }),
        Command::Template(TemplateCommand::Rm { names }) => done(templates::remove(&names)),
    }
}

/// Does `action` to each name, printing the names done and the errors;
/// whether every one succeeded.
fn each_named<E: std::fmt::Display>(names: &[String], action: impl Fn(&str) -> Result<(), E>) -> bool {
    let mut all_ok = true;
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("hull: {e}");
                all_ok = false;
            }
        }
    }
    all_ok
}

/// Exit status for a command that succeeded (fully or not) or failed.
fn done(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `hull bench ...` is `hull-bench ...`, built beside hull.
fn bench(args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let Some(binary) = runtime::sibling_binary("hull-bench") else {
        eprintln!("hull: hull-bench not found beside hull; build the workspace (cargo build --workspace)");
        return ExitCode::FAILURE;
    };
    let error = std::process::Command::new(&binary).args(args).exec();
    eprintln!("hull: starting {}: {error}", binary.display());
    ExitCode::FAILURE
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
    let mut rest = args.args.into_iter();
    let source = match args.rootfs {
        Some(rootfs) => runtime::run::Source::Rootfs(rootfs),
        None => {
            let Some(name) = rest.next() else {
                eprintln!("hull run: give an IMAGE (or --rootfs DIR); see hull run --help");
                return ExitCode::from(125);
            };
            match images::resolve_or_pull(&name) {
                Ok(record) => runtime::run::Source::Image(Box::new(record)),
                Err(e) => {
                    eprintln!("hull: {e:#}");
                    return ExitCode::from(125);
                }
            }
        }
    };
    let entrypoint = args.entrypoint.map(|e| if e.is_empty() { Vec::new() } else { vec![e] });
    let (mut volumes, mut binds) = (Vec::new(), Vec::new());
    for flag in args.volumes {
        match flag {
            runtime::volume::VolumeFlag::Volume(volume) => volumes.push(volume),
            // As `docker run -v`: a missing host directory is made.
            runtime::volume::VolumeFlag::Bind(bind) => match bind.resolve(runtime::bind::MissingSource::Create) {
                Ok(bind) => binds.push(bind),
                Err(e) => {
                    eprintln!("hull: {e}");
                    return ExitCode::from(125);
                }
            },
        }
    }
    let capabilities = match proto::capabilities::resolve(&args.cap_add, &args.cap_drop) {
        Ok(kept) => kept,
        Err(e) => {
            eprintln!("hull: {e}");
            return ExitCode::from(125);
        }
    };
    let request = runtime::run::RunRequest {
        source,
        process: None,
        overrides: image::config::Overrides {
            entrypoint,
            cmd: rest.collect(),
            env: args.env,
            workdir: args.workdir,
            user: args.user,
            group_add: Vec::new(),
        },
        memory_mib: args.memory,
        cpus: args.cpus,
        cpu_limit_millis: None,
        pids_limit: None,
        interactive: args.interactive,
        tty: None,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        cold_boot: args.cold_boot,
        hostname: None,
        hold: false,
        volumes,
        binds,
        network: Default::default(),
        capabilities,
        pid_host: args.pid.is_some(),
        init: args.init,
        // Its run directory, writable disk included, goes when it ends.
        disposable: true,
    };
    match runtime::run::run(&request) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(255)),
        Err(e) => {
            eprintln!("hull: {e}");
            ExitCode::from(125)
        }
    }
}
