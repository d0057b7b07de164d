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
use std::time::Duration;

use std::sync::Arc;

use deadpool_postgres::{
    Connect, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;

use super::pgwire::{self, Connector, TlsState};

use super::{BoxFuture, BuildError, Built, CollectError, Job, Periodic, Reason};
use crate::config::PostgresTarget;
use crate::error::Chain;
use crate::families::{self, OTHER, POOL_GAUGES, RESERVED_APP};
use crate::metrics::{Families, FamilyBuilder};

pub fn build(targets: &[PostgresTarget]) -> Result<Vec<Built>, BuildError> {
    targets
        .iter()
        .map(|t| {
            Ok(Built {
                kind: "postgres",
                target: t.name.clone(),
                job: Job::Periodic {
                    interval: t.interval,
                    timeout: t.timeout,
                    collector: Box::new(PostgresPoller::new(t)?),
                },
            })
        })
        .collect()
}

struct PostgresPoller {
    name: String,
    pool: Pool,
    tls: Arc<TlsState>,
    slow_query_threshold: Duration,
    max_connection_series: usize,
}

impl PostgresPoller {
    fn new(t: &PostgresTarget) -> Result<Self, BuildError> {
        let connector = Connector::new(&t.wire).map_err(|source| BuildError::Tls {
            kind: "postgres",
            target: t.name.clone(),
            source,
        })?;
        let tls = connector.state.clone();
        let manager = Manager::from_connect(
            t.connection.clone(),
            PoolConnect(connector),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(t.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(t.timeout))
            .create_timeout(Some(t.connect_timeout))
            .recycle_timeout(Some(t.connect_timeout))
            .build()
            .map_err(|source| BuildError::Pool {
                target: t.name.clone(),
                source,
            })?;
        Ok(Self {
            name: t.name.clone(),
            pool,
            tls,
            slow_query_threshold: t.slow_query_threshold,
            max_connection_series: t.max_connection_series,
        })
    }

    /// loopwatch's own pool as `loopwatch_pool_*{app_name="loopwatch", pool=<target>}`.
    fn pool_families(&self, b: &mut FamilyBuilder) {
        let s = self.pool.status();
        let values = [
            s.size,
            s.max_size,
            s.size.saturating_sub(s.available),
            s.waiting,
        ];
        for (family, value) in POOL_GAUGES.iter().zip(values) {
            b.gauge(family, &[RESERVED_APP, &self.name], value as f64);
        }
    }

    fn up(&self, b: &mut FamilyBuilder, up: bool) {
        b.gauge(&families::PG_UP, &[&self.name], if up { 1.0 } else { 0.0 });
    }
}

/// deadpool opens connections through loopwatch's own wire (TLS, guard).
struct PoolConnect(Connector);

impl Connect for PoolConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, connection) = self.0.connect(&pg_config).await?;
            let handle = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok((client, handle))
        })
    }
}

/// Maps a failure to a bounded reason, keeping the server's words (which
/// never include the password).
pub fn classify(e: &tokio_postgres::Error) -> CollectError {
    if let Some(wire) = pgwire::wire_error(e) {
        return CollectError::new(wire.reason(), wire.to_string());
    }
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
        // With the I/O cause ("Connection refused") that Display leaves out.
        None => Chain(e).to_string(),
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

impl Periodic for PostgresPoller {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
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
            if let Some(tls) = self.tls.get() {
                b.gauge(&families::PG_TLS, &[&self.name], f64::from(u8::from(tls)));
            }
            let target = [self.name.as_str()];
            let value = |i: usize| -> f64 { summary.get::<_, f64>(i) };
            // In the order of SUMMARY_SQL's columns.
            for (i, family) in [
                families::PG_MAX_CONNECTIONS,
                families::PG_RESERVED_CONNECTIONS,
                families::PG_LOCK_WAITERS,
                families::PG_OLDEST_TRANSACTION,
                families::PG_OLDEST_IDLE_IN_TRANSACTION,
                families::PG_SLOW_QUERIES,
                families::PG_OLDEST_QUERY,
                families::PG_OLDEST_LOCK_WAIT,
            ]
            .iter()
            .enumerate()
            {
                b.gauge(family, &target, value(i));
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
                b.gauge(
                    &families::PG_CONNECTIONS,
                    &[&self.name, database, user, application, state],
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
