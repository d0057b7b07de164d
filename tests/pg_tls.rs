//! PostgreSQL and PgBouncer over TLS, and what a hostile "server" can make
//! loopwatch do (#15): real clusters with `ssl=on` and a throwaway CA, a
//! real PgBouncer with client TLS, and fake servers on a TcpListener that ask
//! for a cleartext password or announce a 2 GiB message.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pg::*;
use common::*;

fn errors(text: &str, collector: &str, target: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!(
            r#"loopwatch_collector_errors_total{{collector="{collector}",reason="{reason}",target="{target}"}}"#
        ),
    )
    .unwrap_or(0.0)
}

fn pg(text: &str, family: &str, target: &str) -> Option<f64> {
    sample(
        text,
        &format!(r#"loopwatch_pg_{family}{{target="{target}"}}"#),
    )
}

fn target(name: &str, dsn: &str, extra: &str) -> String {
    format!("  - name: {name}\n    dsn: \"{dsn}\"\n    interval: 2s\n    timeout: 2s\n{extra}")
}

/// Sessions of loopwatch's targets with their TLS state, from the server's side.
fn ssl_sessions(cluster: &PgCluster, user: &str) -> Vec<String> {
    cluster
        .psql(&format!(
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.application_name = 'loopwatch' and a.usename = {}",
            quote_literal(user)
        ))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn r15_sslmodes_against_a_tls_cluster() {
    let ca = TestCa::new("loopwatch-test-ca", "DNS:localhost,IP:127.0.0.1");
    let other_ca = TestCa::new("some-other-ca", "DNS:localhost,IP:127.0.0.1");
    let cluster = PgCluster::start();
    cluster.enable_ssl(&ca);
    // One role per target, so each target's sessions can be told apart.
    for role in ["req", "full", "wrongca", "caonly", "wrongname", "clear"] {
        cluster.create_monitor_role(role, "pw");
    }
    // `clear` is asked for its password in cleartext.
    cluster.prepend_hba("host all clear 127.0.0.1/32 password");
    let port = cluster.port();
    let ca_path = ca.ca.display();
    let other = other_ca.ca.display();
    let kv = |user: &str, tail: &str| {
        format!("host=127.0.0.1 port={port} user={user} password=pw dbname=postgres {tail}")
    };
    let yaml = format!(
        "postgres:\n{}{}{}{}{}{}{}",
        target("req", &kv("req", "sslmode=require"), ""),
        target(
            "full",
            &format!(
                "postgresql://full:pw@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca_path}"
            ),
            ""
        ),
        target(
            "wrongca",
            &kv(
                "wrongca",
                &format!("sslmode=verify-full sslrootcert={other}")
            ),
            ""
        ),
        // libpq: require with a root certificate verifies the chain.
        target(
            "requireca",
            &kv("wrongca", &format!("sslmode=require sslrootcert={other}")),
            ""
        ),
        target(
            "caonly",
            &format!(
                "host=db.invalid hostaddr=127.0.0.1 port={port} user=caonly password=pw dbname=postgres sslmode=verify-ca sslrootcert={ca_path}"
            ),
            ""
        ),
        target(
            "wrongname",
            &format!(
                "host=db.invalid hostaddr=127.0.0.1 port={port} user=wrongname password=pw dbname=postgres sslmode=verify-full sslrootcert={ca_path}"
            ),
            ""
        ),
        target(
            "clear",
            &kv(
                "clear",
                &format!("sslmode=verify-full sslrootcert={ca_path}")
            ),
            ""
        ),
    );
    let lw = Exporter::start_with_config(&yaml, &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(30), "every target polled", |t| {
        ["req", "full", "caonly", "clear"]
            .iter()
            .all(|n| pg(t, "up", n) == Some(1.0))
            && ["wrongca", "requireca", "wrongname"]
                .iter()
                .all(|n| errors(t, "postgres", n, "tls") >= 2.0)
    });
    for good in ["req", "full", "caonly", "clear"] {
        assert_eq!(pg(&text, "tls", good), Some(1.0), "{good}: {text}");
    }
    for bad in ["wrongca", "requireca", "wrongname"] {
        assert_eq!(pg(&text, "up", bad), Some(0.0), "{bad}: {text}");
        assert_eq!(pg(&text, "tls", bad), None, "{bad}: {text}");
    }
    // The server agrees: loopwatch's sessions are TLS, and the failing
    // targets never logged in in plaintext (pg_hba allows it: a fallback
    // would have worked).
    for (role, n) in [("req", 1), ("full", 1), ("caonly", 1), ("clear", 1)] {
        let ssl = ssl_sessions(&cluster, role);
        assert!(
            ssl.len() >= n && ssl.iter().all(|s| s == "t"),
            "{role}: {ssl:?}"
        );
    }
    for role in ["wrongca", "wrongname"] {
        assert_eq!(ssl_sessions(&cluster, role), Vec::<String>::new(), "{role}");
    }
    let log = lw.stderr();
    assert!(
        log.contains("TLS with 127.0.0.1:") && log.contains("UnknownIssuer"),
        "a clear TLS error in the log: {log}"
    );
    assert!(!log.contains("password=pw"), "no DSN in the log");
}

#[test]
fn r15_prefer_falls_back_visibly_and_require_never_does() {
    let cluster = PgCluster::start();
    cluster.create_monitor_role("mon", "pw");
    cluster.create_monitor_role("clear", "pw");
    cluster.prepend_hba("host all clear 127.0.0.1/32 password");
    let port = cluster.port();
    let kv = |user: &str, tail: &str| {
        format!("host=127.0.0.1 port={port} user={user} password=pw dbname=postgres {tail}")
    };
    let yaml = format!(
        "postgres:\n{}{}{}{}{}",
        target("default", &kv("mon", ""), ""),
        target("prefer", &kv("mon", "sslmode=prefer"), ""),
        target("require", &kv("mon", "sslmode=require"), ""),
        // Cleartext over plaintext: refused, unless the target allows it.
        target("clear", &kv("clear", "sslmode=disable"), ""),
        target(
            "clearok",
            &kv("clear", "sslmode=disable"),
            "    allow_cleartext_password: true\n"
        ),
    );
    let lw = Exporter::start_with_config(&yaml, &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(30), "every target polled", |t| {
        ["default", "prefer", "clearok"]
            .iter()
            .all(|n| pg(t, "up", n) == Some(1.0))
            && errors(t, "postgres", "require", "tls") >= 2.0
            && errors(t, "postgres", "clear", "auth") >= 2.0
    });
    assert_eq!(pg(&text, "tls", "default"), Some(0.0), "{text}");
    assert_eq!(pg(&text, "tls", "prefer"), Some(0.0), "{text}");
    assert_eq!(pg(&text, "tls", "clearok"), Some(0.0), "{text}");
    assert_eq!(pg(&text, "up", "require"), Some(0.0), "{text}");
    assert_eq!(pg(&text, "up", "clear"), Some(0.0), "{text}");
    let log = lw.stderr();
    assert!(log.contains("the server does not accept TLS"), "{log}");
    assert!(log.contains("asked for the password in cleartext"), "{log}");
    assert!(log.contains("connected in plaintext"), "{log}");
}

#[test]
fn r15_pgbouncer_over_tls() {
    let ca = TestCa::new("loopwatch-test-ca", "DNS:localhost,IP:127.0.0.1");
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start_with(
        &cluster,
        &PgBouncerOptions::new("transaction", 2)
            .setting("client_tls_sslmode", "require")
            .setting("client_tls_cert_file", &ca.cert.display().to_string())
            .setting("client_tls_key_file", &ca.key.display().to_string()),
    );
    let yaml = format!(
        "pgbouncer:\n  - name: tls\n    dsn: \"host=127.0.0.1 port={port} user=postgres dbname=pgbouncer sslmode=verify-full sslrootcert={ca}\"\n    interval: 2s\n    timeout: 2s\n  - name: plain\n    dsn: \"host=127.0.0.1 port={port} user=postgres dbname=pgbouncer sslmode=disable\"\n    interval: 2s\n    timeout: 2s\n",
        port = bouncer.port(),
        ca = ca.ca.display(),
    );
    let lw = Exporter::start_with_config(&yaml, &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(30), "both polled", |t| {
        sample(t, r#"loopwatch_pgbouncer_up{target="tls"}"#) == Some(1.0)
            && errors(t, "pgbouncer", "plain", "other") + errors(t, "pgbouncer", "plain", "auth")
                >= 1.0
    });
    assert_eq!(
        sample(&text, r#"loopwatch_pgbouncer_tls{target="tls"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"loopwatch_pgbouncer_up{target="plain"}"#),
        Some(0.0),
        "PgBouncer refuses plaintext clients: {text}"
    );
}

/// A fake "PostgreSQL": answers every startup with `reply`, then streams
/// `junk` bytes; records whether a password message ever came.
struct FakeServer {
    port: u16,
    got_password: Arc<AtomicBool>,
    startups: Arc<AtomicUsize>,
}

fn fake_server(reply: Vec<u8>, junk: usize) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got_password = Arc::new(AtomicBool::new(false));
    let startups = Arc::new(AtomicUsize::new(0));
    let (pw, n) = (got_password.clone(), startups.clone());
    std::thread::spawn(move || {
        // Bounded: the exporter retries every interval for the test's length.
        for conn in listener.incoming().take(200) {
            let Ok(conn) = conn else { continue };
            let (reply, pw, n) = (reply.clone(), pw.clone(), n.clone());
            std::thread::spawn(move || serve(conn, &reply, junk, &pw, &n));
        }
    });
    FakeServer {
        port,
        got_password,
        startups,
    }
}

fn read_message(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?.min(1 << 16)];
    conn.read_exact(&mut body).ok()?;
    Some(body)
}

fn serve(mut conn: TcpStream, reply: &[u8], junk: usize, pw: &AtomicBool, n: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(first) = read_message(&mut conn) else {
        return;
    };
    if first.starts_with(&80877103u32.to_be_bytes()) {
        // SSLRequest: no TLS here; then the startup message.
        if conn.write_all(b"N").is_err() || read_message(&mut conn).is_none() {
            return;
        }
    }
    n.fetch_add(1, Ordering::SeqCst);
    if conn.write_all(reply).is_err() {
        return;
    }
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < junk {
        if conn.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut tag = [0u8; 1];
    if conn.read_exact(&mut tag).is_ok() && tag[0] == b'p' {
        pw.store(true, Ordering::SeqCst);
    }
}

/// The exporter's peak resident memory (VmHWM), in bytes.
fn peak_rss(lw: &Exporter) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", lw.child.id())).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn fake_target(port: u16, extra: &str) -> String {
    format!(
        "postgres:\n  - name: fake\n    dsn: \"host=127.0.0.1 port={port} user=u dbname=x\"\n    password: hunter2\n    interval: 2s\n    timeout: 2s\n{extra}"
    )
}

#[test]
fn r15_a_server_announcing_a_huge_message_costs_no_memory() {
    const MIB: u64 = 1 << 20;
    // 'E' with a length of almost 2 GiB, then 300 MiB of the "message".
    let mut huge = vec![b'E'];
    huge.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
    let server = fake_server(huge, 300 << 20);
    let lw = Exporter::start_with_config(&fake_target(server.port, ""), &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "parse errors", |t| {
        errors(t, "postgres", "fake", "parse") >= 2.0
    });
    assert_eq!(pg(&text, "up", "fake"), Some(0.0));
    assert!(server.startups.load(Ordering::SeqCst) >= 2);
    assert!(
        lw.stderr().contains("larger than max_message_bytes"),
        "{}",
        lw.stderr()
    );
    let peak = peak_rss(&lw);
    assert!(peak < 100 * MIB, "peak RSS {} MiB", peak / MIB);

    // The control: a 300 MiB message under a 1 GiB limit is buffered whole,
    // and the measurement above would have seen it.
    let mut big = vec![b'E'];
    big.extend_from_slice(&((300u32 << 20) + 4).to_be_bytes());
    let server = fake_server(big, 300 << 20);
    let lw = Exporter::start_with_config(
        &fake_target(server.port, "    max_message_bytes: 1073741824\n"),
        &[],
    );
    wait_for_metrics(&lw, Duration::from_secs(30), "the control to fail", |t| {
        // tokio-postgres reads the junk as an unparsable error message.
        ["connect", "other", "parse", "timeout"]
            .iter()
            .map(|r| errors(t, "postgres", "fake", r))
            .sum::<f64>()
            >= 1.0
    });
    let peak = peak_rss(&lw);
    assert!(peak > 250 * MIB, "control peak RSS {} MiB", peak / MIB);
}

#[test]
fn r15_a_server_asking_for_a_cleartext_password_gets_none() {
    // AuthenticationCleartextPassword.
    let ask = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3];
    let server = fake_server(ask.clone(), 0);
    let lw = Exporter::start_with_config(&fake_target(server.port, ""), &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "auth errors", |t| {
        errors(t, "postgres", "fake", "auth") >= 2.0
    });
    assert_eq!(pg(&text, "up", "fake"), Some(0.0));
    assert!(server.startups.load(Ordering::SeqCst) >= 2);
    assert!(
        !server.got_password.load(Ordering::SeqCst),
        "the password was sent"
    );

    // Allowed: the password goes (and the fake server then hangs up).
    let server = fake_server(ask, 0);
    let lw = Exporter::start_with_config(
        &fake_target(server.port, "    allow_cleartext_password: true\n"),
        &[],
    );
    wait_for_metrics(&lw, Duration::from_secs(20), "a poll", |_| {
        server.got_password.load(Ordering::SeqCst)
    });
}

#[test]
fn r15_prefer_never_falls_back_after_a_failed_handshake() {
    // A "server" that accepts TLS, then answers the handshake with junk.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let plaintext_startups = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (plain, shakes) = (plaintext_startups.clone(), handshakes.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let Some(first) = read_message(&mut conn) else {
                continue;
            };
            if !first.starts_with(&80877103u32.to_be_bytes()) {
                // A startup message in plaintext on a fresh connection.
                plain.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            shakes.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(b"S");
            let mut hello = [0u8; 5];
            let _ = conn.read_exact(&mut hello);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let lw = Exporter::start_with_config(&fake_target(port, ""), &[]);
    let text = wait_for_metrics(&lw, Duration::from_secs(20), "tls errors", |t| {
        errors(t, "postgres", "fake", "tls") >= 2.0
    });
    assert_eq!(pg(&text, "up", "fake"), Some(0.0));
    assert!(handshakes.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        plaintext_startups.load(Ordering::SeqCst),
        0,
        "fell back to plaintext"
    );
    assert!(lw.stderr().contains("sslmode=prefer"), "{}", lw.stderr());
}
