//! Checks the content loopwatch ships beside the binary: the Grafana dashboards
//! in `dashboards/`, the Prometheus rules in `alerts/`, their promtool unit
//! tests in `alerts/tests/` and the runbooks in `docs/runbooks.md` that the
//! alerts link to.
//!
//! Every check globs its directory, so a new dashboard or rule file is covered
//! without touching this file. The checks need promtool (from `PATH`, or the
//! `PROMTOOL` environment variable): without it they fail, they never skip.
//!
//! The rule files are read with a small reader for the block-style YAML
//! subset they use (no YAML crate is a dependency); it rejects what it does not
//! understand instead of guessing, and promtool validates the files for real.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde_json::Value;

/// Where every `runbook_url` must point, followed by `#<alertname lowercased>`.
const RUNBOOK_BASE: &str = "https://github.com/loopwatch/loopwatch/blob/main/docs/runbooks.md";

/// Target labels that Prometheus, Kubernetes service discovery or
/// prometheus-operator attach: a metric label with one of these names is
/// renamed `exported_<name>` at scrape time and breaks every query.
const RESERVED_LABELS: &[&str] = &[
    "app",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "node",
    "cluster",
    "replica",
    "prometheus",
    "env",
    "region",
];

/// `job` and `instance` are target labels too: queries may select and group
/// by them, but no rule may set them.
const TARGET_LABELS: &[&str] = &["job", "instance"];

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

// ------------------------------------------------------------------ helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The files directly in `dir` (relative to the crate) whose name ends in one
/// of `exts`, sorted.
fn files_in(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    let dir = repo().join(dir);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            exts.iter().any(|ext| name.ends_with(&format!(".{ext}")))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.{} file in {}",
        exts.join("|*."),
        dir.display()
    );
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Fails the test with every problem found, not just the first.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// promtool from `PROMTOOL` or `PATH`; a missing promtool fails the test.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PROMTOOL={} is not a file; point it at the promtool binary",
            path.display()
        );
        return path;
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join("promtool");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "promtool not found in PATH. These tests validate the shipped alert rules and dashboard \
         queries with it and cannot pass without it: install it (Debian/Ubuntu: \
         `apt-get install prometheus`; or the prometheus tarball from \
         https://prometheus.io/download/) or set PROMTOOL=/path/to/promtool."
    );
}

/// Runs promtool in the crate directory; returns success and its whole output.
fn run_promtool(args: &[OsString]) -> (bool, String) {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let text = format!(
        "$ promtool {}\n{}{}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// --------------------------------------------------------------- dashboards

struct Dashboard {
    name: String,
    text: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    files_in("dashboards", &["json"])
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", rel(&path)));
            Dashboard {
                name: rel(&path),
                text,
                json,
            }
        })
        .collect()
}

/// Every panel, rows included, and the panels nested in (collapsed) rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for panel in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(panel);
            walk(panel.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel.get("type").and_then(Value::as_str) == Some("row")
}

fn panel_name(panel: &Value) -> String {
    let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
    let id = panel.get("id").map(Value::to_string).unwrap_or_default();
    format!("panel {id} {title:?}")
}

fn template_vars(dashboard: &Value) -> Vec<&Value> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

fn var_named<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    template_vars(dashboard)
        .into_iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

/// The query of a query variable, in the old (string) or new (object) form.
fn var_query(var: &Value) -> Option<&str> {
    match var.get("query") {
        Some(Value::String(s)) => Some(s),
        Some(q) => q.get("query").and_then(Value::as_str),
        None => None,
    }
}

fn uses_datasource_var(ds: Option<&Value>) -> bool {
    ds.and_then(|d| d.get("uid")).and_then(Value::as_str) == Some("${datasource}")
        && ds.and_then(|d| d.get("type")).and_then(Value::as_str) == Some("prometheus")
}

/// A PromQL expression of a dashboard, with where it comes from.
struct Query {
    origin: String,
    expr: String,
    legend: Option<String>,
}

/// The expressions of every panel target, and the selector inside every
/// `label_values(selector, label)` / `query_result(expr)` variable query.
fn queries(dashboard: &Dashboard) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in all_panels(&dashboard.json)
        .into_iter()
        .filter(|p| !is_row(p))
    {
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(expr) = target.get("expr").and_then(Value::as_str) {
                let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
                out.push(Query {
                    origin: format!("{} {} target {ref_id}", dashboard.name, panel_name(panel)),
                    expr: expr.to_string(),
                    legend: target
                        .get("legendFormat")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        }
    }
    for var in template_vars(&dashboard.json) {
        let name = var.get("name").and_then(Value::as_str).unwrap_or("?");
        if var.get("type").and_then(Value::as_str) != Some("query") {
            continue;
        }
        if let Some((selector, _label)) = var_query(var).and_then(variable_query_parts) {
            if !selector.is_empty() {
                out.push(Query {
                    origin: format!("{} variable ${name}", dashboard.name),
                    expr: selector,
                    legend: None,
                });
            }
        }
    }
    out
}

/// `label_values(sel, label)` → (sel, Some(label)); `label_values(label)` →
/// ("", Some(label)); `query_result(expr)` → (expr, None).
fn variable_query_parts(query: &str) -> Option<(String, Option<String>)> {
    let query = query.trim();
    if let Some(inner) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        let args = split_top_level_args(inner);
        return match args.as_slice() {
            [label] => Some((String::new(), Some(label.trim().to_string()))),
            [selector, label] => {
                Some((selector.trim().to_string(), Some(label.trim().to_string())))
            }
            _ => None,
        };
    }
    query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
        .map(|inner| (inner.trim().to_string(), None))
}

/// Replaces Grafana variables with values promtool can parse.
fn substitute_grafana_vars(expr: &str) -> String {
    let var = Regex::new(
        r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]|\$([A-Za-z_][A-Za-z0-9_]*)",
    )
    .unwrap();
    var.replace_all(expr, |c: &regex::Captures<'_>| {
        let name = c
            .get(1)
            .or_else(|| c.get(2))
            .or_else(|| c.get(3))
            .unwrap()
            .as_str();
        match name {
            "__rate_interval" => "5m",
            "__interval" => "1m",
            "__range" => "1h",
            "__interval_ms" => "60000",
            "__range_s" => "3600",
            "__range_ms" => "3600000",
            _ => "value",
        }
        .to_string()
    })
    .into_owned()
}

/// Every `rate(`, `irate(` and `increase(` whose range is not exactly
/// `[$__rate_interval]` (one problem string each).
fn rate_interval_problems(expr: &str) -> Vec<String> {
    let call = Regex::new(r"\b(rate|irate|increase)\s*\(").unwrap();
    let range = Regex::new(r"\[([^\]]*)\]").unwrap();
    let mut problems = Vec::new();
    for m in call.find_iter(expr) {
        let open = m.end() - 1;
        let Some(close) = matching_paren(expr, open) else {
            problems.push(format!("unbalanced parenthesis after `{}`", m.as_str()));
            continue;
        };
        let args = &expr[open + 1..close];
        let ranges: Vec<&str> = range
            .captures_iter(args)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        if ranges.is_empty() || ranges.iter().any(|r| r.trim() != "$__rate_interval") {
            problems.push(format!(
                "`{}…)` must use [$__rate_interval], found {:?}",
                m.as_str(),
                ranges
            ));
        }
    }
    problems
}

/// Index of the `)` matching the `(` at `open`, skipping string literals.
fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// Splits `a, f(b, c), "d,e"` at top-level commas.
fn split_top_level_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut current = String::new();
    for ch in s.chars() {
        if let Some(q) = quote {
            current.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == q {
                quote = None;
            }
            continue;
        }
        match ch {
            '"' | '\'' | '`' => quote = Some(ch),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    if !current.trim().is_empty() || !args.is_empty() {
        args.push(current);
    }
    args
}

// ------------------------------------------------------- PromQL label scan

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Range,
    Punct(String),
}

/// A lexer for PromQL good enough to find label names; not a validator
/// (promtool validates).
fn lex_promql(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str(s));
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            toks.push(Tok::Range);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            toks.push(Tok::Num);
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["=~", "!~", "!=", "==", "<=", ">="].contains(&two.as_str()) {
                toks.push(Tok::Punct(two));
                i += 2;
            } else {
                toks.push(Tok::Punct(c.to_string()));
                i += 1;
            }
        }
    }
    toks
}

/// A vector selector: its metric name (if written) and its label matchers.
#[derive(Debug, Default, PartialEq)]
struct Selector {
    metric: Option<String>,
    matchers: Vec<(String, String, String)>,
}

/// What an expression does with label names.
#[derive(Debug, Default)]
struct LabelUse {
    selectors: Vec<Selector>,
    /// by / without / on / ignoring / group_left / group_right lists, and the
    /// source labels of label_replace / label_join.
    read: Vec<String>,
    /// Destination labels of label_replace / label_join.
    written: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

fn scan_labels(expr: &str) -> LabelUse {
    let toks = lex_promql(expr);
    let mut out = LabelUse::default();
    let punct = |i: usize, p: &str| matches!(toks.get(i), Some(Tok::Punct(x)) if x == p);
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(word) if KEYWORDS[..6].contains(&word.as_str()) && punct(i + 1, "(") => {
                // A grouping list: idents up to the closing parenthesis.
                i += 2;
                while i < toks.len() && !punct(i, ")") {
                    if let Tok::Ident(label) = &toks[i] {
                        out.read.push(label.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(func) if punct(i + 1, "(") => {
                if func == "label_replace" || func == "label_join" {
                    let strings = call_string_args(&toks, i + 1);
                    // label_replace(v, dst, replacement, src, regex)
                    // label_join(v, dst, separator, src...)
                    if let Some(Some(dst)) = strings.get(1) {
                        out.written.push(dst.clone());
                    }
                    let sources = if func == "label_replace" {
                        strings.get(3..4).unwrap_or(&[])
                    } else {
                        strings.get(3..).unwrap_or(&[])
                    };
                    out.read.extend(sources.iter().flatten().cloned());
                }
                i += 1;
            }
            Tok::Ident(metric) if punct(i + 1, "{") => {
                let (selector, next) = parse_matchers(&toks, i + 1, Some(metric.clone()));
                out.selectors.push(selector);
                i = next;
                continue;
            }
            Tok::Punct(p) if p == "{" => {
                let (selector, next) = parse_matchers(&toks, i, None);
                out.selectors.push(selector);
                i = next;
                continue;
            }
            Tok::Ident(word)
                if !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                    && !word.starts_with('$') =>
            {
                out.selectors.push(Selector {
                    metric: Some(word.clone()),
                    matchers: Vec::new(),
                });
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The matchers of the `{…}` at `open`; returns the selector and the index
/// after the closing brace.
fn parse_matchers(toks: &[Tok], open: usize, metric: Option<String>) -> (Selector, usize) {
    let mut selector = Selector {
        metric,
        matchers: Vec::new(),
    };
    let mut i = open + 1;
    while i < toks.len() && toks[i] != Tok::Punct("}".into()) {
        if let (Some(Tok::Ident(label)), Some(Tok::Punct(op)), Some(Tok::Str(value))) =
            (toks.get(i), toks.get(i + 1), toks.get(i + 2))
        {
            selector
                .matchers
                .push((label.clone(), op.clone(), value.clone()));
            i += 3;
        } else {
            i += 1;
        }
    }
    (selector, i + 1)
}

/// For the call whose `(` is at `open`: each top-level argument's string
/// value if it is a single string literal.
fn call_string_args(toks: &[Tok], open: usize) -> Vec<Option<String>> {
    let mut args: Vec<Vec<&Tok>> = vec![Vec::new()];
    let mut depth = 0;
    for tok in &toks[open..] {
        match tok {
            Tok::Punct(p) if p == "(" || p == "{" => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            Tok::Punct(p) if p == ")" || p == "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(p) if p == "," && depth == 1 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().unwrap().push(tok);
    }
    args.into_iter()
        .map(|arg| match arg.as_slice() {
            [Tok::Str(s)] => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Label names in `{{label}}` of a legend or `$labels.label` of a template.
fn template_label_reads(text: &str) -> Vec<String> {
    let re =
        Regex::new(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
            .unwrap();
    re.captures_iter(text)
        .map(|c| c.get(1).or_else(|| c.get(2)).unwrap().as_str().to_string())
        .collect()
}

/// Problems with reserved label names: reads and selections may use `job`
/// and `instance`, writes may use neither.
fn reserved_label_problems(origin: &str, reads: &[String], writes: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for label in reads {
        if RESERVED_LABELS.contains(&label.as_str()) {
            problems.push(format!("{origin}: uses reserved target label `{label}`"));
        }
    }
    for label in writes {
        if RESERVED_LABELS.contains(&label.as_str()) || TARGET_LABELS.contains(&label.as_str()) {
            problems.push(format!("{origin}: sets reserved target label `{label}`"));
        }
    }
    problems
}

fn expr_label_problems(origin: &str, expr: &str) -> Vec<String> {
    let used = scan_labels(expr);
    let mut reads = used.read.clone();
    for selector in &used.selectors {
        reads.extend(selector.matchers.iter().map(|(l, _, _)| l.clone()));
    }
    reserved_label_problems(origin, &reads, &used.written)
}

// ----------------------------------------------------------- YAML (subset)

/// A YAML value of the block-style subset the rule and test files use.
/// Scalars stay strings: the checks compare text.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }
    fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }
    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            _ => &[],
        }
    }
}

struct YamlReader {
    lines: Vec<String>,
    pos: usize,
}

fn parse_yaml(text: &str) -> Result<Yaml, String> {
    let mut reader = YamlReader {
        lines: text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect(),
        pos: 0,
    };
    if let Some(n) = reader.lines.iter().position(|l| {
        let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
        l[..indent].contains('\t')
    }) {
        return Err(format!("line {}: tab in indentation", n + 1));
    }
    let value = reader.node(0)?;
    reader.skip_blank();
    match reader.lines.get(reader.pos) {
        Some(line) => Err(format!("line {}: unexpected {line:?}", reader.pos + 1)),
        None => Ok(value),
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Strips a ` # comment` outside quotes from a plain or flow scalar.
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, ch) in s.char_indices() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            // Quotes only open a quoted scalar at the start of a token: the
            // apostrophe in `loopwatch's` is text.
            None if (ch == '"' || ch == '\'') && " [{,:".contains(prev) => quote = Some(ch),
            None if ch == '#' && prev.is_whitespace() => return s[..i].trim_end(),
            None => {}
        }
        prev = ch;
    }
    s.trim_end()
}

/// A `key: rest` line split at its colon; `None` if the line is no mapping key.
fn split_key(content: &str) -> Option<(String, &str)> {
    if content.starts_with('"') || content.starts_with('\'') {
        let (key, len) = quoted_scalar(content).ok()?;
        let rest = content[len..].trim_start();
        return rest
            .strip_prefix(':')
            .filter(|r| r.is_empty() || r.starts_with(' '))
            .map(|r| (key, r.trim()));
    }
    if content.starts_with('#') || content.starts_with('[') || content.starts_with('{') {
        return None;
    }
    let bytes = content.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'#' && i > 0 && bytes[i - 1] == b' ' {
            return None;
        }
        if bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some((content[..i].trim().to_string(), content[i + 1..].trim()));
        }
    }
    None
}

/// A single- or double-quoted scalar at the start of `s`; returns its value
/// and the number of bytes it took.
fn quoted_scalar(s: &str) -> Result<(String, usize), String> {
    let quote = s.chars().next().ok_or("empty scalar")?;
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1).peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == quote {
            if quote == '\'' && chars.peek().map(|&(_, c)| c) == Some('\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return Ok((out, i + 1));
        }
        if quote == '"' && ch == '\\' {
            let (_, esc) = chars.next().ok_or("dangling backslash")?;
            match esc {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '"' | '\\' | '/' | ' ' => out.push(esc),
                'u' | 'x' | 'U' => {
                    let len = match esc {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..len)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    let code =
                        u32::from_str_radix(&hex, 16).map_err(|e| format!("bad escape: {e}"))?;
                    out.push(char::from_u32(code).ok_or("bad escape")?);
                }
                other => return Err(format!("unsupported escape \\{other}")),
            }
            continue;
        }
        out.push(ch);
    }
    Err("quoted scalar not closed on its line (multi-line quoted scalars are not supported here; use a block scalar `|`)".into())
}

impl YamlReader {
    fn err<T>(&self, msg: &str) -> Result<T, String> {
        Err(format!("line {}: {msg}", self.pos + 1))
    }

    fn skip_blank(&mut self) {
        while let Some(line) = self.lines.get(self.pos) {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || (t == "---" && indent_of(line) == 0) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Indent and content of the next meaningful line.
    fn peek(&mut self) -> Option<(usize, String)> {
        self.skip_blank();
        self.lines
            .get(self.pos)
            .map(|l| (indent_of(l), l.trim_start().to_string()))
    }

    fn node(&mut self, min_indent: usize) -> Result<Yaml, String> {
        let Some((indent, content)) = self.peek() else {
            return Ok(Yaml::Null);
        };
        if indent < min_indent {
            return Ok(Yaml::Null);
        }
        if content == "-" || content.starts_with("- ") {
            self.seq(indent)
        } else if split_key(&content).is_some() {
            self.map(indent)
        } else {
            self.pos += 1;
            self.value(&content, indent.saturating_sub(1))
        }
    }

    fn seq(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut items = Vec::new();
        while let Some((ind, content)) = self.peek() {
            if ind < indent || !(content == "-" || content.starts_with("- ")) {
                break;
            }
            if ind > indent {
                return self.err("bad indentation in a sequence");
            }
            let rest = content[1..].trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                self.pos += 1;
                items.push(self.node(indent + 1)?);
            } else if split_key(rest).is_some() {
                // `- key: value` starts a mapping at the column of `key`.
                let col = indent + (content.len() - rest.len());
                self.lines[self.pos] = format!("{}{}", " ".repeat(col), rest);
                items.push(self.map(col)?);
            } else {
                let rest = rest.to_string();
                self.pos += 1;
                items.push(self.value(&rest, indent)?);
            }
        }
        Ok(Yaml::Seq(items))
    }

    fn map(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some((ind, content)) = self.peek() {
            if ind < indent {
                break;
            }
            if ind > indent {
                return self.err("bad indentation in a mapping");
            }
            if content.starts_with("- ") || content == "-" {
                return self.err("sequence item where a mapping key was expected");
            }
            let Some((key, rest)) = split_key(&content) else {
                return self.err(&format!("expected `key: value`, found {content:?}"));
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return self.err(&format!("duplicate key {key:?}"));
            }
            let rest = rest.to_string();
            self.pos += 1;
            let value = if rest.is_empty() || rest.starts_with('#') {
                match self.peek() {
                    Some((i, _)) if i > indent => self.node(indent + 1)?,
                    Some((i, c)) if i == indent && (c == "-" || c.starts_with("- ")) => {
                        self.seq(indent)?
                    }
                    _ => Yaml::Null,
                }
            } else {
                self.value(&rest, indent)?
            };
            entries.push((key, value));
        }
        Ok(Yaml::Map(entries))
    }

    /// The scalar or flow value `rest` on a line already consumed, whose
    /// parent is at `parent`: continuation lines are those indented deeper.
    fn value(&mut self, rest: &str, parent: usize) -> Result<Yaml, String> {
        let line = self.pos; // the line after the one holding `rest`
        let at = |msg: String| format!("line {line}: {msg}");
        match rest.chars().next() {
            Some('&' | '*' | '!') => Err(at(format!(
                "anchors, aliases and tags are not supported here: {rest:?}"
            ))),
            Some('|' | '>') if parent != usize::MAX => self.block_scalar(rest, parent),
            Some('|' | '>') => Err(at(
                "block scalars inside flow collections are not supported here".into(),
            )),
            Some('"' | '\'') => {
                let (s, len) = quoted_scalar(rest).map_err(at)?;
                let tail = rest[len..].trim();
                if !tail.is_empty() && !tail.starts_with('#') {
                    return Err(at(format!("unexpected {tail:?} after a quoted scalar")));
                }
                Ok(Yaml::Str(s))
            }
            Some('[') => {
                let flow = strip_comment(rest);
                let inner = flow
                    .strip_prefix('[')
                    .and_then(|f| f.strip_suffix(']'))
                    .ok_or_else(|| at(format!("flow sequence must close on its line: {rest:?}")))?;
                let mut items = Vec::new();
                for item in split_top_level_args(inner) {
                    let item = item.trim();
                    if item.starts_with('[') || item.starts_with('{') {
                        return Err(at("nested flow collections are not supported here".into()));
                    }
                    items.push(self.value(item, usize::MAX)?);
                }
                Ok(Yaml::Seq(items))
            }
            Some('{') => {
                let flow = strip_comment(rest);
                let inner = flow
                    .strip_prefix('{')
                    .and_then(|f| f.strip_suffix('}'))
                    .ok_or_else(|| at(format!("flow mapping must close on its line: {rest:?}")))?;
                let mut entries = Vec::new();
                for item in split_top_level_args(inner) {
                    let (key, value) = split_key(item.trim())
                        .ok_or_else(|| at(format!("bad flow mapping entry {item:?}")))?;
                    let value = self.value(value, usize::MAX)?;
                    entries.push((key, value));
                }
                Ok(Yaml::Map(entries))
            }
            _ => {
                let mut s = strip_comment(rest).to_string();
                // A plain scalar continues on deeper-indented lines (not
                // inside a flow collection, whose parent is usize::MAX).
                while let Some(l) = self.lines.get(self.pos) {
                    if parent == usize::MAX || l.trim().is_empty() || indent_of(l) <= parent {
                        break;
                    }
                    s.push(' ');
                    s.push_str(strip_comment(l.trim()));
                    self.pos += 1;
                }
                Ok(if s == "~" || s == "null" || s.is_empty() {
                    Yaml::Null
                } else {
                    Yaml::Str(s)
                })
            }
        }
    }

    fn block_scalar(&mut self, header: &str, parent: usize) -> Result<Yaml, String> {
        let header = strip_comment(header);
        let folded = header.starts_with('>');
        let mut keep = false;
        let mut strip = false;
        let mut explicit: Option<usize> = None;
        for ch in header[1..].chars() {
            match ch {
                '-' => strip = true,
                '+' => keep = true,
                d if d.is_ascii_digit() => explicit = d.to_digit(10).map(|d| d as usize),
                _ => return self.err(&format!("bad block scalar header {header:?}")),
            }
        }
        let start = self.pos;
        let mut end = start;
        let mut content_indent = explicit.map(|d| parent + d);
        while let Some(l) = self.lines.get(end) {
            if l.trim().is_empty() {
                end += 1;
                continue;
            }
            let ind = indent_of(l);
            let needed = *content_indent.get_or_insert(ind);
            if ind <= parent || ind < needed {
                break;
            }
            end += 1;
        }
        // Trailing blank lines belong to the scalar only for chomping.
        let mut last = end;
        while last > start && self.lines[last - 1].trim().is_empty() {
            last -= 1;
        }
        let ci = content_indent.unwrap_or(parent + 1);
        let body: Vec<String> = self.lines[start..last]
            .iter()
            .map(|l| l.get(ci..).unwrap_or("").to_string())
            .collect();
        let trailing_blank = end - last;
        self.pos = end;
        let mut text = if folded {
            let mut t = String::new();
            for (i, l) in body.iter().enumerate() {
                if i > 0 {
                    if l.is_empty() || body[i - 1].is_empty() {
                        t.push('\n');
                    } else {
                        t.push(' ');
                    }
                }
                t.push_str(l);
            }
            t
        } else {
            body.join("\n")
        };
        if !strip && !text.is_empty() {
            text.push('\n');
            if keep {
                text.push_str(&"\n".repeat(trailing_blank));
            }
        }
        Ok(Yaml::Str(text))
    }
}

// ------------------------------------------------------------------ rules

struct Rule {
    file: String,
    group: String,
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    has_for: bool,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

impl Rule {
    fn name(&self) -> &str {
        self.alert
            .as_deref()
            .or(self.record.as_deref())
            .unwrap_or("?")
    }
    fn origin(&self) -> String {
        format!("{} group {} rule {}", self.file, self.group, self.name())
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn rule_files() -> Vec<PathBuf> {
    files_in("alerts", &["yml", "yaml"])
}

fn test_files() -> Vec<PathBuf> {
    files_in("alerts/tests", &["yml", "yaml"])
}

fn parse_yaml_file(path: &Path) -> Yaml {
    parse_yaml(&read(path)).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n(this test reads a block-style YAML subset; promtool check rules says whether \
             the file is valid YAML)",
            rel(path)
        )
    })
}

fn string_map(y: Option<&Yaml>) -> Vec<(String, String)> {
    y.map(Yaml::entries)
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| (k.clone(), v.str().unwrap_or_default().to_string()))
        .collect()
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = parse_yaml_file(&path);
        let groups = doc.get("groups").map(Yaml::items).unwrap_or_default();
        assert!(!groups.is_empty(), "{}: no rule groups", rel(&path));
        for group in groups {
            let group_name = group
                .get("name")
                .and_then(Yaml::str)
                .unwrap_or("?")
                .to_string();
            for rule in group.get("rules").map(Yaml::items).unwrap_or_default() {
                let get = |k: &str| rule.get(k).and_then(Yaml::str).map(str::to_string);
                out.push(Rule {
                    file: rel(&path),
                    group: group_name.clone(),
                    alert: get("alert"),
                    record: get("record"),
                    expr: get("expr").unwrap_or_default(),
                    has_for: get("for").is_some(),
                    labels: string_map(rule.get("labels")),
                    annotations: string_map(rule.get("annotations")),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no rules in alerts/*.yml");
    out
}

/// GitHub's anchor for a Markdown heading.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// `## ` headings of docs/runbooks.md outside code fences, with their text.
fn runbook_sections() -> BTreeMap<String, (String, String)> {
    let text = read(&repo().join("docs/runbooks.md"));
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String, String)> = None;
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence {
            if let Some(heading) = line.strip_prefix("## ") {
                if let Some((anchor, h, body)) = current.take() {
                    sections.insert(anchor, (h, body));
                }
                current = Some((
                    github_anchor(heading),
                    heading.trim().to_string(),
                    String::new(),
                ));
                continue;
            }
        }
        if let Some((_, _, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((anchor, h, body)) = current {
        sections.insert(anchor, (h, body));
    }
    sections
}

// ================================================================== tests

#[test]
fn dashboards_are_valid_json_with_schema_39_unique_uids_and_tags() {
    let mut problems = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    let uid_chars = Regex::new(r"^[A-Za-z0-9_-]+$").unwrap();
    for d in dashboards() {
        if d.json.get("schemaVersion").and_then(Value::as_i64) != Some(39) {
            problems.push(format!("{}: schemaVersion must be 39", d.name));
        }
        match d.json.get("uid").and_then(Value::as_str) {
            None | Some("") => problems.push(format!("{}: no uid", d.name)),
            Some(uid) => {
                if uid.len() > 40 {
                    problems.push(format!(
                        "{}: uid {uid:?} is longer than 40 characters",
                        d.name
                    ));
                }
                if !uid_chars.is_match(uid) {
                    problems.push(format!(
                        "{}: uid {uid:?} has characters other than A-Za-z0-9_-",
                        d.name
                    ));
                }
                if let Some(other) = uids.insert(uid.to_string(), d.name.clone()) {
                    problems.push(format!("{}: uid {uid:?} is also used by {other}", d.name));
                }
            }
        }
        if d.json
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            problems.push(format!("{}: no title", d.name));
        }
        let tags = d.json.get("tags").and_then(Value::as_array);
        if !tags.is_some_and(|t| t.iter().any(|t| t == "loopwatch")) {
            problems.push(format!("{}: tags must include \"loopwatch\"", d.name));
        }
    }
    assert_no_problems("dashboard metadata", &problems);
}

#[test]
fn dashboards_have_no_datasource_inputs() {
    let mut problems = Vec::new();
    for d in dashboards() {
        for needle in ["${DS_", "__inputs"] {
            if d.text.contains(needle) {
                problems.push(format!(
                    "{}: contains {needle:?}; use the `datasource` template variable so the file \
                     works both imported and provisioned",
                    d.name
                ));
            }
        }
    }
    assert_no_problems("exported-dashboard leftovers", &problems);
}

#[test]
fn dashboards_have_datasource_job_and_instance_variables() {
    let mut problems = Vec::new();
    for d in dashboards() {
        match var_named(&d.json, "datasource") {
            Some(v)
                if v.get("type").and_then(Value::as_str) == Some("datasource")
                    && v.get("query").and_then(Value::as_str) == Some("prometheus") => {}
            _ => problems.push(format!(
                "{}: needs a variable `datasource` of type datasource with query prometheus",
                d.name
            )),
        }
        for name in ["job", "instance"] {
            if var_named(&d.json, name)
                .and_then(|v| v.get("type"))
                .and_then(Value::as_str)
                != Some("query")
            {
                problems.push(format!("{}: needs a query variable `{name}`", d.name));
            }
        }
        if let Some(q) = var_named(&d.json, "instance").and_then(var_query) {
            if !q.contains("$job") {
                problems.push(format!(
                    "{}: variable instance must depend on $job: {q:?}",
                    d.name
                ));
            }
        }
        for v in template_vars(&d.json) {
            if v.get("type").and_then(Value::as_str) == Some("query")
                && !uses_datasource_var(v.get("datasource"))
            {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
                problems.push(format!(
                    "{}: variable {name} must use datasource {{\"type\":\"prometheus\",\"uid\":\"${{datasource}}\"}}",
                    d.name
                ));
            }
        }
    }
    assert_no_problems("dashboard variables", &problems);
}

#[test]
fn dashboard_panels_have_description_unit_and_datasource() {
    let mut problems = Vec::new();
    for d in dashboards() {
        let panels: Vec<&Value> = all_panels(&d.json)
            .into_iter()
            .filter(|p| !is_row(p))
            .collect();
        if panels.is_empty() {
            problems.push(format!("{}: no panels", d.name));
        }
        for panel in panels {
            let name = format!("{} {}", d.name, panel_name(panel));
            if panel
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no description"));
            }
            if panel
                .pointer("/fieldConfig/defaults/unit")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no fieldConfig.defaults.unit"));
            }
            if !uses_datasource_var(panel.get("datasource")) {
                problems.push(format!(
                    "{name}: datasource must be the ${{datasource}} variable"
                ));
            }
            let targets = panel.get("targets").and_then(Value::as_array);
            if targets.is_none_or(|t| t.is_empty()) {
                problems.push(format!("{name}: no targets"));
            }
            for (i, target) in targets.into_iter().flatten().enumerate() {
                if !uses_datasource_var(target.get("datasource")) {
                    problems.push(format!(
                        "{name} target {i}: datasource must be the ${{datasource}} variable"
                    ));
                }
                if target
                    .get("expr")
                    .and_then(Value::as_str)
                    .is_none_or(|e| e.trim().is_empty())
                {
                    problems.push(format!("{name} target {i}: no expr"));
                }
            }
        }
    }
    assert_no_problems("dashboard panels", &problems);
}

#[test]
fn dashboard_rate_functions_use_rate_interval() {
    let mut problems = Vec::new();
    for d in dashboards() {
        for q in queries(&d) {
            for p in rate_interval_problems(&q.expr) {
                problems.push(format!("{}: {p} in {:?}", q.origin, q.expr));
            }
        }
    }
    assert_no_problems("rate windows", &problems);
}

#[test]
fn dashboard_queries_filter_by_job_and_instance() {
    let mut problems = Vec::new();
    for d in dashboards() {
        for q in queries(&d) {
            if q.origin.ends_with("variable $instance") || q.origin.ends_with("variable $job") {
                continue; // they choose job and instance
            }
            for s in scan_labels(&q.expr).selectors {
                let has = |label: &str, value: &str| {
                    s.matchers
                        .iter()
                        .any(|(l, op, v)| l == label && op == "=~" && v == value)
                };
                if !has("job", "$job") || !has("instance", "$instance") {
                    problems.push(format!(
                        "{}: selector {} lacks job=~\"$job\", instance=~\"$instance\" in {:?}",
                        q.origin,
                        s.metric.as_deref().unwrap_or("{…}"),
                        q.expr
                    ));
                }
            }
        }
    }
    assert_no_problems("job/instance filters", &problems);
}

#[test]
fn dashboard_expressions_parse_with_promtool() {
    let mut rules_yaml = String::from("groups:\n");
    let mut index = Vec::new();
    for (n, d) in dashboards().iter().enumerate() {
        rules_yaml.push_str(&format!("  - name: dashboard_{n}\n    rules:\n"));
        for q in queries(d) {
            let record = format!("dashboard_query_{}", index.len());
            let expr = substitute_grafana_vars(&q.expr);
            rules_yaml.push_str(&format!(
                "      - record: {record}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
            index.push(format!("{record}: {} = {expr}", q.origin));
        }
    }
    assert!(!index.is_empty(), "no dashboard queries found");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard_queries.yml");
    std::fs::write(&file, &rules_yaml).expect("write rules file");
    let (ok, output) = run_promtool(&["check".into(), "rules".into(), file.into_os_string()]);
    assert!(
        ok,
        "promtool rejects dashboard queries:\n{output}\nqueries:\n{}",
        index.join("\n")
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    let mut args: Vec<OsString> = vec!["check".into(), "rules".into()];
    args.extend(rule_files().into_iter().map(PathBuf::into_os_string));
    let (ok, output) = run_promtool(&args);
    assert!(ok, "promtool check rules failed:\n{output}");
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let mut args: Vec<OsString> = vec!["test".into(), "rules".into()];
    args.extend(test_files().into_iter().map(PathBuf::into_os_string));
    let (ok, output) = run_promtool(&args);
    assert!(ok, "promtool test rules failed:\n{output}");
}

#[test]
fn alert_rules_have_severity_annotations_and_runbook() {
    let mut problems = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    let sections = runbook_sections();
    for rule in rules() {
        if let Some(other) = groups.insert(rule.group.clone(), rule.file.clone()) {
            if other != rule.file {
                problems.push(format!(
                    "{}: group {} is also defined in {other}",
                    rule.file, rule.group
                ));
            }
        }
        let Some(alert) = rule.alert.clone() else {
            continue;
        };
        let origin = rule.origin();
        if let Some(other) = names.insert(alert.clone(), rule.file.clone()) {
            problems.push(format!("{origin}: alert name also used in {other}"));
        }
        if !rule.has_for {
            problems.push(format!("{origin}: no `for`"));
        }
        match rule.label("severity") {
            Some(s) if SEVERITIES.contains(&s) => {}
            other => problems.push(format!(
                "{origin}: severity must be one of {SEVERITIES:?}, found {other:?}"
            )),
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule.annotation(key).is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{origin}: no annotation {key}"));
            }
        }
        if let Some(desc) = rule.annotation("description") {
            if !desc.contains("$value") && !desc.contains("$labels") {
                problems.push(format!(
                    "{origin}: description shows neither $labels nor $value"
                ));
            }
        }
        let expected = format!("{RUNBOOK_BASE}#{}", alert.to_lowercase());
        match rule.annotation("runbook_url") {
            Some(url) if url == expected => {}
            other => problems.push(format!(
                "{origin}: runbook_url must be {expected:?}, found {other:?}"
            )),
        }
        match sections.get(&alert.to_lowercase()) {
            None => problems.push(format!(
                "{origin}: docs/runbooks.md has no `## {alert}` section (anchor #{})",
                alert.to_lowercase()
            )),
            Some((_, body)) => {
                for part in ["Meaning", "Impact", "Diagnosis", "Mitigation"] {
                    if !body.contains(part) {
                        problems.push(format!("{origin}: runbook section has no {part}"));
                    }
                }
            }
        }
    }
    // A runbook section for an alert that no longer exists is stale.
    let alert_heading = Regex::new(r"^[A-Z][A-Za-z0-9]+$").unwrap();
    for (anchor, (heading, _)) in &sections {
        if alert_heading.is_match(heading) && !names.contains_key(heading) {
            problems.push(format!(
                "docs/runbooks.md: section #{anchor} names no alert in alerts/*.yml"
            ));
        }
    }
    assert_no_problems("alert rules", &problems);
}

#[test]
fn every_alert_has_firing_and_quiet_promtool_cases() {
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let mut covered_files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut problems = Vec::new();
    for path in test_files() {
        let doc = parse_yaml_file(&path);
        for rule_file in doc.get("rule_files").map(Yaml::items).unwrap_or_default() {
            let target = path
                .parent()
                .unwrap()
                .join(rule_file.str().unwrap_or_default());
            match target.canonicalize() {
                Ok(p) => {
                    covered_files.insert(p);
                }
                Err(e) => problems.push(format!(
                    "{}: rule file {}: {e}",
                    rel(&path),
                    target.display()
                )),
            }
        }
        for test in doc.get("tests").map(Yaml::items).unwrap_or_default() {
            for case in test
                .get("alert_rule_test")
                .map(Yaml::items)
                .unwrap_or_default()
            {
                let Some(name) = case.get("alertname").and_then(Yaml::str) else {
                    continue;
                };
                if case
                    .get("exp_alerts")
                    .map(Yaml::items)
                    .unwrap_or_default()
                    .is_empty()
                {
                    quiet.insert(name.to_string());
                } else {
                    firing.insert(name.to_string());
                }
            }
        }
    }
    for path in rule_files() {
        if !covered_files.contains(&path.canonicalize().unwrap()) {
            problems.push(format!(
                "{}: no file in alerts/tests lists it in rule_files",
                rel(&path)
            ));
        }
    }
    for rule in rules() {
        let Some(alert) = &rule.alert else { continue };
        if !firing.contains(alert) {
            problems.push(format!(
                "{}: no promtool case where it fires",
                rule.origin()
            ));
        }
        if !quiet.contains(alert) {
            problems.push(format!(
                "{}: no promtool case where it does not fire",
                rule.origin()
            ));
        }
    }
    assert_no_problems("alert unit tests", &problems);
}

#[test]
fn no_reserved_target_label_names() {
    let mut problems = Vec::new();
    for d in dashboards() {
        for q in queries(&d) {
            problems.extend(expr_label_problems(&q.origin, &q.expr));
            if let Some(legend) = &q.legend {
                problems.extend(reserved_label_problems(
                    &q.origin,
                    &template_label_reads(legend),
                    &[],
                ));
            }
        }
        for v in template_vars(&d.json) {
            if let Some((_, Some(label))) = var_query(v).and_then(variable_query_parts) {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
                problems.extend(reserved_label_problems(
                    &format!("{} variable ${name}", d.name),
                    &[label],
                    &[],
                ));
            }
        }
    }
    for rule in rules() {
        let origin = rule.origin();
        problems.extend(expr_label_problems(&origin, &rule.expr));
        let keys: Vec<String> = rule.labels.iter().map(|(k, _)| k.clone()).collect();
        problems.extend(reserved_label_problems(&origin, &[], &keys));
        for (_, text) in rule.labels.iter().chain(&rule.annotations) {
            problems.extend(reserved_label_problems(
                &origin,
                &template_label_reads(text),
                &[],
            ));
        }
    }
    assert_no_problems("reserved label names", &problems);
}

// ------------------------------------------- the checkers themselves

#[test]
fn checker_finds_panels_nested_in_collapsed_rows() {
    let dashboard: Value = serde_json::json!({"panels": [
        {"type": "row", "collapsed": true, "panels": [{"type": "timeseries", "id": 7}]},
        {"type": "stat", "id": 8}
    ]});
    let ids: Vec<i64> = all_panels(&dashboard)
        .into_iter()
        .filter(|p| !is_row(p))
        .filter_map(|p| p["id"].as_i64())
        .collect();
    assert_eq!(ids, [7, 8]);
}

#[test]
fn checker_flags_fixed_rate_windows() {
    assert!(rate_interval_problems(r#"sum(rate(x{a="b"}[$__rate_interval]))"#).is_empty());
    assert!(
        rate_interval_problems(r#"increase(x[$__rate_interval]) / irate(y[$__rate_interval])"#)
            .is_empty()
    );
    assert_eq!(rate_interval_problems(r#"rate(x[5m])"#).len(), 1);
    assert_eq!(rate_interval_problems(r#"irate(x[$__interval])"#).len(), 1);
    assert_eq!(
        rate_interval_problems(r#"rate(x[$__rate_interval]) + increase(y[1h])"#).len(),
        1
    );
}

#[test]
fn checker_substitutes_grafana_variables() {
    assert_eq!(
        substitute_grafana_vars(
            r#"rate(x{job=~"$job", i=~"${instance:regex}"}[$__rate_interval]) [$__range] [${__interval}]"#
        ),
        r#"rate(x{job=~"value", i=~"value"}[5m]) [1h] [1m]"#
    );
}

#[test]
fn checker_finds_label_names_in_promql() {
    let used = scan_labels(
        r#"sum by (group, pod) (rate(m_total{job=~"$job", namespace="a,b", x="}"}[5m]))
           / on (instance) group_left (node) label_replace(up, "cluster", "$1", "instance", "(.*)")
           + sum(other) without (region)"#,
    );
    let matchers: Vec<&str> = used
        .selectors
        .iter()
        .flat_map(|s| s.matchers.iter().map(|(l, _, _)| l.as_str()))
        .collect();
    assert_eq!(matchers, ["job", "namespace", "x"]);
    let metrics: Vec<&str> = used
        .selectors
        .iter()
        .filter_map(|s| s.metric.as_deref())
        .collect();
    assert_eq!(metrics, ["m_total", "up", "other"]);
    assert_eq!(
        used.read,
        ["group", "pod", "instance", "node", "instance", "region"]
    );
    assert_eq!(used.written, ["cluster"]);

    let problems = expr_label_problems("e", r#"sum by (job, instance) (x{job="a", instance="b"})"#);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        expr_label_problems("e", r#"label_replace(x, "job", "$1", "a", "(.*)")"#).len(),
        1
    );
    assert_eq!(expr_label_problems("e", r#"x{app="a"}"#).len(), 1);
    assert_eq!(
        template_label_reads("{{group}} {{ pod }} $labels.instance"),
        ["group", "pod", "instance"]
    );
}

#[test]
fn checker_reads_the_yaml_subset_of_rule_files() {
    let doc = parse_yaml(
        r#"# comment
groups:
  - name: g   # trailing comment
    rules:
      - alert: A
        expr: |
          sum(x)
            > 1
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: 'It''s # not a comment'
          description: "a\tb {{ $value }}"
          folded: >-
            one
            two
      - record: r
        expr: up
          == 1
    empty: []
rule_files:
- ../a.yml
"#,
    )
    .unwrap();
    let group = &doc.get("groups").unwrap().items()[0];
    assert_eq!(group.get("name").unwrap().str(), Some("g"));
    let rules = group.get("rules").unwrap().items();
    assert_eq!(rules[0].get("expr").unwrap().str(), Some("sum(x)\n  > 1\n"));
    assert_eq!(
        rules[0]
            .get("labels")
            .unwrap()
            .get("severity")
            .unwrap()
            .str(),
        Some("warning")
    );
    let annotations = rules[0].get("annotations").unwrap();
    assert_eq!(
        annotations.get("summary").unwrap().str(),
        Some("It's # not a comment")
    );
    assert_eq!(
        annotations.get("description").unwrap().str(),
        Some("a\tb {{ $value }}")
    );
    assert_eq!(annotations.get("folded").unwrap().str(), Some("one two"));
    assert_eq!(rules[1].get("expr").unwrap().str(), Some("up == 1"));
    assert_eq!(group.get("empty"), Some(&Yaml::Seq(vec![])));
    assert_eq!(
        doc.get("rule_files").unwrap().items(),
        [Yaml::Str("../a.yml".into())]
    );

    assert!(parse_yaml("a: &x 1\nb: *x\n").is_err());
    assert!(parse_yaml("a:\n  b: 1\n c: 2\n").is_err());
    assert!(parse_yaml("a: \"open\n").is_err());
}
