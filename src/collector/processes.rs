//! Process groups: the `loopwatch_process_*` families per configured `group`.
//!
//! One scan of `/proc` reads each process's `stat` (and `cmdline`/`exe` only
//! when a group matches on them); groups polled at the same moment share it.
//! Only the processes that matched read their fds and limits. The scan runs
//! on a blocking thread off the scrape path; a scrape reads the last snapshot.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procfs::FromRead;
use procfs::process::Stat;
use regex::RegexSet;

use super::{BoxFuture, Built, CollectError, Job, Periodic, Reason, Shared};
use crate::config::{FileError, ProcessGroup, ProcessMatchers};
use crate::families;
use crate::metrics::{Families, FamilyBuilder};

/// A pid file holds a number and a newline; more is not a pid file.
const MAX_PID_FILE: u64 = 4096;
/// A scan younger than this is shared by the groups polled at the same time.
const SHARE_SCAN_FOR: Duration = Duration::from_millis(500);

/// What one scan saw of one process.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    /// Start time in clock ticks after boot: with the pid, the process's identity.
    pub starttime: u64,
    pub cpu_ticks: u64,
    pub rss_pages: u64,
    pub vsize: u64,
    pub threads: i64,
    pub cmdline: Option<String>,
    pub exe: Option<PathBuf>,
}

/// Entries that could not be read, by reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadErrors {
    pub vanished: u64,
    pub permission_denied: u64,
    pub other: u64,
}

impl ReadErrors {
    fn count(&mut self, e: &std::io::Error) {
        match e.kind() {
            // ESRCH shows up when a process exits while its files are read.
            ErrorKind::NotFound => self.vanished += 1,
            _ if e.raw_os_error() == Some(3) => self.vanished += 1,
            ErrorKind::PermissionDenied => self.permission_denied += 1,
            _ => self.other += 1,
        }
    }

    fn add(&mut self, other: &ReadErrors) {
        self.vanished += other.vanished;
        self.permission_denied += other.permission_denied;
        self.other += other.other;
    }
}

/// One pass over `/proc`.
#[derive(Debug)]
pub struct Scan {
    at: Instant,
    with_cmdline: bool,
    with_exe: bool,
    pub procs: Vec<ProcInfo>,
    pub errors: ReadErrors,
}

/// Scans `/proc` and lets groups polled together share one scan.
pub struct ProcScanner {
    root: PathBuf,
    need_cmdline: AtomicBool,
    need_exe: AtomicBool,
    last: Mutex<Option<Arc<Scan>>>,
}

impl Default for ProcScanner {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcScanner {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            need_cmdline: AtomicBool::new(false),
            need_exe: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }

    /// A scan at most [`SHARE_SCAN_FOR`] old, with what the groups need.
    pub fn scan(&self) -> std::io::Result<Arc<Scan>> {
        let with_cmdline = self.need_cmdline.load(Ordering::Relaxed);
        let with_exe = self.need_exe.load(Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(scan) = last.as_ref() {
            if scan.at.elapsed() < SHARE_SCAN_FOR
                && scan.with_cmdline >= with_cmdline
                && scan.with_exe >= with_exe
            {
                return Ok(scan.clone());
            }
        }
        let scan = Arc::new(scan_proc(&self.root, with_cmdline, with_exe)?);
        *last = Some(scan.clone());
        Ok(scan)
    }
}

fn scan_proc(root: &Path, with_cmdline: bool, with_exe: bool) -> std::io::Result<Scan> {
    let mut procs = Vec::with_capacity(512);
    let mut errors = ReadErrors::default();
    let mut buf = Vec::with_capacity(1024);
    let mut path = root.to_path_buf();
    for entry in std::fs::read_dir(root)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        path.push(&name);
        path.push("stat");
        buf.clear();
        let read = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut buf));
        path.pop();
        let stat = match read {
            Ok(_) => match Stat::from_read(&buf[..]) {
                Ok(stat) => stat,
                Err(_) => {
                    errors.other += 1;
                    path.pop();
                    continue;
                }
            },
            Err(e) => {
                errors.count(&e);
                path.pop();
                continue;
            }
        };
        let cmdline = if with_cmdline {
            path.push("cmdline");
            let read = std::fs::read(&path);
            path.pop();
            match read {
                Ok(raw) => Some(
                    raw.split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                Err(e) => {
                    errors.count(&e);
                    None
                }
            }
        } else {
            None
        };
        let exe = if with_exe {
            path.push("exe");
            let read = std::fs::read_link(&path);
            path.pop();
            match read {
                Ok(exe) => Some(exe),
                // Kernel threads have no executable.
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => {
                    errors.count(&e);
                    None
                }
            }
        } else {
            None
        };
        path.pop();
        procs.push(ProcInfo {
            pid,
            comm: stat.comm,
            starttime: stat.starttime,
            cpu_ticks: stat.utime + stat.stime,
            rss_pages: stat.rss,
            vsize: stat.vsize,
            threads: stat.num_threads,
            cmdline,
            exe,
        });
    }
    Ok(Scan {
        at: Instant::now(),
        with_cmdline,
        with_exe,
        procs,
        errors,
    })
}

/// Decides which processes belong to a group.
#[derive(Debug)]
struct Matcher {
    comm: Vec<String>,
    exe: Vec<String>,
    cmdline: Option<RegexSet>,
    pid_file: Option<PathBuf>,
}

impl Matcher {
    /// Takes the resolved matchers (regexes compiled by config).
    fn new(m: &ProcessMatchers) -> Self {
        Self {
            comm: m.comm.clone(),
            exe: m.exe.clone(),
            cmdline: m.cmdline.clone(),
            pid_file: m.pid_file.clone(),
        }
    }

    fn matches(&self, p: &ProcInfo, pid_from_file: Option<i32>) -> bool {
        if self.pid_file.is_some() && pid_from_file != Some(p.pid) {
            return false;
        }
        if !self.comm.is_empty() && !self.comm.contains(&p.comm) {
            return false;
        }
        if !self.exe.is_empty() {
            let Some(exe) = &p.exe else { return false };
            let hit = self.exe.iter().any(|want| {
                if want.contains('/') {
                    exe == Path::new(want)
                } else {
                    exe.file_name().is_some_and(|n| n == want.as_str())
                }
            });
            if !hit {
                return false;
            }
        }
        if let Some(set) = &self.cmdline {
            let Some(cmdline) = &p.cmdline else {
                return false;
            };
            if !set.is_match(cmdline) {
                return false;
            }
        }
        true
    }

    /// The PID in the pid file; `None` when the file is absent (the group is down).
    fn read_pid_file(&self) -> Result<Option<i32>, CollectError> {
        let Some(path) = &self.pid_file else {
            return Ok(None);
        };
        // Bounded, and never a device or a FIFO: `pid_file: /dev/zero`
        // must not eat memory or hang the poll (#15).
        match crate::config::read_bounded(path, MAX_PID_FILE) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                text.trim().parse::<i32>().map(Some).map_err(|_| {
                    CollectError::new(
                        Reason::Parse,
                        format!(
                            "{} does not hold a PID: {}",
                            path.display(),
                            crate::config::excerpt(text.trim())
                        ),
                    )
                })
            }
            Err(FileError::Io(e)) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CollectError::new(
                Reason::Io,
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }
}

/// Counters carried from poll to poll.
#[derive(Default)]
struct GroupState {
    first_poll_done: bool,
    /// CPU ticks last seen per process identity (pid, starttime).
    cpu_seen: HashMap<(i32, u64), u64>,
    cpu_ticks_total: u64,
    restarts: u64,
    /// Soft fd limit per process identity.
    fd_limits: HashMap<(i32, u64), Option<u64>>,
    errors: ReadErrors,
}

/// Machine constants for turning /proc numbers into base units.
#[derive(Clone, Copy)]
struct Units {
    ticks_per_second: f64,
    page_size: f64,
    boot_time: f64,
}

struct GroupPoller {
    name: String,
    matcher: Arc<Matcher>,
    scanner: Arc<ProcScanner>,
    state: Arc<Mutex<GroupState>>,
    units: Units,
}

pub fn build(groups: &[ProcessGroup], shared: &Shared) -> Vec<Built> {
    let scanner = &shared.proc_scanner;
    scanner.need_cmdline.store(
        groups.iter().any(|g| g.matchers.cmdline.is_some()),
        Ordering::Relaxed,
    );
    scanner.need_exe.store(
        groups.iter().any(|g| !g.matchers.exe.is_empty()),
        Ordering::Relaxed,
    );
    let units = Units {
        ticks_per_second: procfs::ticks_per_second() as f64,
        page_size: procfs::page_size() as f64,
        boot_time: procfs::boot_time_secs().unwrap_or_default() as f64,
    };
    groups
        .iter()
        .map(|g| Built {
            kind: "processes",
            target: g.name.clone(),
            job: Job::Periodic {
                interval: g.interval,
                timeout: g.timeout,
                collector: Box::new(GroupPoller {
                    name: g.name.clone(),
                    matcher: Arc::new(Matcher::new(&g.matchers)),
                    scanner: scanner.clone(),
                    state: Arc::default(),
                    units,
                }),
            },
        })
        .collect()
}

impl Periodic for GroupPoller {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        let name = self.name.clone();
        let matcher = self.matcher.clone();
        let scanner = self.scanner.clone();
        let state = self.state.clone();
        let units = self.units;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A poll that outlived its timeout may still hold the state.
                let mut state = state.try_lock().map_err(|_| {
                    CollectError::new(Reason::Timeout, "the previous poll is still reading /proc")
                })?;
                sample_group(&name, &matcher, &scanner, &mut state, units)
            })
            .await
            .map_err(|e| CollectError::new(Reason::Other, format!("poll task failed: {e}")))?
        })
    }
}

/// The soft "Max open files" limit from a `/proc/PID/limits` file; `None`
/// when unlimited. Parsed by hand: the one line is all we need, and the
/// full parse costs more than the read.
pub fn soft_fd_limit(limits_file: &Path) -> std::io::Result<Option<u64>> {
    let text = std::fs::read_to_string(limits_file)?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .ok_or_else(|| std::io::Error::other("no Max open files line"))?;
    Ok(line.split_whitespace().next().and_then(|v| v.parse().ok()))
}

/// Open fds of one process, and its fd limit, read once per process
/// identity (limits rarely change; re-reading them dominated the poll).
fn fd_usage(
    p: &ProcInfo,
    limits: &mut HashMap<(i32, u64), Option<u64>>,
    errors: &mut ReadErrors,
) -> Option<(u64, Option<u64>)> {
    let dir = PathBuf::from(format!("/proc/{}", p.pid));
    let open = match std::fs::read_dir(dir.join("fd")) {
        Ok(entries) => entries.count() as u64,
        Err(e) => {
            errors.count(&e);
            return None;
        }
    };
    let id = (p.pid, p.starttime);
    let limit = match limits.get(&id) {
        Some(limit) => *limit,
        None => match soft_fd_limit(&dir.join("limits")) {
            Ok(limit) => *limits.entry(id).or_insert(limit),
            Err(e) => {
                errors.count(&e);
                None
            }
        },
    };
    Some((open, limit))
}

fn sample_group(
    name: &str,
    matcher: &Matcher,
    scanner: &ProcScanner,
    state: &mut GroupState,
    units: Units,
) -> Result<Families, CollectError> {
    let pid_from_file = matcher.read_pid_file()?;
    let scan = scanner
        .scan()
        .map_err(|e| CollectError::new(Reason::Io, format!("cannot list /proc: {e}")))?;
    let mut errors = scan.errors;
    let members: Vec<&ProcInfo> = scan
        .procs
        .iter()
        .filter(|p| matcher.matches(p, pid_from_file))
        .collect();

    // CPU: add what each process used since it was last seen, so the counter
    // never goes back when a process exits.
    let mut cpu_seen = HashMap::with_capacity(members.len());
    let mut joined = 0;
    for p in &members {
        let id = (p.pid, p.starttime);
        match state.cpu_seen.get(&id) {
            Some(before) => state.cpu_ticks_total += p.cpu_ticks.saturating_sub(*before),
            None => {
                state.cpu_ticks_total += p.cpu_ticks;
                joined += 1;
            }
        }
        cpu_seen.insert(id, p.cpu_ticks);
    }
    if state.first_poll_done {
        state.restarts += joined;
    }
    state.first_poll_done = true;
    state.fd_limits.retain(|id, _| cpu_seen.contains_key(id));
    state.cpu_seen = cpu_seen;

    let mut b = FamilyBuilder::default();
    let labels = [name];
    b.gauge(&families::PROCESSES, &labels, members.len() as f64);
    b.counter(
        &families::PROCESS_CPU,
        &labels,
        state.cpu_ticks_total as f64 / units.ticks_per_second,
    );
    b.counter(&families::PROCESS_RESTARTS, &labels, state.restarts as f64);
    if !members.is_empty() {
        let sum = |f: fn(&ProcInfo) -> f64| members.iter().map(|p| f(p)).sum::<f64>();
        b.gauge(
            &families::PROCESS_RESIDENT_MEMORY,
            &labels,
            sum(|p| p.rss_pages as f64) * units.page_size,
        );
        b.gauge(
            &families::PROCESS_VIRTUAL_MEMORY,
            &labels,
            sum(|p| p.vsize as f64),
        );
        b.gauge(
            &families::PROCESS_THREADS,
            &labels,
            sum(|p| p.threads as f64),
        );
        let oldest = members
            .iter()
            .map(|p| p.starttime)
            .min()
            .unwrap_or_default();
        b.gauge(
            &families::PROCESS_START_TIME,
            &labels,
            units.boot_time + oldest as f64 / units.ticks_per_second,
        );
        // The process closest to its fd limit stands for the group: each
        // process has its own limit, and a sum would hide one leaking worker.
        let worst = members
            .iter()
            .filter_map(|p| fd_usage(p, &mut state.fd_limits, &mut errors))
            .max_by(|a, b| {
                let ratio = |(open, limit): &(u64, Option<u64>)| match limit {
                    Some(l) if *l > 0 => *open as f64 / *l as f64,
                    _ => 0.0,
                };
                ratio(a).total_cmp(&ratio(b)).then(a.0.cmp(&b.0))
            });
        if let Some((open, limit)) = worst {
            b.gauge(&families::PROCESS_OPEN_FDS, &labels, open as f64);
            if let Some(limit) = limit {
                b.gauge(&families::PROCESS_MAX_FDS, &labels, limit as f64);
            }
        }
    }
    state.errors.add(&errors);
    for (reason, n) in [
        ("vanished", state.errors.vanished),
        ("permission_denied", state.errors.permission_denied),
        ("other", state.errors.other),
    ] {
        b.counter(&families::PROCESS_READ_ERRORS, &[name, reason], n as f64);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: i32, comm: &str, cmdline: &str, exe: &str) -> ProcInfo {
        ProcInfo {
            pid,
            comm: comm.into(),
            starttime: 1,
            cpu_ticks: 0,
            rss_pages: 0,
            vsize: 0,
            threads: 1,
            cmdline: Some(cmdline.into()),
            exe: Some(exe.into()),
        }
    }

    #[test]
    fn matcher_requires_every_kind_given() {
        let m = Matcher::new(&ProcessMatchers {
            comm: vec!["python3".into()],
            cmdline: Some(RegexSet::new([r"worker\.py"]).expect("valid")),
            ..Default::default()
        });
        assert!(m.matches(
            &info(1, "python3", "python3 worker.py", "/usr/bin/python3"),
            None
        ));
        assert!(!m.matches(
            &info(1, "python3", "python3 web.py", "/usr/bin/python3"),
            None
        ));
        assert!(!m.matches(&info(1, "node", "node worker.py", "/usr/bin/node"), None));

        let m = Matcher::new(&ProcessMatchers {
            exe: vec!["python3".into(), "/opt/app/bin/app".into()],
            ..Default::default()
        });
        assert!(m.matches(&info(1, "x", "", "/usr/bin/python3"), None));
        assert!(m.matches(&info(1, "x", "", "/opt/app/bin/app"), None));
        assert!(!m.matches(&info(1, "x", "", "/usr/bin/app"), None));
    }

    #[test]
    fn scan_reads_this_process() {
        let scanner = ProcScanner::default();
        scanner.need_cmdline.store(true, Ordering::Relaxed);
        let scan = scanner.scan().expect("scan /proc");
        let me = std::process::id() as i32;
        let mine = scan
            .procs
            .iter()
            .find(|p| p.pid == me)
            .expect("own process listed");
        assert!(mine.threads >= 1);
        assert!(mine.rss_pages > 0);
        assert!(mine.cmdline.as_deref().is_some_and(|c| !c.is_empty()));
        // A second call within the sharing window reuses the scan.
        assert!(Arc::ptr_eq(&scan, &scanner.scan().expect("scan")));
    }

    #[test]
    fn unreadable_entries_are_counted_never_fatal() {
        let root = tempfile::tempdir().expect("tempdir");
        let own = std::fs::read("/proc/self/stat").expect("own stat");
        let ok = root.path().join("100");
        std::fs::create_dir(&ok).expect("dir");
        std::fs::write(ok.join("stat"), own).expect("stat");
        // Exited between the listing and the read.
        std::fs::create_dir(root.path().join("200")).expect("dir");
        let garbage = root.path().join("300");
        std::fs::create_dir(&garbage).expect("dir");
        std::fs::write(garbage.join("stat"), "not a stat line").expect("stat");
        std::fs::create_dir(root.path().join("self")).expect("non-numeric entries are skipped");

        let scan = ProcScanner::new(root.path()).scan().expect("scan");
        assert_eq!(
            scan.procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
            vec![100]
        );
        assert_eq!(scan.errors.vanished, 1);
        assert_eq!(scan.errors.other, 1);
    }
}
