//! The floor that `benches/run.sh` compares loopwatch against: the least an
//! axum 0.8 + prometheus 0.14 exporter can do. One counter, `/metrics`
//! encoded with `TextEncoder`, one single-thread tokio runtime.
//!
//! Usage: `floor_server 127.0.0.1:19004`

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntCounter, Registry, TextEncoder};

#[derive(Clone)]
struct Floor {
    registry: Registry,
    scrapes: IntCounter,
}

async fn metrics(State(floor): State<Floor>) -> impl IntoResponse {
    floor.scrapes.inc();
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(256);
    encoder
        .encode(&floor.registry.gather(), &mut body)
        .expect("text encoding to a Vec cannot fail");
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        body,
    )
}

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: floor_server ADDR (for example 127.0.0.1:19004)");
            std::process::exit(2);
        }
    };
    let registry = Registry::new();
    let scrapes = IntCounter::new("floor_scrapes_total", "Scrapes served.").expect("valid metric");
    registry
        .register(Box::new(scrapes.clone()))
        .expect("registered once");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Floor { registry, scrapes });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor_server: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        axum::serve(listener, app).await.expect("serve");
    });
}
