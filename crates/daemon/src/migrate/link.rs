//! How two hullds reach each other for a move: TCP, with mutual TLS when
//! hulld has its certificates (`--tlscacert`, `--tlscert`, `--tlskey`:
//! the same files its API's TLS listener uses; each host's certificate
//! names the host and serves as server and client certificate, and the
//! peer must be one the CA vouched for). Plain TCP only on loopback, or
//! where the user says the network between the hosts is trusted
//! (`--migration-insecure`): the stream carries the container's memory.
//!
//! Either way the move's code gets a connected stream socket it reads and
//! writes as plain bytes, and hull-vmm gets the same: with TLS, one end
//! of a socket pair, the other relayed through rustls by a task on hulld's
//! runtime (the VMM stays TLS-blind and needs no new system calls).

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::api::ApiError;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The port other hosts' hullds take containers on when `to` names none.
pub const DEFAULT_PORT: u16 = 2734;

/// Another host's hulld, as `to=HOST[:PORT]` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// As the user named it (reports, events).
    pub named: String,
    /// The host its certificate must name.
    pub host: String,
    pub address: SocketAddr,
}

/// `HOST[:PORT]` as another host's hulld (port 2734 if none).
pub fn resolve(to: &str) -> Result<Peer, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("invalid \"to\" {to:?}: {why}"));
    let (host, with_port) = match to.parse::<SocketAddr>() {
        Ok(address) => {
            return Ok(Peer {
                named: to.to_string(),
                host: address.ip().to_string(),
                address,
            })
        }
        Err(_) => match to.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => (host, to.to_string()),
            _ => (to, format!("{to}:{DEFAULT_PORT}")),
        },
    };
    let address = with_port
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("it names no address".into()))?;
    Ok(Peer {
        named: to.to_string(),
        host: host.to_string(),
        address,
    })
}

/// How this hulld talks to other hosts' hullds.
#[derive(Clone)]
pub enum Security {
    Tls {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    },
    /// Plain TCP: on loopback, or anywhere if `insecure`.
    Plain { insecure: bool },
}

impl Security {
    /// Mutual TLS with hulld's certificate files.
    pub fn tls(files: &crate::tls::TlsFiles) -> anyhow::Result<Security> {
        Ok(Security::Tls {
            server: crate::tls::server_config(files)?,
            client: crate::tls::client_config(files)?,
        })
    }

    /// Whether a plain connection with `address` is allowed.
    fn plain_allowed(&self, address: IpAddr) -> bool {
        matches!(self, Security::Plain { insecure: true }) || address.is_loopback()
    }

    /// Refuses a listener this security cannot keep.
    pub fn check_listener(&self, address: SocketAddr) -> anyhow::Result<()> {
        match self {
            Security::Plain { .. } if !self.plain_allowed(address.ip()) => anyhow::bail!(
                "--migration-listen {address}: without hulld's TLS certificates (--tlscacert, --tlscert, \
                 --tlskey) moves are not encrypted, so only a loopback address is allowed unless \
                 --migration-insecure says the network between the hosts is trusted"
            ),
            _ => Ok(()),
        }
    }

    /// Connects to the hulld `peer` (its certificate must name its host).
    pub fn connect(&self, peer: &Peer, runtime: &tokio::runtime::Handle) -> Result<UnixStream, String> {
        let to = peer.address;
        if matches!(self, Security::Plain { .. }) && !self.plain_allowed(to.ip()) {
            return Err(format!(
                "{to} is not on loopback and this hulld has no TLS certificates (--tlscacert, --tlscert, \
                 --tlskey) to move a container there; give them, or --migration-insecure if the network \
                 between the hosts is trusted"
            ));
        }
        let tcp = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match self {
            Security::Plain { .. } => Ok(plain(tcp)),
            Security::Tls { client, .. } => {
                let name = ServerName::try_from(peer.host.clone())
                    .map_err(|e| format!("\"{}\" cannot name a TLS server: {e}", peer.host))?;
                let connector = tokio_rustls::TlsConnector::from(client.clone());
                over_tls(tcp, runtime, |tcp| connector.connect(name, tcp)).map_err(|e| format!("TLS with {to}: {e}"))
            }
        }
    }

    /// Takes a connection another hulld opened: the handshake with TLS
    /// (its certificate checked against the CA), or as it is.
    pub fn accept(&self, tcp: TcpStream, runtime: &tokio::runtime::Handle) -> Result<UnixStream, String> {
        let _ = tcp.set_nodelay(true);
        match self {
            Security::Plain { .. } => Ok(plain(tcp)),
            Security::Tls { server, .. } => {
                let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
                over_tls(tcp, runtime, |tcp| acceptor.accept(tcp)).map_err(|e| format!("TLS: {e}"))
            }
        }
    }
}

/// `tcp` after the TLS `handshake` (bounded in time), relayed (`relay`).
fn over_tls<S, F>(
    tcp: TcpStream,
    runtime: &tokio::runtime::Handle,
    handshake: impl FnOnce(tokio::net::TcpStream) -> F,
) -> Result<UnixStream, String>
where
    F: Future<Output = std::io::Result<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(set_nonblocking(tcp)?)?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp))
            .await
            .map_err(|_| std::io::Error::other("the TLS handshake took too long"))?
    });
    relay(tls.map_err(|e| e.to_string())?, runtime)
}

fn set_nonblocking(tcp: TcpStream) -> std::io::Result<TcpStream> {
    tcp.set_nonblocking(true)?;
    Ok(tcp)
}

/// A TCP connection as the stream socket the move's code and hull-vmm
/// read and write (read(2), write(2) and the socket timeouts work on
/// either family).
fn plain(tcp: TcpStream) -> UnixStream {
    UnixStream::from(std::os::fd::OwnedFd::from(tcp))
}

/// One end of a socket pair whose other end a task relays through `tls`
/// until either side ends.
fn relay<S>(tls: S, runtime: &tokio::runtime::Handle) -> Result<UnixStream, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, relayed) = UnixStream::pair().map_err(|e| format!("a socket pair: {e}"))?;
    relayed
        .set_nonblocking(true)
        .map_err(|e| format!("a socket pair: {e}"))?;
    let _guard = runtime.enter();
    let relayed = tokio::net::UnixStream::from_std(relayed).map_err(|e| format!("a socket pair: {e}"))?;
    runtime.spawn(async move {
        let (mut tls, mut relayed) = (tls, relayed);
        if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut relayed).await {
            tracing::debug!("a migration connection ended: {e}");
        }
    });
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_host_is_named_with_or_without_its_port() {
        let peer = |to: &str| resolve(to).map(|p| (p.host, p.address.to_string()));
        assert_eq!(
            peer("127.0.0.1").unwrap(),
            ("127.0.0.1".into(), "127.0.0.1:2734".into())
        );
        assert_eq!(peer("127.0.0.1:9").unwrap(), ("127.0.0.1".into(), "127.0.0.1:9".into()));
        assert_eq!(peer("[::1]:9").unwrap(), ("::1".into(), "[::1]:9".into()));
        assert_eq!(peer("localhost:9").unwrap().0, "localhost");
        assert_eq!(resolve("localhost:9").unwrap().named, "localhost:9");
        assert!(resolve("127.0.0.1:99999").is_err());
        assert!(resolve("").is_err());
    }

    #[test]
    fn plain_tcp_only_on_loopback_unless_the_user_trusts_the_network() {
        let strict = Security::Plain { insecure: false };
        assert!(strict.check_listener("127.0.0.1:2734".parse().unwrap()).is_ok());
        let refused = strict.check_listener("0.0.0.0:2734".parse().unwrap()).unwrap_err();
        assert!(refused.to_string().contains("--migration-insecure"), "{refused}");
        let trusting = Security::Plain { insecure: true };
        assert!(trusting.check_listener("0.0.0.0:2734".parse().unwrap()).is_ok());
        // The source keeps the same rule, before it connects.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let here = resolve(&listener.local_addr().unwrap().to_string()).unwrap();
        assert!(strict.connect(&here, runtime.handle()).is_ok());
        let far = resolve("192.0.2.1:9").unwrap();
        let refused = strict.connect(&far, runtime.handle()).unwrap_err();
        assert!(refused.contains("--migration-insecure"), "{refused}");
    }
}
