//! Keeps docs/metrics.md, the dashboards and the alert rules in step with
//! what the binary actually exports.

mod common;

use std::collections::BTreeSet;

use common::fake_api::{FakeApi, Reply};
use common::pg::{PgBouncer, PgCluster};
use common::*;
use regex::Regex;

/// Label names Prometheus, Kubernetes discovery or prometheus-operator attach
/// to targets: an exported label with such a name would become `exported_*`.
const RESERVED_LABELS: &[&str] = &[
    "app",
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "node",
    "cluster",
    "replica",
    "prometheus",
    "env",
    "environment",
    "region",
    "zone",
];

fn metric_names(text: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\b(loopwatch_[a-z0-9_]*[a-z0-9]|process_[a-z_]*[a-z])\b").expect("regex");
    re.find_iter(text).map(|m| m.as_str().to_owned()).collect()
}

fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_path("docs/metrics.md")).expect("docs/metrics.md");
    let headings: String = doc
        .lines()
        .filter(|l| l.starts_with("### "))
        .collect::<Vec<_>>()
        .join("\n");
    metric_names(&headings)
}

/// The binary, with every collector this build has, and its families.
fn exported() -> (String, BTreeSet<String>) {
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&cluster, "transaction", 2);
    let api = FakeApi::start();
    api.set(
        "catalog-token",
        Reply::new(
            200,
            &[],
            r#"{"resources":{"core":{"limit":5000,"used":1,"remaining":4999,"reset":1795440000}}}"#,
        ),
    );
    api.set("/health", Reply::new(200, &[], "ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    // A log with a traceback and a line after it, so every logs family has a series.
    let log = dir.path().join("svc.log");
    std::fs::write(
        &log,
        "Traceback (most recent call last):\n  File \"app.py\", line 1, in f\nValueError: bad\nrate limited by github\n",
    )
    .expect("log");
    std::fs::create_dir_all(dir.path().join("status")).expect("dir");
    std::fs::write(dir.path().join("status/a.json"), r#"{"state":"ok"}"#).expect("status");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        format!(
            "{}logs:
  - name: svc
    paths: ['{}']
    start_at: beginning
    interval: 200ms
    timeout: 200ms
    rules:
      - name: ratelimited
        regex: 'rate limited by (?P<api>\\w+)'
postgres:
  - name: db
    dsn: '{}'
    interval: 200ms
    timeout: 200ms
pgbouncer:
  - name: bouncer
    dsn: '{}'
    interval: 200ms
    timeout: 200ms
processes:
  - name: itself
    interval: 200ms
    timeout: 200ms
    match: {{cmdline: ['loopwatch.*--config\\.file']}}
  - name: absent
    interval: 200ms
    timeout: 200ms
    match: {{comm: [no-such-proc-x]}}
ratelimits:
  - name: github
    kind: github
    url: {}
    interval: 200ms
    timeout: 200ms
    tokens: [{{name: ci, token: catalog-token}}]
files:
  - name: status
    path: {}/status/*.json
    max_age: 1m
    interval: 200ms
    timeout: 200ms
    json_field: {{key: state, expected: ok}}
probes:
  - name: health
    url: {}/health
    interval: 200ms
    timeout: 200ms
    concurrency: {{levels: [2]}}
",
            with_free_udp("").0,
            log.display(),
            cluster.dsn("postgres", ""),
            bouncer.admin_dsn(),
            api.base_url(),
            dir.path().display(),
            api.base_url()
        ),
    )
    .expect("config");
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    // One message of each type, so the app-reported families exist.
    let batch = br#"{"v":1,"type":"heartbeat","app":"catalog","loop":"main","pid":1,"worker":"0","interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0.001,"tasks_pending":1,"tasks_created":1,"slow_callbacks":0,"failures":[{"task":"t","exception":"ValueError","count":1}],"cancellations":[{"task":"t","count":1}],"info":{"client_version":"0.1.0","runtime":"asyncio","language_version":"3.11.7"}}
{"v":1,"type":"stall","app":"catalog","loop":"main","pid":1,"stall_id":1,"blocked_s":0.7,"site":"app.py:1 f","stack":["app.py:1 f"]}
{"v":1,"type":"pool","app":"catalog","loop":"main","pid":1,"pool":"db","size":1,"max":2,"in_use":1,"waiting":0,"waiting_max":1,"acquires":3,"acquire_timeouts":0,"wait_seconds":0.01}
{"v":1,"type":"ratelimit","app":"catalog","loop":"main","pid":1,"api":"github","resource":"core","limit":5000,"remaining":4999,"reset":1795440000}
{"v":1,"type":"pool","app":"loopwatch","loop":"main","pid":1,"pool":"db","size":9,"max":9,"in_use":9,"waiting":9}
{"v":1,"type":"ratelimit","app":"catalog","loop":"main","pid":1,"api":"github","resource":"core","token":"ci","limit":1,"remaining":0,"reset":1795440000}
"#;
    let r = post(lw.port, "/api/v1/events", batch);
    assert_eq!(r.status, 200, "{}", r.text());
    // r11: loopwatch's own pool `db` and the polled budget `github/ci` are
    // not the app's to report: the same series twice would be an invalid
    // exposition (Exporter::metrics fails on any duplicate sample).
    assert!(
        r.text().contains(r#""accepted":4"#) && r.text().contains(r#""rejected":2"#),
        "{}",
        r.text()
    );
    let text = lw.metrics();
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (text, families)
}

#[test]
fn every_exported_metric_is_documented_and_every_documented_one_is_exported() {
    let documented = documented();
    let (text, exported) = exported();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "in docs/metrics.md but not exported by this build: {missing:?}\n{text}"
    );
}

#[test]
fn no_label_is_named_like_a_target_label() {
    let (text, _) = exported();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).expect("regex");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(open) = line.find('{') else { continue };
        let close = line.rfind('}').expect("closing brace");
        for cap in label.captures_iter(&line[open..=close]) {
            let name = &cap[1];
            assert!(
                !RESERVED_LABELS.contains(&name),
                "reserved label {name:?} in {line}"
            );
        }
    }
}

#[test]
fn dashboards_and_alerts_only_use_metrics_that_exist() {
    let documented = documented();
    let mut used = BTreeSet::new();
    let mut files = Vec::new();
    for dir in ["dashboards", "alerts", "alerts/tests"] {
        let Ok(entries) = std::fs::read_dir(repo_path(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "json" || e == "yml" || e == "yaml")
            {
                files.push(path);
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "json")),
        "no dashboard found"
    );
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "yml")),
        "no alert rules found"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for name in metric_names(&text) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| documented.contains(*b)))
                .map(str::to_owned)
                .unwrap_or(name);
            if !documented.contains(&base) {
                used.insert(format!("{base} (in {})", file.display()));
            }
        }
    }
    assert!(
        used.is_empty(),
        "dashboards/alerts use metrics loopwatch does not export: {used:?}"
    );
}

/// Every family is defined once, in src/families.rs (issue 11): a metric
/// name spelled anywhere else in src/ (test modules aside) would be a second
/// definition that can drift from the catalog.
#[test]
fn no_metric_name_is_spelled_outside_the_families_module() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = repo_path("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let mut offenders = Vec::new();
    for file in files {
        if file.ends_with("families.rs") || file.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            if line.contains("\"loopwatch_") || line.contains("\"process_") {
                offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "metric names outside src/families.rs:\n{}",
        offenders.join("\n")
    );
}
