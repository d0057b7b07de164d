//! The HTTP server keeps answering, and reports the stall, while the
//! collector runtime is blocked; and scrapes beyond --web.max-requests get 503.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use loopwatch::config;
use loopwatch::exporter::Exporter;
use loopwatch::server::{ServerState, router as app};

/// The exporter's parts as `exporter::run` wires them: a one-worker collector
/// runtime, a single-thread server runtime, and the router's state.
struct Harness {
    collect: tokio::runtime::Runtime,
    server: tokio::runtime::Runtime,
    exporter: Exporter,
    state: Arc<ServerState>,
}

impl Harness {
    fn start(exporter_metrics: bool, scrape_slots: Option<Arc<Semaphore>>) -> Self {
        let collect = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let server = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        let mut config = config::default_config();
        config.web.exporter_metrics = exporter_metrics;
        // Ingest stays off: parallel tests must not race for one UDP port.
        config.udp_listen_address = None;
        config.ingest.udp_listen_address = String::new();
        let exporter =
            Exporter::start(&config, collect.handle().clone()).expect("collectors build");
        let state = Arc::new(ServerState {
            registry: exporter.registry.clone(),
            driver: exporter.driver.clone(),
            ingest: exporter.shared.ingest.clone(),
            logs: exporter.shared.logs.clone(),
            telemetry_path: "/metrics".into(),
            scrape_slots,
            http: Default::default(),
        });
        Self {
            collect,
            server,
            exporter,
            state,
        }
    }
}

fn stall_of(text: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(r#"loopwatch_loop_stall_seconds{app_name="loopwatch",loop="tokio"} "#)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stall series:\n{text}"))
}

async fn scrape(router: axum::Router) -> (StatusCode, String) {
    let response = router
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_blocked_collector_runtime_shows_as_a_live_stall() {
    let Harness {
        collect,
        server,
        exporter,
        state,
    } = Harness::start(true, None);
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = server.block_on(scrape(app(state.clone())));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stall_of(&text), 0.0, "healthy before the block");

    // Block the only worker of the collector runtime, as a buggy blocking call would.
    collect.spawn(async { std::thread::sleep(Duration::from_millis(2500)) });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = server.block_on(scrape(app(state.clone())));
    assert_eq!(
        status,
        StatusCode::OK,
        "the server answers while collectors are blocked"
    );
    let stall = stall_of(&text);
    assert!(stall > 0.5, "the stall grows while blocked, got {stall}");

    std::thread::sleep(Duration::from_millis(1500));
    let (_, text) = server.block_on(scrape(app(state)));
    assert_eq!(
        stall_of(&text),
        0.0,
        "back to 0 once the runtime ticks again"
    );
    let stalls = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"loopwatch_loop_stalls_total{app_name="loopwatch",loop="tokio"} "#)
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("stalls_total");
    assert!(stalls >= 1.0, "the stall was counted: {text}");
    exporter.driver.stop_all();
}

#[test]
fn scrapes_beyond_max_requests_get_503() {
    let slots = Arc::new(Semaphore::new(1));
    let Harness {
        collect: _collect,
        server,
        exporter,
        state,
    } = Harness::start(false, Some(slots.clone()));
    let (status, _) = server.block_on(scrape(app(state.clone())));
    assert_eq!(status, StatusCode::OK);
    // One scrape in flight holds the only slot.
    let held = slots.try_acquire().expect("a free slot");
    let (status, text) = server.block_on(scrape(app(state.clone())));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    drop(held);
    let (status, _) = server.block_on(scrape(app(state)));
    assert_eq!(status, StatusCode::OK);
    exporter.driver.stop_all();
}
