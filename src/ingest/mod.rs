//! The receiving side of the client protocol (docs/protocol.md): apps'
//! heartbeats, stalls, pools, rate limits and byes, over UDP ([`udp`]) and
//! `POST /api/v1/events`, through one parser ([`protocol`]) into one state.
//!
//! Everything an app sends becomes a bounded label: apps and loops beyond
//! their caps are rejected, tasks, exceptions, sites, pools and rate limits
//! beyond theirs are folded into `other`. Counters arrive cumulative per
//! process; they are added as deltas, so a restart (a new pid) continues them.

pub mod protocol;
pub mod udp;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{CounterVec, GaugeVec, IntCounterVec, Opts, Registry};
use serde::Serialize;

use crate::config::IngestConfig;
use crate::loops::{LoopHandle, LoopStatus, Loops};
use crate::metrics::unix_now;
use protocol::{Body, Heartbeat, Message, Rejection, Stall, ThrottleKind, label_value};

/// The label value that stands for everything beyond a cap.
pub const OTHER: &str = "other";
/// Frames kept per recorded stall.
const MAX_STACK_FRAMES: usize = 64;

#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Udp,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Http => "http",
        }
    }
}

struct IngestMetrics {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    folded: IntCounterVec,
    tasks_created: CounterVec,
    task_failures: CounterVec,
    task_cancellations: CounterVec,
    slow_callbacks: CounterVec,
    blocking_calls: CounterVec,
    loop_info: GaugeVec,
    pool: [GaugeVec; 4],
    ratelimit: [GaugeVec; 4],
    throttled: CounterVec,
}

const FOLD_KINDS: [&str; 5] = ["task", "exception", "site", "pool", "ratelimit"];
/// The pool families, shared with loopwatch's own PostgreSQL pools.
pub const POOL_FIELDS: [(&str, &str); 4] = [
    (
        "loopwatch_pool_size",
        "Connections open in the pool, as last reported.",
    ),
    (
        "loopwatch_pool_max",
        "Maximum connections of the pool, as last reported.",
    ),
    (
        "loopwatch_pool_in_use",
        "Connections of the pool checked out, as last reported.",
    ),
    (
        "loopwatch_pool_waiting",
        "Callers waiting for a connection of the pool, as last reported.",
    ),
];
/// The rate-limit families, shared with the `ratelimits` collector.
const RATELIMIT_FIELDS: [(&str, &str); 4] = [
    crate::collector::ratelimits::LIMIT,
    crate::collector::ratelimits::REMAINING,
    crate::collector::ratelimits::RESET,
    crate::collector::ratelimits::OBSERVED,
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

impl IngestMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                CounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let int_counter = |name: &str, help: &str, label: &str| {
            reg(
                registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let messages = int_counter(
            "loopwatch_ingest_messages_total",
            "Messages received from apps, accepted or not, by transport.",
            "transport",
        );
        let rejected = int_counter(
            "loopwatch_ingest_rejected_total",
            "Messages from apps rejected, by reason.",
            "reason",
        );
        let folded = int_counter(
            "loopwatch_ingest_folded_total",
            "Events whose label value exceeded a cap and was folded into \"other\", by kind of label.",
            "kind",
        );
        for t in [Transport::Udp, Transport::Http] {
            messages.with_label_values(&[t.as_str()]);
        }
        for r in Rejection::ALL {
            rejected.with_label_values(&[r.as_str()]);
        }
        for k in FOLD_KINDS {
            folded.with_label_values(&[k]);
        }
        let lp = &["app_name", "loop"];
        Self {
            messages,
            rejected,
            folded,
            tasks_created: counter(
                "loopwatch_tasks_created_total",
                "Tasks created on the loop.",
                lp,
            ),
            task_failures: counter(
                "loopwatch_task_failures_total",
                "Tasks that ended with an exception, by task name and exception type (task \"callback\": a callback that raised).",
                &["app_name", "loop", "task", "exception"],
            ),
            task_cancellations: counter(
                "loopwatch_task_cancellations_total",
                "Tasks cancelled, by task name.",
                &["app_name", "loop", "task"],
            ),
            slow_callbacks: counter(
                "loopwatch_loop_slow_callbacks_total",
                "Heartbeats delayed more than 100 ms: a callback ran at least that long.",
                lp,
            ),
            blocking_calls: counter(
                "loopwatch_loop_blocking_calls_total",
                "Stalls by the code site that blocked the loop (\"unknown\" when the app's watchdog could not report it).",
                &["app_name", "loop", "site"],
            ),
            loop_info: gauge(
                "loopwatch_loop_info",
                "Metadata of the loop's reporter, value 1.",
                &[
                    "app_name",
                    "loop",
                    "client_version",
                    "runtime",
                    "language_version",
                ],
            ),
            pool: POOL_FIELDS.map(|(name, help)| gauge(name, help, &["app_name", "pool"])),
            ratelimit: RATELIMIT_FIELDS
                .map(|(name, help)| gauge(name, help, &["api", "resource", "token"])),
            throttled: counter(
                crate::collector::ratelimits::THROTTLED.0,
                crate::collector::ratelimits::THROTTLED.1,
                &["api", "resource", "token", "kind"],
            ),
        }
    }
}

/// One stall as `/api/v1/loops` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StallRecord {
    /// The app's id for the stall; 0 when only loopwatch's watchdog saw it.
    pub stall_id: u64,
    /// Unix time the stall started.
    pub started: f64,
    pub blocked_seconds: f64,
    pub site: String,
    pub stack: Vec<String>,
    pub ended: bool,
}

/// Cumulative values last seen from the current process, per folded label.
#[derive(Default)]
struct Baselines {
    tasks_created: u64,
    slow_callbacks: u64,
    failures: HashMap<(String, String), u64>,
    cancellations: HashMap<String, u64>,
}

/// Adds to `counter` what `now` has beyond `before`, and raises `before`.
fn advance(before: &mut u64, now: u64) -> f64 {
    let delta = now.saturating_sub(*before);
    *before = (*before).max(now);
    delta as f64
}

struct LoopEntry {
    handle: LoopHandle,
    pid: u32,
    baselines: Baselines,
    /// Label values in use, for caps and for removal at expiry.
    tasks: HashMap<String, ()>,
    exceptions: HashMap<String, ()>,
    /// Blocking calls per site.
    sites: HashMap<String, u64>,
    failure_series: Vec<(String, String)>,
    cancellation_series: Vec<String>,
    last_counted_stall: Option<u64>,
    current: Option<StallRecord>,
    recent: VecDeque<StallRecord>,
    info: Option<[String; 3]>,
}

struct AppEntry {
    loops: HashMap<String, LoopEntry>,
    /// Pool label values seen, for the cap.
    pools: HashMap<String, ()>,
    /// Each process's latest report per pool: the exported values are the
    /// sums, so several processes of one app add up instead of overwriting.
    pool_reports: HashMap<String, HashMap<(u32, String), PoolReport>>,
}

/// Reports kept per pool label at most: a pool folded into `other` keeps one
/// per process and original name, and a client must not grow it without end.
const MAX_REPORTS_PER_POOL: usize = 1000;

struct PoolReport {
    values: [u64; 4],
    seen: Instant,
}

impl AppEntry {
    /// Sets the pool's gauges to the sums over the processes that report it.
    fn publish_pool(&self, metrics: &IngestMetrics, app_name: &str, pool: &str) {
        let mut sums = [0u64; 4];
        for report in self
            .pool_reports
            .get(pool)
            .into_iter()
            .flat_map(|r| r.values())
        {
            for (sum, v) in sums.iter_mut().zip(report.values) {
                *sum = sum.saturating_add(v);
            }
        }
        for (gauge, sum) in metrics.pool.iter().zip(sums) {
            gauge.with_label_values(&[app_name, pool]).set(sum as f64);
        }
    }

    /// Forgets the reports of processes for which `gone(pid, report)` holds.
    fn drop_pool_reports(
        &mut self,
        metrics: &IngestMetrics,
        app_name: &str,
        mut gone: impl FnMut(u32, &PoolReport) -> bool,
    ) {
        let mut changed = Vec::new();
        for (pool, reports) in &mut self.pool_reports {
            let before = reports.len();
            reports.retain(|(pid, _), r| !gone(*pid, r));
            if reports.len() != before {
                changed.push(pool.clone());
            }
        }
        for pool in changed {
            self.publish_pool(metrics, app_name, &pool);
        }
    }
}

struct State {
    config: IngestConfig,
    apps: HashMap<String, AppEntry>,
    /// `{api, resource, token}` reported by apps, and when last.
    ratelimits: HashMap<[String; 3], Instant>,
}

/// How often a rejection reason is logged at most.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// Apps' loops and reports.
pub struct Ingest {
    loops: Arc<Loops>,
    metrics: IngestMetrics,
    state: Mutex<State>,
    rejections_logged: Mutex<HashMap<RejectionKey, RejectionLog>>,
}

/// `(reason, transport)`.
type RejectionKey = (&'static str, &'static str);
/// When last logged, and rejections since.
type RejectionLog = (Option<Instant>, u64);

/// Picks the label for `value`: itself while under `cap` distinct values, else `other`.
fn fold(known: &mut HashMap<String, ()>, value: &str, cap: usize) -> (String, bool) {
    let value = label_value(value);
    if known.contains_key(&value) {
        return (value, false);
    }
    if known.len() < cap {
        known.insert(value.clone(), ());
        return (value, false);
    }
    known.insert(OTHER.to_owned(), ());
    (OTHER.to_owned(), true)
}

/// A loop as `GET /api/v1/loops` shows it.
#[derive(Debug, Serialize)]
pub struct LoopView {
    pub app_name: String,
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub pid: u32,
    pub state: &'static str,
    pub stall_seconds: f64,
    pub silent_seconds: f64,
    pub client_version: Option<String>,
    pub runtime: Option<String>,
    pub language_version: Option<String>,
    pub current_stall: Option<StallRecord>,
    pub recent_stalls: Vec<StallRecord>,
}

/// A blocking site and how often it stalled a loop.
#[derive(Debug, Serialize)]
pub struct SiteCount {
    pub app_name: String,
    #[serde(rename = "loop")]
    pub loop_name: String,
    pub site: String,
    pub stalls: u64,
}

impl Ingest {
    pub fn register(registry: &Registry, loops: Arc<Loops>, config: IngestConfig) -> Self {
        Self {
            loops,
            metrics: IngestMetrics::register(registry),
            state: Mutex::new(State {
                config,
                apps: HashMap::new(),
                ratelimits: HashMap::new(),
            }),
            rejections_logged: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New caps and timeouts from a reloaded config; tracked apps stay.
    pub fn set_config(&self, config: IngestConfig) {
        self.state().config = config;
    }

    /// Handles one raw message; the error is what it was rejected for.
    pub fn handle(&self, raw: &[u8], transport: Transport) -> Result<(), Rejection> {
        self.metrics
            .messages
            .with_label_values(&[transport.as_str()])
            .inc();
        let result = protocol::parse(raw).and_then(|m| self.apply(m));
        if let Err(reason) = result {
            self.metrics
                .rejected
                .with_label_values(&[reason.as_str()])
                .inc();
            self.log_rejection(reason, transport, raw);
        }
        result
    }

    /// One warning per reason and transport every [`REJECTION_LOG_EVERY`],
    /// naming the app of the message that triggered it (when it names one)
    /// and how many were rejected since: a flood of garbage costs a line.
    fn log_rejection(&self, reason: Rejection, transport: Transport, raw: &[u8]) {
        let dropped = {
            let mut logged = self
                .rejections_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let entry = logged
                .entry((reason.as_str(), transport.as_str()))
                .or_insert((None, 0));
            entry.1 += 1;
            if entry
                .0
                .is_some_and(|at: Instant| at.elapsed() < REJECTION_LOG_EVERY)
            {
                return;
            }
            entry.0 = Some(Instant::now());
            std::mem::take(&mut entry.1)
        };
        let app = match reason {
            Rejection::Oversize | Rejection::NotJson => None,
            _ => serde_json::from_slice::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| v.get("app")?.as_str().map(label_value)),
        };
        tracing::warn!(
            reason = reason.as_str(),
            transport = transport.as_str(),
            app = app.as_deref().unwrap_or("unknown"),
            rejected = dropped,
            "Rejected ingest messages"
        );
    }

    fn folded(&self, kind: &str, n: f64) {
        if n > 0.0 {
            self.metrics
                .folded
                .with_label_values(&[kind])
                .inc_by(n as u64);
        }
    }

    fn apply(&self, m: Message) -> Result<(), Rejection> {
        let mut guard = self.state();
        let state = &mut *guard;
        let config = &state.config;
        if let Body::RateLimit(rl) = &m.body {
            // Rate limits belong to the API and token, not to the loop that saw them.
            let token = rl.token.as_deref().unwrap_or(&m.app);
            let key = [rl.api.clone(), rl.resource.clone(), token.to_owned()];
            let key = if state.ratelimits.contains_key(&key)
                || state.ratelimits.len() < config.max_ratelimits
            {
                key
            } else {
                self.folded("ratelimit", 1.0);
                [OTHER.to_owned(), OTHER.to_owned(), OTHER.to_owned()]
            };
            let labels = [key[0].as_str(), key[1].as_str(), key[2].as_str()];
            if !state.ratelimits.contains_key(&key) {
                // Both counters from 0, so rate() sees the first refusal.
                let [api, resource, token] = labels;
                for kind in [ThrottleKind::Primary, ThrottleKind::Secondary] {
                    self.metrics.throttled.with_label_values(&[
                        api,
                        resource,
                        token,
                        kind.as_str(),
                    ]);
                }
            }
            if let Some((limit, remaining, reset)) = rl.budget() {
                let [l, r, t, observed] = &self.metrics.ratelimit;
                l.with_label_values(&labels).set(limit as f64);
                r.with_label_values(&labels).set(remaining as f64);
                t.with_label_values(&labels).set(reset);
                observed.with_label_values(&labels).set(unix_now());
            }
            if let Some(kind) = rl.throttled {
                let [api, resource, token] = labels;
                self.metrics
                    .throttled
                    .with_label_values(&[api, resource, token, kind.as_str()])
                    .inc();
            }
            state.ratelimits.insert(key, Instant::now());
            return Ok(());
        }

        if !state.apps.contains_key(&m.app) && state.apps.len() >= config.max_apps {
            return Err(Rejection::TooManyApps);
        }
        let app = state.apps.entry(m.app.clone()).or_insert_with(|| AppEntry {
            loops: HashMap::new(),
            pools: HashMap::new(),
            pool_reports: HashMap::new(),
        });
        if let Body::Pool(p) = &m.body {
            let (name, folded) = fold(&mut app.pools, &p.pool, config.max_pools);
            self.folded("pool", if folded { 1.0 } else { 0.0 });
            let reports = app.pool_reports.entry(name.clone()).or_default();
            let key = (m.pid, p.pool.clone());
            if reports.contains_key(&key) || reports.len() < MAX_REPORTS_PER_POOL {
                let report = PoolReport {
                    values: [p.size, p.max, p.in_use, p.waiting],
                    seen: Instant::now(),
                };
                reports.insert(key, report);
            }
            app.publish_pool(&self.metrics, &m.app, &name);
            return Ok(());
        }
        if !app.loops.contains_key(&m.loop_name) && app.loops.len() >= config.max_loops_per_app {
            return Err(Rejection::TooManyLoops);
        }
        let entry = app
            .loops
            .entry(m.loop_name.clone())
            .or_insert_with(|| LoopEntry {
                // Until the first heartbeat says otherwise: the client defaults.
                handle: self.loops.attach(
                    &m.app,
                    &m.loop_name,
                    Duration::from_millis(250),
                    Duration::from_millis(500),
                    Some(config.silence_timeout),
                ),
                pid: m.pid,
                baselines: Baselines::default(),
                tasks: HashMap::new(),
                exceptions: HashMap::new(),
                sites: HashMap::new(),
                failure_series: Vec::new(),
                cancellation_series: Vec::new(),
                last_counted_stall: None,
                current: None,
                recent: VecDeque::new(),
                info: None,
            });
        // A process that restarted or said bye no longer holds its pools.
        let mut pools_gone_of = None;
        if entry.pid != m.pid {
            // A restart: the new process counts from zero; our counters go on.
            pools_gone_of = Some(entry.pid);
            entry.pid = m.pid;
            entry.baselines = Baselines::default();
            entry.last_counted_stall = None;
        }
        let labels = [m.app.as_str(), m.loop_name.as_str()];
        match m.body {
            Body::Heartbeat(hb) => self.heartbeat(entry, &labels, &hb, config),
            Body::Stall(stall) => self.stall(entry, &labels, stall, config),
            Body::Bye => {
                entry.handle.stop();
                if let Some(mut s) = entry.current.take() {
                    s.ended = true;
                    push_recent(&mut entry.recent, s, config.recent_stalls);
                }
                pools_gone_of = Some(m.pid);
            }
            Body::Pool(_) | Body::RateLimit(_) => {}
        }
        if let Some(gone) = pools_gone_of {
            app.drop_pool_reports(&self.metrics, &m.app, |pid, _| pid == gone);
        }
        Ok(())
    }

    fn heartbeat(
        &self,
        e: &mut LoopEntry,
        labels: &[&str; 2],
        hb: &Heartbeat,
        config: &IngestConfig,
    ) {
        let m = &self.metrics;
        e.handle.set_schedule(hb.interval(), hb.threshold());
        let stalled = e.handle.tick(hb.lag());
        e.handle
            .set_tasks_pending(hb.tasks_pending.min(i64::MAX as u64) as i64);
        m.tasks_created
            .with_label_values(labels)
            .inc_by(advance(&mut e.baselines.tasks_created, hb.tasks_created));
        m.slow_callbacks
            .with_label_values(labels)
            .inc_by(advance(&mut e.baselines.slow_callbacks, hb.slow_callbacks));

        // Sum cumulative counts per folded label, then add what is new.
        let mut failures: HashMap<(String, String), u64> = HashMap::new();
        let mut folded_keys = Vec::new();
        for f in &hb.failures {
            let (task, t_folded) = fold(&mut e.tasks, &f.task, config.max_tasks);
            let (exception, x_folded) =
                fold(&mut e.exceptions, &f.exception, config.max_exceptions);
            let key = (task, exception);
            if t_folded || x_folded {
                folded_keys.push((key.clone(), if t_folded { "task" } else { "exception" }));
            }
            *failures.entry(key).or_default() += f.count;
        }
        for (key, total) in failures {
            let before = e.baselines.failures.entry(key.clone()).or_default();
            let delta = advance(before, total);
            if delta > 0.0 {
                if let Some((_, kind)) = folded_keys.iter().find(|(k, _)| *k == key) {
                    self.folded(kind, delta);
                }
            }
            if !e.failure_series.contains(&key) {
                e.failure_series.push(key.clone());
            }
            m.task_failures
                .with_label_values(&[labels[0], labels[1], &key.0, &key.1])
                .inc_by(delta);
        }
        let mut cancellations: HashMap<String, u64> = HashMap::new();
        for c in &hb.cancellations {
            let (task, folded) = fold(&mut e.tasks, &c.task, config.max_tasks);
            if folded {
                self.folded("task", c.count as f64);
            }
            *cancellations.entry(task).or_default() += c.count;
        }
        for (task, total) in cancellations {
            let delta = advance(
                e.baselines.cancellations.entry(task.clone()).or_default(),
                total,
            );
            if !e.cancellation_series.contains(&task) {
                e.cancellation_series.push(task.clone());
            }
            m.task_cancellations
                .with_label_values(&[labels[0], labels[1], &task])
                .inc_by(delta);
        }

        if let Some(info) = &hb.info {
            let values = [
                label_value(&info.client_version),
                label_value(&info.runtime),
                label_value(&info.language_version),
            ];
            if e.info.as_ref() != Some(&values) {
                if let Some(old) = e.info.take() {
                    let _ = m
                        .loop_info
                        .remove_label_values(&[labels[0], labels[1], &old[0], &old[1], &old[2]]);
                }
                m.loop_info
                    .with_label_values(&[labels[0], labels[1], &values[0], &values[1], &values[2]])
                    .set(1.0);
                e.info = Some(values);
            }
        }

        // The heartbeat after a stall closes it; without a stall message the
        // app's watchdog could not see the site (C code holding the GIL).
        if stalled || e.current.is_some() {
            let record = match e.current.take() {
                Some(mut s) => {
                    s.blocked_seconds = s.blocked_seconds.max(hb.lag_s);
                    s.ended = true;
                    s
                }
                None => {
                    *e.sites.entry("unknown".to_owned()).or_default() += 1;
                    m.blocking_calls
                        .with_label_values(&[labels[0], labels[1], "unknown"])
                        .inc();
                    StallRecord {
                        stall_id: 0,
                        started: unix_now() - hb.lag_s,
                        blocked_seconds: hb.lag_s,
                        site: "unknown".to_owned(),
                        stack: Vec::new(),
                        ended: true,
                    }
                }
            };
            push_recent(&mut e.recent, record, config.recent_stalls);
        }
    }

    fn stall(&self, e: &mut LoopEntry, labels: &[&str; 2], stall: Stall, config: &IngestConfig) {
        e.handle.seen();
        if e.last_counted_stall == Some(stall.stall_id) {
            if let Some(current) = &mut e.current {
                current.blocked_seconds = current.blocked_seconds.max(stall.blocked_s);
                current.stack = bounded_stack(stall.stack);
            }
            return;
        }
        e.last_counted_stall = Some(stall.stall_id);
        let site = label_value(&stall.site);
        let folded = !e.sites.contains_key(&site) && e.sites.len() >= config.max_sites;
        let site = if folded {
            self.folded("site", 1.0);
            OTHER.to_owned()
        } else {
            site
        };
        *e.sites.entry(site.clone()).or_default() += 1;
        self.metrics
            .blocking_calls
            .with_label_values(&[labels[0], labels[1], &site])
            .inc();
        if let Some(mut previous) = e.current.take() {
            previous.ended = true;
            push_recent(&mut e.recent, previous, config.recent_stalls);
        }
        e.current = Some(StallRecord {
            stall_id: stall.stall_id,
            started: unix_now() - stall.blocked_s,
            blocked_seconds: stall.blocked_s,
            site: label_value(&stall.site),
            stack: bounded_stack(stall.stack),
            ended: false,
        });
    }

    /// Removes loops that have been down or stopped for longer than the
    /// expiry, with all their series; returns how many.
    pub fn expire(&self) -> usize {
        let mut guard = self.state();
        let state = &mut *guard;
        let expiry = state.config.loop_expiry;
        let m = &self.metrics;
        let mut removed = 0;
        for (app_name, app) in state.apps.iter_mut() {
            app.loops.retain(|loop_name, e| {
                let status = e.handle.status();
                let gone = matches!(status, LoopStatus::Down | LoopStatus::Stopped)
                    && e.handle.silent_for() > expiry;
                if gone {
                    let l = [app_name.as_str(), loop_name.as_str()];
                    self.loops.remove(l[0], l[1]);
                    let _ = m.tasks_created.remove_label_values(&l);
                    let _ = m.slow_callbacks.remove_label_values(&l);
                    for (task, exception) in &e.failure_series {
                        let _ = m
                            .task_failures
                            .remove_label_values(&[l[0], l[1], task, exception]);
                    }
                    for task in &e.cancellation_series {
                        let _ = m
                            .task_cancellations
                            .remove_label_values(&[l[0], l[1], task]);
                    }
                    for site in e.sites.keys() {
                        let _ = m.blocking_calls.remove_label_values(&[l[0], l[1], site]);
                    }
                    if let Some(info) = &e.info {
                        let _ = m
                            .loop_info
                            .remove_label_values(&[l[0], l[1], &info[0], &info[1], &info[2]]);
                    }
                    removed += 1;
                }
                !gone
            });
            // Pools of processes whose loops went silent, unless the
            // process still reports them (a client that sends pools only).
            let live: Vec<u32> = app
                .loops
                .values()
                .filter(|e| matches!(e.handle.status(), LoopStatus::Running | LoopStatus::Stalled))
                .map(|e| e.pid)
                .collect();
            let silence = state.config.silence_timeout;
            app.drop_pool_reports(m, app_name, |pid, r| {
                !live.contains(&pid) && r.seen.elapsed() > silence
            });
            if app.loops.is_empty() {
                for pool in app.pools.keys() {
                    for gauge in &m.pool {
                        let _ = gauge.remove_label_values(&[app_name, pool]);
                    }
                }
            }
        }
        state.apps.retain(|_, app| !app.loops.is_empty());
        state.ratelimits.retain(|[api, resource, token], seen| {
            let keep = seen.elapsed() <= expiry;
            if !keep {
                let labels = [api.as_str(), resource.as_str(), token.as_str()];
                for gauge in &m.ratelimit {
                    let _ = gauge.remove_label_values(&labels);
                }
                for kind in [ThrottleKind::Primary, ThrottleKind::Secondary] {
                    let _ = m
                        .throttled
                        .remove_label_values(&[api, resource, token, kind.as_str()]);
                }
            }
            keep
        });
        removed
    }

    /// Every app loop with its state and recent stalls.
    pub fn loops(&self) -> Vec<LoopView> {
        let state = self.state();
        let mut views: Vec<LoopView> = state
            .apps
            .iter()
            .flat_map(|(app_name, app)| {
                app.loops.iter().map(move |(loop_name, e)| {
                    let info = e.info.clone();
                    LoopView {
                        app_name: app_name.clone(),
                        loop_name: loop_name.clone(),
                        pid: e.pid,
                        state: e.handle.status().as_str(),
                        stall_seconds: e.handle.stall().as_secs_f64(),
                        silent_seconds: e.handle.silent_for().as_secs_f64(),
                        client_version: info.as_ref().map(|i| i[0].clone()),
                        runtime: info.as_ref().map(|i| i[1].clone()),
                        language_version: info.map(|[_, _, v]| v),
                        current_stall: e.current.clone(),
                        recent_stalls: e.recent.iter().rev().cloned().collect(),
                    }
                })
            })
            .collect();
        views.sort_by(|a, b| (&a.app_name, &a.loop_name).cmp(&(&b.app_name, &b.loop_name)));
        views
    }

    /// The sites that stalled loops most often.
    pub fn top_sites(&self, n: usize) -> Vec<SiteCount> {
        let state = self.state();
        let mut all: Vec<SiteCount> = state
            .apps
            .iter()
            .flat_map(|(app_name, app)| {
                app.loops.iter().flat_map(move |(loop_name, e)| {
                    e.sites.iter().map(move |(site, stalls)| SiteCount {
                        app_name: app_name.clone(),
                        loop_name: loop_name.clone(),
                        site: site.clone(),
                        stalls: *stalls,
                    })
                })
            })
            .collect();
        all.sort_by(|a, b| b.stalls.cmp(&a.stalls).then_with(|| a.site.cmp(&b.site)));
        all.truncate(n);
        all
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

fn push_recent(recent: &mut VecDeque<StallRecord>, record: StallRecord, cap: usize) {
    recent.push_back(record);
    while recent.len() > cap {
        recent.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode;

    fn setup(config: IngestConfig) -> (Registry, Ingest) {
        let registry = Registry::new();
        let loops = Arc::new(Loops::register(&registry));
        let ingest = Ingest::register(&registry, loops, config);
        (registry, ingest)
    }

    fn heartbeat(pid: u32, created: u64, failures: &str, lag: f64) -> Vec<u8> {
        format!(
            r#"{{"v":1,"type":"heartbeat","app":"api","loop":"main","pid":{pid},"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":{lag},"tasks_pending":2,"tasks_created":{created},"slow_callbacks":0,"failures":[{failures}],"cancellations":[]}}"#
        )
        .into_bytes()
    }

    fn text(registry: &Registry) -> String {
        String::from_utf8(encode(registry)).expect("utf8")
    }

    #[test]
    fn cumulative_counters_continue_across_a_restart() {
        let (registry, ingest) = setup(IngestConfig::default());
        let f = |n| format!(r#"{{"task":"poll","exception":"ValueError","count":{n}}}"#);
        ingest
            .handle(&heartbeat(10, 5, &f(1), 0.0), Transport::Udp)
            .expect("ok");
        // A lost datagram loses nothing: the next one carries the total.
        ingest
            .handle(&heartbeat(10, 9, &f(3), 0.0), Transport::Udp)
            .expect("ok");
        // Restart: the new process starts from zero.
        ingest
            .handle(&heartbeat(11, 2, &f(1), 0.0), Transport::Http)
            .expect("ok");
        let t = text(&registry);
        assert!(
            t.contains(r#"loopwatch_tasks_created_total{app_name="api",loop="main"} 11"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_task_failures_total{app_name="api",exception="ValueError",loop="main",task="poll"} 4"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_ingest_messages_total{transport="udp"} 2"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_ingest_messages_total{transport="http"} 1"#),
            "{t}"
        );
    }

    #[test]
    fn stalls_are_counted_once_by_site_and_unknown_without_a_report() {
        let (registry, ingest) = setup(IngestConfig::default());
        ingest
            .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        let stall = |blocked: f64| {
            format!(
                r#"{{"v":1,"type":"stall","app":"api","loop":"main","pid":10,"stall_id":1,"blocked_s":{blocked},"site":"app.py:9 handler","stack":["main.py:1 run","app.py:9 handler"]}}"#
            )
        };
        ingest
            .handle(stall(0.6).as_bytes(), Transport::Udp)
            .expect("ok");
        ingest
            .handle(stall(1.6).as_bytes(), Transport::Udp)
            .expect("ok");
        let views = ingest.loops();
        let current = views[0].current_stall.as_ref().expect("a current stall");
        assert_eq!(current.site, "app.py:9 handler");
        assert_eq!(current.blocked_seconds, 1.6);
        ingest
            .handle(&heartbeat(10, 1, "", 2.0), Transport::Udp)
            .expect("ok");
        // A stall only loopwatch saw (the app's watchdog could not run).
        ingest
            .handle(&heartbeat(10, 1, "", 1.0), Transport::Udp)
            .expect("ok");
        let t = text(&registry);
        assert!(t.contains(r#"loopwatch_loop_blocking_calls_total{app_name="api",loop="main",site="app.py:9 handler"} 1"#), "{t}");
        assert!(t.contains(r#"loopwatch_loop_blocking_calls_total{app_name="api",loop="main",site="unknown"} 1"#), "{t}");
        assert!(
            t.contains(r#"loopwatch_loop_stalls_total{app_name="api",loop="main"} 2"#),
            "{t}"
        );
        let views = ingest.loops();
        assert!(views[0].current_stall.is_none());
        assert_eq!(views[0].recent_stalls.len(), 2);
        assert_eq!(views[0].recent_stalls[1].blocked_seconds, 2.0);
        assert_eq!(ingest.top_sites(5).len(), 2);
    }

    #[test]
    fn caps_reject_apps_and_fold_sites() {
        let config = IngestConfig {
            max_apps: 1,
            max_sites: 2,
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        ingest
            .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        let other_app = br#"{"v":1,"type":"bye","app":"second","loop":"main","pid":1}"#;
        assert_eq!(
            ingest.handle(other_app, Transport::Udp),
            Err(Rejection::TooManyApps)
        );
        for id in 1..=5 {
            let msg = format!(
                r#"{{"v":1,"type":"stall","app":"api","loop":"main","pid":10,"stall_id":{id},"blocked_s":1,"site":"s{id}.py:1 f","stack":[]}}"#
            );
            ingest.handle(msg.as_bytes(), Transport::Udp).expect("ok");
        }
        let t = text(&registry);
        assert!(t.contains(r#"site="other"} 3"#), "{t}");
        assert!(
            t.contains(r#"loopwatch_ingest_folded_total{kind="site"} 3"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_ingest_rejected_total{reason="too_many_apps"} 1"#),
            "{t}"
        );
    }

    fn pool(loop_name: &str, pid: u32, max: u64, in_use: u64) -> Vec<u8> {
        format!(
            r#"{{"v":1,"type":"pool","app":"api","loop":"{loop_name}","pid":{pid},"pool":"db","size":{in_use},"max":{max},"in_use":{in_use},"waiting":0}}"#
        )
        .into_bytes()
    }

    #[test]
    fn pools_of_several_processes_add_up_and_leave_with_their_process() {
        let (registry, ingest) = setup(IngestConfig::default());
        let max = |t: &str| {
            let line = t
                .lines()
                .find(|l| l.starts_with(r#"loopwatch_pool_max{app_name="api",pool="db"}"#))
                .unwrap_or_else(|| panic!("no pool_max: {t}"));
            line.rsplit(' ').next().expect("value").to_owned()
        };
        ingest
            .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        ingest
            .handle(&pool("main", 10, 4, 1), Transport::Udp)
            .expect("ok");
        // A second worker of the same app, and a repeat of the first's report.
        ingest
            .handle(&pool("main", 11, 4, 2), Transport::Udp)
            .expect("ok");
        ingest
            .handle(&pool("main", 10, 4, 3), Transport::Udp)
            .expect("ok");
        let t = text(&registry);
        assert_eq!(max(&t), "8", "{t}");
        assert!(
            t.contains(r#"loopwatch_pool_in_use{app_name="api",pool="db"} 5"#),
            "{t}"
        );
        // The first worker restarts as pid 12: its old pool is gone.
        ingest
            .handle(&heartbeat(12, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        assert_eq!(max(&text(&registry)), "4");
        ingest
            .handle(&pool("main", 12, 4, 0), Transport::Udp)
            .expect("ok");
        assert_eq!(max(&text(&registry)), "8");
    }

    #[test]
    fn bye_stops_watching_and_expiry_removes_everything() {
        let config = IngestConfig {
            loop_expiry: Duration::ZERO,
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        ingest
            .handle(
                &heartbeat(10, 1, r#"{"task":"t","exception":"E","count":1}"#, 0.0),
                Transport::Udp,
            )
            .expect("ok");
        ingest
            .handle(br#"{"v":1,"type":"pool","app":"api","loop":"main","pid":10,"pool":"db","size":2,"max":4,"in_use":1,"waiting":0}"#, Transport::Udp)
            .expect("ok");
        ingest
            .handle(
                br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":10}"#,
                Transport::Udp,
            )
            .expect("ok");
        let t = text(&registry);
        assert!(
            !t.contains("loopwatch_loop_up{"),
            "a stopped loop is not down: {t}"
        );
        assert!(
            t.contains(r#"loopwatch_pool_max{app_name="api",pool="db"} 0"#),
            "a stopped process holds no connections: {t}"
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(ingest.expire(), 1);
        let t = text(&registry);
        assert!(!t.contains(r#"app_name="api""#), "{t}");
    }
}
