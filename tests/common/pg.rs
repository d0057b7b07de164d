//! A private PostgreSQL cluster and PgBouncer for one test.
//!
//! Every [`PgCluster`] is its own `initdb` in a temporary directory under
//! `/tmp`, listening on 127.0.0.1 only, on a port picked for it, with its
//! Unix socket inside that directory. Tests can stop, restart and hang
//! (`SIGSTOP`) it without touching anything else on the machine (the
//! machine's own server on 5432 is never used).
//!
//! The server and PgBouncer refuse to run as root: when the tests run as
//! root, they run as the `postgres` OS user (set on the spawned process with
//! `CommandExt::uid`/`gid`, so the process we spawn is the server itself, no
//! `su` in between); otherwise as the current user.
//!
//! Nothing is left behind:
//! - `Drop` resumes a paused server, stops it (`pg_ctl stop -m immediate`),
//!   waits until the postmaster is gone (`SIGKILL` as a last resort) and
//!   removes the directory. It runs when a test panics, too.
//! - A watchdog (`sh`, in its own process group, reading a pipe from the
//!   test process) does the same if the test process dies without
//!   unwinding (SIGKILL, a nextest timeout, a leaked or `static` cluster):
//!   the pipe closes, the watchdog wakes up and cleans up.
//!
//! SQL is run with `psql` (`-X -At`, never a password prompt), whose output
//! is returned as text: one row a line, columns separated by `|`.
//! The fixture's own sessions use `application_name = 'pg_fixture'`, so tests
//! can leave them out of counts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest any single wait of the fixture lasts before it panics.
pub const WAIT: Duration = Duration::from_secs(30);

/// `application_name` of the fixture's own `psql` sessions.
pub const FIXTURE_APP: &str = "pg_fixture";

// ---------------------------------------------------------------------------
// Running things
// ---------------------------------------------------------------------------

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Ran {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    fn into_result(self, what: &str, timeout: Duration) -> Result<String, String> {
        if self.success() {
            Ok(self.stdout.trim_end_matches('\n').to_owned())
        } else if self.timed_out {
            Err(format!(
                "{what}: timed out after {timeout:?}; stderr: {}",
                self.stderr.trim_end()
            ))
        } else {
            Err(format!(
                "{what}: {}; stderr: {}",
                self.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "did not run".into()),
                self.stderr.trim_end()
            ))
        }
    }
}

fn read_all<R: Read + Send + 'static>(r: Option<R>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs a command to completion, killing it after `timeout`. Never panics.
pub fn run(cmd: &mut Command, timeout: Duration) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Ran {
                status: None,
                stdout: String::new(),
                stderr: format!("could not start {:?}: {e}", cmd.get_program()),
                timed_out: false,
            };
        }
    };
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    // A grandchild that kept the pipes open must not hang the test.
    let grace = Duration::from_secs(5);
    Ran {
        status,
        stdout: out.recv_timeout(grace).unwrap_or_default(),
        stderr: err.recv_timeout(grace).unwrap_or_default(),
        timed_out,
    }
}

/// Removes the caller's `PG*` variables (a `PGHOST`, `PGPASSWORD` or
/// `PGSERVICE` in the environment must not redirect the fixture) and fixes
/// the language of messages, so tests can match them.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env_remove("LANGUAGE")
}

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// `(uid, gid)` of the `postgres` OS user when we are root (the server and
/// PgBouncer refuse root), `None` when we are not root (run as ourselves).
fn run_as() -> Option<(u32, u32)> {
    if effective_uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let ids = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse().ok(), f[3].parse().ok()))
    });
    match ids {
        Some((Some(uid), Some(gid))) => Some((uid, gid)),
        _ => panic!(
            "running as root but there is no `postgres` OS user to run the server as: \
             install Debian's `postgresql` package"
        ),
    }
}

/// A command run as the server's OS user, in `cwd` (which that user can
/// enter: initdb and pg_ctl fail in a working directory they cannot read).
fn as_server_user(program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd).current_dir(cwd).env("HOME", cwd);
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn give_to_server_user(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The directory of the PostgreSQL server programs: `$LOOPWATCH_PG_BINDIR`,
/// else the newest `/usr/lib/postgresql/*/bin` (Debian), else `pg_config
/// --bindir`.
pub fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOOPWATCH_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) not found: install Debian's \
         `postgresql` package, or set LOOPWATCH_PG_BINDIR"
    );
}

fn pg_bin(name: &str) -> PathBuf {
    let path = pg_bindir().join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

fn find_in_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A random-ish number, different in every call and every process.
fn random() -> u64 {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A TCP port that is free on 127.0.0.1 right now, chosen at random below
/// the kernel's ephemeral range (so that outgoing connections of other tests
/// do not take it between this check and the server's bind). Callers retry
/// with another port if the bind still fails.
pub fn pick_port() -> u16 {
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (20000u32, ephemeral_low.min(32768));
    if high > low + 100 {
        for _ in 0..200 {
            let port = (low + (random() % u64::from(high - low)) as u32) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// `(state, ppid)` from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` runs (or is stopped): not gone, not a zombie.
pub fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Whether `pid` is stopped by a signal.
pub fn process_stopped(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('T', _)))
}

/// Live children of `pid`, found by their ppid in `/proc/*/stat`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(proc_stat(p), Some((s, ppid)) if ppid == pid && s != 'Z' && s != 'X'))
        .collect();
    kids.sort_unstable();
    kids
}

fn cmdline_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`, …) to processes by PID.
pub fn signal(pids: &[u32], sig: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("kill -s {sig} \"$@\""))
        .arg("kill")
        .args(pids.iter().map(|p| p.to_string()));
    run(&mut cmd, Duration::from_secs(10)).success()
}

fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process in its own process group (so a signal to the test's group does
/// not reach it) that runs `script` once its standard input closes, i.e.
/// when the test process has died without cleaning up. Killed on a clean
/// drop.
struct Watchdog(Option<Child>);

impl Watchdog {
    fn spawn(script: &str, args: &[&OsStr]) -> Self {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read -r _ || :\n{script}"))
            .arg("loopwatch-pg-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        Watchdog(child)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// Plain sh (dash): no awk (mawk stops at the first /proc file that vanished).
const CLUSTER_WATCHDOG: &str = r#"
dir=$1; data="$dir/data"
kids_of() {
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- ${line##*")"}
    if [ "$2" = "$pm" ]; then p=${f#/proc/}; echo "${p%/stat}"; fi
  done
}
pm_runs() { grep -qaF -- "$data" "/proc/$pm/cmdline" 2>/dev/null; }
pm=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
if [ -n "$pm" ] && pm_runs; then
  kids=$(kids_of)
  kill -s CONT $kids "$pm" 2>/dev/null
  kill -s QUIT "$pm" 2>/dev/null
  i=0
  while [ $i -lt 100 ] && pm_runs; do sleep 0.1; i=$((i+1)); done
  if pm_runs; then kill -s KILL "$pm" $(kids_of) 2>/dev/null; fi
fi
rm -rf "$dir"
"#;

const PID_WATCHDOG: &str = r#"
dir=$1; pid=$2
if grep -qaF -- "$dir" "/proc/$pid/cmdline" 2>/dev/null; then
  kill -s CONT "$pid" 2>/dev/null
  kill -s KILL "$pid" 2>/dev/null
fi
rm -rf "$dir"
"#;

// ---------------------------------------------------------------------------
// SQL text
// ---------------------------------------------------------------------------

/// `"name"`, for SQL identifiers.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, for SQL string literals.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `postgresql://user:password@127.0.0.1:port/database` (user and password
/// percent-encoded; no password part when it is empty).
pub fn url(port: u16, user: &str, password: &str, database: &str) -> String {
    let auth = if password.is_empty() {
        percent_encode(user)
    } else {
        format!("{}:{}", percent_encode(user), percent_encode(password))
    };
    format!(
        "postgresql://{auth}@127.0.0.1:{port}/{}",
        percent_encode(database)
    )
}

/// `psql -X -At` against 127.0.0.1:`port`: never prompts for a password,
/// stops at the first error.
fn psql_command(port: u16, user: &str, password: &str, database: &str, app: &str) -> Command {
    let mut cmd = Command::new(pg_bin("psql"));
    clean_env(&mut cmd)
        .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", database])
        .env("PGAPPNAME", app)
        .env("PGCONNECT_TIMEOUT", "10");
    if !password.is_empty() {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// Runs `sql` with `psql` on a connection string or URL (`connect_timeout`
/// and the like go in it). `Err` carries psql's stderr.
pub fn psql_dsn(dsn: &str, sql: &str, timeout: Duration) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    clean_env(&mut cmd)
        .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .arg("-d")
        .arg(dsn)
        .arg("-c")
        .arg(sql);
    run(&mut cmd, timeout).into_result("psql", timeout)
}

/// Rows of `psql -A -F <US>` output with its header line, as column → value.
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split('\x1f').collect();
    lines
        .map(|l| {
            names
                .iter()
                .zip(l.split('\x1f'))
                .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// Adds what makes psql print a header line and `\x1f` between columns.
fn table_command(mut cmd: Command, sql: &str) -> Command {
    // Options are applied in order: this undoes psql_command's `-t`.
    cmd.args([
        "-P",
        "tuples_only=off",
        "-P",
        "footer=off",
        "-F",
        "\x1f",
        "-c",
        sql,
    ]);
    cmd
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A private PostgreSQL cluster, stopped and removed on drop.
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    port: u16,
    paused: AtomicBool,
    watchdog: Watchdog,
}

impl PgCluster {
    /// `initdb` into a new directory under /tmp, then starts the server on
    /// a free port and waits until `select 1` answers over TCP.
    ///
    /// Authentication: trust over the Unix socket; over 127.0.0.1 trust for
    /// `postgres` and scram-sha-256 for every other role.
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("loopwatch-pg-")
            .tempdir_in("/tmp")
            .expect("a temporary directory under /tmp");
        let path = dir.path().to_path_buf();
        give_to_server_user(&path);
        let watchdog = Watchdog::spawn(CLUSTER_WATCHDOG, &[path.as_os_str()]);
        let mut cluster = PgCluster {
            dir: Some(dir),
            path,
            port: 0,
            paused: AtomicBool::new(false),
            watchdog,
        };
        cluster.initdb();
        cluster.first_start();
        cluster
    }

    fn initdb(&self) {
        let mut cmd = as_server_user(&pg_bin("initdb"), &self.path);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args([
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]);
        let timeout = Duration::from_secs(120);
        if let Err(e) = run(&mut cmd, timeout).into_result("initdb", timeout) {
            panic!("initdb in {} failed: {e}", self.path.display());
        }
        std::fs::write(
            self.data_dir().join("pg_hba.conf"),
            "# written by tests/common/pg.rs\n\
             local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\ninclude 'loopwatch_fixture.conf'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    fn write_settings(&self) {
        let settings = format!(
            "# written by tests/common/pg.rs\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             max_connections = 50\n\
             superuser_reserved_connections = 3\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             autovacuum = off\n\
             jit = off\n\
             client_connection_check_interval = 1s\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             log_line_prefix = '%m [%p] %q%u@%d %a: '\n",
            port = self.port,
            dir = self.path.display(),
        );
        std::fs::write(self.data_dir().join("loopwatch_fixture.conf"), settings)
            .expect("write loopwatch_fixture.conf");
    }

    fn first_start(&mut self) {
        let mut last = String::new();
        for _ in 0..8 {
            self.port = pick_port();
            self.write_settings();
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.wait_ready();
                    return;
                }
                Err(e) => {
                    let log = self.log();
                    let port_taken = log.contains("could not bind")
                        || log.contains("Address already in use")
                        || log.contains("could not create any TCP/IP sockets");
                    if !port_taken {
                        panic!("PostgreSQL did not start: {e}\nserver log:\n{log}");
                    }
                    last = format!("{e}\nserver log:\n{log}");
                    // The log is appended to: start the next try with a clean one.
                    let _ = std::fs::write(self.log_path(), "");
                }
            }
        }
        panic!("PostgreSQL did not start on any of 8 ports: {last}");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = as_server_user(&pg_bin("pg_ctl"), &self.path);
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "start"]);
        let timeout = Duration::from_secs(45);
        run(&mut cmd, timeout)
            .into_result("pg_ctl start", timeout)
            .map(|_| ())
    }

    fn wait_ready(&self) {
        let mut last = String::new();
        let ok = wait_until(WAIT, || match self.try_psql("select 1") {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        if !ok {
            panic!(
                "PostgreSQL on port {} did not answer `select 1` within {WAIT:?}: {last}\nserver log:\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory: the data directory, the server log and the
    /// Unix socket are in it.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    /// The directory of the Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.path
    }

    fn log_path(&self) -> PathBuf {
        self.path.join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A URL for database `postgres`:
    /// `postgresql://user:password@127.0.0.1:PORT/postgres`.
    pub fn dsn(&self, user: &str, password: &str) -> String {
        url(self.port, user, password, "postgres")
    }

    /// A URL for another database.
    pub fn dsn_db(&self, user: &str, password: &str, database: &str) -> String {
        url(self.port, user, password, database)
    }

    /// Runs SQL as `postgres` over TCP in database `postgres`; panics with
    /// psql's stderr on failure. Output: `-At` (rows a line, `|` between
    /// columns), trailing newline removed.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql on port {} failed: {e}\nSQL: {sql}", self.port))
    }

    /// Like [`psql`](Self::psql), `Err(stderr)` instead of a panic.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.psql_as("postgres", "", "postgres", sql)
    }

    /// Runs SQL as another role (password over scram-sha-256) in a database.
    pub fn psql_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
        sql: &str,
    ) -> Result<String, String> {
        let mut cmd = psql_command(self.port, user, password, database, FIXTURE_APP);
        cmd.arg("-c").arg(sql);
        run(&mut cmd, WAIT).into_result("psql", WAIT)
    }

    /// Runs a query as `postgres` and returns its rows as column → value
    /// (values must not contain newlines).
    pub fn rows(&self, sql: &str) -> Vec<BTreeMap<String, String>> {
        let mut cmd = table_command(
            psql_command(self.port, "postgres", "", "postgres", FIXTURE_APP),
            sql,
        );
        match run(&mut cmd, WAIT).into_result("psql", WAIT) {
            Ok(text) => parse_table(&text),
            Err(e) => panic!("psql on port {} failed: {e}\nSQL: {sql}", self.port),
        }
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password'` (stored as scram-sha-256).
    pub fn create_role(&self, name: &str, password: &str) {
        self.psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ));
    }

    /// A login role that is a member of `pg_monitor` (sees every session's
    /// state and query in `pg_stat_activity`, as an exporter should).
    pub fn create_monitor_role(&self, name: &str, password: &str) {
        self.create_role(name, password);
        self.psql(&format!("GRANT pg_monitor TO {}", quote_ident(name)));
    }

    /// `CREATE DATABASE name`.
    pub fn create_database(&self, name: &str) {
        self.psql(&format!("CREATE DATABASE {}", quote_ident(name)));
    }

    /// The postmaster's PID while the server runs (or is paused).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let data = self.data_dir();
        (process_alive(pid) && cmdline_contains(pid, &data.to_string_lossy())).then_some(pid)
    }

    /// The postmaster and all its children (backends, background processes).
    pub fn server_pids(&self) -> Vec<u32> {
        match self.postmaster_pid() {
            Some(pm) => std::iter::once(pm).chain(children_of(pm)).collect(),
            None => Vec::new(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// `pg_ctl stop -m fast` (resumes a paused server first).
    pub fn stop(&self) {
        if self.is_paused() {
            self.resume();
        }
        let mut cmd = as_server_user(&pg_bin("pg_ctl"), &self.path);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        let timeout = Duration::from_secs(45);
        if let Err(e) = run(&mut cmd, timeout).into_result("pg_ctl stop", timeout) {
            panic!("pg_ctl stop failed: {e}\nserver log:\n{}", self.log());
        }
    }

    /// Starts the stopped server again: same data directory, same port.
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!(
                "PostgreSQL did not start again on port {}: {e}\nserver log:\n{}",
                self.port,
                self.log()
            );
        }
        self.wait_ready();
    }

    /// Hangs the server: `SIGSTOP` to the postmaster and every child. New
    /// connections are accepted by the kernel and then never answered.
    pub fn pause(&self) {
        let pm = self
            .postmaster_pid()
            .expect("pause: the server is not running");
        // The postmaster first, so that it forks nothing new meanwhile.
        signal(&[pm], "STOP");
        assert!(
            wait_until(Duration::from_secs(10), || process_stopped(pm)),
            "pause: the postmaster {pm} did not stop"
        );
        self.paused.store(true, Ordering::SeqCst);
        let all_stopped = wait_until(WAIT, || {
            let running: Vec<u32> = children_of(pm)
                .into_iter()
                .filter(|&p| !process_stopped(p))
                .collect();
            signal(&running, "STOP");
            running.is_empty()
        });
        assert!(all_stopped, "pause: children of {pm} did not all stop");
    }

    /// `SIGCONT` to the children, then the postmaster.
    pub fn resume(&self) {
        if let Some(pm) = self.postmaster_pid() {
            signal(&children_of(pm), "CONT");
            signal(&[pm], "CONT");
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stops the server however it can; never panics.
    fn shut_down_quietly(&self) {
        let Some(pm) = self.postmaster_pid() else {
            return;
        };
        let kids = children_of(pm);
        signal(&kids, "CONT");
        signal(&[pm], "CONT");
        self.paused.store(false, Ordering::SeqCst);
        let mut cmd = as_server_user(&pg_bin("pg_ctl"), &self.path);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "20", "stop"]);
        let _ = run(&mut cmd, Duration::from_secs(30));
        if !wait_until(Duration::from_secs(10), || !process_alive(pm)) {
            let mut all = children_of(pm);
            all.extend(kids);
            all.push(pm);
            all.retain(|&p| process_alive(p));
            signal(&all, "KILL");
            wait_until(Duration::from_secs(10), || {
                all.iter().all(|&p| !process_alive(p))
            });
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shut_down_quietly();
        // The server is gone: the watchdog has nothing left to do.
        drop(std::mem::replace(&mut self.watchdog, Watchdog(None)));
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

// ---------------------------------------------------------------------------
// Held client sessions
// ---------------------------------------------------------------------------

/// What a held session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// Connected, nothing running: `state = 'idle'`.
    Idle,
    /// `BEGIN; SELECT 1;` and nothing more: `state = 'idle in transaction'`.
    IdleInTransaction,
    /// `SELECT pg_sleep(3600)`: `state = 'active'`.
    Active,
}

impl SessionKind {
    pub fn state(self) -> &'static str {
        match self {
            SessionKind::Idle => "idle",
            SessionKind::IdleInTransaction => "idle in transaction",
            SessionKind::Active => "active",
        }
    }

    fn script(self) -> &'static str {
        match self {
            SessionKind::Idle => "",
            SessionKind::IdleInTransaction => "BEGIN;\nSELECT 1;\n",
            SessionKind::Active => "SELECT pg_sleep(3600);\n",
        }
    }
}

struct HeldSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    backend_pid: Option<i32>,
}

/// Client sessions (`psql` processes reading from a pipe we keep open) held
/// until dropped. Drop kills the psql processes by PID, terminates their
/// backends and waits (bounded) until they are gone from `pg_stat_activity`.
pub struct HeldConnections {
    sessions: Vec<HeldSession>,
    /// Where to terminate the backends on drop (a cluster's port).
    cluster_port: Option<u16>,
}

impl HeldConnections {
    /// Backend PIDs (`pg_stat_activity.pid`) of the sessions, in order (for
    /// a lock waiter: the holder first). Sessions still waiting in a pooler
    /// have none.
    pub fn backend_pids(&self) -> Vec<i32> {
        self.sessions.iter().filter_map(|s| s.backend_pid).collect()
    }

    /// PIDs of the psql client processes.
    pub fn client_pids(&self) -> Vec<u32> {
        self.sessions.iter().map(|s| s.child.id()).collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Ends the sessions now (the same as dropping).
    pub fn release(self) {}

    fn stderr_of_all(&mut self) -> String {
        let mut all = String::new();
        for s in &mut self.sessions {
            if let Ok(Some(status)) = s.child.try_wait() {
                all.push_str(&format!("psql {} exited with {status}: ", s.child.id()));
            }
            all.push_str(&s.stderr.lock().map(|e| e.clone()).unwrap_or_default());
        }
        all
    }
}

impl Drop for HeldConnections {
    fn drop(&mut self) {
        for s in &mut self.sessions {
            drop(s.stdin.take());
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let pids: Vec<String> = self.backend_pids().iter().map(|p| p.to_string()).collect();
        let Some(port) = self.cluster_port else {
            return;
        };
        if pids.is_empty() {
            return;
        }
        let list = pids.join(",");
        // A paused or stopped cluster: give up quickly.
        let dsn = format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2 application_name={FIXTURE_APP}"
        );
        let terminate = format!(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where pid in ({list})"
        );
        if psql_dsn(&dsn, &terminate, Duration::from_secs(5)).is_err() {
            return;
        }
        let remaining = format!("select count(*) from pg_stat_activity where pid in ({list})");
        wait_until(Duration::from_secs(10), || {
            psql_dsn(&dsn, &remaining, Duration::from_secs(5)).is_ok_and(|n| n == "0")
        });
    }
}

/// What to hold: `n` sessions of one kind, for one application_name, role
/// and database.
#[derive(Clone, Debug)]
pub struct Hold<'a> {
    pub n: usize,
    pub application_name: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    pub kind: SessionKind,
}

impl<'a> Hold<'a> {
    /// `n` idle sessions as `postgres` in database `postgres`.
    pub fn new(n: usize, application_name: &'a str) -> Self {
        Hold {
            n,
            application_name,
            user: "postgres",
            password: "",
            database: "postgres",
            kind: SessionKind::Idle,
        }
    }

    pub fn user(mut self, user: &'a str, password: &'a str) -> Self {
        self.user = user;
        self.password = password;
        self
    }

    pub fn database(mut self, database: &'a str) -> Self {
        self.database = database;
        self
    }

    pub fn kind(mut self, kind: SessionKind) -> Self {
        self.kind = kind;
        self
    }
}

/// Starts one psql that first prints its backend PID, then runs `script`
/// and keeps its standard input open.
fn spawn_session(
    port: u16,
    spec: &Hold<'_>,
    script: &str,
) -> (HeldSession, Receiver<std::io::Result<String>>) {
    let mut cmd = psql_command(
        port,
        spec.user,
        spec.password,
        spec.database,
        spec.application_name,
    );
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql");
    let mut stdin = child.stdin.take().expect("psql stdin");
    // Written before anything is read: small enough for the pipe buffer.
    let _ = stdin.write_all(format!("SELECT pg_backend_pid();\n{script}").as_bytes());
    let _ = stdin.flush();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("psql stdout");
    // Reads until psql exits, so that psql never blocks on (or dies of) a
    // closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line);
        }
    });
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr_text);
    let stderr = child.stderr.take().expect("psql stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    (
        HeldSession {
            child,
            stdin: Some(stdin),
            stderr: stderr_text,
            backend_pid: None,
        },
        rx,
    )
}

/// Waits for each session's first output line, its backend PID.
fn collect_backend_pids(
    held: &mut HeldConnections,
    receivers: Vec<Receiver<std::io::Result<String>>>,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    for (i, rx) in receivers.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) if line.trim().parse::<i32>().is_ok() => {
                held.sessions[i].backend_pid = line.trim().parse().ok();
            }
            other => {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what}: session {i} did not connect ({other:?}): {}",
                    held.stderr_of_all()
                );
            }
        }
    }
}

fn pid_list(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl PgCluster {
    /// Holds sessions as `spec` says and returns once they all show in
    /// `pg_stat_activity` in the expected state.
    pub fn hold(&self, spec: &Hold<'_>) -> HeldConnections {
        let mut held = HeldConnections {
            sessions: Vec::new(),
            cluster_port: Some(self.port),
        };
        let mut receivers = Vec::new();
        for _ in 0..spec.n {
            let (s, rx) = spawn_session(self.port, spec, spec.kind.script());
            held.sessions.push(s);
            receivers.push(rx);
        }
        let what = format!(
            "hold {} {:?} for {}",
            spec.n, spec.kind, spec.application_name
        );
        collect_backend_pids(&mut held, receivers, &what);
        let pids = pid_list(&held.backend_pids());
        let query = format!(
            "select count(*) from pg_stat_activity where pid in ({pids}) and state = {}",
            quote_literal(spec.kind.state())
        );
        let want = spec.n.to_string();
        let mut last = String::new();
        let ok = wait_until(WAIT, || {
            last = self.try_psql(&query).unwrap_or_else(|e| e);
            last == want
        });
        if !ok {
            panic!(
                "{what}: {last} of {want} sessions reached state {:?} within {WAIT:?}: {}",
                spec.kind.state(),
                held.stderr_of_all()
            );
        }
        held
    }

    /// `waiters` sessions blocked on a lock: the first session (the holder)
    /// runs `BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;` and stays idle
    /// in transaction, every other runs `SELECT * FROM t` and waits
    /// (`wait_event_type = 'Lock'`). `t` is a new table owned by `postgres`,
    /// on which `user` gets all privileges. Returns once every waiter waits.
    pub fn hold_lock_waiters(
        &self,
        waiters: usize,
        application_name: &str,
        user: &str,
        password: &str,
    ) -> HeldConnections {
        static TABLES: AtomicUsize = AtomicUsize::new(0);
        let table = format!(
            "loopwatch_lock_{}_{}",
            std::process::id(),
            TABLES.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE TABLE {table} (id int)"));
        if user != "postgres" {
            self.psql(&format!("GRANT ALL ON {table} TO {}", quote_ident(user)));
        }
        let spec = Hold::new(1, application_name).user(user, password);
        let mut held = HeldConnections {
            sessions: Vec::new(),
            cluster_port: Some(self.port),
        };
        let (holder, rx) = spawn_session(
            self.port,
            &spec,
            &format!("BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n"),
        );
        held.sessions.push(holder);
        collect_backend_pids(&mut held, vec![rx], "lock holder");
        let holder_pid = held.backend_pids()[0];
        let holds = format!(
            "select count(*) from pg_locks l join pg_stat_activity a using (pid) \
             where l.pid = {holder_pid} and l.granted and l.mode = 'AccessExclusiveLock' \
             and l.relation = '{table}'::regclass and a.state = 'idle in transaction'"
        );
        assert!(
            wait_until(WAIT, || self.try_psql(&holds).is_ok_and(|n| n == "1")),
            "the lock holder did not get its lock: {}",
            held.stderr_of_all()
        );
        let mut receivers = Vec::new();
        for _ in 0..waiters {
            let (s, rx) = spawn_session(self.port, &spec, &format!("SELECT * FROM {table};\n"));
            held.sessions.push(s);
            receivers.push(rx);
        }
        // A waiter prints its PID before it blocks: read them in order.
        let mut tail = HeldConnections {
            sessions: held.sessions.drain(1..).collect(),
            cluster_port: None,
        };
        collect_backend_pids(&mut tail, receivers, "lock waiter");
        held.sessions.append(&mut tail.sessions);
        let pids = pid_list(&held.backend_pids()[1..]);
        let waiting = format!(
            "select count(*) from pg_stat_activity where pid in ({pids}) \
             and wait_event_type = 'Lock' and state = 'active'"
        );
        let want = waiters.to_string();
        assert!(
            wait_until(WAIT, || self.try_psql(&waiting).is_ok_and(|n| n == want)),
            "lock waiters did not block: {}",
            held.stderr_of_all()
        );
        held
    }
}

/// `n` idle sessions with this application_name, as `user`.
pub fn hold_connections(
    cluster: &PgCluster,
    n: usize,
    application_name: &str,
    user: &str,
    password: &str,
) -> HeldConnections {
    cluster.hold(&Hold::new(n, application_name).user(user, password))
}

/// `n` sessions left `idle in transaction` (`BEGIN; SELECT 1;`).
pub fn hold_idle_in_transaction(
    cluster: &PgCluster,
    n: usize,
    application_name: &str,
    user: &str,
    password: &str,
) -> HeldConnections {
    cluster.hold(
        &Hold::new(n, application_name)
            .user(user, password)
            .kind(SessionKind::IdleInTransaction),
    )
}

/// `n` sessions running `SELECT pg_sleep(3600)` (`active`).
pub fn hold_active(
    cluster: &PgCluster,
    n: usize,
    application_name: &str,
    user: &str,
    password: &str,
) -> HeldConnections {
    cluster.hold(
        &Hold::new(n, application_name)
            .user(user, password)
            .kind(SessionKind::Active),
    )
}

/// A lock holder and one session waiting on its lock.
pub fn lock_waiter(
    cluster: &PgCluster,
    application_name: &str,
    user: &str,
    password: &str,
) -> HeldConnections {
    cluster.hold_lock_waiters(1, application_name, user, password)
}

// ---------------------------------------------------------------------------
// PgBouncer
// ---------------------------------------------------------------------------

/// How to configure a [`PgBouncer`].
#[derive(Clone, Debug)]
pub struct PgBouncerOptions {
    /// `session`, `transaction` or `statement`.
    pub pool_mode: String,
    pub default_pool_size: u32,
    /// `trust` (any password, but the user must be in the userlist), `plain`,
    /// `md5` or `scram-sha-256`.
    pub auth_type: String,
    /// Extra `(user, password)` entries for userlist.txt (`postgres` is
    /// always there, with password [`PgBouncer::ADMIN_PASSWORD`]).
    pub users: Vec<(String, String)>,
    /// Extra `key = value` lines for the `[pgbouncer]` section.
    pub settings: Vec<(String, String)>,
}

impl PgBouncerOptions {
    pub fn new(pool_mode: &str, default_pool_size: u32) -> Self {
        PgBouncerOptions {
            pool_mode: pool_mode.to_owned(),
            default_pool_size,
            auth_type: "trust".to_owned(),
            users: Vec::new(),
            settings: Vec::new(),
        }
    }

    pub fn auth_type(mut self, auth_type: &str) -> Self {
        self.auth_type = auth_type.to_owned();
        self
    }

    /// Adds a user to userlist.txt (with its password, which PgBouncer also
    /// uses to log in to the server).
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.users.push((user.to_owned(), password.to_owned()));
        self
    }

    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A private PgBouncer in front of a [`PgCluster`], in the foreground (its
/// PID is our child's), killed on drop.
pub struct PgBouncer {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    pid: u32,
    paused: AtomicBool,
    watchdog: Watchdog,
}

impl PgBouncer {
    /// Password of `postgres` in userlist.txt (used when `auth_type` is not
    /// `trust`; the cluster trusts `postgres` anyway).
    pub const ADMIN_PASSWORD: &'static str = "pgbouncer-admin";

    /// PgBouncer in front of `cluster`: databases `test` and `postgres` go
    /// to the cluster's database `postgres`, any other name (`*`) to the
    /// cluster's database of that name. `auth_type = trust`; `postgres` is
    /// the admin (`admin_users`, `stats_users`).
    pub fn start(cluster: &PgCluster, pool_mode: &str, default_pool_size: u32) -> PgBouncer {
        Self::start_with(
            cluster,
            &PgBouncerOptions::new(pool_mode, default_pool_size),
        )
    }

    pub fn start_with(cluster: &PgCluster, options: &PgBouncerOptions) -> PgBouncer {
        let exe =
            find_in_path("pgbouncer", &["/usr/sbin", "/usr/local/sbin"]).unwrap_or_else(|| {
                panic!("pgbouncer is not installed: install Debian's `pgbouncer` package")
            });
        let dir = tempfile::Builder::new()
            .prefix("loopwatch-pgbouncer-")
            .tempdir_in("/tmp")
            .expect("a temporary directory under /tmp");
        let path = dir.path().to_path_buf();
        give_to_server_user(&path);
        let mut userlist = format!("\"postgres\" \"{}\"\n", Self::ADMIN_PASSWORD);
        for (user, password) in &options.users {
            userlist.push_str(&format!(
                "\"{}\" \"{}\"\n",
                user.replace('"', "\"\""),
                password.replace('"', "\"\"")
            ));
        }
        std::fs::write(path.join("userlist.txt"), userlist).expect("write userlist.txt");
        let log_path = path.join("pgbouncer.log");
        let mut last = String::new();
        for _ in 0..8 {
            let port = pick_port();
            let mut ini = format!(
                "; written by tests/common/pg.rs\n\
                 [databases]\n\
                 test = host=127.0.0.1 port={cport} dbname=postgres\n\
                 postgres = host=127.0.0.1 port={cport} dbname=postgres\n\
                 * = host=127.0.0.1 port={cport}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir = {dir}\n\
                 auth_type = {auth}\n\
                 auth_file = {dir}/userlist.txt\n\
                 admin_users = postgres\n\
                 stats_users = postgres\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {size}\n\
                 max_client_conn = 200\n\
                 server_login_retry = 1\n\
                 server_connect_timeout = 5\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                cport = cluster.port(),
                dir = path.display(),
                auth = options.auth_type,
                mode = options.pool_mode,
                size = options.default_pool_size,
            );
            for (k, v) in &options.settings {
                ini.push_str(&format!("{k} = {v}\n"));
            }
            let ini_path = path.join("pgbouncer.ini");
            std::fs::write(&ini_path, ini).expect("write pgbouncer.ini");
            let log = std::fs::File::create(&log_path).expect("pgbouncer.log");
            let log2 = log.try_clone().expect("pgbouncer.log");
            let child = as_server_user(&exe, &path)
                .arg(&ini_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .expect("start pgbouncer");
            let pid = child.id();
            let watchdog = Watchdog::spawn(
                PID_WATCHDOG,
                &[path.as_os_str(), OsStr::new(&pid.to_string())],
            );
            let bouncer = PgBouncer {
                dir: None,
                path: path.clone(),
                port,
                child: Mutex::new(Some(child)),
                pid,
                paused: AtomicBool::new(false),
                watchdog,
            };
            let mut exited = false;
            let ready = wait_until(WAIT, || {
                if bouncer.exited() {
                    exited = true;
                    return true;
                }
                bouncer.try_admin("SHOW VERSION").is_ok()
            });
            if ready && !exited {
                let mut bouncer = bouncer;
                bouncer.dir = Some(dir);
                return bouncer;
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            drop(bouncer);
            if !(exited && text.contains("Address already in use")) {
                panic!(
                    "pgbouncer on port {port} did not answer `SHOW VERSION` within {WAIT:?}\nlog:\n{text}"
                );
            }
            last = text;
        }
        panic!("pgbouncer did not start on any of 8 ports; last log:\n{last}");
    }

    fn exited(&self) -> bool {
        match self.child.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            },
            Err(_) => true,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("pgbouncer.log")).unwrap_or_default()
    }

    /// A URL through PgBouncer.
    pub fn dsn(&self, user: &str, password: &str, database: &str) -> String {
        url(self.port, user, password, database)
    }

    /// A URL for the admin console (`postgres` on database `pgbouncer`).
    pub fn admin_dsn(&self) -> String {
        url(self.port, "postgres", Self::ADMIN_PASSWORD, "pgbouncer")
    }

    /// Runs an admin console command (`SHOW POOLS`, …), output `-At`;
    /// panics with psql's stderr on failure.
    pub fn admin(&self, sql: &str) -> String {
        self.try_admin(sql)
            .unwrap_or_else(|e| panic!("pgbouncer admin `{sql}` failed: {e}\nlog:\n{}", self.log()))
    }

    pub fn try_admin(&self, sql: &str) -> Result<String, String> {
        let mut cmd = psql_command(
            self.port,
            "postgres",
            Self::ADMIN_PASSWORD,
            "pgbouncer",
            FIXTURE_APP,
        );
        cmd.env("PGCONNECT_TIMEOUT", "5").arg("-c").arg(sql);
        run(&mut cmd, Duration::from_secs(10))
            .into_result("pgbouncer admin", Duration::from_secs(10))
    }

    /// An admin console command's rows as column → value.
    pub fn admin_rows(&self, sql: &str) -> Vec<BTreeMap<String, String>> {
        let mut cmd = table_command(
            psql_command(
                self.port,
                "postgres",
                Self::ADMIN_PASSWORD,
                "pgbouncer",
                FIXTURE_APP,
            ),
            sql,
        );
        match run(&mut cmd, WAIT).into_result("pgbouncer admin", WAIT) {
            Ok(text) => parse_table(&text),
            Err(e) => panic!("pgbouncer admin `{sql}` failed: {e}\nlog:\n{}", self.log()),
        }
    }

    /// Runs SQL through PgBouncer as `user` on `database`.
    pub fn psql_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
        sql: &str,
    ) -> Result<String, String> {
        let mut cmd = psql_command(self.port, user, password, database, FIXTURE_APP);
        cmd.arg("-c").arg(sql);
        run(&mut cmd, WAIT).into_result("psql via pgbouncer", WAIT)
    }

    /// Holds `spec.n` client sessions through PgBouncer. Returns once
    /// PgBouncer lists them (`SHOW CLIENTS`), whether they got a server
    /// connection or wait for one (`cl_waiting`).
    pub fn hold(&self, spec: &Hold<'_>) -> HeldConnections {
        let count = || {
            self.admin_rows("SHOW CLIENTS")
                .iter()
                .filter(|r| {
                    r.get("application_name").map(String::as_str) == Some(spec.application_name)
                        && r.get("user").map(String::as_str) == Some(spec.user)
                })
                .count()
        };
        let before = count();
        let mut held = HeldConnections {
            sessions: Vec::new(),
            cluster_port: None,
        };
        let mut receivers = Vec::new();
        for _ in 0..spec.n {
            let (s, rx) = spawn_session(self.port, spec, spec.kind.script());
            held.sessions.push(s);
            receivers.push(rx);
        }
        let mut seen = before;
        if !wait_until(WAIT, || {
            seen = count();
            seen >= before + spec.n
        }) {
            panic!(
                "pgbouncer lists {} of {} new clients for {} within {WAIT:?}: {}",
                seen - before.min(seen),
                spec.n,
                spec.application_name,
                held.stderr_of_all()
            );
        }
        // PIDs of those that already have a server connection.
        std::thread::sleep(Duration::from_millis(200));
        for (s, rx) in held.sessions.iter_mut().zip(receivers) {
            if let Ok(Ok(line)) = rx.try_recv() {
                s.backend_pid = line.trim().parse().ok();
            }
        }
        held
    }

    /// `SIGSTOP`: PgBouncer accepts nothing and answers nothing.
    pub fn pause(&self) {
        signal(&[self.pid], "STOP");
        assert!(
            wait_until(Duration::from_secs(10), || process_stopped(self.pid)),
            "pgbouncer {} did not stop",
            self.pid
        );
        self.paused.store(true, Ordering::SeqCst);
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        signal(&[self.pid], "CONT");
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.kill(); // SIGKILL works on a stopped process too
                let _ = child.wait();
            }
        }
        drop(std::mem::replace(&mut self.watchdog, Watchdog(None)));
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

// ---------------------------------------------------------------------------
// TLS (#15)
// ---------------------------------------------------------------------------

/// A throwaway CA and a server certificate it signed, made with the
/// `openssl` CLI (it comes with PostgreSQL's packages) in a directory the
/// server user can read.
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA certificate (what `sslrootcert` names).
    pub ca: PathBuf,
    /// The server certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A CA named `name`, and a server certificate for `subject_alt_names`
    /// (openssl syntax: `DNS:localhost,IP:127.0.0.1`).
    pub fn new(name: &str, subject_alt_names: &str) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("loopwatch-ca-")
            .tempdir_in("/tmp")
            .expect("a temporary directory under /tmp");
        let p = |f: &str| dir.path().join(f);
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir.path());
            let timeout = Duration::from_secs(60);
            if let Err(e) = run(&mut cmd, timeout).into_result("openssl", timeout) {
                panic!("openssl {args:?}: {e}");
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj"]);
        let subj = format!("/CN={name}");
        args.push(&subj);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=loopwatch-test-server",
        ]);
        openssl(&args);
        std::fs::write(
            p("ext.cnf"),
            format!(
                "subjectAltName={subject_alt_names}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write ext.cnf");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        give_to_server_user(dir.path());
        for f in ["ca.crt", "server.crt", "server.key"] {
            give_to_server_user(&p(f));
            std::fs::set_permissions(p(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        // The CA certificate is public: loopwatch (running as us) reads it.
        std::fs::set_permissions(p("ca.crt"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        TestCa {
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
            _dir: dir,
        }
    }
}

impl PgCluster {
    /// Turns TLS on with `ca`'s server certificate (copied into the data
    /// directory, owned by the server user, key mode 0600) and reloads.
    pub fn enable_ssl(&self, ca: &TestCa) {
        for (from, to) in [(&ca.cert, "server.crt"), (&ca.key, "server.key")] {
            let dest = self.data_dir().join(to);
            std::fs::copy(from, &dest).expect("copy the certificate");
            give_to_server_user(&dest);
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(
            "\n# tests/common/pg.rs: enable_ssl\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
        std::fs::write(&conf, text).expect("write postgresql.conf");
        self.reload();
        assert_eq!(self.psql("show ssl"), "on", "{}", self.log());
    }

    /// Puts `lines` at the top of pg_hba.conf (the first match wins) and reloads.
    pub fn prepend_hba(&self, lines: &str) {
        let path = self.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&path).expect("read pg_hba.conf");
        std::fs::write(&path, format!("{lines}\n{text}")).expect("write pg_hba.conf");
        self.reload();
    }

    fn reload(&self) {
        self.psql("select pg_reload_conf()");
        // The postmaster reloads on SIGHUP asynchronously.
        std::thread::sleep(Duration::from_millis(500));
    }
}
