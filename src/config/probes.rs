//! The `probes` section resolved: the URL parsed (and checked for
//! credentials), the method, the header values built once and marked
//! sensitive (so they never print), the expected statuses as ranges, the
//! body regex compiled, the CA certificates read, and the concurrency
//! probe's levels checked against its caps.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Certificate, Method, Url};

use super::error::Problems;
use super::ratelimits::{parse_url, read_ca_file};
use super::schema::{ProbeTargetConfig, StatusSpec};
use super::secret;
use super::validate::{check_label_value, check_schedule};

/// Requests one burst of a concurrency probe sends at most.
pub const MAX_CONCURRENCY: usize = 50;
/// Bursts of one probe start this far apart at least.
pub const MIN_CONCURRENCY_INTERVAL: Duration = Duration::from_secs(30);
/// Levels of one concurrency probe at most.
const MAX_LEVELS: usize = 4;
/// A body is read this far at most, whatever `max_body_bytes` says.
const MAX_BODY_LIMIT: usize = 16 << 20;

/// An HTTP(S) endpoint to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The `probe` label value.
    pub name: String,
    pub url: Url,
    pub method: Method,
    /// Name and value; each value is marked sensitive (`Debug` prints `Sensitive`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Statuses that mean up.
    pub expected_status: Vec<RangeInclusive<u16>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub body_match: Option<Regex>,
    pub max_body_bytes: usize,
    pub max_redirects: usize,
    /// Extra CA certificates, read from `tls.ca_file` at load.
    pub ca_certificates: Vec<Certificate>,
    pub insecure_skip_verify: bool,
    pub concurrency: Option<Concurrency>,
}

/// A concurrency probe: one burst per level, a round per `interval` at most.
#[derive(Debug, Clone)]
pub struct Concurrency {
    /// Requests sent at once, each at most [`MAX_CONCURRENCY`].
    pub levels: Vec<usize>,
    pub interval: Duration,
    /// How long one round of bursts may take: a request timeout per level,
    /// one more for the single request it may wait for, and a second.
    pub timeout: Duration,
}

/// `200`, `"200-299"` or `"2xx"` as a range.
fn status_range(spec: &StatusSpec) -> Result<RangeInclusive<u16>, String> {
    let valid = |s: u16| (100..=599).contains(&s);
    let range = match spec {
        StatusSpec::Code(c) => *c..=*c,
        StatusSpec::Text(t) => {
            let t = t.trim();
            if let Some(class) = t.strip_suffix("xx").or_else(|| t.strip_suffix("XX")) {
                match class.parse::<u16>() {
                    Ok(c) if (1..=5).contains(&c) => c * 100..=c * 100 + 99,
                    _ => return Err(format!("{t:?} is not a status class (1xx to 5xx)")),
                }
            } else if let Some((lo, hi)) = t.split_once('-') {
                match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                    (Ok(lo), Ok(hi)) if lo <= hi => lo..=hi,
                    _ => return Err(format!("{t:?} is not a status range such as 200-299")),
                }
            } else {
                match t.parse::<u16>() {
                    Ok(c) => c..=c,
                    Err(_) => {
                        return Err(format!(
                            "{t:?} is not a status, a range (200-299) or a class (2xx)"
                        ));
                    }
                }
            }
        }
    };
    if valid(*range.start()) && valid(*range.end()) {
        Ok(range)
    } else {
        Err(format!(
            "{}-{} is outside the HTTP statuses 100 to 599",
            range.start(),
            range.end()
        ))
    }
}

pub(super) fn resolve(targets: &[ProbeTargetConfig], problems: &mut Problems) -> Vec<ProbeTarget> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("probes[{i}]");
        let before = problems.0.len();
        check_label_value(problems, format!("{path}.name"), &t.name);
        if !seen.insert(t.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier probe", t.name),
            );
        }
        check_schedule(problems, &path, t.interval, t.timeout);
        if let Some(target) = resolve_target(problems, &path, t) {
            if problems.0.len() == before {
                resolved.push(target);
            }
        }
    }
    resolved
}

fn resolve_target(
    problems: &mut Problems,
    path: &str,
    t: &ProbeTargetConfig,
) -> Option<ProbeTarget> {
    let url = parse_url(&t.url)
        .map_err(|e| problems.push(format!("{path}.url"), e))
        .ok();
    let method = match Method::from_bytes(t.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => Some(m),
        Err(_) => {
            problems.push(
                format!("{path}.method"),
                format!("{:?} is not an HTTP method", t.method),
            );
            None
        }
    };
    let mut headers = Vec::new();
    for (j, h) in t.headers.iter().enumerate() {
        let hpath = format!("{path}.headers[{j}]");
        let name = match HeaderName::from_bytes(h.name.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(
                    format!("{hpath}.name"),
                    format!("{:?} is not an HTTP header name", h.name),
                );
                None
            }
        };
        let value = match secret::resolve(h.value.as_ref(), h.value_file.as_deref()) {
            Ok(Some(v)) => match HeaderValue::from_str(v.expose()) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Some(value)
                }
                Err(_) => {
                    problems.push(
                        format!("{hpath}.value"),
                        "contains characters an HTTP header cannot carry",
                    );
                    None
                }
            },
            Ok(None) => {
                problems.push(format!("{hpath}.value"), "give value or value_file");
                None
            }
            Err(e) => {
                problems.push(format!("{hpath}.{}", e.key("value", "value_file")), e);
                None
            }
        };
        if let (Some(name), Some(value)) = (name, value) {
            headers.push((name, value));
        }
    }
    let mut expected_status = Vec::new();
    if t.expected_status.is_empty() {
        problems.push(format!("{path}.expected_status"), "must not be empty");
    }
    for (j, spec) in t.expected_status.iter().enumerate() {
        match status_range(spec) {
            Ok(r) => expected_status.push(r),
            Err(e) => problems.push(format!("{path}.expected_status[{j}]"), e),
        }
    }
    let body_match = t.body_match.as_ref().and_then(|re| match Regex::new(re) {
        Ok(re) => Some(re),
        Err(e) => {
            let first_line = e.to_string().lines().last().unwrap_or_default().to_owned();
            problems.push(
                format!("{path}.body_match"),
                format!("invalid regular expression {re:?}: {first_line}"),
            );
            None
        }
    });
    if t.max_body_bytes == 0 || t.max_body_bytes > MAX_BODY_LIMIT {
        problems.push(
            format!("{path}.max_body_bytes"),
            format!("must be between 1 and {MAX_BODY_LIMIT}"),
        );
    }
    if t.max_redirects > 10 {
        problems.push(format!("{path}.max_redirects"), "must be at most 10");
    }
    let ca_certificates = match &t.tls.ca_file {
        Some(ca) => read_ca_file(ca).unwrap_or_else(|e| {
            problems.push(format!("{path}.tls.ca_file"), e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    if t.tls.insecure_skip_verify && t.tls.ca_file.is_some() {
        problems.push(
            format!("{path}.tls.insecure_skip_verify"),
            "verifies nothing, so tls.ca_file would be ignored: give one of them",
        );
    }
    let concurrency = match &t.concurrency {
        Some(c) if c.enabled => {
            let cpath = format!("{path}.concurrency");
            if c.levels.is_empty() || c.levels.len() > MAX_LEVELS {
                problems.push(
                    format!("{cpath}.levels"),
                    format!("give 1 to {MAX_LEVELS} levels"),
                );
            }
            let mut distinct = HashSet::new();
            for (j, level) in c.levels.iter().enumerate() {
                if !(2..=MAX_CONCURRENCY).contains(level) {
                    problems.push(
                        format!("{cpath}.levels[{j}]"),
                        format!(
                            "{level} requests at once: must be between 2 and {MAX_CONCURRENCY}, so a probe never becomes load"
                        ),
                    );
                }
                if !distinct.insert(*level) {
                    problems.push(format!("{cpath}.levels[{j}]"), "is given twice");
                }
            }
            let timeout = t.timeout * (c.levels.len() as u32 + 1) + Duration::from_secs(1);
            if c.interval < MIN_CONCURRENCY_INTERVAL {
                problems.push(
                    format!("{cpath}.interval"),
                    format!(
                        "must be at least {}, so bursts never become load",
                        humantime::format_duration(MIN_CONCURRENCY_INTERVAL)
                    ),
                );
            } else if timeout > c.interval {
                problems.push(
                    format!("{cpath}.interval"),
                    format!(
                        "a round of bursts may take {} (timeout per level and one more, plus 1s): longer than the interval",
                        humantime::format_duration(timeout)
                    ),
                );
            }
            Some(Concurrency {
                levels: c.levels.clone(),
                interval: c.interval,
                timeout,
            })
        }
        _ => None,
    };
    Some(ProbeTarget {
        name: t.name.clone(),
        url: url?,
        method: method?,
        headers,
        expected_status,
        interval: t.interval,
        timeout: t.timeout,
        body_match,
        max_body_bytes: t.max_body_bytes,
        max_redirects: t.max_redirects,
        ca_certificates,
        insecure_skip_verify: t.tls.insecure_skip_verify,
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_ranges_or_classes() {
        assert_eq!(status_range(&StatusSpec::Code(204)), Ok(204..=204));
        assert_eq!(
            status_range(&StatusSpec::Text("200-299".into())),
            Ok(200..=299)
        );
        assert_eq!(status_range(&StatusSpec::Text("3xx".into())), Ok(300..=399));
        assert_eq!(status_range(&StatusSpec::Text("404".into())), Ok(404..=404));
        for bad in ["6xx", "299-200", "abc", "0-99", "2x"] {
            assert!(
                status_range(&StatusSpec::Text(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(status_range(&StatusSpec::Code(42)).is_err());
    }
}
