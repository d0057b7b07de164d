//! The `files` section resolved: each target's path split into a plain file
//! or a glob (compiled once, with the fixed directory its matches are named
//! below), and its JSON status check.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::error::Problems;
use super::schema::FileTargetConfig;
use super::validate::{check_label_value, check_schedule};

/// A glob's matches exported at most, whatever `max_files` says.
const MAX_FILES_LIMIT: usize = 10_000;
/// A JSON status file is read this far at most, whatever `max_bytes` says.
const MAX_JSON_BYTES_LIMIT: usize = 16 << 20;

/// A status file, or a glob of them.
#[derive(Debug, Clone)]
pub struct FileTarget {
    /// The `file` label value (a glob's matches: `<name>/<relative path>`).
    pub name: String,
    pub source: FileSource,
    pub max_age: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    /// A glob's matches exported at most.
    pub max_files: usize,
    pub json_field: Option<JsonField>,
}

/// What a target's `path` names.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// One file.
    File(PathBuf),
    /// A glob; matches are named by their path below `base`.
    Glob {
        /// The glob as written, checked to parse.
        pattern: String,
        base: PathBuf,
    },
}

/// A field of a JSON status file and the value that means healthy.
#[derive(Debug, Clone)]
pub struct JsonField {
    /// The key, split at dots.
    pub key: Vec<String>,
    pub expected: serde_json::Value,
    pub max_bytes: usize,
}

/// Whether `path` uses glob syntax.
fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// The directory of a glob's leading components without glob syntax.
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let parts: Vec<&str> = pattern.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if is_glob(part) || i + 1 == parts.len() {
            break;
        }
        if part.is_empty() && i == 0 {
            base.push("/");
        } else {
            base.push(part);
        }
    }
    base
}

pub(super) fn resolve(targets: &[FileTargetConfig], problems: &mut Problems) -> Vec<FileTarget> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("files[{i}]");
        let before = problems.0.len();
        check_label_value(problems, format!("{path}.name"), &t.name);
        if t.name.contains('/') {
            problems.push(
                format!("{path}.name"),
                "must not contain `/` (a glob's matches are named `<name>/<path>`)",
            );
        }
        if !seen.insert(t.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier target", t.name),
            );
        }
        check_schedule(problems, &path, t.interval, t.timeout);
        if t.max_age.is_zero() {
            problems.push(format!("{path}.max_age"), "must be above 0");
        }
        if t.max_files == 0 || t.max_files > MAX_FILES_LIMIT {
            problems.push(
                format!("{path}.max_files"),
                format!("must be between 1 and {MAX_FILES_LIMIT}"),
            );
        }
        let source = if t.path.is_empty() {
            problems.push(format!("{path}.path"), "must not be empty");
            None
        } else if is_glob(&t.path) {
            match glob::Pattern::new(&t.path) {
                Ok(_) => Some(FileSource::Glob {
                    pattern: t.path.clone(),
                    base: glob_base(&t.path),
                }),
                Err(e) => {
                    problems.push(
                        format!("{path}.path"),
                        format!("{:?} is not a valid glob: {e}", t.path),
                    );
                    None
                }
            }
        } else {
            Some(FileSource::File(PathBuf::from(&t.path)))
        };
        let json_field = t.json_field.as_ref().map(|j| {
            let key: Vec<String> = j.key.split('.').map(str::to_owned).collect();
            if key.iter().any(String::is_empty) {
                problems.push(
                    format!("{path}.json_field.key"),
                    format!("{:?} must be dot-separated non-empty keys", j.key),
                );
            }
            if !(j.expected.is_string() || j.expected.is_number() || j.expected.is_boolean()) {
                problems.push(
                    format!("{path}.json_field.expected"),
                    "must be a string, a number or a boolean",
                );
            }
            if j.max_bytes == 0 || j.max_bytes > MAX_JSON_BYTES_LIMIT {
                problems.push(
                    format!("{path}.json_field.max_bytes"),
                    format!("must be between 1 and {MAX_JSON_BYTES_LIMIT}"),
                );
            }
            JsonField {
                key,
                expected: j.expected.clone(),
                max_bytes: j.max_bytes,
            }
        });
        if let Some(source) = source {
            if problems.0.len() == before {
                resolved.push(FileTarget {
                    name: t.name.clone(),
                    source,
                    max_age: t.max_age,
                    interval: t.interval,
                    timeout: t.timeout,
                    max_files: t.max_files,
                    json_field,
                });
            }
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_is_named_below_its_fixed_directory() {
        assert!(is_glob("/run/app/*.status"));
        assert!(!is_glob("/run/app/worker.status"));
        assert_eq!(glob_base("/run/app/*/status"), PathBuf::from("/run/app"));
        assert_eq!(glob_base("/run/*.json"), PathBuf::from("/run"));
        assert_eq!(glob_base("*.json"), PathBuf::new());
        assert_eq!(glob_base("state/w[0-9]/hb"), PathBuf::from("state"));
    }
}
