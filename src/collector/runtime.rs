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
        shared.loops.remove(APP_NAME, LOOP_NAME);
        return None;
    }
    Some(Built {
        kind: "runtime",
        target: LOOP_NAME.to_owned(),
        job: Job::Streaming(Box::new(RuntimeTicker {
            interval: config.tick_interval,
            threshold: config.stall_threshold,
            loops: shared.loops.clone(),
        })),
    })
}

struct RuntimeTicker {
    interval: Duration,
    threshold: Duration,
    loops: std::sync::Arc<crate::loops::Loops>,
}

impl Streaming for RuntimeTicker {
    fn run(&mut self) -> BoxFuture<'_, Result<(), CollectError>> {
        Box::pin(async move {
            let handle =
                self.loops
                    .attach(APP_NAME, LOOP_NAME, self.interval, self.threshold, None);
            let runtime = Handle::current();
            let mut due = Instant::now() + self.interval;
            loop {
                tokio::time::sleep_until(due).await;
                let now = Instant::now();
                handle.tick(now.saturating_duration_since(due));
                handle.set_tasks_pending(runtime.metrics().num_alive_tasks() as i64);
                due = now + self.interval;
            }
        })
    }
}
