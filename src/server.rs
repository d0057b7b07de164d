//! The HTTP side: `/metrics`, the landing page, health and readiness, and the
//! apps' API: `POST /api/v1/events` (ingest) and `GET /api/v1/loops`.
//!
//! It runs on its own runtime, apart from the collectors, so that a blocked
//! collector runtime shows up as a stall in `/metrics` instead of a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{self, BasicAuth};
use crate::collector::Driver;
use crate::collector::logs::LogStates;
use crate::config::Secret;
use crate::families::{self, HttpRejection, Rejection, Transport};
use crate::ingest::Ingest;
use crate::metrics::{TEXT_CONTENT_TYPE, encode_with};
use crate::version;

/// What the handlers read.
pub struct ServerState {
    pub registry: Registry,
    pub driver: Arc<Driver>,
    pub ingest: Arc<Ingest>,
    /// The logs' top offenders, read-only.
    pub logs: Arc<LogStates>,
    pub telemetry_path: String,
    /// Concurrent scrapes allowed (`--web.max-requests`); `None`: no limit.
    pub scrape_slots: Option<Arc<Semaphore>>,
    /// Auth, the ingest door and the limits of each request.
    pub http: HttpGuard,
}

/// Which listener a connection came in on; the listener puts it, with the
/// peer's [`ConnectInfo`], into each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `web.listen_addresses` (or systemd's socket): every endpoint.
    Main,
    /// `ingest.http_listen_address`: `POST /api/v1/events` from any peer.
    Ingest,
}

/// What guards the handlers: basic auth, the ingest token, extra response
/// headers, the request time limit and the counter of refusals. The default
/// guards nothing but the ingest door's loopback rule.
pub struct HttpGuard {
    pub basic_auth: Option<Arc<BasicAuth>>,
    pub ingest_token: Option<Secret>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub request_timeout: Duration,
    pub rejected: IntCounterVec,
}

impl Default for HttpGuard {
    fn default() -> Self {
        let family = &families::HTTP_REQUESTS_REJECTED;
        Self {
            basic_auth: None,
            ingest_token: None,
            headers: Vec::new(),
            request_timeout: Duration::from_secs(30),
            rejected: IntCounterVec::new(Opts::new(family.name, family.help), family.labels)
                .expect("valid family"),
        }
    }
}

impl HttpGuard {
    /// The refusal counter, registered in `registry` with every reason at 0.
    pub fn register_rejected(registry: &Registry) -> IntCounterVec {
        let rejected = families::HTTP_REQUESTS_REJECTED.int_counter_vec(registry);
        for r in HttpRejection::ALL {
            rejected.with_label_values(&[r.as_str()]);
        }
        rejected
    }

    pub fn count(&self, reason: HttpRejection) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }
}

/// The router of the main listener, apart from any socket (tests call it
/// with `oneshot`).
pub fn router(state: Arc<ServerState>) -> Router {
    let routes = Router::new()
        .route(&state.telemetry_path, get(metrics))
        .route("/", get(landing))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route("/api/v1/events", events_route(&state))
        .route("/api/v1/loops", get(loops))
        .with_state(state.clone())
        // Inner: basic auth before any handler.
        .layer(middleware::from_fn_with_state(state.clone(), basic_auth));
    guarded(routes, state)
}

/// The router of the ingest listener: the events endpoint and liveness only.
pub fn ingest_router(state: Arc<ServerState>) -> Router {
    let routes = Router::new()
        .route("/api/v1/events", events_route(&state))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .with_state(state.clone());
    guarded(routes, state)
}

/// The layers every listener has, inner to outer.
fn guarded(routes: Router, state: Arc<ServerState>) -> Router {
    let timeout = state.http.request_timeout;
    routes
        // A request (its body upload included) gets `web.request_timeout`.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // Compress whatever the handlers return, when asked to.
        .layer(CompressionLayer::new().gzip(true))
        // Outermost: count refusals and add the configured headers.
        .layer(middleware::from_fn_with_state(state, outermost))
}

/// `POST /api/v1/events`: the door first, so a refused post is never read;
/// then at most [`MAX_EVENTS_IN_FLIGHT`] bodies read at once, the others
/// waiting unread (in the kernel's buffers) under the request timeout, so a
/// thousand 1 MiB posts cost 16 MiB, not a gigabyte (#15).
fn events_route(state: &Arc<ServerState>) -> MethodRouter<Arc<ServerState>> {
    post(events)
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(MAX_EVENTS_BODY))
        .layer::<_, std::convert::Infallible>(tower::limit::ConcurrencyLimitLayer::new(
            MAX_EVENTS_IN_FLIGHT,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), ingest_door))
}

/// Event posts whose bodies are read at the same time, per listener.
const MAX_EVENTS_IN_FLIGHT: usize = 16;

async fn outermost(State(state): State<Arc<ServerState>>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    match response.status() {
        StatusCode::REQUEST_TIMEOUT => state.http.count(HttpRejection::Timeout),
        StatusCode::PAYLOAD_TOO_LARGE => state.http.count(HttpRejection::BodyTooLarge),
        _ => {}
    }
    for (name, value) in &state.http.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Basic auth on every endpoint of the main listener but the events
/// endpoint, whose door (loopback or the ingest token) decides instead:
/// apps' reporters send no passwords.
async fn basic_auth(State(state): State<Arc<ServerState>>, req: Request, next: Next) -> Response {
    let Some(auth) = &state.http.basic_auth else {
        return next.run(req).await;
    };
    if req.method() == Method::POST && req.uri().path() == "/api/v1/events" {
        return next.run(req).await;
    }
    if auth.check(req.headers()).await {
        return next.run(req).await;
    }
    state.http.count(HttpRejection::Unauthorized);
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="loopwatch", charset="UTF-8""#,
        )],
        "Unauthorized\n",
    )
        .into_response()
}

/// Who may post events: with an ingest token, whoever sends it (401
/// otherwise); without one, any peer of the ingest listener and loopback
/// peers of the main listener (403 otherwise).
async fn ingest_door(State(state): State<Arc<ServerState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.http.ingest_token {
        if auth::bearer_matches(req.headers(), token) {
            return next.run(req).await;
        }
        state.ingest.refuse(Rejection::Unauthorized);
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="loopwatch ingest""#,
            )],
            "The ingest token is missing or wrong.\n",
        )
            .into_response();
    }
    let on_ingest_listener = req.extensions().get::<Listener>() == Some(&Listener::Ingest);
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| auth::is_loopback(peer.ip()));
    if on_ingest_listener || loopback {
        return next.run(req).await;
    }
    state.ingest.refuse(Rejection::Forbidden);
    (
        StatusCode::FORBIDDEN,
        "POST /api/v1/events takes loopback peers only; set ingest.token or ingest.http_listen_address to take others.\n",
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
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
async fn events(State(state): State<Arc<ServerState>>, body: Bytes) -> Response {
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
    State(state): State<Arc<ServerState>>,
    axum::extract::Query(q): axum::extract::Query<LoopsQuery>,
) -> Response {
    let limit = q.limit.clamp(1, MAX_LOOPS_PER_PAGE);
    let page = state
        .ingest
        .loop_page(q.offset, limit, MAX_LOOPS_PAGE_BYTES);
    axum::Json(page).into_response()
}

/// 503 until every collector's first poll is done, and while a streaming
/// collector (UDP ingest, the runtime ticker) is failing; the body says which.
async fn ready(State(state): State<Arc<ServerState>>) -> Response {
    match state.driver.readiness() {
        Ok(()) => "Ready\n".into_response(),
        Err(why) => {
            let mut body = String::from("Not ready:\n");
            for line in why {
                body.push_str(&line);
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn landing(State(state): State<Arc<ServerState>>) -> Html<String> {
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
    let mut storms = String::new();
    for t in state.logs.top_offenders() {
        storms.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
            escape(&t.log),
            escape(&t.message),
            t.count
        ));
    }
    if storms.is_empty() {
        storms.push_str("<tr><td colspan=\"3\">No log lines read yet.</td></tr>\n");
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
<h2>Most repeated log messages</h2>
<p>Per log, the normalised message seen most often in the current (or, while that has fewer, the previous) <code>repeat.window</code>.</p>
<table><tr><th>log</th><th>message</th><th>count</th></tr>
{storms}</table>
</body></html>
"#,
        version = version::VERSION,
        branch = escape(version::BRANCH),
        revision = escape(version::REVISION),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{BoxFuture, Built, CollectError, Job, Reason, Streaming};
    use crate::config::IngestConfig;
    use crate::watchdog::Watchdog;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct TakenPort;

    impl Streaming for TakenPort {
        fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
            Box::pin(async {
                Err(CollectError::new(
                    Reason::Io,
                    "cannot bind UDP 127.0.0.1:10071: Address already in use",
                ))
            })
        }
    }

    async fn get_ready(state: Arc<ServerState>) -> (StatusCode, String) {
        let response = router(state)
            .oneshot(
                Request::get("/-/ready")
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

    fn state_with(http: HttpGuard) -> Arc<ServerState> {
        let registry = Registry::new();
        let watchdog = Arc::new(Watchdog::register(&registry));
        let ingest = Arc::new(Ingest::register(
            &registry,
            watchdog,
            IngestConfig::default(),
        ));
        let driver = Arc::new(Driver::new(tokio::runtime::Handle::current(), &registry));
        Arc::new(ServerState {
            registry,
            driver,
            ingest,
            logs: Arc::default(),
            telemetry_path: "/metrics".into(),
            scrape_slots: None,
            http,
        })
    }

    async fn post_event(
        state: &Arc<ServerState>,
        peer: &str,
        listener: Listener,
        authorization: Option<&str>,
    ) -> StatusCode {
        let mut request = Request::post("/api/v1/events");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let mut request = request
            .body(Body::from(
                r#"{"v":1,"type":"bye","app":"a","loop":"main","pid":1}"#,
            ))
            .expect("request");
        let peer: SocketAddr = peer.parse().expect("peer");
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(listener);
        let router = match listener {
            Listener::Main => router(state.clone()),
            Listener::Ingest => ingest_router(state.clone()),
        };
        router.oneshot(request).await.expect("response").status()
    }

    /// r15: the ingest door: loopback (also IPv4-mapped) on the main
    /// listener, any peer on the ingest listener, and only the token's
    /// bearers once a token is set.
    #[tokio::test]
    async fn r15_the_ingest_door_admits_loopback_the_ingest_listener_or_the_token() {
        let open = state_with(HttpGuard::default());
        for (peer, listener, want) in [
            ("127.0.0.1:5000", Listener::Main, StatusCode::OK),
            ("[::ffff:127.0.0.1]:5000", Listener::Main, StatusCode::OK),
            ("[::1]:5000", Listener::Main, StatusCode::OK),
            ("192.0.2.7:5000", Listener::Main, StatusCode::FORBIDDEN),
            (
                "[::ffff:192.0.2.7]:5000",
                Listener::Main,
                StatusCode::FORBIDDEN,
            ),
            ("192.0.2.7:5000", Listener::Ingest, StatusCode::OK),
        ] {
            assert_eq!(
                post_event(&open, peer, listener, None).await,
                want,
                "{peer} {listener:?}"
            );
        }
        let guarded = state_with(HttpGuard {
            ingest_token: Some(Secret::new("0123456789abcdef".into())),
            ..HttpGuard::default()
        });
        for (peer, auth, want) in [
            ("127.0.0.1:5000", None, StatusCode::UNAUTHORIZED),
            (
                "192.0.2.7:5000",
                Some("Bearer 0123456789abcdeX"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "192.0.2.7:5000",
                Some("Bearer 0123456789abcdef"),
                StatusCode::OK,
            ),
        ] {
            assert_eq!(
                post_event(&guarded, peer, Listener::Main, auth).await,
                want,
                "{peer} {auth:?}"
            );
        }
        let text = String::from_utf8(crate::metrics::encode_with(
            &open.registry,
            open.driver.snapshots(),
        ))
        .expect("utf8");
        assert!(
            text.contains(r#"loopwatch_ingest_rejected_total{reason="forbidden"} 2"#),
            "{text}"
        );
        let text = String::from_utf8(crate::metrics::encode_with(
            &guarded.registry,
            guarded.driver.snapshots(),
        ))
        .expect("utf8");
        assert!(
            text.contains(r#"loopwatch_ingest_rejected_total{reason="unauthorized"} 2"#),
            "{text}"
        );
    }

    /// r11: a loopwatch whose UDP bind failed is not ready, and says why.
    #[tokio::test]
    async fn r11_ready_is_503_while_a_streaming_collector_fails() {
        let registry = Registry::new();
        let watchdog = Arc::new(Watchdog::register(&registry));
        let ingest = Arc::new(Ingest::register(
            &registry,
            watchdog,
            IngestConfig::default(),
        ));
        let driver = Arc::new(Driver::new(tokio::runtime::Handle::current(), &registry));
        let state = Arc::new(ServerState {
            registry,
            driver: driver.clone(),
            ingest,
            logs: Arc::default(),
            telemetry_path: "/metrics".into(),
            scrape_slots: None,
            http: HttpGuard::default(),
        });
        let (status, body) = get_ready(state.clone()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Ready\n"));

        driver.replace(vec![Built {
            kind: "ingest",
            target: "udp".into(),
            job: Job::Streaming(Box::new(TakenPort)),
        }]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (status, body) = get_ready(state).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("ingest/udp: failing: cannot bind UDP 127.0.0.1:10071"),
            "{body}"
        );
        driver.stop_all();
    }
}
