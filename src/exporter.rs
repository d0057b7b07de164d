//! The exporter's wiring: builds the two runtimes, the registry, the
//! collectors and the server; handles SIGHUP (reload) and SIGTERM/SIGINT
//! (shutdown).
//!
//! Collectors run on a multi-thread runtime of their own; the HTTP server runs
//! on a separate single-thread runtime, so it keeps answering, and reports
//! the stall, when the collector runtime is blocked. A reload reads, resolves
//! and builds on a blocking thread of the collector runtime, never on the
//! server's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Gauge, GaugeVec, IntCounterVec, Registry};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};

use crate::auth::BasicAuth;
use crate::collector::{BuildError, Driver, Shared, build_collectors};
use crate::config::{self, ResolvedConfig, WebFlags, WebSecurity};
use crate::error::Chain;
use crate::families;
use crate::ingest::Ingest;
use crate::listener::{self, Connections};
use crate::metrics::register_build_info;
use crate::self_process::SelfProcess;
use crate::server::{self, HttpGuard, Listener, ServerState};
use crate::watchdog::Watchdog;

/// How long connections get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Settings {
    /// The configuration loaded at start, with `web` merged in.
    pub config: ResolvedConfig,
    /// The file SIGHUP reloads; `None` for the embedded default.
    pub config_path: Option<PathBuf>,
    /// The command-line flags, merged again into each reloaded config.
    pub web: WebFlags,
    /// The `--web.config.file`: TLS, basic auth, headers (read once, at start).
    pub security: WebSecurity,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use systemd's socket: {0}")]
    Systemd(std::io::Error),
    #[error("cannot start the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
}

struct ReloadMetrics {
    successful: Gauge,
    success_time: Gauge,
    reloads: IntCounterVec,
}

impl ReloadMetrics {
    fn register(registry: &Registry) -> Self {
        let gauge = |g: GaugeVec| g.with_label_values::<&str>(&[]);
        let reloads = families::CONFIG_RELOADS.int_counter_vec(registry);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        Self {
            successful: gauge(families::CONFIG_LAST_RELOAD_SUCCESSFUL.gauge_vec(registry)),
            success_time: gauge(families::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.gauge_vec(registry)),
            reloads,
        }
    }

    fn loaded(&self) {
        self.successful.set(1.0);
        self.success_time.set(crate::metrics::unix_now());
    }
}

/// The running exporter's parts that reloads and tests touch.
pub struct Exporter {
    pub registry: Registry,
    pub driver: Arc<Driver>,
    pub shared: Shared,
    /// The collector runtime, where reloads run.
    collect: Handle,
    reload_metrics: ReloadMetrics,
    /// One reload at a time: a burst of SIGHUPs applies them in turn.
    reloading: Mutex<()>,
}

impl Exporter {
    /// Registers every metric and starts the collectors of `config` on
    /// `collect`, the collector runtime.
    pub fn start(config: &ResolvedConfig, collect: Handle) -> Result<Self, BuildError> {
        let registry = Registry::new();
        register_build_info(&registry);
        crate::logging::register_metrics(&registry);
        if config.web.exporter_metrics {
            registry
                .register(Box::new(SelfProcess::new()))
                .expect("registered once");
        }
        let watchdog = Arc::new(Watchdog::register(&registry));
        let ingest = Arc::new(Ingest::register(
            &registry,
            watchdog.clone(),
            config.ingest.clone(),
        ));
        let shared = Shared {
            watchdog,
            ingest,
            udp: Arc::default(),
            proc_scanner: Arc::default(),
            logs: Arc::default(),
            bursts: Arc::default(),
        };
        let reload_metrics = ReloadMetrics::register(&registry);
        let driver = Arc::new(Driver::new(collect.clone(), &registry));
        driver.replace(build_collectors(config, &shared)?);
        reload_metrics.loaded();
        Ok(Self {
            registry,
            driver,
            shared,
            collect,
            reload_metrics,
            reloading: Mutex::new(()),
        })
    }

    /// Replaces the collectors with those of a new configuration; a
    /// configuration whose collectors cannot be built is rejected and the
    /// running collectors stay.
    pub fn apply(&self, config: &ResolvedConfig) -> Result<(), BuildError> {
        let built = build_collectors(config, &self.shared).inspect_err(|_| self.reject())?;
        self.driver.replace(built);
        self.reload_metrics.loaded();
        self.reload_metrics
            .reloads
            .with_label_values(&["success"])
            .inc();
        Ok(())
    }

    /// Records a rejected reload; the running collectors stay.
    pub fn reject(&self) {
        self.reload_metrics.successful.set(0.0);
        self.reload_metrics
            .reloads
            .with_label_values(&["failure"])
            .inc();
    }

    /// Reloads off the caller's runtime: reading files, resolving secrets,
    /// parsing certificates and building clients block, and the HTTP
    /// runtime must stay responsive.
    pub fn reload_in_background(self: &Arc<Self>, settings: &Arc<Settings>) {
        let (exporter, settings) = (self.clone(), settings.clone());
        self.collect
            .spawn_blocking(move || exporter.reload(&settings));
    }

    /// Loads, resolves and applies the configuration file again. Blocking.
    pub fn reload(&self, settings: &Settings) {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let path = settings.config_path.as_deref();
        if path.is_none() {
            tracing::info!(
                "Received SIGHUP; running on the embedded default config, nothing to reload"
            );
        }
        let shown = path.map_or_else(|| "<default>".to_owned(), |p| p.display().to_string());
        match config::load(path, &settings.web) {
            Ok(new) => {
                if new.web != settings.config.web {
                    tracing::warn!("Changes to the web section take effect after a restart");
                }
                let (old_door, new_door) = (&settings.config.ingest_door, &new.ingest_door);
                if old_door.http_listen_address != new_door.http_listen_address
                    || old_door.token.as_ref().map(|t| t.expose())
                        != new_door.token.as_ref().map(|t| t.expose())
                {
                    tracing::warn!(
                        "Changes to ingest.token, ingest.token_file and ingest.http_listen_address take effect after a restart"
                    );
                }
                match self.apply(&new) {
                    Ok(()) => {
                        tracing::info!(config = %shown, summary = %new.summary(), "Reloaded the configuration")
                    }
                    Err(e) => {
                        tracing::error!(config = %shown, error = %Chain(&e), "Rejected the new configuration; the old one keeps running")
                    }
                }
            }
            Err(e) => {
                self.reject();
                for problem in &e.problems {
                    tracing::error!(config = %shown, problem = %problem, "Rejected the new configuration; the old one keeps running");
                }
            }
        }
    }
}

/// Runs the exporter until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> Result<(), RunError> {
    let web = &settings.config.web;
    // Bind first: a port in use ends the start before anything runs.
    let mut listeners = Vec::new();
    if web.systemd_socket {
        for l in listener::systemd_listeners().map_err(RunError::Systemd)? {
            listeners.push((Listener::Main, l));
        }
    } else {
        for &addr in &web.listen_addresses {
            let l = listener::bind(addr).map_err(|source| RunError::Listen { addr, source })?;
            listeners.push((Listener::Main, l));
        }
    }
    if let Some(addr) = settings.config.ingest_door.http_listen_address {
        let l = listener::bind(addr).map_err(|source| RunError::Listen { addr, source })?;
        listeners.push((Listener::Ingest, l));
    }
    let fd_limit = listener::raise_fd_limit();
    let cap = listener::connection_cap(web.max_connections, fd_limit);

    let collect_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.config.runtime.worker_threads)
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
    )?);
    let registry = &exporter.registry;
    let security = &settings.security;
    let http = HttpGuard {
        basic_auth: security
            .basic_auth
            .clone()
            .map(|users| Arc::new(BasicAuth::new(users))),
        ingest_token: settings.config.ingest_door.token.clone(),
        headers: security
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.parse().ok()?, v.parse().ok()?)))
            .collect(),
        request_timeout: web.request_timeout,
        rejected: HttpGuard::register_rejected(registry),
    };
    families::HTTP_MAX_CONNECTIONS
        .int_gauge(registry)
        .set(i64::try_from(cap).unwrap_or(i64::MAX));
    let conns = Connections::new(
        cap,
        families::HTTP_CONNECTIONS.int_gauge(registry),
        web.read_header_timeout,
    );
    let state = Arc::new(ServerState {
        registry: exporter.registry.clone(),
        driver: exporter.driver.clone(),
        ingest: exporter.shared.ingest.clone(),
        logs: exporter.shared.logs.clone(),
        telemetry_path: web.telemetry_path.clone(),
        scrape_slots: web.max_requests.map(|n| Arc::new(Semaphore::new(n))),
        http,
    });
    tracing::info!(
        version = crate::version::VERSION,
        config = settings.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<default>".into()),
        summary = %settings.config.summary(),
        tls = settings.security.tls.is_some(),
        basic_auth = settings.security.basic_auth.is_some(),
        ingest_token = settings.config.ingest_door.token.is_some(),
        max_connections = cap,
        fd_limit,
        "Starting loopwatch"
    );

    let tls = settings
        .security
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let settings = Arc::new(settings);
    let result = server_rt.block_on(serve(
        listeners,
        state,
        tls,
        conns,
        exporter.clone(),
        settings,
    ));
    exporter.driver.stop_all();
    collect_rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(
    listeners: Vec<(Listener, std::net::TcpListener)>,
    state: Arc<ServerState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: Connections,
    exporter: Arc<Exporter>,
    settings: Arc<Settings>,
) -> Result<(), RunError> {
    let main_router = server::router(state.clone());
    let ingest_router = server::ingest_router(state.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for (kind, listener) in listeners {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| RunError::Listen { addr, source })?;
        let (router, tls) = match kind {
            Listener::Main => (main_router.clone(), tls.clone()),
            Listener::Ingest => (ingest_router.clone(), None),
        };
        match kind {
            Listener::Main => tracing::info!(address = %addr, tls = tls.is_some(), "Listening"),
            Listener::Ingest => {
                tracing::info!(address = %addr, "Listening for POST /api/v1/events")
            }
        }
        servers.spawn(listener::serve(
            listener,
            kind,
            router,
            tls,
            conns.clone(),
            state.http.rejected.clone(),
            stop_rx.clone(),
        ));
    }

    wait_for_signals(&exporter, &settings).await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
        conns.drained().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Connections still open after the grace period; closing them");
    }
    tracing::info!("Stopped");
    Ok(())
}

/// Reloads on SIGHUP (off this runtime); returns on SIGTERM or SIGINT.
async fn wait_for_signals(exporter: &Arc<Exporter>, settings: &Arc<Settings>) {
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
            _ = hup.recv() => exporter.reload_in_background(settings),
        }
    }
}
