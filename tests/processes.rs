//! Process groups against real processes started by the test.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// `sleep` with an argument no other process on the machine has.
fn sleeper(token: &str) -> Child {
    Command::new("sleep")
        .arg(token)
        .spawn()
        .expect("start sleep")
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn groups_count_their_processes_restarts_and_fds() {
    let token = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    let mut kids = Reaper(vec![sleeper(&token), sleeper(&token)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("one.pid");
    std::fs::write(&pid_file, format!("{}\n", kids.0[0].id())).expect("pid file");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        with_free_udp(&format!(
            "processes:
  - name: sleepers
    interval: 200ms
    timeout: 200ms
    match:
      comm: [sleep]
      cmdline: ['^sleep {re}$']
  - name: by-pid-file
    interval: 200ms
    timeout: 200ms
    match:
      pid_file: {pid_file}
  - name: by-exe
    interval: 200ms
    timeout: 200ms
    match:
      exe: [sleep]
      cmdline: ['{re}']
  - name: absent
    interval: 200ms
    timeout: 200ms
    match:
      comm: [no-such-proc-x]
",
            re = token.replace('.', "\\."),
            pid_file = pid_file.display()
        ))
        .0,
    )
    .expect("config");
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    let text = lw.metrics();
    let g = |name: &str, group: &str| sample(&text, &format!("{name}{{group=\"{group}\"}}"));

    assert_eq!(g("loopwatch_processes", "sleepers"), Some(2.0), "{text}");
    assert_eq!(g("loopwatch_processes", "by-pid-file"), Some(1.0), "{text}");
    assert_eq!(g("loopwatch_processes", "by-exe"), Some(2.0), "{text}");
    assert_eq!(g("loopwatch_process_threads", "sleepers"), Some(2.0));
    assert!(g("loopwatch_process_resident_memory_bytes", "sleepers").expect("rss") > 100_000.0);
    assert!(g("loopwatch_process_virtual_memory_bytes", "sleepers").expect("vsz") > 1e6);
    assert!(g("loopwatch_process_open_fds", "sleepers").expect("fds") >= 3.0);
    let limit = g("loopwatch_process_max_fds", "sleepers").expect("max fds");
    assert!(limit >= 64.0, "{limit}");
    let started = g("loopwatch_process_start_time_seconds", "sleepers").expect("start time");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - started).abs() < 120.0,
        "start {started} vs now {now}"
    );
    assert!(g("loopwatch_process_cpu_seconds_total", "sleepers").expect("cpu") >= 0.0);
    assert_eq!(g("loopwatch_process_restarts_total", "sleepers"), Some(0.0));

    // A declared group with no process: alertable as 0, with no made-up values.
    assert_eq!(g("loopwatch_processes", "absent"), Some(0.0));
    assert_eq!(g("loopwatch_process_restarts_total", "absent"), Some(0.0));
    assert_eq!(g("loopwatch_process_resident_memory_bytes", "absent"), None);
    assert!(
        sample(
            &text,
            r#"loopwatch_process_read_errors_total{group="absent",reason="vanished"}"#
        )
        .is_some()
    );
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_collector_success{collector="processes",target="sleepers"}"#
        ),
        Some(1.0)
    );

    assert_promtool_clean(&text);

    // One dies: the group shrinks; the pid-file group is down.
    let mut dead = kids.0.remove(0);
    dead.kill().expect("kill");
    dead.wait().expect("reap");
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the group to shrink", |t| {
        sample(t, r#"loopwatch_processes{group="sleepers"}"#) == Some(1.0)
            && sample(t, r#"loopwatch_processes{group="by-pid-file"}"#) == Some(0.0)
    });
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_process_restarts_total{group="sleepers"}"#
        ),
        Some(0.0)
    );

    // A new process joins: a restart.
    kids.0.push(sleeper(&token));
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the restart", |t| {
        sample(t, r#"loopwatch_processes{group="sleepers"}"#) == Some(2.0)
    });
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_process_restarts_total{group="sleepers"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_garbage_pid_file_fails_the_poll_with_reason_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("bad.pid");
    std::fs::write(&pid_file, "not a pid\n").expect("pid file");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        with_free_udp(&format!(
            "processes:\n  - name: bad\n    interval: 200ms\n    timeout: 200ms\n    match: {{pid_file: {}}}\n",
            pid_file.display()
        ))
        .0,
    )
    .expect("config");
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    let text = lw.metrics();
    assert_eq!(
        sample(
            &text,
            r#"loopwatch_collector_success{collector="processes",target="bad"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"loopwatch_collector_errors_total{collector="processes",reason="parse",target="bad"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"loopwatch_processes{group="bad"}"#),
        None,
        "no made-up value"
    );
    assert!(get(lw.port, "/").text().contains("does not hold a PID"));
}

/// r15: a `pid_file` that is a device or a FIFO was read without limit (or
/// blocked the poll); now each poll fails at once with reason `io`, and a
/// long garbage pid file is quoted as a short excerpt.
#[test]
fn r15_a_pid_file_that_is_a_device_or_fifo_fails_the_poll_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo.pid");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let garbage = dir.path().join("garbage.pid");
    std::fs::write(&garbage, "g".repeat(4000)).expect("pid file");
    let lw = Exporter::start_with_config(
        &format!(
            "processes:
  - name: zero
    interval: 200ms
    timeout: 200ms
    match: {{pid_file: /dev/zero}}
  - name: fifo
    interval: 200ms
    timeout: 200ms
    match: {{pid_file: {fifo}}}
  - name: garbage
    interval: 200ms
    timeout: 200ms
    match: {{pid_file: {garbage}}}
",
            fifo = fifo.display(),
            garbage = garbage.display()
        ),
        &[],
    );
    let errors = |t: &str, target: &str, reason: &str| {
        sample(
            t,
            &format!(
                r#"loopwatch_collector_errors_total{{collector="processes",reason="{reason}",target="{target}"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    wait_for_metrics(
        &lw,
        Duration::from_secs(10),
        "three failed polls each",
        |t| {
            errors(t, "zero", "io") >= 3.0
                && errors(t, "fifo", "io") >= 3.0
                && errors(t, "garbage", "parse") >= 3.0
        },
    );
    let text = lw.metrics();
    for target in ["zero", "fifo"] {
        assert_eq!(errors(&text, target, "timeout"), 0.0, "{target}: {text}");
    }
    let log = lw.stderr();
    assert!(
        log.contains("a character device, not a regular file"),
        "{log}"
    );
    assert!(log.contains("a FIFO, not a regular file"), "{log}");
    assert!(!log.contains(&"g".repeat(65)), "{log}");
}
