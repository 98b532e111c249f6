//! The Docker Engine API over TCP, as dockerd's `--tlsverify` serves it:
//! TLS with client certificates, every client's certificate checked
//! against the given CA. There is no plain-TCP mode: the API runs VMs and
//! reads their files, so whoever reaches it must be someone the CA vouched
//! for. Each connection gets its own task, with a deadline on the handshake,
//! so a silent client holds up no one.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::listen::Connections;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the TLS listener's certificates are (dockerd's flag names).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The server's TLS settings: its certificate and key, and client
/// certificates required and verified against the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files)?), provider.clone())
            .build()
            .context("setting up client certificate verification")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&files.cert)?, key(files)?)
        .context("the server certificate and key do not go together")?;
    Ok(Arc::new(config))
}

/// The CA's certificates, the only roots trusted.
fn roots(files: &TlsFiles) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots
            .add(ca)
            .with_context(|| format!("the CA certificate in {}", files.ca.display()))?;
    }
    Ok(roots)
}

fn key(files: &TlsFiles) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key from {}", files.key.display()))
}

/// A client's TLS settings with the same files: servers checked against
/// the CA, this host's certificate as the client's (a hulld moving a
/// container to another host's).
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(certificates(&files.cert)?, key(files)?)
        .context("the certificate and key do not go together")?;
    Ok(Arc::new(config))
}

/// Serves the API on `listener` over TLS until hulld stops. A connection
/// over the cap is closed before its handshake.
pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, connections: Connections) {
    let acceptor = TlsAcceptor::from(config);
    let mut stop = connections.stop();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::listen::stopping(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!("accepting a TCP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = connections.admit() else {
            tracing::info!("TLS client {peer} refused: too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let fd = tcp.as_raw_fd();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!("TLS client {peer} refused: {e}"),
                Err(_) => return tracing::info!("TLS client {peer} did not finish its handshake"),
            };
            connections.serve(tls, fd, permit).await;
        });
    }
    connections.drained().await;
}
