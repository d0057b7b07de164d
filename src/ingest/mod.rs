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
mod tests {
    use super::*;
    use crate::metrics::encode;

    use crate::metrics::tests::sample;

    fn setup(config: IngestConfig) -> (Registry, Ingest) {
        let registry = Registry::new();
        let watchdog = Arc::new(Watchdog::register(&registry));
        let ingest = Ingest::register(&registry, watchdog, config);
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
    fn cumulative_counters_of_processes_add_up() {
        let (registry, ingest) = setup(IngestConfig::default());
        let f = |n| format!(r#"{{"task":"poll","exception":"ValueError","count":{n}}}"#);
        ingest
            .handle(&heartbeat(10, 5, &f(1), 0.0), Transport::Udp)
            .expect("ok");
        // A lost datagram loses nothing: the next one carries the total.
        ingest
            .handle(&heartbeat(10, 9, &f(3), 0.0), Transport::Udp)
            .expect("ok");
        // A second process of the app counts from zero; the sum goes on.
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
        let views = ingest.loop_views();
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
        let views = ingest.loop_views();
        assert!(views[0].current_stall.is_none());
        assert_eq!(views[0].recent_stalls.len(), 2);
        assert!(views[0].recent_stalls.iter().all(|s| s.pid == 10));
        let closed = views[0]
            .recent_stalls
            .iter()
            .find(|s| s.site == "app.py:9 handler")
            .expect("the reported stall");
        assert_eq!(
            closed.blocked_seconds, 2.0,
            "the heartbeat after it closes it with its lag"
        );
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
        let other_app = String::from_utf8(heartbeat(1, 1, "", 0.0))
            .expect("utf8")
            .replace(r#""app":"api""#, r#""app":"second""#);
        let other_app = other_app.as_bytes();
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
        // A third worker starts: the others' pools stay.
        ingest
            .handle(&heartbeat(12, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        assert_eq!(max(&text(&registry)), "8");
        ingest
            .handle(&pool("main", 12, 4, 0), Transport::Udp)
            .expect("ok");
        assert_eq!(max(&text(&registry)), "12");
        // The first one says bye: its pool is gone.
        ingest
            .handle(
                br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":10}"#,
                Transport::Udp,
            )
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
        assert_eq!(ingest.sweep(), 1);
        let t = text(&registry);
        assert!(!t.contains(r#"app_name="api""#), "{t}");
    }

    #[test]
    fn r11_apps_may_not_report_as_loopwatch_itself() {
        let (registry, ingest) = setup(IngestConfig::default());
        for raw in [
            r#"{"v":1,"type":"heartbeat","app":"loopwatch","loop":"tokio","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":5,"tasks_pending":0,"tasks_created":0,"slow_callbacks":0,"failures":[],"cancellations":[]}"#,
            r#"{"v":1,"type":"bye","app":"loopwatch","loop":"tokio","pid":1}"#,
            r#"{"v":1,"type":"pool","app":"loopwatch","loop":"main","pid":1,"pool":"main","size":1,"max":2,"in_use":1,"waiting":0}"#,
        ] {
            assert_eq!(
                ingest.handle(raw.as_bytes(), Transport::Udp),
                Err(Rejection::Reserved),
                "{raw}"
            );
        }
        let t = text(&registry);
        assert!(!t.contains(r#"app_name="loopwatch""#), "{t}");
        assert_eq!(
            sample(&t, r#"loopwatch_ingest_rejected_total{reason="reserved"}"#),
            3.0
        );
    }

    #[test]
    fn r11_apps_may_not_report_a_budget_loopwatch_polls() {
        let (registry, ingest) = setup(IngestConfig::default());
        ingest.set_polled_ratelimits(HashSet::from([("github".to_owned(), "ci".to_owned())]));
        let report = |token: &str| {
            format!(
                r#"{{"v":1,"type":"ratelimit","app":"a","loop":"l","pid":1,"api":"github","resource":"core","token":"{token}","limit":5000,"remaining":1,"reset":1795440000}}"#
            )
        };
        assert_eq!(
            ingest.handle(report("ci").as_bytes(), Transport::Udp),
            Err(Rejection::Reserved)
        );
        ingest
            .handle(report("app-bot").as_bytes(), Transport::Udp)
            .expect("another token is the app's own");
        let t = text(&registry);
        assert!(!t.contains(r#"token="ci""#), "{t}");
        assert!(t.contains(r#"token="app-bot""#), "{t}");
    }

    #[test]
    fn r12_folded_cancellations_are_counted_once() {
        let config = IngestConfig {
            max_tasks: 1,
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        let hb = r#"{"v":1,"type":"heartbeat","app":"api","loop":"main","pid":10,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":2,"tasks_created":1,"slow_callbacks":0,"failures":[],"cancellations":[{"task":"a","count":1},{"task":"b","count":5}]}"#;
        for _ in 0..10 {
            ingest.handle(hb.as_bytes(), Transport::Udp).expect("ok");
        }
        let t = text(&registry);
        assert_eq!(
            sample(
                &t,
                r#"loopwatch_task_cancellations_total{app_name="api",loop="main",task="other"}"#
            ),
            5.0
        );
        assert_eq!(
            sample(&t, r#"loopwatch_ingest_folded_total{kind="task"}"#),
            5.0
        );
    }

    #[test]
    fn r12_an_app_that_only_reports_pools_keeps_them_for_the_silence_timeout() {
        let (registry, ingest) = setup(IngestConfig::default());
        ingest
            .handle(&pool("main", 10, 4, 1), Transport::Udp)
            .expect("ok");
        assert_eq!(ingest.sweep(), 0);
        let t = text(&registry);
        assert_eq!(
            sample(&t, r#"loopwatch_pool_max{app_name="api",pool="db"}"#),
            4.0
        );
        assert_eq!(ingest.state().apps.len(), 1, "the app keeps its slot");
    }

    #[test]
    fn r12_a_sibling_worker_is_not_a_restart_and_keeps_its_pool() {
        let (registry, ingest) = setup(IngestConfig::default());
        for round in 0..3 {
            for pid in [10, 11, 12, 13] {
                ingest
                    .handle(&heartbeat(pid, round, "", 0.0), Transport::Udp)
                    .expect("ok");
                let one = format!(
                    r#"{{"v":1,"type":"pool","app":"api","loop":"main","pid":{pid},"pool":"db","size":1,"max":1,"in_use":1,"waiting":0}}"#
                );
                ingest.handle(one.as_bytes(), Transport::Udp).expect("ok");
            }
        }
        assert_eq!(ingest.sweep(), 0);
        let t = text(&registry);
        assert_eq!(
            sample(&t, r#"loopwatch_pool_max{app_name="api",pool="db"}"#),
            4.0
        );
        assert_eq!(
            sample(&t, r#"loopwatch_pool_in_use{app_name="api",pool="db"}"#),
            4.0
        );
        assert_eq!(
            sample(
                &t,
                r#"loopwatch_loop_processes{app_name="api",loop="main"}"#
            ),
            4.0
        );
        assert_eq!(
            sample(
                &t,
                r#"loopwatch_loop_restarts_total{app_name="api",loop="main"}"#
            ),
            0.0
        );
        let views = ingest.loop_views();
        assert_eq!(views[0].processes.len(), 4);
    }

    #[test]
    fn processes_beyond_the_cap_are_rejected_and_a_dead_one_gives_way() {
        let config = IngestConfig {
            max_processes_per_loop: 2,
            ..IngestConfig::default()
        };
        let (_registry, ingest) = setup(config);
        ingest
            .handle(&heartbeat(1, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        ingest
            .handle(&heartbeat(2, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        assert_eq!(
            ingest.handle(&heartbeat(3, 1, "", 0.0), Transport::Udp),
            Err(Rejection::TooManyProcesses)
        );
        ingest
            .handle(
                br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":1}"#,
                Transport::Udp,
            )
            .expect("ok");
        ingest
            .handle(&heartbeat(3, 1, "", 0.0), Transport::Udp)
            .expect("the stopped process gives way");
        let mut pids: Vec<u32> = ingest.loop_views()[0]
            .processes
            .iter()
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![2, 3]);
    }

    #[test]
    fn pool_counters_add_up_over_processes_and_never_decrease() {
        let (registry, ingest) = setup(IngestConfig::default());
        let report = |pid: u32, acquires: u64, timeouts: u64, wait: f64, waiting_max: u64| {
            format!(
                r#"{{"v":1,"type":"pool","app":"api","loop":"main","pid":{pid},"pool":"db","size":2,"max":2,"in_use":2,"waiting":1,"waiting_max":{waiting_max},"acquires":{acquires},"acquire_timeouts":{timeouts},"wait_seconds":{wait}}}"#
            )
        };
        ingest
            .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        ingest
            .handle(&heartbeat(11, 1, "", 0.0), Transport::Udp)
            .expect("ok");
        ingest
            .handle(report(10, 10, 1, 0.5, 3).as_bytes(), Transport::Udp)
            .expect("ok");
        ingest
            .handle(report(11, 5, 2, 1.0, 4).as_bytes(), Transport::Udp)
            .expect("ok");
        ingest
            .handle(report(10, 12, 1, 0.75, 1).as_bytes(), Transport::Udp)
            .expect("ok");
        let series =
            |t: &str, name: &str| sample(t, &format!(r#"{name}{{app_name="api",pool="db"}}"#));
        let t = text(&registry);
        assert_eq!(series(&t, "loopwatch_pool_acquires_total"), 17.0);
        assert_eq!(series(&t, "loopwatch_pool_acquire_timeouts_total"), 3.0);
        assert_eq!(series(&t, "loopwatch_pool_wait_seconds_total"), 1.75);
        assert_eq!(series(&t, "loopwatch_pool_waiting_max"), 5.0);
        // Process 11 goes away: its gauges leave the sums, its counts stay.
        ingest
            .handle(
                br#"{"v":1,"type":"bye","app":"api","loop":"main","pid":11}"#,
                Transport::Udp,
            )
            .expect("ok");
        let t = text(&registry);
        assert_eq!(series(&t, "loopwatch_pool_acquires_total"), 17.0);
        assert_eq!(series(&t, "loopwatch_pool_max"), 2.0);
        assert_eq!(series(&t, "loopwatch_pool_waiting_max"), 1.0);
    }

    #[test]
    fn a_worker_id_gives_per_worker_series_up_to_the_cap() {
        let config = IngestConfig {
            max_workers_per_loop: 1,
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        for (pid, worker) in [(10, "0"), (11, "1")] {
            let hb = String::from_utf8(heartbeat(pid, 1, "", 0.0))
                .expect("utf8")
                .replace(r#""pid":"#, &format!(r#""worker":"{worker}","pid":"#));
            ingest.handle(hb.as_bytes(), Transport::Udp).expect("ok");
        }
        let t = text(&registry);
        assert_eq!(
            sample(
                &t,
                r#"loopwatch_loop_worker_up{app_name="api",loop="main",worker="0"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &t,
                r#"loopwatch_loop_worker_up{app_name="api",loop="main",worker="other"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(&t, r#"loopwatch_ingest_folded_total{kind="worker"}"#),
            1.0
        );
    }

    fn failure_series(t: &str) -> usize {
        t.lines()
            .filter(|l| l.starts_with("loopwatch_task_failures_total{"))
            .count()
    }

    #[test]
    fn r15_caps_that_multiply_are_held_by_the_series_budget() {
        let config = IngestConfig {
            max_series_per_loop: 60,
            max_series_per_app: 150,
            max_series: 300,
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        // Every app and loop reports 10 tasks × 8 exceptions, inside every label cap.
        let failures: Vec<String> = (0..10)
            .flat_map(|t| {
                (0..8).map(move |x| format!(r#"{{"task":"t{t}","exception":"E{x}","count":1}}"#))
            })
            .collect();
        let mut accepted = 0;
        for app in 0..5 {
            for lp in 0..4 {
                let hb = String::from_utf8(heartbeat(1, 1, &failures.join(","), 0.0))
                    .expect("utf8")
                    .replace(r#""app":"api""#, &format!(r#""app":"a{app}""#))
                    .replace(r#""loop":"main""#, &format!(r#""loop":"l{lp}""#));
                if ingest.handle(hb.as_bytes(), Transport::Http).is_ok() {
                    accepted += 1;
                }
            }
        }
        assert!(accepted > 0);
        let t = text(&registry);
        let loops = t
            .lines()
            .filter(|l| l.starts_with("loopwatch_loop_up{"))
            .count();
        // What the budget allows, plus one `other` series per loop.
        assert!(
            failure_series(&t) <= 300 + loops,
            "{} series for {loops} loops",
            failure_series(&t)
        );
        assert!(sample(&t, "loopwatch_ingest_series") <= 300.0, "{t}");
        assert!(sample(&t, r#"loopwatch_ingest_folded_total{kind="task"}"#) > 0.0);
        // Nothing is lost: every failure counts, in its own series or in other.
        let total: f64 = t
            .lines()
            .filter(|l| l.starts_with("loopwatch_task_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(total, 80.0 * loops as f64);
    }

    #[test]
    fn r15_apps_that_never_heartbeat_give_their_slot_back() {
        let config = IngestConfig {
            max_apps: 2,
            silence_timeout: Duration::from_millis(20),
            ..IngestConfig::default()
        };
        let (registry, ingest) = setup(config);
        for junk in ["junk1", "junk2"] {
            let one = String::from_utf8(pool("main", 1, 1, 1))
                .expect("utf8")
                .replace(r#""app":"api""#, &format!(r#""app":"{junk}""#));
            ingest.handle(one.as_bytes(), Transport::Udp).expect("ok");
        }
        assert_eq!(
            ingest.handle(&heartbeat(10, 1, "", 0.0), Transport::Udp),
            Err(Rejection::TooManyApps)
        );
        std::thread::sleep(Duration::from_millis(30));
        ingest.sweep();
        assert!(!text(&registry).contains("junk"), "their series are gone");
        ingest
            .handle(&heartbeat(10, 1, "", 0.0), Transport::Udp)
            .expect("a real app finds a slot");
        std::thread::sleep(Duration::from_millis(30));
        ingest.sweep();
        assert_eq!(ingest.state().apps.len(), 1, "a live app keeps its slot");
    }

    #[test]
    fn r15_counts_beyond_2_pow_53_are_rejected_and_sums_never_wrap() {
        let (registry, ingest) = setup(IngestConfig {
            max_tasks: 1,
            ..IngestConfig::default()
        });
        let huge = protocol::MAX_COUNT;
        let f = format!(
            r#"{{"task":"a","exception":"E","count":{huge}}},{{"task":"b","exception":"E","count":{huge}}}"#
        );
        ingest
            .handle(&heartbeat(10, 1, &f, 0.0), Transport::Udp)
            .expect("at the limit");
        let t = text(&registry);
        let other = sample(
            &t,
            r#"loopwatch_task_failures_total{app_name="api",exception="E",loop="main",task="other"}"#,
        );
        assert_eq!(other, 2f64.powi(53), "{t}");
        let f = format!(r#"{{"task":"a","exception":"E","count":{}}}"#, u64::MAX);
        assert_eq!(
            ingest.handle(&heartbeat(10, 1, &f, 0.0), Transport::Udp),
            Err(Rejection::Invalid)
        );
    }

    #[test]
    fn r15_loop_pages_are_bounded_in_bytes_and_page_through_everything() {
        let (_registry, ingest) = setup(IngestConfig {
            max_loops_per_app: 64,
            ..IngestConfig::default()
        });
        let frame = format!("/srv/{}/app.py:1 handler", "x".repeat(100));
        let stack: Vec<String> = (0..60).map(|_| format!("{frame:?}")).collect();
        for lp in 0..30 {
            let hb = String::from_utf8(heartbeat(1, 1, "", 0.0))
                .expect("utf8")
                .replace(r#""loop":"main""#, &format!(r#""loop":"l{lp:02}""#));
            ingest.handle(hb.as_bytes(), Transport::Http).expect("ok");
            let stall = format!(
                r#"{{"v":1,"type":"stall","app":"api","loop":"l{lp:02}","pid":1,"stall_id":1,"blocked_s":1,"site":"app.py:1 handler","stack":[{}]}}"#,
                stack.join(",")
            );
            ingest
                .handle(stall.as_bytes(), Transport::Http)
                .expect("ok");
        }
        let mut seen = Vec::new();
        let mut offset = Some(0);
        while let Some(from) = offset {
            let page = ingest.loop_page(from, 100, 20_000);
            assert_eq!(page.total, 30);
            let size = serde_json::to_vec(&page.loops).expect("json").len();
            assert!(size <= 20_000 || page.loops.len() == 1, "{size} bytes");
            assert!(!page.loops.is_empty());
            seen.extend(page.loops.into_iter().map(|l| l.loop_name));
            offset = page.next_offset;
        }
        let want: Vec<String> = (0..30).map(|lp| format!("l{lp:02}")).collect();
        assert_eq!(seen, want);
    }
}

/// Property tests: whatever bytes or messages arrive, ingest never panics,
/// counts every message once, and never grows past its budget. Failing
/// cases are kept in `proptest-regressions/` and replayed first.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn setup() -> (Registry, Ingest) {
        let registry = Registry::new();
        let watchdog = Arc::new(Watchdog::register(&registry));
        let config = IngestConfig {
            max_series_per_loop: 40,
            max_series_per_app: 120,
            max_series: 200,
            ..IngestConfig::default()
        };
        (
            registry.clone(),
            Ingest::register(&registry, watchdog, config),
        )
    }

    /// JSON values of every type, numbers at their edges included.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "[a-z0-9_. :-]{0,12}".prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Messages that look like the protocol's, with any field's value replaced.
    fn protocol_like() -> impl Strategy<Value = Vec<u8>> {
        let kinds = prop_oneof![
            Just("heartbeat"),
            Just("stall"),
            Just("pool"),
            Just("ratelimit"),
            Just("bye"),
        ];
        let fields = prop::collection::btree_map(
            prop_oneof![
                Just("pid".to_owned()),
                Just("worker".to_owned()),
                Just("interval_s".to_owned()),
                Just("stall_threshold_s".to_owned()),
                Just("lag_s".to_owned()),
                Just("tasks_pending".to_owned()),
                Just("tasks_created".to_owned()),
                Just("slow_callbacks".to_owned()),
                Just("failures".to_owned()),
                Just("cancellations".to_owned()),
                Just("stall_id".to_owned()),
                Just("blocked_s".to_owned()),
                Just("site".to_owned()),
                Just("stack".to_owned()),
                Just("pool".to_owned()),
                Just("size".to_owned()),
                Just("max".to_owned()),
                Just("in_use".to_owned()),
                Just("waiting".to_owned()),
                Just("waiting_max".to_owned()),
                Just("acquires".to_owned()),
                Just("wait_seconds".to_owned()),
                Just("api".to_owned()),
                Just("resource".to_owned()),
                Just("limit".to_owned()),
                Just("remaining".to_owned()),
                Just("reset".to_owned()),
                Just("throttled".to_owned()),
            ],
            any_json(),
            0..12,
        );
        (kinds, "[a-c]{1,2}", "[a-b]", 1u32..6, fields).prop_map(|(kind, app, lp, pid, fields)| {
            let mut m = serde_json::json!({"v": 1, "type": kind, "app": app, "loop": lp, "pid": pid, "interval_s": 0.25, "stall_threshold_s": 0.5, "lag_s": 0.0, "tasks_pending": 0, "tasks_created": 0, "slow_callbacks": 0, "failures": [], "cancellations": []});
            let obj = m.as_object_mut().expect("object");
            obj.extend(fields);
            serde_json::to_vec(&m).expect("json")
        })
    }

    /// Hostile messages found by hand and by issue #15, replayed every run.
    #[test]
    fn the_corpus_is_handled_or_rejected_and_counted() {
        let (registry, ingest) = setup();
        let corpus = include_str!("../../tests/corpus/ingest.ndjson");
        let mut accepted = 0;
        for line in corpus.lines() {
            if ingest.handle(line.as_bytes(), Transport::Udp).is_ok() {
                accepted += 1;
            }
        }
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        let counted = crate::metrics::tests::sample(
            &text,
            r#"loopwatch_ingest_messages_total{transport="udp"}"#,
        );
        assert_eq!(counted as usize, corpus.lines().count());
        assert!(!text.contains(r#"app_name="loopwatch""#), "{text}");
        assert!(accepted >= 1, "the well-formed one is accepted");
    }

    proptest! {
        // Bounded for CI; `PROPTEST_CASES=100000 cargo test fuzz` runs longer by hand.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48)
        ))]

        #[test]
        fn any_bytes_are_handled_or_rejected(raw in prop::collection::vec(any::<u8>(), 0..10_000)) {
            let (_registry, ingest) = setup();
            let _ = ingest.handle(&raw, Transport::Udp);
        }

        #[test]
        fn any_message_sequence_is_counted_once_and_stays_within_the_budget(
            messages in prop::collection::vec(protocol_like(), 1..60)
        ) {
            let (registry, ingest) = setup();
            let mut outcomes = 0u64;
            for m in &messages {
                let _ = ingest.handle(m, Transport::Http);
                outcomes += 1;
            }
            ingest.sweep();
            let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
            let counted = crate::metrics::tests::sample(&text, r#"loopwatch_ingest_messages_total{transport="http"}"#);
            prop_assert_eq!(counted as u64, outcomes);
            prop_assert!(crate::metrics::tests::sample(&text, "loopwatch_ingest_series") <= 200.0);
            let views = serde_json::to_vec(&ingest.loop_page(0, 1000, 1 << 20)).expect("json");
            prop_assert!(views.len() < 2 << 20);
        }
    }
}
