//! Shared by the integration tests: start the real binary on a free port,
//! speak plain HTTP/1.1 to it, and run promtool.
#![allow(dead_code)]

pub mod fake_api;
pub mod pg;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_loopwatch");

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A UDP port free right now, for an exporter's ingest.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// One GET over a fresh connection.
pub fn get_with(port: u16, path: &str, extra_headers: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra_headers}\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One POST with a body over a fresh connection.
pub fn post(port: u16, path: &str, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("write head");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    Response {
        status,
        headers: Vec::new(),
        body: raw[split + 4..].to_vec(),
    }
}

pub fn get(port: u16, path: &str) -> Response {
    get_with(port, path, "").unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// The real binary, killed when dropped.
pub struct Exporter {
    pub child: Child,
    pub port: u16,
    pub stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Exporter {
    /// Starts loopwatch on a free port with these extra arguments and waits
    /// until `/-/ready` answers 200. Its UDP ingest gets a free port of its
    /// own (parallel exporters would race for the default one, and the
    /// losers are never ready): without `--config.file`, through a config
    /// that only sets it; with one that does not set it, appended to that
    /// file.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ingest = format!(
            "ingest:\n  udp_listen_address: 127.0.0.1:{}\n",
            free_udp_port()
        );
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        match args.iter().position(|a| a == "--config.file") {
            Some(i) => {
                let path = &args[i + 1];
                let text = std::fs::read_to_string(path).expect("test config");
                if !text.contains("udp_listen_address") {
                    assert!(
                        !text.lines().any(|l| l.starts_with("ingest:")),
                        "a test config with an ingest section sets udp_listen_address: {text}"
                    );
                    std::fs::write(path, format!("{text}\n{ingest}")).expect("append ingest");
                }
            }
            None => {
                let path = dir.path().join("loopwatch.yml");
                std::fs::write(&path, ingest).expect("config");
                args.push("--config.file".into());
                args.push(path.to_str().expect("utf8").to_owned());
            }
        }
        Self::spawn(&args, dir)
    }

    /// Starts loopwatch on the embedded default config (UDP ingest on the
    /// default 127.0.0.1:10071, which only one test may use at a time).
    pub fn start_default(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::spawn(&args, dir)
    }

    fn spawn(args: &[String], dir: tempfile::TempDir) -> Self {
        let port = free_port();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(BIN)
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env_remove("LOOPWATCH_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start loopwatch");
        let mut exporter = Exporter {
            child,
            port,
            stderr_path,
            _dir: dir,
        };
        exporter.wait_ready();
        exporter
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("loopwatch exited early with {status}: {}", self.stderr());
            }
            if let Ok(r) = get_with(self.port, "/-/ready", "") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("loopwatch did not become ready: {}", self.stderr());
    }

    pub fn metrics(&self) -> String {
        let r = get(self.port, "/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the one sample whose series starts with `series` (name and
/// labels as printed), if any.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let want = canonical(series);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (canonical(name) == want).then(|| value.parse().ok())?
    })
}

/// A series with its labels sorted by name: the order labels print in is
/// not part of a series' identity.
fn canonical(series: &str) -> (String, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_owned(), Vec::new());
    };
    let body = rest.strip_suffix('}').unwrap_or(rest);
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        chars.next(); // the opening quote
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels.sort();
    (name.to_owned(), labels)
}

/// Polls `/metrics` until `pred` holds or the time runs out.
pub fn wait_for_metrics(
    exporter: &Exporter,
    within: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = exporter.metrics();
        if pred(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last /metrics:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The promtool binary; tests that need it fail (never skip) without it.
pub fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is not installed: run the README's test command, which installs Debian's `prometheus` package"
    );
    Command::new("promtool")
}

/// Runs `promtool check metrics` on a body and returns its output.
pub fn promtool_check_metrics(body: &str) -> Output {
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// Asserts that `promtool check metrics` finds nothing to complain about.
pub fn assert_promtool_clean(body: &str) {
    let check = promtool_check_metrics(body);
    let complaints = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

/// Runs the binary to completion with these arguments.
pub fn run_bin(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LOOPWATCH_CONFIG")
        .output()
        .expect("run loopwatch")
}
