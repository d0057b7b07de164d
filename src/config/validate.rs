//! Semantic validation: turns a decoded [`RawConfig`] (with the command-line
//! flags merged in) into a [`ResolvedConfig`], or every problem at once, each
//! naming its key path. Each section's resolution lives beside its resolved
//! types; the sections without resolved types (ingest, runtime) are checked here.

use std::time::Duration;

use super::error::{Problem, Problems};
use super::schema::{IngestConfig, RawConfig, RuntimeConfig};
use super::web::{WebFlags, parse_listen_address};
use super::{ResolvedConfig, files, logs, postgres, probes, processes, ratelimits, web};

/// Every problem, or the resolved configuration. `flags` says which `web`
/// values came from the command line (they are merged in already).
pub fn validate(config: &RawConfig, flags: &WebFlags) -> Result<ResolvedConfig, Vec<Problem>> {
    let mut problems = Problems::default();
    let web = web::resolve(&config.web, flags, &mut problems);
    let udp_listen_address = check_ingest(&config.ingest, &mut problems);
    check_runtime(&config.runtime, &mut problems);
    let resolved = ResolvedConfig {
        web,
        ingest: config.ingest.clone(),
        udp_listen_address,
        runtime: config.runtime.clone(),
        processes: processes::resolve(&config.processes, &mut problems),
        postgres: postgres::resolve_postgres(&config.postgres, &mut problems),
        pgbouncer: postgres::resolve_pgbouncer(&config.pgbouncer, &mut problems),
        ratelimits: ratelimits::resolve(&config.ratelimits, &mut problems),
        logs: logs::resolve(&config.logs, &mut problems),
        ingest_door: web::resolve_ingest_door(&config.ingest, &mut problems),
        files: files::resolve(&config.files, &mut problems),
        probes: probes::resolve(&config.probes, &mut problems),
    };
    if problems.0.is_empty() {
        Ok(resolved)
    } else {
        Err(problems.0)
    }
}

/// Label values must stay short and printable.
pub(super) fn check_label_value(problems: &mut Problems, path: String, value: &str) {
    if value.is_empty() {
        problems.push(path, "must not be empty");
    } else if value.len() > 64 || !value.chars().all(|c| c.is_ascii_graphic()) {
        problems.push(
            path,
            format!("{value:?} must be at most 64 printable ASCII characters without spaces"),
        );
    }
}

/// The longest interval a collector may have: a value beyond it is a typo
/// (`500000000y` parses), and the schedule's arithmetic must not overflow.
pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest timeout of any request, poll or session limit.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration above `max` is a problem naming both.
pub(super) fn check_max(problems: &mut Problems, path: String, value: Duration, max: Duration) {
    if value > max {
        problems.push(
            path,
            format!(
                "{} is longer than the most allowed, {}",
                humantime::format_duration(value),
                humantime::format_duration(max)
            ),
        );
    }
}

pub(super) fn check_schedule(
    problems: &mut Problems,
    path: &str,
    interval: Duration,
    timeout: Duration,
) {
    if interval < Duration::from_millis(100) {
        problems.push(format!("{path}.interval"), "must be at least 100ms");
    }
    check_max(problems, format!("{path}.interval"), interval, MAX_INTERVAL);
    if timeout.is_zero() {
        problems.push(format!("{path}.timeout"), "must be above 0");
    } else if timeout > MAX_TIMEOUT {
        check_max(problems, format!("{path}.timeout"), timeout, MAX_TIMEOUT);
    } else if timeout > interval {
        problems.push(
            format!("{path}.timeout"),
            format!(
                "{} is longer than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
}

/// The ingest caps; returns the UDP address, `None` when UDP is off.
fn check_ingest(ingest: &IngestConfig, problems: &mut Problems) -> Option<std::net::SocketAddr> {
    let udp = &ingest.udp_listen_address;
    let address = if udp.is_empty() {
        None
    } else {
        parse_listen_address(udp)
            .map_err(|e| problems.push("ingest.udp_listen_address", e))
            .ok()
    };
    if ingest.silence_timeout < Duration::from_secs(1) {
        problems.push("ingest.silence_timeout", "must be at least 1s");
    }
    check_max(
        problems,
        "ingest.silence_timeout".into(),
        ingest.silence_timeout,
        MAX_INTERVAL,
    );
    check_max(
        problems,
        "ingest.loop_expiry".into(),
        ingest.loop_expiry,
        7 * MAX_INTERVAL,
    );
    if ingest.loop_expiry < ingest.silence_timeout {
        problems.push(
            "ingest.loop_expiry",
            "must not be shorter than ingest.silence_timeout: an alert on a dead app would resolve when its series vanish",
        );
    }
    for (key, value, max) in [
        ("max_apps", ingest.max_apps, 10_000),
        ("max_loops_per_app", ingest.max_loops_per_app, 1_000),
        ("max_tasks", ingest.max_tasks, 10_000),
        ("max_exceptions", ingest.max_exceptions, 10_000),
        ("max_sites", ingest.max_sites, 10_000),
        ("max_pools", ingest.max_pools, 1_000),
        ("max_ratelimits", ingest.max_ratelimits, 10_000),
        (
            "max_processes_per_loop",
            ingest.max_processes_per_loop,
            10_000,
        ),
        ("max_workers_per_loop", ingest.max_workers_per_loop, 1_000),
        ("max_series_per_loop", ingest.max_series_per_loop, 100_000),
        ("max_series_per_app", ingest.max_series_per_app, 1_000_000),
        ("max_series", ingest.max_series, 10_000_000),
        ("recent_stalls", ingest.recent_stalls, 1_000),
    ] {
        if value == 0 || value > max {
            problems.push(
                format!("ingest.{key}"),
                format!("must be between 1 and {max}"),
            );
        }
    }
    address
}

fn check_runtime(rt: &RuntimeConfig, problems: &mut Problems) {
    if rt.tick_interval < Duration::from_millis(10) || rt.tick_interval > Duration::from_secs(10) {
        problems.push("runtime.tick_interval", "must be between 10ms and 10s");
    }
    check_max(
        problems,
        "runtime.stall_threshold".into(),
        rt.stall_threshold,
        MAX_TIMEOUT,
    );
    if rt.stall_threshold < rt.tick_interval {
        problems.push(
            "runtime.stall_threshold",
            "must not be shorter than runtime.tick_interval",
        );
    }
    if rt.worker_threads == 0 || rt.worker_threads > 64 {
        problems.push("runtime.worker_threads", "must be between 1 and 64");
    }
}
