//! The whole configuration, resolved once at the edge: the YAML file is
//! decoded strictly, the command-line web flags are merged in, and
//! [`validate`](validate::validate) turns the result into a
//! [`ResolvedConfig`] — socket addresses, built PostgreSQL connection
//! settings, parsed URLs with their CA certificates, token header values —
//! or reports every problem at once, each with its key path and line:column.
//!
//! Loading is three phases, as in blackbox_exporter: defaults, then a strict
//! decode (`deny_unknown_fields`), then validation. Collectors are built from
//! a [`ResolvedConfig`] only, so no file or environment variable is read
//! twice and a reload sees one consistent set of secrets. Config sits below
//! every other module: it imports none of them.
//!
//! - `schema`: the serde structs, as written, with their defaults;
//! - `validate`: the checks and the resolution, section by section in
//!   `web`, `processes`, `postgres`, `ratelimits`, `files`, `probes` (each
//!   beside its resolved types);
//! - `error`: [`Problem`] and [`ConfigError`]; `locate`: key path → line:column;
//! - `secret`: `${ENV}` and `*_file` secrets.

mod error;
mod files;
mod locate;
mod postgres;
mod probes;
mod processes;
mod ratelimits;
mod schema;
mod secret;
mod validate;
mod web;

use std::net::SocketAddr;
use std::path::Path;

pub use error::{ConfigError, Problem};
pub use files::{FileSource, FileTarget, JsonField};
pub use postgres::{PgBouncerTarget, PostgresTarget};
pub use probes::{Concurrency, MAX_CONCURRENCY, MIN_CONCURRENCY_INTERVAL, ProbeTarget};
pub use processes::{ProcessGroup, ProcessMatchers};
pub use ratelimits::RateLimitTarget;
pub use schema::{HttpMethod, IngestConfig, RateLimitKind, RawConfig, ResetFormat, RuntimeConfig};
pub use web::{Web, WebFlags, parse_listen_address};

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
    pub files: Vec<FileTarget>,
    pub probes: Vec<ProbeTarget>,
}

impl ResolvedConfig {
    /// A one-line summary for `check-config` and the reload log.
    pub fn summary(&self) -> String {
        format!(
            "runtime watch {}, {} process group(s), {} PostgreSQL, {} PgBouncer and {} rate-limit target(s), {} file target(s), {} probe(s), UDP ingest {}",
            if self.runtime.enabled { "on" } else { "off" },
            self.processes.len(),
            self.postgres.len(),
            self.pgbouncer.len(),
            self.ratelimits.len(),
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
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: source_name.clone(),
        problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
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
    let locations = locate::Locations::of(text);
    // An empty file is a valid, all-defaults config.
    let mut config: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
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
    flags.apply(&mut config.web);
    validate::validate(&config, flags).map_err(|problems| {
        fail(
            problems
                .into_iter()
                .map(|mut p| {
                    if !p.is_flag() {
                        p.location = locations.find(&p.path);
                    }
                    p
                })
                .collect(),
        )
    })
}

/// serde_norway appends " at line L column C"; the location is printed apart.
fn clean_serde_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
