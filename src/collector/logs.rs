//! The `logs` collector: tails files and globs and counts their lines, the
//! built-in asyncio rules, Python tracebacks by exception type, the user's
//! rules and log storms, per configured `log`.
//!
//! A file is known by its identity (device and inode), not its path, and its
//! descriptor stays open: a file renamed away by rotation is read to its end
//! (and for `rotate_wait` after it stopped growing, while the writer has not
//! reopened yet) before it is dropped, and a rotated name that a glob also
//! matches is not read twice. A file shorter than what was read, or whose
//! first bytes changed, was truncated (copytruncate): it is read again from
//! its start and counted. Read positions (after the last complete line) go
//! to the optional state file after each poll, so a restart neither counts a
//! line twice nor skips one, even when the file was rotated meanwhile.
//!
//! Each poll reads at most `max_read_bytes` per file on a blocking thread;
//! lines are cut at `max_line_bytes`. The state lives beside the collector
//! ([`LogStates`]), so a reload keeps positions and counters.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};

use super::{BoxFuture, Built, CollectError, Job, Periodic, Reason, Shared};
use crate::config::{LogFormat, LogTarget, StartAt};
use crate::families::{self, LOG_BUILTIN_RULES, LOG_SLOW_CALLBACK_BUCKETS, LogReadError, OTHER};
use crate::metrics::{Families, FamilyBuilder};

/// Bytes of a file's start remembered to notice it was rewritten.
const HEAD_BYTES: usize = 64;
/// Longest label value taken from a rule's named group or an exception type.
const MAX_LABEL_VALUE: usize = 64;
/// Longest normalised message the repetition detector keeps.
const MAX_REPEAT_KEY: usize = 200;
/// Read buffer.
const CHUNK: usize = 64 * 1024;

/// The most repeated message of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopOffender {
    pub log: String,
    /// The normalised message.
    pub message: String,
    /// Its repetitions in the window it was counted in.
    pub count: u64,
}

/// The logs' state, kept across reloads: positions, counters and the
/// current top offenders for the landing page.
#[derive(Default)]
pub struct LogStates {
    tails: Mutex<HashMap<String, Arc<Mutex<Tail>>>>,
    tops: Mutex<Vec<TopOffender>>,
}

impl LogStates {
    /// The current most repeated message of each log that has one, most
    /// repeated first (a read-only view for the landing page).
    pub fn top_offenders(&self) -> Vec<TopOffender> {
        let mut tops = self.tops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.log.cmp(&b.log)));
        tops
    }

    fn set_top(&self, log: &str, top: Option<(String, u64)>) {
        let mut tops = self.tops.lock().unwrap_or_else(|e| e.into_inner());
        tops.retain(|t| t.log != log);
        if let Some((message, count)) = top {
            tops.push(TopOffender {
                log: log.to_owned(),
                message,
                count,
            });
        }
    }
}

pub fn build(targets: &[LogTarget], shared: &Shared) -> Vec<Built> {
    let states = &shared.logs;
    let mut tails = states.tails.lock().unwrap_or_else(|e| e.into_inner());
    tails.retain(|name, _| targets.iter().any(|t| &t.name == name));
    states
        .tops
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| targets.iter().any(|c| c.name == t.log));
    targets
        .iter()
        .map(|target| {
            let tail = match tails.get(&target.name) {
                // Same log after a reload: keep positions and counters.
                Some(tail) => {
                    tail.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .reconfigure(target.clone());
                    tail.clone()
                }
                None => {
                    let tail = Arc::new(Mutex::new(Tail::new(target.clone())));
                    tails.insert(target.name.clone(), tail.clone());
                    tail
                }
            };
            Built {
                kind: "logs",
                target: target.name.clone(),
                job: Job::Periodic {
                    interval: target.interval,
                    timeout: target.timeout,
                    collector: Box::new(LogCollector {
                        tail,
                        states: states.clone(),
                        name: target.name.clone(),
                        last: Arc::new(Mutex::new(Families::new())),
                    }),
                },
            }
        })
        .collect()
}

struct LogCollector {
    tail: Arc<Mutex<Tail>>,
    states: Arc<LogStates>,
    name: String,
    /// The last snapshot: shown while a poll fails (counters stay valid).
    last: Arc<Mutex<Families>>,
}

impl Periodic for LogCollector {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let tail = self.tail.clone();
            let states = self.states.clone();
            let name = self.name.clone();
            let last = self.last.clone();
            let result = tokio::task::spawn_blocking(move || {
                // A read that outlived its timeout still holds the lock.
                let Ok(mut tail) = tail.try_lock() else {
                    return Err(CollectError::new(
                        Reason::Timeout,
                        "the previous read of the files is still running",
                    ));
                };
                let families = tail.poll(Instant::now());
                states.set_top(&name, tail.matcher.repeat.top());
                let state_error = tail.save_state();
                *last.lock().unwrap_or_else(|e| e.into_inner()) = families.clone();
                match state_error {
                    Some(e) => Err(e),
                    None => Ok(families),
                }
            })
            .await;
            match result {
                Ok(r) => r,
                Err(e) => Err(CollectError::new(
                    Reason::Other,
                    format!("the read of the files failed: {e}"),
                )),
            }
        })
    }

    fn down(&self) -> Families {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A file's identity: it stays while the file is renamed.
type Identity = (u64, u64);

/// Partial lines of a Docker or CRI log being joined, per stream.
#[derive(Default)]
struct Joiner {
    parts: [Vec<u8>; 2],
    cut: [bool; 2],
}

impl Joiner {
    fn is_empty(&self) -> bool {
        self.parts.iter().all(Vec::is_empty)
    }
}

/// Where a Python traceback parser stands in one file.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
enum Traceback {
    #[default]
    Outside,
    /// Inside `Traceback (most recent call last):` and its indented frames.
    Frames,
    /// Read the exception line; a chained traceback may follow.
    After(String),
    /// Between chained tracebacks ("During handling of the above exception").
    Chained(String),
}

/// One file being read.
struct FileTail {
    path: PathBuf,
    file: File,
    id: Identity,
    /// Bytes read so far (the descriptor's position).
    offset: u64,
    /// Offset after the last complete line: where a restart continues.
    committed: u64,
    /// The file's size at the last look.
    size: u64,
    /// The file's first bytes, to notice it was rewritten.
    head: Vec<u8>,
    /// A line not yet ended by a newline.
    pending: Vec<u8>,
    /// The pending line is longer than the maximum and was cut.
    cut: bool,
    /// Reading started inside a line (`start_at: end` on a file whose last
    /// line is not ended): its rest is skipped, not counted as a line.
    discard: bool,
    joiner: Joiner,
    traceback: Traceback,
    /// Still at a path the log's patterns match.
    current: bool,
    /// Last time it grew (or was found).
    grew: Instant,
}

impl FileTail {
    fn open(path: &Path, start: u64, now: Instant) -> std::io::Result<FileTail> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::new(ErrorKind::InvalidInput, "not a file"));
        }
        let start = start.min(meta.len());
        file.seek(SeekFrom::Start(start))?;
        let mut last = [0u8; 1];
        let discard = start > 0 && file.read_at(&mut last, start - 1)? == 1 && last[0] != b'\n';
        let mut tail = FileTail {
            path: path.to_owned(),
            file,
            id: (meta.dev(), meta.ino()),
            offset: start,
            committed: start,
            size: meta.len(),
            head: Vec::new(),
            pending: Vec::new(),
            cut: false,
            discard,
            joiner: Joiner::default(),
            traceback: Traceback::Outside,
            current: true,
            grew: now,
        };
        tail.remember_head();
        Ok(tail)
    }

    fn read_head(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        match self.file.read_at(&mut buf, 0) {
            Ok(n) => buf.truncate(n),
            Err(_) => buf.clear(),
        }
        buf
    }

    /// Keeps the first bytes once there are some read.
    fn remember_head(&mut self) {
        let want = (self.offset.min(HEAD_BYTES as u64)) as usize;
        if self.head.len() < want {
            self.head = self.read_head(want);
        }
    }

    /// Whether the file was rewritten from its start: shorter than read, or
    /// other first bytes.
    fn rewritten(&self, size: u64) -> bool {
        size < self.offset
            || (!self.head.is_empty() && self.read_head(self.head.len()) != self.head)
    }

    /// Starts again from the first byte.
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.offset = 0;
        self.committed = 0;
        self.head.clear();
        self.pending.clear();
        self.cut = false;
        self.discard = false;
        self.joiner = Joiner::default();
        self.traceback = Traceback::Outside;
        Ok(())
    }
}

/// A histogram filled from parsed values.
#[derive(Default, Clone)]
struct Histo {
    counts: [u64; LOG_SLOW_CALLBACK_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histo {
    fn observe(&mut self, v: f64) {
        for (i, upper) in LOG_SLOW_CALLBACK_BUCKETS.iter().enumerate() {
            if v <= *upper {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Label values with a cap: beyond it, everything is `other`.
#[derive(Default)]
struct Capped {
    counts: HashMap<Vec<String>, u64>,
}

impl Capped {
    fn inc(&mut self, values: Vec<String>, cap: usize) {
        let key = if self.counts.contains_key(&values) || self.counts.len() < cap {
            values
        } else {
            vec![OTHER.to_owned(); values.len()]
        };
        *self.counts.entry(key).or_default() += 1;
    }
}

#[derive(Default)]
struct Counters {
    lines: u64,
    bytes: u64,
    builtin: [u64; LOG_BUILTIN_RULES.len()],
    rules: HashMap<String, Capped>,
    exceptions: HashMap<String, u64>,
    slow: Histo,
    repeated: u64,
    rotations: u64,
    truncations: u64,
    lost_bytes: u64,
    long_lines: u64,
    parse_errors: u64,
    read_errors: [u64; LogReadError::ALL.len()],
}

impl Counters {
    fn read_error(&mut self, kind: LogReadError) {
        self.read_errors[kind as usize] += 1;
    }

    fn exception(&mut self, name: &str, cap: usize) {
        if let Some(n) = self.exceptions.get_mut(name) {
            *n += 1;
            return;
        }
        // `other` itself does not take one of the `cap` slots.
        let named = self.exceptions.len() - usize::from(self.exceptions.contains_key(OTHER));
        let key = if named < cap { name } else { OTHER };
        *self.exceptions.entry(key.to_owned()).or_default() += 1;
    }
}

/// The built-in rules' needles, searched at once.
struct Builtin {
    needles: AhoCorasick,
}

const NEEDLE_NEVER_RETRIEVED: usize = 0;
const NEEDLE_EXECUTING: usize = 1;
const NEEDLE_RUN_IN_LOOP: usize = 2;
const NEEDLE_DESTROYED: usize = 3;
const NEEDLE_NEVER_AWAITED: usize = 4;
const NEEDLE_NONE_CALLABLE: usize = 5;

impl Builtin {
    fn new() -> Self {
        Self {
            needles: AhoCorasick::new([
                "Task exception was never retrieved",
                "Executing <",
                "asyncio.run() cannot be called from a running event loop",
                "Task was destroyed but it is pending!",
                "was never awaited",
                "TypeError: 'NoneType' object is not callable",
            ])
            .expect("fixed needles"),
        }
    }
}

/// `took 3.2 seconds` at the end of asyncio's slow-callback warning.
fn slow_callback_seconds(line: &str) -> Option<f64> {
    let at = line.rfind(" took ")?;
    let rest = &line[at + 6..];
    let end = rest.find(" seconds")?;
    rest[..end]
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
}

/// The exception type of a traceback's last line (`ValueError: bad`,
/// `asyncio.exceptions.CancelledError`), or `None` for another line.
fn exception_type(line: &str) -> Option<&str> {
    let name = match line.find(':') {
        Some(i) => &line[..i],
        None => line.trim_end(),
    };
    let mut chars = name.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || first == '_')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        || name.ends_with('.')
    {
        return None;
    }
    Some(name)
}

const TRACEBACK_START: &str = "Traceback (most recent call last):";

fn is_chain_line(line: &str) -> bool {
    line.trim().is_empty()
        || line.starts_with("During handling of the above exception")
        || line.starts_with("The above exception was the direct cause")
}

/// Masks what varies between repetitions of one message: numbers, hex ids,
/// UUIDs and quoted values.
pub fn normalise(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len().min(MAX_REPEAT_KEY + 8));
    let mut i = 0;
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() && out.len() < MAX_REPEAT_KEY {
        let b = bytes[i];
        let at_boundary = i == 0 || !word(bytes[i - 1]);
        if (b == b'"' || (b == b'\'' && at_boundary)) && i + 1 < bytes.len() {
            if let Some(len) = bytes[i + 1..].iter().position(|&c| c == b) {
                out.push(b as char);
                out.push('*');
                out.push(b as char);
                i += len + 2;
                continue;
            }
        }
        if word(b) && at_boundary {
            let end = i + bytes[i..]
                .iter()
                .position(|&c| !word(c))
                .unwrap_or(bytes.len() - i);
            let w = &line[i..end];
            if is_uuid(&bytes[i..]) {
                out.push_str("<uuid>");
                i += 36;
                continue;
            }
            let has_digit = w.bytes().any(|c| c.is_ascii_digit());
            let long_hex = w.len() >= 12 && w.bytes().all(|c| c.is_ascii_hexdigit());
            if has_digit || long_hex {
                out.push('#');
            } else {
                out.push_str(w);
            }
            i = end;
            continue;
        }
        // Copy one character whole (never split a UTF-8 sequence).
        let ch = line[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() >= 36
        && (b.len() == 36 || !(b[36].is_ascii_alphanumeric() || b[36] == b'_'))
        && b[..36].iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Counts normalised messages per window.
struct Repeat {
    window: std::time::Duration,
    threshold: u64,
    max: usize,
    started: Option<Instant>,
    counts: HashMap<String, u64>,
    previous_top: Option<(String, u64)>,
}

impl Repeat {
    fn new(target: &LogTarget) -> Self {
        Self {
            window: target.repeat.window,
            threshold: target.repeat.threshold,
            max: target.repeat.max_messages,
            started: None,
            counts: HashMap::new(),
            previous_top: None,
        }
    }

    fn roll(&mut self, now: Instant) {
        match self.started {
            Some(s) if now.duration_since(s) < self.window => {}
            _ => {
                self.previous_top = self.current_top();
                self.counts.clear();
                self.started = Some(now);
            }
        }
    }

    /// Whether this line is a repetition beyond the threshold.
    fn observe(&mut self, line: &str) -> bool {
        let key = normalise(line);
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
            return *n > self.threshold;
        }
        if self.counts.len() < self.max {
            self.counts.insert(key, 1);
        }
        1 > self.threshold
    }

    fn current_top(&self) -> Option<(String, u64)> {
        self.counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(k, v)| (k.clone(), *v))
    }

    /// The most repeated message of the current window, or of the previous
    /// one while the current has seen fewer repetitions.
    fn top(&self) -> Option<(String, u64)> {
        let current = self.current_top();
        match (&current, &self.previous_top) {
            (Some(c), Some(p)) if p.1 > c.1 => Some(p.clone()),
            (None, p) => p.clone(),
            _ => current,
        }
    }
}

/// What turns lines into counts (borrowed apart from the files).
struct Matcher {
    target: LogTarget,
    builtin: Builtin,
    counters: Counters,
    repeat: Repeat,
}

impl Matcher {
    fn line(&mut self, raw: &[u8], traceback: &mut Traceback) {
        let text = String::from_utf8_lossy(raw);
        let line = text.strip_suffix('\r').unwrap_or(&text);
        self.counters.lines += 1;
        if self.target.builtin_rules {
            self.builtin(line, traceback);
        }
        for rule in &self.target.rules {
            if rule.labels.is_empty() {
                if rule.regex.is_match(line) {
                    self.counters
                        .rules
                        .entry(rule.name.clone())
                        .or_default()
                        .inc(Vec::new(), 1);
                }
            } else if let Some(caps) = rule.regex.captures(line) {
                let values = rule
                    .labels
                    .iter()
                    .map(|l| {
                        let v = caps.name(l).map(|m| m.as_str()).unwrap_or("");
                        truncate(v, MAX_LABEL_VALUE).to_owned()
                    })
                    .collect();
                self.counters
                    .rules
                    .entry(rule.name.clone())
                    .or_default()
                    .inc(values, rule.max_label_values);
            }
        }
        if self.repeat.observe(line) {
            self.counters.repeated += 1;
        }
    }

    fn builtin(&mut self, line: &str, traceback: &mut Traceback) {
        let mut seen = [false; LOG_BUILTIN_RULES.len()];
        for m in self.builtin.needles.find_overlapping_iter(line) {
            seen[m.pattern().as_usize()] = true;
        }
        for (needle, hit) in seen.iter().enumerate() {
            if !hit {
                continue;
            }
            let rule = match needle {
                NEEDLE_NEVER_RETRIEVED => 0,
                NEEDLE_EXECUTING => match slow_callback_seconds(line) {
                    Some(seconds) => {
                        self.counters.slow.observe(seconds);
                        1
                    }
                    None => continue,
                },
                NEEDLE_RUN_IN_LOOP => 2,
                NEEDLE_DESTROYED => 3,
                NEEDLE_NEVER_AWAITED if line.contains("coroutine ") => 4,
                NEEDLE_NONE_CALLABLE => 5,
                _ => continue,
            };
            self.counters.builtin[rule] += 1;
        }
        self.traceback(line, traceback);
    }

    fn traceback(&mut self, line: &str, state: &mut Traceback) {
        let indented = line.starts_with([' ', '\t']);
        let next = match std::mem::take(state) {
            Traceback::Outside if line.contains(TRACEBACK_START) => Traceback::Frames,
            Traceback::Outside => Traceback::Outside,
            Traceback::Frames if indented || line.starts_with(TRACEBACK_START) => Traceback::Frames,
            Traceback::Frames => match exception_type(line) {
                Some(name) => Traceback::After(truncate(name, MAX_LABEL_VALUE).to_owned()),
                // Not a traceback after all.
                None => Traceback::Outside,
            },
            Traceback::After(name) | Traceback::Chained(name) if is_chain_line(line) => {
                Traceback::Chained(name)
            }
            Traceback::After(_) | Traceback::Chained(_) if line.starts_with(TRACEBACK_START) => {
                Traceback::Frames
            }
            Traceback::After(name) | Traceback::Chained(name) => {
                self.counters.exception(&name, self.target.max_exceptions);
                // This line may start the next traceback.
                let mut outside = Traceback::Outside;
                self.traceback(line, &mut outside);
                outside
            }
        };
        *state = next;
    }

    /// A traceback whose exception line was the last line so far, with no
    /// line since: it is complete.
    fn finish_traceback(&mut self, state: &mut Traceback) {
        if let Traceback::After(name) | Traceback::Chained(name) = std::mem::take(state) {
            self.counters.exception(&name, self.target.max_exceptions);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Deserialize)]
struct DockerLine {
    log: String,
    #[serde(default)]
    stream: String,
}

/// One physical line through the log's format: a whole message, a part
/// of one, or an invalid line. Returns whether no partial message is open.
fn framed(matcher: &mut Matcher, tail: &mut FileTail, raw: &[u8]) -> bool {
    let max = matcher.target.max_line_bytes;
    let (stream, part, complete) = match matcher.target.format {
        LogFormat::Plain => {
            matcher.line(raw, &mut tail.traceback);
            return true;
        }
        LogFormat::Docker => match serde_json::from_slice::<DockerLine>(raw) {
            Ok(d) => {
                let stream = usize::from(d.stream == "stderr");
                match d.log.strip_suffix('\n') {
                    Some(msg) => (stream, msg.as_bytes().to_vec(), true),
                    None => (stream, d.log.into_bytes(), false),
                }
            }
            Err(_) => {
                matcher.counters.parse_errors += 1;
                return tail.joiner.is_empty();
            }
        },
        LogFormat::Cri => {
            let mut fields = raw.splitn(4, |&b| b == b' ');
            let (_time, stream, tag) = (fields.next(), fields.next(), fields.next());
            let msg = fields.next().unwrap_or_default();
            let (Some(stream), Some(tag)) = (stream, tag) else {
                matcher.counters.parse_errors += 1;
                return tail.joiner.is_empty();
            };
            let stream = usize::from(stream == b"stderr");
            match tag.split(|&b| b == b':').next() {
                Some(b"F") => (stream, msg.to_vec(), true),
                Some(b"P") => (stream, msg.to_vec(), false),
                _ => {
                    matcher.counters.parse_errors += 1;
                    return tail.joiner.is_empty();
                }
            }
        }
    };
    let buf = &mut tail.joiner.parts[stream];
    let room = max.saturating_sub(buf.len());
    if part.len() > room {
        buf.extend_from_slice(&part[..room]);
        tail.joiner.cut[stream] = true;
    } else {
        buf.extend_from_slice(&part);
    }
    if complete {
        let whole = std::mem::take(&mut tail.joiner.parts[stream]);
        if std::mem::take(&mut tail.joiner.cut[stream]) {
            matcher.counters.long_lines += 1;
        }
        matcher.line(&whole, &mut tail.traceback);
    }
    tail.joiner.is_empty()
}

/// Reads what the file has, up to `budget` bytes. Returns the bytes read.
fn read_file(
    matcher: &mut Matcher,
    tail: &mut FileTail,
    buf: &mut [u8],
    budget: usize,
) -> std::io::Result<usize> {
    let max_line = matcher.target.max_line_bytes;
    let mut total = 0;
    while total < budget {
        let want = buf.len().min(budget - total);
        let n = match tail.file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..nl];
            if std::mem::take(&mut tail.discard) {
                tail.pending.clear();
                tail.committed = tail.offset + (nl + 1) as u64;
                start = nl + 1;
                continue;
            }
            let complete = if tail.pending.is_empty() && !tail.cut && piece.len() <= max_line {
                framed(matcher, tail, piece)
            } else {
                let room = max_line.saturating_sub(tail.pending.len());
                tail.pending
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                if piece.len() > room {
                    tail.cut = true;
                }
                let line = std::mem::take(&mut tail.pending);
                if std::mem::take(&mut tail.cut) {
                    matcher.counters.long_lines += 1;
                }
                framed(matcher, tail, &line)
            };
            if complete {
                tail.committed = tail.offset + (nl + 1) as u64;
            }
            start = nl + 1;
        }
        let rest = if tail.discard {
            &[][..]
        } else {
            &chunk[start..]
        };
        let room = max_line.saturating_sub(tail.pending.len());
        tail.pending
            .extend_from_slice(&rest[..rest.len().min(room)]);
        if rest.len() > room {
            tail.cut = true;
        }
        tail.offset += n as u64;
        total += n;
    }
    matcher.counters.bytes += total as u64;
    Ok(total)
}

/// The state file: where each file's reading stands.
#[derive(Serialize, Deserialize, Default)]
struct SavedState {
    version: u32,
    files: Vec<SavedFile>,
}

#[derive(Serialize, Deserialize, Clone)]
struct SavedFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Offset after the last complete line.
    offset: u64,
    /// The file's first bytes (up to 64), hex.
    head: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// One log: its files and counts.
struct Tail {
    matcher: Matcher,
    files: Vec<FileTail>,
    /// Whether the first scan (the one that honours `start_at` and the
    /// state file) has run.
    started: bool,
    /// What the state file said when it was loaded.
    saved: Option<Vec<SavedFile>>,
    /// What was last written to the state file.
    written: Vec<u8>,
}

fn read_error_kind(e: &std::io::Error) -> LogReadError {
    match e.kind() {
        ErrorKind::PermissionDenied => LogReadError::PermissionDenied,
        ErrorKind::InvalidInput | ErrorKind::IsADirectory => LogReadError::NotAFile,
        _ => LogReadError::Other,
    }
}

impl Tail {
    fn new(target: LogTarget) -> Self {
        Self {
            matcher: Matcher {
                repeat: Repeat::new(&target),
                target,
                builtin: Builtin::new(),
                counters: Counters::default(),
            },
            files: Vec::new(),
            started: false,
            saved: None,
            written: Vec::new(),
        }
    }

    /// A reload: same log, maybe other rules or limits.
    fn reconfigure(&mut self, target: LogTarget) {
        let old = &self.matcher.target.repeat;
        if target.repeat.window != old.window
            || target.repeat.threshold != old.threshold
            || target.repeat.max_messages != old.max_messages
        {
            self.matcher.repeat = Repeat::new(&target);
        }
        if target.state_file != self.matcher.target.state_file {
            self.written.clear();
        }
        self.matcher.target = target;
    }

    /// The regular files the patterns match now, by identity.
    fn scan(&mut self) -> Vec<(Identity, PathBuf, u64)> {
        let mut found: Vec<(Identity, PathBuf, u64)> = Vec::new();
        let counters = &mut self.matcher.counters;
        let mut add = |path: PathBuf, counters: &mut Counters| match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let id = (meta.dev(), meta.ino());
                if !found.iter().any(|(i, _, _)| *i == id) {
                    found.push((id, path, meta.len()));
                }
            }
            Ok(_) => counters.read_error(LogReadError::NotAFile),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => counters.read_error(read_error_kind(&e)),
        };
        for pattern in &self.matcher.target.paths {
            let literal = !pattern.contains(['*', '?', '[']);
            if literal {
                add(PathBuf::from(pattern), counters);
                continue;
            }
            match glob::glob(pattern) {
                Ok(paths) => {
                    for entry in paths {
                        match entry {
                            Ok(path) => add(path, counters),
                            Err(e) => counters.read_error(read_error_kind(e.error())),
                        }
                    }
                }
                // Validated when the config was loaded.
                Err(_) => counters.read_error(LogReadError::Other),
            }
        }
        found
    }

    fn load_state(&mut self) {
        let Some(path) = self.matcher.target.state_file.clone() else {
            return;
        };
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SavedState>(&bytes) {
                Ok(state) => self.saved = Some(state.files),
                Err(e) => {
                    tracing::warn!(log = %self.matcher.target.name, state_file = %path.display(), error = %e, "Ignoring an unreadable log state file");
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(log = %self.matcher.target.name, state_file = %path.display(), error = %e, "Cannot read the log state file");
            }
        }
    }

    /// Opens a file found by a scan at the position it should be read from.
    fn open_found(&mut self, id: Identity, path: &Path, size: u64, now: Instant) {
        let saved_same = self
            .saved
            .as_ref()
            .and_then(|s| s.iter().find(|f| (f.dev, f.ino) == id).cloned());
        let start = if let Some(saved) = &saved_same {
            saved.offset
        } else if !self.started
            && !self
                .saved
                .as_ref()
                .is_some_and(|s| s.iter().any(|f| f.path == path))
        {
            match self.matcher.target.start_at {
                StartAt::End => size,
                StartAt::Beginning => 0,
            }
        } else {
            // A file that appeared since: all of it is new.
            0
        };
        match FileTail::open(path, start, now) {
            Ok(mut tail) => {
                if let Some(saved) = saved_same {
                    let head = unhex(&saved.head);
                    let shorter = tail.size < saved.offset;
                    let len = head.len();
                    if shorter || (len > 0 && tail.read_head(len) != head) {
                        self.matcher.counters.truncations += 1;
                        if tail.restart().is_err() {
                            self.matcher.counters.read_error(LogReadError::Other);
                            return;
                        }
                    } else {
                        tail.head = head;
                        tail.remember_head();
                    }
                }
                self.files.push(tail);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => self.matcher.counters.read_error(read_error_kind(&e)),
        }
    }

    /// Files the state file knows that no pattern matches any more (rotated
    /// while loopwatch was down): found again by identity in their directory
    /// and read from where they were left.
    fn reopen_rotated(&mut self, now: Instant) {
        let Some(saved) = self.saved.clone() else {
            return;
        };
        for entry in saved {
            let id = (entry.dev, entry.ino);
            if self.files.iter().any(|f| f.id == id) {
                continue;
            }
            let dir = entry.path.parent().unwrap_or(Path::new("."));
            let found = std::fs::read_dir(dir).ok().and_then(|entries| {
                entries.flatten().find_map(|e| {
                    let meta = e.metadata().ok()?;
                    (meta.is_file() && (meta.dev(), meta.ino()) == id).then(|| e.path())
                })
            });
            match found.and_then(|p| FileTail::open(&p, entry.offset, now).ok()) {
                Some(mut tail) => {
                    let head = unhex(&entry.head);
                    if tail.size < entry.offset
                        || (!head.is_empty() && tail.read_head(head.len()) != head)
                    {
                        tracing::warn!(log = %self.matcher.target.name, file = %entry.path.display(), "A log file was rewritten while loopwatch was down; its last lines may be lost");
                        continue;
                    }
                    tail.head = head;
                    tail.current = false;
                    self.matcher.counters.rotations += 1;
                    self.files.push(tail);
                }
                None => {
                    tracing::warn!(log = %self.matcher.target.name, file = %entry.path.display(), "A log file was rotated away while loopwatch was down and is gone; its last lines may be lost");
                }
            }
        }
    }

    fn poll(&mut self, now: Instant) -> Families {
        if !self.started {
            self.load_state();
        }
        self.matcher.repeat.roll(now);
        let found = self.scan();
        // Files known already: still at a matching path, or rotated away.
        for tail in &mut self.files {
            match found.iter().find(|(id, _, _)| *id == tail.id) {
                Some((_, path, size)) => {
                    tail.path = path.clone();
                    tail.current = true;
                    if tail.rewritten(*size) {
                        let counters = &mut self.matcher.counters;
                        counters.truncations += 1;
                        counters.lost_bytes += tail.size.saturating_sub(tail.offset);
                        if tail.restart().is_err() {
                            counters.read_error(LogReadError::Other);
                        }
                    }
                    tail.size = *size;
                }
                None => {
                    if tail.current {
                        tail.current = false;
                        tail.grew = now;
                        self.matcher.counters.rotations += 1;
                    }
                    if let Ok(meta) = tail.file.metadata() {
                        tail.size = meta.len();
                    }
                }
            }
        }
        for (id, path, size) in &found {
            if !self.files.iter().any(|f| f.id == *id) {
                if self.files.len() >= self.matcher.target.max_files {
                    // Bounded descriptors and memory: it waits for a slot.
                    self.matcher.counters.read_error(LogReadError::TooManyFiles);
                    continue;
                }
                self.open_found(*id, path, *size, now);
            }
        }
        if !self.started {
            self.reopen_rotated(now);
            self.started = true;
            self.saved = None;
        }
        // Rotated files first: they hold the older lines.
        self.files.sort_by_key(|f| f.current);
        let mut buf = vec![0u8; CHUNK];
        let budget = self.matcher.target.max_read_bytes;
        let wait = self.matcher.target.rotate_wait;
        let mut keep = Vec::with_capacity(self.files.len());
        for mut tail in std::mem::take(&mut self.files) {
            let before = tail.offset;
            let result = read_file(&mut self.matcher, &mut tail, &mut buf, budget);
            let grew = tail.offset > before;
            if grew {
                tail.grew = now;
                tail.remember_head();
            } else {
                self.matcher.finish_traceback(&mut tail.traceback);
            }
            if let Err(e) = result {
                self.matcher.counters.read_error(read_error_kind(&e));
            }
            let drained = !grew && tail.offset >= tail.size;
            if !tail.current && drained && now.duration_since(tail.grew) >= wait {
                // Its last line, unended, is a line too.
                if !tail.pending.is_empty() {
                    let line = std::mem::take(&mut tail.pending);
                    if framed(&mut self.matcher, &mut tail, &line) {
                        tail.committed = tail.offset;
                    }
                }
                self.matcher.finish_traceback(&mut tail.traceback);
                continue;
            }
            keep.push(tail);
        }
        self.files = keep;
        self.families()
    }

    /// Writes the positions when they changed. Returns a failure to report.
    fn save_state(&mut self) -> Option<CollectError> {
        let path = self.matcher.target.state_file.clone()?;
        let state = SavedState {
            version: 1,
            files: self
                .files
                .iter()
                .map(|f| SavedFile {
                    path: f.path.clone(),
                    dev: f.id.0,
                    ino: f.id.1,
                    offset: f.committed,
                    head: hex(&f.head[..f.head.len().min(f.committed as usize)]),
                })
                .collect(),
        };
        // Compared whole: a file truncated and refilled to the same offset
        // has another head.
        let bytes = match serde_json::to_vec(&state) {
            Ok(bytes) => bytes,
            Err(e) => return Some(CollectError::new(Reason::Other, e.to_string())),
        };
        if bytes == self.written {
            return None;
        }
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => {
                self.written = bytes;
                None
            }
            Err(e) => Some(CollectError::new(
                Reason::Io,
                format!("cannot write the state file {}: {e}", path.display()),
            )),
        }
    }

    fn families(&self) -> Families {
        let log = self.matcher.target.name.as_str();
        let c = &self.matcher.counters;
        let mut b = FamilyBuilder::default();
        b.counter(&families::LOG_LINES, &[log], c.lines as f64);
        b.counter(&families::LOG_READ_BYTES, &[log], c.bytes as f64);
        b.gauge(&families::LOG_FILES, &[log], self.files.len() as f64);
        b.counter(&families::LOG_ROTATIONS, &[log], c.rotations as f64);
        b.counter(&families::LOG_TRUNCATIONS, &[log], c.truncations as f64);
        b.counter(&families::LOG_LOST_BYTES, &[log], c.lost_bytes as f64);
        b.counter(&families::LOG_LONG_LINES, &[log], c.long_lines as f64);
        b.counter(&families::LOG_PARSE_ERRORS, &[log], c.parse_errors as f64);
        b.counter(&families::LOG_REPEATED, &[log], c.repeated as f64);
        for kind in LogReadError::ALL {
            b.counter(
                &families::LOG_READ_ERRORS,
                &[log, kind.as_str()],
                c.read_errors[kind as usize] as f64,
            );
        }
        if self.matcher.target.builtin_rules {
            for (rule, n) in LOG_BUILTIN_RULES.iter().zip(c.builtin) {
                b.counter(&families::LOG_MATCHES, &[log, rule], n as f64);
            }
            let mut cumulative = Vec::with_capacity(LOG_SLOW_CALLBACK_BUCKETS.len());
            for (upper, n) in LOG_SLOW_CALLBACK_BUCKETS.iter().zip(c.slow.counts) {
                cumulative.push((*upper, n));
            }
            b.histogram(
                &families::LOG_SLOW_CALLBACK,
                &[log],
                &cumulative,
                c.slow.count,
                c.slow.sum,
            );
            let mut exceptions: Vec<_> = c.exceptions.iter().collect();
            exceptions.sort();
            for (name, n) in exceptions {
                b.counter(&families::LOG_EXCEPTIONS, &[log, name], *n as f64);
            }
        }
        for rule in &self.matcher.target.rules {
            let counts = c.rules.get(&rule.name);
            let empty = counts.is_none_or(|r| r.counts.is_empty());
            if rule.labels.is_empty() || empty {
                // A rule without labels, or with none matched yet: one series
                // from the start, so increase() sees its first match.
                if rule.labels.is_empty() {
                    let n = counts.and_then(|r| r.counts.get(&Vec::new())).copied();
                    b.counter(
                        &families::LOG_MATCHES,
                        &[log, &rule.name],
                        n.unwrap_or(0) as f64,
                    );
                }
                continue;
            }
            let mut series: Vec<_> = counts
                .map(|r| r.counts.iter().collect())
                .unwrap_or_default();
            series.sort();
            for (values, n) in series {
                let extra: Vec<(&str, &str)> = rule
                    .labels
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str))
                    .collect();
                b.counter_with(
                    &families::LOG_MATCHES,
                    &[log, &rule.name],
                    &extra,
                    *n as f64,
                );
            }
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests;
