//! Unit tests of ingest: messages in, series and views out.

use super::*;
use crate::metrics::encode;

use crate::metrics::tests::sample;

fn setup(config: IngestConfig) -> (Registry, Ingest) {
    let registry = Registry::new();
    let watchdog = Arc::new(Watchdog::register(&registry));
    let ingest = Ingest::register(&registry, watchdog, config);
    (registry, ingest)
}

fn heartbeat(pid: u32, created: u64, failures: &str, lag: f64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"type":"heartbeat","app":"api","loop":"main","pid":{pid},"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":{lag},"tasks_pending":2,"tasks_created":{created},"slow_callbacks":0,"failures":[{failures}],"cancellations":[]}}"#
    )
    .into_bytes()
}

fn text(registry: &Registry) -> String {
    String::from_utf8(encode(registry)).expect("utf8")
}

#[test]
fn cumulative_counters_of_processes_add_up() {
    let (registry, ingest) = setup(IngestConfig::default());
    let f = |n| format!(r#"{{"task":"poll","exception":"ValueError","count":{n}}}"#);
    ingest
        .handle(&heartbeat(10, 5, &f(1), 0.0), Transport::Udp)
        .expect("ok");
    // A lost datagram loses nothing: the next one carries the total.
    ingest
        .handle(&heartbeat(10, 9, &f(3), 0.0), Transport::Udp)
        .expect("ok");
    // A second process of the app counts from zero; the sum goes on.
    ingest
        .handle(&heartbeat(11, 2, &f(1), 0.0), Transport::Http)
        .expect("ok");
    let t = text(&registry);
    assert!(
        t.contains(r#"loopwatch_tasks_created_total{app_name="api",loop="main"} 11"#),
        "{t}"
    );
    assert!(
        t.contains(r#"loopwatch_task_failures_total{app_name="api",exception="ValueError",loop="main",task="poll"} 4"#),
        "{t}"
    );
    assert!(
        t.contains(r#"loopwatch_ingest_messages_total{transport="udp"} 2"#),
        "{t}"
    );
    assert!(
        t.contains(r#"loopwatch_ingest_messages_total{transport="http"} 1"#),
        "{t}"
    );
}

#[test]
fn stalls_are_counted_once_by_site_and_unknown_without_a_report() {
    let (registry, ingest) = setup(IngestConfig::default());
    ingest
        .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    let stall = |blocked: f64| {
        format!(
            r#"{{"v":1,"type":"stall","app":"api","loop":"main","pid":10,"stall_id":1,"blocked_s":{blocked},"site":"app.py:9 handler","stack":["main.py:1 run","app.py:9 handler"]}}"#
        )
    };
    ingest
        .handle(stall(0.6).as_bytes(), Transport::Udp)
        .expect("ok");
    ingest
        .handle(stall(1.6).as_bytes(), Transport::Udp)
        .expect("ok");
    let views = ingest.loop_views();
    let current = views[0].current_stall.as_ref().expect("a current stall");
    assert_eq!(current.site, "app.py:9 handler");
    assert_eq!(current.blocked_seconds, 1.6);
    ingest
        .handle(&heartbeat(10, 1, "", 2.0), Transport::Udp)
        .expect("ok");
    // A stall only loopwatch saw (the app's watchdog could not run).
    ingest
        .handle(&heartbeat(10, 1, "", 1.0), Transport::Udp)
        .expect("ok");
    let t = text(&registry);
    assert!(t.contains(r#"loopwatch_loop_blocking_calls_total{app_name="api",loop="main",site="app.py:9 handler"} 1"#), "{t}");
    assert!(
        t.contains(
            r#"loopwatch_loop_blocking_calls_total{app_name="api",loop="main",site="unknown"} 1"#
        ),
        "{t}"
    );
    assert!(
        t.contains(r#"loopwatch_loop_stalls_total{app_name="api",loop="main"} 2"#),
        "{t}"
    );
    let views = ingest.loop_views();
    assert!(views[0].current_stall.is_none());
    assert_eq!(views[0].recent_stalls.len(), 2);
    assert!(views[0].recent_stalls.iter().all(|s| s.pid == 10));
    assert_eq!(
        views[0].processes[0].recent_sites,
        vec!["unknown", "app.py:9 handler"]
    );
    let closed = views[0]
        .recent_stalls
        .iter()
        .find(|s| s.site == "app.py:9 handler")
        .expect("the reported stall");
    assert_eq!(
        closed.blocked_seconds, 2.0,
        "the heartbeat after it closes it with its lag"
    );
    assert_eq!(ingest.top_sites(5).len(), 2);
}

#[test]
fn caps_reject_apps_and_fold_sites() {
    let config = IngestConfig {
        max_apps: 1,
        max_sites: 2,
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    ingest
        .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    let other_app = String::from_utf8(heartbeat(1, 1, "", 0.0))
        .expect("utf8")
        .replace(r#""app":"api""#, r#""app":"second""#);
    let other_app = other_app.as_bytes();
    assert_eq!(
        ingest.handle(other_app, Transport::Udp),
        Err(Rejection::TooManyApps)
    );
    for id in 1..=5 {
        let msg = format!(
            r#"{{"v":1,"type":"stall","app":"api","loop":"main","pid":10,"stall_id":{id},"blocked_s":1,"site":"s{id}.py:1 f","stack":[]}}"#
        );
        ingest.handle(msg.as_bytes(), Transport::Udp).expect("ok");
    }
    let t = text(&registry);
    assert!(t.contains(r#"site="other"} 3"#), "{t}");
    assert!(
        t.contains(r#"loopwatch_ingest_folded_total{kind="site"} 3"#),
        "{t}"
    );
    assert!(
        t.contains(r#"loopwatch_ingest_rejected_total{reason="too_many_apps"} 1"#),
        "{t}"
    );
}

fn pool(loop_name: &str, pid: u32, max: u64, in_use: u64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"type":"pool","app":"api","loop":"{loop_name}","pid":{pid},"pool":"db","size":{in_use},"max":{max},"in_use":{in_use},"waiting":0}}"#
    )
    .into_bytes()
}

#[test]
fn pools_of_several_processes_add_up_and_leave_with_their_process() {
    let (registry, ingest) = setup(IngestConfig::default());
    let max = |t: &str| {
        let line = t
            .lines()
            .find(|l| l.starts_with(r#"loopwatch_pool_max{app_name="api",pool="db"}"#))
            .unwrap_or_else(|| panic!("no pool_max: {t}"));
        line.rsplit(' ').next().expect("value").to_owned()
    };
    ingest
        .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    ingest
        .handle(&pool("main", 10, 4, 1), Transport::Udp)
        .expect("ok");
    // A second worker of the same app, and a repeat of the first's report.
    ingest
        .handle(&pool("main", 11, 4, 2), Transport::Udp)
        .expect("ok");
    ingest
        .handle(&pool("main", 10, 4, 3), Transport::Udp)
        .expect("ok");
    let t = text(&registry);
    assert_eq!(max(&t), "8", "{t}");
    assert!(
        t.contains(r#"loopwatch_pool_in_use{app_name="api",pool="db"} 5"#),
        "{t}"
    );
    // A third worker starts: the others' pools stay.
    ingest
        .handle(&heartbeat(12, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    assert_eq!(max(&text(&registry)), "8");
    ingest
        .handle(&pool("main", 12, 4, 0), Transport::Udp)
        .expect("ok");
    assert_eq!(max(&text(&registry)), "12");
    // The first one says bye: its pool is gone.
    ingest
        .handle(
            br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":10}"#,
            Transport::Udp,
        )
        .expect("ok");
    assert_eq!(max(&text(&registry)), "8");
}

#[test]
fn bye_stops_watching_and_expiry_removes_everything() {
    let config = IngestConfig {
        loop_expiry: Duration::ZERO,
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    ingest
        .handle(
            &heartbeat(10, 1, r#"{"task":"t","exception":"E","count":1}"#, 0.0),
            Transport::Udp,
        )
        .expect("ok");
    ingest
        .handle(br#"{"v":1,"type":"pool","app":"api","loop":"main","pid":10,"pool":"db","size":2,"max":4,"in_use":1,"waiting":0}"#, Transport::Udp)
        .expect("ok");
    ingest
        .handle(
            br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":10}"#,
            Transport::Udp,
        )
        .expect("ok");
    let t = text(&registry);
    assert!(
        !t.contains("loopwatch_loop_up{"),
        "a stopped loop is not down: {t}"
    );
    assert!(
        t.contains(r#"loopwatch_pool_max{app_name="api",pool="db"} 0"#),
        "a stopped process holds no connections: {t}"
    );
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(ingest.sweep(), 1);
    let t = text(&registry);
    assert!(!t.contains(r#"app_name="api""#), "{t}");
}

#[test]
fn r11_apps_may_not_report_as_loopwatch_itself() {
    let (registry, ingest) = setup(IngestConfig::default());
    for raw in [
        r#"{"v":1,"type":"heartbeat","app":"loopwatch","loop":"tokio","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":5,"tasks_pending":0,"tasks_created":0,"slow_callbacks":0,"failures":[],"cancellations":[]}"#,
        r#"{"v":1,"type":"bye","app":"loopwatch","loop":"tokio","pid":1}"#,
        r#"{"v":1,"type":"pool","app":"loopwatch","loop":"main","pid":1,"pool":"main","size":1,"max":2,"in_use":1,"waiting":0}"#,
    ] {
        assert_eq!(
            ingest.handle(raw.as_bytes(), Transport::Udp),
            Err(Rejection::Reserved),
            "{raw}"
        );
    }
    let t = text(&registry);
    assert!(!t.contains(r#"app_name="loopwatch""#), "{t}");
    assert_eq!(
        sample(&t, r#"loopwatch_ingest_rejected_total{reason="reserved"}"#),
        3.0
    );
}

#[test]
fn r11_apps_may_not_report_a_budget_loopwatch_polls() {
    let (registry, ingest) = setup(IngestConfig::default());
    ingest.set_polled_ratelimits(HashSet::from([("github".to_owned(), "ci".to_owned())]));
    let report = |token: &str| {
        format!(
            r#"{{"v":1,"type":"ratelimit","app":"a","loop":"l","pid":1,"api":"github","resource":"core","token":"{token}","limit":5000,"remaining":1,"reset":1795440000}}"#
        )
    };
    assert_eq!(
        ingest.handle(report("ci").as_bytes(), Transport::Udp),
        Err(Rejection::Reserved)
    );
    ingest
        .handle(report("app-bot").as_bytes(), Transport::Udp)
        .expect("another token is the app's own");
    let t = text(&registry);
    assert!(!t.contains(r#"token="ci""#), "{t}");
    assert!(t.contains(r#"token="app-bot""#), "{t}");
}

#[test]
fn r12_folded_cancellations_are_counted_once() {
    let config = IngestConfig {
        max_tasks: 1,
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    let hb = r#"{"v":1,"type":"heartbeat","app":"api","loop":"main","pid":10,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":2,"tasks_created":1,"slow_callbacks":0,"failures":[],"cancellations":[{"task":"a","count":1},{"task":"b","count":5}]}"#;
    for _ in 0..10 {
        ingest.handle(hb.as_bytes(), Transport::Udp).expect("ok");
    }
    let t = text(&registry);
    assert_eq!(
        sample(
            &t,
            r#"loopwatch_task_cancellations_total{app_name="api",loop="main",task="other"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(&t, r#"loopwatch_ingest_folded_total{kind="task"}"#),
        5.0
    );
}

#[test]
fn r12_an_app_that_only_reports_pools_keeps_them_for_the_silence_timeout() {
    let (registry, ingest) = setup(IngestConfig::default());
    ingest
        .handle(&pool("main", 10, 4, 1), Transport::Udp)
        .expect("ok");
    assert_eq!(ingest.sweep(), 0);
    let t = text(&registry);
    assert_eq!(
        sample(&t, r#"loopwatch_pool_max{app_name="api",pool="db"}"#),
        4.0
    );
    assert_eq!(ingest.state().apps.len(), 1, "the app keeps its slot");
}

#[test]
fn r12_a_sibling_worker_is_not_a_restart_and_keeps_its_pool() {
    let (registry, ingest) = setup(IngestConfig::default());
    for round in 0..3 {
        for pid in [10, 11, 12, 13] {
            ingest
                .handle(&heartbeat(pid, round, "", 0.0), Transport::Udp)
                .expect("ok");
            let one = format!(
                r#"{{"v":1,"type":"pool","app":"api","loop":"main","pid":{pid},"pool":"db","size":1,"max":1,"in_use":1,"waiting":0}}"#
            );
            ingest.handle(one.as_bytes(), Transport::Udp).expect("ok");
        }
    }
    assert_eq!(ingest.sweep(), 0);
    let t = text(&registry);
    assert_eq!(
        sample(&t, r#"loopwatch_pool_max{app_name="api",pool="db"}"#),
        4.0
    );
    assert_eq!(
        sample(&t, r#"loopwatch_pool_in_use{app_name="api",pool="db"}"#),
        4.0
    );
    assert_eq!(
        sample(
            &t,
            r#"loopwatch_loop_processes{app_name="api",loop="main"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &t,
            r#"loopwatch_loop_restarts_total{app_name="api",loop="main"}"#
        ),
        0.0
    );
    let views = ingest.loop_views();
    assert_eq!(views[0].processes.len(), 4);
}

#[test]
fn processes_beyond_the_cap_are_rejected_and_a_dead_one_gives_way() {
    let config = IngestConfig {
        max_processes_per_loop: 2,
        ..IngestConfig::default()
    };
    let (_registry, ingest) = setup(config);
    ingest
        .handle(&heartbeat(1, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    ingest
        .handle(&heartbeat(2, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    assert_eq!(
        ingest.handle(&heartbeat(3, 1, "", 0.0), Transport::Udp),
        Err(Rejection::TooManyProcesses)
    );
    ingest
        .handle(
            br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":1}"#,
            Transport::Udp,
        )
        .expect("ok");
    ingest
        .handle(&heartbeat(3, 1, "", 0.0), Transport::Udp)
        .expect("the stopped process gives way");
    let mut pids: Vec<u32> = ingest.loop_views()[0]
        .processes
        .iter()
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, vec![2, 3]);
}

#[test]
fn pool_counters_add_up_over_processes_and_never_decrease() {
    let (registry, ingest) = setup(IngestConfig::default());
    let report = |pid: u32, acquires: u64, timeouts: u64, wait: f64, waiting_max: u64| {
        format!(
            r#"{{"v":1,"type":"pool","app":"api","loop":"main","pid":{pid},"pool":"db","size":2,"max":2,"in_use":2,"waiting":1,"waiting_max":{waiting_max},"acquires":{acquires},"acquire_timeouts":{timeouts},"wait_seconds":{wait}}}"#
        )
    };
    ingest
        .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    ingest
        .handle(&heartbeat(11, 1, "", 0.0), Transport::Udp)
        .expect("ok");
    ingest
        .handle(report(10, 10, 1, 0.5, 3).as_bytes(), Transport::Udp)
        .expect("ok");
    ingest
        .handle(report(11, 5, 2, 1.0, 4).as_bytes(), Transport::Udp)
        .expect("ok");
    ingest
        .handle(report(10, 12, 1, 0.75, 1).as_bytes(), Transport::Udp)
        .expect("ok");
    let series = |t: &str, name: &str| sample(t, &format!(r#"{name}{{app_name="api",pool="db"}}"#));
    let t = text(&registry);
    assert_eq!(series(&t, "loopwatch_pool_acquires_total"), 17.0);
    assert_eq!(series(&t, "loopwatch_pool_acquire_timeouts_total"), 3.0);
    assert_eq!(series(&t, "loopwatch_pool_wait_seconds_total"), 1.75);
    assert_eq!(series(&t, "loopwatch_pool_waiting_max"), 5.0);
    // Process 11 goes away: its gauges leave the sums, its counts stay.
    ingest
        .handle(
            br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":11}"#,
            Transport::Udp,
        )
        .expect("ok");
    let t = text(&registry);
    assert_eq!(series(&t, "loopwatch_pool_acquires_total"), 17.0);
    assert_eq!(series(&t, "loopwatch_pool_max"), 2.0);
    assert_eq!(series(&t, "loopwatch_pool_waiting_max"), 1.0);
}

#[test]
fn a_worker_id_gives_per_worker_series_up_to_the_cap() {
    let config = IngestConfig {
        max_workers_per_loop: 1,
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    for (pid, worker) in [(10, "0"), (11, "1")] {
        let hb = String::from_utf8(heartbeat(pid, 1, "", 0.0))
            .expect("utf8")
            .replace(r#""pid":"#, &format!(r#""worker":"{worker}","pid":"#));
        ingest.handle(hb.as_bytes(), Transport::Udp).expect("ok");
    }
    let t = text(&registry);
    assert_eq!(
        sample(
            &t,
            r#"loopwatch_loop_worker_up{app_name="api",loop="main",worker="0"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &t,
            r#"loopwatch_loop_worker_up{app_name="api",loop="main",worker="other"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&t, r#"loopwatch_ingest_folded_total{kind="worker"}"#),
        1.0
    );
}

fn failure_series(t: &str) -> usize {
    t.lines()
        .filter(|l| l.starts_with("loopwatch_task_failures_total{"))
        .count()
}

#[test]
fn r15_caps_that_multiply_are_held_by_the_series_budget() {
    let config = IngestConfig {
        max_series_per_loop: 60,
        max_series_per_app: 150,
        max_series: 300,
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    // Every app and loop reports 10 tasks × 8 exceptions, inside every label cap.
    let failures: Vec<String> = (0..10)
        .flat_map(|t| {
            (0..8).map(move |x| format!(r#"{{"task":"t{t}","exception":"E{x}","count":1}}"#))
        })
        .collect();
    let mut accepted = 0;
    for app in 0..5 {
        for lp in 0..4 {
            let hb = String::from_utf8(heartbeat(1, 1, &failures.join(","), 0.0))
                .expect("utf8")
                .replace(r#""app":"api""#, &format!(r#""app":"a{app}""#))
                .replace(r#""loop":"main""#, &format!(r#""loop":"l{lp}""#));
            if ingest.handle(hb.as_bytes(), Transport::Http).is_ok() {
                accepted += 1;
            }
        }
    }
    assert!(accepted > 0);
    let t = text(&registry);
    let loops = t
        .lines()
        .filter(|l| l.starts_with("loopwatch_loop_up{"))
        .count();
    // What the budget allows, plus one `other` series per loop.
    assert!(
        failure_series(&t) <= 300 + loops,
        "{} series for {loops} loops",
        failure_series(&t)
    );
    assert!(sample(&t, "loopwatch_ingest_series") <= 300.0, "{t}");
    assert!(sample(&t, r#"loopwatch_ingest_folded_total{kind="task"}"#) > 0.0);
    // Nothing is lost: every failure counts, in its own series or in other.
    let total: f64 = t
        .lines()
        .filter(|l| l.starts_with("loopwatch_task_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 80.0 * loops as f64);
}

#[test]
fn r15_apps_that_never_heartbeat_give_their_slot_back() {
    let config = IngestConfig {
        max_apps: 2,
        silence_timeout: Duration::from_millis(20),
        ..IngestConfig::default()
    };
    let (registry, ingest) = setup(config);
    for junk in ["junk1", "junk2"] {
        let one = String::from_utf8(pool("main", 1, 1, 1))
            .expect("utf8")
            .replace(r#""app":"api""#, &format!(r#""app":"{junk}""#));
        ingest.handle(one.as_bytes(), Transport::Udp).expect("ok");
    }
    assert_eq!(
        ingest.handle(&heartbeat(10, 1, "", 0.0), Transport::Udp),
        Err(Rejection::TooManyApps)
    );
    std::thread::sleep(Duration::from_millis(30));
    ingest.sweep();
    assert!(!text(&registry).contains("junk"), "their series are gone");
    ingest
        .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
        .expect("a real app finds a slot");
    std::thread::sleep(Duration::from_millis(30));
    ingest.sweep();
    assert_eq!(ingest.state().apps.len(), 1, "a live app keeps its slot");
}

#[test]
fn r15_counts_beyond_2_pow_53_are_rejected_and_sums_never_wrap() {
    let (registry, ingest) = setup(IngestConfig {
        max_tasks: 1,
        ..IngestConfig::default()
    });
    let huge = protocol::MAX_COUNT;
    let f = format!(
        r#"{{"task":"a","exception":"E","count":{huge}}},{{"task":"b","exception":"E","count":{huge}}}"#
    );
    ingest
        .handle(&heartbeat(10, 1, &f, 0.0), Transport::Udp)
        .expect("at the limit");
    let t = text(&registry);
    let other = sample(
        &t,
        r#"loopwatch_task_failures_total{app_name="api",exception="E",loop="main",task="other"}"#,
    );
    assert_eq!(other, 2f64.powi(53), "{t}");
    let f = format!(r#"{{"task":"a","exception":"E","count":{}}}"#, u64::MAX);
    assert_eq!(
        ingest.handle(&heartbeat(10, 1, &f, 0.0), Transport::Udp),
        Err(Rejection::Invalid)
    );
}

#[test]
fn r15_loop_pages_are_bounded_in_bytes_and_page_through_everything() {
    let (_registry, ingest) = setup(IngestConfig {
        max_loops_per_app: 64,
        ..IngestConfig::default()
    });
    let frame = format!("/srv/{}/app.py:1 handler", "x".repeat(100));
    let stack: Vec<String> = (0..60).map(|_| format!("{frame:?}")).collect();
    for lp in 0..30 {
        let hb = String::from_utf8(heartbeat(1, 1, "", 0.0))
            .expect("utf8")
            .replace(r#""loop":"main""#, &format!(r#""loop":"l{lp:02}""#));
        ingest.handle(hb.as_bytes(), Transport::Http).expect("ok");
        let stall = format!(
            r#"{{"v":1,"type":"stall","app":"api","loop":"l{lp:02}","pid":1,"stall_id":1,"blocked_s":1,"site":"app.py:1 handler","stack":[{}]}}"#,
            stack.join(",")
        );
        ingest
            .handle(stall.as_bytes(), Transport::Http)
            .expect("ok");
    }
    let mut seen = Vec::new();
    let mut offset = Some(0);
    while let Some(from) = offset {
        let page = ingest.loop_page(from, 100, 20_000);
        assert_eq!(page.total, 30);
        let size = serde_json::to_vec(&page.loops).expect("json").len();
        assert!(size <= 20_000 || page.loops.len() == 1, "{size} bytes");
        assert!(!page.loops.is_empty());
        seen.extend(page.loops.into_iter().map(|l| l.loop_name));
        offset = page.next_offset;
    }
    let want: Vec<String> = (0..30).map(|lp| format!("l{lp:02}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn r15_stacks_kept_are_bounded_per_loop_not_per_process() {
    let (_registry, ingest) = setup(IngestConfig::default());
    let frame = format!("\"/srv/{}/app.py:1 handler\"", "x".repeat(100));
    let stack = vec![frame; 60].join(",");
    for round in 1..=3u64 {
        for pid in 1..=30u32 {
            ingest
                .handle(&heartbeat(pid, 1, "", 0.0), Transport::Udp)
                .expect("ok");
            let stall = format!(
                r#"{{"v":1,"type":"stall","app":"api","loop":"main","pid":{pid},"stall_id":{round},"blocked_s":1,"site":"app.py:1 handler","stack":[{stack}]}}"#
            );
            ingest.handle(stall.as_bytes(), Transport::Udp).expect("ok");
        }
    }
    let view = &ingest.loop_views()[0];
    let in_progress = view
        .processes
        .iter()
        .filter_map(|p| p.current_stall.as_ref())
        .filter(|s| !s.stack.is_empty())
        .count();
    assert_eq!(in_progress, 8, "stacks of stalls in progress per loop");
    assert_eq!(
        view.processes
            .iter()
            .filter(|p| p.current_stall.is_some())
            .count(),
        30
    );
    assert_eq!(view.recent_stalls.len(), 10, "ended stalls kept per loop");
    assert!(view.processes.iter().all(|p| p.recent_sites.len() == 2));
}
