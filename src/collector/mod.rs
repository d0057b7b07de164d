//! Collectors: one module per kind, all run by the shared [`driver`].
//!
//! A collector is either *periodic* (`poll()` every `interval` under a
//! `timeout`, returning a fresh snapshot of its families) or *streaming* (a
//! task that runs until it is stopped). The driver, not the collector, applies
//! the schedule and records duration, success, last success and errors.

pub(crate) mod driver;
pub mod files;
pub mod logs;
pub(crate) mod pgbouncer;
pub(crate) mod pgwire;
pub(crate) mod postgres;
pub mod probes;
pub mod processes;
pub(crate) mod ratelimits;
pub(crate) mod runtime;
pub(crate) mod udp_ingest;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ResolvedConfig;
use crate::ingest::Ingest;
use crate::metrics::Families;
use crate::watchdog::Watchdog;

pub use driver::Driver;

/// A boxed future borrowing its collector; trait objects cannot use `async fn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a poll failed: a fixed set, so `loopwatch_collector_errors_total` stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    Connect,
    Auth,
    Parse,
    Io,
    Http4xx,
    Http5xx,
    /// A TLS handshake or certificate failure, or a server that refused TLS
    /// where the target requires it (#15).
    Tls,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Auth,
        Reason::Parse,
        Reason::Io,
        Reason::Http4xx,
        Reason::Http5xx,
        Reason::Tls,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Auth => "auth",
            Reason::Parse => "parse",
            Reason::Io => "io",
            Reason::Http4xx => "http_4xx",
            Reason::Http5xx => "http_5xx",
            Reason::Tls => "tls",
            Reason::Other => "other",
        }
    }
}

/// A failed poll: a bounded reason for the metric, a message for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CollectError {
    pub reason: Reason,
    pub message: String,
}

impl CollectError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A collector polled on a schedule.
pub trait Periodic: Send + 'static {
    /// Reads the source and returns every family it exports, complete.
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>>;

    /// The families shown while polls fail (such as `*_up 0`). Value series
    /// are left out: a zero would read as a real value.
    fn down(&self) -> Families {
        Families::new()
    }

    /// How far after the schedule this collector polls, from its second poll
    /// on (the first is at start, so readiness does not wait): collectors
    /// that call one service spread their polls over the interval.
    fn phase(&self) -> Duration {
        Duration::ZERO
    }
}

/// A collector that runs until it is stopped, recording its own metrics.
pub trait Streaming: Send + 'static {
    /// Runs until an error; the driver restarts it after a pause.
    fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>>;
}

pub enum Job {
    Periodic {
        interval: Duration,
        timeout: Duration,
        collector: Box<dyn Periodic>,
    },
    Streaming(Box<dyn Streaming>),
}

/// A collector ready to be started, named by its kind and target.
pub struct Built {
    /// The kind: the config section (`processes`, `runtime`, …).
    pub kind: &'static str,
    /// The target's `name` in that section.
    pub target: String,
    pub job: Job,
}

/// Why collectors could not be built from a resolved configuration: what
/// validation cannot know ahead (a TLS backend that fails to start).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("postgres target {target}: cannot build the connection pool")]
    Pool {
        target: String,
        #[source]
        source: deadpool_postgres::BuildError,
    },
    #[error("{kind} target {target}: cannot set up TLS")]
    Tls {
        kind: &'static str,
        target: String,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    #[error("ratelimits or probes target {target}: cannot build the HTTP client")]
    HttpClient {
        target: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What collectors share across reloads.
#[derive(Clone)]
pub struct Shared {
    pub watchdog: Arc<Watchdog>,
    pub ingest: Arc<Ingest>,
    /// The UDP receiver, kept across reloads.
    pub udp: Arc<udp_ingest::UdpSlot>,
    pub proc_scanner: Arc<processes::ProcScanner>,
    /// The logs' positions and counters, kept across reloads.
    pub logs: Arc<logs::LogStates>,
    /// When each concurrency probe last burst, so a reload never bursts again early.
    pub bursts: Arc<probes::BurstMemory>,
}

/// Every collector the configuration asks for: one line per kind, each
/// built from resolved values only (no file or environment is read here).
pub fn build_collectors(
    config: &ResolvedConfig,
    shared: &Shared,
) -> Result<Vec<Built>, BuildError> {
    let mut built = Vec::new();
    built.extend(runtime::build(&config.runtime, shared));
    built.push(udp_ingest::build(config, &shared.ingest, &shared.udp));
    shared
        .ingest
        .set_polled_ratelimits(ratelimits::polled_budgets(&config.ratelimits));
    built.extend(processes::build(&config.processes, shared));
    built.extend(postgres::build(&config.postgres)?);
    built.extend(pgbouncer::build(&config.pgbouncer)?);
    built.extend(ratelimits::build(&config.ratelimits)?);
    built.extend(logs::build(&config.logs, shared));
    built.extend(files::build(&config.files));
    built.extend(probes::build(&config.probes, &shared.bursts)?);
    Ok(built)
}
