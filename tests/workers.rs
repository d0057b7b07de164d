//! Many processes of one app against the real binary (issues 11 and 12):
//! uvicorn with 2 workers where one worker's loop blocks; four worker
//! processes of one app with pools, killed and stopped one by one; a real
//! asyncpg pool too small for its load against the real PostgreSQL, with a
//! real Prometheus evaluating alerts/database.yml over this exporter.
//!
//! Needs python3 with uvicorn and asyncpg, Debian's prometheus, and the
//! PostgreSQL on 127.0.0.1:5432 (user postgres, database test, trust):
//! ./scripts/test.sh installs the packages. A missing one fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Every /metrics text a test took, so it can check at the end that no
/// counter of an app ever went down.
#[derive(Default)]
struct Scrapes {
    texts: Vec<String>,
}

impl Scrapes {
    fn take(&mut self, lw: &Exporter) -> String {
        let text = lw.metrics();
        self.texts.push(text.clone());
        text
    }

    /// Like [`wait_for_metrics`], keeping every scrape.
    fn wait(
        &mut self,
        lw: &Exporter,
        within: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.take(lw);
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last /metrics:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// No sample of a counter (or histogram bucket, count or sum) whose
    /// labels contain `app_label` is ever lower than in an earlier scrape.
    /// Returns how many such series were checked.
    fn assert_counters_never_decrease(&self, app_label: &str) -> usize {
        let mut last: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for (i, text) in self.texts.iter().enumerate() {
            let cumulative: BTreeSet<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_once(' '))
                .filter(|(_, kind)| *kind == "counter" || *kind == "histogram")
                .map(|(name, _)| name)
                .collect();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                if !series.contains(app_label) {
                    continue;
                }
                let name = series.split('{').next().unwrap_or(series);
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| cumulative.contains(f)))
                    .unwrap_or(name);
                if !cumulative.contains(family) {
                    continue;
                }
                let value: f64 = value.parse().expect("a sample value");
                if let Some((before, at)) = last.get(series) {
                    assert!(
                        value >= *before,
                        "{series} went down from {before} (scrape {at}) to {value} (scrape {i} of {})",
                        self.texts.len()
                    );
                }
                last.insert(series.to_owned(), (value, i));
            }
        }
        last.len()
    }
}

fn loops_json(lw: &Exporter) -> serde_json::Value {
    let r = get(lw.port, "/api/v1/loops");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).expect("/api/v1/loops is JSON")
}

/// The entry of `{app_name, loop="main"}` in /api/v1/loops.
fn loop_entry(loops: &serde_json::Value, app: &str) -> Option<serde_json::Value> {
    loops["loops"]
        .as_array()?
        .iter()
        .find(|l| l["app_name"] == app && l["loop"] == "main")
        .cloned()
}

/// The 1-based line of `marker` in the repo file `rel`, and the file's path.
fn marked_line(rel: &str, marker: &str) -> (String, usize) {
    let path = repo_path(rel);
    let text = std::fs::read_to_string(&path).expect("app source");
    let line = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} in {rel}"))
        + 1;
    (path.display().to_string(), line)
}

/// The parent pid of `pid`, from /proc/<pid>/stat.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_pid(*p) == Some(pid))
        .collect()
}

/// One GET in a thread of its own (the request blocks for seconds); its
/// answer (status line and body) comes through the handle.
fn get_in_background(port: u16, path: &str) -> std::thread::JoinHandle<String> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to uvicorn");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
}

fn is_pid_alive(pid: u32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// uvicorn and the worker processes it started: SIGKILLs whichever of
/// them are still running when dropped (a failed test), by pid.
struct Uvicorn {
    app: App,
    /// (pid, cmdline) of uvicorn's children, recorded while they ran.
    children: Vec<(u32, String)>,
}

impl Drop for Uvicorn {
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut self.children);
        if self.app.child.try_wait().is_ok_and(|s| s.is_none()) {
            for pid in children_of(self.app.pid()) {
                if children.iter().all(|(p, _)| *p != pid) {
                    children.push((pid, cmdline(pid)));
                }
            }
        }
        let _ = self.app.child.kill();
        for (pid, cmd) in &children {
            // Only the same process: its pid must not have been reused.
            if is_pid_alive(*pid) && cmdline(*pid) == *cmd {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. uvicorn --workers 2: one blocked worker of two shows live.
// ---------------------------------------------------------------------------

#[test]
fn one_blocked_uvicorn_worker_of_two_shows_live_with_its_pid_and_site() {
    require_python_modules(&["uvicorn"]);
    let lw = Exporter::start(&[]);
    let (path, line) = marked_line("tests/apps/worker_app.py", "BLOCKING-LINE");
    let http = free_port();
    let mut cmd = Command::new("python3");
    App::python_env(&mut cmd);
    cmd.args(["-m", "uvicorn", "worker_app:app", "--app-dir"])
        .arg(repo_path("tests/apps"))
        .args(["--workers", "2", "--host", "127.0.0.1", "--port"])
        .arg(http.to_string())
        .args(["--lifespan", "on", "--no-access-log"])
        .env("LOOPWATCH_TARGET", lw.udp_target())
        .env("WORKER_APP_NAME", "multi")
        .env("WORKER_APP_BLOCK_S", "4");
    let mut uv = Uvicorn {
        app: App::spawn("uvicorn", cmd),
        children: Vec::new(),
    };
    let uvicorn_pid = uv.app.pid();

    // Both workers started the client in their lifespan startup.
    let mut workers = BTreeSet::new();
    while workers.len() < 2 {
        let (l, _) = uv
            .app
            .wait_line_where(WAIT, "STARTED <pid> from two workers", |l| {
                l.starts_with("STARTED ")
            });
        workers.insert(l["STARTED ".len()..].parse::<u32>().expect("a pid"));
    }
    uv.children = children_of(uvicorn_pid)
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .collect();
    for pid in &workers {
        assert_eq!(
            parent_pid(*pid),
            Some(uvicorn_pid),
            "worker {pid} is uvicorn's child: {}",
            cmdline(*pid)
        );
        assert!(
            cmdline(*pid).contains("multiprocessing"),
            "{}",
            cmdline(*pid)
        );
    }

    let series = r#"{app_name="multi",loop="main"}"#;
    let m = |name: &str| format!("{name}{series}");
    let text = wait_for_metrics(&lw, WAIT, "two live processes", |t| {
        sample(t, &m("loopwatch_loop_processes")) == Some(2.0)
            && sample(t, &m("loopwatch_loop_up")) == Some(1.0)
    });
    assert_eq!(
        sample(&text, &m("loopwatch_loop_stall_seconds")),
        Some(0.0),
        "{text}"
    );

    // One request lands on one worker and blocks its loop for 4 s.
    let request = get_in_background(http, "/block");
    let (l, blocked_at) = uv
        .app
        .wait_line_where(WAIT, "BLOCK <pid>", |l| l.starts_with("BLOCK "));
    let blocked: u32 = l["BLOCK ".len()..].parse().expect("a pid");
    assert!(
        workers.contains(&blocked),
        "the blocked pid {blocked} is one of uvicorn's workers {workers:?}"
    );
    let other = *workers
        .iter()
        .find(|p| **p != blocked)
        .expect("two workers");

    // While it blocks: the loop's stall passes 0.5 s and grows, with both
    // processes still counted live.
    let mut first = None;
    while blocked_at.elapsed() < Duration::from_millis(3000) {
        let text = lw.metrics();
        let stall = sample(&text, &m("loopwatch_loop_stall_seconds")).unwrap_or(0.0);
        if stall > 0.5 {
            assert_eq!(
                sample(&text, &m("loopwatch_loop_processes")),
                Some(2.0),
                "both workers stay live while one is blocked: {text}"
            );
            first = Some((stall, Instant::now()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stall_a, at_a) = first.unwrap_or_else(|| {
        panic!(
            "the stall passed 0.5 s while the worker was blocked; last /metrics:\n{}\n{}",
            lw.metrics(),
            uv.app.output()
        )
    });
    assert!(
        !uv.app.has_unread_line(),
        "the worker was still blocked when the stall showed"
    );
    std::thread::sleep(Duration::from_millis(600).saturating_sub(at_a.elapsed()));
    let text = lw.metrics();
    let stall_b = sample(&text, &m("loopwatch_loop_stall_seconds")).unwrap_or(0.0);
    assert!(
        !uv.app.has_unread_line(),
        "the worker was still blocked at the second scrape"
    );
    assert!(
        stall_b > stall_a,
        "the stall grows while blocked: {stall_a} then {stall_b}\n{text}"
    );

    // /api/v1/loops: the blocked process by pid, with the marked line.
    let want_site = format!("{path}:{line} render_report");
    let mut seen = None;
    while blocked_at.elapsed() < Duration::from_millis(3800) && seen.is_none() {
        let loops = loops_json(&lw);
        if let Some(entry) = loop_entry(&loops, "multi") {
            let procs = entry["processes"].as_array().cloned().unwrap_or_default();
            let mine = procs.iter().find(|p| p["pid"] == blocked);
            if mine.is_some_and(|p| p["current_stall"]["site"].is_string()) {
                seen = Some((entry.clone(), procs.clone()));
            }
        }
        if seen.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (entry, procs) = seen.unwrap_or_else(|| {
        panic!(
            "/api/v1/loops listed pid {blocked} with its current stall before the block ended:\n{}",
            loops_json(&lw)
        )
    });
    let pids: BTreeSet<u64> = procs.iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert_eq!(
        pids,
        workers.iter().map(|p| u64::from(*p)).collect(),
        "processes lists both workers: {entry}"
    );
    let mine = procs
        .iter()
        .find(|p| p["pid"] == blocked)
        .expect("the blocked one");
    assert_eq!(mine["current_stall"]["site"], want_site.as_str(), "{entry}");
    assert_eq!(mine["state"], "stalled", "{entry}");
    assert!(
        mine["stall_seconds"].as_f64().is_some_and(|s| s > 0.5),
        "{entry}"
    );
    let theirs = procs
        .iter()
        .find(|p| p["pid"] == other)
        .expect("the other one");
    assert_ne!(theirs["state"], "stalled", "{entry}");
    assert_eq!(theirs["current_stall"], serde_json::Value::Null, "{entry}");
    // The loop's own fields are the worst process's.
    assert_eq!(entry["state"], "stalled", "{entry}");
    assert_eq!(entry["pid"], blocked, "{entry}");
    assert_eq!(
        entry["current_stall"]["site"],
        want_site.as_str(),
        "{entry}"
    );

    // After the block: no stall, one counted, nobody restarted.
    uv.app
        .wait_line(&format!("UNBLOCKED {blocked}"), Duration::from_secs(10));
    let answer = request.join().expect("the request thread");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("unblocked {blocked}")),
        "{answer}"
    );
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the stall to end", |t| {
        sample(t, &m("loopwatch_loop_stall_seconds")) == Some(0.0)
            && sample(t, &m("loopwatch_loop_stalls_total")).is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        sample(&text, &m("loopwatch_loop_restarts_total")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &m("loopwatch_loop_processes")),
        Some(2.0),
        "{text}"
    );
    let site = format!(
        r#"loopwatch_loop_blocking_calls_total{{app_name="multi",loop="main",site="{want_site}"}}"#
    );
    assert_eq!(sample(&text, &site), Some(1.0), "{text}");
    assert_promtool_clean(&text);

    // SIGTERM to uvicorn (the process this test started): both workers run
    // their lifespan shutdown and say bye; nobody counts as restarted.
    uv.app.signal("TERM");
    let mut stopped = BTreeSet::new();
    while stopped != workers {
        let (l, _) = uv
            .app
            .wait_line_where(WAIT, "STOPPED <pid> from both workers", |l| {
                l.starts_with("STOPPED ")
            });
        stopped.insert(l["STOPPED ".len()..].parse::<u32>().expect("a pid"));
    }
    let status = uv.app.wait_exit(WAIT);
    assert!(
        status.success(),
        "uvicorn exited with {status}\n{}",
        uv.app.output()
    );
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "both byes", |t| {
        sample(t, &m("loopwatch_loop_up")).is_none()
    });
    assert!(
        sample(&text, &m("loopwatch_loop_processes")).unwrap_or(0.0) == 0.0,
        "{text}"
    );
    assert!(
        sample(&text, &m("loopwatch_loop_restarts_total")).unwrap_or(0.0) == 0.0,
        "a bye is no restart: {text}"
    );
    assert!(
        sample(&text, &m("loopwatch_loop_stalls_total")).is_some_and(|v| v >= 1.0),
        "counters stay after bye: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers.iter().any(|p| is_pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        workers.iter().all(|p| !is_pid_alive(*p)),
        "uvicorn's workers exited with it"
    );
}

// ---------------------------------------------------------------------------
// 2. Four processes of one app: pools add up, a kill is a restart, a bye not.
// ---------------------------------------------------------------------------

fn start_pool_worker(lw: &Exporter, worker: u32) -> App {
    let mut cmd = App::python("tests/apps/pool_app.py");
    cmd.env("LOOPWATCH_TARGET", lw.udp_target())
        .env("LOOPWATCH_WORKER", worker.to_string())
        .env("POOL_APP_NAME", "pools");
    let mut app = App::spawn(&format!("pool_app.py worker {worker}"), cmd);
    app.wait_line_where(WAIT, "READY <pid>", |l| l.starts_with("READY "));
    app
}

#[test]
fn worker_processes_add_up_and_a_killed_one_is_a_restart_but_a_stopped_one_is_not() {
    let lw =
        Exporter::start_with_config("ingest:\n  silence_timeout: 2s\n  loop_expiry: 5m\n", &[]);
    let mut scrapes = Scrapes::default();
    let mut apps: Vec<App> = (0..4).map(|w| start_pool_worker(&lw, w)).collect();

    let series = r#"{app_name="pools",loop="main"}"#;
    let m = |name: &str| format!("{name}{series}");
    let pool = |name: &str| format!(r#"{name}{{app_name="pools",pool="db"}}"#);
    let worker_up = |w: u32| {
        format!(r#"loopwatch_loop_worker_up{{app_name="pools",loop="main",worker="{w}"}}"#)
    };

    let text = scrapes.wait(&lw, WAIT, "four processes, four pools", |t| {
        sample(t, &m("loopwatch_loop_processes")) == Some(4.0)
            && sample(t, &pool("loopwatch_pool_max")) == Some(4.0)
            && sample(t, &pool("loopwatch_pool_in_use")) == Some(4.0)
    });
    assert_eq!(
        sample(&text, &pool("loopwatch_pool_size")),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, &m("loopwatch_loop_up")), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, &m("loopwatch_loop_restarts_total")),
        Some(0.0),
        "{text}"
    );
    for w in 0..4 {
        assert_eq!(
            sample(&text, &worker_up(w)),
            Some(1.0),
            "worker {w}: {text}"
        );
    }
    let created_before = sample(&text, &m("loopwatch_tasks_created_total")).unwrap_or(0.0);
    assert!(created_before > 0.0, "{text}");
    // Counters keep growing for a while, across several scrapes.
    for _ in 0..5 {
        scrapes.take(&lw);
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGKILL worker 3: no bye; once silent for silence_timeout it is gone
    // and counted as one restart, and its pool report drops out.
    signal_pid(apps[3].pid(), "KILL");
    let status = apps[3].wait_exit(WAIT);
    assert!(!status.success(), "killed: {status}");
    // (The process count follows the silence at scrape time; the restart and
    // the pool's drop-out come with the exporter's next sweep, up to a
    // second later: wait for all three.)
    let text = scrapes.wait(&lw, WAIT, "the killed process to drop out", |t| {
        sample(t, &m("loopwatch_loop_processes")) == Some(3.0)
            && sample(t, &m("loopwatch_loop_restarts_total")) == Some(1.0)
            && sample(t, &pool("loopwatch_pool_max")) == Some(3.0)
    });
    assert_eq!(
        sample(&text, &pool("loopwatch_pool_in_use")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, &m("loopwatch_loop_up")), Some(1.0), "{text}");
    assert_ne!(sample(&text, &worker_up(3)), Some(1.0), "{text}");
    for w in 0..3 {
        assert_eq!(
            sample(&text, &worker_up(w)),
            Some(1.0),
            "worker {w}: {text}"
        );
    }
    assert!(
        sample(&text, &m("loopwatch_tasks_created_total")).is_some_and(|v| v >= created_before),
        "the killed process's tasks still count: {text}"
    );

    // SIGTERM worker 2: it stops its reporter (bye) and exits 0: gone at
    // once, and no restart, not even after silence_timeout has passed.
    apps[2].signal("TERM");
    apps[2].wait_line_where(WAIT, "STOPPED <pid>", |l| l.starts_with("STOPPED "));
    apps[2].assert_success(WAIT);
    let text = scrapes.wait(
        &lw,
        Duration::from_secs(10),
        "the stopped process to drop out",
        |t| {
            sample(t, &m("loopwatch_loop_processes")) == Some(2.0)
                && sample(t, &pool("loopwatch_pool_max")) == Some(2.0)
        },
    );
    assert_eq!(
        sample(&text, &pool("loopwatch_pool_in_use")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &m("loopwatch_loop_restarts_total")),
        Some(1.0),
        "a bye is no restart: {text}"
    );
    std::thread::sleep(Duration::from_millis(3000));
    let text = scrapes.take(&lw);
    assert_eq!(
        sample(&text, &m("loopwatch_loop_restarts_total")),
        Some(1.0),
        "a stopped process is no restart after silence_timeout either: {text}"
    );
    assert_eq!(
        sample(&text, &m("loopwatch_loop_processes")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &pool("loopwatch_pool_max")),
        Some(2.0),
        "{text}"
    );
    assert_ne!(sample(&text, &worker_up(2)), Some(1.0), "{text}");
    for w in 0..2 {
        assert_eq!(
            sample(&text, &worker_up(w)),
            Some(1.0),
            "worker {w}: {text}"
        );
    }
    assert_promtool_clean(&text);

    // The other two stop cleanly too.
    for app in &mut apps[..2] {
        app.signal("TERM");
        app.assert_success(WAIT);
    }
    // (Whether loop_up is then 0 or absent, one process having died
    // without a bye before the others said theirs, the contract leaves open.)
    let text = scrapes.wait(&lw, Duration::from_secs(10), "every process gone", |t| {
        sample(t, &m("loopwatch_loop_processes")).unwrap_or(0.0) == 0.0
            && sample(t, &pool("loopwatch_pool_max")).unwrap_or(0.0) == 0.0
    });
    assert_eq!(
        sample(&text, &m("loopwatch_loop_restarts_total")),
        Some(1.0),
        "{text}"
    );

    let checked = scrapes.assert_counters_never_decrease(r#"app_name="pools""#);
    assert!(checked >= 3, "counter series checked: {checked}");
}

// ---------------------------------------------------------------------------
// 3. A real asyncpg pool too small for its load, and the alert on it in a
//    real Prometheus.
// ---------------------------------------------------------------------------

const PG_DSN: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// A real Prometheus scraping one exporter and evaluating `rule_file`,
/// both every second.
fn start_prometheus(exporter_port: u16, rule_file: &std::path::Path) -> Prometheus {
    Prometheus::start(
        "pool alert",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: loopwatch\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n",
            rule_file.display()
        ),
        &[],
    )
}

/// The `expr` of alert `name` in the repo's rule file `rel`.
fn alert_expr(rel: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo_path(rel)).expect("rule file");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("rule file is YAML");
    doc["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some(name))
        .and_then(|r| r["expr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{rel} has no alert {name}"))
}

#[test]
fn a_real_asyncpg_pool_too_small_for_its_load_counts_timeouts_and_fires_the_alert() {
    require_python_modules(&["asyncpg"]);
    let ok = Command::new("psql")
        .args([PG_DSN, "-X", "-At", "-c", "SELECT 1"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the PostgreSQL on 127.0.0.1:5432 (user postgres, database test) does not answer"
    );
    let rules = "alerts/database.yml";
    let alert = "LoopwatchPoolAcquireTimeouts";
    let expr = alert_expr(rules, alert);
    assert!(
        expr.contains("loopwatch_pool_acquire_timeouts_total"),
        "{alert} reads the timeouts counter: {expr}"
    );

    let lw = Exporter::start(&[]);
    let prom = start_prometheus(lw.port, &repo_path(rules));
    let mut cmd = App::python("tests/apps/pg_pool_app.py");
    cmd.env("LOOPWATCH_TARGET", lw.udp_target())
        .env("PG_DSN", PG_DSN)
        .env("PG_POOL_APP_NAME", "pgpool");
    let mut app = App::spawn("pg_pool_app.py", cmd);
    app.wait_line("RUNNING", WAIT);

    let pool = |name: &str| format!(r#"{name}{{app_name="pgpool",pool="db"}}"#);
    let counters = [
        "loopwatch_pool_acquires_total",
        "loopwatch_pool_acquire_timeouts_total",
        "loopwatch_pool_wait_seconds_total",
    ];
    let mut scrapes = Scrapes::default();
    let first = scrapes.wait(&lw, WAIT, "the first acquires and timeouts", |t| {
        counters
            .iter()
            .all(|c| sample(t, &pool(c)).is_some_and(|v| v > 0.0))
    });
    assert_eq!(
        sample(&first, &pool("loopwatch_pool_max")),
        Some(2.0),
        "{first}"
    );

    // Over a few seconds every counter grows, and some scrape sees callers
    // queueing (waiting_max keeps the queue between scrapes).
    let mut waiting_max_seen = 0.0_f64;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let t = scrapes.take(&lw);
        waiting_max_seen =
            waiting_max_seen.max(sample(&t, &pool("loopwatch_pool_waiting_max")).unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let last = scrapes.take(&lw);
    for c in counters {
        let (a, b) = (sample(&first, &pool(c)), sample(&last, &pool(c)));
        assert!(
            a.zip(b).is_some_and(|(a, b)| b > a),
            "{c} grows: {a:?} then {b:?}\n{last}\n{}",
            app.output()
        );
    }
    waiting_max_seen =
        waiting_max_seen.max(sample(&last, &pool("loopwatch_pool_waiting_max")).unwrap_or(0.0));
    assert!(
        waiting_max_seen > 0.0,
        "loopwatch_pool_waiting_max > 0 at some scrape\n{last}"
    );
    assert!(
        sample(&last, &pool("loopwatch_pool_in_use")).is_some_and(|v| v <= 2.0),
        "{last}"
    );

    // The real Prometheus scraped all of it and evaluates the repo's rule:
    // the alert's expression selects this pool, and the alert is pending
    // (or firing) for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_alerts = serde_json::Value::Null;
    let mut pending = None;
    while Instant::now() < deadline && pending.is_none() {
        let alerts = prom.api("/api/v1/alerts");
        pending = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["alertname"] == alert
                    && a["labels"]["app_name"] == "pgpool"
                    && a["labels"]["pool"] == "db"
                    && (a["state"] == "pending" || a["state"] == "firing")
            })
            .cloned();
        last_alerts = alerts;
        if pending.is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let targets = prom.api("/api/v1/targets");
    let pending = pending.unwrap_or_else(|| {
        panic!(
            "{alert} pending or firing for pgpool/db within 60 s\nalerts: {last_alerts}\ntargets: {targets}\nprometheus log:\n{}",
            prom.log()
        )
    });
    assert_eq!(pending["labels"]["job"], "loopwatch", "{pending}");
    let selected = prom.query(&expr);
    assert!(
        selected
            .iter()
            .any(|s| s["metric"]["app_name"] == "pgpool" && s["metric"]["pool"] == "db"),
        "the alert's expression selects pgpool/db: {selected:?}"
    );
    let rate = prom
        .query(r#"rate(loopwatch_pool_acquire_timeouts_total{app_name="pgpool",pool="db"}[1m])"#);
    let per_second: f64 = rate
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("a timeout rate: {rate:?}"));
    assert!(per_second > 0.05, "{rate:?}");
    // No reset was seen in any series Prometheus scraped from this pool.
    let resets =
        prom.query(r#"resets(loopwatch_pool_acquire_timeouts_total{app_name="pgpool"}[5m])"#);
    assert_eq!(
        resets.first().map(|s| &s["value"][1]),
        Some(&serde_json::json!("0")),
        "{resets:?}"
    );

    app.signal("TERM");
    app.wait_line("STOPPED", WAIT);
    app.assert_success(WAIT);
    scrapes.take(&lw);
    let checked = scrapes.assert_counters_never_decrease(r#"app_name="pgpool""#);
    assert!(checked >= 3, "counter series checked: {checked}");
}
