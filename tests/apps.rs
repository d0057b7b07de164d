//! Real Python asyncio apps using the client (clients/python) against the real
//! binary: a blocked loop is visible *while* it is blocked, with its site; a
//! dead task is counted; garbage is rejected and counted.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

fn exporter_with_udp() -> (Exporter, u16) {
    let udp = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("udp port");
        s.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        format!("ingest:\n  udp_listen_address: 127.0.0.1:{udp}\n  max_sites: 20\n"),
    )
    .expect("config");
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    (lw, udp)
}

fn blocking_line() -> (String, usize) {
    let path = repo_path("tests/apps/blocking_app.py");
    let text = std::fs::read_to_string(&path).expect("app source");
    let line = text
        .lines()
        .position(|l| l.contains("BLOCKING-LINE"))
        .expect("marker")
        + 1;
    (path.display().to_string(), line)
}

fn run_blocking_app(uvloop: bool) {
    let (lw, udp) = exporter_with_udp();
    let (path, line) = blocking_line();
    let mut cmd = App::python("tests/apps/blocking_app.py");
    cmd.env("LOOPWATCH_TARGET", format!("udp://127.0.0.1:{udp}"))
        .env("USE_UVLOOP", if uvloop { "1" } else { "0" });
    let mut app = App::spawn("blocking_app.py", cmd);
    let wait = Duration::from_secs(20);
    let series = r#"{app_name="blocking-app",loop="main"}"#;
    let blocked_at = app.wait_line("BLOCK", wait);
    let text = lw.metrics();
    assert_eq!(
        sample(&text, &format!("loopwatch_loop_up{series}")),
        Some(1.0),
        "{text}"
    );

    // During the 3 s sleep: the stall gauge passes the threshold while the
    // app is still blocked, and /api/v1/loops names the blocking line.
    let mut seen_stall = None;
    while blocked_at.elapsed() < Duration::from_millis(2700) {
        let text = lw.metrics();
        let stall = sample(&text, &format!("loopwatch_loop_stall_seconds{series}")).unwrap_or(0.0);
        if stall > 0.5 {
            seen_stall = Some((stall, blocked_at.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stall, after) = seen_stall.unwrap_or_else(|| {
        panic!(
            "the stall gauge passed 0.5 s during the block\n{}",
            app.output()
        )
    });
    assert!(
        !app.has_unread_line(),
        "the app was still blocked when the stall showed ({stall} s after {after:?})"
    );
    let mut site_seen = false;
    while blocked_at.elapsed() < Duration::from_millis(2900) && !site_seen {
        let loops: serde_json::Value =
            serde_json::from_str(&get(lw.port, "/api/v1/loops").text()).expect("JSON");
        let current = &loops["loops"][0]["current_stall"];
        if let Some(site) = current["site"].as_str() {
            let want = format!("{path}:{line} load_profile");
            assert_eq!(site, want, "{loops}");
            assert_eq!(loops["loops"][0]["state"], "stalled", "{loops}");
            let stack = current["stack"].as_array().expect("stack");
            assert!(
                stack
                    .last()
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.contains("load_profile")),
                "{loops}"
            );
            site_seen = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        site_seen,
        "/api/v1/loops named the site before the block ended\n{}",
        app.output()
    );

    app.wait_line("UNBLOCKED", wait);
    let text = wait_for_metrics(&lw, Duration::from_secs(5), "the stall to end", |t| {
        sample(t, &format!("loopwatch_loop_stall_seconds{series}")) == Some(0.0)
            && sample(t, &format!("loopwatch_loop_stalls_total{series}")).is_some_and(|v| v >= 1.0)
    });
    let failures = r#"loopwatch_task_failures_total{app_name="blocking-app",exception="ValueError",loop="main",task="refresh_cache"}"#;
    assert_eq!(sample(&text, failures), Some(1.0), "{text}");
    let site = format!(
        r#"loopwatch_loop_blocking_calls_total{{app_name="blocking-app",loop="main",site="{path}:{line} load_profile"}}"#
    );
    assert_eq!(sample(&text, &site), Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            &format!("loopwatch_loop_blocked_seconds_total{series}")
        )
        .is_some_and(|v| v > 2.0)
    );
    let runtime = if uvloop { "uvloop" } else { "asyncio" };
    assert!(
        text.lines().any(|l| l.starts_with("loopwatch_loop_info{")
            && l.contains(&format!("runtime=\"{runtime}\""))),
        "{text}"
    );

    app.wait_line("DONE", wait);
    app.assert_success(wait);
    // bye: neither stalled nor down.
    let text = wait_for_metrics(&lw, Duration::from_secs(5), "the bye", |t| {
        sample(t, &format!("loopwatch_loop_up{series}")).is_none()
    });
    assert_eq!(
        sample(&text, failures),
        Some(1.0),
        "counters stay after bye"
    );
    assert_promtool_clean(&text);
}

#[test]
fn a_blocked_asyncio_loop_is_visible_while_blocked_with_its_site() {
    run_blocking_app(false);
}

#[test]
fn a_blocked_uvloop_loop_is_visible_while_blocked_with_its_site() {
    run_blocking_app(true);
}

#[test]
fn garbage_is_rejected_or_folded_and_the_exporter_keeps_serving() {
    let (lw, udp) = exporter_with_udp();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("sender");
    let target = ("127.0.0.1", udp);
    let garbage: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"\xff\xfe\x00binary".to_vec(),
        br#"{"v":1,"type":"heartbeat","app":"g","loop":"main","pid":"x"}"#.to_vec(),
        br#"{"v":1,"type":"heartbeat","app":"g","loop":"main","pid":1,"interval_s":"fast"}"#
            .to_vec(),
        br#"{"v":9,"type":"bye","app":"g","loop":"main","pid":1}"#.to_vec(),
        br#"{"v":1,"type":"explode","app":"g","loop":"main","pid":1}"#.to_vec(),
        vec![b'{'; 64_000],
    ];
    for g in &garbage {
        sock.send_to(g, target).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let text = wait_for_metrics(
        &lw,
        Duration::from_secs(5),
        "the garbage to be counted",
        |t| {
            sample(t, r#"loopwatch_ingest_messages_total{transport="udp"}"#)
                == Some(garbage.len() as f64)
        },
    );
    for (reason, n) in [
        ("not_json", 2.0),
        ("invalid", 2.0),
        ("unknown_version", 1.0),
        ("unknown_type", 1.0),
        ("oversize", 1.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"loopwatch_ingest_rejected_total{{reason="{reason}"}}"#)
            ),
            Some(n),
            "{reason}: {text}"
        );
    }
    // Logged once per reason (within 10 s), with the app when the message names one.
    let log = lw.stderr();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"msg="Rejected ingest messages""#))
        .collect();
    assert_eq!(rejected.len(), 5, "{log}");
    assert!(
        rejected
            .iter()
            .any(|l| l.contains("reason=invalid") && l.contains("app=g")),
        "{log}"
    );
    assert!(
        rejected
            .iter()
            .any(|l| l.contains("reason=not_json") && l.contains("app=unknown")),
        "{log}"
    );

    // 10,000 distinct sites from one loop: 20 kept (max_sites), the rest folded.
    let mut batch = Vec::new();
    for id in 1..=10_000u32 {
        batch.extend_from_slice(
            format!(r#"{{"v":1,"type":"stall","app":"g","loop":"main","pid":1,"stall_id":{id},"blocked_s":1,"site":"/srv/app/mod{id}.py:{id} f","stack":[]}}"#)
                .as_bytes(),
        );
        batch.push(b'\n');
        if id % 4000 == 0 || id == 10_000 {
            let r = post(lw.port, "/api/v1/events", &batch);
            assert_eq!(r.status, 200, "{}", r.text());
            batch.clear();
        }
    }
    let too_big = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(post(lw.port, "/api/v1/events", &too_big).status, 413);

    let text = lw.metrics();
    assert_eq!(
        sample(&text, r#"loopwatch_ingest_folded_total{kind="site"}"#),
        Some(9980.0),
        "{text}"
    );
    let site_series = text
        .lines()
        .filter(|l| l.starts_with("loopwatch_loop_blocking_calls_total{"))
        .count();
    assert_eq!(site_series, 21, "20 sites and other");
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_loop_blocking_calls_total{app_name="g",loop="main",site="other"}"#
        ),
        Some(9980.0)
    );

    // Too many apps: rejected, not tracked. (A bye from an unknown app
    // holds no slot: it is accepted and changes nothing.)
    let mut apps = Vec::new();
    for i in 0..60 {
        apps.extend_from_slice(
            format!(r#"{{"v":1,"type":"heartbeat","app":"app{i}","loop":"main","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":0,"tasks_created":0,"slow_callbacks":0,"failures":[],"cancellations":[]}}"#).as_bytes(),
        );
        apps.push(b'\n');
    }
    let r = post(lw.port, "/api/v1/events", &apps);
    let answer: serde_json::Value = serde_json::from_str(&r.text()).expect("JSON answer");
    // One app ("g") exists already; the default cap is 50.
    assert_eq!(answer["accepted"], 49, "{answer}");
    assert_eq!(answer["rejected"], 11, "{answer}");

    // Still serving, still valid.
    let text = lw.metrics();
    assert_promtool_clean(&text);
    assert_eq!(get(lw.port, "/-/healthy").status, 200);
}
