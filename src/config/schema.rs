//! The configuration file as written: serde structs with their defaults,
//! decoded strictly (`deny_unknown_fields`). Nothing here is resolved: the
//! [`super::validate`] phase turns these into the types collectors take.
//! Secrets (`dsn`, `password`, `token`) are [`Secret`]s, whose `Debug` prints
//! nothing of them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;

/// The root of the YAML file, as written. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// HTTP server settings; command-line flags override them.
    pub web: WebConfig,
    /// Apps' reports over the client protocol (docs/protocol.md).
    pub ingest: IngestConfig,
    /// The lag ticker on loopwatch's own tokio runtime.
    pub runtime: RuntimeConfig,
    /// Process groups to watch.
    pub processes: Vec<ProcessGroupConfig>,
    /// PostgreSQL servers to watch.
    pub postgres: Vec<PostgresTargetConfig>,
    /// PgBouncer admin consoles to watch.
    pub pgbouncer: Vec<PgBouncerTargetConfig>,
    /// API rate limits to poll.
    pub ratelimits: Vec<RateLimitTargetConfig>,
    /// Status and heartbeat files (or globs) whose age is watched.
    pub files: Vec<FileTargetConfig>,
    /// HTTP(S) endpoints probed, optionally with concurrent bursts.
    pub probes: Vec<ProbeTargetConfig>,
    /// Log files to tail and match.
    pub logs: Vec<LogTargetConfig>,
}

/// The HTTP server; command-line flags override each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Addresses to serve HTTP on (`:10071`, `[::]:10071`, `127.0.0.1:10071`).
    pub listen_addresses: Vec<String>,
    /// Path of the metrics endpoint.
    pub telemetry_path: String,
    /// Concurrent scrapes served at most; more get 503. 0 means no limit.
    pub max_requests: usize,
    /// Leave out the exporter's own `process_*` metrics.
    pub disable_exporter_metrics: bool,
    /// Open HTTP connections at most (all listeners together); more are
    /// closed at once and counted. 0: the open-file limit less a reserve,
    /// at most 10000.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers, from the connection's
    /// start or the end of the previous response (also the keep-alive idle
    /// timeout, and the TLS handshake's limit).
    #[serde(with = "humantime_serde")]
    pub read_header_timeout: Duration,
    /// Time a request may take from its headers to its response (body upload
    /// included); slower ones get 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen_addresses: vec![":10071".to_owned()],
            telemetry_path: "/metrics".to_owned(),
            max_requests: 40,
            disable_exporter_metrics: false,
            max_connections: 0,
            read_header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Caps keep every label bounded whatever apps send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// UDP address apps send datagrams to; empty disables UDP ingest
    /// (`POST /api/v1/events` stays available).
    pub udp_listen_address: String,
    /// Silence after which a loop that did not say bye is down.
    #[serde(with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// How long a down or stopped loop keeps its series.
    #[serde(with = "humantime_serde")]
    pub loop_expiry: Duration,
    /// Apps tracked at most; messages from more are rejected.
    pub max_apps: usize,
    /// Loops per app at most; messages for more are rejected.
    pub max_loops_per_app: usize,
    /// Task names per loop at most; more fold into `other`.
    pub max_tasks: usize,
    /// Exception types per loop at most; more fold into `other`.
    pub max_exceptions: usize,
    /// Blocking sites per loop at most; more fold into `other`.
    pub max_sites: usize,
    /// Pools per app at most; more fold into `other`.
    pub max_pools: usize,
    /// `{api, resource, token}` triples reported by apps at most; more fold into `other`.
    pub max_ratelimits: usize,
    /// Processes per loop at most (an app's workers, live or recently
    /// dead); messages from more are rejected.
    pub max_processes_per_loop: usize,
    /// Worker ids per loop at most, for per-worker series; more fold into `other`.
    pub max_workers_per_loop: usize,
    /// Series that one loop's labels (task failures, cancellations, sites,
    /// workers) may add at most; more fold into `other`.
    pub max_series_per_loop: usize,
    /// Series that one app may add at most (its loops and pools).
    pub max_series_per_app: usize,
    /// Series that all apps' reports may add to `/metrics` at most.
    pub max_series: usize,
    /// Stalls kept per loop for `GET /api/v1/loops`.
    pub recent_stalls: usize,
    /// Bearer token `POST /api/v1/events` must carry (`Authorization: Bearer
    /// …`), usually `${ENV_VAR}`; with it, any peer with the token may post.
    /// Without a token and an ingest listener, only loopback peers may post.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the ingest token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A separate plain-HTTP listener for `POST /api/v1/events` only, which
    /// accepts any peer (with the token, when one is set); empty: none.
    pub http_listen_address: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            udp_listen_address: "127.0.0.1:10071".to_owned(),
            silence_timeout: Duration::from_secs(30),
            loop_expiry: Duration::from_secs(3600),
            max_apps: 50,
            max_loops_per_app: 16,
            max_tasks: 100,
            max_exceptions: 50,
            max_sites: 50,
            max_pools: 16,
            max_ratelimits: 100,
            max_processes_per_loop: 256,
            max_workers_per_loop: 64,
            max_series_per_loop: 500,
            max_series_per_app: 5_000,
            max_series: 50_000,
            recent_stalls: 10,
            token: None,
            token_file: None,
            http_listen_address: String::new(),
        }
    }
}

/// The lag ticker on loopwatch's own collector runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Watch loopwatch's own collector runtime.
    pub enabled: bool,
    /// How often the lag ticker wakes up.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    /// A tick later than this counts as a stall.
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// Worker threads of the collector runtime.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_interval: Duration::from_millis(100),
            stall_threshold: Duration::from_millis(500),
            worker_threads: 2,
        }
    }
}

/// A named group of processes. A process belongs to the group when it matches
/// every matcher kind given (any entry within a kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessGroupConfig {
    /// The `group` label value.
    pub name: String,
    /// How often the group is sampled.
    #[serde(default = "default_process_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one sample may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The matchers.
    #[serde(rename = "match")]
    pub matchers: ProcessMatchConfig,
}

/// What a process must match to belong to a group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessMatchConfig {
    /// Exact process names as in `/proc/PID/comm` (at most 15 characters).
    pub comm: Vec<String>,
    /// Executable paths (a bare name matches the basename).
    pub exe: Vec<String>,
    /// Regular expressions searched in the command line (arguments joined by spaces).
    pub cmdline: Vec<String>,
    /// A file holding the PID of the one process of the group.
    pub pid_file: Option<PathBuf>,
}

/// A PostgreSQL server. The password never appears in metrics, labels, logs
/// or the landing page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTargetConfig {
    /// The `target` label value.
    pub name: String,
    /// libpq connection string (`host=… port=… user=… dbname=…` or a
    /// `postgres://` URL); `${ENV}` references are expanded.
    pub dsn: Secret,
    /// The password, usually `${ENV_VAR}`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often the server is polled.
    #[serde(default = "default_db_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one poll may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a connection attempt may take; default 3s (at most `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// `statement_timeout` of loopwatch's sessions; defaults to `timeout`.
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// `lock_timeout` of loopwatch's sessions.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Connections loopwatch opens to this server at most.
    #[serde(default = "default_pg_max_connections")]
    pub max_connections: usize,
    /// Queries running longer than this count in `loopwatch_pg_slow_queries`.
    #[serde(default = "default_slow_query_threshold", with = "humantime_serde")]
    pub slow_query_threshold: Duration,
    /// `{database, user, application_name, state}` series at most; the rest fold into `other`.
    #[serde(default = "default_max_connection_series")]
    pub max_connection_series: usize,
    /// Send the password in cleartext when the server asks for it
    /// (`AuthenticationCleartextPassword`); refused by default unless the
    /// session is TLS with a verified certificate (`verify-ca`/`verify-full`).
    #[serde(default)]
    pub allow_cleartext_password: bool,
    /// The largest message the server may send, in bytes; a larger one
    /// fails the connection before anything is allocated for it.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// A PgBouncer admin console (the `pgbouncer` database).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncerTargetConfig {
    /// The `target` label value.
    pub name: String,
    /// Connection string of the admin console, e.g.
    /// `host=127.0.0.1 port=6432 user=pgbouncer dbname=pgbouncer`; `${ENV}` expanded.
    pub dsn: Secret,
    /// The password, usually `${ENV_VAR}`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often the console is polled.
    #[serde(default = "default_db_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one poll may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a connection attempt may take; default 3s (at most `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Send the password in cleartext when the server asks for it
    /// (`AuthenticationCleartextPassword`); refused by default unless the
    /// session is TLS with a verified certificate (`verify-ca`/`verify-full`).
    #[serde(default)]
    pub allow_cleartext_password: bool,
    /// The largest message the server may send, in bytes; a larger one
    /// fails the connection before anything is allocated for it.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// How a rate-limit target is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKind {
    /// GitHub's `GET /rate_limit`, which costs no budget: every resource.
    Github,
    /// Any API that answers with rate-limit headers.
    Http,
}

/// What a reset header's number means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetFormat {
    /// Above 10^9 a Unix time, else seconds from now.
    #[default]
    Auto,
    /// A Unix time in seconds.
    Epoch,
    /// Seconds from now.
    Seconds,
}

/// The request method of an `http` rate-limit target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`.
    #[default]
    Get,
    /// `HEAD`: the headers without a body.
    Head,
}

/// An API whose rate limits are polled, once per token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTargetConfig {
    /// The `api` label value.
    pub name: String,
    /// How the limits are read.
    pub kind: RateLimitKind,
    /// `github`: the API base URL (default `https://api.github.com`; GitHub
    /// Enterprise Server: `https://HOST/api/v3`). `http`: the URL to request.
    #[serde(default)]
    pub url: Option<String>,
    /// How often each token's budget is polled.
    #[serde(default = "default_ratelimit_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one request may take.
    #[serde(default = "default_ratelimit_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Tokens to poll with, each its own budget; none means one anonymous poll.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// PEM file of extra CA certificates (an Enterprise Server's own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `http`: the request method.
    #[serde(default)]
    pub method: Option<HttpMethod>,
    /// `http`: the `resource` label; default `X-RateLimit-Resource`, else `default`.
    #[serde(default)]
    pub resource: Option<String>,
    /// `http`: header names, when the API uses its own; default: the
    /// `RateLimit-*`, `X-RateLimit-*` and `X-Rate-Limit-*` forms.
    #[serde(default)]
    pub limit_header: Option<String>,
    /// `http`: the header with the requests left.
    #[serde(default)]
    pub remaining_header: Option<String>,
    /// `http`: the header with the reset time.
    #[serde(default)]
    pub reset_header: Option<String>,
    /// `http`: what the reset header's number means.
    #[serde(default)]
    pub reset_format: Option<ResetFormat>,
    /// `http`: the header that carries the token (default `Authorization`)
    /// and the text before it (default `Bearer `).
    #[serde(default)]
    pub token_header: Option<String>,
    /// `http`: the text sent before the token (default `Bearer `).
    #[serde(default)]
    pub token_prefix: Option<String>,
}

/// One API token: its `name` is the `token` label; the token itself appears nowhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The `token` label value.
    pub name: String,
    /// The token, usually `${ENV_VAR}`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// GitHub's `/rate_limit` costs nothing, but a minute is plenty for budgets
/// that reset hourly, and an `http` poll may cost a request.
fn default_ratelimit_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_ratelimit_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_db_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_pg_max_connections() -> usize {
    2
}

fn default_slow_query_threshold() -> Duration {
    Duration::from_secs(2)
}

fn default_max_connection_series() -> usize {
    200
}

fn default_max_message_bytes() -> usize {
    super::pgtls::DEFAULT_MAX_MESSAGE_BYTES
}

fn default_process_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// How the lines of a tailed log are framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One message per line.
    #[default]
    Plain,
    /// Docker's `json-file` driver: `{"log":"…\n","stream":"stderr","time":"…"}`,
    /// lines split by Docker (no trailing newline) joined again.
    Docker,
    /// Kubernetes CRI (`/var/log/pods`): `<time> <stream> <P|F> <message>`,
    /// `P` (partial) lines joined up to the next `F`.
    Cri,
}

/// Where a file seen for the first time is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only what is written after loopwatch starts.
    #[default]
    End,
    /// The whole file.
    Beginning,
}

/// A log to tail: files and globs read as one stream of lines, counted as `log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogTargetConfig {
    /// The `log` label value.
    pub name: String,
    /// Files and globs (`*`, `?`, `[…]` within a path component); files that
    /// start to match are picked up at each poll and read from their start.
    pub paths: Vec<String>,
    /// How lines are framed: `plain`, `docker` or `cri`.
    #[serde(default)]
    pub format: LogFormat,
    /// Where files present at startup and unknown to the state file are read
    /// from: `end` (default) or `beginning`.
    #[serde(default)]
    pub start_at: StartAt,
    /// A file where read positions are kept across restarts, so that no
    /// line is counted twice or skipped; written after each poll that read.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Match the built-in asyncio rules and Python tracebacks.
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    /// Your own rules.
    #[serde(default)]
    pub rules: Vec<LogRuleConfig>,
    /// The repetition (log storm) detector.
    #[serde(default)]
    pub repeat: LogRepeatConfig,
    /// Exception types from tracebacks kept apart at most; more fold into `other`.
    #[serde(default = "default_log_max_exceptions")]
    pub max_exceptions: usize,
    /// Bytes of one line kept at most; longer lines are cut and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Bytes read from one file per poll at most; the rest waits for the next poll.
    #[serde(default = "default_max_read_bytes")]
    pub max_read_bytes: usize,
    /// Files read at once at most (matching files and rotated ones still
    /// read); files beyond it wait and count as `too_many_files` errors.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// How long a file renamed away (rotated) is still read after it stopped
    /// growing: the writer may not have reopened the new file yet.
    #[serde(default = "default_rotate_wait", with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// How often the files are read.
    #[serde(default = "default_log_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one read of all files may take.
    #[serde(default = "default_log_interval", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A user rule: lines matching `regex` count in
/// `loopwatch_log_matches_total{log, rule}`, with the named groups as labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRuleConfig {
    /// The `rule` label value.
    pub name: String,
    /// A regular expression (Rust `regex` syntax) searched in each line;
    /// its named groups `(?P<api>…)` become labels.
    pub regex: String,
    /// Distinct label value combinations kept apart at most; more fold into `other`.
    #[serde(default = "default_max_label_values")]
    pub max_label_values: usize,
}

/// The same message (numbers, hex ids, UUIDs and quoted values masked) seen
/// more than `threshold` times within `window` is a log storm: each further
/// line counts in `loopwatch_log_repeated_total`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogRepeatConfig {
    /// The window the repetitions are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Repetitions within a window allowed before lines count as repeated.
    pub threshold: u64,
    /// Distinct messages tracked per window at most.
    pub max_messages: usize,
}

impl Default for LogRepeatConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            threshold: 100,
            max_messages: 10_000,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_log_max_exceptions() -> usize {
    50
}

fn default_max_line_bytes() -> usize {
    16 * 1024
}

fn default_max_read_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_max_files() -> usize {
    1_000
}

fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}

fn default_log_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_label_values() -> usize {
    20
}

/// A status or heartbeat file, or a glob of them, whose age is watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetConfig {
    /// The `file` label value (a glob's matches are `<name>/<path below the
    /// glob's fixed directory>`); no `/` in it.
    pub name: String,
    /// A file, or a glob (`*`, `?`, `[…]`) matching files.
    pub path: String,
    /// The age the file may reach; exported as `loopwatch_file_max_age_seconds`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often the file is checked.
    #[serde(default = "default_file_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A glob's matches exported at most (the first by path); every match
    /// counts in `loopwatch_file_glob_matches`.
    #[serde(default = "default_max_glob_files")]
    pub max_files: usize,
    /// A field of a JSON status file that must hold a value.
    #[serde(default)]
    pub json_field: Option<JsonFieldConfig>,
}

/// A field of a JSON status file and the value it must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFieldConfig {
    /// The field's key; dots go down into objects (`worker.state`).
    pub key: String,
    /// The value that means healthy (a string, number or boolean).
    pub expected: serde_json::Value,
    /// The file is read this far at most; a larger file is not ok.
    #[serde(default = "default_max_json_bytes")]
    pub max_bytes: usize,
}

/// An HTTP(S) endpoint probed every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeTargetConfig {
    /// The `probe` label value.
    pub name: String,
    /// The URL requested; no credentials in it (give them as headers).
    pub url: String,
    /// The request method.
    #[serde(default = "default_probe_method")]
    pub method: String,
    /// Request headers; every value is treated as a secret.
    #[serde(default)]
    pub headers: Vec<ProbeHeaderConfig>,
    /// Statuses that mean up: numbers, ranges `"200-299"` or classes `"2xx"`.
    #[serde(default = "default_expected_status")]
    pub expected_status: Vec<StatusSpec>,
    /// How often the endpoint is probed.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one request (with its redirects) may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A regular expression the body must match for the probe to be up.
    #[serde(default)]
    pub body_match: Option<String>,
    /// The body is read this far at most for `body_match`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Redirects followed at most; 0 follows none.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// TLS settings for `https` URLs.
    #[serde(default)]
    pub tls: ProbeTlsConfig,
    /// A concurrency probe: simultaneous requests now and then.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyConfig>,
}

/// One request header of a probe. Its value is a secret: it never appears
/// in metrics, logs or the landing page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeaderConfig {
    /// The header name.
    pub name: String,
    /// The value; `${ENV}` references are expanded.
    #[serde(default)]
    pub value: Option<Secret>,
    /// A file holding the value.
    #[serde(default)]
    pub value_file: Option<PathBuf>,
}

/// An expected status: a number, `"200-299"` or `"2xx"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One status.
    Code(u16),
    /// A range or a class.
    Text(String),
}

/// TLS settings of a probe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeTlsConfig {
    /// PEM file of extra CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (a self-signed endpoint): the probe then
    /// checks availability, not identity.
    pub insecure_skip_verify: bool,
}

/// A concurrency probe: bursts of simultaneous requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Run the bursts.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Requests sent at once, one burst per level (at most 50 each).
    #[serde(default = "default_concurrency_levels")]
    pub levels: Vec<usize>,
    /// One round of bursts per interval at most (at least 30s).
    #[serde(default = "default_concurrency_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_file_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_max_glob_files() -> usize {
    100
}

fn default_max_json_bytes() -> usize {
    64 * 1024
}

fn default_probe_method() -> String {
    "GET".to_owned()
}

fn default_expected_status() -> Vec<StatusSpec> {
    vec![StatusSpec::Text("200-299".to_owned())]
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_max_redirects() -> usize {
    5
}

fn default_concurrency_levels() -> Vec<usize> {
    vec![5, 10]
}

fn default_concurrency_interval() -> Duration {
    Duration::from_secs(60)
}
