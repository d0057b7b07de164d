//! Event loops, one series set per `{app_name, loop}`: loopwatch's own tokio
//! runtime, and apps' loops reporting heartbeats.
//!
//! A blocked loop cannot say it is blocked, so the stall gauge is computed at
//! scrape time from the time since the last tick: it grows live while the
//! loop is blocked and drops to 0 once a tick arrives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry,
};

use crate::metrics::FamilyBuilder;

/// Lag buckets: few, from 1 ms (healthy) to 10 s (an outage).
pub const LAG_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

const LABELS: [&str; 2] = ["app_name", "loop"];

struct LoopMetrics {
    lag: HistogramVec,
    stalls: CounterVec,
    blocked: CounterVec,
    up: IntGaugeVec,
    last_heartbeat: GaugeVec,
    tasks_pending: IntGaugeVec,
}

/// Timing state of one loop, shared between its ticker and the scrape.
struct LoopState {
    /// Expected time between ticks.
    interval: Duration,
    /// Lateness beyond which the loop counts as stalled.
    threshold: Duration,
    last_tick: Mutex<Instant>,
}

impl LoopState {
    /// How far the next tick is overdue, when that exceeds the threshold.
    fn stall(&self, now: Instant) -> Duration {
        let last = *self.last_tick.lock().unwrap_or_else(|e| e.into_inner());
        let late = now.saturating_duration_since(last + self.interval);
        if late > self.threshold {
            late
        } else {
            Duration::ZERO
        }
    }
}

/// The loops being watched, by `(app_name, loop)`.
type LiveLoops = Mutex<BTreeMap<(String, String), Arc<LoopState>>>;

/// All loops known to the exporter.
pub struct Loops {
    metrics: LoopMetrics,
    live: Arc<LiveLoops>,
}

/// The handle a loop's reporter ticks through.
pub struct LoopHandle {
    state: Arc<LoopState>,
    lag: Histogram,
    stalls: prometheus::Counter,
    blocked: prometheus::Counter,
    last_heartbeat: prometheus::Gauge,
    tasks_pending: prometheus::IntGauge,
}

impl LoopHandle {
    /// Records one tick that arrived `lag` after it was due.
    pub fn tick(&self, lag: Duration) {
        *self
            .state
            .last_tick
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let lag_s = lag.as_secs_f64();
        self.lag.observe(lag_s);
        if lag > self.state.threshold {
            self.stalls.inc();
            self.blocked.inc_by(lag_s);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_heartbeat.set(now);
    }

    pub fn set_tasks_pending(&self, n: i64) {
        self.tasks_pending.set(n);
    }
}

struct StallCollector {
    desc: Desc,
    live: Arc<LiveLoops>,
}

const STALL_NAME: &str = "loopwatch_loop_stall_seconds";
const STALL_HELP: &str = "How long the loop has been blocked right now: 0 while it ticks on time, growing while it is blocked.";

impl Collector for StallCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = FamilyBuilder::default();
        for ((app, name), state) in live.iter() {
            b.gauge(
                STALL_NAME,
                STALL_HELP,
                &[("app_name", app), ("loop", name)],
                state.stall(now).as_secs_f64(),
            );
        }
        b.finish()
    }
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
        let up = IntGaugeVec::new(
            Opts::new(
                "loopwatch_loop_up",
                "Whether the loop is reporting (1) or went silent (0).",
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
        registry
            .register(Box::new(lag.clone()))
            .expect("registered once");
        registry
            .register(Box::new(stalls.clone()))
            .expect("registered once");
        registry
            .register(Box::new(blocked.clone()))
            .expect("registered once");
        registry
            .register(Box::new(up.clone()))
            .expect("registered once");
        registry
            .register(Box::new(last_heartbeat.clone()))
            .expect("registered once");
        registry
            .register(Box::new(tasks_pending.clone()))
            .expect("registered once");
        let live = Arc::new(LiveLoops::default());
        let desc = Desc::new(
            STALL_NAME.to_owned(),
            STALL_HELP.to_owned(),
            LABELS.iter().map(|s| (*s).to_owned()).collect(),
            Default::default(),
        )
        .expect("valid desc");
        registry
            .register(Box::new(StallCollector {
                desc,
                live: live.clone(),
            }))
            .expect("registered once");
        Self {
            metrics: LoopMetrics {
                lag,
                stalls,
                blocked,
                up,
                last_heartbeat,
                tasks_pending,
            },
            live,
        }
    }

    /// Starts tracking a loop that ticks every `interval`; it counts as up.
    pub fn attach(
        &self,
        app: &str,
        name: &str,
        interval: Duration,
        threshold: Duration,
    ) -> LoopHandle {
        let state = Arc::new(LoopState {
            interval,
            threshold,
            last_tick: Mutex::new(Instant::now()),
        });
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((app.to_owned(), name.to_owned()), state.clone());
        let labels = [app, name];
        self.metrics.up.with_label_values(&labels).set(1);
        LoopHandle {
            state,
            lag: self.metrics.lag.with_label_values(&labels),
            stalls: self.metrics.stalls.with_label_values(&labels),
            blocked: self.metrics.blocked.with_label_values(&labels),
            last_heartbeat: self.metrics.last_heartbeat.with_label_values(&labels),
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
        let _ = m.up.remove_label_values(&labels);
        let _ = m.last_heartbeat.remove_label_values(&labels);
        let _ = m.tasks_pending.remove_label_values(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_grows_while_no_tick_and_resets_on_tick() {
        let state = LoopState {
            interval: Duration::from_millis(100),
            threshold: Duration::from_millis(500),
            last_tick: Mutex::new(Instant::now()),
        };
        let t0 = *state.last_tick.lock().expect("lock");
        assert_eq!(state.stall(t0 + Duration::from_millis(550)), Duration::ZERO);
        assert_eq!(
            state.stall(t0 + Duration::from_millis(700)),
            Duration::from_millis(600)
        );
        assert_eq!(
            state.stall(t0 + Duration::from_millis(2100)),
            Duration::from_millis(2000)
        );
    }

    #[test]
    fn a_late_tick_counts_a_stall() {
        let registry = Registry::new();
        let loops = Loops::register(&registry);
        let h = loops.attach(
            "a",
            "main",
            Duration::from_millis(100),
            Duration::from_millis(500),
        );
        h.tick(Duration::from_millis(2));
        h.tick(Duration::from_millis(1500));
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        assert!(
            text.contains(r#"loopwatch_loop_stalls_total{app_name="a",loop="main"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loopwatch_loop_blocked_seconds_total{app_name="a",loop="main"} 1.5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loopwatch_loop_stall_seconds{app_name="a",loop="main"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loopwatch_loop_lag_seconds_count{app_name="a",loop="main"} 2"#),
            "{text}"
        );
        loops.remove("a", "main");
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        assert!(!text.contains("app_name=\"a\""), "{text}");
    }
}
