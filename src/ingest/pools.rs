//! An app's connection pools as its processes report them: each process's
//! latest report is kept apart by pid, the gauges are the sums over the
//! processes that report, and the cumulative counters (acquires, timeouts,
//! wait) are added as deltas, so a process that goes away never makes a
//! counter decrease.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Series;
use super::budget::{Budget, POOL_SERIES, Taken};
use super::fold;
use super::protocol::Pool;
use crate::config::IngestConfig;
use crate::families::FoldKind;
use crate::families::OTHER;

/// Reports kept per pool label at most: a pool folded into `other` keeps one
/// per process and original name, and a client must not grow it without end.
const MAX_REPORTS_PER_POOL: usize = 1000;

/// size, max, in use, waiting, waiting max.
type Gauges = [u64; 5];

struct Report {
    gauges: Gauges,
    /// The cumulative counters as last reported: acquires, timeouts, wait.
    acquires: u64,
    timeouts: u64,
    wait_seconds: f64,
    seen: Instant,
}

#[derive(Default)]
struct PoolEntry {
    /// By `(pid, pool name as sent)`.
    reports: HashMap<(u32, String), Report>,
    last_report: Option<Instant>,
    /// Whether its series were taken from the budget (`other` is not).
    budgeted: bool,
}

#[derive(Default)]
pub(super) struct Pools {
    /// Label values in use, for the cap.
    names: HashSet<String>,
    pools: HashMap<String, PoolEntry>,
}

impl Pools {
    pub(super) fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    pub(super) fn report(
        &mut self,
        series: &Series,
        app: &str,
        pid: u32,
        p: &Pool,
        config: &IngestConfig,
        (budget, taken): (&mut Budget, &mut Taken),
    ) {
        let (mut name, mut folded) = fold(&mut self.names, &p.pool, config.max_pools);
        let mut budgeted = false;
        if !folded && !self.pools.contains_key(&name) {
            budgeted = budget.take_for_app(taken, POOL_SERIES);
            if !budgeted {
                self.names.remove(&name);
                (name, folded) = (OTHER.to_owned(), true);
            }
        }
        if folded {
            series.folded(FoldKind::Pool, 1.0);
        }
        let entry = self.pools.entry(name.clone()).or_default();
        entry.budgeted |= budgeted;
        let labels = [app, name.as_str()];
        if entry.last_report.is_none() {
            // From 0, so rate() sees the first timeout.
            for counter in series.pool_counters() {
                counter.with_label_values(&labels);
            }
        }
        entry.last_report = Some(Instant::now());
        let key = (pid, p.pool.clone());
        if !entry.reports.contains_key(&key) && entry.reports.len() >= MAX_REPORTS_PER_POOL {
            return;
        }
        let report = entry.reports.entry(key).or_insert(Report {
            gauges: [0; 5],
            acquires: 0,
            timeouts: 0,
            wait_seconds: 0.0,
            seen: Instant::now(),
        });
        report.gauges = [
            p.size,
            p.max,
            p.in_use,
            p.waiting,
            p.waiting_max.unwrap_or(p.waiting).max(p.waiting),
        ];
        report.seen = Instant::now();
        let [acquires, timeouts, wait] = series.pool_counters();
        if let Some(n) = p.acquires {
            acquires
                .with_label_values(&labels)
                .inc_by(n.saturating_sub(report.acquires) as f64);
            report.acquires = report.acquires.max(n);
        }
        if let Some(n) = p.acquire_timeouts {
            timeouts
                .with_label_values(&labels)
                .inc_by(n.saturating_sub(report.timeouts) as f64);
            report.timeouts = report.timeouts.max(n);
        }
        if let Some(s) = p.wait_seconds {
            wait.with_label_values(&labels)
                .inc_by((s - report.wait_seconds).max(0.0));
            report.wait_seconds = report.wait_seconds.max(s);
        }
        publish(series, app, &name, entry);
    }

    /// Forgets the reports of processes for which `gone(pid, last report)` holds.
    pub(super) fn drop_reports(
        &mut self,
        series: &Series,
        app: &str,
        mut gone: impl FnMut(u32, Instant) -> bool,
    ) {
        for (name, entry) in &mut self.pools {
            let before = entry.reports.len();
            entry.reports.retain(|(pid, _), r| !gone(*pid, r.seen));
            if entry.reports.len() != before {
                publish(series, app, name, entry);
            }
        }
    }

    /// Removes the series of pools nobody reported for `expiry`.
    pub(super) fn expire(
        &mut self,
        series: &Series,
        app: &str,
        expiry: Duration,
        (budget, taken): (&mut Budget, &mut Taken),
    ) {
        self.pools.retain(|name, entry| {
            let keep = !entry.reports.is_empty()
                || entry.last_report.is_some_and(|t| t.elapsed() <= expiry);
            if !keep {
                remove_pool_series(series, app, name);
                if entry.budgeted {
                    budget.release_for_app(taken, POOL_SERIES);
                }
            }
            keep
        });
        let pools = &self.pools;
        self.names.retain(|n| pools.contains_key(n));
    }
}

/// Removes every pool's series (the app is gone).
impl Pools {
    pub(super) fn remove_series(&self, series: &Series, app: &str) {
        for name in self.pools.keys() {
            remove_pool_series(series, app, name);
        }
    }
}

fn remove_pool_series(series: &Series, app: &str, name: &str) {
    let labels = [app, name];
    for gauge in series.pool_gauges() {
        let _ = gauge.remove_label_values(&labels);
    }
    for counter in series.pool_counters() {
        let _ = counter.remove_label_values(&labels);
    }
}

/// Sets the pool's gauges to the sums over the processes that report it.
fn publish(series: &Series, app: &str, name: &str, entry: &PoolEntry) {
    let mut sums: Gauges = [0; 5];
    for report in entry.reports.values() {
        for (sum, v) in sums.iter_mut().zip(report.gauges) {
            *sum = sum.saturating_add(v);
        }
    }
    for (gauge, sum) in series.pool_gauges().iter().zip(sums) {
        gauge.with_label_values(&[app, name]).set(sum as f64);
    }
}
