//! Rate-limit state from HTTP response headers: GitHub's and the common
//! `X-RateLimit-*` / `X-Rate-Limit-*` forms, the IETF draft's
//! `RateLimit-Limit/-Remaining/-Reset` and its later `RateLimit` +
//! `RateLimit-Policy` structured fields, and `Retry-After`. The Python
//! client's `ratelimit_from_headers` reads the same forms.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use crate::config::ResetFormat;
use crate::metrics::unix_now;

/// Above this a reset value is a Unix time, at or below it seconds from now
/// (10^9 seconds is about 31 years; as a time it is 2001).
const EPOCH_THRESHOLD: f64 = 1e9;

/// Header names an API uses instead of the common ones.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub limit: Option<String>,
    pub remaining: Option<String>,
    pub reset: Option<String>,
    pub reset_format: ResetFormat,
}

/// What one response said about its budget. Fields it did not carry are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The budget's name, when the headers give one.
    pub resource: Option<String>,
    pub limit: Option<f64>,
    pub remaining: Option<f64>,
    /// Unix time of the reset.
    pub reset: Option<f64>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().map(str::trim)
}

/// The first number in a value (`"100, 100;w=60"` gives 100).
fn number(value: &str) -> Option<f64> {
    let end = value
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '-')))
        .map_or(value.len(), |(i, _)| i);
    value[..end].parse::<f64>().ok().filter(|n| n.is_finite())
}

fn count(value: Option<&str>) -> Option<f64> {
    value.and_then(number).map(|n| n.max(0.0).floor())
}

fn reset_time(value: f64, format: ResetFormat, now: f64) -> f64 {
    let epoch = match format {
        ResetFormat::Epoch => true,
        ResetFormat::Seconds => false,
        ResetFormat::Auto => value > EPOCH_THRESHOLD,
    };
    if epoch { value } else { now + value.max(0.0) }
}

/// `Retry-After`: seconds or an HTTP date, as a wait from now.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let value = header(h, "retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `"name";k=v;k=v` split into the name and its parameters.
fn sf_member(member: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = member.split(';').map(str::trim);
    let name = parts.next().unwrap_or_default().trim_matches('"');
    let params = parts.filter_map(|p| p.split_once('=')).collect();
    (name, params)
}

fn sf_param<'a>(params: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// The later IETF draft: `RateLimit: "default";r=50;t=30` with
/// `RateLimit-Policy: "default";q=100;w=60`.
fn structured(h: &HeaderMap, now: f64) -> Option<Observed> {
    let combined = header(h, "ratelimit")?;
    let (name, params) = sf_member(combined.split(',').next()?);
    let remaining = count(sf_param(&params, "r"));
    remaining?;
    let mut limit = None;
    for member in header(h, "ratelimit-policy").unwrap_or_default().split(',') {
        let (policy, pparams) = sf_member(member);
        if let Some(q) = count(sf_param(&pparams, "q")) {
            if limit.is_none() || policy == name {
                limit = Some(q);
            }
            if policy == name {
                break;
            }
        }
    }
    Some(Observed {
        resource: (!name.is_empty()).then(|| name.to_owned()),
        limit,
        remaining,
        reset: sf_param(&params, "t")
            .and_then(number)
            .map(|t| now + t.max(0.0)),
    })
}

/// Reads the budget from `h`. Configured names are read as given; the rest
/// from the first common form that has a remaining count. `None` when no
/// remaining count is found.
pub fn read(h: &HeaderMap, names: &Names) -> Option<Observed> {
    let now = unix_now();
    let mut found = ["x-ratelimit-", "x-rate-limit-", "ratelimit-"]
        .iter()
        .find_map(|prefix| {
            let remaining = count(header(h, &format!("{prefix}remaining")))?;
            let reset = header(h, &format!("{prefix}reset"))
                .and_then(number)
                .map(|r| reset_time(r, names.reset_format, now))
                .or_else(|| {
                    header(h, &format!("{prefix}reset-after"))
                        .and_then(number)
                        .map(|s| now + s.max(0.0))
                });
            Some(Observed {
                resource: header(h, &format!("{prefix}resource"))
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned),
                limit: count(header(h, &format!("{prefix}limit"))),
                remaining: Some(remaining),
                reset,
            })
        })
        .or_else(|| structured(h, now))
        .unwrap_or(Observed {
            resource: None,
            limit: None,
            remaining: None,
            reset: None,
        });
    if let Some(name) = &names.limit {
        found.limit = count(header(h, name));
    }
    if let Some(name) = &names.remaining {
        found.remaining = count(header(h, name));
    }
    if let Some(name) = &names.reset {
        found.reset = header(h, name)
            .and_then(number)
            .map(|r| reset_time(r, names.reset_format, now));
    }
    // Out of budget and no reset given: Retry-After says when it comes back.
    if found.reset.is_none() && found.remaining == Some(0.0) {
        found.reset = retry_after(h).map(|d| now + d.as_secs_f64());
    }
    found.remaining.is_some().then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn github_headers_with_an_epoch_reset_and_a_resource() {
        let h = headers(&[
            ("X-RateLimit-Limit", "5000"),
            ("X-RateLimit-Remaining", "4987"),
            ("X-RateLimit-Reset", "1795440000"),
            ("X-RateLimit-Used", "13"),
            ("X-RateLimit-Resource", "search"),
        ]);
        let o = read(&h, &Names::default()).expect("found");
        assert_eq!(o.resource.as_deref(), Some("search"));
        assert_eq!(o.limit, Some(5000.0));
        assert_eq!(o.remaining, Some(4987.0));
        assert_eq!(o.reset, Some(1_795_440_000.0));
    }

    #[test]
    fn ietf_draft_headers_reset_in_seconds() {
        let before = unix_now();
        let h = headers(&[
            ("RateLimit-Limit", "100"),
            ("RateLimit-Remaining", "40"),
            ("RateLimit-Reset", "30"),
        ]);
        let o = read(&h, &Names::default()).expect("found");
        assert_eq!((o.limit, o.remaining), (Some(100.0), Some(40.0)));
        let reset = o.reset.expect("reset");
        assert!(reset >= before + 30.0 && reset < before + 40.0, "{reset}");

        let h = headers(&[
            ("RateLimit", "\"hourly\";r=7;t=60"),
            (
                "RateLimit-Policy",
                "\"burst\";q=10;w=1, \"hourly\";q=1000;w=3600",
            ),
        ]);
        let o = read(&h, &Names::default()).expect("found");
        assert_eq!(o.resource.as_deref(), Some("hourly"));
        assert_eq!((o.limit, o.remaining), (Some(1000.0), Some(7.0)));
    }

    #[test]
    fn configured_names_and_reset_format() {
        let before = unix_now();
        let h = headers(&[("Quota-Left", "3"), ("Quota-Reset", "1795440000")]);
        let names = Names {
            remaining: Some("quota-left".into()),
            reset: Some("Quota-Reset".into()),
            reset_format: ResetFormat::Seconds,
            ..Names::default()
        };
        let o = read(&h, &names).expect("found");
        assert_eq!((o.limit, o.remaining), (None, Some(3.0)));
        assert!(o.reset.expect("reset") > before + 1e9);
    }

    #[test]
    fn retry_after_gives_the_reset_when_nothing_remains() {
        let before = unix_now();
        let h = headers(&[
            ("X-RateLimit-Limit", "60"),
            ("X-RateLimit-Remaining", "0"),
            ("Retry-After", "120"),
        ]);
        let o = read(&h, &Names::default()).expect("found");
        let reset = o.reset.expect("reset");
        assert!(reset >= before + 120.0 && reset < before + 130.0, "{reset}");
        let date = headers(&[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&date), Some(Duration::ZERO));
    }

    #[test]
    fn garbage_and_absent_headers_are_not_a_reading() {
        for h in [
            headers(&[]),
            headers(&[("X-RateLimit-Remaining", "lots")]),
            headers(&[("X-RateLimit-Limit", "10")]),
            headers(&[("RateLimit", "garbage")]),
        ] {
            assert_eq!(read(&h, &Names::default()), None, "{h:?}");
        }
        assert_eq!(number("-5"), Some(-5.0));
        assert_eq!(count(Some("-5")), Some(0.0));
        assert_eq!(number("NaN"), None);
    }
}
