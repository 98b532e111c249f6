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

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Connects to the hulld at `to`, whose certificate must name `host`.
    pub fn connect(&self, to: SocketAddr, host: &str, runtime: &tokio::runtime::Handle) -> Result<UnixStream, String> {
        let tcp = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match self {
            Security::Plain { .. } if self.plain_allowed(to.ip()) => Ok(plain(tcp)),
            Security::Plain { .. } => Err(format!(
                "{to} is not on loopback and this hulld has no TLS certificates (--tlscacert, --tlscert, \
                 --tlskey) to move a container there; give them, or --migration-insecure if the network \
                 between the hosts is trusted"
            )),
            Security::Tls { client, .. } => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("\"{host}\" cannot name a TLS server: {e}"))?;
                let connector = tokio_rustls::TlsConnector::from(client.clone());
                let tls = runtime.block_on(async move {
                    let tcp = tokio::net::TcpStream::from_std(set_nonblocking(tcp)?)?;
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                        .await
                        .map_err(|_| std::io::Error::other("the TLS handshake took too long"))?
                });
                let tls = tls.map_err(|e| format!("TLS with {to}: {e}"))?;
                relay(tls, runtime)
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
                let tls = runtime.block_on(async move {
                    let tcp = tokio::net::TcpStream::from_std(set_nonblocking(tcp)?)?;
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                        .await
                        .map_err(|_| std::io::Error::other("the TLS handshake took too long"))?
                });
                relay(tls.map_err(|e| format!("TLS: {e}"))?, runtime)
            }
        }
    }
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
    fn plain_tcp_only_on_loopback_unless_the_user_trusts_the_network() {
        let strict = Security::Plain { insecure: false };
        assert!(strict.check_listener("127.0.0.1:2734".parse().unwrap()).is_ok());
        let refused = strict.check_listener("0.0.0.0:2734".parse().unwrap()).unwrap_err();
        assert!(refused.to_string().contains("--migration-insecure"), "{refused}");
        let trusting = Security::Plain { insecure: true };
        assert!(trusting.check_listener("0.0.0.0:2734".parse().unwrap()).is_ok());
        // The source keeps the same rule, before anything is sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let address = listener.local_addr().unwrap();
        assert!(strict.connect(address, "127.0.0.1", runtime.handle()).is_ok());
        assert!(!strict.plain_allowed("192.0.2.1".parse().unwrap()));
    }
}
