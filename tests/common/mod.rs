//! Shared by the integration tests: start the real binary on a free port,
//! speak plain HTTP/1.1 to it, and run promtool.
#![allow(dead_code)]

pub mod fake_api;
pub mod pg;
pub mod prometheus;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
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

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// The port of an `ingest.udp_listen_address` value (`127.0.0.1:9000`,
/// `[::1]:9000`, `:9000`); `None` for `''` (UDP ingest off).
fn udp_port_of(address: &str) -> Option<u16> {
    let (_, port) = address.trim().rsplit_once(':')?;
    Some(
        port.parse()
            .unwrap_or_else(|e| panic!("bad ingest.udp_listen_address {address:?}: {e}")),
    )
}

/// `ingest.udp_listen_address` as a YAML config sets it: `Some(value)`, or
/// `None` when the config leaves it at the shared default 127.0.0.1:10071.
fn udp_address_in(yaml: &str) -> Option<String> {
    let doc: serde_norway::Value = serde_norway::from_str(yaml)
        .unwrap_or_else(|e| panic!("the test's config is not YAML ({e}):\n{yaml}"));
    match doc.get("ingest")?.get("udp_listen_address")? {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Null => Some(String::new()),
        other => panic!("ingest.udp_listen_address is not a string: {other:?}"),
    }
}

/// `yaml` (a loopwatch config) with `ingest.udp_listen_address` set to a free
/// port on 127.0.0.1, unless it sets that key itself (to its own port, or `''`
/// to turn UDP ingest off). Returns the config and the UDP port (`None`: off).
/// Every other key is kept as written.
pub fn with_free_udp(yaml: &str) -> (String, Option<u16>) {
    if let Some(address) = udp_address_in(yaml) {
        let port = udp_port_of(&address);
        return (yaml.to_owned(), port);
    }
    set_free_udp(yaml)
}

/// `yaml` with `ingest.udp_listen_address` set to a free port on
/// 127.0.0.1, whatever it set before.
fn set_free_udp(yaml: &str) -> (String, Option<u16>) {
    let mut doc: serde_norway::Value = serde_norway::from_str(yaml).expect("YAML (checked above)");
    if doc.is_null() {
        doc = serde_norway::Value::Mapping(Default::default());
    }
    let root = doc
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("the test's config is not a YAML mapping:\n{yaml}"));
    let ingest = root
        .entry("ingest".into())
        .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
    if ingest.is_null() {
        *ingest = serde_norway::Value::Mapping(Default::default());
    }
    let port = free_udp_port();
    ingest
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("`ingest` in the test's config is not a mapping:\n{yaml}"))
        .insert(
            "udp_listen_address".into(),
            format!("127.0.0.1:{port}").into(),
        );
    let text = serde_norway::to_string(&doc).expect("serialize the config");
    (text, Some(port))
}

/// Writes [`with_free_udp`]`(yaml)` to `dir/loopwatch.yml`; returns the path
/// (for `--config.file`) and the UDP port.
pub fn write_config_with_free_udp(dir: &Path, yaml: &str) -> (PathBuf, Option<u16>) {
    let (text, port) = with_free_udp(yaml);
    let path = dir.join("loopwatch.yml");
    std::fs::write(&path, text).expect("write the config");
    (path, port)
}

/// Whether some socket on this machine is bound to UDP `port` (from
/// /proc/net/udp{,6}; reading never takes the port from anyone).
pub fn udp_port_bound(port: u16) -> bool {
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|local| local.rsplit_once(':'))
            .any(|(_, hex)| u16::from_str_radix(hex, 16) == Ok(port))
    })
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
///
/// Every exporter gets its own HTTP port and its own UDP ingest port, so
/// parallel tests never share 127.0.0.1:10071 (where all but one would fail
/// to bind and lose their apps' reports without a word).
pub struct Exporter {
    pub child: Child,
    pub port: u16,
    /// Where apps send datagrams (`udp://127.0.0.1:{udp_port}`): a free port
    /// picked for this exporter, or the one the caller's config sets; `None`
    /// when the config turns UDP ingest off, or leaves it at the shared
    /// default (see [`Exporter::start`]).
    pub udp_port: Option<u16>,
    /// The config file the exporter runs on (the caller's, or one written
    /// for it); rewrite it and send `HUP` to reload.
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Exporter {
    /// Starts loopwatch on a free port with these extra arguments and waits
    /// until `/-/ready` answers 200 and its UDP port is bound.
    ///
    /// Without `--config.file` in `args` it runs on the embedded default
    /// config (`loopwatch print-default-config`) with
    /// `ingest.udp_listen_address` moved to a free port. With
    /// `--config.file`, that file must set `ingest.udp_listen_address`
    /// (write it with [`write_config_with_free_udp`], or use
    /// [`Exporter::start_with_config`]); one that does not is run as it is,
    /// on the shared default port, and `udp_port` is `None`.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let given = args
            .iter()
            .position(|a| *a == "--config.file")
            .map(|i| PathBuf::from(args.get(i + 1).expect("a path after --config.file")))
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--config.file="))
                    .map(PathBuf::from)
            });
        let mut full_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (config_path, udp_port) = match given {
            Some(path) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // A file that is not YAML is the caller's business (the
                // exporter will say what is wrong with it): no port known.
                let parses = serde_norway::from_str::<serde_norway::Value>(&text).is_ok();
                let udp_port = match parses.then(|| udp_address_in(&text)).flatten() {
                    Some(address) => udp_port_of(&address),
                    None if !parses => None,
                    None => {
                        eprintln!(
                            "note: {} leaves ingest.udp_listen_address at the shared 127.0.0.1:10071; \
                             write it with common::write_config_with_free_udp",
                            path.display()
                        );
                        None
                    }
                };
                (path, udp_port)
            }
            None => {
                let default = run_bin(&["print-default-config"]);
                assert!(
                    default.status.success(),
                    "print-default-config: {default:?}"
                );
                let (text, udp_port) = set_free_udp(&String::from_utf8_lossy(&default.stdout));
                let path = dir.path().join("loopwatch.yml");
                std::fs::write(&path, text).expect("write the config");
                full_args.push("--config.file".into());
                full_args.push(path.to_str().expect("utf8 path").into());
                (path, udp_port)
            }
        };
        Self::launch(full_args, dir, config_path, udp_port)
    }

    /// Starts loopwatch on `yaml` (a config), with a free UDP ingest port
    /// merged in unless `yaml` sets `ingest.udp_listen_address` itself.
    pub fn start_with_config(yaml: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, udp_port) = write_config_with_free_udp(dir.path(), yaml);
        let mut full_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        full_args.push("--config.file".into());
        full_args.push(path.to_str().expect("utf8 path").into());
        Self::launch(full_args, dir, path, udp_port)
    }

    /// Starts loopwatch on the embedded default config, as a user runs it
    /// (UDP ingest on the default 127.0.0.1:10071, which only one test may
    /// use at a time).
    pub fn start_default(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Self::launch(args, dir, PathBuf::new(), Some(10071))
    }

    /// `udp://127.0.0.1:{udp_port}`, for an app's `LOOPWATCH_TARGET`.
    pub fn udp_target(&self) -> String {
        let port = self
            .udp_port
            .expect("this exporter has no UDP port of its own (see Exporter::start)");
        format!("udp://127.0.0.1:{port}")
    }

    fn launch(
        args: Vec<String>,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        udp_port: Option<u16>,
    ) -> Self {
        let port = free_port();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(BIN)
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .args(&args)
            .env_remove("LOOPWATCH_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start loopwatch");
        let mut exporter = Exporter {
            child,
            port,
            udp_port,
            config_path,
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
                // UDP ingest starts beside the server: ready once it is bound
                // too, so an app's first datagrams are not lost.
                if r.status == 200 && self.udp_port.is_none_or(udp_port_bound) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "loopwatch did not become ready (HTTP port {}, UDP port {:?}): {}",
            self.port,
            self.udp_port,
            self.stderr()
        );
    }

    /// A scrape, checked for duplicate samples: Prometheus drops a scrape
    /// that has any, and `promtool check metrics` does not notice them.
    pub fn metrics(&self) -> String {
        let r = get(self.port, "/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert_no_duplicate_samples(&text);
        text
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

/// Fails (never skips) unless `python3` can import every one of `modules`.
pub fn require_python_modules(modules: &[&str]) {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("python3")
        .args(["-c", &code])
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot run ({e}): run ./scripts/test.sh"));
    assert!(
        out.status.success(),
        "python3 lacks {modules:?}: run ./scripts/test.sh, which installs the tests' Python packages\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process a test started (a Python app, uvicorn): its stdout lines arrive
/// on a channel, its stderr is collected and shown in every failure message
/// about it. Killed (SIGKILL) when dropped, if still running.
pub struct App {
    pub child: Child,
    pub name: String,
    lines: mpsc::Receiver<(String, Instant)>,
    peeked: Option<(String, Instant)>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl App {
    /// `python3 <repo>/<script>` with the client from this checkout on
    /// `PYTHONPATH` and `LOOPWATCH_DISABLED` unset; add env and args, then
    /// [`App::spawn`] it.
    pub fn python(script: &str) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_path(script));
        Self::python_env(&mut cmd);
        cmd
    }

    /// The client from this checkout on `PYTHONPATH`, `LOOPWATCH_DISABLED`,
    /// `LOOPWATCH_WORKER` and `LOOPWATCH_APP` unset, unbuffered output.
    pub fn python_env(cmd: &mut Command) {
        cmd.env("PYTHONPATH", repo_path("clients/python/src"))
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("LOOPWATCH_DISABLED")
            .env_remove("LOOPWATCH_WORKER")
            .env_remove("LOOPWATCH_APP")
            .env_remove("LOOPWATCH_TARGET");
    }

    /// Starts `cmd` with its stdout and stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let seen = stdout.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                seen.lock().expect("stdout lock").push(l.clone());
                let _ = tx.send((l, Instant::now()));
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                collected.lock().expect("stderr lock").push_str(&line);
                line.clear();
            }
        });
        App {
            child,
            name: name.to_owned(),
            lines,
            peeked: None,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// What the process wrote so far, for a failure message.
    pub fn output(&self) -> String {
        // Give the reader threads a moment to drain what a dying process wrote.
        std::thread::sleep(Duration::from_millis(100));
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            self.stdout.lock().expect("stdout lock").join("\n"),
            self.name,
            self.stderr()
        )
    }

    /// Waits for the next stdout line that `pred` accepts (lines before it
    /// are skipped); returns it and when it arrived. Panics with the app's
    /// output when it does not come within `within`.
    pub fn wait_line_where(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match self.peeked.take() {
                Some(line) => Ok(line),
                None => self.lines.recv_timeout(left),
            };
            match next {
                Ok((l, at)) if pred(&l) => return (l, at),
                Ok(_) => {}
                Err(e) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} did not print {what} ({e}; exit status {status:?})\n{}",
                        self.name,
                        self.output()
                    )
                }
            }
        }
    }

    /// Waits for the stdout line `want`; returns when it arrived.
    pub fn wait_line(&mut self, want: &str, within: Duration) -> Instant {
        self.wait_line_where(within, want, |l| l == want).1
    }

    /// Whether a stdout line arrived that was not read yet (it stays unread).
    pub fn has_unread_line(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.lines.try_recv().ok();
        }
        self.peeked.is_some()
    }

    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// Waits for the process to exit; panics with its output if it does not
    /// within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {within:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for the process to exit and asserts it succeeded, showing its
    /// output when not.
    pub fn assert_success(&mut self, within: Duration) {
        let status = self.wait_exit(within);
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            self.output()
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Sends `sig` (`TERM`, `KILL`, …) to one process the test started.
pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Fails on a series printed twice, or a family's `# TYPE` printed twice.
pub fn assert_no_duplicate_samples(text: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut types = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            assert!(
                types.insert(t.to_owned()),
                "family typed twice: {line}\n{text}"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("unparsable sample line: {line}"));
        assert!(
            seen.insert(canonical(series)),
            "duplicate sample: {line}\n{text}"
        );
    }
}

#[test]
fn duplicate_samples_are_found_whatever_the_label_order() {
    assert_no_duplicate_samples("a{x=\"1\",y=\"2\"} 1\na{x=\"2\",y=\"2\"} 1\nb 3\n");
    let dup = std::panic::catch_unwind(|| {
        assert_no_duplicate_samples("a{x=\"1\",y=\"a,}b\"} 1\na{y=\"a,}b\",x=\"1\"} 2\n")
    });
    assert!(
        dup.is_err(),
        "the same series in another label order is a duplicate"
    );
}
