//! The watchdog over event loops: per `{app_name, loop}`, the processes that
//! report it (an app's worker processes, or loopwatch's own runtime), each
//! with the clock of its last tick.
//!
//! A blocked loop cannot say it is blocked, so `loopwatch_loop_stall_seconds`,
//! `loopwatch_loop_up` and `loopwatch_loop_processes` are computed at scrape
//! time from the time since each process's last tick: the stall of the
//! *worst* live process grows live while it is blocked, whatever its sibling
//! workers do, and drops to 0 once it ticks again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, CounterVec, GaugeVec, Histogram, HistogramVec, Registry};

use crate::families::{self, Family};
use crate::metrics::{FamilyBuilder, unix_now};

/// Lag buckets: few, from 1 ms (healthy) to 10 s (an outage).
pub const LAG_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

/// The families computed at scrape time.
const SCRAPE_TIME: [Family; 6] = [
    families::LOOP_UP,
    families::LOOP_STALL,
    families::LOOP_PROCESSES,
    families::TASKS_PENDING,
    families::LOOP_WORKER_UP,
    families::LOOP_WORKER_STALL,
];

/// What the watchdog knows about a process's loop right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopStatus {
    Running,
    Stalled,
    /// Silent for longer than its silence timeout, without a bye.
    Down,
    /// Said bye.
    Stopped,
}

impl LoopStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LoopStatus::Running => "running",
            LoopStatus::Stalled => "stalled",
            LoopStatus::Down => "down",
            LoopStatus::Stopped => "stopped",
        }
    }

    pub fn is_live(self) -> bool {
        matches!(self, LoopStatus::Running | LoopStatus::Stalled)
    }

    /// The loop's status from its processes': the worst live one, else down
    /// when any went silent without a bye, else stopped.
    pub fn of_loop(statuses: impl IntoIterator<Item = LoopStatus>) -> LoopStatus {
        let rank = |s: LoopStatus| match s {
            LoopStatus::Stalled => 3,
            LoopStatus::Running => 2,
            LoopStatus::Down => 1,
            LoopStatus::Stopped => 0,
        };
        statuses
            .into_iter()
            .max_by_key(|s| rank(*s))
            .unwrap_or(LoopStatus::Stopped)
    }
}

/// When a loop's ticks are due and when it counts as stalled or down.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Expected time between ticks.
    pub interval: Duration,
    /// Lateness beyond which the loop counts as stalled.
    pub threshold: Duration,
    /// Silence after which the process is down; `None`: never (our own runtime).
    pub silence_timeout: Option<Duration>,
}

/// Timing of one process's loop, shared between its reporter and the scrape.
#[derive(Debug)]
struct Clock {
    /// Expected time between ticks.
    interval: Duration,
    /// Lateness beyond which the loop counts as stalled.
    threshold: Duration,
    /// Silence after which the process is down; `None`: never (our own runtime).
    silence_timeout: Option<Duration>,
    last_tick: Instant,
    /// Last sign of life: a tick or a stall report from the app's watchdog.
    last_seen: Instant,
    stopped: bool,
    /// Set once its going down was counted as a restart.
    down_counted: bool,
    tasks_pending: u64,
    /// The worker id the client sent, already bounded by ingest's cap.
    worker: Option<String>,
}

impl Clock {
    /// How far the next tick is overdue, when that exceeds the threshold.
    fn stall(&self, now: Instant) -> Duration {
        let late = now.saturating_duration_since(self.last_tick + self.interval);
        if late > self.threshold {
            late
        } else {
            Duration::ZERO
        }
    }

    fn status(&self, now: Instant) -> LoopStatus {
        if self.stopped {
            LoopStatus::Stopped
        } else if self
            .silence_timeout
            .is_some_and(|t| now.saturating_duration_since(self.last_seen) > t)
        {
            LoopStatus::Down
        } else if self.stall(now) > Duration::ZERO {
            LoopStatus::Stalled
        } else {
            LoopStatus::Running
        }
    }

    /// The stall while live, else zero.
    fn live_stall(&self, now: Instant) -> Duration {
        match self.status(now) {
            LoopStatus::Stalled => self.stall(now),
            _ => Duration::ZERO,
        }
    }
}

type SharedClock = Arc<Mutex<Clock>>;

fn lock(clock: &Mutex<Clock>) -> MutexGuard<'_, Clock> {
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

/// The processes of each loop being watched: `(app_name, loop)` → pid → clock.
type Table = Mutex<BTreeMap<(String, String), BTreeMap<u32, SharedClock>>>;

struct LoopMetrics {
    lag: HistogramVec,
    stalls: CounterVec,
    blocked: CounterVec,
    last_heartbeat: GaugeVec,
    restarts: CounterVec,
}

/// Every loop known to the exporter, and the families they fill.
pub struct Watchdog {
    metrics: LoopMetrics,
    table: Arc<Table>,
}

/// What one process records its loop's ticks through.
pub struct LoopClock {
    clock: SharedClock,
    lag: Histogram,
    stalls: Counter,
    blocked: Counter,
    /// Created at the first tick: a 0 timestamp would read as 1970.
    last_heartbeat: (GaugeVec, [String; 2]),
}

impl LoopClock {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        lock(&self.clock)
    }

    /// Records one tick that ran `lag` after it was due. Returns true when
    /// that lateness counted as a stall.
    pub fn tick(&self, lag: Duration) -> bool {
        let threshold = {
            let mut c = self.clock();
            let now = Instant::now();
            c.last_tick = now;
            c.last_seen = now;
            c.stopped = false;
            c.down_counted = false;
            c.threshold
        };
        let lag_s = lag.as_secs_f64();
        self.lag.observe(lag_s);
        let (vec, [app, name]) = &self.last_heartbeat;
        vec.with_label_values(&[app.as_str(), name.as_str()])
            .set(unix_now());
        if lag > threshold {
            self.stalls.inc();
            self.blocked.inc_by(lag_s);
            true
        } else {
            false
        }
    }

    /// A sign of life that is not a tick (the app's watchdog reporting a stall).
    pub fn seen(&self) {
        self.clock().last_seen = Instant::now();
    }

    /// Updates the schedule the loop announced.
    pub fn set_schedule(&self, interval: Duration, threshold: Duration) {
        let mut c = self.clock();
        c.interval = interval;
        c.threshold = threshold;
    }

    pub fn set_silence_timeout(&self, timeout: Duration) {
        self.clock().silence_timeout = Some(timeout);
    }

    pub fn set_tasks_pending(&self, n: u64) {
        self.clock().tasks_pending = n;
    }

    /// A clean shutdown: the process is neither stalled nor down.
    pub fn stop(&self) {
        self.clock().stopped = true;
    }

    pub fn status(&self) -> LoopStatus {
        self.clock().status(Instant::now())
    }

    /// The current stall, zero unless stalled.
    pub fn stall(&self) -> Duration {
        self.clock().live_stall(Instant::now())
    }

    /// Time since the last sign of life.
    pub fn silent_for(&self) -> Duration {
        self.clock().last_seen.elapsed()
    }
}

/// Fills the scrape-time families from the table.
#[derive(Clone)]
struct ScrapeCollector {
    descs: Vec<Desc>,
    table: Arc<Table>,
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = FamilyBuilder::default();
        for ((app, name), processes) in table.iter() {
            let labels = [app.as_str(), name.as_str()];
            let (mut live, mut down, mut stall, mut pending) = (0u64, false, 0f64, 0u64);
            // Per worker id: the worst of the processes reporting it.
            let mut workers: BTreeMap<&str, (bool, f64)> = BTreeMap::new();
            let clocks: Vec<_> = processes.values().map(|c| lock(c)).collect();
            for c in &clocks {
                let status = c.status(now);
                let s = c.live_stall(now).as_secs_f64();
                if status.is_live() {
                    live += 1;
                    stall = stall.max(s);
                    pending = pending.saturating_add(c.tasks_pending);
                }
                down |= status == LoopStatus::Down;
                if let Some(worker) = &c.worker {
                    if status != LoopStatus::Stopped {
                        let w = workers.entry(worker.as_str()).or_default();
                        w.0 |= status.is_live();
                        w.1 = w.1.max(s);
                    }
                }
            }
            if live == 0 && !down {
                // Every process said bye: nothing is up, nothing is down.
                continue;
            }
            b.gauge(
                &families::LOOP_UP,
                &labels,
                if live > 0 { 1.0 } else { 0.0 },
            );
            b.gauge(&families::LOOP_STALL, &labels, stall);
            b.gauge(&families::LOOP_PROCESSES, &labels, live as f64);
            b.gauge(&families::TASKS_PENDING, &labels, pending as f64);
            for (worker, (up, stall)) in workers {
                let labels = [app.as_str(), name.as_str(), worker];
                b.gauge(
                    &families::LOOP_WORKER_UP,
                    &labels,
                    if up { 1.0 } else { 0.0 },
                );
                b.gauge(&families::LOOP_WORKER_STALL, &labels, stall);
            }
        }
        b.finish()
    }
}

impl Watchdog {
    pub fn register(registry: &Registry) -> Self {
        let table = Arc::new(Table::default());
        families::register(
            registry,
            ScrapeCollector {
                descs: SCRAPE_TIME.iter().map(Family::desc).collect(),
                table: table.clone(),
            },
        );
        Self {
            metrics: LoopMetrics {
                lag: families::LOOP_LAG.histogram_vec(registry, &LAG_BUCKETS),
                stalls: families::LOOP_STALLS.counter_vec(registry),
                blocked: families::LOOP_BLOCKED.counter_vec(registry),
                last_heartbeat: families::LOOP_LAST_HEARTBEAT.gauge_vec(registry),
                restarts: families::LOOP_RESTARTS.counter_vec(registry),
            },
            table,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<(String, String), BTreeMap<u32, SharedClock>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching process `pid` of a loop.
    /// The loop's counters go on from where they are (other processes, or
    /// earlier ones, of the same loop).
    pub fn attach(
        &self,
        app: &str,
        name: &str,
        pid: u32,
        worker: Option<String>,
        schedule: Schedule,
    ) -> LoopClock {
        let now = Instant::now();
        let clock = Arc::new(Mutex::new(Clock {
            interval: schedule.interval,
            threshold: schedule.threshold,
            silence_timeout: schedule.silence_timeout,
            last_tick: now,
            last_seen: now,
            stopped: false,
            down_counted: false,
            tasks_pending: 0,
            worker,
        }));
        self.table()
            .entry((app.to_owned(), name.to_owned()))
            .or_default()
            .insert(pid, clock.clone());
        let labels = [app, name];
        let m = &self.metrics;
        // Both from 0, so rate() and increase() see the first one.
        m.restarts.with_label_values(&labels);
        LoopClock {
            clock,
            lag: m.lag.with_label_values(&labels),
            stalls: m.stalls.with_label_values(&labels),
            blocked: m.blocked.with_label_values(&labels),
            last_heartbeat: (m.last_heartbeat.clone(), [app.to_owned(), name.to_owned()]),
        }
    }

    /// Counts, once each, the processes that went silent without a bye since
    /// the last call, and returns them as `(app_name, loop, pid)`.
    pub fn count_restarts(&self) -> Vec<(String, String, u32)> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for ((app, name), processes) in self.table().iter() {
            for (pid, clock) in processes {
                let mut c = lock(clock);
                if !c.down_counted && c.status(now) == LoopStatus::Down {
                    c.down_counted = true;
                    self.metrics
                        .restarts
                        .with_label_values(&[app.as_str(), name.as_str()])
                        .inc();
                    gone.push((app.clone(), name.clone(), *pid));
                }
            }
        }
        gone
    }

    /// Forgets one process of a loop (its series stay with the loop's).
    pub fn detach(&self, app: &str, name: &str, pid: u32) {
        if let Some(processes) = self.table().get_mut(&(app.to_owned(), name.to_owned())) {
            processes.remove(&pid);
        }
    }

    /// Forgets a loop, its processes and all its series.
    pub fn remove(&self, app: &str, name: &str) {
        self.table().remove(&(app.to_owned(), name.to_owned()));
        let labels = [app, name];
        let m = &self.metrics;
        let _ = m.lag.remove_label_values(&labels);
        let _ = m.stalls.remove_label_values(&labels);
        let _ = m.blocked.remove_label_values(&labels);
        let _ = m.last_heartbeat.remove_label_values(&labels);
        let _ = m.restarts.remove_label_values(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode;

    fn clock(silence: Option<Duration>) -> Clock {
        let now = Instant::now();
        Clock {
            interval: Duration::from_millis(100),
            threshold: Duration::from_millis(500),
            silence_timeout: silence,
            last_tick: now,
            last_seen: now,
            stopped: false,
            down_counted: false,
            tasks_pending: 0,
            worker: None,
        }
    }

    fn schedule(silence_timeout: Option<Duration>) -> Schedule {
        Schedule {
            interval: Duration::from_millis(10),
            threshold: Duration::from_millis(20),
            silence_timeout,
        }
    }

    fn text(registry: &Registry) -> String {
        String::from_utf8(encode(registry)).expect("utf8")
    }

    #[test]
    fn stall_grows_while_no_tick_and_a_silent_loop_goes_down() {
        let c = clock(Some(Duration::from_secs(30)));
        let t0 = c.last_tick;
        assert_eq!(c.stall(t0 + Duration::from_millis(550)), Duration::ZERO);
        assert_eq!(
            c.status(t0 + Duration::from_millis(550)),
            LoopStatus::Running
        );
        assert_eq!(
            c.stall(t0 + Duration::from_millis(700)),
            Duration::from_millis(600)
        );
        assert_eq!(c.status(t0 + Duration::from_secs(2)), LoopStatus::Stalled);
        assert_eq!(c.status(t0 + Duration::from_secs(31)), LoopStatus::Down);
        // Our own runtime never goes down.
        let c = clock(None);
        assert_eq!(
            c.status(c.last_tick + Duration::from_secs(3600)),
            LoopStatus::Stalled
        );
    }

    #[test]
    fn a_late_tick_counts_a_stall_and_bye_hides_the_loop() {
        let registry = Registry::new();
        let watchdog = Watchdog::register(&registry);
        let h = watchdog.attach(
            "a",
            "main",
            1,
            None,
            Schedule {
                interval: Duration::from_millis(100),
                threshold: Duration::from_millis(500),
                silence_timeout: Some(Duration::from_secs(30)),
            },
        );
        assert!(!h.tick(Duration::from_millis(2)));
        assert!(h.tick(Duration::from_millis(1500)));
        let t = text(&registry);
        for line in [
            r#"loopwatch_loop_stalls_total{app_name="a",loop="main"} 1"#,
            r#"loopwatch_loop_blocked_seconds_total{app_name="a",loop="main"} 1.5"#,
            r#"loopwatch_loop_stall_seconds{app_name="a",loop="main"} 0"#,
            r#"loopwatch_loop_up{app_name="a",loop="main"} 1"#,
            r#"loopwatch_loop_processes{app_name="a",loop="main"} 1"#,
            r#"loopwatch_loop_restarts_total{app_name="a",loop="main"} 0"#,
            r#"loopwatch_loop_lag_seconds_count{app_name="a",loop="main"} 2"#,
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        h.stop();
        let t = text(&registry);
        assert!(!t.contains("loopwatch_loop_up{"), "{t}");
        assert!(
            t.contains("loopwatch_loop_stalls_total{"),
            "counters stay: {t}"
        );
        watchdog.remove("a", "main");
        assert!(!text(&registry).contains("app_name=\"a\""));
    }

    #[test]
    fn one_blocked_worker_of_two_shows_its_stall_live() {
        let registry = Registry::new();
        let watchdog = Watchdog::register(&registry);
        let silence = Some(Duration::from_secs(30));
        let healthy = watchdog.attach("a", "main", 1, Some("0".into()), schedule(silence));
        let blocked = watchdog.attach("a", "main", 2, Some("1".into()), schedule(silence));
        blocked.tick(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(120));
        healthy.tick(Duration::ZERO);
        let t = text(&registry);
        let stall = crate::metrics::tests::sample(
            &t,
            r#"loopwatch_loop_stall_seconds{app_name="a",loop="main"}"#,
        );
        assert!(stall > 0.05, "the blocked worker's stall shows: {t}");
        assert!(
            t.contains(r#"loopwatch_loop_processes{app_name="a",loop="main"} 2"#),
            "{t}"
        );
        assert!(
            t.contains(
                r#"loopwatch_loop_worker_stall_seconds{app_name="a",loop="main",worker="0"} 0"#
            ),
            "{t}"
        );
        let worker1 = crate::metrics::tests::sample(
            &t,
            r#"loopwatch_loop_worker_stall_seconds{app_name="a",loop="main",worker="1"}"#,
        );
        assert!(worker1 > 0.05, "{t}");
    }

    #[test]
    fn a_process_gone_silent_is_one_restart_and_a_sibling_is_none() {
        let registry = Registry::new();
        let watchdog = Watchdog::register(&registry);
        let a = watchdog.attach(
            "a",
            "main",
            1,
            None,
            schedule(Some(Duration::from_secs(30))),
        );
        let b = watchdog.attach(
            "a",
            "main",
            2,
            None,
            schedule(Some(Duration::from_millis(1))),
        );
        a.tick(Duration::ZERO);
        b.tick(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(10));
        a.tick(Duration::ZERO);
        assert_eq!(
            watchdog.count_restarts(),
            vec![("a".into(), "main".into(), 2)]
        );
        assert!(watchdog.count_restarts().is_empty(), "counted once");
        let t = text(&registry);
        assert!(
            t.contains(r#"loopwatch_loop_restarts_total{app_name="a",loop="main"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_loop_processes{app_name="a",loop="main"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"loopwatch_loop_up{app_name="a",loop="main"} 1"#),
            "{t}"
        );
    }
}
