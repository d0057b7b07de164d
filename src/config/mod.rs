//! The whole configuration, resolved once at the edge: the YAML file is
//! decoded strictly, the command-line web flags are merged in, and
//! [`validate`](validate::validate) turns the result into a
//! [`ResolvedConfig`] — socket addresses, built PostgreSQL connection
//! settings, parsed URLs with their CA certificates, token header values —
//! or reports every problem at once, each with its key path and line:column.
//!
//! Loading is three phases, as in blackbox_exporter: defaults, then a strict
//! decode (`deny_unknown_fields`), then validation. The decode reads the
//! text under a budget and goes on past each error, so one run reports every
//! problem, unknown keys included (#15). Collectors are built from
//! a [`ResolvedConfig`] only, so no file or environment variable is read
//! twice and a reload sees one consistent set of secrets. Config sits below
//! every other module: it imports none of them.
//!
//! - `schema`: the serde structs, as written, with their defaults;
//! - `validate`: the checks and the resolution, section by section in
//!   `web`, `processes`, `postgres`, `ratelimits`, `logs`, `files`, `probes`
//!   (each beside its resolved types);
//! - `error`: [`Problem`] and [`ConfigError`]; `locate`: key path → line:column;
//! - `secret`: `${ENV}` and `*_file` secrets, and every file read bounded;
//! - `pgtls`: the TLS keys of a PostgreSQL DSN and the wire limits (#15);
//! - `yaml` and `load`: the text read under a budget (aliases, tags, depth)
//!   and decoded with every problem found in one run.

mod error;
mod files;
mod load;
mod locate;
mod logs;
mod pgtls;
mod postgres;
mod probes;
mod processes;
mod ratelimits;
mod schema;
mod secret;
mod validate;
mod web;
mod webfile;
mod yaml;

use std::net::SocketAddr;
use std::path::Path;

pub use error::{ConfigError, EXCERPT_CHARS, Problem, excerpt};
pub use files::{FileSource, FileTarget, JsonField};
pub use load::MAX_CONFIG_FILE;
pub use logs::{LogRule, LogTarget};
pub use pgtls::{ClientIdentity, PgWire, SslMode};
pub use postgres::{PgBouncerTarget, PostgresTarget};
pub use probes::{Concurrency, MAX_CONCURRENCY, MIN_CONCURRENCY_INTERVAL, ProbeTarget};
pub use processes::{ProcessGroup, ProcessMatchers};
pub use ratelimits::RateLimitTarget;
pub use schema::{
    HttpMethod, IngestConfig, LogFormat, LogRepeatConfig, RateLimitKind, RawConfig, ResetFormat,
    RuntimeConfig, StartAt,
};
pub use secret::{FileError, MAX_SECRET_FILE, Secret, read_bounded};
pub use web::{IngestDoor, Web, WebFlags, parse_http_listen_address, parse_listen_address};
pub use webfile::{BasicAuthUsers, WebSecurity, load_web_config_file};

/// The configuration loopwatch runs on when no file is given: it watches its
/// own runtime and process. Printed by `loopwatch print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.yml");

/// A configuration that passed validation, with every value resolved; the
/// only kind the runtime accepts.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub web: Web,
    /// The ingest caps; `udp_listen_address` below is its address, parsed.
    pub ingest: IngestConfig,
    /// Where UDP ingest listens; `None`: UDP ingest is off.
    pub udp_listen_address: Option<SocketAddr>,
    pub runtime: RuntimeConfig,
    pub processes: Vec<ProcessGroup>,
    pub postgres: Vec<PostgresTarget>,
    pub pgbouncer: Vec<PgBouncerTarget>,
    pub ratelimits: Vec<RateLimitTarget>,
    pub logs: Vec<LogTarget>,
    /// Who may `POST /api/v1/events`: the ingest token and listener.
    pub ingest_door: IngestDoor,
    pub files: Vec<FileTarget>,
    pub probes: Vec<ProbeTarget>,
}

impl ResolvedConfig {
    /// A one-line summary for `check-config` and the reload log.
    pub fn summary(&self) -> String {
        format!(
            "runtime watch {}, {} process group(s), {} PostgreSQL, {} PgBouncer and {} rate-limit target(s), {} log(s), {} file target(s), {} probe(s), UDP ingest {}",
            if self.runtime.enabled { "on" } else { "off" },
            self.processes.len(),
            self.postgres.len(),
            self.pgbouncer.len(),
            self.ratelimits.len(),
            self.logs.len(),
            self.files.len(),
            self.probes.len(),
            match self.udp_listen_address {
                None => "off".to_owned(),
                Some(addr) => addr.to_string(),
            },
        )
    }
}

/// Loads the file at `path`, or the embedded default when `None`, with the
/// command-line web flags merged in before validation.
pub fn load(path: Option<&Path>, flags: &WebFlags) -> Result<ResolvedConfig, ConfigError> {
    let Some(path) = path else {
        return parse(DEFAULT_CONFIG, "<default>", flags);
    };
    let source_name = path.display().to_string();
    let text = load::read_file(path).map_err(|problem| ConfigError {
        source_name: source_name.clone(),
        problems: vec![problem],
    })?;
    parse(&text, &source_name, flags)
}

/// Reads, decodes and validates a configuration file, without flags
/// (`check-config`).
pub fn load_file(path: &Path) -> Result<ResolvedConfig, ConfigError> {
    load(Some(path), &WebFlags::default())
}

/// The embedded default configuration.
pub fn default_config() -> ResolvedConfig {
    parse(DEFAULT_CONFIG, "<default>", &WebFlags::default())
        .expect("the embedded default config is valid")
}

/// Decodes and validates configuration text; `source_name` names it in errors.
pub fn parse(
    text: &str,
    source_name: &str,
    flags: &WebFlags,
) -> Result<ResolvedConfig, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_owned(),
        problems,
    };
    // Decoding problems come first, then the checks' problems on what
    // decoded (minus those in an item a decoding problem touched).
    let decoded = load::decode(text).map_err(fail)?;
    let mut problems = decoded.problems.clone();
    let mut config = decoded.config.clone();
    flags.apply(&mut config.web);
    let checked = validate::validate(&config, flags);
    if let Err(found) = &checked {
        let locations = locate::Locations::of(text);
        for mut p in found.iter().cloned() {
            if p.is_flag() {
                problems.push(p);
            } else if let Some(path) = decoded.original_path(&p.path) {
                p.location = locations.find(&path);
                p.path = path;
                problems.push(p);
            }
        }
    }
    match checked {
        Ok(resolved) if problems.is_empty() => Ok(resolved),
        _ => Err(fail(problems)),
    }
}

#[cfg(test)]
mod tests;
