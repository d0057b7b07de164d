//! The `postgres` and `pgbouncer` sections resolved: a built
//! [`tokio_postgres::Config`] per target, with `${ENV}` expanded, the
//! password read once from `password`/`password_file`, and the session
//! limits that protect the database from its monitoring.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use super::error::Problems;
use super::pgtls::{self, PgTlsError, PgWire};
use super::schema::{PgBouncerTargetConfig, PostgresTargetConfig};
use super::secret::{self, Secret, SecretError};
use super::validate::{MAX_INTERVAL, MAX_TIMEOUT, check_label_value, check_max, check_schedule};

/// A session timeout as PostgreSQL takes it: whole milliseconds, above 0
/// (0 turns the limit off), at most `MAX_TIMEOUT` — far below the
/// 2147483647 ms (INT_MAX) PostgreSQL refuses beyond, which would fail
/// every connection while `check-config` said nothing (#15).
fn check_session_timeout(problems: &mut Problems, path: String, value: Duration) {
    if value.is_zero() {
        problems.push(path, "must be above 0: 0 turns PostgreSQL's limit off");
    } else if value.subsec_nanos() % 1_000_000 != 0 {
        problems.push(
            path,
            format!(
                "{} is not a whole number of milliseconds, PostgreSQL's unit",
                humantime::format_duration(value)
            ),
        );
    } else {
        check_max(problems, path, value, MAX_TIMEOUT);
    }
}

/// A PostgreSQL server to poll.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    /// The `target` label value.
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// How long a connection attempt may take (as given, else 3s but at most `timeout`).
    pub connect_timeout: Duration,
    /// Connection settings, password included (its `Debug` redacts it).
    pub connection: tokio_postgres::Config,
    pub max_connections: usize,
    pub slow_query_threshold: Duration,
    pub max_connection_series: usize,
    /// TLS, cleartext-password and message-size settings (#15).
    pub wire: PgWire,
}

/// A PgBouncer admin console to poll.
#[derive(Debug, Clone)]
pub struct PgBouncerTarget {
    /// The `target` label value.
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Connection settings of the admin console (dbname `pgbouncer` unless given).
    pub connection: tokio_postgres::Config,
    /// TLS, cleartext-password and message-size settings (#15).
    pub wire: PgWire,
}

/// Why a target's connection settings could not be built; each names its key.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    DsnEnv(SecretError),
    /// The parser's messages never echo the DSN, so no password leaks through them.
    #[error("is not a PostgreSQL connection string: {0}")]
    DsnSyntax(tokio_postgres::Error),
    #[error("{0}")]
    Password(SecretError),
    #[error("the password is given both in the dsn and in password/password_file")]
    PasswordTwice,
    #[error("{0}")]
    Tls(PgTlsError),
    #[error("must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES}")]
    MessageBytes,
}

/// Bounds of `max_message_bytes`: a server's parameter and error messages
/// must fit; 1 GiB is PostgreSQL's own limit for a field.
const MIN_MESSAGE_BYTES: usize = 64 << 10;
const MAX_MESSAGE_BYTES: usize = 1 << 30;

impl ConnectionError {
    fn key(&self) -> &'static str {
        match self {
            ConnectionError::DsnEnv(_) | ConnectionError::DsnSyntax(_) => "dsn",
            ConnectionError::Password(e) => e.key("password", "password_file"),
            ConnectionError::PasswordTwice => "password",
            ConnectionError::Tls(_) => "dsn",
            ConnectionError::MessageBytes => "max_message_bytes",
        }
    }
}

/// The connection timeout in effect: as given, else 3s but at most `timeout`.
fn connect_timeout(given: Option<Duration>, timeout: Duration) -> Duration {
    given.unwrap_or(Duration::from_secs(3).min(timeout))
}

/// The keys both sections share that say how to reach the server.
struct Endpoint<'a> {
    dsn: &'a Secret,
    password: Option<&'a Secret>,
    password_file: Option<&'a std::path::Path>,
    allow_cleartext_password: bool,
    max_message_bytes: usize,
}

/// A connection string with `${ENV}` expanded, the password from
/// `password`/`password_file`, and its TLS keys resolved apart (loopwatch
/// negotiates TLS itself, so tokio-postgres is told `sslmode=disable`).
fn connection(e: &Endpoint<'_>) -> Result<(tokio_postgres::Config, PgWire), ConnectionError> {
    let dsn = secret::expand_env(e.dsn.expose()).map_err(ConnectionError::DsnEnv)?;
    let (dsn, tls) = pgtls::split_tls_params(&dsn);
    let mut config = tokio_postgres::Config::from_str(&dsn).map_err(ConnectionError::DsnSyntax)?;
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&e.max_message_bytes) {
        return Err(ConnectionError::MessageBytes);
    }
    let wire = pgtls::resolve_wire(&tls, e.allow_cleartext_password, e.max_message_bytes)
        .map_err(ConnectionError::Tls)?;
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (password, password_file) = (e.password, e.password_file);
    if let Some(password) =
        secret::resolve(password, password_file).map_err(ConnectionError::Password)?
    {
        if config.get_password().is_some() {
            return Err(ConnectionError::PasswordTwice);
        }
        config.password(password.expose());
    }
    config.application_name("loopwatch");
    Ok((config, wire))
}

/// The checks both sections share: name, schedule, connect timeout.
fn check_common<'a>(
    problems: &mut Problems,
    seen: &mut HashSet<&'a str>,
    path: &str,
    name: &'a str,
    (interval, timeout, connect_timeout): (Duration, Duration, Option<Duration>),
) {
    check_label_value(problems, format!("{path}.name"), name);
    if !seen.insert(name) {
        problems.push(
            format!("{path}.name"),
            format!("{name:?} is used by an earlier target"),
        );
    }
    check_schedule(problems, path, interval, timeout);
    if connect_timeout.is_some_and(|c| c.is_zero() || c > timeout) {
        problems.push(
            format!("{path}.connect_timeout"),
            "must be above 0 and not longer than timeout",
        );
    }
}

pub(super) fn resolve_postgres(
    targets: &[PostgresTargetConfig],
    problems: &mut Problems,
) -> Vec<PostgresTarget> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("postgres[{i}]");
        check_common(
            problems,
            &mut seen,
            &path,
            &t.name,
            (t.interval, t.timeout, t.connect_timeout),
        );
        let connection = connection(&Endpoint {
            dsn: &t.dsn,
            password: t.password.as_ref(),
            password_file: t.password_file.as_deref(),
            allow_cleartext_password: t.allow_cleartext_password,
            max_message_bytes: t.max_message_bytes,
        })
        .map_err(|e| problems.push(format!("{path}.{}", e.key()), e));
        if t.max_connections == 0 || t.max_connections > 10 {
            problems.push(
                format!("{path}.max_connections"),
                "must be between 1 and 10: the exporter must not become the outage",
            );
        }
        if t.max_connection_series == 0 || t.max_connection_series > 10_000 {
            problems.push(
                format!("{path}.max_connection_series"),
                "must be between 1 and 10000",
            );
        }
        let statement_timeout = t.statement_timeout.unwrap_or(t.timeout);
        if t.statement_timeout.is_some() {
            check_session_timeout(
                problems,
                format!("{path}.statement_timeout"),
                statement_timeout,
            );
        }
        check_session_timeout(problems, format!("{path}.lock_timeout"), t.lock_timeout);
        check_max(
            problems,
            format!("{path}.slow_query_threshold"),
            t.slow_query_threshold,
            MAX_INTERVAL,
        );
        let connect_timeout = connect_timeout(t.connect_timeout, t.timeout);
        if let Ok((mut connection, wire)) = connection {
            connection.connect_timeout(connect_timeout).options(format!(
                "-c statement_timeout={} -c lock_timeout={}",
                statement_timeout.as_millis(),
                t.lock_timeout.as_millis(),
            ));
            resolved.push(PostgresTarget {
                name: t.name.clone(),
                interval: t.interval,
                timeout: t.timeout,
                connect_timeout,
                connection,
                max_connections: t.max_connections,
                slow_query_threshold: t.slow_query_threshold,
                max_connection_series: t.max_connection_series,
                wire,
            });
        }
    }
    resolved
}

pub(super) fn resolve_pgbouncer(
    targets: &[PgBouncerTargetConfig],
    problems: &mut Problems,
) -> Vec<PgBouncerTarget> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("pgbouncer[{i}]");
        check_common(
            problems,
            &mut seen,
            &path,
            &t.name,
            (t.interval, t.timeout, t.connect_timeout),
        );
        match connection(&Endpoint {
            dsn: &t.dsn,
            password: t.password.as_ref(),
            password_file: t.password_file.as_deref(),
            allow_cleartext_password: t.allow_cleartext_password,
            max_message_bytes: t.max_message_bytes,
        }) {
            Ok((mut connection, wire)) => {
                if connection.get_dbname().is_none() {
                    connection.dbname("pgbouncer");
                }
                connection.connect_timeout(connect_timeout(t.connect_timeout, t.timeout));
                resolved.push(PgBouncerTarget {
                    name: t.name.clone(),
                    interval: t.interval,
                    timeout: t.timeout,
                    connection,
                    wire,
                });
            }
            Err(e) => problems.push(format!("{path}.{}", e.key()), e),
        }
    }
    resolved
}
