//! The `ingest` streaming collector: receives apps' UDP datagrams into
//! [`Ingest`] and sweeps it (restarts, expiry) every second. `POST
//! /api/v1/events` feeds the same [`Ingest`] from the HTTP server.
//!
//! The socket and its receiving thread outlive the collector's task: a reload
//! that keeps the address keeps them, so no heartbeat is lost and no loop
//! shows a stall because of a reload; a new address is bound before the old
//! socket closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::collector::{BoxFuture, Built, CollectError, Job, Reason, Streaming};
use crate::config::ResolvedConfig;
use crate::families::Transport;
use crate::ingest::Ingest;

/// How often processes are checked for silence (restarts) and expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
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

/// The receiver that is running, shared by the successive `ingest`
/// collectors of reloads.
#[derive(Default)]
pub struct UdpSlot(Mutex<Option<Arc<Receiver>>>);

impl UdpSlot {
    /// The running receiver on `addr`, or a new one bound to it (which
    /// replaces, and so stops, one on another address).
    fn get_or_bind(
        &self,
        addr: SocketAddr,
        ingest: &Arc<Ingest>,
    ) -> std::io::Result<Arc<Receiver>> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = current
            .as_ref()
            .filter(|r| r.addr == addr && !r.thread.is_finished())
        {
            return Ok(r.clone());
        }
        let socket = bind(addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ingest, stop) = (ingest.clone(), stop.clone());
            std::thread::Builder::new()
                .name("loopwatch-udp".to_owned())
                .spawn(move || receive(socket, ingest, stop))?
        };
        tracing::info!(address = %addr, "Receiving app reports over UDP");
        let receiver = Arc::new(Receiver { addr, stop, thread });
        *current = Some(receiver.clone());
        Ok(receiver)
    }

    /// Stops receiving (UDP ingest turned off).
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A bound socket and the thread receiving on it; the thread stops when the
/// last handle is dropped.
struct Receiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn build(config: &ResolvedConfig, ingest: &Arc<Ingest>, slot: &Arc<UdpSlot>) -> Built {
    ingest.set_config(config.ingest.clone());
    let address = config.udp_listen_address;
    Built {
        kind: "ingest",
        target: if address.is_some() { "udp" } else { "http" }.to_owned(),
        job: Job::Streaming(Box::new(UdpIngest {
            address,
            ingest: ingest.clone(),
            slot: slot.clone(),
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
    /// `None`: UDP ingest is off (`POST /api/v1/events` stays).
    address: Option<SocketAddr>,
    ingest: Arc<Ingest>,
    slot: Arc<UdpSlot>,
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
            let receiver = if let Some(addr) = self.address {
                let receiver = self.slot.get_or_bind(addr, &self.ingest).map_err(|e| {
                    CollectError::new(Reason::Io, format!("cannot bind UDP {addr}: {e}"))
                })?;
                Some(receiver)
            } else {
                self.slot.clear();
                None
            };
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            loop {
                sweep.tick().await;
                if let Some(r) = &receiver {
                    if r.thread.is_finished() {
                        return Err(CollectError::new(Reason::Other, "the UDP receiver stopped"));
                    }
                }
                let removed = self.ingest.sweep();
                if removed > 0 {
                    tracing::info!(loops = removed, "Expired silent loops");
                }
            }
        })
    }
}
