//! The `files` collector on real files: written, aged (mtime set back),
//! deleted, a JSON status file flipping state, globs, and a status file that
//! stops being touched by a real process.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use filetime::FileTime;

fn file_series(family: &str, file: &str) -> String {
    format!(r#"{family}{{file="{file}"}}"#)
}

fn age_back(path: &std::path::Path, secs: u64) {
    let then = SystemTime::now() - Duration::from_secs(secs);
    filetime::set_file_mtime(path, FileTime::from_system_time(then)).expect("set mtime");
}

#[test]
fn real_files_are_aged_deleted_globbed_and_their_json_status_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let heartbeat = d.join("heartbeat");
    let status = d.join("status.json");
    let gone = d.join("gone");
    std::fs::write(&heartbeat, "").expect("write");
    age_back(&heartbeat, 300);
    std::fs::write(&status, r#"{"state": "ok", "pid": 42}"#).expect("write");
    std::fs::write(&gone, "x").expect("write");
    for w in ["w1", "w2", "w3"] {
        std::fs::create_dir_all(d.join("workers").join(w)).expect("dir");
        std::fs::write(d.join("workers").join(w).join("hb"), "").expect("write");
    }
    age_back(&d.join("workers/w2/hb"), 50);
    let lw = Exporter::start_with_config(
        &format!(
            "files:
  - name: heartbeat
    path: {heartbeat}
    max_age: 2m
    interval: 200ms
    timeout: 200ms
  - name: status
    path: {status}
    max_age: 1m
    interval: 200ms
    timeout: 200ms
    json_field: {{key: state, expected: ok}}
  - name: gone
    path: {gone}
    max_age: 1m
    interval: 200ms
    timeout: 200ms
  - name: never-written
    path: {d}/never-written.json
    max_age: 30s
    interval: 200ms
    timeout: 200ms
    json_field: {{key: state, expected: ok}}
  - name: workers
    path: {d}/workers/*/hb
    max_age: 1m
    max_files: 2
    interval: 200ms
    timeout: 200ms
  - name: none-yet
    path: {d}/spool/*.status
    max_age: 1m
    interval: 200ms
    timeout: 200ms
",
            heartbeat = heartbeat.display(),
            status = status.display(),
            gone = gone.display(),
            d = d.display(),
        ),
        &[],
    );
    let exists = |t: &str, f: &str| sample(t, &file_series("loopwatch_file_exists", f));
    let age = |t: &str, f: &str| sample(t, &file_series("loopwatch_file_age_seconds", f));
    let max_age = |t: &str, f: &str| sample(t, &file_series("loopwatch_file_max_age_seconds", f));
    let ok = |t: &str, f: &str| sample(t, &file_series("loopwatch_file_status_ok", f));
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "every file", |t| {
        [
            "heartbeat",
            "status",
            "gone",
            "never-written",
            "workers/w1/hb",
            "none-yet",
        ]
        .iter()
        .all(|f| exists(t, f).is_some())
    });
    assert_promtool_clean(&text);

    // Aged 300 s back: past its 2 minutes.
    assert_eq!(exists(&text, "heartbeat"), Some(1.0));
    let a = age(&text, "heartbeat").expect("age");
    assert!((299.0..330.0).contains(&a), "{a}");
    assert_eq!(max_age(&text, "heartbeat"), Some(120.0));
    // Fresh, with its JSON field as expected.
    assert!(age(&text, "status").expect("age") < 30.0);
    assert_eq!(ok(&text, "status"), Some(1.0));
    // Declared but never written: exists 0 and not ok, never absent; no age.
    assert_eq!(exists(&text, "never-written"), Some(0.0));
    assert_eq!(age(&text, "never-written"), None);
    assert_eq!(max_age(&text, "never-written"), Some(30.0));
    assert_eq!(ok(&text, "never-written"), Some(0.0));
    // A glob: one series per match up to max_files, every match counted.
    assert_eq!(exists(&text, "workers/w1/hb"), Some(1.0));
    let w2 = age(&text, "workers/w2/hb").expect("w2 age");
    assert!((49.0..80.0).contains(&w2), "{w2}");
    assert_eq!(exists(&text, "workers/w3/hb"), None, "beyond max_files");
    assert_eq!(
        sample(
            &text,
            &file_series("loopwatch_file_glob_matches", "workers")
        ),
        Some(3.0)
    );
    // A glob that matches nothing yet is missing, under the target's name.
    assert_eq!(exists(&text, "none-yet"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            &file_series("loopwatch_file_glob_matches", "none-yet")
        ),
        Some(0.0)
    );

    // Deleted: exists 0, its age gone, its max age kept.
    std::fs::remove_file(&gone).expect("delete");
    // The status flips, written in place.
    std::fs::write(&status, r#"{"state": "failed", "pid": 42}"#).expect("write");
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "deleted and failed", |t| {
        exists(t, "gone") == Some(0.0) && ok(t, "status") == Some(0.0)
    });
    assert_eq!(age(&text, "gone"), None);
    assert_eq!(max_age(&text, "gone"), Some(60.0));
    assert_eq!(exists(&text, "status"), Some(1.0));

    // Back to ok; a half-written file is not ok; a file larger than
    // max_bytes (64 KiB by default) is not read.
    std::fs::write(&status, r#"{"state": "ok"}"#).expect("write");
    wait_for_metrics(&lw, Duration::from_secs(10), "ok again", |t| {
        ok(t, "status") == Some(1.0)
    });
    std::fs::write(&status, r#"{"state": "o"#).expect("write");
    wait_for_metrics(&lw, Duration::from_secs(10), "half-written", |t| {
        ok(t, "status") == Some(0.0)
    });
    std::fs::write(
        &status,
        format!(r#"{{"state": "ok", "pad": "{}"}}"#, "x".repeat(70_000)),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ok(&lw.metrics(), "status"), Some(0.0));

    // A new match of the glob appears; the empty glob's placeholder goes.
    std::fs::create_dir_all(d.join("spool")).expect("dir");
    std::fs::write(d.join("spool/a.status"), "").expect("write");
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the new match", |t| {
        exists(t, "none-yet/a.status") == Some(1.0)
    });
    assert_eq!(exists(&text, "none-yet"), None);
    // A missing or unreadable file is a value: every target's collector succeeds.
    let success: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(r#"loopwatch_collector_success{collector="files""#))
        .collect();
    assert_eq!(success.len(), 6, "{text}");
    assert!(success.iter().all(|l| l.ends_with(" 1")), "{success:?}");
}

/// Issue 13: a watchdog thread deadlocked, and the only sign was a status
/// file that stopped being updated. A real process touches the file; once
/// it stops, the age grows past the maximum age, which is what
/// LoopwatchStatusFileStale compares (its promtool tests cover the `for`).
#[test]
fn r13_a_status_file_no_longer_touched_by_a_real_process_grows_past_its_max_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("watchdog.status");
    let mut toucher = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do touch '{}'; sleep 0.1; done",
            status.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the toucher");
    let lw = Exporter::start_with_config(
        &format!(
            "files:
  - name: watchdog
    path: {}
    max_age: 1s
    interval: 100ms
    timeout: 100ms
",
            status.display()
        ),
        &[],
    );
    let age = |t: &str| sample(t, &file_series("loopwatch_file_age_seconds", "watchdog"));
    let max = |t: &str| {
        sample(
            t,
            &file_series("loopwatch_file_max_age_seconds", "watchdog"),
        )
    };
    // While it is touched, the age stays under its maximum.
    for _ in 0..10 {
        let text = wait_for_metrics(&lw, Duration::from_secs(10), "the file", |t| {
            age(t).is_some()
        });
        assert!(
            age(&text).expect("age") < max(&text).expect("max"),
            "{text}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    // The process hangs (here: is stopped); the file is left as it was.
    toucher.kill().expect("kill");
    toucher.wait().expect("wait");
    let text = wait_for_metrics(
        &lw,
        Duration::from_secs(10),
        "stale",
        |t| matches!((age(t), max(t)), (Some(a), Some(m)) if a > m),
    );
    assert_eq!(
        sample(&text, &file_series("loopwatch_file_exists", "watchdog")),
        Some(1.0)
    );
    let first = age(&text).expect("age");
    std::thread::sleep(Duration::from_millis(500));
    let later = age(&lw.metrics()).expect("age");
    assert!(later > first, "the age keeps growing: {first} then {later}");
}
