//! Serving the API's connections, bounded against the clients: HTTP/1
//! with a deadline on each request's head (a client that connects and says
//! nothing, sends its headers a byte at a time, or keeps an idle
//! keep-alive connection is cut off), a cap on open connections (the next
//! one gets a 503 at once rather than waiting in the backlog), and a
//! shutdown that lets requests in flight finish, for a few seconds.
//!
//! hyper's header timeout needs a timer, and is also its keep-alive idle
//! timeout; it does not touch a response being streamed (`logs -f`,
//! `events`) nor a hijacked attach or exec, which are bounded by
//! [`crate::slots::StreamSlots`] instead.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// How long a client has to send a request's head, and how long an idle
/// keep-alive connection stays open: dockerd allows 5 min for the head;
/// a minute (nginx's default) is plenty for a local client.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping hulld waits for the requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The largest request head taken (dockerd's clients send a few KiB; the
/// registry credentials header is the biggest).
const MAX_HEADER_BYTES: usize = 64 << 10;

/// What each listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// The descriptor of the connection a request came on, for hijacked
/// streams that must notice a client that left without a word.
#[derive(Debug, Clone, Copy)]
pub struct ConnFd(pub RawFd);

impl ConnFd {
    /// Whether the client closed the connection entirely (not merely its
    /// sending side, as the docker CLI does when it has no input). Only for
    /// a connection the caller still holds, so the descriptor is its own.
    pub fn peer_left(self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.0,
            events: 0,
            revents: 0,
        };
        // SAFETY: poll(2) of one descriptor without waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// Connections of one listener, up to its cap, and the signal to stop.
#[derive(Clone)]
pub struct Connections {
    router: axum::Router,
    limits: ClientLimits,
    open: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Connections {
    pub fn new(router: axum::Router, limits: ClientLimits, stop: watch::Receiver<bool>) -> Connections {
        Connections {
            router,
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            stop,
        }
    }

    /// The signal that hulld is stopping.
    pub fn stop(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// A place for one more connection, or `None` when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    /// Serves one connection until it closes, its client is too slow, or
    /// hulld stops (then the request in flight is finished first).
    pub async fn serve<IO>(&self, io: IO, fd: RawFd, permit: OwnedSemaphorePermit)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnFd(fd));
            crate::api::dispatch(router.clone(), request.map(axum::body::Body::new))
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES.max(8192));
        let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
        tokio::pin!(connection);
        let mut stop = self.stop.clone();
        let served = tokio::select! {
            served = connection.as_mut() => served,
            _ = stopping(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!("a client connection ended: {e}");
        }
        drop(permit);
    }

    /// Waits until every connection closed, or the grace period passed.
    pub async fn drained(&self) {
        let all = self.limits.max_connections as u32;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.open.acquire_many(all)).await;
    }
}

/// Returns once hulld is stopping.
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here.
    let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
}

/// Answers a connection over the cap with a 503 and closes it, without
/// waiting on the client for more than a moment.
pub async fn refuse(mut io: impl AsyncWrite + Unpin, max_connections: usize) {
    let body = format!(
        "{{\"message\":\"too many connections to hulld (at most {max_connections}): close some clients and try again\"}}\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(answer.as_bytes())).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Serves the unix socket until `stop` turns true, then waits a moment for
/// the requests in flight.
pub async fn serve_unix(listener: tokio::net::UnixListener, connections: Connections) {
    let mut stop = connections.stop();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connections = connections.clone();
        tokio::spawn(async move {
            match connections.admit() {
                Some(permit) => {
                    let fd = stream.as_raw_fd();
                    connections.serve(stream, fd, permit).await
                }
                None => refuse(stream, connections.limits.max_connections).await,
            }
        });
    }
    connections.drained().await;
}

/// Raises this process's open-file limit to its hard limit, as dockerd's
/// Go runtime does: every stream is a socket and often an open log.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit of our own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
