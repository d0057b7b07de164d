//! A hostile or broken configuration, against the real binary's
//! `check-config` (#15): files that never end, alias bombs, tags, absurd
//! durations, values PostgreSQL refuses, and several problems at once.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `loopwatch check-config <path>` under an address-space limit of 2 GiB
/// (prlimit), killed if it takes longer than `within`; its output and how
/// long it took.
fn check_config_bounded(path: &Path, within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new("prlimit")
        .arg("--as=2147483648")
        .arg(env!("CARGO_BIN_EXE_loopwatch"))
        .arg("check-config")
        .arg(path)
        .env_remove("LOOPWATCH_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prlimit loopwatch check-config");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > within {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "check-config still running after {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().expect("output"), elapsed)
}

/// Runs check-config on `yaml`; exit code and stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("loopwatch.yml");
    std::fs::write(&path, yaml).expect("write");
    let (out, _) = check_config_bounded(&path, Duration::from_secs(20));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// r15: `token_file: /dev/zero` was read until the kernel killed loopwatch
/// at 23.5 GB; a FIFO would hang it. Now each is refused at once, naming the
/// key, and so is a directory or a file over 64 KiB.
#[test]
fn r15_secret_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 64 * 1024 + 1]).expect("write");
    let yaml = format!(
        "ratelimits:
  - name: api
    kind: http
    url: http://127.0.0.1:1/
    tokens:
      - name: zero
        token_file: /dev/zero
      - name: fifo
        token_file: {fifo}
      - name: dir
        token_file: {dir}
      - name: big
        token_file: {big}
postgres:
  - name: pg
    dsn: host=127.0.0.1 user=x
    password_file: /dev/zero
",
        fifo = fifo.display(),
        dir = dir.path().display(),
        big = big.display(),
    );
    let (code, err) = check(&yaml);
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    for (line, (key, why)) in lines.iter().zip([
        (
            "postgres[0].password_file",
            "a character device, not a regular file",
        ),
        (
            "ratelimits[0].tokens[0].token_file",
            "a character device, not a regular file",
        ),
        ("ratelimits[0].tokens[1].token_file", "a FIFO"),
        ("ratelimits[0].tokens[2].token_file", "a directory"),
        (
            "ratelimits[0].tokens[3].token_file",
            "larger than 65536 bytes",
        ),
    ]) {
        assert!(line.contains(key) && line.contains(why), "{key}: {line}");
    }
}

/// r15: a 1.06 MB file whose `match.comm` aliased a 1 MB scalar took 6.2 GB
/// and 18.5 s, and every problem line echoed the whole value. Now aliases are
/// charged before they expand: under a 2 GiB address-space limit check-config
/// answers in well under a few seconds with one short line; a file over
/// 1 MiB is refused unread, and a nested "billion laughs" too.
#[test]
fn r15_an_alias_bomb_fails_fast_within_two_gib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flat = dir.path().join("flat.yml");
    let value = "A".repeat(900 * 1024);
    let aliases = vec!["*big"; 2000].join(", ");
    std::fs::write(
        &flat,
        format!(
            "processes:\n  - name: bomb\n    match:\n      exe: [&big {value}]\n      comm: [{aliases}]\n"
        ),
    )
    .expect("write");
    let huge = dir.path().join("huge.yml");
    std::fs::write(
        &huge,
        format!(
            "processes:\n  - name: x\n    match: {{comm: [{}]}}\n",
            "B".repeat(1 << 20)
        ),
    )
    .expect("write");

    for (path, what) in [
        (&flat, "expands to more than"),
        (&huge, "larger than 1048576 bytes"),
    ] {
        let (out, took) = check_config_bounded(path, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(err.contains(what), "{}: {err}", path.display());
        assert!(
            err.len() < 1024,
            "a short answer, not the value: {} bytes",
            err.len()
        );
        assert!(!err.contains(&"A".repeat(100)) && !err.contains(&"B".repeat(100)));
        assert!(
            took < Duration::from_secs(10),
            "{}: took {took:?}",
            path.display()
        );
    }

    // A nested bomb that is valid YAML: charged before it expands.
    let mut text = String::from(
        "processes:\n  - name: lol\n    match:\n      comm: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n      exe: [",
    );
    let mut anchors = String::new();
    for i in 1..12 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        anchors.push_str(&format!("&l{i} [{refs}], "));
    }
    text.push_str(&anchors);
    text.push_str("x]\n");
    let laughs = dir.path().join("laughs.yml");
    std::fs::write(&laughs, text).expect("write");
    let (out, took) = check_config_bounded(&laughs, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("expands to more than"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// r15: a YAML tag (`!Foo`) passed check-config; now it is a problem
/// naming its key and line, with the file's other problems.
#[test]
fn r15_yaml_tags_are_refused_with_their_key() {
    let (code, err) = check(
        "runtime:\n  enabled: !Foo true\nprocesses:\n  - name: !!str w\n    match: {comm: [x]}\n",
    );
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("line 2:")
            && lines[0].contains("runtime.enabled: YAML tags are not supported"),
        "{err}"
    );
    assert!(
        lines[1].contains("line 4:") && lines[1].contains("processes[0].name: YAML tags"),
        "{err}"
    );
}

/// r15: `500000000y` and friends passed check-config; a statement_timeout
/// PostgreSQL refuses (over INT_MAX ms, or not whole ms) passed too, then
/// every connection failed. Each is now a problem with its key and line.
#[test]
fn r15_durations_are_bounded_and_postgres_timeouts_are_ones_it_takes() {
    let (code, err) = check(
        "ingest:
  udp_listen_address: ''
  silence_timeout: 500000000y
  loop_expiry: 500000001y
processes:
  - name: w
    interval: 500000000y
    match: {comm: [x]}
ratelimits:
  - name: r
    kind: github
    interval: 10m
    timeout: 2h
postgres:
  - name: big
    dsn: host=127.0.0.1 user=x
    statement_timeout: 30days
  - name: fraction
    dsn: host=127.0.0.1 user=x
    statement_timeout: 1500us
    lock_timeout: 0s
runtime:
  stall_threshold: 3h
",
    );
    assert_eq!(code, Some(2), "{err}");
    let want = [
        ("line 3:", "ingest.silence_timeout: 500000000years"),
        ("line 4:", "ingest.loop_expiry:"),
        (
            "line 23:",
            "runtime.stall_threshold: 3h is longer than the most allowed, 1h",
        ),
        ("line 7:", "processes[0].interval:"),
        (
            "line 13:",
            "ratelimits[0].timeout: 2h is longer than the most allowed, 1h",
        ),
        ("line 17:", "postgres[0].statement_timeout:"),
        (
            "line 20:",
            "postgres[1].statement_timeout: 1ms 500us is not a whole number of milliseconds",
        ),
        ("line 21:", "postgres[1].lock_timeout: must be above 0"),
    ];
    for (line, text) in want {
        assert!(
            err.lines().any(|l| l.contains(line) && l.contains(text)),
            "{line} {text}: {err}"
        );
    }
    // The valid neighbours of these values are accepted.
    let (code, err) = check(
        "ingest:\n  udp_listen_address: ''\nprocesses:\n  - name: w\n    interval: 24h\n    timeout: 1h\n    match: {comm: [x]}\npostgres:\n  - name: pg\n    dsn: host=127.0.0.1 user=x\n    timeout: 1h\n    interval: 24h\n    statement_timeout: 1h\n    lock_timeout: 1ms\n",
    );
    assert_eq!(code, Some(0), "{err}");
}

/// r15: "a file with an unknown key on line 5 and a bad duration on line 8
/// names only the first today": now both, and the checks' own problems too,
/// in one run, each on its own line with its line number.
#[test]
fn r15_every_problem_in_one_run_unknown_keys_included() {
    let (code, err) = check(
        "ingest:
  udp_listen_address: ''
processes:
  - name: a
    colour: blue
    match: {comm: [x]}
  - name: b
    interval: soon
    match: {comm: [y]}
  - name: c
    match: {comm: [this-name-is-far-too-long]}
ratelimits:
  - name: r
    kind: gitlab
",
    );
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for (line, (at, key, what)) in lines.iter().zip([
        ("line 5:", "processes[0].colour", "unknown field `colour`"),
        ("line 8:", "processes[1].interval", "soon"),
        ("line 14:", "ratelimits[0].kind", "unknown variant `gitlab`"),
        ("line 11:", "processes[2].match.comm[0]", "can never match"),
    ]) {
        assert!(
            line.contains(at) && line.contains(key) && line.contains(what),
            "{at} {key}: {err}"
        );
    }
}

/// r15: every problem line echoed the whole value (1 MB per line); now
/// at most 64 characters of it, then "…".
#[test]
fn r15_problem_lines_echo_only_an_excerpt_of_a_value() {
    let long = "x".repeat(100_000);
    let (code, err) = check(&format!(
        "processes:\n  - name: {long}\n    match: {{comm: [{long}], cmdline: ['({long}']}}\n  - name: n\n    interval: {long}\n    match: {{exe: [e]}}\nweb:\n  listen_addresses: ['{long}']\n  {key}: 1\n",
        // YAML allows a plain key up to 1024 characters.
        key = "k".repeat(1000)
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.lines().count() >= 4, "{err}");
    for line in err.lines() {
        assert!(
            line.chars().count() < 400,
            "a long line: {} chars",
            line.len()
        );
    }
    assert!(err.contains(&format!("{}…", "x".repeat(64))), "{err}");
    assert!(!err.contains(&"x".repeat(65)), "{err}");
    assert!(err.contains(&format!("web.{}…", "k".repeat(64))), "{err}");
    assert!(!err.contains(&"k".repeat(65)), "{err}");
}
