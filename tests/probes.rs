//! The `probes` collector against real HTTP servers started in the test: a
//! health endpoint that answers one request fine but fails 80 % of
//! concurrent ones, one slower than 2 s, redirects within and across
//! origins, and secret headers that must reach the endpoint and nothing else.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Requests alive now, each with the most requests it saw alive at once.
#[derive(Default)]
struct Inflight {
    next_id: u64,
    alive: HashMap<u64, usize>,
}

#[derive(Default)]
struct Seen {
    /// Requests per path.
    counts: HashMap<String, usize>,
    /// Every header line received, per path.
    headers: HashMap<String, Vec<String>>,
    /// `/flaky` requests that overlapped another one.
    concurrent: usize,
    /// Of each `/flaky` request, the most requests alive with it at once.
    peaks: Vec<usize>,
}

/// A real HTTP/1.1 server on 127.0.0.1 with the endpoints the tests need.
struct HealthServer {
    port: u16,
    /// Where `/away` redirects to.
    away: Arc<Mutex<String>>,
    inflight: Arc<Mutex<Inflight>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl HealthServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = HealthServer {
            port,
            away: Arc::default(),
            inflight: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (away, inflight, seen, stop) = (
            server.away.clone(),
            server.inflight.clone(),
            server.seen.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (away, inflight, seen) = (away.clone(), inflight.clone(), seen.clone());
                std::thread::spawn(move || serve(conn, &away, &inflight, &seen));
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn count(&self, path: &str) -> usize {
        *self.seen.lock().unwrap().counts.get(path).unwrap_or(&0)
    }

    fn concurrent(&self) -> usize {
        self.seen.lock().unwrap().concurrent
    }

    /// `/flaky` requests that were one of at least `n` alive at once.
    fn in_groups_of(&self, n: usize) -> usize {
        self.seen
            .lock()
            .unwrap()
            .peaks
            .iter()
            .filter(|p| **p >= n)
            .count()
    }

    fn headers(&self, path: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .headers
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut conn: TcpStream,
    away: &Mutex<String>,
    inflight: &Mutex<Inflight>,
    seen: &Mutex<Seen>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    {
        let mut s = seen.lock().unwrap();
        *s.counts.entry(path.clone()).or_default() += 1;
        let h = s.headers.entry(path.clone()).or_default();
        h.extend(lines.take_while(|l| !l.is_empty()).map(str::to_owned));
    }
    let (status, location, body) = match path.as_str() {
        "/ok" => (200, None, r#"{"status":"ok"}"#.to_owned()),
        "/slow" => {
            std::thread::sleep(Duration::from_millis(2300));
            (200, None, "ok".to_owned())
        }
        "/missing" => (404, None, "no".to_owned()),
        "/here" => (302, Some("/ok".to_owned()), String::new()),
        "/away" => (302, Some(away.lock().unwrap().clone()), String::new()),
        "/flaky" => flaky(inflight, seen),
        _ => (404, None, String::new()),
    };
    let mut out = format!(
        "HTTP/1.1 {status} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(l) = location {
        out.push_str(&format!("Location: {l}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    let _ = conn.write_all(out.as_bytes());
}

/// Fine alone; under concurrency, 500 to 4 of every 5 requests (the
/// incident of issue 13). Each request is held 300 ms, so those of one
/// burst all overlap.
fn flaky(inflight: &Mutex<Inflight>, seen: &Mutex<Seen>) -> (u16, Option<String>, String) {
    let id = {
        let mut f = inflight.lock().unwrap();
        let id = f.next_id;
        f.next_id += 1;
        f.alive.insert(id, 0);
        let n = f.alive.len();
        for peak in f.alive.values_mut() {
            *peak = (*peak).max(n);
        }
        id
    };
    std::thread::sleep(Duration::from_millis(300));
    let peak = inflight.lock().unwrap().alive.remove(&id).unwrap_or(1);
    seen.lock().unwrap().peaks.push(peak);
    if peak < 2 {
        return (200, None, "ok".to_owned());
    }
    let mut s = seen.lock().unwrap();
    let n = s.concurrent;
    s.concurrent += 1;
    if n % 5 == 0 {
        (200, None, "ok".to_owned())
    } else {
        (500, None, "overloaded".to_owned())
    }
}

fn probe_series(family: &str, probe: &str) -> String {
    format!(r#"{family}{{probe="{probe}"}}"#)
}

fn burst_series(family: &str, probe: &str, n: usize) -> String {
    format!(r#"{family}{{concurrency="{n}",probe="{probe}"}}"#)
}

fn class_series(probe: &str, n: usize, class: &str) -> String {
    format!(
        r#"loopwatch_probe_concurrency_responses{{class="{class}",concurrency="{n}",probe="{probe}"}}"#
    )
}

/// Issue 13: a health endpoint answered one request fine but returned 500
/// to 80 % of requests at 5 concurrent ones (the target: 85 % success at 5).
#[test]
fn r13_a_health_endpoint_failing_80_percent_under_5_concurrent_requests_reads_0_2() {
    let server = HealthServer::start();
    let lw = Exporter::start_with_config(
        &format!(
            "probes:
  - name: health
    url: {}
    interval: 1s
    timeout: 900ms
    concurrency: {{}}
",
            server.url("/flaky")
        ),
        &[],
    );
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "both bursts", |t| {
        sample(
            t,
            &burst_series("loopwatch_probe_concurrency_success_ratio", "health", 10),
        )
        .is_some()
            && sample(t, &probe_series("loopwatch_probe_up", "health")).is_some()
    });
    assert_promtool_clean(&text);
    // One request alone is fine.
    assert_eq!(
        sample(&text, &probe_series("loopwatch_probe_up", "health")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &probe_series("loopwatch_probe_status_code", "health")
        ),
        Some(200.0)
    );
    for n in [5, 10] {
        assert_eq!(
            sample(
                &text,
                &burst_series("loopwatch_probe_concurrency_success_ratio", "health", n)
            ),
            Some(0.2),
            "at {n}: {text}"
        );
        assert_eq!(
            sample(&text, &class_series("health", n, "2xx")),
            Some(n as f64 / 5.0)
        );
        assert_eq!(
            sample(&text, &class_series("health", n, "5xx")),
            Some(n as f64 * 0.8)
        );
        for class in ["3xx", "4xx", "error"] {
            assert_eq!(
                sample(&text, &class_series("health", n, class)),
                Some(0.0),
                "{class}"
            );
        }
        // Every request was held 300 ms by the server.
        let p95 = sample(
            &text,
            &burst_series("loopwatch_probe_concurrency_p95_seconds", "health", n),
        )
        .expect("p95");
        assert!((0.3..0.9).contains(&p95), "p95 {p95}");
    }
    // The single probe never overlapped a burst: exactly 15 concurrent requests.
    assert_eq!(server.concurrent(), 15);
}

#[test]
fn a_health_endpoint_slower_than_2s_reads_over_2s_and_failures_are_values() {
    let server = HealthServer::start();
    let closed = free_port();
    let lw = Exporter::start_with_config(
        &format!(
            "probes:
  - name: slow
    url: {slow}
    interval: 5s
    timeout: 4s
  - name: missing
    url: {missing}
    interval: 500ms
    timeout: 400ms
  - name: refused
    url: http://127.0.0.1:{closed}/health
    interval: 500ms
    timeout: 400ms
  - name: body-ok
    url: {ok}
    interval: 500ms
    timeout: 400ms
    body_match: '\"status\":\\s*\"ok\"'
  - name: body-degraded
    url: {ok}
    interval: 500ms
    timeout: 400ms
    body_match: degraded
  - name: not-found-expected
    url: {missing}
    interval: 500ms
    timeout: 400ms
    expected_status: [404]
  - name: too-slow
    url: {slow}
    interval: 1s
    timeout: 500ms
",
            slow = server.url("/slow"),
            missing = server.url("/missing"),
            ok = server.url("/ok"),
        ),
        &[],
    );
    let probes = [
        "slow",
        "missing",
        "refused",
        "body-ok",
        "body-degraded",
        "not-found-expected",
        "too-slow",
    ];
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "every probe", |t| {
        probes
            .iter()
            .all(|p| sample(t, &probe_series("loopwatch_probe_up", p)).is_some())
    });
    assert_promtool_clean(&text);
    let up = |p: &str| sample(&text, &probe_series("loopwatch_probe_up", p));
    let status = |p: &str| sample(&text, &probe_series("loopwatch_probe_status_code", p));
    let duration = |p: &str| {
        sample(&text, &probe_series("loopwatch_probe_duration_seconds", p)).expect("duration")
    };
    assert_eq!(
        (up("slow"), status("slow")),
        (Some(1.0), Some(200.0)),
        "{text}"
    );
    assert!(duration("slow") > 2.0, "{text}");
    assert_eq!((up("missing"), status("missing")), (Some(0.0), Some(404.0)));
    assert_eq!((up("refused"), status("refused")), (Some(0.0), Some(0.0)));
    assert_eq!((up("body-ok"), status("body-ok")), (Some(1.0), Some(200.0)));
    assert_eq!(
        (up("body-degraded"), status("body-degraded")),
        (Some(0.0), Some(200.0))
    );
    assert_eq!(up("not-found-expected"), Some(1.0));
    // Cut off at its timeout: down, no status, the time it waited.
    assert_eq!((up("too-slow"), status("too-slow")), (Some(0.0), Some(0.0)));
    assert!((0.5..2.0).contains(&duration("too-slow")), "{text}");
    // A probe that fails is a value: the collector itself succeeds.
    for p in probes {
        assert_eq!(
            sample(
                &text,
                &format!(r#"loopwatch_collector_success{{collector="probes",target="{p}"}}"#)
            ),
            Some(1.0),
            "{p}"
        );
    }
}

const HEADER_SECRET: &str = "probe-header-SECRET-7f3a";
const FILE_SECRET: &str = "probe-file-SECRET-91cc";

#[test]
fn secret_headers_reach_the_origin_only_and_are_shown_nowhere() {
    let server = HealthServer::start();
    let other = HealthServer::start();
    // A cross-origin redirect: another port of the same host.
    *server.away.lock().unwrap() = other.url("/ok");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{FILE_SECRET}\n")).expect("key file");
    let headers = format!(
        "    headers:
      - {{name: Authorization, value: 'Bearer {HEADER_SECRET}'}}
      - {{name: X-Api-Key, value_file: {}}}
",
        key_file.display()
    );
    let lw = Exporter::start_with_config(
        &format!(
            "probes:
  - name: here
    url: {here}
    interval: 500ms
    timeout: 400ms
{headers}  - name: away
    url: {away}
    interval: 500ms
    timeout: 400ms
{headers}",
            here = server.url("/here"),
            away = server.url("/away"),
        ),
        &["--log.level", "debug"],
    );
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "both probes", |t| {
        sample(t, &probe_series("loopwatch_probe_up", "here")).is_some()
            && sample(t, &probe_series("loopwatch_probe_up", "away")).is_some()
            && other.count("/ok") > 0
    });
    // Both redirects were followed to an answer.
    assert_eq!(
        sample(&text, &probe_series("loopwatch_probe_up", "here")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &probe_series("loopwatch_probe_up", "away")),
        Some(1.0),
        "{text}"
    );
    let has = |lines: &[String], secret: &str| lines.iter().any(|l| l.contains(secret));
    // Sent to the configured origin, on the first request and the redirect within it.
    for path in ["/here", "/away", "/ok"] {
        let h = server.headers(path);
        assert!(
            has(&h, HEADER_SECRET) && has(&h, FILE_SECRET),
            "{path}: {h:?}"
        );
    }
    // Never across to another origin, not even the custom header reqwest would forward.
    let crossed = other.headers("/ok");
    assert!(!crossed.is_empty());
    assert!(
        !has(&crossed, HEADER_SECRET) && !has(&crossed, FILE_SECRET),
        "{crossed:?}"
    );
    let landing = get(lw.port, "/").text();
    assert!(landing.contains("here"), "{landing}");
    let logs = lw.stderr();
    for secret in [HEADER_SECRET, FILE_SECRET] {
        assert!(!text.contains(secret), "/metrics shows a secret");
        assert!(!landing.contains(secret), "/ shows a secret");
        assert!(!logs.contains(secret), "the log shows a secret: {logs}");
    }
}

/// Bursts can never become load: a SIGHUP storm restarts the collectors but
/// never the bursts before their interval has passed.
#[test]
fn bursts_do_not_repeat_within_their_interval_across_reloads() {
    let server = HealthServer::start();
    let lw = Exporter::start_with_config(
        &format!(
            "probes:
  - name: health
    url: {}
    interval: 10s
    timeout: 900ms
    concurrency: {{levels: [5], interval: 30s}}
",
            server.url("/flaky")
        ),
        &[],
    );
    let ratio = burst_series("loopwatch_probe_concurrency_success_ratio", "health", 5);
    wait_for_metrics(&lw, Duration::from_secs(10), "the first burst", |t| {
        sample(t, &ratio).is_some()
    });
    let reloads =
        |t: &str| sample(t, r#"loopwatch_config_reloads_total{result="success"}"#).unwrap_or(0.0);
    for n in 1..=3 {
        // Apart by more than the server holds a request (see below).
        std::thread::sleep(Duration::from_millis(500));
        lw.signal("HUP");
        let text = wait_for_metrics(&lw, Duration::from_secs(10), "the reload", |t| {
            reloads(t) >= f64::from(n) && sample(t, &ratio).is_some()
        });
        // The remembered burst is shown again, not a new one run.
        assert_eq!(sample(&text, &ratio), Some(0.2), "{text}");
    }
    std::thread::sleep(Duration::from_secs(1));
    // A single request cut off by a reload may still be held by the server
    // when the new collector's first one arrives: a pair, never a burst.
    assert_eq!(
        server.in_groups_of(3),
        5,
        "one burst of 5, whatever the reloads"
    );
}

/// Runs `openssl` with `args` in `dir`, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A real TLS server (`openssl s_server -www`) with a certificate from a
/// private CA: verified with `tls.ca_file`, accepted unverified with
/// `tls.insecure_skip_verify`, and refused (status 0) with neither.
#[test]
fn https_probes_verify_with_a_private_ca_or_skip_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=loopwatch test CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-www",
            "-quiet",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/");
    let lw = Exporter::start_with_config(
        &format!(
            "probes:
  - name: private-ca
    url: {url}
    interval: 1s
    timeout: 900ms
    tls: {{ca_file: {ca}}}
  - name: skip-verify
    url: {url}
    interval: 1s
    timeout: 900ms
    tls: {{insecure_skip_verify: true}}
  - name: unknown-ca
    url: {url}
    interval: 1s
    timeout: 900ms
",
            ca = d.join("ca.pem").display()
        ),
        &[],
    );
    let up = |t: &str, p: &str| sample(t, &probe_series("loopwatch_probe_up", p));
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "every probe", |t| {
        ["private-ca", "skip-verify", "unknown-ca"]
            .iter()
            .all(|p| up(t, p).is_some())
    });
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        up(&text, "private-ca"),
        Some(1.0),
        "{text}\n{}",
        lw.stderr()
    );
    assert_eq!(up(&text, "skip-verify"), Some(1.0), "{text}");
    assert_eq!(up(&text, "unknown-ca"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &probe_series("loopwatch_probe_status_code", "unknown-ca")
        ),
        Some(0.0)
    );
    assert!(lw.stderr().contains("Probe failed"), "{}", lw.stderr());
}
