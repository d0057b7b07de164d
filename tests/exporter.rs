//! The real binary: endpoints, flags, exit codes, reload and shutdown.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

#[test]
fn default_config_serves_valid_metrics_about_itself() {
    let lw = Exporter::start_default(&[]);
    let r = get(lw.port, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    for series in [
        r#"loopwatch_loop_up{app_name="loopwatch",loop="tokio"}"#,
        r#"loopwatch_loop_stall_seconds{app_name="loopwatch",loop="tokio"}"#,
        r#"loopwatch_collector_success{collector="runtime",target="tokio"}"#,
        "loopwatch_config_last_reload_successful",
    ] {
        assert!(sample(&text, series).is_some(), "{series} missing:\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_loop_up{app_name="loopwatch",loop="tokio"}"#
        ),
        Some(1.0)
    );
    assert!(text.contains(
        r#"loopwatch_loop_lag_seconds_bucket{app_name="loopwatch",loop="tokio",le="0.001"}"#
    ));
    assert!(text.contains("loopwatch_build_info{arch="), "{text}");
    let cpu = sample(&text, "process_cpu_seconds_total").expect("process_cpu_seconds_total");
    assert!(cpu >= 0.0);
    assert!(sample(&text, "process_resident_memory_bytes").expect("rss") > 1e6);
    assert!(sample(&text, "process_open_fds").expect("fds") >= 3.0);
    assert!(!text.contains("exported_"), "{text}");
    assert_promtool_clean(&text);

    // r11: the default config receives apps' reports on 127.0.0.1:10071.
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_collector_success{collector="ingest",target="udp"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let hb = br#"{"v":1,"type":"heartbeat","app":"default-cfg","loop":"main","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":0,"tasks_created":1,"slow_callbacks":0,"failures":[],"cancellations":[]}"#;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.send_to(hb, "127.0.0.1:10071").expect("send");
    wait_for_metrics(&lw, Duration::from_secs(5), "the heartbeat", |t| {
        sample(
            t,
            r#"loopwatch_loop_up{app_name="default-cfg",loop="main"}"#,
        ) == Some(1.0)
    });
}

#[test]
fn metrics_are_gzipped_when_asked() {
    let lw = Exporter::start(&[]);
    let r = get_with(lw.port, "/metrics", "Accept-Encoding: gzip\r\n").expect("GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert!(text.contains("loopwatch_build_info"), "{text}");
}

#[test]
fn landing_health_and_readiness() {
    let lw = Exporter::start(&[]);
    let landing = get(lw.port, "/");
    assert_eq!(landing.status, 200);
    let html = landing.text();
    assert!(html.contains(r#"href="/metrics""#), "{html}");
    assert!(html.contains("<td>runtime</td><td>tokio</td>"), "{html}");
    assert_eq!(get(lw.port, "/-/healthy").status, 200);
    assert_eq!(get(lw.port, "/-/ready").status, 200);
    assert_eq!(get(lw.port, "/nope").status, 404);
}

#[test]
fn telemetry_path_and_disabled_exporter_metrics() {
    let lw = Exporter::start(&[
        "--web.telemetry-path",
        "/prom",
        "--web.disable-exporter-metrics",
    ]);
    let r = get(lw.port, "/prom");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("loopwatch_build_info"));
    assert!(!text.contains("process_cpu_seconds_total"), "{text}");
    assert_eq!(get(lw.port, "/metrics").status, 404);
    assert!(get(lw.port, "/").text().contains(r#"href="/prom""#));
}

#[test]
fn version_flag_prints_the_exporter_line() {
    let out = run_bin(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("loopwatch, version ")
            && first.contains("(branch: ")
            && first.contains(", revision: "),
        "{text}"
    );
}

#[test]
fn print_default_config_passes_check_config() {
    let out = run_bin(&["print-default-config"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("default.yml");
    std::fs::write(&path, &out.stdout).expect("write");
    let check = run_bin(&["check-config", path.to_str().expect("utf8 path")]);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("valid"));
}

#[test]
fn invalid_config_prints_every_problem_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yml");
    std::fs::write(
        &path,
        "processes:\n  - name: w\n    match: {cmdline: ['(']}\n  - name: w\n    interval: 1s\n    timeout: 2s\n    match: {comm: [x]}\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf8 path");
    for args in [vec!["check-config", p], vec!["--config.file", p]] {
        let out = run_bin(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "one line per problem: {err}");
        assert!(
            lines[0].contains("line 3:") && lines[0].contains("processes[0].match.cmdline[0]"),
            "{err}"
        );
        assert!(
            lines[1].contains("line 4:") && lines[1].contains("processes[1].name"),
            "{err}"
        );
        assert!(
            lines[2].contains("line 6:") && lines[2].contains("processes[1].timeout"),
            "{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }

    let out = run_bin(&["check-config", "/nonexistent/loopwatch.yml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));

    std::fs::write(&path, "runtime:\n  enabled: true\n  bogus: 1\n").expect("write");
    let out = run_bin(&["check-config", p]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3:") && err.contains("unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn bad_flag_value_exits_2() {
    let out = run_bin(&["--web.listen-address", "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nonsense"), "{err}");
}

/// r11: the listen address and the telemetry path are checked once, in
/// config, after the flags are merged in: a wrong flag exits 2 naming the
/// flag, with or without a config file, and the same rule applies to the key.
#[test]
fn r11_a_wrong_web_flag_exits_2_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ok.yml");
    std::fs::write(&path, "web:\n  telemetry_path: /prom\n").expect("write");
    let file = path.to_str().expect("utf8 path");
    for (flag, value) in [
        ("--web.telemetry-path", "metrics"),
        ("--web.telemetry-path", "/"),
        ("--web.listen-address", "10071"),
    ] {
        for extra in [vec![], vec!["--config.file", file]] {
            let mut args = vec![flag, value];
            args.extend(&extra);
            let out = run_bin(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            // r14: in the log format, like every start-up error.
            assert!(
                err.starts_with("time=")
                    && err.contains("level=ERROR")
                    && err.contains(&format!("problem=\"command line: {flag}: "))
                    && err.contains(value),
                "{args:?}: {err}"
            );
        }
    }
    std::fs::write(&path, "web:\n  telemetry_path: /\n").expect("write");
    let out = run_bin(&["check-config", file]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2:") && err.contains("web.telemetry_path: must start with /"),
        "{err}"
    );
}

/// r11: a loopwatch whose UDP port is taken is not ready, and says why.
#[test]
fn r11_ready_is_503_while_udp_ingest_cannot_bind() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let udp = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taken.yml");
    std::fs::write(
        &path,
        format!("ingest:\n  udp_listen_address: 127.0.0.1:{udp}\n"),
    )
    .expect("write");
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loopwatch"))
        .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
        .args(["--config.file", path.to_str().expect("utf8")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start loopwatch");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        if let Ok(r) = get_with(port, "/-/ready", "") {
            if r.text().contains("ingest/udp: failing") {
                last = Some(r);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = last.expect("/-/ready names the failing UDP ingest");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("Address already in use"), "{}", r.text());

    // Once the port is free, ingest binds it and the exporter turns ready.
    drop(taken);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ready = false;
    while std::time::Instant::now() < deadline && !ready {
        ready = get_with(port, "/-/ready", "").is_ok_and(|r| r.status == 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "ready once UDP ingest binds");
}

#[test]
fn port_in_use_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = run_bin(&["--web.listen-address", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("cannot listen on 127.0.0.1:{port}")) && last.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn listens_on_every_address_given() {
    let second = free_port();
    let lw = Exporter::start(&["--web.listen-address", &format!("127.0.0.1:{second}")]);
    assert_eq!(get(lw.port, "/-/healthy").status, 200);
    assert_eq!(get(second, "/-/healthy").status, 200);
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("loopwatch.yml");
    // Every version of the file keeps this exporter's own UDP port.
    let (ingest, _) = with_free_udp("");
    std::fs::write(&path, format!("{ingest}processes: []\n")).expect("write");
    let lw = Exporter::start(&["--config.file", path.to_str().expect("utf8")]);
    assert!(!lw.metrics().contains("group=\"reloaded\""));

    std::fs::write(
        &path,
        format!("{ingest}processes:\n  - name: reloaded\n    interval: 200ms\n    timeout: 200ms\n    match: {{comm: [no-such-proc]}}\n"),
    )
    .expect("write");
    lw.signal("HUP");
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the reloaded group", |t| {
        sample(t, r#"loopwatch_processes{group="reloaded"}"#) == Some(0.0)
    });
    assert_eq!(
        sample(&text, r#"loopwatch_config_reloads_total{result="success"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "loopwatch_config_last_reload_successful"),
        Some(1.0)
    );

    std::fs::write(&path, format!("{ingest}processes: [{{name: x}}]\n")).expect("write");
    lw.signal("HUP");
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the rejected reload", |t| {
        sample(t, "loopwatch_config_last_reload_successful") == Some(0.0)
    });
    assert_eq!(
        sample(&text, r#"loopwatch_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"loopwatch_processes{group="reloaded"}"#),
        Some(0.0),
        "the old config keeps running"
    );
    let log = lw.stderr();
    assert!(log.contains("Rejected the new configuration"), "{log}");
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly() {
    for sig in ["TERM", "INT"] {
        let mut lw = Exporter::start(&[]);
        lw.signal(sig);
        assert_eq!(
            lw.wait_exit(Duration::from_secs(10)),
            Some(0),
            "SIG{sig}: {}",
            lw.stderr()
        );
        assert!(lw.stderr().contains("Shutting down"), "{}", lw.stderr());
    }
}

#[test]
fn logs_are_logfmt_or_json() {
    // Parallel tests share the default UDP port, so other lines (a failed
    // bind) may come first: check the start line and that every line parses.
    let mut lw = Exporter::start(&["--log.format", "json"]);
    lw.signal("TERM");
    lw.wait_exit(Duration::from_secs(10));
    let log = lw.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let start = lines
        .iter()
        .find(|l| l["msg"] == "Starting loopwatch")
        .unwrap_or_else(|| panic!("no start line: {log}"));
    // r14: the keys the Prometheus tools write.
    assert_eq!(start["level"], "INFO", "{start}");
    assert!(
        start["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{start}"
    );
    assert!(
        start["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("exporter.rs:")),
        "{start}"
    );

    let mut lw = Exporter::start(&[]);
    lw.signal("TERM");
    lw.wait_exit(Duration::from_secs(10));
    let log = lw.stderr();
    assert!(
        log.lines().all(|l| l.starts_with("time=")
            && l.contains(" level=")
            && l.contains(" source=")
            && l.contains(" msg=")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("level=INFO") && l.contains(r#"msg="Starting loopwatch""#)),
        "{log}"
    );
}

#[test]
fn a_repeating_log_message_is_limited_and_counted() {
    // A PostgreSQL target on a closed port fails every 100 ms; at debug level
    // each repeat would be a line.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        format!(
            "ingest:\n  udp_listen_address: ''\npostgres:\n  - name: gone\n    dsn: 'host=127.0.0.1 port={} user=postgres connect_timeout=1'\n    interval: 100ms\n    timeout: 100ms\n",
            free_port()
        ),
    )
    .expect("write config");
    let cfg = config.to_str().expect("utf8");
    let lw = Exporter::start(&[
        "--config.file",
        cfg,
        "--log.level",
        "debug",
        "--log.repeat-burst",
        "2",
    ]);
    let text = wait_for_metrics(&lw, Duration::from_secs(15), "suppressed lines", |t| {
        sample(t, r#"loopwatch_log_suppressed_total{level="debug"}"#).is_some_and(|v| v >= 5.0)
    });
    assert_promtool_clean(&text);
    let log = lw.stderr();
    // Per message: a poll that timed out on a loaded machine is another one.
    let repeats = log
        .lines()
        .filter(|l| {
            l.contains(r#"msg="Collector poll failed again""#) && l.contains("reason=connect")
        })
        .count();
    assert_eq!(repeats, 2, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(r#"msg="Collector poll failed""#) && l.contains("reason=connect")),
        "{log}"
    );

    // 0s turns the limit off: every repeat is a line.
    let lw = Exporter::start(&[
        "--config.file",
        cfg,
        "--log.level",
        "debug",
        "--log.repeat-window",
        "0s",
    ]);
    wait_for_metrics(&lw, Duration::from_secs(15), "repeated polls", |t| {
        sample(t, r#"loopwatch_collector_errors_total{collector="postgres",reason="connect",target="gone"}"#)
            .is_some_and(|v| v >= 6.0)
    });
    let log = lw.stderr();
    assert!(
        log.lines()
            .filter(|l| l.contains(r#"msg="Collector poll failed again""#))
            .count()
            >= 4,
        "{log}"
    );
}
