//! Wiring: builds the two runtimes, the registry, the collectors and the
//! server; handles SIGHUP (reload) and SIGTERM/SIGINT (shutdown).
//!
//! Collectors run on a multi-thread runtime of their own; the HTTP server runs
//! on a separate single-thread runtime, so it keeps answering, and reports
//! the stall, when the collector runtime is blocked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Semaphore, watch};

use crate::collector::{Driver, Shared, build_collectors};
use crate::config::{self, ValidConfig};
use crate::ingest::Ingest;
use crate::metrics::register_build_info;
use crate::self_process::SelfProcess;
use crate::server::{self, AppState};
use crate::watchdog::Watchdog;

/// How long connections get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Web settings given on the command line; they win over the config file.
#[derive(Debug, Clone, Default)]
pub struct WebFlags {
    pub listen_addresses: Vec<String>,
    pub telemetry_path: Option<String>,
    pub max_requests: Option<usize>,
    pub disable_exporter_metrics: bool,
}

pub struct Settings {
    pub config: ValidConfig,
    /// The file SIGHUP reloads; `None` for the embedded default.
    pub config_path: Option<PathBuf>,
    pub web: WebFlags,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        source: std::io::Error,
    },
}

struct ReloadMetrics {
    successful: IntGauge,
    success_time: Gauge,
    reloads: IntCounterVec,
}

impl ReloadMetrics {
    fn register(registry: &Registry) -> Self {
        let successful = IntGauge::new(
            "loopwatch_config_last_reload_successful",
            "Whether the last configuration load or reload succeeded (1) or was rejected (0).",
        )
        .expect("valid metric");
        let success_time = Gauge::new(
            "loopwatch_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load or reload.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "loopwatch_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        registry
            .register(Box::new(successful.clone()))
            .expect("registered once");
        registry
            .register(Box::new(success_time.clone()))
            .expect("registered once");
        registry
            .register(Box::new(reloads.clone()))
            .expect("registered once");
        Self {
            successful,
            success_time,
            reloads,
        }
    }

    fn loaded(&self) {
        self.successful.set(1);
        self.success_time.set(crate::metrics::unix_now());
    }
}

/// The running exporter's parts that reloads and tests touch.
pub struct Exporter {
    pub registry: Registry,
    pub driver: Arc<Driver>,
    pub shared: Shared,
    reload_metrics: ReloadMetrics,
}

impl Exporter {
    /// Registers every metric and starts the collectors of `config` on
    /// `collect`, the collector runtime.
    pub fn start(
        config: &ValidConfig,
        collect: tokio::runtime::Handle,
        exporter_metrics: bool,
    ) -> Self {
        let registry = Registry::new();
        register_build_info(&registry);
        crate::logging::register_metrics(&registry);
        if exporter_metrics {
            registry
                .register(Box::new(SelfProcess::new()))
                .expect("registered once");
        }
        let watchdog = Arc::new(Watchdog::register(&registry));
        let ingest = Arc::new(Ingest::register(
            &registry,
            watchdog.clone(),
            config.get().ingest.clone(),
        ));
        let shared = Shared {
            watchdog,
            ingest,
            udp: Arc::default(),
            proc_scanner: Arc::default(),
        };
        let reload_metrics = ReloadMetrics::register(&registry);
        let driver = Arc::new(Driver::new(collect, &registry));
        driver.replace(build_collectors(config.get(), &shared));
        reload_metrics.loaded();
        Self {
            registry,
            driver,
            shared,
            reload_metrics,
        }
    }

    /// Replaces the collectors with those of a new configuration.
    pub fn apply(&self, config: &ValidConfig) {
        self.driver
            .replace(build_collectors(config.get(), &self.shared));
        self.reload_metrics.loaded();
        self.reload_metrics
            .reloads
            .with_label_values(&["success"])
            .inc();
    }

    /// Records a rejected reload; the running collectors stay.
    pub fn reject(&self) {
        self.reload_metrics.successful.set(0);
        self.reload_metrics
            .reloads
            .with_label_values(&["failure"])
            .inc();
    }
}

/// Runs the exporter until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<(), RunError> {
    let file_web = &settings.config.get().web;
    let listen = if settings.web.listen_addresses.is_empty() {
        file_web.listen_addresses.clone()
    } else {
        settings.web.listen_addresses.clone()
    };
    let telemetry_path = settings
        .web
        .telemetry_path
        .clone()
        .unwrap_or_else(|| file_web.telemetry_path.clone());
    if !telemetry_path.starts_with('/') || telemetry_path == "/" {
        return Err(RunError::Usage(format!(
            "--web.telemetry-path {telemetry_path:?} must start with / and not be /"
        )));
    }
    let max_requests = settings.web.max_requests.unwrap_or(file_web.max_requests);
    let exporter_metrics =
        !(settings.web.disable_exporter_metrics || file_web.disable_exporter_metrics);

    // Bind first: a port in use ends the start before anything runs.
    let mut listeners = Vec::new();
    for text in &listen {
        let addr = server::parse_listen_address(text).map_err(RunError::Usage)?;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| RunError::Listen { addr, source })?;
        listeners.push(listener);
    }

    let collect_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.config.get().runtime.worker_threads)
        .thread_name("loopwatch-collect")
        .enable_all()
        .build()
        .map_err(|source| RunError::Runtime {
            what: "collector",
            source,
        })?;
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RunError::Runtime {
            what: "server",
            source,
        })?;

    let exporter = Arc::new(Exporter::start(
        &settings.config,
        collect_rt.handle().clone(),
        exporter_metrics,
    ));
    let state = Arc::new(AppState {
        registry: exporter.registry.clone(),
        driver: exporter.driver.clone(),
        ingest: exporter.shared.ingest.clone(),
        telemetry_path,
        scrape_slots: (max_requests > 0).then(|| Arc::new(Semaphore::new(max_requests))),
    });
    tracing::info!(
        version = crate::metrics::build::VERSION,
        config = settings.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<default>".into()),
        summary = %settings.config.summary(),
        "Starting loopwatch"
    );

    let result = server_rt.block_on(serve(listeners, state, exporter.clone(), settings));
    exporter.driver.stop_all();
    collect_rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<AppState>,
    exporter: Arc<Exporter>,
    settings: Settings,
) -> Result<(), RunError> {
    let router = server::app(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| RunError::Listen { addr, source })?;
        tracing::info!(address = %addr, "Listening");
        let mut stop = stop_rx.clone();
        let router = router.clone();
        servers.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    wait_for_signals(&exporter, &settings).await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Connections still open after the grace period; closing them");
    }
    tracing::info!("Stopped");
    Ok(())
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_signals(exporter: &Exporter, settings: &Settings) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "Shutting down"); return; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "Shutting down"); return; }
            _ = hup.recv() => reload(exporter, settings),
        }
    }
}

fn reload(exporter: &Exporter, settings: &Settings) {
    let Some(path) = &settings.config_path else {
        tracing::info!(
            "Received SIGHUP; running on the embedded default config, nothing to reload"
        );
        exporter.apply(&settings.config);
        return;
    };
    match config::load_file(path) {
        Ok(new) => {
            if new.get().web.listen_addresses != settings.config.get().web.listen_addresses
                || new.get().web.telemetry_path != settings.config.get().web.telemetry_path
            {
                tracing::warn!("Changes to the web section take effect after a restart");
            }
            exporter.apply(&new);
            tracing::info!(config = %path.display(), summary = %new.summary(), "Reloaded the configuration");
        }
        Err(e) => {
            exporter.reject();
            for problem in &e.problems {
                tracing::error!(config = %path.display(), problem = %problem, "Rejected the new configuration; the old one keeps running");
            }
        }
    }
}
