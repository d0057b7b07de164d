//! PostgreSQL: who holds the connections, how close the server is to
//! `max_connections`, lock waiters, long transactions and slow queries, per
//! configured target.
//!
//! The exporter must never become the outage: it connects through a pool of
//! at most `max_connections` (default 2) with `application_name=loopwatch`, a
//! connect timeout, `statement_timeout` and `lock_timeout`; the driver runs
//! one poll at a time per target, whatever the scrape rate. A target that is
//! down exports `loopwatch_pg_up 0` alone: no zeros that read as idle.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{BoxFuture, Built, CollectError, Job, Periodic, Reason};
use crate::config::PostgresTargetConfig;
use crate::config::secret;
use crate::metrics::{Families, FamilyBuilder};

/// `{database, user, application_name}` beyond the cap fold into this.
const OTHER: &str = "other";

pub fn build(targets: &[PostgresTargetConfig]) -> Vec<Built> {
    targets
        .iter()
        .map(|t| Built {
            kind: "postgres",
            target: t.name.clone(),
            job: Job::Periodic {
                interval: t.interval,
                timeout: t.timeout,
                collector: Box::new(match pg_config(t) {
                    Ok(config) => PostgresTarget::new(t, config),
                    Err(message) => PostgresTarget::broken(t, message),
                }),
            },
        })
        .collect()
}

/// A connection string with `${ENV}` expanded and the password from
/// `password`/`password_file`; shared with the pgbouncer collector. The
/// parser's messages never echo the DSN, so no password leaks through them.
pub fn connection(
    dsn: &str,
    password: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<tokio_postgres::Config, String> {
    let dsn = secret::expand_env(dsn).map_err(|e| format!("dsn {e}"))?;
    let mut config = tokio_postgres::Config::from_str(&dsn)
        .map_err(|e| format!("dsn is not a PostgreSQL connection string: {e}"))?;
    if let Some(password) = secret::resolve(password, password_file)? {
        if config.get_password().is_some() {
            return Err(
                "the password is given both in the dsn and in password/password_file".into(),
            );
        }
        config.password(password.expose());
    }
    config.application_name("loopwatch");
    Ok(config)
}

/// The connection settings of a target, with the session limits that
/// protect the database from its monitoring.
pub fn pg_config(t: &PostgresTargetConfig) -> Result<tokio_postgres::Config, String> {
    let mut config = connection(&t.dsn, t.password.as_deref(), t.password_file.as_deref())?;
    let statement_timeout = t.statement_timeout.unwrap_or(t.timeout);
    config
        .connect_timeout(crate::config::connect_timeout(t.connect_timeout, t.timeout))
        .options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            statement_timeout.as_millis(),
            t.lock_timeout.as_millis(),
        ));
    Ok(config)
}

struct PostgresTarget {
    name: String,
    /// `None` when the target's settings could not be resolved.
    pool: Result<Pool, String>,
    slow_query_threshold: Duration,
    max_connection_series: usize,
}

impl PostgresTarget {
    fn new(t: &PostgresTargetConfig, config: tokio_postgres::Config) -> Self {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(t.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(t.timeout))
            .create_timeout(Some(crate::config::connect_timeout(
                t.connect_timeout,
                t.timeout,
            )))
            .recycle_timeout(Some(crate::config::connect_timeout(
                t.connect_timeout,
                t.timeout,
            )))
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"));
        Self {
            name: t.name.clone(),
            pool,
            slow_query_threshold: t.slow_query_threshold,
            max_connection_series: t.max_connection_series,
        }
    }

    fn broken(t: &PostgresTargetConfig, message: String) -> Self {
        Self {
            name: t.name.clone(),
            pool: Err(message),
            slow_query_threshold: t.slow_query_threshold,
            max_connection_series: t.max_connection_series,
        }
    }

    /// loopwatch's own pool as `loopwatch_pool_*{app_name="loopwatch", pool=<target>}`.
    fn pool_families(&self, b: &mut FamilyBuilder) {
        let Ok(pool) = &self.pool else { return };
        let s = pool.status();
        let labels = [crate::families::RESERVED_APP, self.name.as_str()];
        let values = [
            s.size,
            s.max_size,
            s.size.saturating_sub(s.available),
            s.waiting,
        ];
        for (family, value) in crate::families::POOL_GAUGES.iter().zip(values) {
            b.gauge(family, &labels, value as f64);
        }
    }

    fn up(&self, b: &mut FamilyBuilder, up: bool) {
        b.gauge_named(
            "loopwatch_pg_up",
            "Whether the last poll of the PostgreSQL target succeeded, sampled every interval.",
            &[("target", &self.name)],
            if up { 1.0 } else { 0.0 },
        );
    }
}

/// Maps a failure to a bounded reason, keeping the server's words (which
/// never include the password).
pub fn classify(e: &tokio_postgres::Error) -> CollectError {
    let code = e.code();
    let reason = if code == Some(&SqlState::INVALID_PASSWORD)
        || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    {
        Reason::Auth
    } else if code == Some(&SqlState::QUERY_CANCELED) || code == Some(&SqlState::LOCK_NOT_AVAILABLE)
    {
        Reason::Timeout
    } else if e.as_db_error().is_none() {
        Reason::Connect
    } else {
        Reason::Other
    };
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            // Include the I/O cause ("Connection refused") that Display leaves out.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    CollectError::new(reason, message)
}

fn pool_error(e: PoolError) -> CollectError {
    match e {
        PoolError::Backend(e) => classify(&e),
        PoolError::Timeout(kind) => CollectError::new(
            Reason::Timeout,
            format!("no connection within the timeout ({kind:?})"),
        ),
        other => CollectError::new(Reason::Other, other.to_string()),
    }
}

/// One statement: the settings and every aggregate of `pg_stat_activity`
/// that is not by label, so a poll is two round trips.
const SUMMARY_SQL: &str = "
SELECT current_setting('max_connections')::float8,
       current_setting('superuser_reserved_connections')::float8
         + coalesce(current_setting('reserved_connections', true), '0')::float8,
       count(*) FILTER (WHERE wait_event_type = 'Lock')::float8,
       coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8,
       coalesce(extract(epoch FROM max(now() - state_change)
         FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8,
       count(*) FILTER (WHERE state = 'active' AND now() - query_start > make_interval(secs => $1))::float8,
       coalesce(extract(epoch FROM max(now() - query_start) FILTER (WHERE state = 'active')), 0)::float8,
       coalesce(extract(epoch FROM max(now() - query_start) FILTER (WHERE wait_event_type = 'Lock')), 0)::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

const CONNECTIONS_SQL: &str = "
SELECT coalesce(datname, ''), coalesce(usename, ''), coalesce(application_name, ''),
       coalesce(state, 'unknown'), count(*)::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3, 4
ORDER BY 5 DESC";

impl Periodic for PostgresTarget {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let pool = self
                .pool
                .as_ref()
                .map_err(|e| CollectError::new(Reason::Other, e.clone()))?;
            let client = pool.get().await.map_err(pool_error)?;
            let threshold = self.slow_query_threshold.as_secs_f64();
            let summary = client
                .query_one(SUMMARY_SQL, &[&threshold])
                .await
                .map_err(|e| classify(&e))?;
            let rows = client
                .query(CONNECTIONS_SQL, &[])
                .await
                .map_err(|e| classify(&e))?;
            drop(client);

            let mut b = FamilyBuilder::default();
            self.up(&mut b, true);
            let target = [("target", self.name.as_str())];
            let value = |i: usize| -> f64 { summary.get::<_, f64>(i) };
            for (i, name, help) in [
                (
                    0,
                    "loopwatch_pg_max_connections",
                    "The server's max_connections, sampled every interval.",
                ),
                (
                    1,
                    "loopwatch_pg_reserved_connections",
                    "Connections reserved for superusers (superuser_reserved_connections + reserved_connections), sampled every interval.",
                ),
                (
                    2,
                    "loopwatch_pg_lock_waiters",
                    "Sessions waiting for a lock, sampled every interval.",
                ),
                (
                    3,
                    "loopwatch_pg_oldest_transaction_seconds",
                    "Age of the oldest open transaction (0 when none), sampled every interval.",
                ),
                (
                    4,
                    "loopwatch_pg_oldest_idle_in_transaction_seconds",
                    "How long the oldest idle-in-transaction session has been idle (0 when none), sampled every interval.",
                ),
                (
                    5,
                    "loopwatch_pg_slow_queries",
                    "Queries running longer than slow_query_threshold, sampled every interval.",
                ),
                (
                    6,
                    "loopwatch_pg_oldest_query_seconds",
                    "How long the longest-running active query has been running (0 when none), sampled every interval.",
                ),
                (
                    7,
                    "loopwatch_pg_oldest_lock_wait_seconds",
                    "How long the longest-running query that now waits for a lock has been running (0 when none), sampled every interval.",
                ),
            ] {
                b.gauge_named(name, help, &target, value(i));
            }

            // Bounded: the largest label sets keep their names, the rest fold.
            let mut counts: BTreeMap<[String; 4], f64> = BTreeMap::new();
            for (i, row) in rows.iter().enumerate() {
                let state: String = row.get(3);
                let key = if i < self.max_connection_series {
                    [row.get(0), row.get(1), row.get(2), state]
                } else {
                    [OTHER.into(), OTHER.into(), OTHER.into(), state]
                };
                *counts.entry(key).or_default() += row.get::<_, f64>(4);
            }
            for ([database, user, application, state], n) in &counts {
                b.gauge_named(
                    "loopwatch_pg_connections",
                    "Client connections by database, user, application_name and state (pg_stat_activity), sampled every interval.",
                    &[
                        ("target", self.name.as_str()),
                        ("database", database),
                        ("user", user),
                        ("application_name", application),
                        ("state", state),
                    ],
                    *n,
                );
            }
            self.pool_families(&mut b);
            Ok(b.finish())
        })
    }

    fn down(&self) -> Families {
        let mut b = FamilyBuilder::default();
        self.up(&mut b, false);
        self.pool_families(&mut b);
        b.finish()
    }
}
