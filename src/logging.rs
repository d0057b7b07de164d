//! Log setup: logfmt (default) or JSON lines on stderr with the keys the
//! Prometheus tools write (`time`, `level`, `source` as file:line, `msg`,
//! then the event's fields and its spans' fields), with a per-message
//! repeat limit so that a fault that lasts hours (a database down, a token
//! revoked) costs a few lines, not one per poll: loopwatch must not repeat
//! the log-spam incident it is meant to make visible.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::families;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// How often one message may repeat: `burst` lines per `window`; `window`
/// zero turns the limit off.
#[derive(Debug, Clone, Copy)]
pub struct RepeatLimit {
    pub window: Duration,
    pub burst: u32,
}

/// Lines dropped by the repeat limit, by level; registered by [`register_metrics`].
/// A static because the subscriber is global and outlives any registry.
static SUPPRESSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let family = &families::LOG_SUPPRESSED;
    let counter = IntCounterVec::new(Opts::new(family.name, family.help), family.labels)
        .expect("valid metric");
    for level in ["error", "warn", "info", "debug", "trace"] {
        counter.with_label_values(&[level]);
    }
    counter
});

pub fn register_metrics(registry: &Registry) {
    families::register(registry, SUPPRESSED.clone());
}

/// Installs the global subscriber. Our own crate logs at `level`; others at
/// warn, and the PostgreSQL pool, whose per-connection warnings would repeat
/// every poll during an outage the collector already reports, at error.
pub fn init(level: Level, format: Format, limit: RepeatLimit) {
    let filter = EnvFilter::new(format!(
        "warn,deadpool=error,tokio_postgres=error,loopwatch={}",
        level.as_str()
    ));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(RepeatLimiter::new(limit));
    registry.with(Lines { format }).init();
}

/// Writes each event as one logfmt or JSON line on stderr.
struct Lines {
    format: Format,
}

/// A field value, typed for JSON.
enum Value {
    Text(String),
    /// A number or a boolean, written bare.
    Bare(String),
}

/// An event's or a span's fields in the order given, and the message.
#[derive(Default)]
struct Fields {
    msg: String,
    pairs: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.pairs.push((field.name(), Value::Text(text)));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.pairs
                .push((field.name(), Value::Text(value.to_owned())));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.pairs
            .push((field.name(), Value::Text(value.to_string())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pairs
            .push((field.name(), Value::Bare(value.to_string())));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pairs
            .push((field.name(), Value::Bare(value.to_string())));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let text = if value.is_finite() {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        self.pairs.push((field.name(), Value::Bare(text)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pairs
            .push((field.name(), Value::Bare(value.to_string())));
    }
}

/// A span's fields, kept in its extensions for the events inside it.
struct SpanFields(Vec<(&'static str, String)>);

impl<S> Layer<S> for Lines
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let pairs = fields
            .pairs
            .into_iter()
            .map(|(k, v)| match v {
                Value::Text(t) | Value::Bare(t) => (k, t),
            })
            .collect();
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(pairs));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // The spans' fields (a collector's kind and target), outermost first,
        // unless the event has a field of the same name.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(pairs)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in pairs {
                        if !fields.pairs.iter().any(|(name, _)| name == k) {
                            fields.pairs.push((k, Value::Text(v.clone())));
                        }
                    }
                }
            }
        }
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let level = meta.level().as_str();
        let file = meta.file().unwrap_or("?");
        let file = file.rsplit_once("src/").map_or(file, |(_, rest)| rest);
        let source = format!("{file}:{}", meta.line().unwrap_or(0));
        let line = match self.format {
            Format::Logfmt => {
                let mut line = format!("time={time} level={level} source={source} msg=");
                push_logfmt(&mut line, &fields.msg);
                for (k, v) in &fields.pairs {
                    line.push(' ');
                    line.push_str(k);
                    line.push('=');
                    match v {
                        Value::Text(t) => push_logfmt(&mut line, t),
                        Value::Bare(t) => line.push_str(t),
                    }
                }
                line
            }
            Format::Json => {
                let mut map = serde_json::Map::new();
                map.insert("time".into(), time.into());
                map.insert("level".into(), level.into());
                map.insert("source".into(), source.into());
                map.insert("msg".into(), fields.msg.into());
                for (k, v) in fields.pairs {
                    let value = match v {
                        Value::Text(t) => serde_json::Value::String(t),
                        Value::Bare(t) => {
                            serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))
                        }
                    };
                    map.entry(k).or_insert(value);
                }
                serde_json::Value::Object(map).to_string()
            }
        };
        use std::io::Write as _;
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(format!("{line}\n").as_bytes());
    }
}

/// A logfmt value: bare when it can be, else quoted with `"`, `\` and
/// control characters escaped.
fn push_logfmt(out: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Messages tracked at most; beyond it the oldest windows are forgotten.
const MAX_TRACKED: usize = 1024;

/// Fields left out of a message's identity: free text that varies between
/// repeats of one fault (an error's wording, a duration).
const VOLATILE_FIELDS: &[&str] = &["error", "previous_error", "elapsed", "duration"];

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    message: String,
}

/// Drops a line when the same message (its call site and its fields but the
/// volatile ones) was already logged `burst` times in the current window;
/// the first line after the window says how many were dropped.
pub struct RepeatLimiter {
    limit: RepeatLimit,
    windows: Mutex<HashMap<u64, Window>>,
}

#[derive(Default)]
struct Identity {
    hasher: DefaultHasher,
    message: String,
}

impl Visit for Identity {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        }
        if VOLATILE_FIELDS.contains(&field.name()) {
            return;
        }
        field.name().hash(&mut self.hasher);
        format!("{value:?}").hash(&mut self.hasher);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if VOLATILE_FIELDS.contains(&field.name()) {
            return;
        }
        field.name().hash(&mut self.hasher);
        value.hash(&mut self.hasher);
    }
}

/// What the limiter decided for one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Log,
    /// Log it, after a line saying this many repeats of `message` were dropped.
    LogAfterDropped {
        dropped: u64,
        message: String,
    },
    Drop,
}

impl RepeatLimiter {
    pub fn new(limit: RepeatLimit) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Decides for the line identified by `key` at `now`.
    pub fn check(&self, key: u64, message: impl FnOnce() -> String, now: Instant) -> Verdict {
        if self.limit.window.is_zero() {
            return Verdict::Log;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&key) {
            let window = self.limit.window;
            windows.retain(|_, w| now.duration_since(w.started) < window);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let w = windows.entry(key).or_insert_with(|| Window {
            started: now,
            logged: 0,
            suppressed: 0,
            message: message(),
        });
        if now.duration_since(w.started) >= self.limit.window {
            let dropped = std::mem::take(&mut w.suppressed);
            w.started = now;
            w.logged = 1;
            return if dropped > 0 {
                Verdict::LogAfterDropped {
                    dropped,
                    message: w.message.clone(),
                }
            } else {
                Verdict::Log
            };
        }
        if w.logged < self.limit.burst {
            w.logged += 1;
            Verdict::Log
        } else {
            w.suppressed += 1;
            Verdict::Drop
        }
    }
}

impl<S: Subscriber> Layer<S> for RepeatLimiter {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        if self.limit.window.is_zero() {
            return true;
        }
        let mut identity = Identity::default();
        event.metadata().callsite().hash(&mut identity.hasher);
        event.record(&mut identity);
        let key = identity.hasher.finish();
        let message = identity.message;
        match self.check(key, || message, Instant::now()) {
            Verdict::Log => true,
            Verdict::Drop => {
                let level = event.metadata().level().as_str().to_ascii_lowercase();
                SUPPRESSED.with_label_values(&[&level]).inc();
                false
            }
            Verdict::LogAfterDropped { dropped, message } => {
                // Logged through the same subscriber; no lock is held here.
                tracing::info!(
                    repeats = dropped,
                    repeated = %message,
                    window = %humantime::format_duration(self.limit.window),
                    "Dropped repeats of a log line (log repeat limit)"
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_repeats_at_most_burst_times_per_window() {
        let limiter = RepeatLimiter::new(RepeatLimit {
            window: Duration::from_secs(300),
            burst: 2,
        });
        let t0 = Instant::now();
        let msg = || "Poll failed".to_owned();
        assert_eq!(limiter.check(1, msg, t0), Verdict::Log);
        assert_eq!(
            limiter.check(1, msg, t0 + Duration::from_secs(1)),
            Verdict::Log
        );
        for s in 2..100 {
            assert_eq!(
                limiter.check(1, msg, t0 + Duration::from_secs(s)),
                Verdict::Drop
            );
        }
        // Another message has its own window.
        assert_eq!(
            limiter.check(2, msg, t0 + Duration::from_secs(5)),
            Verdict::Log
        );
        assert_eq!(
            limiter.check(1, msg, t0 + Duration::from_secs(301)),
            Verdict::LogAfterDropped {
                dropped: 98,
                message: "Poll failed".to_owned()
            }
        );
        assert_eq!(
            limiter.check(1, msg, t0 + Duration::from_secs(302)),
            Verdict::Log
        );
        assert_eq!(
            limiter.check(1, msg, t0 + Duration::from_secs(303)),
            Verdict::Drop
        );
    }

    #[test]
    fn logfmt_values_are_quoted_when_needed() {
        let mut out = String::new();
        for v in ["plain", "two words", "", "a\"b\\c\nd", "k=v"] {
            push_logfmt(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, r#"plain "two words" "" "a\"b\\c\nd" "k=v" "#);
    }

    #[test]
    fn a_zero_window_turns_the_limit_off() {
        let limiter = RepeatLimiter::new(RepeatLimit {
            window: Duration::ZERO,
            burst: 1,
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.check(1, String::new, t0), Verdict::Log);
        }
    }

    #[test]
    fn tracked_messages_stay_bounded() {
        let limiter = RepeatLimiter::new(RepeatLimit {
            window: Duration::from_secs(300),
            burst: 1,
        });
        let t0 = Instant::now();
        for key in 0..10_000 {
            limiter.check(key, String::new, t0);
        }
        assert!(limiter.windows.lock().expect("lock").len() <= MAX_TRACKED);
    }
}
