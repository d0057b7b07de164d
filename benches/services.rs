//! Cost of the `probes` and `files` collectors per run, in loopwatch's own
//! CPU and wall time (issue 13: "the probe's cost per run").
//!
//!   cargo bench --bench services
//!
//! The HTTP peer is `python3 -m http.server` in its own process, so its CPU
//! is not counted. Variants (each the collector's real `poll()`, as the
//! driver calls it, on a current-thread tokio runtime):
//!
//! - probe: one GET of a static file, a new connection each time (the peer
//!   closes it), status check; `SERVICES_PROBES` polls (default 300).
//! - probe + body_match: the same, reading the body and matching a regex.
//! - burst round: levels 5 and 10 (15 requests), a fresh burst memory each
//!   round so none is skipped; `SERVICES_ROUNDS` rounds (default 20).
//! - files glob: one glob target matching 100 files; `SERVICES_FILES` polls.
//! - files JSON: one status file with a `json_field` check (read, parse).
//!
//! CPU is user+sys of this process from `/proc/self/stat`, in clock ticks,
//! summed over all iterations of a variant, then divided.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopwatch::collector::probes::{self, BurstMemory};
use loopwatch::collector::{Job, Periodic, files};
use loopwatch::config::{self, WebFlags};

fn cpu_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let rest = &text[text.rfind(')').expect("stat has a comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn periodic(job: Job) -> Box<dyn Periodic> {
    match job {
        Job::Periodic { collector, .. } => collector,
        Job::Streaming(_) => panic!("a periodic collector"),
    }
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(dir: &Path) -> (Peer, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Peer(child), port)
}

/// Runs `iters` polls, returning (CPU ms, wall ms) per poll.
fn measure(
    rt: &tokio::runtime::Runtime,
    iters: usize,
    mut next: impl FnMut() -> Box<dyn Periodic>,
    reuse: bool,
) -> (f64, f64) {
    let tck = procfs::ticks_per_second() as f64;
    let mut collectors: Vec<Box<dyn Periodic>> = if reuse {
        vec![next()]
    } else {
        (0..iters).map(|_| next()).collect()
    };
    let cpu = cpu_ticks();
    let wall = Instant::now();
    for i in 0..iters {
        let c = if reuse {
            &mut collectors[0]
        } else {
            &mut collectors[i]
        };
        let families = rt.block_on(c.poll()).expect("poll");
        assert!(!families.is_empty());
    }
    let wall = wall.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    let cpu = (cpu_ticks() - cpu) as f64 / tck * 1000.0 / iters as f64;
    (cpu, wall)
}

fn main() {
    let probes_n = env_usize("SERVICES_PROBES", 300);
    let rounds = env_usize("SERVICES_ROUNDS", 20);
    let files_n = env_usize("SERVICES_FILES", 300);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("health"),
        r#"{"status": "ok", "checks": {"db": "ok"}}"#,
    )
    .expect("health");
    std::fs::create_dir_all(d.join("hb")).expect("dir");
    for i in 0..100 {
        std::fs::write(d.join("hb").join(format!("w{i:03}")), "").expect("hb");
    }
    std::fs::write(
        d.join("status.json"),
        format!(r#"{{"state": "ok", "pad": "{}"}}"#, "x".repeat(2000)),
    )
    .expect("status");
    let (_peer, port) = start_peer(d);
    let yaml = format!(
        "probes:
  - name: plain
    url: http://127.0.0.1:{port}/health
  - name: body
    url: http://127.0.0.1:{port}/health
    body_match: '\"status\":\\s*\"ok\"'
  - name: burst
    url: http://127.0.0.1:{port}/health
    concurrency: {{}}
files:
  - name: hb
    path: {d}/hb/*
    max_age: 1m
    max_files: 100
  - name: status
    path: {d}/status.json
    max_age: 1m
    json_field: {{key: state, expected: ok}}
",
        d = d.display()
    );
    let config = config::parse(&yaml, "bench.yml", &WebFlags::default()).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let built = |name: &str, memory: &Arc<BurstMemory>| {
        probes::build(&config.probes, memory)
            .expect("build")
            .into_iter()
            .find(|b| b.target == name)
            .map(|b| periodic(b.job))
            .expect("target")
    };
    let file = |name: &str| {
        files::build(&config.files)
            .into_iter()
            .find(|b| b.target == name)
            .map(|b| periodic(b.job))
            .expect("target")
    };
    let memory = Arc::new(BurstMemory::default());
    // Warm up: the first request pays for DNS-free connect paths and lazy statics.
    measure(&rt, 5, || built("plain", &memory), true);

    println!("variant | iterations | CPU per run (ms) | wall per run (ms)");
    println!("--- | --- | --- | ---");
    let rows: Vec<(&str, usize, (f64, f64))> = vec![
        (
            "probe: GET, status check",
            probes_n,
            measure(&rt, probes_n, || built("plain", &memory), true),
        ),
        (
            "probe: GET + body_match",
            probes_n,
            measure(&rt, probes_n, || built("body", &memory), true),
        ),
        (
            "concurrency round: bursts of 5 and 10",
            rounds,
            measure(
                &rt,
                rounds,
                || built("burst/concurrency", &Arc::new(BurstMemory::default())),
                false,
            ),
        ),
        (
            "files: glob of 100 files",
            files_n,
            measure(&rt, files_n, || file("hb"), true),
        ),
        (
            "files: one JSON status file",
            files_n,
            measure(&rt, files_n, || file("status"), true),
        ),
    ];
    for (name, n, (cpu, wall)) in rows {
        println!("{name} | {n} | {cpu:.3} | {wall:.3}");
    }
}
