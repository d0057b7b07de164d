//! Parses one message of the client protocol (docs/protocol.md) into a typed
//! [`Message`], or the bounded reason it was rejected for.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The largest message accepted: a datagram or one NDJSON line.
pub const MAX_MESSAGE_BYTES: usize = 8192;
/// Label values taken from messages are cut to this many characters.
pub const MAX_LABEL_CHARS: usize = 128;

pub use crate::families::{Rejection, ThrottleKind};

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub app: String,
    pub loop_name: String,
    pub pid: u32,
    /// A stable worker id the client knows (`worker`), for per-worker series.
    pub worker: Option<String>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Heartbeat(Heartbeat),
    Stall(Stall),
    Pool(Pool),
    RateLimit(RateLimit),
    Bye,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Failure {
    pub task: String,
    pub exception: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Cancellation {
    pub task: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct Info {
    #[serde(default)]
    pub client_version: String,
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub language_version: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Heartbeat {
    pub interval_s: f64,
    pub stall_threshold_s: f64,
    pub lag_s: f64,
    pub tasks_pending: u64,
    pub tasks_created: u64,
    pub slow_callbacks: u64,
    pub failures: Vec<Failure>,
    pub cancellations: Vec<Cancellation>,
    #[serde(default)]
    pub info: Option<Info>,
}

impl Heartbeat {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_s)
    }

    pub fn threshold(&self) -> Duration {
        Duration::from_secs_f64(self.stall_threshold_s)
    }

    pub fn lag(&self) -> Duration {
        Duration::from_secs_f64(self.lag_s)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Stall {
    pub stall_id: u64,
    pub blocked_s: f64,
    pub site: String,
    pub stack: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pool {
    pub pool: String,
    pub size: u64,
    pub max: u64,
    pub in_use: u64,
    pub waiting: u64,
    /// The most callers waiting since the previous report; at least `waiting`.
    #[serde(default)]
    pub waiting_max: Option<u64>,
    /// Cumulative since the process started: acquires that succeeded, that
    /// timed out or failed, and seconds spent waiting in acquire.
    #[serde(default)]
    pub acquires: Option<u64>,
    #[serde(default)]
    pub acquire_timeouts: Option<u64>,
    #[serde(default)]
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RateLimit {
    pub api: String,
    pub resource: String,
    /// The token's name (never the token); loopwatch uses the app's name without it.
    #[serde(default)]
    pub token: Option<String>,
    /// The budget, when the response carried it: all three or none.
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub remaining: Option<u64>,
    #[serde(default)]
    pub reset: Option<f64>,
    /// The API refused a request for its rate limit.
    #[serde(default)]
    pub throttled: Option<ThrottleKind>,
}

impl RateLimit {
    /// limit, remaining and reset, when the message carries the budget.
    pub fn budget(&self) -> Option<(u64, u64, f64)> {
        Some((self.limit?, self.remaining?, self.reset?))
    }
}

/// `app`, `loop`, `pool`, `api`, `resource`: 1–64 of `A–Z a–z 0–9 _ . : -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Cuts free text (task, exception, site) to a bounded printable label value.
pub fn label_value(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return "unknown".to_owned();
    }
    let count = clean.chars().count();
    if count <= MAX_LABEL_CHARS {
        clean.to_owned()
    } else {
        // Keep the end: for a site, the file, line and function.
        let tail: String = clean.chars().skip(count - (MAX_LABEL_CHARS - 1)).collect();
        format!("…{tail}")
    }
}

/// The largest count accepted: every integer up to it is exact in the f64
/// of a Prometheus sample, and sums of a few cannot wrap a u64.
pub const MAX_COUNT: u64 = 1 << 53;

/// False when any number in the message is an integer beyond [`MAX_COUNT`]
/// or negative: such a count would wrap or lose precision, never count.
fn counts_in_range(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_u64().map_or(n.is_f64(), |n| n <= MAX_COUNT),
        Value::Array(items) => items.iter().all(counts_in_range),
        Value::Object(map) => map.values().all(counts_in_range),
        _ => true,
    }
}

fn finite(x: f64, lo: f64, hi: f64) -> bool {
    x.is_finite() && x >= lo && x <= hi
}

/// Parses and validates one message.
pub fn parse(raw: &[u8]) -> Result<Message, Rejection> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::Oversize);
    }
    let value: Value = serde_json::from_slice(raw).map_err(|_| Rejection::NotJson)?;
    let Value::Object(map) = value else {
        return Err(Rejection::NotJson);
    };
    match map.get("v") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(Value::Number(_)) => return Err(Rejection::UnknownVersion),
        _ => return Err(Rejection::Invalid),
    }
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or(Rejection::Invalid)?
        .to_owned();
    let text = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .filter(|s| valid_name(s))
    };
    let app = text("app").ok_or(Rejection::Invalid)?.to_owned();
    let loop_name = text("loop").ok_or(Rejection::Invalid)?.to_owned();
    let pid = map
        .get("pid")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p <= u64::from(u32::MAX))
        .ok_or(Rejection::Invalid)? as u32;
    let worker = match map.get("worker") {
        None | Some(Value::Null) => None,
        Some(w) => Some(
            w.as_str()
                .filter(|s| valid_name(s))
                .ok_or(Rejection::Invalid)?
                .to_owned(),
        ),
    };
    let object = Value::Object(map);
    if !counts_in_range(&object) {
        return Err(Rejection::Invalid);
    }
    fn decode<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, Rejection> {
        serde_json::from_value(v).map_err(|_| Rejection::Invalid)
    }
    let body = match kind.as_str() {
        "heartbeat" => {
            let hb: Heartbeat = decode(object)?;
            let ok = finite(hb.interval_s, 0.01, 60.0)
                && finite(hb.stall_threshold_s, 0.01, 600.0)
                && finite(hb.lag_s, 0.0, 86_400.0);
            if !ok {
                return Err(Rejection::Invalid);
            }
            Body::Heartbeat(hb)
        }
        "stall" => {
            let stall: Stall = decode(object)?;
            if !finite(stall.blocked_s, 0.0, 86_400.0) {
                return Err(Rejection::Invalid);
            }
            Body::Stall(stall)
        }
        "pool" => {
            let pool: Pool = decode(object)?;
            if !valid_name(&pool.pool) || pool.wait_seconds.is_some_and(|w| !finite(w, 0.0, 1e15)) {
                return Err(Rejection::Invalid);
            }
            Body::Pool(pool)
        }
        "ratelimit" => {
            let rl: RateLimit = decode(object)?;
            let parts = [
                rl.limit.is_some(),
                rl.remaining.is_some(),
                rl.reset.is_some(),
            ];
            let budget_ok = match rl.budget() {
                Some((_, _, reset)) => finite(reset, 0.0, 1e11),
                None => parts == [false; 3] && rl.throttled.is_some(),
            };
            if !valid_name(&rl.api)
                || !valid_name(&rl.resource)
                || rl.token.as_deref().is_some_and(|t| !valid_name(t))
                || !budget_ok
            {
                return Err(Rejection::Invalid);
            }
            Body::RateLimit(rl)
        }
        "bye" => Body::Bye,
        _ => return Err(Rejection::UnknownType),
    };
    Ok(Message {
        app,
        loop_name,
        pid,
        worker,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_type() {
        let hb = br#"{"v":1,"type":"heartbeat","app":"api","loop":"main","pid":7,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0.001,"tasks_pending":3,"tasks_created":10,"slow_callbacks":0,"failures":[{"task":"poll","exception":"ValueError","count":2}],"cancellations":[],"info":{"client_version":"0.1.0","runtime":"uvloop","language_version":"3.11"},"extra":"ignored"}"#;
        let m = parse(hb).expect("heartbeat");
        assert_eq!(
            (m.app.as_str(), m.loop_name.as_str(), m.pid),
            ("api", "main", 7)
        );
        let Body::Heartbeat(hb) = m.body else {
            panic!("not a heartbeat")
        };
        assert_eq!(hb.failures[0].count, 2);
        assert_eq!(hb.info.expect("info").runtime, "uvloop");
        let stall = br#"{"v":1,"type":"stall","app":"a","loop":"l","pid":1,"stall_id":1,"blocked_s":0.7,"site":"x.py:1 f","stack":["x.py:1 f"]}"#;
        assert!(matches!(parse(stall).expect("stall").body, Body::Stall(_)));
        let pool = br#"{"v":1,"type":"pool","app":"a","loop":"l","pid":1,"pool":"db","size":1,"max":2,"in_use":1,"waiting":0}"#;
        assert!(matches!(parse(pool).expect("pool").body, Body::Pool(_)));
        let pool = br#"{"v":1,"type":"pool","app":"a","loop":"l","pid":1,"worker":"3","pool":"db","size":1,"max":2,"in_use":1,"waiting":0,"waiting_max":4,"acquires":10,"acquire_timeouts":2,"wait_seconds":1.5}"#;
        let m = parse(pool).expect("pool with counters");
        assert_eq!(m.worker.as_deref(), Some("3"));
        let Body::Pool(p) = m.body else {
            panic!("not a pool")
        };
        assert_eq!(
            (
                p.waiting_max,
                p.acquires,
                p.acquire_timeouts,
                p.wait_seconds
            ),
            (Some(4), Some(10), Some(2), Some(1.5))
        );
        let rl = br#"{"v":1,"type":"ratelimit","app":"a","loop":"l","pid":1,"api":"github","resource":"core","limit":5000,"remaining":1,"reset":1795440000}"#;
        assert!(matches!(
            parse(rl).expect("ratelimit").body,
            Body::RateLimit(_)
        ));
        let throttled = br#"{"v":1,"type":"ratelimit","app":"a","loop":"l","pid":1,"api":"github","resource":"core","token":"ci","throttled":"secondary"}"#;
        let Body::RateLimit(rl) = parse(throttled).expect("throttled").body else {
            panic!("not a ratelimit")
        };
        assert_eq!(rl.throttled, Some(ThrottleKind::Secondary));
        assert_eq!(rl.budget(), None);
        let bye = br#"{"v":1,"type":"bye","app":"a","loop":"l","pid":1}"#;
        assert_eq!(parse(bye).expect("bye").body, Body::Bye);
    }

    #[test]
    fn a_ratelimit_carries_its_whole_budget_or_a_throttle() {
        for raw in [
            r#"{"api":"x","resource":"core"}"#,
            r#"{"api":"x","resource":"core","limit":10,"remaining":1}"#,
            r#"{"api":"x","resource":"core","limit":10,"remaining":1,"reset":-1}"#,
            r#"{"api":"x","resource":"core","throttled":"tertiary"}"#,
            r#"{"api":"x","resource":"core","token":"a b","throttled":"primary"}"#,
        ] {
            let msg = format!(
                r#"{{"v":1,"type":"ratelimit","app":"a","loop":"l","pid":1,{}"#,
                &raw[1..]
            );
            assert_eq!(parse(msg.as_bytes()), Err(Rejection::Invalid), "{msg}");
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let cases: [(&[u8], Rejection); 15] = [
            (br#"{"v":1,"type":"heartbeat","app":"a","loop":"l","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":0,"tasks_created":18446744073709551615,"slow_callbacks":0,"failures":[],"cancellations":[]}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"heartbeat","app":"a","loop":"l","pid":1,"interval_s":0.25,"stall_threshold_s":0.5,"lag_s":0,"tasks_pending":0,"tasks_created":1,"slow_callbacks":0,"failures":[{"task":"t","exception":"E","count":-1}],"cancellations":[]}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"bye","app":"a","loop":"l","pid":1,"worker":"a b"}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"bye","app":"a","loop":"l","pid":1,"worker":3}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"pool","app":"a","loop":"l","pid":1,"pool":"db","size":1,"max":2,"in_use":1,"waiting":0,"wait_seconds":-1}"#, Rejection::Invalid),
            (b"not json", Rejection::NotJson),
            (b"[1,2]", Rejection::NotJson),
            (br#"{"v":2,"type":"bye","app":"a","loop":"l","pid":1}"#, Rejection::UnknownVersion),
            (br#"{"v":1,"type":"hello","app":"a","loop":"l","pid":1}"#, Rejection::UnknownType),
            (br#"{"v":1,"type":"bye","app":"a b","loop":"l","pid":1}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"bye","app":"a","loop":"l","pid":"1"}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"bye","app":"a","loop":"l","pid":0}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"heartbeat","app":"a","loop":"l","pid":1}"#, Rejection::Invalid),
            (br#"{"v":1,"type":"stall","app":"a","loop":"l","pid":1,"stall_id":1,"blocked_s":-1,"site":"s","stack":[]}"#, Rejection::Invalid),
            (br#"{"type":"bye","app":"a","loop":"l","pid":1}"#, Rejection::Invalid),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(parse(&vec![b' '; 64 * 1024]), Err(Rejection::Oversize));
    }

    #[test]
    fn label_values_are_bounded_and_keep_the_end() {
        assert_eq!(label_value("  "), "unknown");
        assert_eq!(label_value("a\nb"), "a b");
        let long = format!("/{}/app.py:12 handler", "x".repeat(300));
        let v = label_value(&long);
        assert_eq!(v.chars().count(), MAX_LABEL_CHARS);
        assert!(v.ends_with("app.py:12 handler"));
    }
}
