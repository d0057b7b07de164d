//! No secret loopwatch is given shows anywhere it writes (#15): not in
//! `/metrics`, the landing page, `/api/v1/loops`, readiness, the log at debug
//! level (polls failing, a reload), nor in `check-config`'s output, valid or
//! not. Every secret is a distinctive string, and every output is searched.

mod common;

use std::time::Duration;

use common::fake_api::{FakeApi, Reply};
use common::*;

const SECRETS: [&str; 6] = [
    "ingestTOKEN-r15secret-6",
    "dsnPW-r15secret-1",
    "filePW-r15secret-2",
    "inlinePW-r15secret-3",
    "apiTOKEN-r15secret-4",
    "ghTOKEN-r15secret-5",
];

#[test]
fn r15_no_secret_in_any_output() {
    let [
        ingest_token,
        dsn_pw,
        file_pw,
        inline_pw,
        api_token,
        gh_token,
    ] = SECRETS;
    let first = FakeApi::start();
    let second = FakeApi::start();
    // The http API redirects to another host, which refuses: its words are logged.
    first.set(
        "/limits",
        Reply::new(
            302,
            &[(
                "Location",
                &format!("http://localhost:{}/limits", second.port),
            )],
            "",
        ),
    );
    second.set(
        "/limits",
        Reply::new(401, &[], r#"{"message":"Bad credentials"}"#),
    );
    first.set(
        gh_token,
        Reply::new(401, &[], r#"{"message":"Bad credentials"}"#),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{file_pw}\n")).expect("write");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{gh_token}\n")).expect("write");
    let closed = free_port();
    let yaml = format!(
        "ingest:
  token: {ingest_token}
postgres:
  - name: real
    dsn: host=127.0.0.1 port=5432 user=postgres dbname=postgres password={dsn_pw}
    interval: 500ms
    timeout: 400ms
  - name: gone
    dsn: host=127.0.0.1 port={closed} user=x dbname=x
    password_file: {pw_file}
    interval: 500ms
    timeout: 400ms
pgbouncer:
  - name: pgb
    dsn: host=127.0.0.1 port={closed} user=pgbouncer
    password: {inline_pw}
    interval: 500ms
    timeout: 400ms
ratelimits:
  - name: api
    kind: http
    url: {base}/limits
    token_header: X-Api-Key
    interval: 500ms
    timeout: 400ms
    tokens:
      - name: t
        token: {api_token}
  - name: github
    kind: github
    url: {base}
    interval: 500ms
    timeout: 400ms
    tokens:
      - name: g
        token_file: {token_file}
",
        pw_file = pw_file.display(),
        token_file = token_file.display(),
        base = first.base_url(),
    );
    let lw = Exporter::start_with_config(&yaml, &["--log.level", "debug"]);
    let polled = |t: &str| {
        [
            ("postgres", "real"),
            ("postgres", "gone"),
            ("pgbouncer", "pgb"),
            ("ratelimits", "api/t"),
            ("ratelimits", "github/g"),
        ]
        .iter()
        .all(|(c, target)| {
            sample(
                t,
                &format!(r#"loopwatch_collector_errors_total{{collector="{c}",reason="connect",target="{target}"}}"#),
            )
            .is_some()
                || sample(
                    t,
                    &format!(r#"loopwatch_collector_success{{collector="{c}",target="{target}"}}"#),
                )
                .is_some_and(|v| v >= 0.0)
        })
    };
    wait_for_metrics(&lw, Duration::from_secs(20), "every target polled", polled);
    // A few failed polls each, then a reload.
    std::thread::sleep(Duration::from_secs(2));
    lw.signal("HUP");
    wait_for_metrics(&lw, Duration::from_secs(10), "the reload", |t| {
        sample(t, r#"loopwatch_config_reloads_total{result="success"}"#) == Some(1.0)
    });
    let mut outputs: Vec<(String, String)> = vec![("/metrics".into(), lw.metrics())];
    for path in ["/", "/api/v1/loops", "/-/ready", "/-/healthy"] {
        outputs.push((path.into(), get(lw.port, path).text()));
    }
    let log = lw.stderr();
    assert!(log.contains("level=DEBUG"), "a debug log: {log}");
    assert!(log.contains("Bad credentials"), "{log}");
    outputs.push(("log".into(), log));

    // check-config on the file as it is, and broken in every target.
    let path = lw.config_path.to_str().expect("utf8").to_owned();
    let out = run_bin(&["check-config", &path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    outputs.push(("check-config".into(), format!("{out:?}")));
    let broken = yaml
        .replace("interval: 500ms", "interval: 1ms\n    bogus: 1")
        .replace("port=5432", "port=5432 ${LOOPWATCH_SURELY_UNSET_VAR}");
    let broken_path = dir.path().join("broken.yml");
    std::fs::write(&broken_path, broken).expect("write");
    let out = run_bin(&["check-config", broken_path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.lines().count() >= 10, "{err}");
    outputs.push(("check-config (broken)".into(), format!("{out:?}")));

    for (name, text) in &outputs {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} in {name}:\n{text}");
        }
    }
    // And the token never left the API's origin.
    for line in second.header_lines() {
        assert!(!line.contains(api_token), "{line}");
    }
}
