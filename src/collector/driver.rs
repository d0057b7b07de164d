//! Runs collectors on the collector runtime and records, for each one,
//! `loopwatch_collector_{duration_seconds,success,last_success_timestamp_seconds,errors_total}`.
//!
//! Each collector runs in its own task, so one that hangs or panics never
//! delays another; a scrape only reads the last published snapshot.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use prometheus::{GaugeVec, IntCounterVec, Registry};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use tracing::Instrument;

use super::{Built, CollectError, Job, Periodic, Reason, Streaming};
use crate::families;
use crate::metrics::{Families, Slot, Snapshots, encode_families, unix_now};

/// How often a running streaming collector's last success is refreshed.
const STREAMING_ALIVE_EVERY: Duration = Duration::from_secs(5);
/// Pause before a failed streaming collector is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

struct DriverMetrics {
    duration: GaugeVec,
    success: GaugeVec,
    last_success: GaugeVec,
    errors: IntCounterVec,
}

impl DriverMetrics {
    fn register(registry: &Registry) -> Self {
        Self {
            duration: families::COLLECTOR_DURATION.gauge_vec(registry),
            success: families::COLLECTOR_SUCCESS.gauge_vec(registry),
            last_success: families::COLLECTOR_LAST_SUCCESS.gauge_vec(registry),
            errors: families::COLLECTOR_ERRORS.int_counter_vec(registry),
        }
    }

    fn remove(&self, kind: &str, target: &str) {
        let _ = self.duration.remove_label_values(&[kind, target]);
        let _ = self.success.remove_label_values(&[kind, target]);
        let _ = self.last_success.remove_label_values(&[kind, target]);
        for reason in Reason::ALL {
            let _ = self
                .errors
                .remove_label_values(&[kind, target, reason.as_str()]);
        }
    }
}

/// What the landing page and readiness check read about one collector.
pub struct CollectorStatus {
    pub kind: &'static str,
    pub target: String,
    pub schedule: Option<Duration>,
    /// Periodic: set once the first poll has finished, successful or not.
    /// Streaming: set once it has started (its first step did not fail).
    pub polled: AtomicBool,
    pub last_success: Mutex<Option<SystemTime>>,
    pub last_error: Mutex<Option<String>>,
    slot: Arc<Slot>,
}

struct Running {
    status: Arc<CollectorStatus>,
    task: JoinHandle<()>,
}

/// Starts, stops and records collectors.
pub struct Driver {
    handle: Handle,
    metrics: Arc<DriverMetrics>,
    snapshots: Snapshots,
    running: Mutex<Vec<Running>>,
    statuses: ArcSwap<Vec<Arc<CollectorStatus>>>,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

impl Driver {
    /// `handle` is the collector runtime's; the driver's own metrics go to `registry`.
    pub fn new(handle: Handle, registry: &Registry) -> Self {
        Self {
            handle,
            metrics: Arc::new(DriverMetrics::register(registry)),
            snapshots: Snapshots::default(),
            running: Mutex::new(Vec::new()),
            statuses: ArcSwap::default(),
        }
    }

    /// The collectors' published snapshots, for `/metrics`.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// Stops every running collector and starts `built` in their place.
    pub fn replace(&self, built: Vec<Built>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for old in running.drain(..) {
            old.task.abort();
            self.metrics.remove(old.status.kind, &old.status.target);
        }
        for b in built {
            running.push(self.start(b));
        }
        self.snapshots
            .replace(running.iter().map(|r| r.status.slot.clone()).collect());
        self.statuses
            .store(Arc::new(running.iter().map(|r| r.status.clone()).collect()));
    }

    /// Stops every collector.
    pub fn stop_all(&self) {
        self.replace(Vec::new());
    }

    /// The active collectors, in configuration order.
    pub fn statuses(&self) -> Arc<Vec<Arc<CollectorStatus>>> {
        self.statuses.load_full()
    }

    /// Ready once every periodic collector has finished its first poll and
    /// every streaming collector runs: a streaming collector that fails (a
    /// UDP port in use) makes the exporter unready until it runs again.
    /// `Err` says why, one line per collector.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut waiting = Vec::new();
        for s in self.statuses.load().iter() {
            let started = s.polled.load(Ordering::Acquire);
            match s.schedule {
                Some(_) if !started => {
                    waiting.push(format!("{}/{}: first poll running", s.kind, s.target))
                }
                Some(_) => {}
                None => {
                    let error = s.last_error.lock().unwrap_or_else(|e| e.into_inner());
                    match (&*error, started) {
                        (Some(e), _) => {
                            waiting.push(format!("{}/{}: failing: {e}", s.kind, s.target))
                        }
                        (None, false) => waiting.push(format!("{}/{}: starting", s.kind, s.target)),
                        (None, true) => {}
                    }
                }
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    fn start(&self, built: Built) -> Running {
        let Built { kind, target, job } = built;
        for reason in Reason::ALL {
            self.metrics
                .errors
                .with_label_values(&[kind, &target, reason.as_str()]);
        }
        let schedule = match &job {
            Job::Periodic { interval, .. } => Some(*interval),
            Job::Streaming(_) => None,
        };
        let status = Arc::new(CollectorStatus {
            kind,
            target,
            schedule,
            polled: AtomicBool::new(false),
            last_success: Mutex::new(None),
            last_error: Mutex::new(None),
            slot: Arc::new(Slot::default()),
        });
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            status: status.clone(),
        };
        // Every line a collector logs carries its kind and target.
        let span = tracing::info_span!("collector", kind, target = %status.target);
        let task = match job {
            Job::Periodic {
                interval,
                timeout,
                collector,
            } => self
                .handle
                .spawn(run_periodic(collector, interval, timeout, recorder).instrument(span)),
            Job::Streaming(collector) => self
                .handle
                .spawn(run_streaming(collector, recorder).instrument(span)),
        };
        Running { status, task }
    }
}

/// Records the outcome of polls for one collector.
struct Recorder {
    metrics: Arc<DriverMetrics>,
    status: Arc<CollectorStatus>,
}

impl Recorder {
    fn labels(&self) -> [&str; 2] {
        [self.status.kind, &self.status.target]
    }

    fn success(&self) {
        self.metrics
            .success
            .with_label_values(&self.labels())
            .set(1.0);
        self.metrics
            .last_success
            .with_label_values(&self.labels())
            .set(unix_now());
        *self
            .status
            .last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        let recovered = self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(error) = recovered {
            tracing::info!(collector = self.status.kind, target = %self.status.target, previous_error = %error, "Collector recovered");
        }
    }

    fn failure(&self, error: &CollectError) {
        let [kind, target] = self.labels();
        self.metrics
            .success
            .with_label_values(&[kind, target])
            .set(0.0);
        self.metrics
            .errors
            .with_label_values(&[kind, target, error.reason.as_str()])
            .inc();
        let mut last = self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // One warning per change of error, not one per poll.
        if last.as_deref() != Some(error.message.as_str()) {
            tracing::warn!(collector = kind, target, reason = error.reason.as_str(), error = %error.message, "Collector poll failed");
        } else {
            tracing::debug!(collector = kind, target, reason = error.reason.as_str(), error = %error.message, "Collector poll failed again");
        }
        *last = Some(error.message.clone());
    }
}

async fn run_periodic(
    mut collector: Box<dyn Periodic>,
    interval: Duration,
    timeout: Duration,
    recorder: Recorder,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let phase = collector.phase().min(interval);
    let mut first = true;
    loop {
        let tick = ticker.tick().await;
        if std::mem::take(&mut first) && !phase.is_zero() {
            ticker.reset_at(tick + interval + phase);
        }
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(timeout, AssertUnwindSafe(collector.poll()).catch_unwind()).await;
        let result: Result<Families, CollectError> = match outcome {
            Err(_) => Err(CollectError::new(
                Reason::Timeout,
                format!(
                    "poll did not finish within {}",
                    humantime::format_duration(timeout)
                ),
            )),
            Ok(Err(panic)) => Err(CollectError::new(
                Reason::Other,
                format!("poll panicked: {}", panic_message(&*panic)),
            )),
            Ok(Ok(result)) => result,
        };
        recorder
            .metrics
            .duration
            .with_label_values(&recorder.labels())
            .set(started.elapsed().as_secs_f64());
        match result {
            Ok(families) => {
                recorder
                    .status
                    .slot
                    .store(Arc::new(encode_families(&families)));
                recorder.success();
            }
            Err(error) => {
                recorder
                    .status
                    .slot
                    .store(Arc::new(encode_families(&collector.down())));
                recorder.failure(&error);
            }
        }
        recorder.status.polled.store(true, Ordering::Release);
    }
}

async fn run_streaming(mut collector: Box<dyn Streaming>, recorder: Recorder) {
    loop {
        let run = AssertUnwindSafe(collector.run()).catch_unwind();
        tokio::pin!(run);
        // Its first step binds and opens what it needs: up once that did not
        // fail at the first start; after a failure, only once it has run a
        // while again, so a collector failing at every start does not flap.
        let first_step = run.as_mut().now_or_never();
        if first_step.is_none() && !recorder.status.polled.swap(true, Ordering::AcqRel) {
            recorder.success();
        }
        // While it runs, it is alive: keep its last success current.
        let mut alive = tokio::time::interval_at(
            tokio::time::Instant::now() + RESTART_PAUSE,
            STREAMING_ALIVE_EVERY,
        );
        let outcome = match first_step {
            Some(outcome) => outcome,
            None => loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    _ = alive.tick() => recorder.success(),
                }
            },
        };
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(panic) => CollectError::new(
                Reason::Other,
                format!("panicked: {}", panic_message(&*panic)),
            ),
        };
        recorder.failure(&error);
        tokio::time::sleep(RESTART_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::BoxFuture;
    use crate::families::{Family, Kind};
    use crate::metrics::{FamilyBuilder, encode_with};

    const TEST_VALUE: Family = Family {
        name: "test_value",
        help: "A value.",
        kind: Kind::Gauge,
        labels: &[],
    };

    struct Scripted {
        step: u32,
    }

    impl Periodic for Scripted {
        fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
            Box::pin(async move {
                self.step += 1;
                match self.step {
                    1 => {
                        let mut b = FamilyBuilder::default();
                        b.gauge(&TEST_VALUE, &[], 7.0);
                        Ok(b.finish())
                    }
                    2 => Err(CollectError::new(Reason::Connect, "refused")),
                    3 => panic!("boom"),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Families::new())
                    }
                }
            })
        }
    }

    fn scrape(registry: &Registry, driver: &Driver) -> String {
        String::from_utf8(encode_with(registry, driver.snapshots())).expect("utf8")
    }

    #[tokio::test(start_paused = true)]
    async fn records_success_errors_panics_and_timeouts() {
        let registry = Registry::new();
        let driver = Driver::new(Handle::current(), &registry);
        driver.replace(vec![Built {
            kind: "test",
            target: "t".into(),
            job: Job::Periodic {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
                collector: Box::new(Scripted { step: 0 }),
            },
        }]);
        let labels = r#"collector="test",target="t""#;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let text = scrape(&registry, &driver);
        assert!(text.contains("test_value 7\n"), "{text}");
        assert!(text.contains(&format!("loopwatch_collector_success{{{labels}}} 1")));
        assert_eq!(driver.readiness(), Ok(()));

        tokio::time::sleep(Duration::from_secs(10)).await;
        let text = scrape(&registry, &driver);
        assert!(
            !text.contains("test_value"),
            "a failed poll drops the values: {text}"
        );
        assert!(text.contains(&format!("loopwatch_collector_success{{{labels}}} 0")));
        assert!(text.contains(r#"loopwatch_collector_errors_total{collector="test",reason="connect",target="t"} 1"#), "{text}");

        tokio::time::sleep(Duration::from_secs(10)).await;
        let text = scrape(&registry, &driver);
        assert!(
            text.contains(
                r#"loopwatch_collector_errors_total{collector="test",reason="other",target="t"} 1"#
            ),
            "a panic is counted: {text}"
        );

        tokio::time::sleep(Duration::from_secs(12)).await;
        let text = scrape(&registry, &driver);
        assert!(text.contains(r#"loopwatch_collector_errors_total{collector="test",reason="timeout",target="t"} 1"#), "a hang is a timeout: {text}");
        assert!(text.contains("loopwatch_collector_last_success_timestamp_seconds"));

        driver.stop_all();
        let text = scrape(&registry, &driver);
        assert!(
            !text.contains("collector=\"test\""),
            "stopped collectors leave no series: {text}"
        );
    }

    /// Records when it was polled.
    struct Phased {
        polls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl Periodic for Phased {
        fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
            Box::pin(async move {
                self.polls
                    .lock()
                    .expect("lock")
                    .push(tokio::time::Instant::now());
                Ok(Families::new())
            })
        }

        fn phase(&self) -> Duration {
            Duration::from_secs(4)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_shifts_every_poll_after_the_first() {
        let registry = Registry::new();
        let driver = Driver::new(Handle::current(), &registry);
        let polls = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        driver.replace(vec![Built {
            kind: "test",
            target: "phased".into(),
            job: Job::Periodic {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
                collector: Box::new(Phased {
                    polls: polls.clone(),
                }),
            },
        }]);
        tokio::time::sleep(Duration::from_secs(35)).await;
        let offsets: Vec<u64> = polls
            .lock()
            .expect("lock")
            .iter()
            .map(|t| t.duration_since(start).as_secs())
            .collect();
        assert_eq!(offsets, vec![0, 14, 24, 34]);
        driver.stop_all();
    }

    /// Fails at every start, as a UDP receiver whose port is taken; or runs.
    struct Stream {
        fail: Arc<AtomicBool>,
    }

    impl Streaming for Stream {
        fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
            Box::pin(async move {
                if self.fail.load(Ordering::Relaxed) {
                    return Err(CollectError::new(
                        Reason::Io,
                        "cannot bind UDP 127.0.0.1:1: Address already in use",
                    ));
                }
                std::future::pending().await
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_streaming_collector_makes_the_exporter_unready() {
        let registry = Registry::new();
        let driver = Driver::new(Handle::current(), &registry);
        let fail = Arc::new(AtomicBool::new(true));
        driver.replace(vec![Built {
            kind: "ingest",
            target: "udp".into(),
            job: Job::Streaming(Box::new(Stream { fail: fail.clone() })),
        }]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let why = driver.readiness().expect_err("unready while failing");
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with("ingest/udp: failing: cannot bind UDP"),
            "{why:?}"
        );
        let text = scrape(&registry, &driver);
        assert!(
            text.contains(r#"loopwatch_collector_success{collector="ingest",target="udp"} 0"#),
            "{text}"
        );

        // The port is free again: ready once it has run a while.
        fail.store(false, Ordering::Relaxed);
        tokio::time::sleep(RESTART_PAUSE * 3).await;
        assert_eq!(driver.readiness(), Ok(()));
        let text = scrape(&registry, &driver);
        assert!(
            text.contains(r#"loopwatch_collector_success{collector="ingest",target="udp"} 1"#),
            "{text}"
        );
        driver.stop_all();
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_streaming_collector_is_ready_at_once() {
        let registry = Registry::new();
        let driver = Driver::new(Handle::current(), &registry);
        driver.replace(vec![Built {
            kind: "ingest",
            target: "udp".into(),
            job: Job::Streaming(Box::new(Stream {
                fail: Arc::new(AtomicBool::new(false)),
            })),
        }]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(driver.readiness(), Ok(()));
        driver.stop_all();
    }
}
