//! Event loops, one series set per `{app_name, loop}`: loopwatch's own tokio
//! runtime, and apps' loops reporting heartbeats.
//!
//! A blocked loop cannot say it is blocked, so `loopwatch_loop_stall_seconds`
//! and `loopwatch_loop_up` are computed at scrape time from the time since
//! the last tick: the stall grows live while the loop is blocked and drops to
//! 0 once a tick arrives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use crate::metrics::{FamilyBuilder, unix_now};

/// Lag buckets: few, from 1 ms (healthy) to 10 s (an outage).
pub const LAG_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

const LABELS: [&str; 2] = ["app_name", "loop"];

const STALL_NAME: &str = "loopwatch_loop_stall_seconds";
const STALL_HELP: &str = "How long the loop has been blocked right now: 0 while it ticks on time, growing while it is blocked.";
const UP_NAME: &str = "loopwatch_loop_up";
const UP_HELP: &str = "Whether the loop is reporting (1) or went silent without saying bye (0).";

struct LoopMetrics {
    lag: HistogramVec,
    stalls: CounterVec,
    blocked: CounterVec,
    last_heartbeat: GaugeVec,
    tasks_pending: IntGaugeVec,
}

/// What the watchdog knows about a loop right now.
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
}

/// Timing of one loop, shared between its reporter and the scrape.
#[derive(Debug)]
struct Timing {
    /// Expected time between ticks.
    interval: Duration,
    /// Lateness beyond which the loop counts as stalled.
    threshold: Duration,
    /// Silence after which the loop is down; `None`: never (our own runtime).
    silence_timeout: Option<Duration>,
    last_tick: Instant,
    /// Last sign of life: a tick or a stall report from the app's watchdog.
    last_seen: Instant,
    stopped: bool,
}

impl Timing {
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
}

/// The loops being watched, by `(app_name, loop)`.
type LiveLoops = Mutex<BTreeMap<(String, String), Arc<Mutex<Timing>>>>;

/// All loops known to the exporter.
pub struct Loops {
    metrics: LoopMetrics,
    live: Arc<LiveLoops>,
}

/// The handle a loop's reporter records through.
pub struct LoopHandle {
    timing: Arc<Mutex<Timing>>,
    lag: Histogram,
    stalls: Counter,
    blocked: Counter,
    /// Created at the first tick: a 0 timestamp would read as 1970.
    last_heartbeat: (GaugeVec, [String; 2]),
    tasks_pending: IntGauge,
}

impl LoopHandle {
    fn timing(&self) -> std::sync::MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one tick that ran `lag` after it was due. Returns true when
    /// that lateness counted as a stall.
    pub fn tick(&self, lag: Duration) -> bool {
        let threshold = {
            let mut t = self.timing();
            let now = Instant::now();
            t.last_tick = now;
            t.last_seen = now;
            t.stopped = false;
            t.threshold
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
        self.timing().last_seen = Instant::now();
    }

    /// Updates the schedule the loop announced.
    pub fn set_schedule(&self, interval: Duration, threshold: Duration) {
        let mut t = self.timing();
        t.interval = interval;
        t.threshold = threshold;
    }

    /// A clean shutdown: the loop is neither stalled nor down.
    pub fn stop(&self) {
        self.timing().stopped = true;
    }

    pub fn status(&self) -> LoopStatus {
        self.timing().status(Instant::now())
    }

    /// The current stall, zero unless stalled.
    pub fn stall(&self) -> Duration {
        let t = self.timing();
        let now = Instant::now();
        match t.status(now) {
            LoopStatus::Stalled => t.stall(now),
            _ => Duration::ZERO,
        }
    }

    /// Time since the last sign of life.
    pub fn silent_for(&self) -> Duration {
        self.timing().last_seen.elapsed()
    }

    pub fn set_tasks_pending(&self, n: i64) {
        self.tasks_pending.set(n);
    }
}

struct WatchdogCollector {
    descs: Vec<Desc>,
    live: Arc<LiveLoops>,
}

impl Collector for WatchdogCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = FamilyBuilder::default();
        for ((app, name), timing) in live.iter() {
            let t = timing.lock().unwrap_or_else(|e| e.into_inner());
            let labels = [("app_name", app.as_str()), ("loop", name.as_str())];
            let (up, stall) = match t.status(now) {
                LoopStatus::Stopped => continue,
                LoopStatus::Down => (0.0, 0.0),
                LoopStatus::Running | LoopStatus::Stalled => (1.0, t.stall(now).as_secs_f64()),
            };
            b.gauge_named(UP_NAME, UP_HELP, &labels, up);
            b.gauge_named(STALL_NAME, STALL_HELP, &labels, stall);
        }
        b.finish()
    }
}

fn register<T: Collector + Clone + 'static>(registry: &Registry, metric: &T) {
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
}

impl Loops {
    pub fn register(registry: &Registry) -> Self {
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "loopwatch_loop_lag_seconds",
                "How late each tick of the loop ran compared to when it was due.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &LABELS,
        )
        .expect("valid metric");
        let stalls = CounterVec::new(
            Opts::new(
                "loopwatch_loop_stalls_total",
                "Ticks that arrived later than the stall threshold.",
            ),
            &LABELS,
        )
        .expect("valid metric");
        let blocked = CounterVec::new(
            Opts::new(
                "loopwatch_loop_blocked_seconds_total",
                "Total time the loop was blocked in stalls.",
            ),
            &LABELS,
        )
        .expect("valid metric");
        let last_heartbeat = GaugeVec::new(
            Opts::new(
                "loopwatch_loop_last_heartbeat_timestamp_seconds",
                "Unix time of the loop's last tick.",
            ),
            &LABELS,
        )
        .expect("valid metric");
        let tasks_pending = IntGaugeVec::new(
            Opts::new(
                "loopwatch_tasks_pending",
                "Tasks alive on the loop (created and not finished).",
            ),
            &LABELS,
        )
        .expect("valid metric");
        register(registry, &lag);
        register(registry, &stalls);
        register(registry, &blocked);
        register(registry, &last_heartbeat);
        register(registry, &tasks_pending);
        let live = Arc::new(LiveLoops::default());
        let descs = [(STALL_NAME, STALL_HELP), (UP_NAME, UP_HELP)]
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    LABELS.iter().map(|s| (*s).to_owned()).collect(),
                    Default::default(),
                )
                .expect("valid desc")
            })
            .collect();
        registry
            .register(Box::new(WatchdogCollector {
                descs,
                live: live.clone(),
            }))
            .expect("registered once");
        Self {
            metrics: LoopMetrics {
                lag,
                stalls,
                blocked,
                last_heartbeat,
                tasks_pending,
            },
            live,
        }
    }

    /// Starts watching a loop that ticks every `interval`. A loop that was
    /// already known keeps its counters (an app's restart).
    pub fn attach(
        &self,
        app: &str,
        name: &str,
        interval: Duration,
        threshold: Duration,
        silence_timeout: Option<Duration>,
    ) -> LoopHandle {
        let now = Instant::now();
        let timing = Arc::new(Mutex::new(Timing {
            interval,
            threshold,
            silence_timeout,
            last_tick: now,
            last_seen: now,
            stopped: false,
        }));
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((app.to_owned(), name.to_owned()), timing.clone());
        let labels = [app, name];
        LoopHandle {
            timing,
            lag: self.metrics.lag.with_label_values(&labels),
            stalls: self.metrics.stalls.with_label_values(&labels),
            blocked: self.metrics.blocked.with_label_values(&labels),
            last_heartbeat: (
                self.metrics.last_heartbeat.clone(),
                [app.to_owned(), name.to_owned()],
            ),
            tasks_pending: self.metrics.tasks_pending.with_label_values(&labels),
        }
    }

    /// Forgets a loop and all its series.
    pub fn remove(&self, app: &str, name: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(app.to_owned(), name.to_owned()));
        let labels = [app, name];
        let m = &self.metrics;
        let _ = m.lag.remove_label_values(&labels);
        let _ = m.stalls.remove_label_values(&labels);
        let _ = m.blocked.remove_label_values(&labels);
        let _ = m.last_heartbeat.remove_label_values(&labels);
        let _ = m.tasks_pending.remove_label_values(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(silence: Option<Duration>) -> Timing {
        let now = Instant::now();
        Timing {
            interval: Duration::from_millis(100),
            threshold: Duration::from_millis(500),
            silence_timeout: silence,
            last_tick: now,
            last_seen: now,
            stopped: false,
        }
    }

    #[test]
    fn stall_grows_while_no_tick_and_a_silent_loop_goes_down() {
        let t = timing(Some(Duration::from_secs(30)));
        let t0 = t.last_tick;
        assert_eq!(t.stall(t0 + Duration::from_millis(550)), Duration::ZERO);
        assert_eq!(
            t.status(t0 + Duration::from_millis(550)),
            LoopStatus::Running
        );
        assert_eq!(
            t.stall(t0 + Duration::from_millis(700)),
            Duration::from_millis(600)
        );
        assert_eq!(t.status(t0 + Duration::from_secs(2)), LoopStatus::Stalled);
        assert_eq!(t.status(t0 + Duration::from_secs(31)), LoopStatus::Down);
        // Our own runtime never goes down.
        let t = timing(None);
        assert_eq!(
            t.status(t.last_tick + Duration::from_secs(3600)),
            LoopStatus::Stalled
        );
    }

    #[test]
    fn a_late_tick_counts_a_stall_and_bye_hides_the_loop() {
        let registry = Registry::new();
        let loops = Loops::register(&registry);
        let h = loops.attach(
            "a",
            "main",
            Duration::from_millis(100),
            Duration::from_millis(500),
            Some(Duration::from_secs(30)),
        );
        assert!(!h.tick(Duration::from_millis(2)));
        assert!(h.tick(Duration::from_millis(1500)));
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        for line in [
            r#"loopwatch_loop_stalls_total{app_name="a",loop="main"} 1"#,
            r#"loopwatch_loop_blocked_seconds_total{app_name="a",loop="main"} 1.5"#,
            r#"loopwatch_loop_stall_seconds{app_name="a",loop="main"} 0"#,
            r#"loopwatch_loop_up{app_name="a",loop="main"} 1"#,
            r#"loopwatch_loop_lag_seconds_count{app_name="a",loop="main"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        h.stop();
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        assert!(!text.contains("loopwatch_loop_up{"), "{text}");
        assert!(
            text.contains("loopwatch_loop_stalls_total{"),
            "counters stay: {text}"
        );
        loops.remove("a", "main");
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        assert!(!text.contains("app_name=\"a\""), "{text}");
    }
}
