//! Sockets and connections of the HTTP server: binding (`:PORT` on IPv4 and
//! IPv6 at once), systemd socket activation, the open-file limit, and the
//! accept loop that holds every connection to its limits — a cap on open
//! connections (at it, the oldest connection that has sent no request yet
//! makes room; a new one is refused only when all are in use), a
//! deadline for the TLS handshake and for each request's headers (which is
//! also the keep-alive idle timeout), and a graceful end on shutdown.
//!
//! Issue 15: 1,000 idle connections used to take every file descriptor and
//! `/metrics` with them.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::families::HttpRejection;
use crate::server::Listener;

/// File descriptors kept free for everything but HTTP connections (the
/// collectors' sockets and files, PostgreSQL connections, logs).
const FD_RESERVE: u64 = 256;
/// The connection cap derived from a generous file limit.
const MAX_AUTO_CONNECTIONS: u64 = 10_000;

/// Raises the soft open-file limit to the hard one where allowed; returns
/// the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The connection cap: the configured one, but never above the file limit
/// less a reserve; without one, that bound (at most 10000).
pub fn connection_cap(configured: Option<usize>, fd_limit: u64) -> usize {
    let bound = fd_limit.saturating_sub(FD_RESERVE).max(16);
    let cap = match configured {
        Some(n) => (n as u64).min(bound),
        None => bound.min(MAX_AUTO_CONNECTIONS),
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Binds a TCP listener. `[::]:PORT` takes IPv4 too (`IPV6_V6ONLY` off);
/// where this host has no IPv6, `0.0.0.0:PORT` is bound instead.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let dual_stack = addr.is_ipv6() && addr.ip().is_unspecified();
    match bind_exactly(addr, dual_stack) {
        // EAFNOSUPPORT, EADDRNOTAVAIL: no IPv6 here.
        Err(e) if dual_stack && matches!(e.raw_os_error(), Some(97 | 99)) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(address = %addr, fallback = %v4, error = %e, "No IPv6 on this host; listening on IPv4 only");
            bind_exactly(v4, false)
        }
        other => other,
    }
}

fn bind_exactly(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The listening TCP sockets systemd passed (socket activation:
/// `LISTEN_FDS`, `LISTEN_PID`); an error when there are none.
pub fn systemd_listeners() -> io::Result<Vec<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for i in 0..fds.len() {
        if let Some(l) = fds.take_tcp_listener(i)? {
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
    }
    if listeners.is_empty() {
        return Err(io::Error::other(
            "--web.systemd-socket is set, but systemd passed no listening TCP socket (LISTEN_FDS, LISTEN_PID)",
        ));
    }
    Ok(listeners)
}

/// Connections that have not sent a complete request yet, oldest first,
/// each with the sender that closes it.
type Fresh = Arc<Mutex<BTreeMap<u64, oneshot::Sender<()>>>>;

/// What every connection of every listener shares.
#[derive(Clone)]
pub struct Connections {
    /// One permit per open connection.
    pub slots: Arc<Semaphore>,
    pub cap: usize,
    pub open: IntGauge,
    pub read_header_timeout: Duration,
    /// At the cap, the oldest of these is closed to make room: idle and
    /// slowloris connections cannot lock out a scrape, while connections
    /// that are serving requests are never cut.
    fresh: Fresh,
    next_id: Arc<AtomicU64>,
}

impl Connections {
    pub fn new(cap: usize, open: IntGauge, read_header_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            open,
            read_header_timeout,
            fresh: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// A slot for a new connection: a free one, or one freed by closing
    /// the oldest connection that has sent no complete request yet
    /// (counted in `rejected`); `None` when every open connection is in use.
    async fn slot(&self, rejected: &IntCounterVec) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        loop {
            let oldest = self
                .fresh
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_first();
            let (_, close) = oldest?;
            if close.send(()).is_ok() {
                count(rejected, HttpRejection::TooManyConnections);
                // The closed connection's task gives its slot back at once.
                let wait = Duration::from_secs(1);
                if let Ok(Ok(permit)) =
                    tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await
                {
                    return Some(permit);
                }
            }
        }
    }

    /// Waits until every connection has closed.
    pub async fn drained(&self) {
        let all = u32::try_from(self.cap).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

/// Holds a connection's slot and its count in the open-connections gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Accepts connections until `stop` turns true; each is served on its own
/// task, which ends gracefully once `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    kind: Listener,
    router: Router,
    tls: Option<TlsAcceptor>,
    conns: Connections,
    rejected: IntCounterVec,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait a moment instead of spinning.
                tracing::warn!(error = %e, "Cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = conns.slot(&rejected).await else {
            count(&rejected, HttpRejection::TooManyConnections);
            drop(stream);
            continue;
        };
        conns.open.inc();
        let slot = Slot {
            _permit: permit,
            open: conns.open.clone(),
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, rejected, stop) =
            (router.clone(), tls.clone(), rejected.clone(), stop.clone());
        let header_timeout = conns.read_header_timeout;
        let id = conns.next_id.fetch_add(1, Ordering::Relaxed);
        let (close_tx, close_rx) = oneshot::channel();
        conns
            .fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, close_tx);
        let fresh = Fresh::clone(&conns.fresh);
        tokio::spawn(async move {
            let _slot = slot;
            let first_request = FirstRequest {
                fresh: fresh.clone(),
                id,
            };
            let closed = async {
                // Err: no longer closable (it sent a request); wait for the end.
                if close_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = closed => {}
                () = run_connection(stream, peer, kind, router, tls, header_timeout, rejected, stop, first_request) => {}
            }
            fresh.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }
}

/// Takes a connection off the closable list when its first request arrives.
#[derive(Clone)]
struct FirstRequest {
    fresh: Fresh,
    id: u64,
}

impl FirstRequest {
    fn arrived(&self) {
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    kind: Listener,
    router: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    rejected: IntCounterVec,
    stop: watch::Receiver<bool>,
    first_request: FirstRequest,
) {
    match tls {
        None => {
            serve_connection(
                stream,
                peer,
                kind,
                router,
                header_timeout,
                rejected,
                stop,
                first_request,
            )
            .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    serve_connection(
                        tls_stream,
                        peer,
                        kind,
                        router,
                        header_timeout,
                        rejected,
                        stop,
                        first_request,
                    )
                    .await
                }
                Ok(Err(e)) => {
                    count(&rejected, HttpRejection::TlsHandshake);
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => count(&rejected, HttpRejection::HeaderTimeout),
            }
        }
    }
}

fn count(rejected: &IntCounterVec, reason: HttpRejection) {
    rejected.with_label_values(&[reason.as_str()]).inc();
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    kind: Listener,
    router: Router,
    header_timeout: Duration,
    rejected: IntCounterVec,
    mut stop: watch::Receiver<bool>,
    first_request: FirstRequest,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service = router.map_request(
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            first_request.arrived();
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(kind);
            req
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            count(&rejected, HttpRejection::HeaderTimeout);
        } else {
            tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_file_limit() {
        assert_eq!(connection_cap(None, 1024), 768);
        assert_eq!(connection_cap(None, 1_048_576), 10_000);
        assert_eq!(connection_cap(Some(5000), 1024), 768);
        assert_eq!(connection_cap(Some(100), 20_000), 100);
    }

    #[test]
    fn any_port_takes_ipv4_and_ipv6() {
        let listener = bind("[::]:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 connects");
        if std::net::TcpStream::connect(("::1", port)).is_err() {
            // Only on a host without IPv6 loopback, where bind fell back.
            assert!(listener.local_addr().expect("addr").is_ipv4());
        }
    }
}
