//! Every metric family loopwatch exports — name, help, type and label names —
//! and the label vocabularies that sources share. Nothing else in the crate
//! spells a `loopwatch_…` name (`tests/catalog.rs` keeps it so), so ingest and
//! the collectors fill the same families without importing each other.
//!
//! A leaf: it imports nothing from the crate.

use prometheus::core::{Collector, Desc};
use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};

/// The label value that stands for everything beyond a cap.
pub const OTHER: &str = "other";
/// The app name of loopwatch itself (its runtime's loop, its own pools).
/// Apps may not report under it: their series would collide with its own.
pub const RESERVED_APP: &str = "loopwatch";
/// The loop name of loopwatch's own collector runtime.
pub const RUNTIME_LOOP: &str = "tokio";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: what `# HELP` and `# TYPE` say, and its label names.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Registers `metric` once; a second registration of a family is a bug in
/// the wiring, found by every test that starts an exporter.
pub fn register<T: Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("each family is registered once");
    metric
}

impl Family {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    pub fn counter_vec(&self, registry: &Registry) -> CounterVec {
        debug_assert_eq!(self.kind, Kind::Counter, "{}", self.name);
        register(
            registry,
            CounterVec::new(self.opts(), self.labels).expect("valid family"),
        )
    }

    pub fn int_counter_vec(&self, registry: &Registry) -> IntCounterVec {
        debug_assert_eq!(self.kind, Kind::Counter, "{}", self.name);
        register(
            registry,
            IntCounterVec::new(self.opts(), self.labels).expect("valid family"),
        )
    }

    pub fn gauge_vec(&self, registry: &Registry) -> GaugeVec {
        debug_assert_eq!(self.kind, Kind::Gauge, "{}", self.name);
        register(
            registry,
            GaugeVec::new(self.opts(), self.labels).expect("valid family"),
        )
    }

    /// A family without labels.
    pub fn int_gauge(&self, registry: &Registry) -> IntGauge {
        debug_assert!(
            self.kind == Kind::Gauge && self.labels.is_empty(),
            "{}",
            self.name
        );
        register(
            registry,
            IntGauge::with_opts(self.opts()).expect("valid family"),
        )
    }

    pub fn histogram_vec(&self, registry: &Registry, buckets: &[f64]) -> HistogramVec {
        debug_assert_eq!(self.kind, Kind::Histogram, "{}", self.name);
        let opts = HistogramOpts::new(self.name, self.help).buckets(buckets.to_vec());
        register(
            registry,
            HistogramVec::new(opts, self.labels).expect("valid family"),
        )
    }

    /// The descriptor of a family a custom collector fills at scrape time.
    pub fn desc(&self) -> Desc {
        Desc::new(
            self.name.to_owned(),
            self.help.to_owned(),
            self.labels.iter().map(|s| (*s).to_owned()).collect(),
            Default::default(),
        )
        .expect("valid family")
    }
}

macro_rules! families {
    ($($(#[$doc:meta])* $id:ident = $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $id: Family = Family {
                name: $name,
                help: $help,
                kind: Kind::$kind,
                labels: &[$($label),*],
            };
        )*
        /// Every family, for the catalog test.
        #[cfg(test)]
        pub const ALL: &[Family] = &[$($id),*];
    };
}

families! {
    // The exporter itself.
    BUILD_INFO = Gauge "loopwatch_build_info" ["version", "revision", "branch", "rust_version", "os", "arch"]
        "A metric with a constant '1' value labeled by version, revision, branch, rust_version, os and arch from which loopwatch was built.";
    CONFIG_LAST_RELOAD_SUCCESSFUL = Gauge "loopwatch_config_last_reload_successful" []
        "Whether the last configuration load or reload succeeded (1) or was rejected (0).";
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP = Gauge "loopwatch_config_last_reload_success_timestamp_seconds" []
        "Unix time of the last successful configuration load or reload.";
    CONFIG_RELOADS = Counter "loopwatch_config_reloads_total" ["result"]
        "Configuration reloads (SIGHUP), by result.";
    LOG_SUPPRESSED = Counter "loopwatch_log_suppressed_total" ["level"]
        "loopwatch's own log lines dropped because the same message repeated more often than the log repeat limit allows, by level.";

    // The HTTP server.
    HTTP_REQUESTS_REJECTED = Counter "loopwatch_http_requests_rejected_total" ["reason"]
        "HTTP requests and connections the server refused or cut, by reason.";
    HTTP_CONNECTIONS = Gauge "loopwatch_http_connections" []
        "HTTP connections open now, all listeners together.";
    HTTP_MAX_CONNECTIONS = Gauge "loopwatch_http_max_connections" []
        "HTTP connections allowed open at once (web.max_connections, or derived from the open-file limit).";

    // The collector driver.
    COLLECTOR_DURATION = Gauge "loopwatch_collector_duration_seconds" ["collector", "target"]
        "Duration of the collector's last poll.";
    COLLECTOR_SUCCESS = Gauge "loopwatch_collector_success" ["collector", "target"]
        "Whether the collector's last poll succeeded (1) or failed (0).";
    COLLECTOR_LAST_SUCCESS = Gauge "loopwatch_collector_last_success_timestamp_seconds" ["collector", "target"]
        "Unix time of the collector's last successful poll.";
    COLLECTOR_ERRORS = Counter "loopwatch_collector_errors_total" ["collector", "target", "reason"]
        "Failed polls of the collector, by reason.";

    // Event loops: loopwatch's own runtime and apps' loops.
    LOOP_LAG = Histogram "loopwatch_loop_lag_seconds" ["app_name", "loop"]
        "How late each tick of the loop ran compared to when it was due.";
    LOOP_STALLS = Counter "loopwatch_loop_stalls_total" ["app_name", "loop"]
        "Ticks that arrived later than the stall threshold.";
    LOOP_BLOCKED = Counter "loopwatch_loop_blocked_seconds_total" ["app_name", "loop"]
        "Total time the loop was blocked in stalls.";
    LOOP_LAST_HEARTBEAT = Gauge "loopwatch_loop_last_heartbeat_timestamp_seconds" ["app_name", "loop"]
        "Unix time of the loop's last tick (the latest of its processes).";
    LOOP_STALL = Gauge "loopwatch_loop_stall_seconds" ["app_name", "loop"]
        "How long the loop has been blocked right now, in its worst live process: 0 while every process ticks on time, growing while one is blocked.";
    LOOP_UP = Gauge "loopwatch_loop_up" ["app_name", "loop"]
        "Whether at least one process of the loop is reporting (1), or all went silent without saying bye (0).";
    LOOP_PROCESSES = Gauge "loopwatch_loop_processes" ["app_name", "loop"]
        "Live processes reporting the loop (an app's worker processes).";
    LOOP_RESTARTS = Counter "loopwatch_loop_restarts_total" ["app_name", "loop"]
        "Processes of the loop that went silent for the silence timeout without saying bye (crashed, killed or hung).";
    LOOP_WORKER_UP = Gauge "loopwatch_loop_worker_up" ["app_name", "loop", "worker"]
        "Whether the worker that reports this worker id is live (1) or went silent without saying bye (0); only for clients that send a worker id.";
    LOOP_WORKER_STALL = Gauge "loopwatch_loop_worker_stall_seconds" ["app_name", "loop", "worker"]
        "How long the worker's loop has been blocked right now; only for clients that send a worker id.";
    LOOP_SLOW_CALLBACKS = Counter "loopwatch_loop_slow_callbacks_total" ["app_name", "loop"]
        "Heartbeats delayed more than 100 ms: a callback ran at least that long.";
    LOOP_BLOCKING_CALLS = Counter "loopwatch_loop_blocking_calls_total" ["app_name", "loop", "site"]
        "Stalls by the code site that blocked the loop (\"unknown\" when the app's watchdog could not report it).";
    LOOP_INFO = Gauge "loopwatch_loop_info" ["app_name", "loop", "client_version", "runtime", "language_version"]
        "Metadata of the loop's reporter, value 1.";

    // Tasks.
    TASKS_PENDING = Gauge "loopwatch_tasks_pending" ["app_name", "loop"]
        "Tasks alive on the loop (created and not finished), summed over its live processes.";
    TASKS_CREATED = Counter "loopwatch_tasks_created_total" ["app_name", "loop"]
        "Tasks created on the loop.";
    TASK_FAILURES = Counter "loopwatch_task_failures_total" ["app_name", "loop", "task", "exception"]
        "Tasks that ended with an exception, by task name and exception type (task \"callback\": a callback that raised).";
    TASK_CANCELLATIONS = Counter "loopwatch_task_cancellations_total" ["app_name", "loop", "task"]
        "Tasks cancelled, by task name.";

    // Ingest.
    INGEST_MESSAGES = Counter "loopwatch_ingest_messages_total" ["transport"]
        "Messages received from apps, accepted or not, by transport.";
    INGEST_REJECTED = Counter "loopwatch_ingest_rejected_total" ["reason"]
        "Messages from apps rejected, by reason.";
    INGEST_SERIES = Gauge "loopwatch_ingest_series" []
        "Series that apps' reports hold in /metrics now, counted against ingest.max_series.";
    INGEST_SERIES_LIMIT = Gauge "loopwatch_ingest_series_limit" []
        "The series apps' reports may hold in /metrics at most (ingest.max_series); beyond it new label values fold into \"other\" and new loops are rejected.";
    INGEST_FOLDED = Counter "loopwatch_ingest_folded_total" ["kind"]
        "Events whose label value exceeded a cap and was folded into \"other\", by kind of label.";

    // Connection pools: apps' reports and loopwatch's own.
    POOL_SIZE = Gauge "loopwatch_pool_size" ["app_name", "pool"]
        "Connections open in the pool, summed over the processes reporting it.";
    POOL_MAX = Gauge "loopwatch_pool_max" ["app_name", "pool"]
        "Maximum connections of the pool, summed over the processes reporting it.";
    POOL_IN_USE = Gauge "loopwatch_pool_in_use" ["app_name", "pool"]
        "Connections of the pool checked out, summed over the processes reporting it.";
    POOL_WAITING = Gauge "loopwatch_pool_waiting" ["app_name", "pool"]
        "Callers waiting for a connection of the pool, summed over the processes reporting it.";
    POOL_WAITING_MAX = Gauge "loopwatch_pool_waiting_max" ["app_name", "pool"]
        "The most callers each process saw waiting for a connection since its previous report, summed over the processes.";
    POOL_ACQUIRES = Counter "loopwatch_pool_acquires_total" ["app_name", "pool"]
        "Connections acquired from the pool.";
    POOL_ACQUIRE_TIMEOUTS = Counter "loopwatch_pool_acquire_timeouts_total" ["app_name", "pool"]
        "Acquires from the pool that timed out or failed.";
    POOL_WAIT = Counter "loopwatch_pool_wait_seconds_total" ["app_name", "pool"]
        "Time callers spent waiting to acquire a connection from the pool, successful or not.";

    // Rate limits: polled and reported by apps.
    RATELIMIT_LIMIT = Gauge "loopwatch_ratelimit_limit" ["api", "resource", "token"]
        "Requests allowed per rate-limit window, as last observed.";
    RATELIMIT_REMAINING = Gauge "loopwatch_ratelimit_remaining" ["api", "resource", "token"]
        "Requests left in the rate-limit window, as last observed.";
    RATELIMIT_RESET = Gauge "loopwatch_ratelimit_reset_timestamp_seconds" ["api", "resource", "token"]
        "Unix time when the rate-limit window resets, as last observed.";
    RATELIMIT_OBSERVED = Gauge "loopwatch_ratelimit_observed_timestamp_seconds" ["api", "resource", "token"]
        "Unix time of the latest observation of the rate limit; kept while polls fail, so time() minus it is the age of what the other ratelimit series show.";
    RATELIMIT_THROTTLED = Counter "loopwatch_ratelimit_throttled_total" ["api", "resource", "token", "kind"]
        "Requests the API refused for its rate limit, by kind: primary (budget exhausted) or secondary (GitHub's secondary limits, or a 429 while budget remains).";

    // Process groups.
    PROCESSES = Gauge "loopwatch_processes" ["group"]
        "Processes in the group (0 when none runs), sampled every interval.";
    PROCESS_CPU = Counter "loopwatch_process_cpu_seconds_total" ["group"]
        "CPU time (user and system) used by the group's processes, sampled every interval.";
    PROCESS_RESTARTS = Counter "loopwatch_process_restarts_total" ["group"]
        "Processes that joined the group after loopwatch's first poll (restarts, crash loops, new workers), sampled every interval.";
    PROCESS_RESIDENT_MEMORY = Gauge "loopwatch_process_resident_memory_bytes" ["group"]
        "Resident memory of the group's processes, summed, sampled every interval.";
    PROCESS_VIRTUAL_MEMORY = Gauge "loopwatch_process_virtual_memory_bytes" ["group"]
        "Virtual memory of the group's processes, summed, sampled every interval.";
    PROCESS_THREADS = Gauge "loopwatch_process_threads" ["group"]
        "Threads of the group's processes, summed, sampled every interval.";
    PROCESS_START_TIME = Gauge "loopwatch_process_start_time_seconds" ["group"]
        "Unix start time of the group's oldest process, sampled every interval.";
    PROCESS_OPEN_FDS = Gauge "loopwatch_process_open_fds" ["group"]
        "Open file descriptors of the group's process closest to its limit, sampled every interval.";
    PROCESS_MAX_FDS = Gauge "loopwatch_process_max_fds" ["group"]
        "File descriptor limit (soft) of the group's process closest to its limit, sampled every interval.";
    PROCESS_READ_ERRORS = Counter "loopwatch_process_read_errors_total" ["group", "reason"]
        "/proc entries that could not be read while sampling the group (a process exiting mid-read, another user's process), by reason.";

    // PostgreSQL.
    PG_UP = Gauge "loopwatch_pg_up" ["target"]
        "Whether the last poll of the PostgreSQL target succeeded, sampled every interval.";
    PG_TLS = Gauge "loopwatch_pg_tls" ["target"]
        "Whether loopwatch's latest connection to the PostgreSQL target is TLS (1) or plaintext (0; sslmode=prefer fell back, or disable), sampled every interval.";
    PG_MAX_CONNECTIONS = Gauge "loopwatch_pg_max_connections" ["target"]
        "The server's max_connections, sampled every interval.";
    PG_RESERVED_CONNECTIONS = Gauge "loopwatch_pg_reserved_connections" ["target"]
        "Connections reserved for superusers (superuser_reserved_connections + reserved_connections), sampled every interval.";
    PG_LOCK_WAITERS = Gauge "loopwatch_pg_lock_waiters" ["target"]
        "Sessions waiting for a lock, sampled every interval.";
    PG_OLDEST_TRANSACTION = Gauge "loopwatch_pg_oldest_transaction_seconds" ["target"]
        "Age of the oldest open transaction (0 when none), sampled every interval.";
    PG_OLDEST_IDLE_IN_TRANSACTION = Gauge "loopwatch_pg_oldest_idle_in_transaction_seconds" ["target"]
        "How long the oldest idle-in-transaction session has been idle (0 when none), sampled every interval.";
    PG_SLOW_QUERIES = Gauge "loopwatch_pg_slow_queries" ["target"]
        "Queries running longer than slow_query_threshold, sampled every interval.";
    PG_OLDEST_QUERY = Gauge "loopwatch_pg_oldest_query_seconds" ["target"]
        "How long the longest-running active query has been running (0 when none), sampled every interval.";
    PG_OLDEST_LOCK_WAIT = Gauge "loopwatch_pg_oldest_lock_wait_seconds" ["target"]
        "How long the longest-running query that now waits for a lock has been running (0 when none), sampled every interval.";
    PG_CONNECTIONS = Gauge "loopwatch_pg_connections" ["target", "database", "user", "application_name", "state"]
        "Client connections by database, user, application_name and state (pg_stat_activity), sampled every interval.";

    // PgBouncer.
    PGBOUNCER_UP = Gauge "loopwatch_pgbouncer_up" ["target"]
        "Whether the last poll of the PgBouncer admin console succeeded, sampled every interval.";
    PGBOUNCER_TLS = Gauge "loopwatch_pgbouncer_tls" ["target"]
        "Whether loopwatch's connection to the PgBouncer admin console is TLS (1) or plaintext (0; sslmode=prefer fell back, or disable), sampled every interval.";
    PGBOUNCER_CLIENTS = Gauge "loopwatch_pgbouncer_clients" ["target", "database", "user", "state"]
        "Client connections of the pool by state, sampled every interval.";
    PGBOUNCER_SERVERS = Gauge "loopwatch_pgbouncer_servers" ["target", "database", "user", "state"]
        "Server connections of the pool by state, sampled every interval.";
    PGBOUNCER_MAX_WAIT = Gauge "loopwatch_pgbouncer_max_wait_seconds" ["target", "database", "user"]
        "How long the oldest waiting client of the pool has waited, sampled every interval.";
    PGBOUNCER_POOL_SIZE = Gauge "loopwatch_pgbouncer_pool_size" ["target", "database"]
        "Server pool size of the database, sampled every interval.";
    PGBOUNCER_RESERVE_POOL_SIZE = Gauge "loopwatch_pgbouncer_reserve_pool_size" ["target", "database"]
        "Extra server connections a pool of the database may open when clients wait longer than reserve_pool_timeout, sampled every interval.";
    PGBOUNCER_MAX_DB_CONNECTIONS = Gauge "loopwatch_pgbouncer_max_db_connections" ["target", "database"]
        "Server connections allowed to the database across its pools (0 means unlimited), sampled every interval.";
    PGBOUNCER_DATABASE_CONNECTIONS = Gauge "loopwatch_pgbouncer_database_connections" ["target", "database"]
        "Server connections open to the database, sampled every interval.";
    PGBOUNCER_CLIENT_WAIT = Counter "loopwatch_pgbouncer_client_wait_seconds_total" ["target", "database"]
        "Time clients of the database spent waiting for a server connection (SHOW STATS total_wait_time), sampled every interval.";
    PGBOUNCER_MAX_CLIENT_CONNECTIONS = Gauge "loopwatch_pgbouncer_max_client_connections" ["target"]
        "PgBouncer's max_client_conn, sampled every interval.";

    // Logs: the `logs` collector, per configured `log`.
    LOG_LINES = Counter "loopwatch_log_lines_total" ["log"]
        "Lines read from the log's files (Docker and CRI partial lines joined into one), sampled every interval.";
    LOG_READ_BYTES = Counter "loopwatch_log_read_bytes_total" ["log"]
        "Bytes read from the log's files, sampled every interval.";
    LOG_MATCHES = Counter "loopwatch_log_matches_total" ["log", "rule"]
        "Lines that matched the rule: the built-in asyncio rules and the configured ones (whose named groups are extra labels, folded into \"other\" beyond max_label_values), sampled every interval.";
    LOG_EXCEPTIONS = Counter "loopwatch_log_exceptions_total" ["log", "exception"]
        "Python tracebacks in the log, by the exception type on their last line (\"other\" beyond max_exceptions types), sampled every interval.";
    LOG_SLOW_CALLBACK = Histogram "loopwatch_log_slow_callback_seconds" ["log"]
        "Durations of asyncio's slow-callback warnings in the log (\"Executing <…> took N seconds\"), sampled every interval.";
    LOG_REPEATED = Counter "loopwatch_log_repeated_total" ["log"]
        "Lines whose normalised message (numbers, hex ids, UUIDs and quoted values masked) had already been seen repeat.threshold times in the current repeat.window: a log storm, sampled every interval.";
    LOG_FILES = Gauge "loopwatch_log_files" ["log"]
        "Files of the log being read: those matching its paths and rotated ones still drained, sampled every interval.";
    LOG_ROTATIONS = Counter "loopwatch_log_rotations_total" ["log"]
        "Files of the log that left their path (renamed away by rotation, or deleted); they are read to their end first, sampled every interval.";
    LOG_TRUNCATIONS = Counter "loopwatch_log_truncations_total" ["log"]
        "Files of the log found shorter than already read, or rewritten (copytruncate rotation, truncation); read again from their start, sampled every interval.";
    LOG_LOST_BYTES = Counter "loopwatch_log_lost_bytes_total" ["log"]
        "Bytes known to be lost: seen but not yet read when their file was truncated, or in a rotated file gone while loopwatch was down, sampled every interval.";
    LOG_LONG_LINES = Counter "loopwatch_log_long_lines_total" ["log"]
        "Lines longer than max_line_bytes, cut to that length, sampled every interval.";
    LOG_PARSE_ERRORS = Counter "loopwatch_log_parse_errors_total" ["log"]
        "Lines not valid in the log's format (Docker JSON, CRI), skipped, sampled every interval.";
    LOG_READ_ERRORS = Counter "loopwatch_log_read_errors_total" ["log", "reason"]
        "Files of the log that could not be opened or read, by reason, sampled every interval.";
    // Status and heartbeat files.
    FILE_EXISTS = Gauge "loopwatch_file_exists" ["file"]
        "Whether the file exists (1) or not (0); a declared file that is missing, or a glob that matches nothing, is 0, never absent. Sampled every interval.";
    FILE_AGE = Gauge "loopwatch_file_age_seconds" ["file"]
        "Time since the file was last modified (absent while it does not exist), sampled every interval.";
    FILE_MAX_AGE = Gauge "loopwatch_file_max_age_seconds" ["file"]
        "The age the file may reach (the target's max_age), so one alert rule compares every file with its own limit.";
    FILE_STATUS_OK = Gauge "loopwatch_file_status_ok" ["file"]
        "Whether the JSON status file's configured field holds the expected value (1) or not (0: another value, no such field, not JSON, larger than max_bytes or unreadable); only for targets with json_field. Sampled every interval.";
    FILE_GLOB_MATCHES = Gauge "loopwatch_file_glob_matches" ["file"]
        "Files the glob matches, including those beyond max_files that have no series of their own; file is the target's name. Sampled every interval.";

    // HTTP probes.
    PROBE_UP = Gauge "loopwatch_probe_up" ["probe"]
        "Whether the probe's last request got an expected status (and a body matching body_match) within its timeout (1) or not (0).";
    PROBE_DURATION = Gauge "loopwatch_probe_duration_seconds" ["probe"]
        "How long the probe's last request took, redirects included, until the answer was read or the request failed.";
    PROBE_STATUS_CODE = Gauge "loopwatch_probe_status_code" ["probe"]
        "The HTTP status of the probe's last answer (after redirects); 0 when no answer came (connection refused, timeout, TLS error).";
    PROBE_CONCURRENCY_SUCCESS_RATIO = Gauge "loopwatch_probe_concurrency_success_ratio" ["probe", "concurrency"]
        "Share of the requests of the last burst of `concurrency` simultaneous requests that succeeded as the probe defines it.";
    PROBE_CONCURRENCY_RESPONSES = Gauge "loopwatch_probe_concurrency_responses" ["probe", "concurrency", "class"]
        "Requests of the last burst of `concurrency` simultaneous requests by outcome class: 2xx, 3xx, 4xx, 5xx or error (no answer).";
    PROBE_CONCURRENCY_P95 = Gauge "loopwatch_probe_concurrency_p95_seconds" ["probe", "concurrency"]
        "The 95th percentile (nearest rank) of the request durations of the last burst of `concurrency` simultaneous requests.";

    // The exporter's own process (the standard names every exporter uses).
    SELF_CPU = Counter "process_cpu_seconds_total" [] "Total user and system CPU time spent in seconds.";
    SELF_OPEN_FDS = Gauge "process_open_fds" [] "Number of open file descriptors.";
    SELF_MAX_FDS = Gauge "process_max_fds" [] "Maximum number of open file descriptors.";
    SELF_VIRTUAL_MEMORY = Gauge "process_virtual_memory_bytes" [] "Virtual memory size in bytes.";
    SELF_RESIDENT_MEMORY = Gauge "process_resident_memory_bytes" [] "Resident memory size in bytes.";
    SELF_START_TIME = Gauge "process_start_time_seconds" [] "Start time of the process since unix epoch in seconds.";
    SELF_THREADS = Gauge "process_threads" [] "Number of OS threads in the process.";
}

/// The pool gauges in the order of a pool report: size, max, in use, waiting.
pub const POOL_GAUGES: [Family; 4] = [POOL_SIZE, POOL_MAX, POOL_IN_USE, POOL_WAITING];

/// Label names that Prometheus, Kubernetes discovery or prometheus-operator
/// attach to targets: an exported label so named would become `exported_*`.
pub const TARGET_LABELS: &[&str] = &[
    "app",
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "node",
    "cluster",
    "replica",
    "prometheus",
    "env",
    "environment",
    "region",
    "zone",
];

/// `loopwatch_log_matches_total{rule}` of the built-in asyncio rules, in
/// the order the `logs` collector keeps them.
pub const LOG_BUILTIN_RULES: [&str; 6] = [
    "asyncio_task_exception_never_retrieved",
    "asyncio_slow_callback",
    "asyncio_run_in_running_loop",
    "asyncio_task_destroyed_pending",
    "asyncio_coroutine_never_awaited",
    "nonetype_not_callable",
];

/// Buckets of `loopwatch_log_slow_callback_seconds`: asyncio warns from 100 ms on.
pub const LOG_SLOW_CALLBACK_BUCKETS: [f64; 9] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// `loopwatch_log_read_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogReadError {
    PermissionDenied,
    NotAFile,
    TooManyFiles,
    Other,
}

impl LogReadError {
    pub const ALL: [LogReadError; 4] = [
        LogReadError::PermissionDenied,
        LogReadError::NotAFile,
        LogReadError::TooManyFiles,
        LogReadError::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogReadError::PermissionDenied => "permission_denied",
            LogReadError::NotAFile => "not_a_file",
            LogReadError::TooManyFiles => "too_many_files",
            LogReadError::Other => "other",
        }
    }
}

/// `loopwatch_ingest_messages_total{transport}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Http,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Http => "http",
        }
    }
}

/// `loopwatch_ratelimit_throttled_total{kind}`: why an API refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleKind {
    Primary,
    Secondary,
}

impl ThrottleKind {
    pub const ALL: [ThrottleKind; 2] = [ThrottleKind::Primary, ThrottleKind::Secondary];

    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleKind::Primary => "primary",
            ThrottleKind::Secondary => "secondary",
        }
    }
}

/// `loopwatch_probe_concurrency_responses{class}`: how a request of a burst ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResponseClass {
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No answer: refused, timed out, reset, a TLS failure.
    Error,
}

impl ResponseClass {
    /// Every class: each burst exports all of them, 0 when none ended so.
    pub const ALL: [ResponseClass; 5] = [
        ResponseClass::Success,
        ResponseClass::Redirection,
        ResponseClass::ClientError,
        ResponseClass::ServerError,
        ResponseClass::Error,
    ];

    /// The class of a final HTTP status (anything outside 200-599 is `error`).
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirection,
            400..=499 => ResponseClass::ClientError,
            500..=599 => ResponseClass::ServerError,
            _ => ResponseClass::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Success => "2xx",
            ResponseClass::Redirection => "3xx",
            ResponseClass::ClientError => "4xx",
            ResponseClass::ServerError => "5xx",
            ResponseClass::Error => "error",
        }
    }
}

/// `loopwatch_ingest_rejected_total{reason}`: why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    Oversize,
    NotJson,
    UnknownVersion,
    UnknownType,
    Invalid,
    TooManyApps,
    TooManyLoops,
    TooManyProcesses,
    /// Claims loopwatch's own name, or a rate limit loopwatch polls itself.
    Reserved,
    /// `POST /api/v1/events` from a peer the ingest door does not admit
    /// (not loopback, and no token nor ingest listener configured).
    Forbidden,
    /// `POST /api/v1/events` without the configured ingest token, or a wrong one.
    Unauthorized,
}

impl Rejection {
    pub const ALL: [Rejection; 11] = [
        Rejection::Oversize,
        Rejection::NotJson,
        Rejection::UnknownVersion,
        Rejection::UnknownType,
        Rejection::Invalid,
        Rejection::TooManyApps,
        Rejection::TooManyLoops,
        Rejection::TooManyProcesses,
        Rejection::Reserved,
        Rejection::Forbidden,
        Rejection::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Oversize => "oversize",
            Rejection::NotJson => "not_json",
            Rejection::UnknownVersion => "unknown_version",
            Rejection::UnknownType => "unknown_type",
            Rejection::Invalid => "invalid",
            Rejection::TooManyApps => "too_many_apps",
            Rejection::TooManyLoops => "too_many_loops",
            Rejection::TooManyProcesses => "too_many_processes",
            Rejection::Reserved => "reserved",
            Rejection::Forbidden => "forbidden",
            Rejection::Unauthorized => "unauthorized",
        }
    }
}

/// `loopwatch_http_requests_rejected_total{reason}`: why the HTTP server
/// refused a request or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRejection {
    /// Basic auth missing or wrong (401).
    Unauthorized,
    /// At the connection cap: an idle connection closed to make room, or a
    /// new one refused because every open one is in use.
    TooManyConnections,
    /// A request that took longer than `web.request_timeout` (408).
    Timeout,
    /// A connection that sent no complete request headers, or no TLS
    /// handshake, within `web.read_header_timeout`.
    HeaderTimeout,
    /// A TLS handshake that failed (no or a bad client certificate, no
    /// common version).
    TlsHandshake,
    /// A request body over its limit (413).
    BodyTooLarge,
}

impl HttpRejection {
    pub const ALL: [HttpRejection; 6] = [
        HttpRejection::Unauthorized,
        HttpRejection::TooManyConnections,
        HttpRejection::Timeout,
        HttpRejection::HeaderTimeout,
        HttpRejection::TlsHandshake,
        HttpRejection::BodyTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpRejection::Unauthorized => "unauthorized",
            HttpRejection::TooManyConnections => "too_many_connections",
            HttpRejection::Timeout => "timeout",
            HttpRejection::HeaderTimeout => "header_timeout",
            HttpRejection::TlsHandshake => "tls_handshake",
            HttpRejection::BodyTooLarge => "body_too_large",
        }
    }
}

/// `loopwatch_ingest_folded_total{kind}`: which cap folded a label into `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldKind {
    Task,
    Exception,
    Site,
    Pool,
    RateLimit,
    Worker,
}

impl FoldKind {
    pub const ALL: [FoldKind; 6] = [
        FoldKind::Task,
        FoldKind::Exception,
        FoldKind::Site,
        FoldKind::Pool,
        FoldKind::RateLimit,
        FoldKind::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FoldKind::Task => "task",
            FoldKind::Exception => "exception",
            FoldKind::Site => "site",
            FoldKind::Pool => "pool",
            FoldKind::RateLimit => "ratelimit",
            FoldKind::Worker => "worker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_once_and_well_formed() {
        let mut names = std::collections::HashSet::new();
        for f in ALL {
            assert!(names.insert(f.name), "{} defined twice", f.name);
            assert!(
                f.name.starts_with("loopwatch_") || f.name.starts_with("process_"),
                "{}",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                f.name
            );
            assert!(f.help.ends_with('.'), "{}", f.name);
            // Labels Prometheus or Kubernetes discovery attach would be renamed exported_*.
            for label in f.labels {
                assert!(
                    ![
                        "app",
                        "job",
                        "instance",
                        "namespace",
                        "pod",
                        "service",
                        "cluster"
                    ]
                    .contains(label),
                    "{}: {label}",
                    f.name
                );
            }
        }
    }
}
