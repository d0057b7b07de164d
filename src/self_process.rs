//! The exporter's own standard `process_*` metrics, read from `/proc/self` at
//! scrape time (a few small files). The `prometheus` crate's `process`
//! feature counts CPU in whole seconds; this one keeps the fraction.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use std::path::Path;

use procfs::process::Process;

use crate::collector::processes::soft_fd_limit;

use crate::families::{
    self, SELF_CPU, SELF_MAX_FDS, SELF_OPEN_FDS, SELF_RESIDENT_MEMORY, SELF_START_TIME,
    SELF_THREADS, SELF_VIRTUAL_MEMORY,
};
use crate::metrics::FamilyBuilder;

const FAMILIES: [families::Family; 7] = [
    SELF_CPU,
    SELF_OPEN_FDS,
    SELF_MAX_FDS,
    SELF_VIRTUAL_MEMORY,
    SELF_RESIDENT_MEMORY,
    SELF_START_TIME,
    SELF_THREADS,
];

pub struct SelfProcess {
    descs: Vec<Desc>,
    /// Opened once: `/proc/self` does not change.
    me: Option<Process>,
    ticks_per_second: f64,
    page_size: f64,
    /// Start time does not change; computed once.
    start_time: f64,
}

impl SelfProcess {
    pub fn new() -> Self {
        let descs = FAMILIES.iter().map(families::Family::desc).collect();
        let ticks_per_second = procfs::ticks_per_second() as f64;
        let start_time = Process::myself()
            .and_then(|p| p.stat())
            .map(|s| s.starttime as f64 / ticks_per_second)
            .unwrap_or_default()
            + procfs::boot_time_secs().unwrap_or_default() as f64;
        Self {
            descs,
            me: Process::myself().ok(),
            ticks_per_second,
            page_size: procfs::page_size() as f64,
            start_time,
        }
    }
}

impl Default for SelfProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for SelfProcess {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut b = FamilyBuilder::default();
        let Some(me) = &self.me else {
            return Vec::new();
        };
        if let Ok(stat) = me.stat() {
            b.counter(
                &SELF_CPU,
                &[],
                (stat.utime + stat.stime) as f64 / self.ticks_per_second,
            );
            b.gauge(&SELF_VIRTUAL_MEMORY, &[], stat.vsize as f64);
            b.gauge(&SELF_RESIDENT_MEMORY, &[], stat.rss as f64 * self.page_size);
            b.gauge(&SELF_THREADS, &[], stat.num_threads as f64);
        }
        if let Ok(n) = me.fd_count() {
            b.gauge(&SELF_OPEN_FDS, &[], n as f64);
        }
        if let Ok(limit) = soft_fd_limit(Path::new("/proc/self/limits")) {
            b.gauge(
                &SELF_MAX_FDS,
                &[],
                limit.map_or(f64::INFINITY, |v| v as f64),
            );
        }
        b.gauge(&SELF_START_TIME, &[], self.start_time);
        b.finish()
    }
}
