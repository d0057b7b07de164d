//! The HTTP side: `/metrics`, the landing page, health and readiness, and the
//! apps' API: `POST /api/v1/events` (ingest) and `GET /api/v1/loops`.
//!
//! It runs on its own runtime, apart from the collectors, so that a blocked
//! collector runtime shows up as a stall in `/metrics` instead of a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::Registry;
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;

use crate::collector::Driver;
use crate::families::Transport;
use crate::ingest::Ingest;
use crate::metrics::{TEXT_CONTENT_TYPE, build, encode_with};

/// What the handlers read.
pub struct AppState {
    pub registry: Registry,
    pub driver: Arc<Driver>,
    pub ingest: Arc<Ingest>,
    pub telemetry_path: String,
    /// Concurrent scrapes allowed (`--web.max-requests`); `None`: no limit.
    pub scrape_slots: Option<Arc<Semaphore>>,
}

/// The router, apart from any socket (tests call it with `oneshot`).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route(&state.telemetry_path, get(metrics))
        .route("/", get(landing))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route(
            "/api/v1/events",
            post(events).layer(DefaultBodyLimit::max(MAX_EVENTS_BODY)),
        )
        .route("/api/v1/loops", get(loops))
        .with_state(state)
        // Outermost: compress whatever the handlers return, when asked to.
        .layer(CompressionLayer::new().gzip(true))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let _permit = match &state.scrape_slots {
        Some(slots) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many concurrent scrapes; raise --web.max-requests.\n",
                )
                    .into_response();
            }
        },
        None => None,
    };
    let body = encode_with(&state.registry, state.driver.snapshots());
    ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], body).into_response()
}

/// Largest `POST /api/v1/events` body; larger ones get 413.
pub const MAX_EVENTS_BODY: usize = 1024 * 1024;

/// NDJSON batch of client-protocol messages; a bad line never fails the rest.
async fn events(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match state.ingest.handle(line, Transport::Http) {
            Ok(()) => accepted += 1,
            Err(_) => rejected += 1,
        }
    }
    axum::Json(serde_json::json!({"accepted": accepted, "rejected": rejected})).into_response()
}

/// `GET /api/v1/loops?offset=&limit=`: a page of loops, bounded in count
/// and in bytes whatever apps sent.
#[derive(serde::Deserialize)]
struct LoopsQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_loops_limit")]
    limit: usize,
}

fn default_loops_limit() -> usize {
    100
}

/// Loops per page at most, and the JSON size a page stops growing at.
const MAX_LOOPS_PER_PAGE: usize = 1000;
const MAX_LOOPS_PAGE_BYTES: usize = 4 * 1024 * 1024;

async fn loops(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<LoopsQuery>,
) -> Response {
    let limit = q.limit.clamp(1, MAX_LOOPS_PER_PAGE);
    let page = state
        .ingest
        .loop_page(q.offset, limit, MAX_LOOPS_PAGE_BYTES);
    axum::Json(page).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.driver.first_polls_done() {
        "Ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready: first polls are running\n",
        )
            .into_response()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn landing(State(state): State<Arc<AppState>>) -> Html<String> {
    let mut rows = String::new();
    for s in state.driver.statuses().iter() {
        let last_success = s
            .last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|ago| format!("{:.1}s ago", ago.as_secs_f64()))
            .unwrap_or_else(|| "never".to_owned());
        let error = s
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let state_cell = match &error {
            Some(_) => "failing",
            None if last_success == "never" => "starting",
            None => "ok",
        };
        let schedule = s
            .schedule
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|| "streaming".to_owned());
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{state_cell}\">{state_cell}</td><td>{}</td><td>{}</td></tr>\n",
            escape(s.kind),
            escape(&s.target),
            escape(&schedule),
            escape(&last_success),
            escape(error.as_deref().unwrap_or("")),
        ));
    }
    let mut sites = String::new();
    for s in state.ingest.top_sites(10) {
        sites.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
            escape(&s.app_name),
            escape(&s.loop_name),
            escape(&s.site),
            s.stalls
        ));
    }
    if sites.is_empty() {
        sites.push_str("<tr><td colspan=\"4\">No stalls reported.</td></tr>\n");
    }
    let path = escape(&state.telemetry_path);
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>loopwatch</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.failing{{color:#b00}}.ok{{color:#070}}</style>
</head><body>
<h1>loopwatch</h1>
<p>Prometheus exporter for the failure modes of async services. Version {version} (branch {branch}, revision {revision}).</p>
<ul>
<li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li>
<li><a href="/api/v1/loops">Apps' event loops (JSON): state, current stall, recent stalls with stack and site</a></li>
</ul>
<h2>Collectors</h2>
<table><tr><th>collector</th><th>target</th><th>interval</th><th>state</th><th>last success</th><th>last error</th></tr>
{rows}</table>
<h2>Top blocking sites</h2>
<table><tr><th>app_name</th><th>loop</th><th>site</th><th>stalls</th></tr>
{sites}</table>
</body></html>
"#,
        version = build::VERSION,
        branch = escape(build::BRANCH),
        revision = escape(build::REVISION),
    ))
}

/// Parses a listen address as exporters take it: `:10071` (every IPv4
/// interface), `[::]:10071`, `127.0.0.1:10071` or `localhost:10071`.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let bad =
        || format!("{text:?} is not a listen address like :10071, 127.0.0.1:10071 or [::]:10071");
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_exporter_forms() {
        assert_eq!(
            parse_listen_address(":10071"),
            Ok("0.0.0.0:10071".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_address("[::]:9"),
            Ok("[::]:9".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_address("localhost:80"),
            Ok("127.0.0.1:80".parse().expect("addr"))
        );
        assert!(parse_listen_address("10071").is_err());
        assert!(parse_listen_address(":99999").is_err());
    }
}
