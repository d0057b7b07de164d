//! PgBouncer: clients and servers per pool, the longest wait, and the
//! configured limits, read from the admin console (`SHOW POOLS`,
//! `SHOW DATABASES`, `SHOW CONFIG`, `SHOW STATS`) over one kept connection.

use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::pgwire::Connector;
use super::{BoxFuture, BuildError, Built, CollectError, Job, Periodic};
use crate::config::PgBouncerTarget;
use crate::families;
use crate::metrics::{Families, FamilyBuilder};

pub fn build(targets: &[PgBouncerTarget]) -> Result<Vec<Built>, BuildError> {
    targets
        .iter()
        .map(|t| {
            let connector = Connector::new(&t.wire).map_err(|source| BuildError::Tls {
                kind: "pgbouncer",
                target: t.name.clone(),
                source,
            })?;
            Ok(Built {
                kind: "pgbouncer",
                target: t.name.clone(),
                job: Job::Periodic {
                    interval: t.interval,
                    timeout: t.timeout,
                    collector: Box::new(PgBouncerPoller {
                        name: t.name.clone(),
                        config: t.connection.clone(),
                        connector,
                        client: None,
                    }),
                },
            })
        })
        .collect()
}

struct PgBouncerPoller {
    name: String,
    config: tokio_postgres::Config,
    connector: Connector,
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

impl PgBouncerPoller {
    async fn sample(&mut self) -> Result<Families, CollectError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let (client, connection) =
                    self.connector.connect(&self.config).await.map_err(error)?;
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
        b.gauge(&families::PGBOUNCER_UP, &[name], 1.0);
        if let Some(tls) = self.connector.state.get() {
            b.gauge(&families::PGBOUNCER_TLS, &[name], f64::from(u8::from(tls)));
        }
        for row in &pools {
            let (database, user) = (text(row, "database"), text(row, "user"));
            for (column, state) in [("cl_active", "active"), ("cl_waiting", "waiting")] {
                if let Some(n) = number(row, column) {
                    b.gauge(
                        &families::PGBOUNCER_CLIENTS,
                        &[name, database, user, state],
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
                    b.gauge(
                        &families::PGBOUNCER_SERVERS,
                        &[name, database, user, state],
                        n,
                    );
                }
            }
            let wait = number(row, "maxwait").unwrap_or(0.0)
                + number(row, "maxwait_us").unwrap_or(0.0) / 1e6;
            b.gauge(&families::PGBOUNCER_MAX_WAIT, &[name, database, user], wait);
        }
        for row in &databases {
            let labels = [name, text(row, "name")];
            // Column names differ across PgBouncer versions; the first present wins.
            for (columns, family) in [
                (&["pool_size"][..], families::PGBOUNCER_POOL_SIZE),
                (
                    &["reserve_pool_size", "reserve_pool"][..],
                    families::PGBOUNCER_RESERVE_POOL_SIZE,
                ),
                (
                    &["max_db_connections", "max_connections"][..],
                    families::PGBOUNCER_MAX_DB_CONNECTIONS,
                ),
                (
                    &["current_connections"][..],
                    families::PGBOUNCER_DATABASE_CONNECTIONS,
                ),
            ] {
                if let Some(n) = columns.iter().find_map(|c| number(row, c)) {
                    b.gauge(&family, &labels, n);
                }
            }
        }
        for row in &stats {
            // Catches waits that start and end between two polls, which
            // max_wait cannot see.
            if let Some(us) = number(row, "total_wait_time") {
                b.counter(
                    &families::PGBOUNCER_CLIENT_WAIT,
                    &[name, text(row, "database")],
                    us / 1e6,
                );
            }
        }
        if let Some(row) = settings
            .iter()
            .find(|r| text(r, "key") == "max_client_conn")
        {
            if let Some(n) = number(row, "value") {
                b.gauge(&families::PGBOUNCER_MAX_CLIENT_CONNECTIONS, &[name], n);
            }
        }
        Ok(b.finish())
    }
}

impl Periodic for PgBouncerPoller {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(self.sample())
    }

    fn down(&self) -> Families {
        let mut b = FamilyBuilder::default();
        b.gauge(&families::PGBOUNCER_UP, &[&self.name], 0.0);
        b.finish()
    }
}
