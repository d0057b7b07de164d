//! PgBouncer: clients and servers per pool, the longest wait, and the
//! configured limits, read from the admin console (`SHOW POOLS`,
//! `SHOW DATABASES`, `SHOW CONFIG`, `SHOW STATS`) over one kept connection.

use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

use super::{BoxFuture, Built, CollectError, Job, Periodic, Reason};
use crate::config::PgBouncerTargetConfig;
use crate::metrics::{Families, FamilyBuilder};

pub fn build(targets: &[PgBouncerTargetConfig]) -> Vec<Built> {
    targets
        .iter()
        .map(|t| Built {
            kind: "pgbouncer",
            target: t.name.clone(),
            job: Job::Periodic {
                interval: t.interval,
                timeout: t.timeout,
                collector: Box::new(PgBouncerTarget {
                    name: t.name.clone(),
                    config: pg_config(t),
                    client: None,
                }),
            },
        })
        .collect()
}

/// The admin console's connection settings, with `${ENV}` and the password resolved.
pub fn pg_config(t: &PgBouncerTargetConfig) -> Result<tokio_postgres::Config, String> {
    let mut config =
        super::postgres::connection(&t.dsn, t.password.as_deref(), t.password_file.as_deref())?;
    if config.get_dbname().is_none() {
        config.dbname("pgbouncer");
    }
    config.connect_timeout(crate::config::connect_timeout(t.connect_timeout, t.timeout));
    Ok(config)
}

struct PgBouncerTarget {
    name: String,
    config: Result<tokio_postgres::Config, String>,
    /// Kept between polls; dropped after any error.
    client: Option<Client>,
}

fn error(e: tokio_postgres::Error) -> CollectError {
    super::postgres::classify(&e)
}

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<SimpleQueryRow> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// A numeric column; PgBouncer versions differ in which columns they have.
fn number(row: &SimpleQueryRow, column: &str) -> Option<f64> {
    row.try_get(column)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
}

fn text<'a>(row: &'a SimpleQueryRow, column: &str) -> &'a str {
    row.try_get(column).ok().flatten().unwrap_or("")
}

impl PgBouncerTarget {
    async fn sample(&mut self) -> Result<Families, CollectError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let config = self
                    .config
                    .as_ref()
                    .map_err(|e| CollectError::new(Reason::Other, e.clone()))?;
                let (client, connection) = config.connect(NoTls).await.map_err(error)?;
                tokio::spawn(async move {
                    // Ends when the client is dropped or the server goes away.
                    let _ = connection.await;
                });
                client
            }
        };
        let pools = rows(client.simple_query("SHOW POOLS").await.map_err(error)?);
        let databases = rows(client.simple_query("SHOW DATABASES").await.map_err(error)?);
        let settings = rows(client.simple_query("SHOW CONFIG").await.map_err(error)?);
        let stats = rows(client.simple_query("SHOW STATS").await.map_err(error)?);
        self.client = Some(client);

        let mut b = FamilyBuilder::default();
        let name = self.name.as_str();
        b.gauge_named(
            "loopwatch_pgbouncer_up",
            "Whether the last poll of the PgBouncer admin console succeeded, sampled every interval.",
            &[("target", name)],
            1.0,
        );
        for row in &pools {
            let (database, user) = (text(row, "database"), text(row, "user"));
            for (column, state) in [("cl_active", "active"), ("cl_waiting", "waiting")] {
                if let Some(n) = number(row, column) {
                    b.gauge_named(
                        "loopwatch_pgbouncer_clients",
                        "Client connections of the pool by state, sampled every interval.",
                        &[
                            ("target", name),
                            ("database", database),
                            ("user", user),
                            ("state", state),
                        ],
                        n,
                    );
                }
            }
            for (column, state) in [
                ("sv_active", "active"),
                ("sv_idle", "idle"),
                ("sv_used", "used"),
                ("sv_tested", "tested"),
                ("sv_login", "login"),
            ] {
                if let Some(n) = number(row, column) {
                    b.gauge_named(
                        "loopwatch_pgbouncer_servers",
                        "Server connections of the pool by state, sampled every interval.",
                        &[
                            ("target", name),
                            ("database", database),
                            ("user", user),
                            ("state", state),
                        ],
                        n,
                    );
                }
            }
            let wait = number(row, "maxwait").unwrap_or(0.0)
                + number(row, "maxwait_us").unwrap_or(0.0) / 1e6;
            b.gauge_named(
                "loopwatch_pgbouncer_max_wait_seconds",
                "How long the oldest waiting client of the pool has waited, sampled every interval.",
                &[("target", name), ("database", database), ("user", user)],
                wait,
            );
        }
        for row in &databases {
            let labels = [("target", name), ("database", text(row, "name"))];
            // Column names differ across PgBouncer versions; the first present wins.
            for (columns, family, help) in [
                (
                    &["pool_size"][..],
                    "loopwatch_pgbouncer_pool_size",
                    "Server pool size of the database, sampled every interval.",
                ),
                (
                    &["reserve_pool_size", "reserve_pool"][..],
                    "loopwatch_pgbouncer_reserve_pool_size",
                    "Extra server connections a pool of the database may open when clients wait longer than reserve_pool_timeout, sampled every interval.",
                ),
                (
                    &["max_db_connections", "max_connections"][..],
                    "loopwatch_pgbouncer_max_db_connections",
                    "Server connections allowed to the database across its pools (0 means unlimited), sampled every interval.",
                ),
                (
                    &["current_connections"][..],
                    "loopwatch_pgbouncer_database_connections",
                    "Server connections open to the database, sampled every interval.",
                ),
            ] {
                if let Some(n) = columns.iter().find_map(|c| number(row, c)) {
                    b.gauge_named(family, help, &labels, n);
                }
            }
        }
        for row in &stats {
            // Catches waits that start and end between two polls, which
            // max_wait cannot see.
            if let Some(us) = number(row, "total_wait_time") {
                b.counter_named(
                    "loopwatch_pgbouncer_client_wait_seconds_total",
                    "Time clients of the database spent waiting for a server connection (SHOW STATS total_wait_time), sampled every interval.",
                    &[("target", name), ("database", text(row, "database"))],
                    us / 1e6,
                );
            }
        }
        if let Some(row) = settings
            .iter()
            .find(|r| text(r, "key") == "max_client_conn")
        {
            if let Some(n) = number(row, "value") {
                b.gauge_named(
                    "loopwatch_pgbouncer_max_client_connections",
                    "PgBouncer's max_client_conn, sampled every interval.",
                    &[("target", name)],
                    n,
                );
            }
        }
        Ok(b.finish())
    }
}

impl Periodic for PgBouncerTarget {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(self.sample())
    }

    fn down(&self) -> Families {
        let mut b = FamilyBuilder::default();
        b.gauge_named(
            "loopwatch_pgbouncer_up",
            "Whether the last poll of the PgBouncer admin console succeeded, sampled every interval.",
            &[("target", &self.name)],
            0.0,
        );
        b.finish()
    }
}
