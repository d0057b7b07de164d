//! Checks the content loopwatch ships beside the binary: the Grafana dashboards
//! in `dashboards/` (and that they are what `dashboards/generate.py` writes),
//! the Prometheus rules in `alerts/`, their promtool unit tests in
//! `alerts/tests/` and the runbooks in `docs/runbooks.md` that the alerts
//! link to.
//!
//! Every check globs its directory, so a new dashboard or rule file is covered
//! without touching this file. The checks need promtool (from `PATH`, or the
//! `PROMTOOL` environment variable) and python3 (or `PYTHON`): without them
//! they fail, they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde_json::Value;
use serde_norway::Value as Yaml;

/// Where every `runbook_url` must point, followed by `#<alertname lowercased>`.
const RUNBOOK_BASE: &str = "https://github.com/loopwatch/loopwatch/blob/main/docs/runbooks.md";

/// Target labels that Prometheus, Kubernetes service discovery or
/// prometheus-operator attach: a metric label with one of these names is
/// renamed `exported_<name>` at scrape time and breaks every query.
const RESERVED_LABELS: &str =
    "app namespace pod container service endpoint node cluster replica prometheus env region";

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
/// of `exts`, sorted; none is an error.
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

/// `name` from the environment variable `var`, else from `PATH`; missing
/// fails the test with `install`.
fn tool(var: &str, name: &str, install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return path;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found in PATH. {install} (or set {var}=/path/to/{name}).")
        })
}

/// Runs `program` in the crate directory; returns success and its whole output.
fn run(program: &Path, args: &[OsString]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let cmd: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    let text = format!(
        "$ {} {}\n{}{}",
        program.display(),
        cmd.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn promtool(args: &[OsString]) -> (bool, String) {
    let install = "These tests validate the shipped alert rules and dashboard queries with it and \
                   cannot pass without it: install it (Debian/Ubuntu: `apt-get install prometheus`; \
                   or the prometheus tarball from https://prometheus.io/download/)";
    run(&tool("PROMTOOL", "promtool", install), args)
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
    panel["type"] == "row"
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn panel_name(panel: &Value) -> String {
    format!(
        "panel {} {:?}",
        panel["id"],
        str_at(panel, "/title").unwrap_or("")
    )
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
        .find(|v| v["name"] == name)
}

/// The query of a query variable, in the old (string) or new (object) form.
fn var_query(var: &Value) -> Option<&str> {
    var.get("query")
        .and_then(|q| q.as_str().or_else(|| str_at(q, "/query")))
}

fn uses_datasource_var(ds: Option<&Value>) -> bool {
    ds.is_some_and(|d| d["uid"] == "${datasource}" && d["type"] == "prometheus")
}

/// A PromQL expression of a dashboard, with where it comes from.
struct Query {
    origin: String,
    expr: String,
    legend: Option<String>,
    /// An instant panel query: it may also use `[$__range]`.
    instant: bool,
}

/// The expressions of every panel target, and the selector inside every
/// `label_values(selector, label)` / `query_result(expr)` variable query.
fn queries(dashboard: &Dashboard) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in all_panels(&dashboard.json)
        .into_iter()
        .filter(|p| !is_row(p))
    {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let ref_id = target["refId"].as_str().unwrap_or("?");
                out.push(Query {
                    origin: format!("{} {} target {ref_id}", dashboard.name, panel_name(panel)),
                    expr: expr.to_string(),
                    legend: target["legendFormat"].as_str().map(str::to_string),
                    instant: target["instant"] == true && target["range"] != true,
                });
            }
        }
    }
    for var in template_vars(&dashboard.json) {
        if var["type"] != "query" {
            continue;
        }
        if let Some((selector, _)) = var_query(var).and_then(variable_query_parts) {
            if !selector.is_empty() {
                out.push(Query {
                    origin: format!(
                        "{} variable ${}",
                        dashboard.name,
                        var["name"].as_str().unwrap_or("?")
                    ),
                    expr: selector,
                    legend: None,
                    instant: false,
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
        // A label name has no comma: the last one separates it.
        let (selector, label) = inner.rsplit_once(',').unwrap_or(("", inner));
        return Some((selector.trim().to_string(), Some(label.trim().to_string())));
    }
    let inner = query.strip_prefix("query_result(")?.strip_suffix(')')?;
    Some((inner.trim().to_string(), None))
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

/// Every `rate(`, `irate(` and `increase(` whose range is not
/// `[$__rate_interval]` (or, in an instant query, `[$__range]`: a total over
/// the dashboard's time range), one problem string each.
fn rate_interval_problems(expr: &str, instant: bool) -> Vec<String> {
    let call = Regex::new(r"\b(rate|irate|increase)\s*\(").unwrap();
    let range = Regex::new(r"\[([^\]]*)\]").unwrap();
    let allowed: &[&str] = if instant {
        &["$__rate_interval", "$__range"]
    } else {
        &["$__rate_interval"]
    };
    let mut problems = Vec::new();
    for m in call.find_iter(expr) {
        let Some(close) = matching_paren(expr, m.end() - 1) else {
            problems.push(format!("unbalanced parenthesis after `{}`", m.as_str()));
            continue;
        };
        let ranges: Vec<&str> = range
            .captures_iter(&expr[m.end()..close])
            .map(|c| c.get(1).unwrap().as_str().trim())
            .collect();
        if ranges.is_empty() || ranges.iter().any(|r| !allowed.contains(r)) {
            problems.push(format!(
                "`{}…)` must use [{}], found {ranges:?}",
                m.as_str(),
                allowed.join("] or [")
            ));
        }
    }
    problems
}

/// Index of the `)` matching the `(` at `open`, skipping string literals.
fn matching_paren(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate().skip(open) {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if b == b'\\' => escaped = true,
            Some(q) if b == q => quote = None,
            Some(_) => {}
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
    }
    None
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
    let take_while = |i: &mut usize, f: &dyn Fn(char) -> bool| {
        let start = *i;
        while *i < chars.len() && f(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            take_while(&mut i, &|c| c != '\n');
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
            take_while(&mut i, &|c| c != ']');
            i += 1;
            toks.push(Tok::Range);
        } else if c.is_ascii_alphabetic() || matches!(c, '_' | ':' | '$') {
            let word = take_while(&mut i, &|c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '$')
            });
            toks.push(Tok::Ident(word));
        } else if c.is_ascii_digit() || c == '.' {
            take_while(&mut i, &|c| c.is_ascii_alphanumeric() || c == '.');
            toks.push(Tok::Num);
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = if ["=~", "!~", "!=", "==", "<=", ">="].contains(&two.as_str()) {
                two
            } else {
                c.to_string()
            };
            i += op.chars().count();
            toks.push(Tok::Punct(op));
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

/// Aggregation operators: not metric names.
const AGGREGATIONS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio";
/// Keywords that take a list of label names, and the other keywords.
const GROUPING: &str = "by without on ignoring group_left group_right";
const KEYWORDS: &str = "bool and or unless offset atan2 inf nan";

/// Whether `word` is one of the space-separated `list`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

fn scan_labels(expr: &str) -> LabelUse {
    let toks = lex_promql(expr);
    let mut out = LabelUse::default();
    let punct = |i: usize, p: &str| matches!(toks.get(i), Some(Tok::Punct(x)) if x == p);
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(word) if listed(GROUPING, word) && punct(i + 1, "(") => {
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
                // label_replace(v, dst, replacement, src, regex)
                // label_join(v, dst, separator, src...)
                if func == "label_replace" || func == "label_join" {
                    let strings = call_string_args(&toks, i + 1);
                    out.written.extend(strings.get(1).cloned().flatten());
                    let sources = if func == "label_replace" {
                        3..4
                    } else {
                        3..strings.len().max(3)
                    };
                    out.read.extend(
                        strings
                            .get(sources)
                            .unwrap_or(&[])
                            .iter()
                            .flatten()
                            .cloned(),
                    );
                }
                i += 1;
            }
            Tok::Ident(metric) if punct(i + 1, "{") => {
                let (selector, next) = parse_matchers(&toks, i + 1, Some(metric.clone()));
                out.selectors.push(selector);
                i = next;
            }
            Tok::Punct(p) if p == "{" => {
                let (selector, next) = parse_matchers(&toks, i, None);
                out.selectors.push(selector);
                i = next;
            }
            Tok::Ident(word)
                if !listed(KEYWORDS, &word.to_lowercase())
                    && !listed(GROUPING, word)
                    && !listed(AGGREGATIONS, word)
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
        if let [Tok::Ident(label), Tok::Punct(op), Tok::Str(value), ..] = &toks[i..] {
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
            Tok::Punct(p) if p == "(" || p == "{" => depth += 1,
            Tok::Punct(p) if p == ")" || p == "}" => depth -= 1,
            Tok::Punct(p) if p == "," && depth == 1 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            break;
        }
        if !(depth == 1 && *tok == Tok::Punct("(".into())) {
            args.last_mut().unwrap().push(tok);
        }
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
    let reads = reads
        .iter()
        .filter(|l| listed(RESERVED_LABELS, l))
        .map(|l| format!("{origin}: uses reserved target label `{l}`"));
    let writes = writes
        .iter()
        .filter(|l| listed(RESERVED_LABELS, l) || TARGET_LABELS.contains(&l.as_str()))
        .map(|l| format!("{origin}: sets reserved target label `{l}`"));
    reads.chain(writes).collect()
}

fn expr_label_problems(origin: &str, expr: &str) -> Vec<String> {
    let used = scan_labels(expr);
    let mut reads = used.read.clone();
    for selector in &used.selectors {
        reads.extend(selector.matchers.iter().map(|(l, _, _)| l.clone()));
    }
    reserved_label_problems(origin, &reads, &used.written)
}

// ------------------------------------------------------------------ rules

fn parse_yaml_file(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", rel(path)))
}

/// A scalar as text (`for: 5m`, `severity: warning`, `priority: 1`).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn items(v: &Yaml, key: &str) -> Vec<Yaml> {
    v.get(key)
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default()
}

fn string_map(v: Option<&Yaml>) -> Vec<(String, String)> {
    v.and_then(Yaml::as_mapping)
        .into_iter()
        .flatten()
        .map(|(k, v)| (scalar(k).unwrap_or_default(), scalar(v).unwrap_or_default()))
        .collect()
}

struct Rule {
    file: String,
    group: String,
    alert: Option<String>,
    expr: String,
    has_for: bool,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

impl Rule {
    fn origin(&self) -> String {
        let name = self.alert.as_deref().unwrap_or("(recording rule)");
        format!("{} group {} rule {name}", self.file, self.group)
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

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = parse_yaml_file(&path);
        let groups = items(&doc, "groups");
        assert!(!groups.is_empty(), "{}: no rule groups", rel(&path));
        for group in &groups {
            let group_name = group
                .get("name")
                .and_then(scalar)
                .unwrap_or_else(|| "?".into());
            for rule in items(group, "rules") {
                out.push(Rule {
                    file: rel(&path),
                    group: group_name.clone(),
                    alert: rule.get("alert").and_then(scalar),
                    expr: rule.get("expr").and_then(scalar).unwrap_or_default(),
                    has_for: rule.get("for").is_some(),
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

/// `## ` headings of docs/runbooks.md outside code fences: anchor →
/// (heading, body).
fn runbook_sections() -> BTreeMap<String, (String, String)> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut in_fence = false;
    for line in read(&repo().join("docs/runbooks.md")).lines() {
        in_fence ^= line.trim_start().starts_with("```");
        match line.strip_prefix("## ") {
            Some(heading) if !in_fence => {
                sections.extend(
                    current
                        .take()
                        .map(|(h, body)| (github_anchor(&h), (h, body))),
                );
                current = Some((heading.trim().to_string(), String::new()));
            }
            _ => {
                if let Some((_, body)) = current.as_mut() {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    sections.extend(current.map(|(h, body)| (github_anchor(&h), (h, body))));
    sections
}

// ================================================================== tests

#[test]
fn dashboards_are_valid_json_with_schema_39_unique_uids_and_tags() {
    let mut problems = Vec::new();
    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    let uid_chars = Regex::new(r"^[A-Za-z0-9_-]+$").unwrap();
    for d in dashboards() {
        if d.json["schemaVersion"] != 39 {
            problems.push(format!("{}: schemaVersion must be 39", d.name));
        }
        match d.json["uid"].as_str() {
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
        if d.json["title"].as_str().unwrap_or("").is_empty() {
            problems.push(format!("{}: no title", d.name));
        }
        if !d.json["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "loopwatch"))
        {
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
fn dashboards_are_what_the_generator_writes() {
    let install = "The dashboards are generated by dashboards/generate.py (standard library only)";
    let python = tool("PYTHON", "python3", install);
    let (ok, output) = run(
        &python,
        &["dashboards/generate.py".into(), "--check".into()],
    );
    assert!(
        ok,
        "the dashboards differ from what dashboards/generate.py writes; edit the generator and run \
         `python3 dashboards/generate.py`:\n{output}"
    );
}

#[test]
fn dashboards_have_datasource_job_and_instance_variables() {
    let mut problems = Vec::new();
    for d in dashboards() {
        match var_named(&d.json, "datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => problems.push(format!(
                "{}: needs a variable `datasource` of type datasource with query prometheus",
                d.name
            )),
        }
        for name in ["job", "instance"] {
            if var_named(&d.json, name).is_none_or(|v| v["type"] != "query") {
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
            if v["type"] == "query" && !uses_datasource_var(v.get("datasource")) {
                problems.push(format!(
                    "{}: variable {} must use datasource {{\"type\":\"prometheus\",\"uid\":\"${{datasource}}\"}}",
                    d.name, v["name"]
                ));
            }
        }
    }
    assert_no_problems("dashboard variables", &problems);
}

#[test]
fn dashboard_panels_have_description_unit_and_datasource() {
    let blank = |v: Option<&str>| v.is_none_or(|s| s.trim().is_empty());
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
            if blank(str_at(panel, "/description")) {
                problems.push(format!("{name}: no description"));
            }
            if blank(str_at(panel, "/fieldConfig/defaults/unit")) {
                problems.push(format!("{name}: no fieldConfig.defaults.unit"));
            }
            if !uses_datasource_var(panel.get("datasource")) {
                problems.push(format!(
                    "{name}: datasource must be the ${{datasource}} variable"
                ));
            }
            let targets = panel["targets"].as_array();
            if targets.is_none_or(|t| t.is_empty()) {
                problems.push(format!("{name}: no targets"));
            }
            for (i, target) in targets.into_iter().flatten().enumerate() {
                if !uses_datasource_var(target.get("datasource")) {
                    problems.push(format!(
                        "{name} target {i}: datasource must be the ${{datasource}} variable"
                    ));
                }
                if blank(target["expr"].as_str()) {
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
            for p in rate_interval_problems(&q.expr, q.instant) {
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
            let quoted = serde_json::to_string(&expr).unwrap();
            rules_yaml.push_str(&format!(
                "      - record: {record}\n        expr: {quoted}\n"
            ));
            index.push(format!("{record}: {} = {expr}", q.origin));
        }
    }
    assert!(!index.is_empty(), "no dashboard queries found");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard_queries.yml");
    std::fs::write(&file, &rules_yaml).expect("write rules file");
    let (ok, output) = promtool(&["check".into(), "rules".into(), file.into_os_string()]);
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
    let (ok, output) = promtool(&args);
    assert!(ok, "promtool check rules failed:\n{output}");
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let mut args: Vec<OsString> = vec!["test".into(), "rules".into()];
    args.extend(test_files().into_iter().map(PathBuf::into_os_string));
    let (ok, output) = promtool(&args);
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
        for rule_file in items(&doc, "rule_files") {
            let target = path
                .parent()
                .unwrap()
                .join(scalar(&rule_file).unwrap_or_default());
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
        for test in items(&doc, "tests") {
            for case in items(&test, "alert_rule_test") {
                let Some(name) = case.get("alertname").and_then(scalar) else {
                    continue;
                };
                if items(&case, "exp_alerts").is_empty() {
                    quiet.insert(name);
                } else {
                    firing.insert(name);
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
                let origin = format!("{} variable ${}", d.name, v["name"].as_str().unwrap_or("?"));
                problems.extend(reserved_label_problems(&origin, &[label], &[]));
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
    assert!(rate_interval_problems(r#"sum(rate(x{a="b"}[$__rate_interval]))"#, false).is_empty());
    assert!(
        rate_interval_problems(
            r#"increase(x[$__rate_interval]) / irate(y[$__rate_interval])"#,
            false
        )
        .is_empty()
    );
    assert_eq!(rate_interval_problems(r#"rate(x[5m])"#, false).len(), 1);
    assert_eq!(
        rate_interval_problems(r#"irate(x[$__interval])"#, false).len(),
        1
    );
    assert_eq!(
        rate_interval_problems(r#"rate(x[$__rate_interval]) + increase(y[1h])"#, false).len(),
        1
    );
    // A total over the time range: only in an instant query.
    assert!(rate_interval_problems(r#"topk(5, increase(x{s=")"}[$__range]))"#, true).is_empty());
    assert_eq!(
        rate_interval_problems(r#"increase(x[$__range])"#, false).len(),
        1
    );
    assert_eq!(rate_interval_problems(r#"increase(x[1d])"#, true).len(), 1);
}

#[test]
fn checker_reads_variable_queries() {
    assert_eq!(
        variable_query_parts(r#"label_values(m{a=~"$a", b="x,y"}, loop)"#),
        Some((
            r#"m{a=~"$a", b="x,y"}"#.to_string(),
            Some("loop".to_string())
        ))
    );
    assert_eq!(
        variable_query_parts("label_values(job)"),
        Some((String::new(), Some("job".to_string())))
    );
    assert_eq!(
        variable_query_parts("query_result(up)"),
        Some(("up".to_string(), None))
    );
    assert_eq!(variable_query_parts("metrics(loopwatch_.*)"), None);
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
    let joined = scan_labels(r#"label_join(up, "dst", ",", "a", "b")"#);
    assert_eq!(
        (joined.written, joined.read),
        (
            vec!["dst".to_string()],
            vec!["a".to_string(), "b".to_string()]
        )
    );

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
fn checker_reads_rule_files_as_yaml() {
    let doc: Yaml = serde_norway::from_str(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          sum(x)\n            > 1\n        \
         for: 5m\n        labels: {severity: warning, priority: 1}\n        annotations:\n          \
         summary: 'It''s # not a comment'\n",
    )
    .unwrap();
    let rule = &items(&items(&doc, "groups")[0], "rules")[0];
    assert_eq!(
        rule.get("expr").and_then(scalar).as_deref(),
        Some("sum(x)\n  > 1\n")
    );
    assert_eq!(
        string_map(rule.get("labels")),
        [
            ("severity".to_string(), "warning".to_string()),
            ("priority".to_string(), "1".to_string())
        ]
    );
    assert_eq!(
        string_map(rule.get("annotations"))[0].1,
        "It's # not a comment"
    );
    assert!(
        serde_norway::from_str::<Yaml>("a: 1\na: 2\n").is_err(),
        "duplicate keys are an error"
    );
}
