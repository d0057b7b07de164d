//! The whole configuration: serde structs with defaults, strict decoding, and a
//! `validate()` that reports every problem at once with its key path and the
//! line:column where it stands in the file.
//!
//! Loading is three phases, as in blackbox_exporter: defaults, then a strict
//! decode (`deny_unknown_fields`), then semantic validation. Only a
//! [`ValidConfig`] reaches the runtime.

mod locate;
pub mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use secret::Secret;

/// The configuration loopwatch runs on when no file is given: it watches its
/// own runtime and process. Printed by `loopwatch print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.yml");

/// The root of the YAML file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
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
}

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
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen_addresses: vec![":10071".to_owned()],
            telemetry_path: "/metrics".to_owned(),
            max_requests: 40,
            disable_exporter_metrics: false,
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
        }
    }
}

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
    pub dsn: String,
    /// The password, usually `${ENV_VAR}`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_db_interval", with = "humantime_serde")]
    pub interval: Duration,
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
}

/// A PgBouncer admin console (the `pgbouncer` database).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncerTargetConfig {
    /// The `target` label value.
    pub name: String,
    /// Connection string of the admin console, e.g.
    /// `host=127.0.0.1 port=6432 user=pgbouncer dbname=pgbouncer`; `${ENV}` expanded.
    pub dsn: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_db_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a connection attempt may take; default 3s (at most `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
}

/// An API whose rate limits are polled, once per token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTargetConfig {
    /// The `api` label value.
    pub name: String,
    pub kind: RateLimitKind,
    /// `github`: the API base URL (default `https://api.github.com`; GitHub
    /// Enterprise Server: `https://HOST/api/v3`). `http`: the URL to request.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_ratelimit_interval", with = "humantime_serde")]
    pub interval: Duration,
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
    #[serde(default)]
    pub remaining_header: Option<String>,
    #[serde(default)]
    pub reset_header: Option<String>,
    /// `http`: what the reset header's number means.
    #[serde(default)]
    pub reset_format: Option<ResetFormat>,
    /// `http`: the header that carries the token (default `Authorization`)
    /// and the text before it (default `Bearer `).
    #[serde(default)]
    pub token_header: Option<String>,
    #[serde(default)]
    pub token_prefix: Option<String>,
}

/// One API token: its `name` is the `token` label; the token itself appears nowhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// The token, usually `${ENV_VAR}`.
    #[serde(default)]
    pub token: Option<String>,
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

/// The connect timeout in effect: as given, else 3s but at most `timeout`.
pub fn connect_timeout(given: Option<Duration>, timeout: Duration) -> Duration {
    given.unwrap_or(Duration::from_secs(3).min(timeout))
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

fn default_process_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `processes[1].match.cmdline[0]`; empty for the file itself.
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.location {
            write!(f, "line {line}:{col}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration source.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<default>` for the embedded config.
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.source_name)?;
        }
        Ok(())
    }
}

/// A configuration that passed validation; the only kind the runtime accepts.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
}

impl ValidConfig {
    pub fn get(&self) -> &Config {
        &self.config
    }

    /// A one-line summary for `check-config` and the reload log.
    pub fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "runtime watch {}, {} process group(s), {} PostgreSQL, {} PgBouncer and {} rate-limit target(s), UDP ingest {}",
            if c.runtime.enabled { "on" } else { "off" },
            c.processes.len(),
            c.postgres.len(),
            c.pgbouncer.len(),
            c.ratelimits.len(),
            if c.ingest.udp_listen_address.is_empty() {
                "off"
            } else {
                c.ingest.udp_listen_address.as_str()
            },
        )
    }
}

/// Reads, decodes and validates a configuration file.
pub fn load_file(path: &Path) -> Result<ValidConfig, ConfigError> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: source_name.clone(),
        problems: vec![Problem {
            path: String::new(),
            location: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(&text, &source_name)
}

/// The embedded default configuration.
pub fn default_config() -> ValidConfig {
    parse(DEFAULT_CONFIG, "<default>").expect("the embedded default config is valid")
}

/// Decodes and validates configuration text; `source_name` names it in errors.
pub fn parse(text: &str, source_name: &str) -> Result<ValidConfig, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_owned(),
        problems,
    };
    let locations = locate::Locations::of(text);
    // An empty file is a valid, all-defaults config.
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let inner = e.into_inner();
                let location = inner
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .or_else(|| locations.find(&path));
                let message = clean_serde_message(&inner.to_string());
                return Err(fail(vec![Problem {
                    path,
                    location,
                    message,
                }]));
            }
        }
    };
    let problems: Vec<Problem> = validate(&config)
        .into_iter()
        .map(|(path, message)| Problem {
            location: locations.find(&path),
            path,
            message,
        })
        .collect();
    if problems.is_empty() {
        Ok(ValidConfig { config })
    } else {
        Err(fail(problems))
    }
}

/// serde_norway appends " at line L column C"; the location is printed apart.
fn clean_serde_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Label values must stay short and printable.
fn check_label_value(problems: &mut Vec<(String, String)>, path: String, value: &str) {
    if value.is_empty() {
        problems.push((path, "must not be empty".to_owned()));
    } else if value.len() > 64 || !value.chars().all(|c| c.is_ascii_graphic()) {
        problems.push((
            path,
            format!("{value:?} must be at most 64 printable ASCII characters without spaces"),
        ));
    }
}

fn check_schedule(
    problems: &mut Vec<(String, String)>,
    path: &str,
    interval: Duration,
    timeout: Duration,
) {
    if interval < Duration::from_millis(100) {
        problems.push((
            format!("{path}.interval"),
            "must be at least 100ms".to_owned(),
        ));
    }
    if timeout.is_zero() {
        problems.push((format!("{path}.timeout"), "must be above 0".to_owned()));
    } else if timeout > interval {
        problems.push((
            format!("{path}.timeout"),
            format!(
                "{} is longer than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
}

/// What the postgres and pgbouncer sections share.
struct DbTarget<'a> {
    name: &'a str,
    interval: Duration,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    /// Whether the DSN and password resolve; the message says which failed.
    resolved: Result<(), String>,
}

fn check_db_target<'a>(
    problems: &mut Vec<(String, String)>,
    seen: &mut std::collections::HashSet<&'a str>,
    path: &str,
    t: DbTarget<'a>,
) {
    check_label_value(problems, format!("{path}.name"), t.name);
    if !seen.insert(t.name) {
        problems.push((
            format!("{path}.name"),
            format!("{:?} is used by an earlier target", t.name),
        ));
    }
    check_schedule(problems, path, t.interval, t.timeout);
    if t.connect_timeout
        .is_some_and(|c| c.is_zero() || c > t.timeout)
    {
        problems.push((
            format!("{path}.connect_timeout"),
            "must be above 0 and not longer than timeout".to_owned(),
        ));
    }
    if let Err(e) = t.resolved {
        let key = if e.starts_with("dsn") {
            "dsn"
        } else {
            "password"
        };
        problems.push((format!("{path}.{key}"), e));
    }
}

/// Every semantic problem, as (key path, message).
pub fn validate(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();

    if config.web.listen_addresses.is_empty() {
        problems.push((
            "web.listen_addresses".to_owned(),
            "needs at least one address".to_owned(),
        ));
    }
    for (i, addr) in config.web.listen_addresses.iter().enumerate() {
        if let Err(e) = crate::server::parse_listen_address(addr) {
            problems.push((format!("web.listen_addresses[{i}]"), e));
        }
    }
    if !config.web.telemetry_path.starts_with('/') || config.web.telemetry_path.len() < 2 {
        problems.push((
            "web.telemetry_path".to_owned(),
            "must start with / and name a path other than /".to_owned(),
        ));
    }

    let ingest = &config.ingest;
    let udp = &ingest.udp_listen_address;
    if !udp.is_empty() {
        if let Err(e) = crate::server::parse_listen_address(udp) {
            problems.push(("ingest.udp_listen_address".to_owned(), e));
        }
    }
    if ingest.silence_timeout < Duration::from_secs(1) {
        problems.push((
            "ingest.silence_timeout".to_owned(),
            "must be at least 1s".to_owned(),
        ));
    }
    if ingest.loop_expiry < ingest.silence_timeout {
        problems.push((
            "ingest.loop_expiry".to_owned(),
            "must not be shorter than ingest.silence_timeout: an alert on a dead app would resolve when its series vanish".to_owned(),
        ));
    }
    for (key, value, max) in [
        ("max_apps", ingest.max_apps, 10_000),
        ("max_loops_per_app", ingest.max_loops_per_app, 1_000),
        ("max_tasks", ingest.max_tasks, 10_000),
        ("max_exceptions", ingest.max_exceptions, 10_000),
        ("max_sites", ingest.max_sites, 10_000),
        ("max_pools", ingest.max_pools, 1_000),
        ("max_ratelimits", ingest.max_ratelimits, 10_000),
        (
            "max_processes_per_loop",
            ingest.max_processes_per_loop,
            10_000,
        ),
        ("max_workers_per_loop", ingest.max_workers_per_loop, 1_000),
        ("max_series_per_loop", ingest.max_series_per_loop, 100_000),
        ("max_series_per_app", ingest.max_series_per_app, 1_000_000),
        ("max_series", ingest.max_series, 10_000_000),
        ("recent_stalls", ingest.recent_stalls, 1_000),
    ] {
        if value == 0 || value > max {
            problems.push((
                format!("ingest.{key}"),
                format!("must be between 1 and {max}"),
            ));
        }
    }

    let rt = &config.runtime;
    if rt.tick_interval < Duration::from_millis(10) || rt.tick_interval > Duration::from_secs(10) {
        problems.push((
            "runtime.tick_interval".to_owned(),
            "must be between 10ms and 10s".to_owned(),
        ));
    }
    if rt.stall_threshold < rt.tick_interval {
        problems.push((
            "runtime.stall_threshold".to_owned(),
            "must not be shorter than runtime.tick_interval".to_owned(),
        ));
    }
    if rt.worker_threads == 0 || rt.worker_threads > 64 {
        problems.push((
            "runtime.worker_threads".to_owned(),
            "must be between 1 and 64".to_owned(),
        ));
    }

    let mut seen = std::collections::HashSet::new();
    for (i, group) in config.processes.iter().enumerate() {
        let path = format!("processes[{i}]");
        check_label_value(&mut problems, format!("{path}.name"), &group.name);
        if !seen.insert(group.name.as_str()) {
            problems.push((
                format!("{path}.name"),
                format!("{:?} is used by an earlier group", group.name),
            ));
        }
        check_schedule(&mut problems, &path, group.interval, group.timeout);
        let m = &group.matchers;
        if m.comm.is_empty() && m.exe.is_empty() && m.cmdline.is_empty() && m.pid_file.is_none() {
            problems.push((
                format!("{path}.match"),
                "needs at least one of comm, exe, cmdline, pid_file".to_owned(),
            ));
        }
        for (j, comm) in m.comm.iter().enumerate() {
            if comm.is_empty() || comm.len() > 15 {
                problems.push((
                    format!("{path}.match.comm[{j}]"),
                    format!(
                        "{comm:?} can never match: the kernel keeps 1 to 15 bytes of a process name"
                    ),
                ));
            }
        }
        for (j, re) in m.cmdline.iter().enumerate() {
            if let Err(e) = regex::Regex::new(re) {
                let first_line = e.to_string().lines().last().unwrap_or_default().to_owned();
                problems.push((
                    format!("{path}.match.cmdline[{j}]"),
                    format!("invalid regular expression {re:?}: {first_line}"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in config.postgres.iter().enumerate() {
        let path = format!("postgres[{i}]");
        let target = DbTarget {
            name: &t.name,
            interval: t.interval,
            timeout: t.timeout,
            connect_timeout: t.connect_timeout,
            resolved: crate::collector::postgres::pg_config(t).map(|_| ()),
        };
        check_db_target(&mut problems, &mut seen, &path, target);
        if t.max_connections == 0 || t.max_connections > 10 {
            problems.push((
                format!("{path}.max_connections"),
                "must be between 1 and 10: the exporter must not become the outage".to_owned(),
            ));
        }
        if t.max_connection_series == 0 || t.max_connection_series > 10_000 {
            problems.push((
                format!("{path}.max_connection_series"),
                "must be between 1 and 10000".to_owned(),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in config.pgbouncer.iter().enumerate() {
        let target = DbTarget {
            name: &t.name,
            interval: t.interval,
            timeout: t.timeout,
            connect_timeout: t.connect_timeout,
            resolved: crate::collector::pgbouncer::pg_config(t).map(|_| ()),
        };
        check_db_target(&mut problems, &mut seen, &format!("pgbouncer[{i}]"), target);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in config.ratelimits.iter().enumerate() {
        check_ratelimit_target(&mut problems, &mut seen, &format!("ratelimits[{i}]"), t);
    }
    problems
}

fn check_ratelimit_target<'a>(
    problems: &mut Vec<(String, String)>,
    seen: &mut std::collections::HashSet<&'a str>,
    path: &str,
    t: &'a RateLimitTargetConfig,
) {
    check_label_value(problems, format!("{path}.name"), &t.name);
    if !seen.insert(&t.name) {
        problems.push((
            format!("{path}.name"),
            format!("{:?} is used by an earlier target", t.name),
        ));
    }
    check_schedule(problems, path, t.interval, t.timeout);
    match (&t.url, t.kind) {
        (None, RateLimitKind::Http) => problems.push((
            format!("{path}.url"),
            "is required for kind http".to_owned(),
        )),
        (Some(url), _) => {
            if let Err(e) = crate::collector::ratelimits::parse_url(url) {
                problems.push((format!("{path}.url"), e));
            }
        }
        (None, RateLimitKind::Github) => {}
    }
    if t.kind == RateLimitKind::Github {
        for (key, given) in [
            ("method", t.method.is_some()),
            ("resource", t.resource.is_some()),
            ("limit_header", t.limit_header.is_some()),
            ("remaining_header", t.remaining_header.is_some()),
            ("reset_header", t.reset_header.is_some()),
            ("reset_format", t.reset_format.is_some()),
            ("token_header", t.token_header.is_some()),
            ("token_prefix", t.token_prefix.is_some()),
        ] {
            if given {
                problems.push((
                    format!("{path}.{key}"),
                    "applies to kind http only".to_owned(),
                ));
            }
        }
    }
    if let Some(resource) = &t.resource {
        check_label_value(problems, format!("{path}.resource"), resource);
    }
    for (key, header) in [
        ("limit_header", &t.limit_header),
        ("remaining_header", &t.remaining_header),
        ("reset_header", &t.reset_header),
        ("token_header", &t.token_header),
    ] {
        if let Some(h) = header {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                problems.push((
                    format!("{path}.{key}"),
                    format!("{h:?} is not an HTTP header name"),
                ));
            }
        }
    }
    if let Some(ca) = &t.ca_file {
        if let Err(e) = crate::collector::ratelimits::read_ca_file(ca) {
            problems.push((format!("{path}.ca_file"), e));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (j, token) in t.tokens.iter().enumerate() {
        let tpath = format!("{path}.tokens[{j}]");
        check_label_value(problems, format!("{tpath}.name"), &token.name);
        if !names.insert(token.name.as_str()) {
            problems.push((
                format!("{tpath}.name"),
                format!("{:?} is used by an earlier token", token.name),
            ));
        }
        match secret::resolve(token.token.as_deref(), token.token_file.as_deref()) {
            Ok(Some(value)) if value.expose().is_empty() => {
                problems.push((format!("{tpath}.token"), "is empty".to_owned()))
            }
            Ok(Some(value)) => {
                if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                    problems.push((
                        format!("{tpath}.token"),
                        "contains characters an HTTP header cannot carry".to_owned(),
                    ));
                }
            }
            Ok(None) => problems.push((
                format!("{tpath}.token"),
                "give token or token_file".to_owned(),
            )),
            Err(e) => {
                let key = if token.token.is_none() {
                    "token_file"
                } else {
                    "token"
                };
                problems.push((format!("{tpath}.{key}"), e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, "test.yml")
            .expect_err("config must be rejected")
            .problems
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = default_config();
        assert!(c.get().runtime.enabled);
        assert!(c.get().processes.is_empty());
        assert_eq!(c.get().web.listen_addresses, vec![":10071"]);
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = parse("", "x").expect("empty is valid");
        assert_eq!(c.get().web.telemetry_path, "/metrics");
    }

    #[test]
    fn unknown_key_is_rejected_with_path_and_line() {
        let p = problems("runtime:\n  enabled: true\n  tick_intervall: 1s\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "runtime.tick_intervall");
        assert!(
            p[0].message.contains("unknown field `tick_intervall`"),
            "{p:?}"
        );
        assert_eq!(p[0].location.map(|l| l.0), Some(3), "{p:?}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = problems("processes:\n  - name: w\n    interval: soon\n    match: {comm: [x]}\n");
        assert_eq!(p[0].path, "processes[0].interval");
        assert_eq!(p[0].location.map(|l| l.0), Some(3), "{p:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_line() {
        let text = "\
processes:
  - name: ok
    match:
      comm: [python3]
  - name: ok
    interval: 1s
    timeout: 5s
    match:
      cmdline: ['worker(']
  - name: empty
    match: {}
";
        let p = problems(text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "processes[1].name",
                "processes[1].timeout",
                "processes[1].match.cmdline[0]",
                "processes[2].match"
            ],
            "{p:?}"
        );
        let lines: Vec<usize> = p.iter().filter_map(|p| p.location.map(|l| l.0)).collect();
        assert_eq!(lines, vec![5, 7, 9, 11], "{p:?}");
        let shown = ConfigError {
            source_name: "test.yml".into(),
            problems: p,
        }
        .to_string();
        assert!(
            shown.starts_with("test.yml: line 5:"),
            "one line per problem with file and line: {shown}"
        );
        assert_eq!(shown.lines().count(), 4);
    }

    #[test]
    fn bad_listen_address_is_named() {
        let p = problems("web:\n  listen_addresses: ['nonsense']\n");
        assert_eq!(p[0].path, "web.listen_addresses[0]");
        assert_eq!(p[0].location.map(|l| l.0), Some(2));
    }

    #[test]
    fn ratelimit_targets_are_checked_key_by_key() {
        let text = "ratelimits:
  - name: github
    kind: github
    method: HEAD
    tokens:
      - name: ci
        token: ghp_inlineSECRET
      - name: ci
        token: ${LOOPWATCH_SURELY_UNSET_VAR}
      - name: none
  - name: example
    kind: http
    remaining_header: 'bad header'
  - name: creds
    kind: http
    url: https://user:pw@api.example.com/
    interval: 1s
    timeout: 2s
";
        let p = problems(text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "ratelimits[0].method",
                "ratelimits[0].tokens[1].name",
                "ratelimits[0].tokens[1].token",
                "ratelimits[0].tokens[2].token",
                "ratelimits[1].url",
                "ratelimits[1].remaining_header",
                "ratelimits[2].timeout",
                "ratelimits[2].url",
            ],
            "{p:?}"
        );
        assert_eq!(p[0].location.map(|l| l.0), Some(4));
        assert!(!format!("{p:?}").contains("ghp_inlineSECRET"));
        let unknown = problems("ratelimits:\n  - name: g\n    kind: gitlab\n");
        assert_eq!(unknown[0].path, "ratelimits[0].kind", "{unknown:?}");

        let ok = parse(
            "ratelimits:\n  - name: github\n    kind: github\n    tokens: [{name: ci, token: t}]\n",
            "ok.yml",
        )
        .expect("valid");
        let t = &ok.get().ratelimits[0];
        assert_eq!(t.interval, Duration::from_secs(60));
        assert!(ok.summary().contains("1 rate-limit target"));
    }

    #[test]
    fn postgres_secrets_are_checked_and_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "file-secret\n").expect("write");
        let text = format!(
            "postgres:\n  - name: a\n    dsn: host=db user=${{LOOPWATCH_SURELY_UNSET_VAR}}\n  - name: b\n    dsn: host=db user=x password=inline-secret\n    password_file: {}\n  - name: c\n    dsn: 'not a dsn ==='\n",
            file.display()
        );
        let p = problems(&text);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["postgres[0].dsn", "postgres[1].password", "postgres[2].dsn"],
            "{p:?}"
        );
        assert_eq!(p[0].location.map(|l| l.0), Some(3));
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("inline-secret") && !shown.contains("file-secret"),
            "{shown}"
        );

        let ok = format!(
            "postgres:\n  - name: a\n    dsn: host=db user=x\n    password_file: {}\n",
            file.display()
        );
        let c = parse(&ok, "ok.yml").expect("valid");
        let pg = crate::collector::postgres::pg_config(&c.get().postgres[0]).expect("pg config");
        assert_eq!(pg.get_password(), Some(&b"file-secret"[..]));
        assert_eq!(pg.get_application_name(), Some("loopwatch"));
    }

    #[test]
    fn syntax_error_has_a_location() {
        let p = problems("runtime:\n  enabled: [\n");
        assert!(p[0].location.is_some(), "{p:?}");
    }
}
