//! The `ingest` streaming collector: receives UDP datagrams and expires
//! silent loops. `POST /api/v1/events` feeds the same [`Ingest`] from the
//! HTTP server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Ingest, Transport};
use crate::collector::{BoxFuture, Built, CollectError, Job, Reason, Streaming};
use crate::config::IngestConfig;

/// How often silent loops are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// Pause between batches of datagrams: one wake-up per batch instead of one
/// per heartbeat. A heartbeat is handled at most this much later, well within
/// the stall threshold.
const COALESCE: Duration = Duration::from_millis(25);
/// How often the receiving thread checks whether it was stopped.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// Large enough for any datagram, so an oversize one is seen whole and rejected.
const RECV_BUFFER: usize = 65_536;
/// Room for bursts of heartbeats while the receiver pauses; the kernel's
/// default of about 200 KiB drops them. Capped by net.core.rmem_max.
const RECV_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

pub fn build(config: &IngestConfig, ingest: &Arc<Ingest>) -> Built {
    ingest.set_config(config.clone());
    let address = config.udp_listen_address.clone();
    Built {
        kind: "ingest",
        target: if address.is_empty() {
            "http".to_owned()
        } else {
            "udp".to_owned()
        },
        job: Job::Streaming(Box::new(UdpIngest {
            address,
            ingest: ingest.clone(),
        })),
    }
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    socket.set_read_timeout(Some(STOP_CHECK))?;
    Ok(socket)
}

struct UdpIngest {
    address: String,
    ingest: Arc<Ingest>,
}

/// Stops the receiving thread when the collector's task ends or is aborted.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Receives on a plain blocking socket in its own thread: an async socket
/// would wake the runtime's I/O driver for every datagram, even while the
/// receiver pauses, and that cost more than handling them.
fn receive(socket: std::net::UdpSocket, ingest: Arc<Ingest>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            // Rejections are counted inside; a bad datagram never stops the loop.
            Ok((n, _)) => {
                let _ = ingest.handle(&buf[..n], Transport::Udp);
                // Then whatever else has arrived, without blocking.
                if socket.set_nonblocking(true).is_ok() {
                    while let Ok((n, _)) = socket.recv_from(&mut buf) {
                        let _ = ingest.handle(&buf[..n], Transport::Udp);
                    }
                    let _ = socket.set_nonblocking(false);
                }
                std::thread::sleep(COALESCE);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors from earlier sends and the like: keep receiving.
            Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
        }
    }
}

impl Streaming for UdpIngest {
    fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
        Box::pin(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let _stop_on_drop = StopOnDrop(stop.clone());
            let mut receiver = if self.address.is_empty() {
                None
            } else {
                let addr = crate::server::parse_listen_address(&self.address)
                    .map_err(|e| CollectError::new(Reason::Other, e))?;
                let socket = bind(addr).map_err(|e| {
                    CollectError::new(Reason::Io, format!("cannot bind UDP {addr}: {e}"))
                })?;
                tracing::info!(address = %addr, "Receiving app reports over UDP");
                let ingest = self.ingest.clone();
                let stop = stop.clone();
                Some(tokio::task::spawn_blocking(move || {
                    receive(socket, ingest, stop)
                }))
            };
            let mut expiry = tokio::time::interval(EXPIRE_EVERY);
            loop {
                tokio::select! {
                    ended = async {
                        match &mut receiver {
                            Some(r) => r.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        return Err(CollectError::new(
                            Reason::Other,
                            format!("the UDP receiver stopped: {ended:?}"),
                        ));
                    }
                    _ = expiry.tick() => {
                        let removed = self.ingest.expire();
                        if removed > 0 {
                            tracing::info!(loops = removed, "Expired silent loops");
                        }
                    }
                }
            }
        })
    }
}
