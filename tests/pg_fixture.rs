//! The PostgreSQL / PgBouncer test fixture (tests/common/pg.rs) against the
//! real programs: each capability the collector tests rely on, proven here
//! on its own, so a failure there points at the collector, not the fixture.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::*;

/// `application_name|state|count` of client sessions, without the fixture's own.
fn sessions_by_app_and_state(cluster: &PgCluster) -> BTreeMap<(String, String), u32> {
    cluster
        .psql(
            "select application_name, coalesce(state, ''), count(*) from pg_stat_activity \
             where backend_type = 'client backend' and application_name <> 'pg_fixture' \
             group by 1, 2",
        )
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                (f[0].to_owned(), f[1].to_owned()),
                f[2].parse().expect("count"),
            )
        })
        .collect()
}

fn key(app: &str, state: &str) -> (String, String) {
    (app.to_owned(), state.to_owned())
}

#[test]
fn a_cluster_starts_with_the_small_settings_and_answers() {
    let cluster = PgCluster::start();
    assert_eq!(cluster.psql("select 1"), "1");
    assert_eq!(cluster.psql("show port"), cluster.port().to_string());
    assert_eq!(cluster.psql("show max_connections"), "50");
    assert_eq!(cluster.psql("show superuser_reserved_connections"), "3");
    assert_eq!(cluster.psql("show shared_buffers"), "16MB");
    assert_eq!(cluster.psql("show fsync"), "off");
    assert_eq!(cluster.psql("show listen_addresses"), "127.0.0.1");
    assert_eq!(
        cluster.psql("show unix_socket_directories"),
        cluster.socket_dir().display().to_string()
    );
    assert!(
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists(),
        "the Unix socket is in the cluster's own directory"
    );
    assert!(
        cluster
            .psql("show server_version_num")
            .parse::<u32>()
            .expect("number")
            >= 150000
    );
    // The URL form works with libpq, as it will with tokio-postgres.
    assert_eq!(
        psql_dsn(&cluster.dsn("postgres", ""), "select current_user", WAIT).expect("dsn"),
        "postgres"
    );
    // Tabular output keeps column names.
    let rows = cluster.rows("select 1 as a, 'x|y' as b");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["a"], "1");
    assert_eq!(rows[0]["b"], "x|y");
}

#[test]
fn held_sessions_show_in_pg_stat_activity_by_application_and_state() {
    let cluster = PgCluster::start();
    cluster.create_role("app_user", "app-secret");
    cluster.create_database("shop");

    let web = hold_connections(&cluster, 3, "web", "app_user", "app-secret");
    let worker = hold_idle_in_transaction(&cluster, 2, "worker", "app_user", "app-secret");
    let report = hold_active(&cluster, 1, "report", "postgres", "");
    let shop = cluster.hold(
        &Hold::new(2, "shop-api")
            .user("app_user", "app-secret")
            .database("shop"),
    );
    assert_eq!(web.backend_pids().len(), 3);
    assert_eq!(shop.len(), 2);

    let counts = sessions_by_app_and_state(&cluster);
    let expected: BTreeMap<_, _> = [
        (key("web", "idle"), 3),
        (key("worker", "idle in transaction"), 2),
        (key("report", "active"), 1),
        (key("shop-api", "idle"), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(
        cluster.psql(
            "select datname, usename, count(*) from pg_stat_activity \
             where application_name = 'shop-api' group by 1, 2"
        ),
        "shop|app_user|2"
    );
    assert_eq!(
        cluster.psql(
            "select count(*) from pg_stat_activity \
             where application_name = 'report' and query like '%pg_sleep%'"
        ),
        "1"
    );
    let oldest_idle_tx = cluster.psql(
        "select count(*) from pg_stat_activity \
         where state = 'idle in transaction' and xact_start is not null",
    );
    assert_eq!(oldest_idle_tx, "2");

    // Released sessions are gone from the server at once, the others stay.
    drop(worker);
    report.release();
    let counts = sessions_by_app_and_state(&cluster);
    assert_eq!(counts.get(&key("worker", "idle in transaction")), None);
    assert_eq!(counts.get(&key("report", "active")), None);
    assert_eq!(counts.get(&key("web", "idle")), Some(&3));
    let psql_pids = web.client_pids();
    drop(web);
    assert!(
        psql_pids.iter().all(|&p| !process_alive(p)),
        "psql clients killed"
    );
    drop(shop);
    assert_eq!(sessions_by_app_and_state(&cluster), BTreeMap::new());
}

#[test]
fn a_lock_waiter_shows_in_pg_locks_and_wait_events() {
    let cluster = PgCluster::start();
    cluster.create_role("locker", "lock-secret");
    let pair = lock_waiter(&cluster, "locker-app", "locker", "lock-secret");
    let pids = pair.backend_pids();
    assert_eq!(pids.len(), 2);
    let (holder, waiter) = (pids[0], pids[1]);
    assert_eq!(
        cluster.psql("select pid from pg_locks where not granted"),
        waiter.to_string()
    );
    assert_eq!(
        cluster.psql(
            "select pid, wait_event_type, state from pg_stat_activity \
             where wait_event_type = 'Lock'"
        ),
        format!("{waiter}|Lock|active")
    );
    assert_eq!(
        cluster.psql(&format!("select pg_blocking_pids({waiter})")),
        format!("{{{holder}}}")
    );
    assert_eq!(
        cluster.psql(&format!(
            "select state from pg_stat_activity where pid = {holder}"
        )),
        "idle in transaction"
    );
    drop(pair);
    assert_eq!(
        cluster.psql("select count(*) from pg_locks where not granted"),
        "0"
    );

    // Several waiters on one holder.
    let three = cluster.hold_lock_waiters(3, "locker-app", "postgres", "");
    assert_eq!(three.len(), 4);
    assert_eq!(
        cluster.psql(
            "select count(*) from pg_stat_activity \
             where wait_event_type = 'Lock' and application_name = 'locker-app'"
        ),
        "3"
    );
}

#[test]
fn stop_refuses_connections_and_start_again_answers_on_the_same_port() {
    let cluster = PgCluster::start();
    let port = cluster.port();
    cluster.psql("create table kept (v int); insert into kept values (42)");
    let pm = cluster.postmaster_pid().expect("running");
    let _idle = hold_connections(&cluster, 2, "web", "postgres", "");

    cluster.stop();
    assert!(!cluster.is_running());
    assert!(!process_alive(pm), "the postmaster exited");
    let err = cluster
        .try_psql("select 1")
        .expect_err("a stopped server refuses");
    assert!(err.contains("Connection refused"), "{err}");

    cluster.start_again();
    assert_eq!(cluster.port(), port);
    assert!(cluster.is_running());
    assert_ne!(cluster.postmaster_pid(), Some(pm));
    assert_eq!(cluster.psql("select v from kept"), "42");
}

#[test]
fn pause_hangs_new_connections_and_resume_recovers() {
    let cluster = PgCluster::start();
    let idle = hold_connections(&cluster, 2, "web", "postgres", "");
    let pm = cluster.postmaster_pid().expect("running");
    let backends: Vec<u32> = idle.backend_pids().iter().map(|&p| p as u32).collect();

    cluster.pause();
    assert!(cluster.is_paused());
    // The postmaster, the held backends and every other child (background
    // processes; a backend of the fixture's own psql may just be exiting).
    let pids = cluster.server_pids();
    assert!(
        pids.len() >= 4,
        "postmaster, background processes, 2 backends: {pids:?}"
    );
    for pid in pids.iter().chain(&backends) {
        assert!(
            pids.contains(pid),
            "{pid} is a child of the postmaster {pm}"
        );
        assert!(process_stopped(*pid), "{pid} is stopped");
    }
    let dsn = format!("{}?connect_timeout=2", cluster.dsn("postgres", ""));
    let started = Instant::now();
    let err = psql_dsn(&dsn, "select 1", WAIT).expect_err("a paused server does not answer");
    let took = started.elapsed();
    assert!(err.contains("timeout expired"), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "connect_timeout ended it: {took:?}"
    );
    // A role with a password (scram) hangs just the same.
    cluster.resume();
    cluster.create_role("app_user", "app-secret");
    cluster.pause();
    let dsn = format!(
        "{}?connect_timeout=2",
        cluster.dsn("app_user", "app-secret")
    );
    assert!(psql_dsn(&dsn, "select 1", WAIT).is_err());

    cluster.resume();
    assert!(!cluster.is_paused());
    for &pid in &pids {
        assert!(!process_stopped(pid), "{pid} runs again");
    }
    assert_eq!(
        psql_dsn(&dsn, "select current_user", WAIT).expect("resumed"),
        "app_user"
    );
}

#[test]
fn a_wrong_password_is_refused_and_the_right_one_accepted() {
    let cluster = PgCluster::start();
    cluster.create_role("app_user", "right-secret");
    assert_eq!(
        cluster
            .psql_as(
                "app_user",
                "right-secret",
                "postgres",
                "select current_user"
            )
            .expect("right password"),
        "app_user"
    );
    let err = cluster
        .psql_as("app_user", "wrong-secret", "postgres", "select 1")
        .expect_err("wrong password");
    assert!(
        err.contains("password authentication failed for user \"app_user\""),
        "{err}"
    );
    let err = cluster
        .psql_as("app_user", "", "postgres", "select 1")
        .expect_err("no password");
    assert!(err.contains("no password supplied"), "{err}");
    // The stored password is scram-sha-256.
    assert!(
        cluster
            .psql("select rolpassword from pg_authid where rolname = 'app_user'")
            .starts_with("SCRAM-SHA-256$")
    );
    // `postgres` over TCP is trusted; a monitor role sees other sessions.
    cluster.create_monitor_role("exporter", "exp-secret");
    let _idle = hold_connections(&cluster, 1, "web", "app_user", "right-secret");
    assert_eq!(
        cluster
            .psql_as(
                "exporter",
                "exp-secret",
                "postgres",
                "select state from pg_stat_activity where application_name = 'web'"
            )
            .expect("monitor role"),
        "idle"
    );
}

#[test]
fn pgbouncer_answers_show_pools_and_routes_clients_to_the_cluster() {
    let cluster = PgCluster::start();
    cluster.create_role("app_user", "app-secret");
    let bouncer = PgBouncer::start_with(
        &cluster,
        &PgBouncerOptions::new("transaction", 5).user("app_user", "app-secret"),
    );
    assert!(bouncer.admin("SHOW VERSION").contains("PgBouncer"));
    assert_ne!(bouncer.port(), cluster.port());

    // A client through PgBouncer reaches the cluster.
    assert_eq!(
        bouncer
            .psql_as(
                "postgres",
                "",
                "test",
                "select current_database(), inet_server_port()"
            )
            .expect("via pgbouncer"),
        format!("postgres|{}", cluster.port())
    );
    // Another role: PgBouncer logs in to the server with scram from the userlist.
    assert_eq!(
        bouncer
            .psql_as("app_user", "app-secret", "test", "select current_user")
            .expect("app_user via pgbouncer"),
        "app_user"
    );

    let pools = bouncer.admin_rows("SHOW POOLS");
    let test_pool = pools
        .iter()
        .find(|r| r["database"] == "test" && r["user"] == "postgres")
        .unwrap_or_else(|| panic!("a pool for test/postgres: {pools:?}"));
    assert_eq!(test_pool["pool_mode"], "transaction");
    for column in ["cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait"] {
        assert!(test_pool.contains_key(column), "SHOW POOLS has {column}");
    }
    // The server connection PgBouncer opened shows on the cluster.
    assert!(
        cluster
            .psql(
                "select count(*) from pg_stat_activity where client_port is not null \
                 and usename = 'app_user' and backend_type = 'client backend'"
            )
            .parse::<u32>()
            .expect("count")
            >= 1
    );
    let databases = bouncer.admin_rows("SHOW DATABASES");
    let test_db = databases
        .iter()
        .find(|r| r["name"] == "test")
        .expect("database test");
    assert_eq!(test_db["port"], cluster.port().to_string());
    assert!(
        bouncer
            .admin_rows("SHOW CONFIG")
            .iter()
            .any(|r| r["key"] == "default_pool_size" && r["value"] == "5")
    );
    assert!(!bouncer.admin("SHOW STATS").is_empty());
}

#[test]
fn pgbouncer_clients_wait_when_the_pool_is_full_and_pause_hangs_it() {
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&cluster, "session", 1);
    // Session pooling, one server connection: the first client takes it,
    // the next ones wait for it.
    let first = bouncer.hold(&Hold::new(1, "web").database("test"));
    assert_eq!(
        first.backend_pids().len(),
        1,
        "the first client got a server"
    );
    let waiting = bouncer.hold(&Hold::new(2, "web").database("test"));
    assert_eq!(waiting.backend_pids().len(), 0, "the others wait");
    let pools = bouncer.admin_rows("SHOW POOLS");
    let pool = pools
        .iter()
        .find(|r| r["database"] == "test" && r["user"] == "postgres")
        .expect("pool test/postgres");
    assert_eq!(pool["cl_active"], "1", "{pool:?}");
    assert_eq!(pool["cl_waiting"], "2", "{pool:?}");
    assert_eq!(pool["sv_active"], "1", "{pool:?}");
    assert_eq!(
        cluster.psql(
            "select count(*) from pg_stat_activity where backend_type = 'client backend' \
             and application_name = 'web'"
        ),
        "1",
        "one server connection, named after its client"
    );
    // The first client leaves: a waiting one gets the server connection.
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = bouncer.admin_rows("SHOW POOLS");
        let pool = rows
            .iter()
            .find(|r| r["database"] == "test" && r["user"] == "postgres")
            .expect("pool");
        if pool["cl_waiting"] == "1" && pool["cl_active"] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a waiting client was served: {pool:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(waiting);

    bouncer.pause();
    let started = Instant::now();
    let err = psql_dsn(
        &format!("{}?connect_timeout=2", bouncer.admin_dsn()),
        "SHOW VERSION",
        WAIT,
    )
    .expect_err("a paused pgbouncer does not answer");
    assert!(err.contains("timeout expired"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    bouncer.resume();
    assert!(bouncer.admin("SHOW VERSION").contains("PgBouncer"));
}

#[test]
fn pgbouncer_reconnects_after_the_cluster_restarts() {
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&cluster, "transaction", 2);
    assert_eq!(
        bouncer
            .psql_as("postgres", "", "test", "select 1")
            .expect("up"),
        "1"
    );
    cluster.stop();
    // With the server down, PgBouncer keeps the client waiting (until its
    // query_wait_timeout): no answer within 3 s.
    let err = psql_dsn(
        &bouncer.dsn("postgres", "", "test"),
        "select 1",
        Duration::from_secs(3),
    )
    .expect_err("no server behind pgbouncer");
    assert!(err.contains("timed out"), "{err}");
    cluster.start_again();
    let deadline = Instant::now() + WAIT;
    while bouncer.psql_as("postgres", "", "test", "select 1").is_err() {
        assert!(
            Instant::now() < deadline,
            "pgbouncer reconnected\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn drop_leaves_no_process_and_no_directory_even_when_paused_or_panicking() {
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&cluster, "session", 2);
    let held = hold_active(&cluster, 2, "report", "postgres", "");
    let mut pids = cluster.server_pids();
    pids.push(bouncer.pid());
    let clients = held.client_pids();
    let dirs = [cluster.dir().to_owned(), bouncer.dir().to_owned()];
    cluster.pause();
    bouncer.pause();
    // Dropped in the wrong order (cluster first, sessions last) and paused.
    drop(cluster);
    drop(bouncer);
    drop(held);
    for pid in pids.iter().chain(&clients) {
        assert!(!process_alive(*pid), "{pid} is gone");
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }

    // A panicking test: unwinding drops the cluster.
    let seen = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), None)));
    let inside = std::sync::Arc::clone(&seen);
    let result = std::thread::spawn(move || {
        let cluster = PgCluster::start();
        let _held = hold_idle_in_transaction(&cluster, 1, "web", "postgres", "");
        cluster.pause();
        *inside.lock().expect("lock") = (cluster.server_pids(), Some(cluster.dir().to_owned()));
        panic!("a test fails while its cluster is paused");
    })
    .join();
    assert!(result.is_err());
    let (pids, dir) = seen.lock().expect("lock").clone();
    assert!(pids.len() >= 3);
    for pid in pids {
        assert!(!process_alive(pid), "{pid} is gone after the panic");
    }
    assert!(!dir.expect("dir").exists());
}

/// Run by the next test in a child process that gets SIGKILLed: starts a
/// cluster (paused) and a pgbouncer, prints their PIDs and directories,
/// then waits to be killed.
#[test]
#[ignore = "helper of watchdog_cleans_up_after_the_test_process_is_killed"]
fn helper_cluster_for_the_kill_test() {
    if std::env::var_os("LOOPWATCH_PG_FIXTURE_HELPER").is_none() {
        return; // only useful under the test below
    }
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&cluster, "session", 1);
    let held = hold_connections(&cluster, 1, "web", "postgres", "");
    let mut pids = cluster.server_pids();
    pids.push(bouncer.pid());
    cluster.pause();
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let clients: Vec<String> = held.client_pids().iter().map(|p| p.to_string()).collect();
    println!(
        "READY {} {} {} {}",
        cluster.dir().display(),
        bouncer.dir().display(),
        pids.join(","),
        clients.join(",")
    );
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn watchdog_cleans_up_after_the_test_process_is_killed() {
    let stderr_file = tempfile::NamedTempFile::new().expect("stderr file");
    /// The helper, SIGKILLed however this test ends.
    struct Helper(std::process::Child);
    impl Drop for Helper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_cluster_for_the_kill_test",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LOOPWATCH_PG_FIXTURE_HELPER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(stderr_file.path()).expect("stderr file"),
        ))
        .spawn()
        .expect("start the helper");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Helper(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let line = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("READY ") => break line,
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(e) => {
                drop(child);
                panic!(
                    "the helper did not get ready: {e}\nstdout:\n{seen}\nstderr:\n{}",
                    std::fs::read_to_string(stderr_file.path()).unwrap_or_default()
                );
            }
        }
    };
    let line = line[line.find("READY ").expect("READY")..].to_owned();
    let f: Vec<&str> = line.split(' ').collect();
    let (cluster_dir, bouncer_dir) = (f[1].to_owned(), f[2].to_owned());
    let pids: Vec<u32> = f[3]
        .split(',')
        .chain(f[4].split(','))
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(process_alive(pids[0]), "the postmaster runs");
    // SIGKILL: no unwinding, no Drop.
    child.0.kill().expect("kill the helper");
    child.0.wait().expect("reap the helper");
    // Under the watchdog's 10 s fallback to SIGKILL: the orderly path works.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
        let dirs_left = std::path::Path::new(&cluster_dir).exists()
            || std::path::Path::new(&bouncer_dir).exists();
        if alive.is_empty() && !dirs_left {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after SIGKILL: processes {alive:?}, directories: {dirs_left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
