//! Per-process cost of one pass over the live `/proc`: loopwatch's
//! `ProcScanner` against the least a scan can do and against `sysinfo`.
//!
//!   cargo bench --bench proc_scan
//!
//! Variants, each run in interleaved rounds so that background load hits all
//! of them alike (the median round is reported):
//!
//! - (a) bare scan: `read_dir("/proc")`, read each numeric entry's `stat`
//!   into one reused buffer, no parsing. The floor.
//! - (b) `ProcScanner::new("/proc").scan()`, a fresh scanner per iteration so
//!   its 500 ms sharing cache never answers; cmdline off (the default).
//! - (b+cmdline) the same scanner with cmdline reading on. The flag is
//!   private; `processes::build` sets it when a group matches on cmdline,
//!   so each iteration's scanner is prepared that way before timing starts.
//! - (c) `sysinfo` 0.37: `System::new()` once, then
//!   `refresh_processes_specifics(All, true, nothing().with_cpu().with_memory())`.
//! - (c') the same with `.without_tasks()`: `nothing()` still walks every
//!   process's `task/` directory on Linux and lists threads as processes.
//! - (d) one full poll of a process group `{comm: [sleep]}` (scan, match, and
//!   each member's `fd/` and `limits`): what a poll costs beyond the scan
//!   when many processes match (benches/run.sh starts 1,000 `sleep`s).
//!
//! CPU is user+sys of this process from `/proc/self/stat` (clock ticks), wall
//! time from `Instant`. `PROC_SCAN_SECS` sets the time per variant per round
//! (default 0.6 s), `PROC_SCAN_ROUNDS` the rounds (default 5).

use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopwatch::collector::processes::{self, ProcScanner};
use loopwatch::collector::{Job, Periodic, Shared};
use loopwatch::config::{self, ProcessGroup, WebFlags};
use loopwatch::ingest::Ingest;
use loopwatch::watchdog::Watchdog;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Scanner,
    ScannerCmdline,
    Sysinfo,
    SysinfoNoTasks,
    GroupPoll,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::Bare,
        Variant::Scanner,
        Variant::ScannerCmdline,
        Variant::Sysinfo,
        Variant::SysinfoNoTasks,
        Variant::GroupPoll,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "(a) bare scan: read_dir + read stat, no parsing",
            Variant::Scanner => "(b) loopwatch ProcScanner::scan(), cmdline off",
            Variant::ScannerCmdline => "(b+cmdline) loopwatch ProcScanner::scan(), cmdline on",
            Variant::Sysinfo => {
                "(c) sysinfo 0.37 refresh_processes_specifics(nothing().with_cpu().with_memory())"
            }
            Variant::SysinfoNoTasks => "(c') sysinfo 0.37, same plus .without_tasks()",
            Variant::GroupPoll => {
                "(d) loopwatch group poll {comm: [sleep]} (scan + fds + limits of members)"
            }
        }
    }
}

/// user+sys clock ticks of this process so far.
fn cpu_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name, which sits in parentheses and may hold spaces.
    let rest = &text[text.rfind(')').expect("stat has a comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// What all variants reuse.
struct Ctx {
    buf: Vec<u8>,
    path: PathBuf,
    sys: System,
    sys_no_tasks: System,
    /// What `processes::build` needs besides the scanner; each iteration
    /// gets its own fresh scanner.
    shared: Shared,
    rt: tokio::runtime::Runtime,
}

/// `Shared` as `app::Exporter::start` builds it, apart from the scanner.
fn shared_template(registry: &prometheus::Registry) -> Shared {
    let watchdog = Arc::new(Watchdog::register(registry));
    let ingest = Arc::new(Ingest::register(
        registry,
        watchdog.clone(),
        config::default_config().ingest.clone(),
    ));
    Shared {
        watchdog,
        ingest,
        udp: Arc::default(),
        proc_scanner: Arc::new(ProcScanner::new("/proc")),
        logs: Arc::default(),
        bursts: Arc::default(),
    }
}

fn fresh_shared(ctx: &Ctx, scanner: Arc<ProcScanner>) -> Shared {
    Shared {
        proc_scanner: scanner,
        ..ctx.shared.clone()
    }
}

/// One process group, resolved by config as the exporter resolves it.
fn group(name: &str, matcher: &str) -> ProcessGroup {
    let text = format!(
        "processes:\n  - name: {name}\n    interval: 1s\n    timeout: 1s\n    match: {{{matcher}}}\n"
    );
    config::parse(&text, "bench", &WebFlags::default())
        .expect("valid group")
        .processes
        .remove(0)
}

/// Work prepared for one iteration, outside the timed region.
enum Prepared {
    None,
    Scanner(Arc<ProcScanner>),
    Poll(Box<dyn Periodic>),
}

fn prepare(v: Variant, ctx: &Ctx) -> Prepared {
    match v {
        Variant::Bare | Variant::Sysinfo | Variant::SysinfoNoTasks | Variant::Scanner => {
            Prepared::None
        }
        Variant::ScannerCmdline => {
            let scanner = Arc::new(ProcScanner::new("/proc"));
            let shared = fresh_shared(ctx, scanner.clone());
            // Building a group that matches on cmdline turns cmdline reading on.
            let built = processes::build(&[group("cmdline", "cmdline: [x]")], &shared);
            assert_eq!(built.len(), 1);
            Prepared::Scanner(scanner)
        }
        Variant::GroupPoll => {
            let shared = fresh_shared(ctx, Arc::new(ProcScanner::new("/proc")));
            let mut built = processes::build(&[group("sleepers", "comm: [sleep]")], &shared);
            match built.pop().map(|b| b.job) {
                Some(Job::Periodic { collector, .. }) => Prepared::Poll(collector),
                _ => panic!("a process group is periodic"),
            }
        }
    }
}

/// One iteration; returns what it saw (processes or entries), kept from the optimizer.
fn run_one(v: Variant, ctx: &mut Ctx, prepared: Prepared) -> usize {
    match (v, prepared) {
        (Variant::Bare, _) => {
            let mut n = 0;
            for entry in std::fs::read_dir("/proc").expect("read_dir /proc") {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name();
                if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
                    continue;
                }
                ctx.path.clear();
                ctx.path.push("/proc");
                ctx.path.push(&name);
                ctx.path.push("stat");
                ctx.buf.clear();
                if let Ok(mut f) = std::fs::File::open(&ctx.path) {
                    if f.read_to_end(&mut ctx.buf).is_ok() {
                        n += 1;
                    }
                }
                black_box(&ctx.buf);
            }
            n
        }
        (Variant::Scanner, _) => {
            let scan = ProcScanner::new("/proc").scan().expect("scan");
            scan.procs.len()
        }
        (Variant::ScannerCmdline, Prepared::Scanner(scanner)) => {
            let scan = scanner.scan().expect("scan");
            assert!(scan.procs.iter().any(|p| p.cmdline.is_some()));
            scan.procs.len()
        }
        (Variant::Sysinfo, _) => ctx.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        ),
        (Variant::SysinfoNoTasks, _) => ctx.sys_no_tasks.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        ),
        (Variant::GroupPoll, Prepared::Poll(mut poll)) => {
            let families = ctx.rt.block_on(poll.poll()).expect("group poll");
            black_box(families);
            0
        }
        _ => unreachable!("prepared for another variant"),
    }
}

fn count_procs() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .as_encoded_bytes()
                        .iter()
                        .all(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(0)
}

#[derive(Clone, Copy, Default)]
struct Round {
    iters: u64,
    procs: u64,
    wall: Duration,
    cpu_ticks: u64,
}

impl Round {
    fn wall_per_iter_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.iters as f64
    }
    fn cpu_per_iter_us(&self, tck: f64) -> f64 {
        self.cpu_ticks as f64 / tck * 1e6 / self.iters as f64
    }
    fn procs_per_iter(&self) -> f64 {
        self.procs as f64 / self.iters as f64
    }
}

fn run_round(v: Variant, ctx: &mut Ctx, iters: u64) -> Round {
    // Every variant watches the same processes: per-process figures divide
    // by the numeric entries of /proc, counted around the round.
    let mut prepared: Vec<Prepared> = (0..iters).map(|_| prepare(v, ctx)).collect();
    let before = count_procs();
    let c0 = cpu_ticks();
    let t0 = Instant::now();
    for p in prepared.drain(..) {
        black_box(run_one(v, ctx, p));
    }
    let wall = t0.elapsed();
    let cpu = cpu_ticks() - c0;
    let after = count_procs();
    Round {
        iters,
        procs: (before + after) as u64 * iters / 2,
        wall,
        cpu_ticks: cpu,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let round_secs = env_f64("PROC_SCAN_SECS", 0.6);
    let rounds = env_f64("PROC_SCAN_ROUNDS", 5.0).max(1.0) as usize;
    let tck = procfs::ticks_per_second() as f64;

    let registry = prometheus::Registry::new();
    let mut ctx = Ctx {
        buf: Vec::with_capacity(1024),
        path: PathBuf::with_capacity(64),
        sys: System::new(),
        sys_no_tasks: System::new(),
        shared: shared_template(&registry),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
    };

    let sleepers = ProcScanner::new("/proc")
        .scan()
        .map(|s| s.procs.iter().filter(|p| p.comm == "sleep").count())
        .unwrap_or(0);

    // Warm up (sysinfo's first refresh reads more than later ones) and
    // calibrate the iterations per round.
    let mut iters = Vec::new();
    for v in Variant::ALL {
        for _ in 0..3 {
            let p = prepare(v, &ctx);
            run_one(v, &mut ctx, p);
        }
        let probe = run_round(v, &mut ctx, 5);
        let per_iter = probe.wall.as_secs_f64() / 5.0;
        iters.push(((round_secs / per_iter) as u64).clamp(5, 1_000_000));
    }

    let mut results: Vec<Vec<Round>> = vec![Vec::new(); Variant::ALL.len()];
    for _ in 0..rounds {
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            results[i].push(run_round(v, &mut ctx, iters[i]));
        }
    }

    struct Row {
        iters: u64,
        procs: f64,
        wall_iter: f64,
        cpu_iter: f64,
        wall_proc: f64,
        cpu_proc: f64,
    }
    let rows: Vec<Row> = results
        .iter()
        .map(|rs| {
            let procs = median(rs.iter().map(Round::procs_per_iter).collect());
            let wall_iter = median(rs.iter().map(Round::wall_per_iter_us).collect());
            let cpu_iter = median(rs.iter().map(|r| r.cpu_per_iter_us(tck)).collect());
            let wall_proc = median(
                rs.iter()
                    .map(|r| r.wall_per_iter_us() / r.procs_per_iter())
                    .collect(),
            );
            let cpu_proc = median(
                rs.iter()
                    .map(|r| r.cpu_per_iter_us(tck) / r.procs_per_iter())
                    .collect(),
            );
            Row {
                iters: rs.iter().map(|r| r.iters).sum(),
                procs,
                wall_iter,
                cpu_iter,
                wall_proc,
                cpu_proc,
            }
        })
        .collect();

    let bare = &rows[0];
    let sysinfo_updated = ctx.sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_cpu().with_memory(),
    );
    let sysinfo_note = format!(
        "sysinfo's last refresh (c) updated {sysinfo_updated} entries, threads included (ProcessRefreshKind::nothing() still \
         lists tasks on Linux); (c') holds {}; /proc lists {} processes; per-process figures divide by the latter",
        ctx.sys_no_tasks.processes().len(),
        count_procs()
    );
    println!(
        "proc_scan: {rounds} interleaved rounds of ~{round_secs} s per variant; median round shown; \
         CPU = user+sys from /proc/self/stat ({tck} ticks/s); {sleepers} `sleep` processes running"
    );
    println!();
    println!(
        "| variant | iterations | processes/iter | wall µs/iter | CPU µs/iter | wall µs/process | CPU µs/process | ÷ (a) wall | ÷ (a) CPU |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (v, r) in Variant::ALL.iter().zip(&rows) {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2}× | {:.2}× |",
            v.label(),
            r.iters,
            r.procs,
            r.wall_iter,
            r.cpu_iter,
            r.wall_proc,
            r.cpu_proc,
            r.wall_proc / bare.wall_proc,
            r.cpu_proc / bare.cpu_proc,
        );
    }
    println!();

    let b = &rows[1];
    let c = if rows[4].cpu_proc < rows[3].cpu_proc {
        &rows[4]
    } else {
        &rows[3]
    };
    let c_name = if std::ptr::eq(c, &rows[4]) {
        "(c')"
    } else {
        "(c)"
    };
    let ratio_b = b.cpu_proc / bare.cpu_proc;
    let ratio_b_wall = b.wall_proc / bare.wall_proc;
    println!(
        "Bar: loopwatch's per-process cost at most 1.5× the bare scan: (b)/(a) = {ratio_b:.2}× CPU, \
         {ratio_b_wall:.2}× wall: {}",
        if ratio_b <= 1.5 && ratio_b_wall <= 1.5 {
            "met"
        } else if ratio_b <= 1.5 || ratio_b_wall <= 1.5 {
            "met on one measure only"
        } else {
            "MISSED"
        }
    );
    println!(
        "procfs-based scan (b) vs the cheaper sysinfo variant {c_name}: {:.2} vs {:.2} CPU µs/process: {} wins ({:.2}×)",
        b.cpu_proc,
        c.cpu_proc,
        if b.cpu_proc <= c.cpu_proc {
            "loopwatch's procfs-based scan"
        } else {
            "sysinfo"
        },
        (c.cpu_proc / b.cpu_proc).max(b.cpu_proc / c.cpu_proc),
    );
    println!("{sysinfo_note}");
    // For benches/run.sh.
    println!(
        "PROC_SCAN_BARE_CPU_US_PER_PROCESS={:.3} PROC_SCAN_SCANNER_CPU_US_PER_PROCESS={:.3} \
         PROC_SCAN_SCANNER_CMDLINE_CPU_US_PER_PROCESS={:.3} PROC_SCAN_GROUP_POLL_CPU_US_PER_PROCESS={:.3}",
        bare.cpu_proc, b.cpu_proc, rows[2].cpu_proc, rows[5].cpu_proc
    );
}
