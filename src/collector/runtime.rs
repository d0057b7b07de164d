//! The lag ticker on loopwatch's own collector runtime: the loop
//! `{app_name="loopwatch", loop="tokio"}`, reported with the same metric
//! names as apps' loops.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::{BoxFuture, Built, CollectError, Job, Shared, Streaming};
use crate::config::RuntimeConfig;
use crate::families::{RESERVED_APP as APP_NAME, RUNTIME_LOOP as LOOP_NAME};

pub fn build(config: &RuntimeConfig, shared: &Shared) -> Option<Built> {
    if !config.enabled {
        shared.watchdog.remove(APP_NAME, LOOP_NAME);
        return None;
    }
    Some(Built {
        kind: "runtime",
        target: LOOP_NAME.to_owned(),
        job: Job::Streaming(Box::new(RuntimeTicker {
            interval: config.tick_interval,
            threshold: config.stall_threshold,
            watchdog: shared.watchdog.clone(),
        })),
    })
}

struct RuntimeTicker {
    interval: Duration,
    threshold: Duration,
    watchdog: std::sync::Arc<crate::watchdog::Watchdog>,
}

impl Streaming for RuntimeTicker {
    fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
        Box::pin(async move {
            let handle = self.watchdog.attach(
                APP_NAME,
                LOOP_NAME,
                std::process::id(),
                None,
                crate::watchdog::Schedule {
                    interval: self.interval,
                    threshold: self.threshold,
                    silence_timeout: None,
                },
            );
            let runtime = Handle::current();
            let mut due = Instant::now() + self.interval;
            loop {
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                handle.tick(now.saturating_duration_since(due));
                handle.set_tasks_pending(runtime.metrics().num_alive_tasks() as u64);
                due = now + self.interval;
            }
        })
    }
}
