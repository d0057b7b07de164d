//! Loading as a whole: decoding, every problem with its key and line, flags, secrets.

use super::*;
use std::time::Duration;

fn problems(text: &str) -> Vec<Problem> {
    parse(text, "test.yml", &WebFlags::default())
        .expect_err("config must be rejected")
        .problems
}

#[test]
fn embedded_default_is_valid() {
    let c = default_config();
    assert!(c.runtime.enabled);
    assert!(c.processes.is_empty());
    assert_eq!(
        c.web.listen_addresses,
        // `:10071`: IPv4 and IPv6 (issue 14).
        vec!["[::]:10071".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(c.udp_listen_address, Some(([127, 0, 0, 1], 10071).into()));
}

#[test]
fn empty_file_means_defaults() {
    let c = parse("", "x", &WebFlags::default()).expect("empty is valid");
    assert_eq!(c.web.telemetry_path, "/metrics");
}

#[test]
fn unknown_key_is_rejected_with_path_and_line() {
    let p = problems("runtime:\n  enabled: true\n  tick_intervall: 1s\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "runtime.tick_intervall");
    assert!(
        p[0].message.contains("unknown field `tick_intervall`"),
        "{p:?}"
    );
    assert_eq!(p[0].location.map(|l| l.0), Some(3), "{p:?}");
}

#[test]
fn wrong_type_names_the_key() {
    let p = problems("processes:\n  - name: w\n    interval: soon\n    match: {comm: [x]}\n");
    assert_eq!(p[0].path, "processes[0].interval");
    assert_eq!(p[0].location.map(|l| l.0), Some(3), "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_line() {
    let text = "\
processes:
  - name: ok
    match:
      comm: [python3]
  - name: ok
    interval: 1s
    timeout: 5s
    match:
      cmdline: ['worker(']
  - name: empty
    match: {}
";
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "processes[1].name",
            "processes[1].timeout",
            "processes[1].match.cmdline[0]",
            "processes[2].match"
        ],
        "{p:?}"
    );
    let lines: Vec<usize> = p.iter().filter_map(|p| p.location.map(|l| l.0)).collect();
    assert_eq!(lines, vec![5, 7, 9, 11], "{p:?}");
    let shown = ConfigError {
        source_name: "test.yml".into(),
        problems: p,
    }
    .to_string();
    assert!(
        shown.starts_with("test.yml: line 5:"),
        "one line per problem with file and line: {shown}"
    );
    assert_eq!(shown.lines().count(), 4);
}

#[test]
fn bad_listen_address_is_named() {
    let p = problems("web:\n  listen_addresses: ['nonsense']\n");
    assert_eq!(p[0].path, "web.listen_addresses[0]");
    assert_eq!(p[0].location.map(|l| l.0), Some(2));
}

#[test]
fn ratelimit_targets_are_checked_key_by_key() {
    let text = "ratelimits:
  - name: github
    kind: github
    method: HEAD
    tokens:
      - name: ci
        token: ghp_inlineSECRET
      - name: ci
        token: ${LOOPWATCH_SURELY_UNSET_VAR}
      - name: none
  - name: example
    kind: http
    remaining_header: 'bad header'
  - name: creds
    kind: http
    url: https://user:pw@api.example.com/
    interval: 1s
    timeout: 2s
";
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "ratelimits[0].method",
            "ratelimits[0].tokens[1].name",
            "ratelimits[0].tokens[1].token",
            "ratelimits[0].tokens[2].token",
            "ratelimits[1].url",
            "ratelimits[1].remaining_header",
            "ratelimits[2].timeout",
            "ratelimits[2].url",
        ],
        "{p:?}"
    );
    assert_eq!(p[0].location.map(|l| l.0), Some(4));
    assert!(!format!("{p:?}").contains("ghp_inlineSECRET"));
    let unknown = problems("ratelimits:\n  - name: g\n    kind: gitlab\n");
    assert_eq!(unknown[0].path, "ratelimits[0].kind", "{unknown:?}");

    let ok = parse(
        "ratelimits:\n  - name: github\n    kind: github\n    tokens: [{name: ci, token: t}]\n",
        "ok.yml",
        &WebFlags::default(),
    )
    .expect("valid");
    let t = &ok.ratelimits[0];
    assert_eq!(t.interval, Duration::from_secs(60));
    assert!(ok.summary().contains("1 rate-limit target"));
}

#[test]
fn postgres_secrets_are_checked_and_never_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pw");
    std::fs::write(&file, "file-secret\n").expect("write");
    let text = format!(
        "postgres:\n  - name: a\n    dsn: host=db user=${{LOOPWATCH_SURELY_UNSET_VAR}}\n  - name: b\n    dsn: host=db user=x password=inline-secret\n    password_file: {}\n  - name: c\n    dsn: 'not a dsn ==='\n",
        file.display()
    );
    let p = problems(&text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["postgres[0].dsn", "postgres[1].password", "postgres[2].dsn"],
        "{p:?}"
    );
    assert_eq!(p[0].location.map(|l| l.0), Some(3));
    let shown = format!("{p:?}");
    assert!(
        !shown.contains("inline-secret") && !shown.contains("file-secret"),
        "{shown}"
    );

    let ok = format!(
        "postgres:\n  - name: a\n    dsn: host=db user=x\n    password_file: {}\n",
        file.display()
    );
    let c = parse(&ok, "ok.yml", &WebFlags::default()).expect("valid");
    let pg = &c.postgres[0].connection;
    assert_eq!(pg.get_password(), Some(&b"file-secret"[..]));
    assert_eq!(pg.get_application_name(), Some("loopwatch"));
}

#[test]
fn syntax_error_has_a_location() {
    let p = problems("runtime:\n  enabled: [\n");
    assert!(p[0].location.is_some(), "{p:?}");
}

/// r11: the key of a dsn or password problem comes from the error's type,
/// not from its wording; each points at its own line.
#[test]
fn r11_postgres_problems_name_their_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("absent");
    let text = format!(
        "pgbouncer:\n  - name: a\n    dsn: host=db password=${{LOOPWATCH_SURELY_UNSET_VAR}}\n  - name: b\n    dsn: host=db\n    password_file: {}\n  - name: c\n    dsn: host=db password=x\n    password: ${{LOOPWATCH_SURELY_UNSET_VAR}}\n  - name: d\n    dsn: host=db password=x\n    password: y\n",
        absent.display()
    );
    let p = problems(&text);
    let found: Vec<(&str, usize)> = p
        .iter()
        .map(|p| (p.path.as_str(), p.location.map_or(0, |l| l.0)))
        .collect();
    assert_eq!(
        found,
        vec![
            ("pgbouncer[0].dsn", 3),
            ("pgbouncer[1].password_file", 6),
            ("pgbouncer[2].password", 9),
            ("pgbouncer[3].password", 12),
        ],
        "{p:?}"
    );
    // The unset variable is named in a dsn problem whose text no longer starts with "dsn".
    assert!(p[0].message.contains("LOOPWATCH_SURELY_UNSET_VAR"), "{p:?}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "file-token-SECRET\n").expect("write");
    let text = format!(
        "postgres:
  - name: a
    dsn: host=db user=x password=dsn-SECRET
  - name: b
    dsn: host=db user=x
    password: inline-pw-SECRET
pgbouncer:
  - name: c
    dsn: host=db user=x
    password_file: {file}
ratelimits:
  - name: github
    kind: github
    tokens:
      - name: one
        token: inline-token-SECRET
      - name: two
        token_file: {file}
",
        file = file.display()
    );
    let raw: RawConfig = serde_norway::from_str(&text).expect("decodes");
    let resolved = parse(&text, "secrets.yml", &WebFlags::default()).expect("valid");
    assert_eq!(
        resolved.postgres[1].connection.get_password(),
        Some(&b"inline-pw-SECRET"[..])
    );
    for shown in [
        format!("{raw:?}"),
        format!("{resolved:?}"),
        format!("{resolved:#?}"),
    ] {
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}

#[test]
fn flags_are_merged_before_validation_and_named_in_problems() {
    let flags = WebFlags {
        listen_addresses: vec!["nonsense".into()],
        telemetry_path: Some("metrics".into()),
        max_requests: Some(0),
        disable_exporter_metrics: true,
        systemd_socket: false,
    };
    let e = parse("web:\n  telemetry_path: /m\n", "f.yml", &flags).expect_err("bad flags");
    let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["--web.listen-address", "--web.telemetry-path"],
        "{e}"
    );
    assert!(e.problems.iter().all(|p| p.location.is_none()), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("command line: --web.listen-address: "),
        "{e}"
    );

    let flags = WebFlags {
        listen_addresses: vec!["localhost:9".into()],
        telemetry_path: Some("/m2".into()),
        max_requests: Some(0),
        disable_exporter_metrics: true,
        systemd_socket: false,
    };
    let c = parse(
        "web:\n  telemetry_path: /m\n  max_requests: 3\n",
        "f.yml",
        &flags,
    )
    .expect("valid");
    assert_eq!(
        c.web.listen_addresses,
        vec![SocketAddr::from(([127, 0, 0, 1], 9))]
    );
    assert_eq!(c.web.telemetry_path, "/m2");
    assert_eq!(c.web.max_requests, None);
    assert!(!c.web.exporter_metrics);
    // The file's own bad value names the key and its line.
    let p = problems("web:\n  telemetry_path: metrics\n");
    assert_eq!(p[0].path, "web.telemetry_path");
    assert_eq!(p[0].location.map(|l| l.0), Some(2));
}

#[test]
fn r15_tls_keys_of_the_dsn_are_checked_where_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    let text = format!(
        "postgres:\n  - name: a\n    dsn: host=db password=s3cret sslmode=verify-full\n  - name: b\n    dsn: 'postgres://u:s3cret@db/x?sslmode=verify-ca&sslrootcert={}'\n  - name: c\n    dsn: host=db sslmode=allow\n  - name: d\n    dsn: host=db sslcert=/etc/cert.pem\n  - name: e\n    dsn: host=db\n    max_message_bytes: 10\npgbouncer:\n  - name: f\n    dsn: host=db sslmode=disable sslrootcert=/etc/ca.pem\n",
        not_pem.display()
    );
    let p = problems(&text);
    let found: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        found,
        vec![
            "postgres[0].dsn",
            "postgres[1].dsn",
            "postgres[2].dsn",
            "postgres[3].dsn",
            "postgres[4].max_message_bytes",
            "pgbouncer[0].dsn",
        ],
        "{p:?}"
    );
    assert!(p[0].message.contains("needs sslrootcert"), "{p:?}");
    assert!(p[1].message.contains("ca.pem"), "{p:?}");
    assert!(p.iter().all(|p| !p.message.contains("s3cret")), "{p:?}");

    // A valid one resolves to the mode libpq would use.
    let config = parse(
        "postgres:\n  - name: a\n    dsn: host=db sslmode=require\n    allow_cleartext_password: true\n",
        "test.yml",
        &WebFlags::default(),
    )
    .expect("valid");
    let wire = &config.postgres[0].wire;
    assert_eq!(wire.ssl_mode, SslMode::Require);
    assert!(wire.allow_cleartext_password);
    assert_eq!(wire.max_message_bytes, 64 << 20);
    assert_eq!(
        config.postgres[0].connection.get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable,
        "loopwatch negotiates TLS itself"
    );
}

#[test]
fn file_targets_are_checked_key_by_key() {
    let text = "\
files:
  - name: worker
    path: /run/worker/status.json
    max_age: 2m
    json_field: {key: state, expected: ok}
  - name: a/b
    path: '/run/[x'
    max_age: 0s
    max_files: 0
  - name: worker
    path: /run/hb
    max_age: 1m
    json_field: {key: 'a..b', expected: [1]}
";
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "files[1].name",
            "files[1].max_age",
            "files[1].max_files",
            "files[1].path",
            "files[2].name",
            "files[2].json_field.key",
            "files[2].json_field.expected",
        ],
        "{p:?}"
    );
    let ok = parse(
        "files:\n  - name: hb\n    path: /run/app/*/heartbeat\n    max_age: 120s\n",
        "ok.yml",
        &WebFlags::default(),
    )
    .expect("valid");
    assert_eq!(ok.files[0].max_age, Duration::from_secs(120));
    assert_eq!(ok.files[0].interval, Duration::from_secs(15));
    assert!(matches!(ok.files[0].source, FileSource::Glob { .. }));
    assert!(ok.summary().contains("1 file target"), "{}", ok.summary());
}

#[test]
fn probe_targets_are_checked_and_header_values_never_echoed() {
    let text = "\
probes:
  - name: health
    url: http://127.0.0.1:8080/health
    headers:
      - {name: X-Api-Key, value: probe-inline-SECRET}
    concurrency: {}
  - name: bad
    url: 'https://user:probe-url-SECRET@example.com/'
    method: 'G T'
    headers:
      - {name: 'bad header', value: x}
      - {name: X-Token, value: '${LOOPWATCH_SURELY_UNSET_VAR}'}
    expected_status: ['2xx', '700']
    body_match: '('
    concurrency: {levels: [5, 500], interval: 10s}
";
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "probes[1].url",
            "probes[1].method",
            "probes[1].headers[0].name",
            "probes[1].headers[1].value",
            "probes[1].expected_status[1]",
            "probes[1].body_match",
            "probes[1].concurrency.levels[1]",
            "probes[1].concurrency.interval",
        ],
        "{p:?}"
    );
    let shown = format!("{p:?}");
    assert!(
        !shown.contains("probe-inline-SECRET") && !shown.contains("probe-url-SECRET"),
        "{shown}"
    );
    let ok = parse(
        "probes:\n  - name: health\n    url: http://127.0.0.1:8080/health\n    headers: [{name: X-Api-Key, value: probe-inline-SECRET}]\n    concurrency: {}\n",
        "ok.yml",
        &WebFlags::default(),
    )
    .expect("valid");
    let t = &ok.probes[0];
    assert_eq!(t.expected_status, vec![200..=299]);
    // `${ENV}` references are expanded (PATH is set in every test environment).
    let env = parse(
        "probes:\n  - name: h\n    url: http://127.0.0.1:1/\n    headers: [{name: X-Path, value: 'p ${PATH}'}]\n",
        "env.yml",
        &WebFlags::default(),
    )
    .expect("valid");
    let (name, value) = &env.probes[0].headers[0];
    assert_eq!(name.as_str(), "x-path");
    let path = std::env::var("PATH").expect("PATH is set");
    assert_eq!(value.to_str().expect("ascii"), format!("p {path}"));
    assert!(value.is_sensitive());
    let c = t.concurrency.as_ref().expect("concurrency on");
    assert_eq!(c.levels, vec![5, 10]);
    assert_eq!(c.interval, Duration::from_secs(60));
    assert!(!format!("{ok:?}").contains("probe-inline-SECRET"));
}
