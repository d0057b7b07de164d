//! The parsers and the tailing state machine against real files in a
//! temporary directory (the binary-level tests with logrotate and a Python
//! app are in tests/logs.rs).

use std::io::Write;
use std::time::Duration;

use super::*;
use crate::config::{LogRepeatConfig, WebFlags};

fn target(dir: &Path, extra: &str) -> LogTarget {
    let yaml = format!(
        "logs:\n  - name: app\n    paths: ['{}/*.log']\n    start_at: beginning\n    rotate_wait: 0s\n{extra}",
        dir.display()
    );
    let mut config = crate::config::parse(&yaml, "test", &WebFlags::default()).expect("valid");
    config.logs.remove(0)
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("write");
}

fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        // The other of the two is 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

fn lines(f: &Families) -> f64 {
    value(f, "loopwatch_log_lines_total", &[])
}

#[test]
fn normalise_masks_what_varies() {
    assert_eq!(
        normalise("2026-11-30 03:07:48 WARNING rate limit hit for user 1234, retry in 3.5s"),
        "#-#-# #:#:# WARNING rate limit hit for user #, retry in #.#"
    );
    assert_eq!(
        normalise(
            "request 550e8400-e29b-41d4-a716-446655440000 id=0x7f3a failed: 'alice' \"GET /x\""
        ),
        "request <uuid> id=# failed: '*' \"*\""
    );
    assert_eq!(normalise("object at deadbeefcafe0000"), "object at #");
    assert_eq!(normalise("don't stop"), "don't stop");
}

#[test]
fn exception_types_and_slow_callbacks_are_read() {
    assert_eq!(exception_type("ValueError: bad"), Some("ValueError"));
    assert_eq!(
        exception_type("asyncio.exceptions.CancelledError"),
        Some("asyncio.exceptions.CancelledError")
    );
    assert_eq!(exception_type("2026-11-30 ERROR x"), None);
    assert_eq!(
        slow_callback_seconds(
            "Executing <Task pending name='Task-1' coro=<main() running at app.py:3>> took 3.200 seconds"
        ),
        Some(3.2)
    );
    assert_eq!(
        slow_callback_seconds("Executing <Handle> took many seconds"),
        None
    );
}

#[test]
fn builtin_rules_and_chained_tracebacks_count_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(
        &log,
        "ERROR asyncio Task exception was never retrieved
future: <Task finished name='Task-2' coro=<boom()> exception=KeyError('x')>
Traceback (most recent call last):
  File \"app.py\", line 3, in boom
    raise KeyError('x')
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"app.py\", line 5, in boom
    raise RuntimeError('y')
RuntimeError: y
WARNING asyncio Executing <Handle cb()> took 0.300 seconds
RuntimeError: asyncio.run() cannot be called from a running event loop
Task was destroyed but it is pending!
app.py:9: RuntimeWarning: coroutine 'f' was never awaited
TypeError: 'NoneType' object is not callable
Traceback (most recent call last):
  File \"app.py\", line 1, in <module>
ValueError: last
",
    );
    let mut tail = Tail::new(target(dir.path(), ""));
    tail.poll(Instant::now());
    // A traceback at the end is complete once a poll finds nothing more.
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 21.0);
    let rule = |r: &str| value(&f, "loopwatch_log_matches_total", &[("rule", r)]);
    assert_eq!(rule("asyncio_task_exception_never_retrieved"), 1.0);
    assert_eq!(rule("asyncio_slow_callback"), 1.0);
    assert_eq!(rule("asyncio_run_in_running_loop"), 1.0);
    assert_eq!(rule("asyncio_task_destroyed_pending"), 1.0);
    assert_eq!(rule("asyncio_coroutine_never_awaited"), 1.0);
    assert_eq!(rule("nonetype_not_callable"), 1.0);
    let exc = |e: &str| value(&f, "loopwatch_log_exceptions_total", &[("exception", e)]);
    // A chain counts its last exception only.
    assert_eq!(exc("RuntimeError"), 1.0);
    assert_eq!(exc("ValueError"), 1.0);
    assert!(
        !f.iter()
            .flat_map(|f| f.get_metric())
            .any(|m| m.get_label().iter().any(|l| l.value() == "KeyError")),
        "the handled exception of a chain is not counted"
    );
}

#[test]
fn user_rules_fold_label_values_beyond_the_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    for api in ["github", "stripe", "slack", "github"] {
        append(&log, &format!("rate limited by {api}\n"));
    }
    let mut tail = Tail::new(target(
        dir.path(),
        "    rules:\n      - name: ratelimited\n        regex: 'rate limited by (?P<api>\\w+)'\n        max_label_values: 2\n",
    ));
    let f = tail.poll(Instant::now());
    let m = |api: &str| {
        value(
            &f,
            "loopwatch_log_matches_total",
            &[("rule", "ratelimited"), ("api", api)],
        )
    };
    assert_eq!(m("github"), 2.0);
    assert_eq!(m("stripe"), 1.0);
    assert_eq!(m("other"), 1.0);
}

#[test]
fn a_bad_rule_regex_is_a_config_error_with_its_line() {
    let yaml = "logs:\n  - name: app\n    paths: [/tmp/x.log]\n    rules:\n      - name: broken\n        regex: 'a(b'\n";
    let err = crate::config::parse(yaml, "test.yml", &WebFlags::default()).expect_err("invalid");
    let shown = err.to_string();
    assert!(
        shown.contains("line 6:") && shown.contains("logs[0].rules[0].regex"),
        "{shown}"
    );
    let yaml = "logs:\n  - name: app\n    paths: [/tmp/x.log]\n    rules:\n      - name: r\n        regex: '(?P<instance>x)'\n";
    let err = crate::config::parse(yaml, "test.yml", &WebFlags::default()).expect_err("invalid");
    assert!(err.to_string().contains("exported_instance"), "{err}");
}

#[test]
fn repeated_messages_count_beyond_the_threshold_and_show_the_top_offender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    for i in 0..10 {
        append(&log, &format!("rate limit exceeded, retry in {i}s\n"));
    }
    append(&log, "something else\n");
    let mut tail = Tail::new(target(
        dir.path(),
        "    repeat: {window: 1m, threshold: 3}\n",
    ));
    let f = tail.poll(Instant::now());
    assert_eq!(value(&f, "loopwatch_log_repeated_total", &[]), 7.0);
    assert_eq!(
        tail.matcher.repeat.top(),
        Some(("rate limit exceeded, retry in #".to_owned(), 10))
    );
    let _ = LogRepeatConfig::default();
}

#[test]
fn rename_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(&log, "1\n2\n");
    let mut tail = Tail::new(target(dir.path(), ""));
    assert_eq!(lines(&tail.poll(Instant::now())), 2.0);
    // The writer still has the old file open after the rename.
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    std::fs::rename(&log, dir.path().join("a.log.1")).expect("rename");
    old.write_all(b"3\n4").expect("write");
    append(&log, "5\n");
    let f = tail.poll(Instant::now());
    old.write_all(b"\n").expect("write");
    let f2 = tail.poll(Instant::now() + Duration::from_secs(1));
    assert_eq!(value(&f, "loopwatch_log_rotations_total", &[]), 1.0);
    assert_eq!(lines(&f2), 5.0, "lines 1 to 5, each once");
}

#[test]
fn a_glob_that_matches_the_rotated_name_reads_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(&log, "1\n2\n");
    let mut t = target(dir.path(), "");
    t.paths = vec![format!("{}/a.log*", dir.path().display())];
    let mut tail = Tail::new(t);
    tail.poll(Instant::now());
    std::fs::rename(&log, dir.path().join("a.log.1")).expect("rename");
    append(&log, "3\n");
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 3.0);
    assert_eq!(value(&f, "loopwatch_log_files", &[]), 2.0);
}

#[test]
fn truncation_starts_again_from_the_first_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(&log, "one\ntwo\nthree\n");
    let mut tail = Tail::new(target(dir.path(), ""));
    tail.poll(Instant::now());
    std::fs::write(&log, "").expect("truncate");
    append(&log, "four\n");
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 4.0);
    assert_eq!(value(&f, "loopwatch_log_truncations_total", &[]), 1.0);
    // Rewritten past the old size between two polls: the first bytes differ.
    std::fs::write(&log, "FIVE is a longer line than before\n").expect("rewrite");
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 5.0);
    assert_eq!(value(&f, "loopwatch_log_truncations_total", &[]), 2.0);
}

#[test]
fn long_lines_are_cut_and_counted_and_partial_lines_wait_for_their_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(&log, &"x".repeat(100_000));
    let mut tail = Tail::new(target(dir.path(), "    max_line_bytes: 1024\n"));
    assert_eq!(lines(&tail.poll(Instant::now())), 0.0);
    append(&log, "\nshort\n");
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 2.0);
    assert_eq!(value(&f, "loopwatch_log_long_lines_total", &[]), 1.0);
    assert!(tail.files[0].pending.capacity() < 200_000);
}

#[test]
fn docker_and_cri_lines_are_unwrapped_and_joined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(
        &log,
        r#"{"log":"Task exception was never retrieved\n","stream":"stderr","time":"2026-11-30T03:00:00.000000001Z"}
{"log":"Traceback (most recent call last):\n","stream":"stderr","time":"2026-11-30T03:00:00.000000002Z"}
{"log":"  File \"app.py\", line 1, in f\n","stream":"stderr","time":"2026-11-30T03:00:00.000000003Z"}
{"log":"ValueError: a very long ","stream":"stderr","time":"2026-11-30T03:00:00.000000004Z"}
{"log":"message\n","stream":"stderr","time":"2026-11-30T03:00:00.000000005Z"}
not json
"#,
    );
    let mut tail = Tail::new(target(dir.path(), "    format: docker\n"));
    tail.poll(Instant::now());
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 4.0);
    assert_eq!(value(&f, "loopwatch_log_parse_errors_total", &[]), 1.0);
    assert_eq!(
        value(
            &f,
            "loopwatch_log_exceptions_total",
            &[("exception", "ValueError")]
        ),
        1.0
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("0.log");
    append(
        &log,
        "2026-11-30T03:00:00.000000001Z stderr F Task was destroyed but it is pending!
2026-11-30T03:00:00.000000002Z stdout P Executing <Handle cb()> 
2026-11-30T03:00:00.000000003Z stdout P took 2.5
2026-11-30T03:00:00.000000004Z stdout F  seconds
2026-11-30T03:00:00.000000005Z stdout F 
garbage
",
    );
    let mut tail = Tail::new(target(dir.path(), "    format: cri\n"));
    let f = tail.poll(Instant::now());
    assert_eq!(lines(&f), 3.0);
    assert_eq!(value(&f, "loopwatch_log_parse_errors_total", &[]), 1.0);
    assert_eq!(
        value(
            &f,
            "loopwatch_log_matches_total",
            &[("rule", "asyncio_slow_callback")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "loopwatch_log_matches_total",
            &[("rule", "asyncio_task_destroyed_pending")]
        ),
        1.0
    );
}

#[test]
fn the_state_file_resumes_after_the_last_complete_line_even_across_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    let state = dir.path().join("state.json");
    let extra = format!("    state_file: {}\n", state.display());
    append(&log, "1\n2\npart");
    let mut tail = Tail::new(target(dir.path(), &extra));
    assert_eq!(lines(&tail.poll(Instant::now())), 2.0);
    assert!(tail.save_state().is_none());
    drop(tail);
    // While loopwatch is down: the line ends, the file is rotated, a new one starts.
    append(&log, "ial\n4\n");
    std::fs::rename(&log, dir.path().join("a.log.1")).expect("rename");
    append(&log, "5\n");
    let mut tail = Tail::new(target(dir.path(), &extra));
    let f = tail.poll(Instant::now());
    assert_eq!(
        lines(&f),
        3.0,
        "partial, 4 and 5: nothing twice, nothing lost"
    );
    assert_eq!(value(&f, "loopwatch_log_rotations_total", &[]), 1.0);
}

#[test]
fn start_at_end_skips_the_rest_of_an_unended_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    append(&log, "old\nhalf a li");
    let mut t = target(dir.path(), "");
    t.start_at = StartAt::End;
    let mut tail = Tail::new(t);
    assert_eq!(lines(&tail.poll(Instant::now())), 0.0);
    append(&log, "ne\nnew\n");
    assert_eq!(lines(&tail.poll(Instant::now())), 1.0, "only `new`");
}

#[test]
fn r13_a_file_truncated_and_refilled_to_the_same_length_saves_its_new_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    let state = dir.path().join("state.json");
    let extra = format!("    state_file: {}\n", state.display());
    append(&log, "aaaa\n");
    let mut tail = Tail::new(target(dir.path(), &extra));
    tail.poll(Instant::now());
    assert!(tail.save_state().is_none());
    // Same offset after the truncation: the state must still change.
    std::fs::write(&log, "bbbb\n").expect("rewrite");
    tail.poll(Instant::now());
    assert!(tail.save_state().is_none());
    drop(tail);
    append(&log, "cccc\n");
    let mut tail = Tail::new(target(dir.path(), &extra));
    let f = tail.poll(Instant::now());
    assert_eq!(
        lines(&f),
        1.0,
        "only cccc: bbbb was counted before the restart"
    );
    assert_eq!(value(&f, "loopwatch_log_truncations_total", &[]), 0.0);
}

#[test]
fn garbage_invalid_utf8_a_huge_line_and_a_file_that_becomes_a_directory_are_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("a.log");
    let mut garbage: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    garbage.extend_from_slice(b"\n\xff\xfe invalid utf-8 \xc3\x28\n");
    garbage.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    garbage.push(b'\n');
    std::fs::write(&log, &garbage).expect("write");
    let mut tail = Tail::new(target(dir.path(), ""));
    let mut f = tail.poll(Instant::now());
    // 8 MiB per poll at most: the huge line ends in a later poll.
    for _ in 0..3 {
        f = tail.poll(Instant::now());
    }
    // 391 newlines in the 100,000 bytes of 0..=255, then the invalid UTF-8
    // line, then the 10 MiB line: 394, the huge one cut.
    assert_eq!(lines(&f), 394.0);
    assert!(value(&f, "loopwatch_log_long_lines_total", &[]) >= 1.0);
    assert!(tail.files[0].pending.capacity() <= 1024 * 1024);
    std::fs::remove_file(&log).expect("remove");
    std::fs::create_dir(&log).expect("a directory in its place");
    let f = tail.poll(Instant::now());
    assert_eq!(
        value(
            &f,
            "loopwatch_log_read_errors_total",
            &[("reason", "not_a_file")]
        ),
        1.0
    );
}

#[test]
fn exception_types_fold_into_other_beyond_the_cap() {
    let mut c = Counters::default();
    for name in ["A", "B", "C", "A", "D"] {
        c.exception(name, 2);
    }
    assert_eq!(c.exceptions.get("A"), Some(&2));
    assert_eq!(c.exceptions.get("B"), Some(&1));
    assert_eq!(c.exceptions.get(OTHER), Some(&2));
}
