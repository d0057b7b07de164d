//! The `ratelimits` collector against a local server that answers as GitHub's
//! API and generic rate-limited APIs do (their documented bodies and headers).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake_api::{FakeApi, Reply};
use common::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// GitHub's documented `GET /rate_limit` answer.
fn github_rate_limit(core_remaining: u64, reset: u64) -> String {
    format!(
        r#"{{"resources":{{"core":{{"limit":5000,"used":{used},"remaining":{core_remaining},"reset":{reset}}},"search":{{"limit":30,"used":12,"remaining":18,"reset":{reset}}},"graphql":{{"limit":5000,"used":7,"remaining":4993,"reset":{reset}}},"integration_manifest":{{"limit":5000,"used":0,"remaining":5000,"reset":{reset}}},"code_search":{{"limit":10,"used":0,"remaining":10,"reset":{reset}}}}},"rate":{{"limit":5000,"used":{used},"remaining":{core_remaining},"reset":{reset}}}}}"#,
        used = 5000 - core_remaining
    )
}

fn series(family: &str, api: &str, resource: &str, token: &str) -> String {
    format!(r#"{family}{{api="{api}",resource="{resource}",token="{token}"}}"#)
}

fn success(text: &str, target: &str) -> Option<f64> {
    sample(
        text,
        &format!(r#"loopwatch_collector_success{{collector="ratelimits",target="{target}"}}"#),
    )
}

fn errors(text: &str, target: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!(
            r#"loopwatch_collector_errors_total{{collector="ratelimits",reason="{reason}",target="{target}"}}"#
        ),
    )
    .unwrap_or(0.0)
}

/// Whether any limit/remaining/reset series of this token is exported.
fn has_values(text: &str, token: &str) -> bool {
    text.lines().any(|l| {
        (l.starts_with("loopwatch_ratelimit_limit{")
            || l.starts_with("loopwatch_ratelimit_remaining{")
            || l.starts_with("loopwatch_ratelimit_reset_timestamp_seconds{"))
            && l.contains(&format!(r#"token="{token}""#))
    })
}

const SECRETS: [&str; 9] = [
    "ghp_goodSECRET0001",
    "ghp_exhaustedSECRET0002",
    "ghp_primarySECRET0003",
    "ghp_secondarySECRET0004",
    "ghp_revokedSECRET0005",
    "ghp_brokenSECRET0006",
    "ghp_hangSECRET0007",
    "ghp_garbageSECRET0008",
    "ghp_fromfileSECRET0009",
];

#[test]
fn github_every_documented_answer_is_a_clear_state() {
    let api = FakeApi::start();
    let reset = unix_now() + 3600;
    let [
        good,
        exhausted,
        primary,
        secondary,
        revoked,
        broken,
        hang,
        garbage,
        from_file,
    ] = SECRETS;
    api.set(good, Reply::new(200, &[], &github_rate_limit(4987, reset)));
    api.set(
        from_file,
        Reply::new(200, &[], &github_rate_limit(4000, reset)),
    );
    // /rate_limit itself answers while the budget is spent: a real zero.
    api.set(
        exhausted,
        Reply::new(200, &[], &github_rate_limit(0, reset)),
    );
    let reset_text = reset.to_string();
    api.set(
        primary,
        Reply::new(
            403,
            &[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-used", "5000"),
                ("x-ratelimit-reset", &reset_text),
                ("x-ratelimit-resource", "core"),
            ],
            r#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#,
        ),
    );
    api.set(
        secondary,
        Reply::new(
            403,
            &[("retry-after", "60")],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}"#,
        ),
    );
    api.set(
        revoked,
        Reply::new(
            401,
            &[],
            r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest"}"#,
        ),
    );
    api.set(
        broken,
        Reply::new(500, &[], r#"{"message":"Server Error"}"#),
    );
    api.set(hang, Reply::Hang);
    api.set(garbage, Reply::new(200, &[], "{\"resources\": <html>"));

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{from_file}\n")).expect("token file");
    let names = [
        "good",
        "exhausted",
        "primary",
        "secondary",
        "revoked",
        "broken",
        "hang",
        "garbage",
    ];
    let mut tokens = String::new();
    for (name, secret) in names.iter().zip(SECRETS) {
        tokens.push_str(&format!("      - name: {name}\n        token: {secret}\n"));
    }
    tokens.push_str(&format!(
        "      - name: fromfile\n        token_file: {}\n",
        token_file.display()
    ));
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        format!(
            "ingest:\n  udp_listen_address: ''\nratelimits:\n  - name: github\n    kind: github\n    url: {}\n    interval: 500ms\n    timeout: 400ms\n    tokens:\n{tokens}",
            api.base_url()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);

    let every_token_polled = |t: &str| {
        names
            .iter()
            .chain(&["fromfile"])
            .all(|n| success(t, &format!("github/{n}")).is_some())
            && errors(t, "github/hang", "timeout") >= 1.0
    };
    let text = wait_for_metrics(
        &lw,
        Duration::from_secs(20),
        "every token polled",
        every_token_polled,
    );
    assert_promtool_clean(&text);

    // Every resource GitHub lists, per token.
    let remaining = |t: &str, resource: &str, token: &str| {
        sample(
            t,
            &series("loopwatch_ratelimit_remaining", "github", resource, token),
        )
    };
    assert_eq!(remaining(&text, "core", "good"), Some(4987.0), "{text}");
    assert_eq!(remaining(&text, "core", "fromfile"), Some(4000.0), "{text}");
    for resource in ["search", "graphql", "integration_manifest", "code_search"] {
        assert!(
            remaining(&text, resource, "good").is_some(),
            "{resource}: {text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            &series("loopwatch_ratelimit_limit", "github", "search", "good")
        ),
        Some(30.0)
    );
    assert_eq!(
        sample(
            &text,
            &series(
                "loopwatch_ratelimit_reset_timestamp_seconds",
                "github",
                "core",
                "good"
            )
        ),
        Some(reset as f64)
    );
    let observed = sample(
        &text,
        &series(
            "loopwatch_ratelimit_observed_timestamp_seconds",
            "github",
            "core",
            "good",
        ),
    )
    .expect("observed");
    assert!((observed - unix_now() as f64).abs() < 30.0, "{observed}");
    assert_eq!(success(&text, "github/good"), Some(1.0));

    // Exhausted, as /rate_limit reports it: a real zero, and a healthy poll.
    assert_eq!(remaining(&text, "core", "exhausted"), Some(0.0), "{text}");
    assert_eq!(success(&text, "github/exhausted"), Some(1.0));

    // Refusals: counted by kind, no values, the reason named.
    let throttled = |t: &str, token: &str, kind: &str| {
        sample(
            t,
            &format!(
                r#"loopwatch_ratelimit_throttled_total{{api="github",kind="{kind}",resource="core",token="{token}"}}"#
            ),
        )
    };
    assert_eq!(throttled(&text, "primary", "primary"), Some(1.0), "{text}");
    assert_eq!(
        throttled(&text, "secondary", "secondary"),
        Some(1.0),
        "{text}"
    );
    for (token, reason) in [
        ("primary", "http_4xx"),
        ("secondary", "http_4xx"),
        ("revoked", "auth"),
        ("broken", "http_5xx"),
        ("hang", "timeout"),
        ("garbage", "parse"),
    ] {
        let target = format!("github/{token}");
        assert_eq!(success(&text, &target), Some(0.0), "{target}: {text}");
        assert!(
            errors(&text, &target, reason) >= 1.0,
            "{target} {reason}: {text}"
        );
        assert!(
            !has_values(&text, token),
            "{token} must have no values: {text}"
        );
    }

    // Scrape hard for a while: the API is asked once per interval, and not
    // at all again after Retry-After or an exhausted budget's refusal.
    for _ in 0..300 {
        let _ = lw.metrics();
    }
    std::thread::sleep(Duration::from_secs(2));
    let allowed = (started.elapsed().as_secs_f64() / 0.5).ceil() as usize + 1;
    let asked = api.count(good);
    assert!(
        asked >= 3 && asked <= allowed,
        "asked {asked} times, at most {allowed}"
    );
    assert_eq!(api.count(primary), 1, "polled again before the reset");
    assert_eq!(api.count(secondary), 1, "polled again before Retry-After");
    let text = lw.metrics();
    assert_eq!(
        throttled(&text, "secondary", "secondary"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(success(&text, "github/secondary"), Some(0.0));

    // What loopwatch sends, and what it never shows.
    let sent = api.header_lines();
    assert!(
        sent.iter()
            .any(|l| l.eq_ignore_ascii_case("x-github-api-version: 2022-11-28"))
    );
    assert!(
        sent.iter()
            .any(|l| l.to_ascii_lowercase().starts_with("user-agent: loopwatch/"))
    );
    assert!(
        sent.iter()
            .any(|l| l == &format!("authorization: Bearer {good}"))
    );
    let landing = get(lw.port, "/").text();
    let log = lw.stderr();
    for secret in SECRETS {
        assert!(!text.contains(secret), "a token in /metrics");
        assert!(!landing.contains(secret), "a token on the landing page");
        assert!(!log.contains(secret), "a token in the log: {log}");
    }
    assert!(
        log.contains("Bad credentials"),
        "the API's words are logged: {log}"
    );

    // A good token that starts failing: values go, the observation's age shows.
    api.set(good, Reply::new(502, &[], "bad gateway"));
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "good failing", |t| {
        success(t, "github/good") == Some(0.0)
    });
    assert!(!has_values(&text, "good"), "{text}");
    assert!(errors(&text, "github/good", "http_5xx") >= 1.0);
    let kept = sample(
        &text,
        &series(
            "loopwatch_ratelimit_observed_timestamp_seconds",
            "github",
            "core",
            "good",
        ),
    )
    .expect("the observation time stays while polls fail");
    assert!(kept >= observed);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sample(
            &lw.metrics(),
            &series(
                "loopwatch_ratelimit_observed_timestamp_seconds",
                "github",
                "core",
                "good"
            )
        ),
        Some(kept),
        "no new observation while failing"
    );
    // And recovers by itself.
    api.set(good, Reply::new(200, &[], &github_rate_limit(4900, reset)));
    wait_for_metrics(&lw, Duration::from_secs(10), "good again", |t| {
        remaining(t, "core", "good") == Some(4900.0) && success(t, "github/good") == Some(1.0)
    });
}

#[test]
fn generic_rate_limit_headers_in_every_common_form() {
    let api = FakeApi::start();
    let epoch_reset = unix_now() + 900;
    let epoch_text = epoch_reset.to_string();
    api.set(
        "ietf",
        Reply::new(
            200,
            &[
                ("RateLimit-Limit", "100"),
                ("RateLimit-Remaining", "40"),
                ("RateLimit-Reset", "30"),
            ],
            "{}",
        ),
    );
    api.set(
        "xform",
        Reply::new(
            200,
            &[
                ("X-RateLimit-Limit", "60"),
                ("X-RateLimit-Remaining", "7"),
                ("X-RateLimit-Reset", &epoch_text),
            ],
            "{}",
        ),
    );
    // Refused while budget remains: secondary, and the budget still shows.
    api.set(
        "busy",
        Reply::new(
            429,
            &[
                ("X-RateLimit-Limit", "60"),
                ("X-RateLimit-Remaining", "5"),
                ("Retry-After", "60"),
            ],
            r#"{"error":"slow down"}"#,
        ),
    );
    // Refused with nothing left: primary; Retry-After gives the reset.
    api.set(
        "spent",
        Reply::new(
            429,
            &[
                ("RateLimit-Limit", "10"),
                ("RateLimit-Remaining", "0"),
                ("Retry-After", "30"),
            ],
            "",
        ),
    );
    api.set("plain", Reply::new(200, &[], "{}"));
    api.set(
        "/custom",
        Reply::new(
            204,
            &[
                ("Quota-Limit", "1000"),
                ("Quota-Left", "999"),
                ("Quota-Reset", "120"),
            ],
            "",
        ),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("loopwatch.yml");
    let mut tokens = String::new();
    for name in ["ietf", "xform", "busy", "spent", "plain"] {
        tokens.push_str(&format!("      - name: {name}\n        token: {name}\n"));
    }
    std::fs::write(
        &config,
        format!(
            "ingest:\n  udp_listen_address: ''
ratelimits:
  - name: example
    kind: http
    url: {base}/v1/ping
    interval: 500ms
    timeout: 400ms
    tokens:
{tokens}  - name: custom
    kind: http
    url: {base}/custom
    method: HEAD
    resource: quota
    limit_header: Quota-Limit
    remaining_header: Quota-Left
    reset_header: Quota-Reset
    reset_format: seconds
    interval: 500ms
    timeout: 400ms
",
            base = api.base_url()
        ),
    )
    .expect("config");
    let before = unix_now() as f64;
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "every target polled", |t| {
        ["ietf", "xform", "busy", "spent", "plain"]
            .iter()
            .all(|n| success(t, &format!("example/{n}")).is_some())
            && success(t, "custom/anonymous").is_some()
    });
    assert_promtool_clean(&text);
    let value = |family: &str, api: &str, resource: &str, token: &str| {
        sample(&text, &series(family, api, resource, token))
    };
    let example = |family: &str, token: &str| value(family, "example", "default", token);
    assert_eq!(example("loopwatch_ratelimit_limit", "ietf"), Some(100.0));
    assert_eq!(example("loopwatch_ratelimit_remaining", "ietf"), Some(40.0));
    let ietf_reset = example("loopwatch_ratelimit_reset_timestamp_seconds", "ietf").expect("reset");
    assert!(
        ietf_reset >= before + 30.0 && ietf_reset < before + 60.0,
        "{ietf_reset}"
    );
    assert_eq!(
        example("loopwatch_ratelimit_reset_timestamp_seconds", "xform"),
        Some(epoch_reset as f64)
    );
    assert_eq!(example("loopwatch_ratelimit_remaining", "busy"), Some(5.0));
    assert_eq!(success(&text, "example/busy"), Some(1.0));
    assert_eq!(example("loopwatch_ratelimit_remaining", "spent"), Some(0.0));
    let spent_reset = example("loopwatch_ratelimit_reset_timestamp_seconds", "spent")
        .expect("reset from Retry-After");
    assert!(
        spent_reset >= before + 30.0 && spent_reset < before + 60.0,
        "{spent_reset}"
    );
    let throttled = |token: &str, kind: &str| {
        sample(
            &text,
            &format!(
                r#"loopwatch_ratelimit_throttled_total{{api="example",kind="{kind}",resource="default",token="{token}"}}"#
            ),
        )
    };
    assert_eq!(throttled("busy", "secondary"), Some(1.0), "{text}");
    assert_eq!(throttled("spent", "primary"), Some(1.0), "{text}");
    assert_eq!(success(&text, "example/plain"), Some(0.0));
    assert!(errors(&text, "example/plain", "parse") >= 1.0);
    assert!(!has_values(&text, "plain"));
    assert_eq!(
        value(
            "loopwatch_ratelimit_remaining",
            "custom",
            "quota",
            "anonymous"
        ),
        Some(999.0)
    );
    assert_eq!(
        value("loopwatch_ratelimit_limit", "custom", "quota", "anonymous"),
        Some(1000.0)
    );
    assert!(
        lw.stderr().contains("without rate-limit headers"),
        "{}",
        lw.stderr()
    );

    // Retry-After is honoured: no second request within its 60 s.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.count("busy"), 1);
    assert!(api.count("ietf") >= 3);
    let text = lw.metrics();
    assert_eq!(
        sample(
            &text,
            &series(
                "loopwatch_ratelimit_remaining",
                "example",
                "default",
                "busy"
            )
        ),
        Some(5.0),
        "the refusal's budget stands while loopwatch waits: {text}"
    );
}

#[test]
fn a_python_app_reports_the_headers_it_sees() {
    let api = FakeApi::start();
    let reset = (unix_now() + 1800).to_string();
    let github = |remaining: &str, resource: &str, limit: &str| {
        vec![
            ("x-ratelimit-limit", limit.to_owned()),
            ("x-ratelimit-remaining", remaining.to_owned()),
            ("x-ratelimit-reset", reset.clone()),
            ("x-ratelimit-resource", resource.to_owned()),
        ]
    };
    let set = |key: &str, status: u16, headers: Vec<(&str, String)>, body: &str| {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        api.set(key, Reply::new(status, &pairs, body));
    };
    set("app-ok", 200, github("4321", "core", "5000"), "{}");
    let mut secondary = github("4320", "core", "5000");
    secondary.push(("retry-after", "60".to_owned()));
    set(
        "app-secondary",
        403,
        secondary,
        r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#,
    );
    set(
        "app-spent",
        403,
        github("0", "search", "30"),
        r#"{"message":"API rate limit exceeded for user ID 1."}"#,
    );

    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("loopwatch.yml");
    std::fs::write(
        &config,
        format!("ingest:\n  udp_listen_address: 127.0.0.1:{udp}\n"),
    )
    .expect("config");
    let lw = Exporter::start(&["--config.file", config.to_str().expect("utf8")]);
    let out = std::process::Command::new("python3")
        .arg(repo_path("tests/apps/ratelimit_app.py"))
        .env("PYTHONPATH", repo_path("clients/python/src"))
        .env("LOOPWATCH_TARGET", format!("udp://127.0.0.1:{udp}"))
        .env("API_URL", api.base_url())
        .env_remove("LOOPWATCH_DISABLED")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("app-spent 403"), "{stdout}");

    let throttled = |t: &str, resource: &str, token: &str, kind: &str| {
        sample(
            t,
            &format!(
                r#"loopwatch_ratelimit_throttled_total{{api="github",kind="{kind}",resource="{resource}",token="{token}"}}"#
            ),
        )
    };
    let text = wait_for_metrics(&lw, Duration::from_secs(10), "the app's reports", |t| {
        throttled(t, "search", "deploy", "primary") == Some(1.0)
    });
    assert_promtool_clean(&text);
    let value = |family: &str, resource: &str, token: &str| {
        sample(&text, &series(family, "github", resource, token))
    };
    assert_eq!(
        value("loopwatch_ratelimit_remaining", "core", "ci-bot"),
        Some(4320.0),
        "{text}"
    );
    assert_eq!(
        value("loopwatch_ratelimit_limit", "core", "ci-bot"),
        Some(5000.0)
    );
    assert_eq!(
        value(
            "loopwatch_ratelimit_reset_timestamp_seconds",
            "core",
            "ci-bot"
        ),
        reset.parse().ok()
    );
    assert_eq!(
        value("loopwatch_ratelimit_remaining", "search", "deploy"),
        Some(0.0)
    );
    assert!(
        value(
            "loopwatch_ratelimit_observed_timestamp_seconds",
            "search",
            "deploy"
        )
        .is_some()
    );
    assert_eq!(
        throttled(&text, "core", "ci-bot", "secondary"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        throttled(&text, "core", "ci-bot", "primary"),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains("app-ok") && !text.contains("app-spent"),
        "a secret in /metrics"
    );
}

/// r15: reqwest drops only `Authorization` (and cookies) when a redirect
/// changes host, so a custom `token_header` went to whatever host the API
/// redirected to. Now the token follows a redirect within the origin and is
/// dropped once one leaves it; the second server records every header.
#[test]
fn r15_a_redirect_to_another_host_gets_no_token() {
    let first = FakeApi::start();
    let second = FakeApi::start();
    let token = "x-api-key-r15SECRET";
    // Same origin (a relative Location), then another host and port.
    first.set("/start", Reply::new(302, &[("Location", "/same")], ""));
    first.set(
        "/same",
        Reply::new(
            307,
            &[(
                "Location",
                &format!("http://localhost:{}/final", second.port),
            )],
            "",
        ),
    );
    second.set(
        "/final",
        Reply::new(
            200,
            &[("X-RateLimit-Limit", "10"), ("X-RateLimit-Remaining", "7")],
            "{}",
        ),
    );
    let lw = Exporter::start_with_config(
        &format!(
            "ratelimits:
  - name: redir
    kind: http
    url: {}/start
    token_header: X-Api-Key
    token_prefix: ''
    interval: 500ms
    timeout: 400ms
    tokens:
      - name: t
        token: {token}
",
            first.base_url()
        ),
        &[],
    );
    let text = wait_for_metrics(&lw, Duration::from_secs(15), "the redirected poll", |t| {
        sample(
            t,
            &series("loopwatch_ratelimit_remaining", "redir", "default", "t"),
        ) == Some(7.0)
    });
    assert_eq!(success(&text, "redir/t"), Some(1.0), "{text}");
    let sent_first = first.header_lines();
    let with_token = sent_first
        .iter()
        .filter(|l| l.eq_ignore_ascii_case(&format!("x-api-key: {token}")))
        .count();
    assert!(
        with_token >= 2 && first.count("/same") >= 1,
        "the token goes along within the origin: {sent_first:?}"
    );
    assert!(second.count("/final") >= 1);
    let sent_second = second.header_lines();
    assert!(
        !sent_second
            .iter()
            .any(|l| l.contains(token) || l.to_ascii_lowercase().starts_with("x-api-key")),
        "the token reached another host: {sent_second:?}"
    );
}
