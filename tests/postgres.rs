//! The postgres and pgbouncer collectors against real clusters and a real
//! PgBouncer that the tests start, stop, hang (SIGSTOP) and restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::pg::*;
use common::*;

fn config(dir: &tempfile::TempDir, body: &str) -> String {
    let path = dir.path().join("loopwatch.yml");
    std::fs::write(&path, with_free_udp(body).0).expect("config");
    path.display().to_string()
}

fn start(cluster: &PgCluster, dir: &tempfile::TempDir, extra: &str) -> Exporter {
    let cfg = config(
        dir,
        &format!(
            "postgres:\n  - name: db\n    dsn: '{}'\n    interval: 500ms\n    timeout: 500ms\n{extra}",
            cluster.dsn("postgres", "")
        ),
    );
    Exporter::start(&["--config.file", &cfg])
}

/// Series of the target other than up, as printed.
fn value_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("loopwatch_pg_") && !l.starts_with("loopwatch_pg_up"))
        .collect()
}

fn loopwatch_sessions(cluster: &PgCluster) -> usize {
    cluster
        .psql("select count(*) from pg_stat_activity where application_name = 'loopwatch'")
        .trim()
        .parse()
        .expect("count")
}

#[test]
fn connection_counts_equal_pg_stat_activity() {
    let cluster = PgCluster::start();
    cluster.create_role("web", "web-pw");
    cluster.create_role("worker", "worker-pw");
    let _idle = hold_connections(&cluster, 3, "web-api", "web", "web-pw");
    let _txn = hold_idle_in_transaction(&cluster, 2, "billing-worker", "worker", "worker-pw");
    let _active = hold_active(&cluster, 1, "report", "worker", "worker-pw");
    let _locks = lock_waiter(&cluster, "migrations", "postgres", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let lw = start(&cluster, &dir, "    slow_query_threshold: 100ms\n");

    let text = wait_for_metrics(
        &lw,
        Duration::from_secs(15),
        "the lock waiter and slow query",
        |t| {
            sample(t, r#"loopwatch_pg_lock_waiters{target="db"}"#) == Some(1.0)
                && sample(t, r#"loopwatch_pg_slow_queries{target="db"}"#).is_some_and(|v| v >= 2.0)
        },
    );
    let g = |db: &str, user: &str, app: &str, state: &str| {
        sample(
            &text,
            &format!(
                r#"loopwatch_pg_connections{{target="db",database="{db}",user="{user}",application_name="{app}",state="{state}"}}"#
            ),
        )
    };
    assert_eq!(g("postgres", "web", "web-api", "idle"), Some(3.0), "{text}");
    assert_eq!(
        g(
            "postgres",
            "worker",
            "billing-worker",
            "idle in transaction"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        g("postgres", "worker", "report", "active"),
        Some(1.0),
        "{text}"
    );

    // Every client backend the server lists, loopwatch's own included, is counted once.
    let expected: f64 = cluster
        .psql("select count(*) from pg_stat_activity where backend_type = 'client backend' and application_name <> 'pg_fixture'")
        .trim()
        .parse()
        .expect("count");
    let counted: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("loopwatch_pg_connections{")
                && !l.contains(r#"application_name="pg_fixture""#)
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    // The psql that counted is itself a client backend named pg_fixture, left out of both.
    assert!(
        (counted - expected).abs() <= 1.0,
        "counted {counted}, pg_stat_activity {expected}:\n{text}"
    );
    assert_eq!(
        sample(&text, r#"loopwatch_pg_max_connections{target="db"}"#),
        Some(50.0)
    );
    assert_eq!(
        sample(&text, r#"loopwatch_pg_reserved_connections{target="db"}"#),
        Some(3.0)
    );
    assert!(
        sample(
            &text,
            r#"loopwatch_pg_oldest_idle_in_transaction_seconds{target="db"}"#
        )
        .is_some_and(|v| v > 0.0)
    );
    // The waiter and the active query have been running since before the
    // poll that saw them; the slow-query wait above took at least 100 ms.
    for family in [
        "loopwatch_pg_oldest_query_seconds",
        "loopwatch_pg_oldest_lock_wait_seconds",
    ] {
        assert!(
            sample(&text, &format!(r#"{family}{{target="db"}}"#)).is_some_and(|v| v >= 0.1),
            "{family}: {text}"
        );
    }
    assert!(
        sample(
            &text,
            r#"loopwatch_pg_oldest_transaction_seconds{target="db"}"#
        )
        .is_some_and(|v| v > 0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_pool_max{app_name="loopwatch",pool="db"}"#
        ),
        Some(2.0)
    );
    assert_promtool_clean(&text);
}

#[test]
fn a_stopped_database_is_down_with_no_values_and_recovers_by_itself() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lw = start(&cluster, &dir, "");
    let text = lw.metrics();
    assert_eq!(sample(&text, r#"loopwatch_pg_up{target="db"}"#), Some(1.0));
    assert!(!value_series(&text).is_empty());

    cluster.stop();
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "pg_up 0", |t| {
        sample(t, r#"loopwatch_pg_up{target="db"}"#) == Some(0.0)
    });
    assert!(
        value_series(&text).is_empty(),
        "no zeros that look idle: {:?}",
        value_series(&text)
    );
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_collector_success{collector="postgres",target="db"}"#
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            r#"loopwatch_collector_errors_total{collector="postgres",reason="connect",target="db"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(get(lw.port, "/").text().contains("failing"));

    cluster.start_again();
    let text = wait_for_metrics(&lw, Duration::from_secs(15), "pg_up 1 again", |t| {
        sample(t, r#"loopwatch_pg_up{target="db"}"#) == Some(1.0)
    });
    assert!(!value_series(&text).is_empty());
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_collector_success{collector="postgres",target="db"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_hung_database_times_out_and_connections_do_not_pile_up() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lw = start(&cluster, &dir, "");
    assert_eq!(
        sample(&lw.metrics(), r#"loopwatch_pg_up{target="db"}"#),
        Some(1.0)
    );

    cluster.pause();
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "a timeout", |t| {
        sample(t, r#"loopwatch_collector_errors_total{collector="postgres",reason="timeout",target="db"}"#)
            .is_some_and(|v| v >= 2.0)
    });
    assert_eq!(sample(&text, r#"loopwatch_pg_up{target="db"}"#), Some(0.0));
    assert!(value_series(&text).is_empty());
    // Scrapes are answered from the snapshot while polls hang.
    for _ in 0..20 {
        assert_eq!(get(lw.port, "/metrics").status, 200);
    }
    std::thread::sleep(Duration::from_secs(2));
    cluster.resume();
    wait_for_metrics(&lw, Duration::from_secs(15), "pg_up 1 after resume", |t| {
        sample(t, r#"loopwatch_pg_up{target="db"}"#) == Some(1.0)
    });
    let sessions = loopwatch_sessions(&cluster);
    assert!(
        sessions <= 2,
        "loopwatch holds {sessions} sessions after the hang"
    );
}

#[test]
fn many_concurrent_scrapers_never_open_more_than_the_pool() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let lw = start(&cluster, &dir, "    max_connections: 2\n");
    let stop = Arc::new(AtomicBool::new(false));
    let port = lw.port;
    let scrapers: Vec<_> = (0..32)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    if get_with(port, "/metrics", "")
                        .is_ok_and(|r| r.status == 200 || r.status == 503)
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(loopwatch_sessions(&cluster));
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let answered: usize = scrapers
        .into_iter()
        .map(|s| s.join().expect("scraper"))
        .sum();
    assert!(answered > 32, "scrapes were answered: {answered}");
    assert!(most >= 1, "loopwatch was connected");
    assert!(most <= 2, "loopwatch opened {most} sessions");
}

#[test]
fn a_wrong_password_is_auth_and_never_shown() {
    let cluster = PgCluster::start();
    cluster.create_monitor_role("monitor", "right-password");
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "Wr0ng-Pa55word-Xyz";
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, secret).expect("password file");
    let cfg = config(
        &dir,
        &format!(
            "postgres:\n  - name: db\n    dsn: 'host=127.0.0.1 port={} user=monitor dbname=postgres'\n    password_file: {}\n    interval: 500ms\n    timeout: 500ms\n",
            cluster.port(),
            pw_file.display()
        ),
    );
    let lw = Exporter::start(&["--config.file", &cfg, "--log.level", "debug"]);
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "an auth error", |t| {
        sample(
            t,
            r#"loopwatch_collector_errors_total{collector="postgres",reason="auth",target="db"}"#,
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(sample(&text, r#"loopwatch_pg_up{target="db"}"#), Some(0.0));
    let landing = get(lw.port, "/").text();
    assert!(
        landing.contains("password authentication failed"),
        "{landing}"
    );
    for (what, haystack) in [
        ("metrics", text),
        ("landing page", landing),
        ("log", lw.stderr()),
    ] {
        assert!(
            !haystack.contains(secret),
            "the password appears in the {what}"
        );
    }
}

#[test]
fn pgbouncer_pools_show_waiting_clients_and_a_hang_is_a_timeout() {
    let cluster = PgCluster::start();
    // A reserve pool that never kicks in (the timeout is long), so the
    // clients keep waiting, and a database-wide cap.
    let bouncer = PgBouncer::start_with(
        &cluster,
        &PgBouncerOptions::new("session", 1)
            .setting("reserve_pool_size", "2")
            .setting("reserve_pool_timeout", "600")
            .setting("max_db_connections", "5"),
    );
    let _held = bouncer.hold(&Hold::new(3, "queued").database("test"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        &dir,
        &format!(
            "pgbouncer:\n  - name: bouncer\n    dsn: '{}'\n    interval: 500ms\n    timeout: 500ms\n",
            bouncer.admin_dsn()
        ),
    );
    let lw = Exporter::start(&["--config.file", &cfg]);
    let clients = |t: &str, state: &str| {
        sample(
            t,
            &format!(
                r#"loopwatch_pgbouncer_clients{{target="bouncer",database="test",user="postgres",state="{state}"}}"#
            ),
        )
    };
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "waiting clients", |t| {
        clients(t, "waiting") == Some(2.0)
    });
    assert_eq!(clients(&text, "active"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"loopwatch_pgbouncer_up{target="bouncer"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_pgbouncer_pool_size{target="bouncer",database="test"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"loopwatch_pgbouncer_max_client_connections{target="bouncer"}"#
        )
        .is_some()
    );
    for (family, value) in [
        ("loopwatch_pgbouncer_reserve_pool_size", 2.0),
        ("loopwatch_pgbouncer_max_db_connections", 5.0),
        ("loopwatch_pgbouncer_database_connections", 1.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"{family}{{target="bouncer",database="test"}}"#)
            ),
            Some(value),
            "{family}: {text}"
        );
    }
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "a measured wait", |t| {
        sample(t, r#"loopwatch_pgbouncer_max_wait_seconds{target="bouncer",database="test",user="postgres"}"#)
            .is_some_and(|v| v > 0.0)
    });
    drop(text);

    bouncer.pause();
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "pgbouncer down", |t| {
        sample(t, r#"loopwatch_pgbouncer_up{target="bouncer"}"#) == Some(0.0)
    });
    assert!(
        !text.contains("loopwatch_pgbouncer_clients{"),
        "no stale values: {text}"
    );
    assert!(
        sample(&text, r#"loopwatch_collector_errors_total{collector="pgbouncer",reason="timeout",target="bouncer"}"#)
            .is_some_and(|v| v >= 1.0)
    );
    bouncer.resume();
    wait_for_metrics(&lw, Duration::from_secs(15), "pgbouncer up again", |t| {
        sample(t, r#"loopwatch_pgbouncer_up{target="bouncer"}"#) == Some(1.0)
    });
}
