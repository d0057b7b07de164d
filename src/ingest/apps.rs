//! Apps' loops and the processes that report them. Each `{app, loop}` may be
//! reported by many processes (an app's workers), told apart by pid: each
//! has its own clock in the [`Watchdog`], its own stalls and its own
//! cumulative counters, which are added to the loop's series as deltas.
//! A new pid is a new process, never a restart of a sibling; a process that
//! goes silent without `bye` is counted as a restart by the watchdog.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::budget::{Budget, LOOP_SERIES, Taken};
use super::pools::Pools;
use super::protocol::{Heartbeat, Rejection, Stall, label_value};
use super::views::{
    LoopView, MAX_PROCESSES_IN_VIEW, ProcessView, SiteCount, StallRecord, push_capped,
};
use super::{Series, fold};
use crate::config::IngestConfig;
use crate::families::{FoldKind, OTHER};
use crate::metrics::unix_now;
use crate::watchdog::{LoopClock, LoopStatus, Schedule, Watchdog};

/// Frames kept per recorded stall.
const MAX_STACK_FRAMES: usize = 64;
/// The site of a stall the app's watchdog could not report.
const UNKNOWN_SITE: &str = "unknown";

/// Cumulative values last seen from one process, per folded label.
#[derive(Default)]
struct Baselines {
    tasks_created: u64,
    slow_callbacks: u64,
    failures: HashMap<(String, String), u64>,
    cancellations: HashMap<String, u64>,
}

/// What `now` has beyond `before`, raising `before`: a cumulative count
/// never takes back what it added.
fn advance(before: &mut u64, now: u64) -> u64 {
    let delta = now.saturating_sub(*before);
    *before = (*before).max(now);
    delta
}

struct Process {
    clock: LoopClock,
    worker: Option<String>,
    baselines: Baselines,
    last_counted_stall: Option<u64>,
    current: Option<StallRecord>,
    /// The sites of its latest ended stalls (their stacks are the loop's).
    recent_sites: VecDeque<String>,
}

impl Process {
    /// Ends the current stall, if any, into the recent ones.
    fn close_stall(&mut self, ended: &mut VecDeque<StallRecord>, cap: usize) {
        if let Some(record) = self.current.take() {
            self.file_ended(ended, record, cap);
        }
    }

    /// Files an ended stall: its site with the process, the record (with its
    /// stack) in the loop's recent stalls, so stacks kept are bounded per
    /// loop, not per process.
    fn file_ended(
        &mut self,
        ended: &mut VecDeque<StallRecord>,
        mut record: StallRecord,
        cap: usize,
    ) {
        record.ended = true;
        push_capped(&mut self.recent_sites, record.site.clone(), cap);
        push_capped(ended, record, cap);
    }

    fn view(&self, pid: u32) -> ProcessView {
        ProcessView {
            pid,
            worker: self.worker.clone(),
            state: self.clock.status().as_str(),
            stall_seconds: self.clock.stall().as_secs_f64(),
            silent_seconds: self.clock.silent_for().as_secs_f64(),
            current_stall: self.current.clone(),
            recent_sites: self.recent_sites.iter().rev().cloned().collect(),
        }
    }
}

/// One `{app, loop}`: its processes and the label values its series use.
#[derive(Default)]
struct Loop {
    processes: HashMap<u32, Process>,
    /// Label values in use, for the caps.
    tasks: HashSet<String>,
    exceptions: HashSet<String>,
    workers: HashSet<String>,
    /// Stalls per site.
    sites: HashMap<String, u64>,
    failure_series: HashSet<(String, String)>,
    cancellation_series: HashSet<String>,
    info: Option<[String; 3]>,
    /// Its processes' latest ended stalls with their stacks, oldest first.
    ended: VecDeque<StallRecord>,
    /// Series this loop's labels took from the budget.
    taken: Taken,
}

pub(super) struct App {
    loops: HashMap<String, Loop>,
    pub(super) pools: Pools,
    /// Series this app took from the budget.
    pub(super) taken: Taken,
    /// Once it sent a heartbeat it keeps its slot until it expires; an app
    /// that never did gives the slot back after the silence timeout.
    pub(super) live_once: bool,
    pub(super) last_message: Instant,
}

impl Default for App {
    fn default() -> Self {
        Self {
            loops: HashMap::new(),
            pools: Pools::default(),
            taken: Taken::default(),
            live_once: false,
            last_message: Instant::now(),
        }
    }
}

/// What a message may spend: the caps and the series budget.
pub(super) struct Limits<'a> {
    pub config: &'a IngestConfig,
    pub budget: &'a mut Budget,
}

/// The labels of a loop's series.
struct Labels<'a> {
    app: &'a str,
    name: &'a str,
}

impl Labels<'_> {
    fn pair(&self) -> [&str; 2] {
        [self.app, self.name]
    }
}

/// The message kinds that concern a loop's process.
pub(super) enum LoopMessage<'a> {
    Heartbeat(&'a Heartbeat),
    Stall(Stall),
    Bye,
}

/// Who sent a message: its loop and process.
pub(super) struct Sender<'a> {
    pub app: &'a str,
    pub loop_name: &'a str,
    pub pid: u32,
    pub worker: Option<&'a str>,
}

impl App {
    pub(super) fn is_empty(&self) -> bool {
        self.loops.is_empty() && self.pools.is_empty()
    }

    /// Pids of the processes that are live on any loop.
    pub(super) fn live_pids(&self) -> HashSet<u32> {
        self.loops
            .values()
            .flat_map(|l| l.processes.iter())
            .filter(|(_, p)| p.clock.status().is_live())
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub(super) fn apply(
        &mut self,
        series: &Series,
        watchdog: &Watchdog,
        from: &Sender<'_>,
        message: LoopMessage<'_>,
        limits: Limits<'_>,
    ) -> Result<(), Rejection> {
        let Limits { config, budget } = limits;
        if let LoopMessage::Bye = message {
            // A bye from a process we do not know changes nothing.
            if let Some(lp) = self.loops.get_mut(from.loop_name) {
                if let Some(p) = lp.processes.get_mut(&from.pid) {
                    p.clock.stop();
                    p.close_stall(&mut lp.ended, config.recent_stalls);
                }
            }
            self.pools
                .drop_reports(series, from.app, |pid, _| pid == from.pid);
            return Ok(());
        }
        if !self.loops.contains_key(from.loop_name)
            && (self.loops.len() >= config.max_loops_per_app
                || !budget.take_for_app(&mut self.taken, LOOP_SERIES))
        {
            return Err(Rejection::TooManyLoops);
        }
        let lp = self.loops.entry(from.loop_name.to_owned()).or_default();
        if !lp.processes.contains_key(&from.pid) {
            lp.make_room(watchdog, from, config)?;
            let worker = from.worker.map(|w| {
                let (mut w, mut folded) = fold(&mut lp.workers, w, config.max_workers_per_loop);
                // Two series per worker id.
                if !folded && !budget.take_for_loop(&mut self.taken, &mut lp.taken, 2) {
                    lp.workers.remove(&w);
                    (w, folded) = (OTHER.to_owned(), true);
                }
                if folded {
                    series.folded(FoldKind::Worker, 1.0);
                }
                w
            });
            // Until the first heartbeat says otherwise: the client defaults.
            let clock = watchdog.attach(
                from.app,
                from.loop_name,
                from.pid,
                worker.clone(),
                Schedule {
                    interval: Duration::from_millis(250),
                    threshold: Duration::from_millis(500),
                    silence_timeout: Some(config.silence_timeout),
                },
            );
            lp.processes.insert(
                from.pid,
                Process {
                    clock,
                    worker,
                    baselines: Baselines::default(),
                    last_counted_stall: None,
                    current: None,
                    recent_sites: VecDeque::new(),
                },
            );
        }
        let labels = Labels {
            app: from.app,
            name: from.loop_name,
        };
        let mut limits = LoopLimits {
            config,
            budget,
            app: &mut self.taken,
        };
        match message {
            LoopMessage::Heartbeat(hb) => {
                self.live_once = true;
                lp.heartbeat(series, &labels, from.pid, hb, &mut limits)
            }
            LoopMessage::Stall(stall) => lp.stall(series, &labels, from.pid, stall, &mut limits),
            LoopMessage::Bye => {}
        }
        Ok(())
    }

    /// Closes the stalls of processes the watchdog found gone silent.
    pub(super) fn went_down(&mut self, loop_name: &str, pid: u32, config: &IngestConfig) {
        if let Some(lp) = self.loops.get_mut(loop_name) {
            if let Some(p) = lp.processes.get_mut(&pid) {
                p.close_stall(&mut lp.ended, config.recent_stalls);
            }
        }
    }

    /// Forgets processes dead (down or stopped) for longer than the expiry,
    /// and loops left without processes, with all their series. Returns how
    /// many loops were removed.
    pub(super) fn expire(
        &mut self,
        series: &Series,
        watchdog: &Watchdog,
        budget: &mut Budget,
        app: &str,
        expiry: Duration,
    ) -> usize {
        let before = self.loops.len();
        let taken = &mut self.taken;
        self.loops.retain(|name, lp| {
            lp.processes.retain(|pid, p| {
                let keep = p.clock.status().is_live() || p.clock.silent_for() <= expiry;
                if !keep {
                    watchdog.detach(app, name, *pid);
                }
                keep
            });
            if lp.processes.is_empty() {
                lp.remove_series(series, watchdog, &Labels { app, name });
                budget.release_loop(taken, &lp.taken);
            }
            !lp.processes.is_empty()
        });
        before - self.loops.len()
    }

    /// Removes every series of the app (its slot is given back).
    pub(super) fn remove_series(&self, series: &Series, watchdog: &Watchdog, app: &str) {
        for (name, lp) in &self.loops {
            lp.remove_series(series, watchdog, &Labels { app, name });
        }
        self.pools.remove_series(series, app);
    }

    pub(super) fn views(&self, app: &str) -> Vec<LoopView> {
        self.loops
            .iter()
            .map(|(name, lp)| lp.view(app, name))
            .collect()
    }

    pub(super) fn sites(&self, app: &str) -> Vec<SiteCount> {
        self.loops
            .iter()
            .flat_map(|(name, lp)| {
                lp.sites.iter().map(move |(site, stalls)| SiteCount {
                    app_name: app.to_owned(),
                    loop_name: name.clone(),
                    site: site.clone(),
                    stalls: *stalls,
                })
            })
            .collect()
    }
}

impl Loop {
    /// Makes room for one more process: the cap counts every process known,
    /// and the one dead the longest gives way to a new one.
    fn make_room(
        &mut self,
        watchdog: &Watchdog,
        from: &Sender<'_>,
        config: &IngestConfig,
    ) -> Result<(), Rejection> {
        if self.processes.len() < config.max_processes_per_loop {
            return Ok(());
        }
        let oldest_dead = self
            .processes
            .iter()
            .filter(|(_, p)| !p.clock.status().is_live())
            .max_by_key(|(_, p)| p.clock.silent_for())
            .map(|(pid, _)| *pid);
        let pid = oldest_dead.ok_or(Rejection::TooManyProcesses)?;
        self.processes.remove(&pid);
        watchdog.detach(from.app, from.loop_name, pid);
        Ok(())
    }

    fn heartbeat(
        &mut self,
        series: &Series,
        labels: &Labels<'_>,
        pid: u32,
        hb: &Heartbeat,
        limits: &mut LoopLimits<'_>,
    ) {
        let config = limits.config;
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let pair = labels.pair();
        p.clock.set_schedule(hb.interval(), hb.threshold());
        p.clock.set_silence_timeout(config.silence_timeout);
        let stalled = p.clock.tick(hb.lag());
        p.clock.set_tasks_pending(hb.tasks_pending);
        series
            .tasks_created
            .with_label_values(&pair)
            .inc_by(advance(&mut p.baselines.tasks_created, hb.tasks_created) as f64);
        series
            .slow_callbacks
            .with_label_values(&pair)
            .inc_by(advance(&mut p.baselines.slow_callbacks, hb.slow_callbacks) as f64);

        // Sum cumulative counts per folded label, then add what is new.
        let mut failures: HashMap<(String, String), Folded> = HashMap::new();
        for f in &hb.failures {
            let (task, task_folded) = fold(&mut self.tasks, &f.task, config.max_tasks);
            let (exception, exception_folded) =
                fold(&mut self.exceptions, &f.exception, config.max_exceptions);
            let mut kind = match (task_folded, exception_folded) {
                (true, _) => Some(FoldKind::Task),
                (false, true) => Some(FoldKind::Exception),
                (false, false) => None,
            };
            let mut key = (task, exception);
            if !self.failure_series.contains(&key) && !limits.take(&mut self.taken, 1) {
                key = (OTHER.to_owned(), OTHER.to_owned());
                kind = kind.or(Some(FoldKind::Task));
            }
            // Born here: a later heartbeat finds it without paying again.
            self.failure_series.insert(key.clone());
            failures.entry(key).or_default().add(f.count, kind);
        }
        add_new(&mut p.baselines.failures, failures, series, |key, delta| {
            series
                .task_failures
                .with_label_values(&[pair[0], pair[1], &key.0, &key.1])
                .inc_by(delta);
        });
        let mut cancellations: HashMap<String, Folded> = HashMap::new();
        for c in &hb.cancellations {
            let (mut task, mut folded) = fold(&mut self.tasks, &c.task, config.max_tasks);
            if !self.cancellation_series.contains(&task) && !limits.take(&mut self.taken, 1) {
                (task, folded) = (OTHER.to_owned(), true);
            }
            self.cancellation_series.insert(task.clone());
            cancellations
                .entry(task)
                .or_default()
                .add(c.count, folded.then_some(FoldKind::Task));
        }
        add_new(
            &mut p.baselines.cancellations,
            cancellations,
            series,
            |task, delta| {
                series
                    .task_cancellations
                    .with_label_values(&[pair[0], pair[1], task])
                    .inc_by(delta);
            },
        );

        if let Some(info) = &hb.info {
            let values = [
                label_value(&info.client_version),
                label_value(&info.runtime),
                label_value(&info.language_version),
            ];
            if self.info.as_ref() != Some(&values) {
                if let Some(old) = self.info.take() {
                    let _ = series
                        .loop_info
                        .remove_label_values(&[pair[0], pair[1], &old[0], &old[1], &old[2]]);
                }
                series
                    .loop_info
                    .with_label_values(&[pair[0], pair[1], &values[0], &values[1], &values[2]])
                    .set(1.0);
                self.info = Some(values);
            }
        }

        // The heartbeat after a stall closes it; without a stall message the
        // app's watchdog could not see the site (C code holding the GIL).
        if stalled || p.current.is_some() {
            let record = match p.current.take() {
                Some(mut s) => {
                    s.blocked_seconds = s.blocked_seconds.max(hb.lag_s);
                    s.ended = true;
                    s
                }
                None => {
                    *self.sites.entry(UNKNOWN_SITE.to_owned()).or_default() += 1;
                    series
                        .blocking_calls
                        .with_label_values(&[pair[0], pair[1], UNKNOWN_SITE])
                        .inc();
                    StallRecord {
                        pid,
                        stall_id: 0,
                        started: unix_now() - hb.lag_s,
                        blocked_seconds: hb.lag_s,
                        site: UNKNOWN_SITE.to_owned(),
                        stack: Vec::new(),
                        ended: true,
                    }
                }
            };
            p.file_ended(&mut self.ended, record, config.recent_stalls);
        }
    }

    fn stall(
        &mut self,
        series: &Series,
        labels: &Labels<'_>,
        pid: u32,
        stall: Stall,
        limits: &mut LoopLimits<'_>,
    ) {
        let config = limits.config;
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        p.clock.seen();
        if p.last_counted_stall == Some(stall.stall_id) {
            if let Some(current) = &mut p.current {
                current.blocked_seconds = current.blocked_seconds.max(stall.blocked_s);
                // A stall that was refused a stack keeps none.
                if !current.stack.is_empty() {
                    current.stack = bounded_stack(stall.stack);
                }
            }
            return;
        }
        p.last_counted_stall = Some(stall.stall_id);
        let site = label_value(&stall.site);
        let counted_site = if !self.sites.contains_key(&site)
            && (self.sites.len() >= config.max_sites || !limits.take(&mut self.taken, 1))
        {
            series.folded(FoldKind::Site, 1.0);
            OTHER.to_owned()
        } else {
            site.clone()
        };
        *self.sites.entry(counted_site.clone()).or_default() += 1;
        series
            .blocking_calls
            .with_label_values(&[labels.app, labels.name, &counted_site])
            .inc();
        p.close_stall(&mut self.ended, config.recent_stalls);
        // Stacks of stalls in progress: a few per loop, however many of its
        // processes are blocked at once (the sites are counted all the same).
        let stacks_in_progress = self
            .processes
            .values()
            .filter(|q| q.current.as_ref().is_some_and(|c| !c.stack.is_empty()))
            .count();
        let stack = if stacks_in_progress < MAX_STACKS_IN_PROGRESS {
            bounded_stack(stall.stack)
        } else {
            Vec::new()
        };
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        p.current = Some(StallRecord {
            pid,
            stall_id: stall.stall_id,
            started: unix_now() - stall.blocked_s,
            blocked_seconds: stall.blocked_s,
            site,
            stack,
            ended: false,
        });
    }

    fn remove_series(&self, series: &Series, watchdog: &Watchdog, labels: &Labels<'_>) {
        let [app, name] = labels.pair();
        watchdog.remove(app, name);
        let _ = series.tasks_created.remove_label_values(&[app, name]);
        let _ = series.slow_callbacks.remove_label_values(&[app, name]);
        for (task, exception) in &self.failure_series {
            let _ = series
                .task_failures
                .remove_label_values(&[app, name, task, exception]);
        }
        for task in &self.cancellation_series {
            let _ = series
                .task_cancellations
                .remove_label_values(&[app, name, task]);
        }
        for site in self.sites.keys() {
            let _ = series
                .blocking_calls
                .remove_label_values(&[app, name, site]);
        }
        if let Some(info) = &self.info {
            let _ = series
                .loop_info
                .remove_label_values(&[app, name, &info[0], &info[1], &info[2]]);
        }
    }

    fn view(&self, app: &str, name: &str) -> LoopView {
        let mut processes: Vec<(ProcessView, LoopStatus)> = self
            .processes
            .iter()
            .map(|(pid, p)| (p.view(*pid), p.clock.status()))
            .collect();
        // The blocked processes first, longest stall first, then the latest heard from.
        processes.sort_by(|(a, sa), (b, sb)| {
            (*sb == LoopStatus::Stalled)
                .cmp(&(*sa == LoopStatus::Stalled))
                .then(b.stall_seconds.total_cmp(&a.stall_seconds))
                .then(a.silent_seconds.total_cmp(&b.silent_seconds))
                .then(a.pid.cmp(&b.pid))
        });
        let recent: Vec<StallRecord> = self.ended.iter().rev().cloned().collect();
        let worst = processes.first().map(|(v, _)| v);
        let info = self.info.clone();
        let processes_total = processes.len();
        LoopView {
            app_name: app.to_owned(),
            loop_name: name.to_owned(),
            pid: worst.map_or(0, |v| v.pid),
            state: LoopStatus::of_loop(processes.iter().map(|(_, s)| *s)).as_str(),
            stall_seconds: worst.map_or(0.0, |v| v.stall_seconds),
            silent_seconds: processes
                .iter()
                .map(|(v, _)| v.silent_seconds)
                .reduce(f64::min)
                .unwrap_or_default(),
            client_version: info.as_ref().map(|i| i[0].clone()),
            runtime: info.as_ref().map(|i| i[1].clone()),
            language_version: info.map(|[_, _, v]| v),
            current_stall: worst.and_then(|v| v.current_stall.clone()),
            recent_stalls: recent,
            processes: processes
                .into_iter()
                .take(MAX_PROCESSES_IN_VIEW)
                .map(|(v, _)| v)
                .collect(),
            processes_total,
        }
    }
}

/// Stalls in progress whose stacks a loop keeps at once.
const MAX_STACKS_IN_PROGRESS: usize = 8;

/// The caps and budget while a message of one loop is applied.
struct LoopLimits<'a> {
    config: &'a IngestConfig,
    budget: &'a mut Budget,
    /// The app's share.
    app: &'a mut Taken,
}

impl LoopLimits<'_> {
    /// Takes `n` series for the loop whose share is `lp`.
    fn take(&mut self, lp: &mut Taken, n: usize) -> bool {
        self.budget.take_for_loop(self.app, lp, n)
    }
}

/// A cumulative count summed over the raw labels folded into one, and
/// whether (and by which cap) any of them was folded.
#[derive(Default)]
struct Folded {
    total: u64,
    fold: Option<FoldKind>,
}

impl Folded {
    fn add(&mut self, count: u64, fold: Option<FoldKind>) {
        self.total = self.total.saturating_add(count);
        self.fold = self.fold.or(fold);
    }
}

/// Adds to each label's counter what its cumulative total gained since the
/// last heartbeat, and counts the gain of folded labels once.
fn add_new<K: Clone + Eq + Hash>(
    baselines: &mut HashMap<K, u64>,
    totals: HashMap<K, Folded>,
    series: &Series,
    mut inc: impl FnMut(&K, f64),
) {
    for (key, folded) in totals {
        let delta = advance(baselines.entry(key.clone()).or_default(), folded.total);
        if let Some(kind) = folded.fold {
            series.folded(kind, delta as f64);
        }
        inc(&key, delta as f64);
    }
}

fn bounded_stack(stack: Vec<String>) -> Vec<String> {
    let skip = stack.len().saturating_sub(MAX_STACK_FRAMES);
    stack
        .into_iter()
        .skip(skip)
        .map(|f| label_value(&f))
        .collect()
}
