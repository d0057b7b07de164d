//! The receiving side of the client protocol (docs/protocol.md): apps'
//! heartbeats, stalls, pools, rate limits and byes, from UDP (the `ingest`
//! collector) and `POST /api/v1/events`, through one parser ([`protocol`])
//! into one state: apps and their loops' processes ([`apps`]), their pools
//! ([`pools`]), the rate limits they see ([`ratelimits`]), and what the API
//! shows of them ([`views`]).
//!
//! Everything an app sends becomes a bounded label: apps, loops and
//! processes beyond their caps are rejected; tasks, exceptions, sites,
//! workers, pools and rate limits beyond theirs are folded into `other`.
//! Counters arrive cumulative per process and are added as deltas, so the
//! loop's series add up over its processes and never decrease.

mod apps;
mod budget;
mod pools;
pub(crate) mod protocol;
mod ratelimits;
mod views;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{CounterVec, GaugeVec, IntCounterVec, IntGauge, Registry};

use crate::config::IngestConfig;
use crate::families::{self, FoldKind, OTHER, RESERVED_APP, Rejection, Transport};
use crate::watchdog::Watchdog;
use apps::{App, Limits, LoopMessage, Sender};
use budget::Budget;
use protocol::{Body, label_value};
pub use views::{LoopPage, LoopView, ProcessView, SiteCount, StallRecord};

/// The families ingest fills.
pub(crate) struct Series {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    folded: IntCounterVec,
    series_used: IntGauge,
    series_limit: IntGauge,
    tasks_created: CounterVec,
    task_failures: CounterVec,
    task_cancellations: CounterVec,
    slow_callbacks: CounterVec,
    blocking_calls: CounterVec,
    loop_info: GaugeVec,
    /// size, max, in use, waiting, waiting max.
    pool_gauges: [GaugeVec; 5],
    /// acquires, acquire timeouts, wait seconds.
    pool_counters: [CounterVec; 3],
    /// limit, remaining, reset, observed.
    ratelimit: [GaugeVec; 4],
    throttled: CounterVec,
}

impl Series {
    fn register(registry: &Registry) -> Self {
        let messages = families::INGEST_MESSAGES.int_counter_vec(registry);
        let rejected = families::INGEST_REJECTED.int_counter_vec(registry);
        let folded = families::INGEST_FOLDED.int_counter_vec(registry);
        for t in Transport::ALL {
            messages.with_label_values(&[t.as_str()]);
        }
        for r in Rejection::ALL {
            rejected.with_label_values(&[r.as_str()]);
        }
        for k in FoldKind::ALL {
            folded.with_label_values(&[k.as_str()]);
        }
        let [size, max, in_use, waiting] = families::POOL_GAUGES;
        Self {
            messages,
            rejected,
            folded,
            series_used: families::INGEST_SERIES.int_gauge(registry),
            series_limit: families::INGEST_SERIES_LIMIT.int_gauge(registry),
            tasks_created: families::TASKS_CREATED.counter_vec(registry),
            task_failures: families::TASK_FAILURES.counter_vec(registry),
            task_cancellations: families::TASK_CANCELLATIONS.counter_vec(registry),
            slow_callbacks: families::LOOP_SLOW_CALLBACKS.counter_vec(registry),
            blocking_calls: families::LOOP_BLOCKING_CALLS.counter_vec(registry),
            loop_info: families::LOOP_INFO.gauge_vec(registry),
            pool_gauges: [size, max, in_use, waiting, families::POOL_WAITING_MAX]
                .map(|f| f.gauge_vec(registry)),
            pool_counters: [
                families::POOL_ACQUIRES,
                families::POOL_ACQUIRE_TIMEOUTS,
                families::POOL_WAIT,
            ]
            .map(|f| f.counter_vec(registry)),
            ratelimit: [
                families::RATELIMIT_LIMIT,
                families::RATELIMIT_REMAINING,
                families::RATELIMIT_RESET,
                families::RATELIMIT_OBSERVED,
            ]
            .map(|f| f.gauge_vec(registry)),
            throttled: families::RATELIMIT_THROTTLED.counter_vec(registry),
        }
    }

    fn folded(&self, kind: FoldKind, n: f64) {
        if n > 0.0 {
            self.folded
                .with_label_values(&[kind.as_str()])
                .inc_by(n as u64);
        }
    }

    fn pool_gauges(&self) -> &[GaugeVec; 5] {
        &self.pool_gauges
    }

    fn pool_counters(&self) -> &[CounterVec; 3] {
        &self.pool_counters
    }
}

/// Picks the label for `value`: itself while under `cap` distinct values, else
/// `other`; true when it was folded.
fn fold(known: &mut HashSet<String>, value: &str, cap: usize) -> (String, bool) {
    let value = label_value(value);
    if known.contains(&value) {
        return (value, false);
    }
    if known.len() < cap {
        known.insert(value.clone());
        return (value, false);
    }
    known.insert(OTHER.to_owned());
    (OTHER.to_owned(), true)
}

struct State {
    config: IngestConfig,
    apps: HashMap<String, App>,
    ratelimits: ratelimits::RateLimits,
    budget: Budget,
}

fn budget_of(config: &IngestConfig) -> Budget {
    Budget::new(
        config.max_series_per_loop,
        config.max_series_per_app,
        config.max_series,
    )
}

/// How often a rejection reason is logged at most.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// `(reason, transport)` → when last logged, and rejections since.
type RejectionLog = HashMap<(Rejection, Transport), (Option<Instant>, u64)>;

/// Apps' loops, pools and rate limits.
pub struct Ingest {
    watchdog: Arc<Watchdog>,
    series: Series,
    state: Mutex<State>,
    rejections_logged: Mutex<RejectionLog>,
}

impl Ingest {
    pub fn register(registry: &Registry, watchdog: Arc<Watchdog>, config: IngestConfig) -> Self {
        let series = Series::register(registry);
        series.series_limit.set(config.max_series as i64);
        Self {
            watchdog,
            series,
            state: Mutex::new(State {
                budget: budget_of(&config),
                config,
                apps: HashMap::new(),
                ratelimits: ratelimits::RateLimits::default(),
            }),
            rejections_logged: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New caps and timeouts from a reloaded config; tracked apps stay.
    pub fn set_config(&self, config: IngestConfig) {
        let mut state = self.state();
        state.budget.set_caps(
            config.max_series_per_loop,
            config.max_series_per_app,
            config.max_series,
        );
        self.series.series_limit.set(config.max_series as i64);
        state.config = config;
    }

    /// The `{api, token}` budgets loopwatch polls itself: apps may not report them.
    pub fn set_polled_ratelimits(&self, polled: HashSet<(String, String)>) {
        self.state().ratelimits.set_polled(polled);
    }

    /// Handles one raw message; the error is what it was rejected for.
    pub fn handle(&self, raw: &[u8], transport: Transport) -> Result<(), Rejection> {
        self.series
            .messages
            .with_label_values(&[transport.as_str()])
            .inc();
        let result = protocol::parse(raw).and_then(|m| self.apply(m));
        if let Err(reason) = result {
            self.series
                .rejected
                .with_label_values(&[reason.as_str()])
                .inc();
            self.log_rejection(reason, transport, raw);
        }
        result
    }

    /// Counts an HTTP post the ingest door refused before reading it
    /// (`forbidden`, `unauthorized`), with the same rate-limited warning.
    pub fn refuse(&self, reason: Rejection) {
        self.series
            .rejected
            .with_label_values(&[reason.as_str()])
            .inc();
        self.log_rejection(reason, Transport::Http, b"");
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
            let entry = logged.entry((reason, transport)).or_insert((None, 0));
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
            Rejection::Oversize
            | Rejection::NotJson
            | Rejection::Forbidden
            | Rejection::Unauthorized => None,
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

    fn apply(&self, m: protocol::Message) -> Result<(), Rejection> {
        // loopwatch's own runtime and pools report under this name.
        if m.app == RESERVED_APP {
            return Err(Rejection::Reserved);
        }
        let mut guard = self.state();
        let State {
            config,
            apps,
            ratelimits,
            budget,
        } = &mut *guard;
        if let Body::RateLimit(rl) = &m.body {
            return ratelimits.report(&self.series, &m.app, rl, config);
        }
        if let Body::Bye = m.body {
            if !apps.contains_key(&m.app) {
                return Ok(());
            }
        }
        if !apps.contains_key(&m.app) && apps.len() >= config.max_apps {
            return Err(Rejection::TooManyApps);
        }
        let app = apps.entry(m.app.clone()).or_default();
        app.last_message = Instant::now();
        let from = Sender {
            app: &m.app,
            loop_name: &m.loop_name,
            pid: m.pid,
            worker: m.worker.as_deref(),
        };
        let message = match m.body {
            Body::Pool(p) => {
                let share = (&mut *budget, &mut app.taken);
                app.pools
                    .report(&self.series, &m.app, m.pid, &p, config, share);
                return Ok(());
            }
            Body::Heartbeat(ref hb) => LoopMessage::Heartbeat(hb),
            Body::Stall(stall) => LoopMessage::Stall(stall),
            Body::Bye => LoopMessage::Bye,
            Body::RateLimit(_) => return Ok(()),
        };
        app.apply(
            &self.series,
            &self.watchdog,
            &from,
            message,
            Limits { config, budget },
        )
    }

    /// Counts processes that went silent as restarts and drops their pools;
    /// removes processes, loops, pools and rate limits silent for longer
    /// than the expiry, with all their series. Returns how many loops went.
    pub fn sweep(&self) -> usize {
        let gone = self.watchdog.count_restarts();
        let mut guard = self.state();
        let State {
            config,
            apps,
            ratelimits,
            budget,
        } = &mut *guard;
        for (app_name, loop_name, pid) in gone {
            if let Some(app) = apps.get_mut(&app_name) {
                app.went_down(&loop_name, pid, config);
                app.pools
                    .drop_reports(&self.series, &app_name, |p, _| p == pid);
            }
        }
        let mut removed = 0;
        // An app that never sent a heartbeat holds its slot only while it talks.
        apps.retain(|name, app| {
            let keep = app.live_once || app.last_message.elapsed() <= config.silence_timeout;
            if !keep {
                app.remove_series(&self.series, &self.watchdog, name);
                budget.release_app(&app.taken);
            }
            keep
        });
        for (name, app) in apps.iter_mut() {
            removed += app.expire(
                &self.series,
                &self.watchdog,
                budget,
                name,
                config.loop_expiry,
            );
            // Reports of processes that send pools only: gone after the silence timeout.
            let live = app.live_pids();
            let silence = config.silence_timeout;
            app.pools.drop_reports(&self.series, name, |pid, seen| {
                !live.contains(&pid) && seen.elapsed() > silence
            });
            let share = (&mut *budget, &mut app.taken);
            app.pools
                .expire(&self.series, name, config.loop_expiry, share);
        }
        apps.retain(|_, app| {
            if app.is_empty() {
                budget.release_app(&app.taken);
            }
            !app.is_empty()
        });
        ratelimits.expire(&self.series, config.loop_expiry);
        self.series.series_used.set(budget.used() as i64);
        self.series.series_limit.set(budget.total as i64);
        removed
    }

    /// Every app loop with its state, processes and recent stalls.
    pub fn loop_views(&self) -> Vec<LoopView> {
        let state = self.state();
        let mut views: Vec<LoopView> = state
            .apps
            .iter()
            .flat_map(|(name, app)| app.views(name))
            .collect();
        views.sort_by(|a, b| (&a.app_name, &a.loop_name).cmp(&(&b.app_name, &b.loop_name)));
        views
    }

    /// Loops `offset..offset + limit` in name order, cut short where their
    /// JSON would pass `max_bytes` (but never empty while loops remain), so
    /// no answer costs more than that whatever apps sent.
    pub fn loop_page(&self, offset: usize, limit: usize, max_bytes: usize) -> LoopPage {
        let views = self.loop_views();
        let total = views.len();
        let mut loops = Vec::new();
        let mut bytes = 0;
        for view in views.into_iter().skip(offset).take(limit) {
            let size = serde_json::to_vec(&view).map_or(0, |v| v.len());
            if !loops.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            loops.push(view);
        }
        let end = offset + loops.len();
        LoopPage {
            loops,
            total,
            next_offset: (end < total).then_some(end),
        }
    }

    /// The sites that stalled loops most often.
    pub fn top_sites(&self, n: usize) -> Vec<SiteCount> {
        let state = self.state();
        let mut all: Vec<SiteCount> = state
            .apps
            .iter()
            .flat_map(|(name, app)| app.sites(name))
            .collect();
        all.sort_by(|a, b| b.stalls.cmp(&a.stalls).then_with(|| a.site.cmp(&b.site)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests;

/// Property tests: whatever bytes or messages arrive, ingest never panics,
/// counts every message once, and never grows past its budget. Failing
/// cases are kept in `proptest-regressions/` and replayed first.
#[cfg(test)]
mod fuzz_tests;
