//! The exporter's own standard `process_*` metrics, read from `/proc/self` at
//! scrape time (a few small files). The `prometheus` crate's `process`
//! feature counts CPU in whole seconds; this one keeps the fraction.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use std::path::Path;

use procfs::process::Process;

use crate::collector::processes::soft_fd_limit;

use crate::metrics::FamilyBuilder;

const FAMILIES: [(&str, &str); 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
    ),
    ("process_open_fds", "Number of open file descriptors."),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
    ),
    ("process_threads", "Number of OS threads in the process."),
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
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    Vec::new(),
                    Default::default(),
                )
                .expect("valid desc")
            })
            .collect();
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
        let help = |i: usize| FAMILIES[i].1;
        if let Ok(stat) = me.stat() {
            b.counter_named(
                FAMILIES[0].0,
                help(0),
                &[],
                (stat.utime + stat.stime) as f64 / self.ticks_per_second,
            );
            b.gauge_named(FAMILIES[3].0, help(3), &[], stat.vsize as f64);
            b.gauge_named(
                FAMILIES[4].0,
                help(4),
                &[],
                stat.rss as f64 * self.page_size,
            );
            b.gauge_named(FAMILIES[6].0, help(6), &[], stat.num_threads as f64);
        }
        if let Ok(n) = me.fd_count() {
            b.gauge_named(FAMILIES[1].0, help(1), &[], n as f64);
        }
        if let Ok(limit) = soft_fd_limit(Path::new("/proc/self/limits")) {
            b.gauge_named(
                FAMILIES[2].0,
                help(2),
                &[],
                limit.map_or(f64::INFINITY, |v| v as f64),
            );
        }
        b.gauge_named(FAMILIES[5].0, help(5), &[], self.start_time);
        b.finish()
    }
}
