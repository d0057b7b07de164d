//! The deploy files (issue 14), against the real tools and servers:
//!
//! - everything under deploy/ passes the offline validators that
//!   scripts/check-deploy.sh runs (systemd-analyze, hadolint,
//!   check-jsonschema with the compose specification, promtool, amtool,
//!   kubectl kustomize, kubernetes-validate, the prometheus-operator schemas,
//!   `loopwatch check-config`); a missing tool fails the test, never skips it;
//! - past one machine (docs/scaling.md): a real Prometheus scrapes loopwatch
//!   while the compose demo app (deploy/compose/demo/app.py) reports to it,
//!   and remote-writes into a second Prometheus
//!   (`--web.enable-remote-write-receiver`) that evaluates the shipped
//!   alerts/*.yml unchanged, where LoopwatchTaskFailures and
//!   LoopwatchLoopStallsRepeated fire with the scraper's target and external
//!   labels intact.
//!
//! Needs Debian's prometheus, promtool, amtool, systemd-analyze and kubectl,
//! and the PyPI and npm tools scripts/check-deploy.sh names:
//! ./scripts/test.sh installs them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::*;

#[test]
fn deploy_files_pass_the_offline_validators() {
    let script = repo_path("scripts/check-deploy.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("LOOPWATCH_BIN", BIN)
        .current_dir(repo_path(""))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/check-deploy.sh failed (a missing tool: run ./scripts/test.sh, which installs them):\n{text}"
    );
    assert!(
        text.contains("check-deploy: all deploy checks passed"),
        "scripts/check-deploy.sh did not finish its checks:\n{text}"
    );
}

/// The shipped rule files, as absolute paths.
fn alert_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("alerts"))
        .expect("alerts/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no alerts/*.yml");
    files
}

fn yaml_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("  - {}\n", p.display()))
        .collect()
}

/// Waits until `promql` returns a sample in `prom`, showing `context()`
/// when it does not within `within`.
fn wait_for_query(
    prom: &Prometheus,
    promql: &str,
    within: Duration,
    context: impl Fn() -> String,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let result = prom.query(promql);
        if !result.is_empty() {
            return result;
        }
        if Instant::now() > deadline {
            panic!("no sample for {promql} within {within:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_remote_written_prometheus_fires_the_shipped_alerts() {
    // loopwatch, and the compose demo app reporting to it: a task that dies
    // every second, a 1.2 s block of the loop every 2 s.
    let lw = Exporter::start_with_config("runtime:\n  enabled: true\n", &[]);
    let mut demo_cmd = App::python("deploy/compose/demo/app.py");
    demo_cmd
        .env("LOOPWATCH_TARGET", lw.udp_target())
        .env("LOOPWATCH_APP", "demo")
        .env("FAIL_EVERY", "1")
        .env("STALL_EVERY", "2")
        .env("STALL_FOR", "1.2")
        .env("LONG_STALL_EVERY", "0");
    let mut demo = App::spawn("demo", demo_cmd);
    demo.wait_line_where(Duration::from_secs(20), "the demo's start line", |l| {
        l.starts_with("demo app 'demo' reporting to udp://127.0.0.1:")
    });

    // The central Prometheus: no scrapes of its own; it receives samples
    // over remote write and evaluates the shipped rules, unchanged.
    let central = Prometheus::start(
        "central",
        &format!(
            "global:\n  evaluation_interval: 1s\nrule_files:\n{}",
            yaml_list(&alert_files())
        ),
        &["--web.enable-remote-write-receiver"],
    );
    // The Prometheus beside loopwatch: scrapes it and forwards everything.
    // Its external labels name it, as docs/scaling.md asks: every forwarded
    // series carries them.
    let scraper = Prometheus::start(
        "scraper",
        &format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n    cluster: deploy-test\n    prometheus: scraper\n\
             scrape_configs:\n  - job_name: loopwatch\n    static_configs:\n      - targets: ['127.0.0.1:{lw_port}']\n\
             remote_write:\n  - url: http://127.0.0.1:{central_port}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            lw_port = lw.port,
            central_port = central.port
        ),
        &[],
    );
    let context = || {
        format!(
            "--- scraper log:\n{}\n--- central log:\n{}\n--- loopwatch stderr:\n{}\n--- demo:\n{}",
            scraper.log(),
            central.log(),
            lw.stderr(),
            demo.output()
        )
    };

    // The scraper sees loopwatch, and its samples reach the central server
    // with the target labels and the scraper's external labels.
    let instance = format!("127.0.0.1:{}", lw.port);
    let up = wait_for_query(
        &central,
        &format!(
            r#"up{{job="loopwatch", instance="{instance}", cluster="deploy-test", prometheus="scraper"}} == 1"#
        ),
        Duration::from_secs(60),
        context,
    );
    assert_eq!(up.len(), 1, "one loopwatch target: {up:?}");

    // The demo's dead tasks: LoopwatchTaskFailures (`for: 0m`) fires on the
    // central server, labelled with the app, the task, the exception and
    // where the series came from.
    let firing = wait_for_query(
        &central,
        r#"ALERTS{alertname="LoopwatchTaskFailures", alertstate="firing", app_name="demo", loop="main"}"#,
        Duration::from_secs(90),
        context,
    );
    let labels = &firing[0]["metric"];
    assert_eq!(labels["task"], "refresh_cache", "{firing:?}");
    assert_eq!(labels["exception"], "ConnectionError", "{firing:?}");
    assert_eq!(labels["severity"], "warning", "{firing:?}");
    assert_eq!(labels["job"], "loopwatch", "{firing:?}");
    assert_eq!(labels["instance"], instance.as_str(), "{firing:?}");
    assert_eq!(labels["cluster"], "deploy-test", "{firing:?}");
    // `app_name`, never relabelled to `app` (docs/scaling.md).
    assert!(labels.get("app").is_none(), "{firing:?}");

    // Four blocks of the loop within ten minutes: LoopwatchLoopStallsRepeated.
    wait_for_query(
        &central,
        r#"ALERTS{alertname="LoopwatchLoopStallsRepeated", alertstate="firing", app_name="demo", loop="main", cluster="deploy-test"}"#,
        Duration::from_secs(90),
        context,
    );

    // The demo stops cleanly on SIGTERM (its `bye` reaches loopwatch).
    demo.signal("TERM");
    demo.assert_success(Duration::from_secs(20));
    let loops: serde_json::Value =
        serde_json::from_str(&get(lw.port, "/api/v1/loops").text()).expect("/api/v1/loops JSON");
    let demo_loop = loops["loops"]
        .as_array()
        .and_then(|all| all.iter().find(|l| l["app_name"] == "demo"))
        .unwrap_or_else(|| panic!("no demo loop in /api/v1/loops: {loops}"));
    assert!(
        demo_loop["recent_stalls"]
            .as_array()
            .is_some_and(|stalls| stalls.iter().any(|s| s["site"]
                .as_str()
                .is_some_and(|site| site.ends_with("render_report")))),
        "/api/v1/loops names the demo's blocking function: {demo_loop}"
    );
}
