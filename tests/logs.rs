//! The `logs` collector in the real binary: files rotated by Debian's
//! `logrotate` itself (create and copytruncate) and truncated while loopwatch
//! tails them, a restart with a state file, and a real Python asyncio app
//! whose errors reach its log through `logging` only.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Debian's logrotate: the test fails, never skips, without it.
fn logrotate() -> &'static str {
    for path in [
        "/usr/sbin/logrotate",
        "/sbin/logrotate",
        "/usr/bin/logrotate",
    ] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!(
        "logrotate is not installed: this test rotates logs with Debian's logrotate itself. \
         Run ./scripts/test.sh (it installs it) or `apt-get install logrotate`."
    );
}

/// Rotates `log` now with one logrotate directive (`create` or `copytruncate`).
fn rotate(dir: &Path, log: &Path, directive: &str) {
    let conf = dir.join(format!("logrotate-{directive}.conf"));
    std::fs::write(
        &conf,
        format!(
            "{} {{\n  {directive}\n  rotate 10\n  missingok\n  nocompress\n}}\n",
            log.display()
        ),
    )
    .expect("logrotate config");
    let out = Command::new(logrotate())
        .arg("--force")
        .arg("--state")
        .arg(dir.join("logrotate.status"))
        .arg(&conf)
        .output()
        .expect("run logrotate");
    assert!(
        out.status.success(),
        "logrotate {directive} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `n` numbered lines through `file`.
fn write_lines(file: &mut std::fs::File, from: usize, n: usize) {
    let mut text = String::new();
    for i in from..from + n {
        text.push_str(&format!("line {i:06} of the service log\n"));
    }
    file.write_all(text.as_bytes()).expect("write lines");
    file.flush().expect("flush");
}

fn open_append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log")
}

const LINES: &str = r#"loopwatch_log_lines_total{log="svc"}"#;

/// Waits until exactly `want` lines are counted, then makes sure no more
/// arrive (none counted twice).
fn expect_lines(lw: &Exporter, want: f64, what: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    while sample(&lw.metrics(), LINES) < Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?} lines\n{}",
            sample(&lw.metrics(), LINES),
            lw.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several polls more: nothing is read a second time.
    std::thread::sleep(Duration::from_millis(800));
    let text = lw.metrics();
    assert_eq!(sample(&text, LINES), Some(want), "{what}\n{text}");
    text
}

#[test]
fn r13_logrotate_create_copytruncate_truncation_and_restart_count_every_line_once() {
    logrotate();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("svc.log");
    let state = dir.path().join("svc.state.json");
    let config = format!(
        "logs:
  - name: svc
    paths: ['{log}']
    start_at: beginning
    state_file: {state}
    rotate_wait: 2s
    interval: 200ms
    timeout: 200ms
",
        log = log.display(),
        state = state.display()
    );
    let mut writer = open_append(&log);
    write_lines(&mut writer, 0, 100);
    let mut lw = Exporter::start_with_config(&config, &[]);
    expect_lines(&lw, 100.0, "the first 100 lines");

    // `create`: logrotate renames svc.log to svc.log.1 and creates a new
    // svc.log. The writer keeps writing to the renamed file until it
    // reopens (as after a SIGHUP): those lines count too, once.
    rotate(dir.path(), &log, "create");
    write_lines(&mut writer, 100, 50);
    std::thread::sleep(Duration::from_millis(500));
    let mut writer = open_append(&log);
    write_lines(&mut writer, 150, 50);
    let text = expect_lines(&lw, 200.0, "200 lines across a create rotation");
    assert_eq!(
        sample(&text, r#"loopwatch_log_rotations_total{log="svc"}"#),
        Some(1.0),
        "{text}"
    );

    // `copytruncate`: svc.log is copied, then truncated in place. Lines
    // written between the copy and the truncation would be lost by design
    // (the copy is not read), so the writer pauses around the rotation.
    std::thread::sleep(Duration::from_millis(600));
    rotate(dir.path(), &log, "copytruncate");
    write_lines(&mut writer, 200, 100);
    let text = expect_lines(&lw, 300.0, "300 lines across a copytruncate rotation");
    assert_eq!(
        sample(&text, r#"loopwatch_log_truncations_total{log="svc"}"#),
        Some(1.0),
        "{text}"
    );

    // A plain truncation, then new lines.
    std::thread::sleep(Duration::from_millis(600));
    writer.set_len(0).expect("truncate");
    write_lines(&mut writer, 300, 100);
    let text = expect_lines(&lw, 400.0, "400 lines across a truncation");
    assert_eq!(
        sample(&text, r#"loopwatch_log_truncations_total{log="svc"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"loopwatch_log_lost_bytes_total{log="svc"}"#),
        Some(0.0),
        "{text}"
    );

    // A restart: loopwatch stops, lines are written, the log is rotated and
    // more lines go to the new file, all while it is down. The new process
    // reads the 100 unread lines of the rotated file and the 20 of the new
    // one: nothing twice, nothing lost.
    std::thread::sleep(Duration::from_millis(600));
    lw.signal("TERM");
    assert_eq!(
        lw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lw.stderr()
    );
    write_lines(&mut writer, 400, 100);
    rotate(dir.path(), &log, "create");
    let mut writer = open_append(&log);
    write_lines(&mut writer, 500, 20);
    let lw = Exporter::start_with_config(&config, &[]);
    let text = expect_lines(&lw, 120.0, "the 120 lines written while loopwatch was down");
    assert_eq!(
        sample(&text, r#"loopwatch_log_lost_bytes_total{log="svc"}"#),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn r13_python_asyncio_errors_in_a_log_count_by_exception_type_and_slow_callback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").expect("create the log");
    let config = format!(
        "logs:
  - name: app
    paths: ['{}/*.log']
    repeat: {{window: 1m, threshold: 6}}
    interval: 200ms
    timeout: 200ms
    rules:
      - name: ratelimited
        regex: 'rate limit exceeded for user (?P<user>\\d+)'
        max_label_values: 3
",
        dir.path().display()
    );
    let lw = Exporter::start_with_config(&config, &[]);
    let mut cmd = App::python("tests/apps/asyncio_log_errors.py");
    cmd.arg(&log);
    let mut app = App::spawn("asyncio_log_errors", cmd);
    app.assert_success(Duration::from_secs(30));

    // The whole file: 3 tracebacks of 27 lines, 2 slow callbacks, 8 warnings.
    wait_for_metrics(&lw, WAIT, "the app's 91 log lines", |t| {
        sample(t, r#"loopwatch_log_lines_total{log="app"}"#) == Some(91.0)
    });
    let exception = |t: &str, e: &str| {
        sample(
            t,
            &format!(r#"loopwatch_log_exceptions_total{{exception="{e}",log="app"}}"#),
        )
    };
    let text = wait_for_metrics(&lw, WAIT, "the tracebacks counted", |t| {
        exception(t, "ValueError") == Some(2.0)
    });
    assert_eq!(exception(&text, "KeyError"), Some(1.0), "{text}");
    let rule = |r: &str| {
        sample(
            &text,
            &format!(r#"loopwatch_log_matches_total{{log="app",rule="{r}"}}"#),
        )
    };
    assert_eq!(
        rule("asyncio_task_exception_never_retrieved"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(rule("asyncio_slow_callback"), Some(2.0), "{text}");
    assert_eq!(rule("asyncio_run_in_running_loop"), Some(0.0), "{text}");
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(r#"loopwatch_log_slow_callback_seconds_bucket{{log="app",le="{le}"}}"#),
        )
    };
    assert_eq!(bucket("0.25"), Some(0.0), "{text}");
    assert_eq!(bucket("0.5"), Some(1.0), "{text}");
    assert_eq!(bucket("1"), Some(2.0), "{text}");
    // Eight users: three kept apart, five folded into `other`.
    let user = |u: &str| {
        sample(
            &text,
            &format!(r#"loopwatch_log_matches_total{{log="app",rule="ratelimited",user="{u}"}}"#),
        )
    };
    assert_eq!(user("1000"), Some(1.0), "{text}");
    assert_eq!(user("other"), Some(5.0), "{text}");
    // The 7th and 8th rate-limit lines are beyond the threshold of 6 (the
    // traceback frames repeat at most 6 times).
    assert_eq!(
        sample(&text, r#"loopwatch_log_repeated_total{log="app"}"#),
        Some(2.0),
        "{text}"
    );
    let landing = get(lw.port, "/").text();
    assert!(
        landing.contains("rate limit exceeded for user #, retrying in # s</code></td><td>8<"),
        "the top offender is on the landing page:\n{landing}"
    );
    assert_promtool_clean(&text);
}

#[test]
fn r13_a_reload_keeps_positions_and_counters_and_applies_new_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("svc.log");
    let mut writer = open_append(&log);
    // UDP ingest off, so the file is used as written and can be edited.
    let config = |rules: &str| {
        format!(
            "ingest: {{udp_listen_address: ''}}
logs:
  - name: svc
    paths: ['{}']
    interval: 200ms
    timeout: 200ms
{rules}",
            log.display()
        )
    };
    // start_at: end. A log rebuilt by the reload would start at the end
    // again with its counter at 0, and count 10 below instead of 20.
    let lw = Exporter::start_with_config(&config(""), &[]);
    write_lines(&mut writer, 0, 10);
    expect_lines(&lw, 10.0, "the first 10 lines");
    let text = config("    rules:\n      - name: odd\n        regex: '[13579] of the service'\n");
    let rewritten = std::fs::read_to_string(&lw.config_path)
        .expect("config")
        .replace(&config(""), &text);
    std::fs::write(&lw.config_path, rewritten).expect("rewrite the config");
    lw.signal("HUP");
    wait_for_metrics(&lw, WAIT, "the new rule", |t| {
        sample(t, r#"loopwatch_log_matches_total{log="svc",rule="odd"}"#).is_some()
    });
    write_lines(&mut writer, 10, 10);
    let text = expect_lines(&lw, 20.0, "20 lines: none read again after the reload");
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_log_matches_total{log="svc",rule="odd"}"#
        ),
        Some(5.0),
        "{text}"
    );
}
