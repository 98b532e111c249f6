//! `hulld`: hull's daemon. It serves the Docker Engine API (the `daemon`
//! library) on a unix socket, and optionally over TLS, so the unmodified
//! `docker` CLI and Docker SDKs drive hull.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemon::listen::{self, ClientLimits, Connections};
use daemon::{api, dns, slots, store, tls};

#[derive(Parser, Debug)]
#[command(
    name = "hulld",
    version,
    about = "hull's daemon: the Docker Engine API over containers in microVMs"
)]
struct Args {
    /// The unix socket to serve the Docker Engine API on.
    #[arg(long, default_value = "/run/hull/docker.sock")]
    socket: PathBuf,
    /// The group that may use the API socket (0660); default: `hull`, if
    /// that group exists, else only root may (0600).
    #[arg(long, short = 'G')]
    group: Option<String>,
    /// hull's data directory (default: $HULL_DATA_DIR, else /var/lib/hull).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also serve the API over TCP on ADDRESS:PORT, with TLS and client
    /// certificates (dockerd's `--tlsverify`); needs the three files below.
    #[arg(long, value_name = "ADDRESS:PORT", requires_all = ["tlscacert", "tlscert", "tlskey"])]
    tls_listen: Option<std::net::SocketAddr>,
    /// The CA that client certificates must be signed by.
    #[arg(long, value_name = "PEM")]
    tlscacert: Option<PathBuf>,
    /// The server's certificate.
    #[arg(long, value_name = "PEM")]
    tlscert: Option<PathBuf>,
    /// The server's private key.
    #[arg(long, value_name = "PEM")]
    tlskey: Option<PathBuf>,
    /// The default bridge network's gateway address and subnet, e.g.
    /// 10.1.0.1/24 (used when that network is first made).
    #[arg(long, value_name = "ADDRESS/PREFIX", value_parser = runtime::network::AddressPlan::parse_bip)]
    bip: Option<(std::net::Ipv4Addr, u8)>,
    /// Where networks' subnets come from: base=CIDR,size=PREFIX (repeatable;
    /// default 172.17-20.0.0/16, 10.88-89.0.0/16, 192.168.200.0/24).
    #[arg(long, value_name = "base=CIDR,size=N", value_parser = runtime::network::AddressPlan::parse_pool)]
    default_address_pool: Vec<(ipnet::Ipv4Net, u8)>,
    /// How many clients may hold a long-lived stream at once (`logs -f`,
    /// `attach`, `events`, `stats`, `exec`); the next one gets a 503.
    #[arg(long, value_name = "N", default_value_t = slots::DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_streams: u32,
    /// How many connections the TLS listener takes at once (the unix
    /// socket takes a stream's worth more than --max-streams).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Seconds a client has to send a request's head, and an idle
    /// keep-alive connection stays open.
    #[arg(long, value_name = "SECONDS", default_value_t = listen::HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    header_timeout: u64,
    /// Take running containers moved here from other hosts' hullds
    /// (`POST /containers/{id}/migrate?to=THIS_HOST`) on this address
    /// (port 2734 is what `to` assumes when it names none).
    #[arg(long, value_name = "ADDRESS:PORT")]
    migration_listen: Option<std::net::SocketAddr>,
    /// Without TLS certificates, move containers to and from other hosts
    /// over plain TCP beyond loopback: only where the network between the
    /// hosts is trusted (with --tlscacert/--tlscert/--tlskey, moves use
    /// mutual TLS and this is not needed).
    #[arg(long)]
    migration_insecure: bool,
    /// A directory every host this one moves containers to or from sees at
    /// the same path (NFS, a cluster file system); repeatable. A container
    /// whose bind mounts all lie under one moves between hosts, its files
    /// staying where they are.
    #[arg(long, value_name = "DIR")]
    shared_storage: Vec<std::path::PathBuf>,
    /// VMs kept started and ready, per VM shape containers run with, for
    /// the next containers to start in (`docker start` then waits for the
    /// container's own set-up only); 0: every container starts its VM.
    /// Each costs what an idle container's VM does.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=16))]
    standby_vms: u8,
}

/// The API socket's group when there is one of this name (dockerd's is `docker`).
const DEFAULT_GROUP: &str = "hull";

fn main() -> Result<()> {
    vmm::trace::start_as("hulld");
    runtime::private_files();
    let args = Args::parse();
    if let Some(dir) = &args.data_dir {
        // Before any thread starts: the runtime and the supervisors read it.
        std::env::set_var("HULL_DATA_DIR", dir);
    }
    runtime::network::host::load_modules();
    runtime::network::set_address_plan(runtime::network::AddressPlan {
        bip: args.bip,
        pools: args.default_address_pool.clone(),
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    listen::raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let data = runtime::ensure_private_data_dir()
        .with_context(|| format!("making the data directory {}", runtime::data_dir().display()))?;
    let containers = store::ContainerStore::open(&data.join("hulld.redb"))?;
    let images = image::Store::open(&data).context("opening the image store")?;
    let daemon = daemon::daemon::Daemon::new(containers, images, slots::StreamSlots::new(args.max_streams as usize));
    let running = daemon.recover().map_err(|e| anyhow::anyhow!(e.message))?;
    dns::start_all(&daemon);
    runtime::standby::enable(usize::from(args.standby_vms));
    // The default shape's, when its template is made already.
    runtime::standby::keep_warm(daemon::create::DEFAULT_MEMORY_MIB, 1, None);

    let tls = match (args.tls_listen, &args.tlscacert, &args.tlscert, &args.tlskey) {
        (Some(address), Some(ca), Some(cert), Some(key)) => {
            let files = tls::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            Some((address, tls::server_config(&files)?))
        }
        _ => None,
    };
    let group = socket_group(args.group.as_deref())?;
    let listener = bind(&args.socket, group)?;
    tracing::info!(
        "hulld {} serving the Docker Engine API (v{}) on unix://{}; data in {}; {running} container(s) running",
        env!("CARGO_PKG_VERSION"),
        api::API_VERSION,
        args.socket.display(),
        data.display()
    );
    daemon.set_migration_security(match (&args.tlscacert, &args.tlscert, &args.tlskey) {
        (Some(ca), Some(cert), Some(key)) => daemon::migrate::link::Security::tls(&tls::TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })?,
        _ => daemon::migrate::link::Security::Plain {
            insecure: args.migration_insecure,
        },
    });
    daemon.set_shared_storage(daemon::migrate::shared_storage::resolve(&args.shared_storage)?);
    if let Some(address) = args.migration_listen {
        daemon::migrate::arriving::listen(daemon.clone(), address)?;
    }
    daemon::span_names::share(daemon.clone());
    let router = api::router(daemon);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let header_timeout = std::time::Duration::from_secs(args.header_timeout);
    if let Some((address, config)) = tls {
        // Bound before the unix socket answers, so a started hulld serves both.
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tracing::info!("also serving tcp://{address} (TLS, client certificates required)");
        let limits = ClientLimits {
            header_timeout,
            max_connections: args.max_connections as usize,
        };
        tokio::spawn(tls::serve(
            tcp,
            config,
            Connections::new(router.clone(), limits, stopping.clone()),
        ));
    }
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("hulld stopping; containers keep running");
        let _ = stop.send(true);
    });
    let limits = ClientLimits {
        header_timeout,
        // Every stream may hold a connection, and others still get in.
        max_connections: args.max_streams as usize + 1024,
    };
    listen::serve_unix(listener, Connections::new(router, limits, stopping)).await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// The group that may use the API socket: `--group`, else `hull` where
/// that group exists (as dockerd's `-G docker`); `None`: root alone.
fn socket_group(named: Option<&str>) -> Result<Option<u32>> {
    let lookup = |name: &str| -> Result<Option<u32>> {
        let c_name = std::ffi::CString::new(name).with_context(|| format!("invalid group name {name:?}"))?;
        // SAFETY: getgrnam reads a NUL-terminated name; the entry is read at once.
        let entry = unsafe { libc::getgrnam(c_name.as_ptr()) };
        // SAFETY: a non-null entry is a valid `group` until the next getgr* call.
        Ok((!entry.is_null()).then(|| unsafe { (*entry).gr_gid }))
    };
    match named {
        Some(name) => match lookup(name)? {
            Some(gid) => Ok(Some(gid)),
            None => bail!("--group {name}: there is no such group"),
        },
        None => lookup(DEFAULT_GROUP),
    }
}

/// Binds the API socket, replacing a stale one but never a live daemon's:
/// 0660, of `group` where there is one (else root's alone, 0600).
fn bind(path: &std::path::Path, group: Option<u32>) -> Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            // The socket's group must be able to reach it.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", parent.display()))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}
