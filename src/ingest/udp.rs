//! The `ingest` streaming collector: receives UDP datagrams and expires
//! silent loops. `POST /api/v1/events` feeds the same [`Ingest`] from the
//! HTTP server.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{Ingest, Transport};
use crate::collector::{BoxFuture, Built, CollectError, Job, Reason, Streaming};
use crate::config::IngestConfig;

/// How often silent loops are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// Large enough for any datagram, so an oversize one is seen whole and rejected.
const RECV_BUFFER: usize = 65_536;

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

struct UdpIngest {
    address: String,
    ingest: Arc<Ingest>,
}

impl Streaming for UdpIngest {
    fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
        Box::pin(async move {
            let socket = if self.address.is_empty() {
                None
            } else {
                let addr = crate::server::parse_listen_address(&self.address)
                    .map_err(|e| CollectError::new(Reason::Other, e))?;
                let socket = UdpSocket::bind(addr).await.map_err(|e| {
                    CollectError::new(Reason::Io, format!("cannot bind UDP {addr}: {e}"))
                })?;
                tracing::info!(address = %addr, "Receiving app reports over UDP");
                Some(socket)
            };
            let mut buf = vec![0u8; RECV_BUFFER];
            let mut expiry = tokio::time::interval(EXPIRE_EVERY);
            loop {
                tokio::select! {
                    received = async {
                        match &socket {
                            Some(s) => s.recv_from(&mut buf).await.map(|(n, _)| n),
                            None => std::future::pending().await,
                        }
                    } => {
                        match received {
                            Ok(n) => {
                                // Rejections are counted inside; a bad datagram never stops the loop.
                                let _ = self.ingest.handle(&buf[..n], Transport::Udp);
                            }
                            // ICMP errors from earlier sends and the like: keep receiving.
                            Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
                        }
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
