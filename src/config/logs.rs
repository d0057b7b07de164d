//! The `logs` section resolved: each log's paths, its user rules with their
//! regular expressions compiled once (a bad one is a problem naming its key
//! path, and so its line), and its limits.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use super::error::Problems;
use super::schema::{LogFormat, LogRepeatConfig, LogTargetConfig, StartAt};
use super::validate::{check_label_value, check_schedule};
use crate::families;

/// A log to tail.
#[derive(Debug, Clone)]
pub struct LogTarget {
    /// The `log` label value.
    pub name: String,
    /// Files and glob patterns.
    pub paths: Vec<String>,
    pub format: LogFormat,
    pub start_at: StartAt,
    pub state_file: Option<PathBuf>,
    pub builtin_rules: bool,
    pub rules: Vec<LogRule>,
    pub repeat: LogRepeatConfig,
    pub max_exceptions: usize,
    pub max_line_bytes: usize,
    pub max_read_bytes: usize,
    pub max_files: usize,
    pub rotate_wait: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A user rule, compiled.
#[derive(Debug, Clone)]
pub struct LogRule {
    /// The `rule` label value.
    pub name: String,
    pub regex: Regex,
    /// The regex's named groups, in order: the extra label names.
    pub labels: Vec<String>,
    pub max_label_values: usize,
}

/// Whether `name` may be a Prometheus label name of ours.
fn label_name_problem(name: &str) -> Option<String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        Some(format!(
            "named group {name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ))
    } else if name.starts_with("__") {
        Some(format!(
            "named group {name:?}: label names starting with __ are reserved"
        ))
    } else if name == "log" || name == "rule" {
        Some(format!(
            "named group {name:?} would replace the {name} label"
        ))
    } else if families::TARGET_LABELS.contains(&name) {
        Some(format!(
            "named group {name:?} is a label Prometheus or Kubernetes discovery attach; it would be renamed exported_{name}"
        ))
    } else {
        None
    }
}

fn check_range(problems: &mut Problems, path: String, value: usize, min: usize, max: usize) {
    if value < min || value > max {
        problems.push(path, format!("must be between {min} and {max}"));
    }
}

pub(super) fn resolve(targets: &[LogTargetConfig], problems: &mut Problems) -> Vec<LogTarget> {
    let mut names = HashSet::new();
    let mut state_files = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("logs[{i}]");
        check_label_value(problems, format!("{path}.name"), &t.name);
        if !names.insert(t.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier log", t.name),
            );
        }
        check_schedule(problems, &path, t.interval, t.timeout);
        if t.paths.is_empty() {
            problems.push(format!("{path}.paths"), "needs at least one file or glob");
        }
        for (j, p) in t.paths.iter().enumerate() {
            if p.is_empty() {
                problems.push(format!("{path}.paths[{j}]"), "must not be empty");
            } else if let Err(e) = glob::Pattern::new(p) {
                problems.push(
                    format!("{path}.paths[{j}]"),
                    format!("invalid glob {p:?}: {}", e.msg),
                );
            }
        }
        if let Some(state) = &t.state_file {
            if !state_files.insert(state.clone()) {
                problems.push(
                    format!("{path}.state_file"),
                    format!("{} is used by an earlier log", state.display()),
                );
            }
        }
        check_range(
            problems,
            format!("{path}.max_exceptions"),
            t.max_exceptions,
            1,
            1_000,
        );
        check_range(
            problems,
            format!("{path}.max_line_bytes"),
            t.max_line_bytes,
            256,
            4 * 1024 * 1024,
        );
        check_range(
            problems,
            format!("{path}.max_read_bytes"),
            t.max_read_bytes,
            t.max_line_bytes.max(4096),
            1024 * 1024 * 1024,
        );
        check_range(
            problems,
            format!("{path}.max_files"),
            t.max_files,
            1,
            100_000,
        );
        if t.rotate_wait > Duration::from_secs(3600) {
            problems.push(format!("{path}.rotate_wait"), "must be at most 1h");
        }
        if t.repeat.window < Duration::from_secs(1) {
            problems.push(format!("{path}.repeat.window"), "must be at least 1s");
        }
        if t.repeat.threshold == 0 {
            problems.push(format!("{path}.repeat.threshold"), "must be at least 1");
        }
        check_range(
            problems,
            format!("{path}.repeat.max_messages"),
            t.repeat.max_messages,
            1,
            1_000_000,
        );
        let mut rule_names = HashSet::new();
        let mut rules = Vec::new();
        for (j, r) in t.rules.iter().enumerate() {
            let rpath = format!("{path}.rules[{j}]");
            check_label_value(problems, format!("{rpath}.name"), &r.name);
            if families::LOG_BUILTIN_RULES.contains(&r.name.as_str()) {
                problems.push(
                    format!("{rpath}.name"),
                    format!("{:?} is the name of a built-in rule", r.name),
                );
            } else if !rule_names.insert(r.name.as_str()) {
                problems.push(
                    format!("{rpath}.name"),
                    format!("{:?} is used by an earlier rule of this log", r.name),
                );
            }
            check_range(
                problems,
                format!("{rpath}.max_label_values"),
                r.max_label_values,
                1,
                1_000,
            );
            let regex = match Regex::new(&r.regex) {
                Ok(re) => re,
                Err(e) => {
                    let detail = e.to_string().lines().last().unwrap_or_default().to_owned();
                    problems.push(
                        format!("{rpath}.regex"),
                        format!("invalid regular expression {:?}: {detail}", r.regex),
                    );
                    continue;
                }
            };
            let labels: Vec<String> = regex.capture_names().flatten().map(str::to_owned).collect();
            let mut bad = false;
            for label in &labels {
                if let Some(problem) = label_name_problem(label) {
                    problems.push(format!("{rpath}.regex"), problem);
                    bad = true;
                }
            }
            if !bad {
                rules.push(LogRule {
                    name: r.name.clone(),
                    regex,
                    labels,
                    max_label_values: r.max_label_values,
                });
            }
        }
        resolved.push(LogTarget {
            name: t.name.clone(),
            paths: t.paths.clone(),
            format: t.format,
            start_at: t.start_at,
            state_file: t.state_file.clone(),
            builtin_rules: t.builtin_rules,
            rules,
            repeat: t.repeat.clone(),
            max_exceptions: t.max_exceptions,
            max_line_bytes: t.max_line_bytes,
            max_read_bytes: t.max_read_bytes,
            max_files: t.max_files,
            rotate_wait: t.rotate_wait,
            interval: t.interval,
            timeout: t.timeout,
        });
    }
    resolved
}
