//! Status and heartbeat files: for each configured file, or each match of a
//! glob, whether it exists, how long ago it was modified, the maximum age
//! it may reach (its own series, so one alert rule serves every file), and
//! optionally whether a field of the JSON status file holds the expected
//! value. A declared file that is missing is `loopwatch_file_exists 0`,
//! never absent: a worker that deadlocked and a worker whose status file
//! was deleted both page.
//!
//! Each target is its own collector (`target="<name>"`). The file system is
//! read on a blocking thread, so a slow disk or NFS mount never stalls the
//! collector runtime; the driver's timeout bounds it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{BoxFuture, Built, CollectError, Job, Periodic, Reason};
use crate::config::{FileSource, FileTarget, JsonField};
use crate::families;
use crate::metrics::{Families, FamilyBuilder};

pub fn build(targets: &[FileTarget]) -> Vec<Built> {
    targets
        .iter()
        .map(|t| Built {
            kind: "files",
            target: t.name.clone(),
            job: Job::Periodic {
                interval: t.interval,
                timeout: t.timeout,
                collector: Box::new(FileWatcher {
                    target: Arc::new(t.clone()),
                    last_problem: None,
                }),
            },
        })
        .collect()
}

/// What one check saw of one file.
#[derive(Debug, Clone, PartialEq)]
struct FileState {
    /// The `file` label value.
    label: String,
    /// Seconds since the last modification; `None`: the file does not exist.
    age: Option<f64>,
    /// `None` without a `json_field`.
    status_ok: Option<bool>,
    /// Why the file could not be read, for the log (never in a label).
    problem: Option<String>,
}

/// One check of a target: its files, and a glob's match count.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    files: Vec<FileState>,
    glob_matches: Option<usize>,
}

struct FileWatcher {
    target: Arc<FileTarget>,
    /// The last problem logged, so a lasting one is logged once.
    last_problem: Option<String>,
}

impl Periodic for FileWatcher {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let target = self.target.clone();
            let check = tokio::task::spawn_blocking(move || check(&target, SystemTime::now()))
                .await
                .map_err(|e| CollectError::new(Reason::Other, format!("check failed: {e}")))?;
            let problem = check
                .files
                .iter()
                .find_map(|f| f.problem.as_ref().map(|p| format!("{}: {p}", f.label)));
            if problem != self.last_problem {
                if let Some(p) = &problem {
                    tracing::warn!(problem = %p, "Status file unreadable");
                }
                self.last_problem = problem;
            }
            Ok(families_of(&self.target, &check))
        })
    }
}

fn families_of(target: &FileTarget, check: &Check) -> Families {
    let mut b = FamilyBuilder::default();
    let max_age = target.max_age.as_secs_f64();
    for f in &check.files {
        let labels = [f.label.as_str()];
        b.gauge(
            &families::FILE_EXISTS,
            &labels,
            f64::from(u8::from(f.age.is_some())),
        );
        if let Some(age) = f.age {
            b.gauge(&families::FILE_AGE, &labels, age);
        }
        b.gauge(&families::FILE_MAX_AGE, &labels, max_age);
        if let Some(ok) = f.status_ok {
            b.gauge(&families::FILE_STATUS_OK, &labels, f64::from(u8::from(ok)));
        }
    }
    if let Some(n) = check.glob_matches {
        b.gauge(
            &families::FILE_GLOB_MATCHES,
            &[target.name.as_str()],
            n as f64,
        );
    }
    b.finish()
}

/// Checks every file of a target, as of `now`.
fn check(target: &FileTarget, now: SystemTime) -> Check {
    match &target.source {
        FileSource::File(path) => Check {
            files: vec![check_file(
                target.name.clone(),
                path,
                target.json_field.as_ref(),
                now,
            )],
            glob_matches: None,
        },
        FileSource::Glob { pattern, base } => {
            let mut matches: Vec<PathBuf> = match glob::glob(pattern) {
                // Unreadable directories under the glob are skipped.
                Ok(paths) => paths
                    .filter_map(Result::ok)
                    .filter(|p| !p.is_dir())
                    .collect(),
                Err(_) => Vec::new(),
            };
            matches.sort();
            let total = matches.len();
            let files = if matches.is_empty() {
                // Nothing matches: the target itself is missing, never absent.
                vec![check_file(
                    target.name.clone(),
                    Path::new(pattern),
                    target.json_field.as_ref(),
                    now,
                )]
            } else {
                matches
                    .iter()
                    .take(target.max_files)
                    .map(|p| {
                        let rel = p.strip_prefix(base).unwrap_or(p);
                        let label = format!("{}/{}", target.name, rel.to_string_lossy());
                        check_file(label, p, target.json_field.as_ref(), now)
                    })
                    .collect()
            };
            Check {
                files,
                glob_matches: Some(total),
            }
        }
    }
}

fn check_file(label: String, path: &Path, json: Option<&JsonField>, now: SystemTime) -> FileState {
    let (age, problem) = match std::fs::metadata(path) {
        Ok(meta) => {
            let modified = meta.modified().unwrap_or(now);
            // A modification time in the future (clock skew) is age 0.
            let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
            (Some(age.as_secs_f64()), None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        // Permission denied on the directory and the like: it cannot be
        // seen, which for a status file is as bad as missing.
        Err(e) => (None, Some(e.to_string())),
    };
    let (status_ok, problem) = match json {
        None => (None, problem),
        Some(_) if age.is_none() => (Some(false), problem),
        Some(field) => match json_field_ok(path, field) {
            Ok(ok) => (Some(ok), problem),
            Err(e) => (Some(false), problem.or(Some(e))),
        },
    };
    FileState {
        label,
        age,
        status_ok,
        problem,
    }
}

/// Whether the file's field holds the expected value; `Err` when it cannot
/// be read as JSON within `max_bytes`.
fn json_field_ok(path: &Path, field: &JsonField) -> Result<bool, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(field.max_bytes as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() > field.max_bytes {
        return Err(format!("larger than max_bytes {}", field.max_bytes));
    }
    // A writer that replaces the file in place may be caught half-way: that
    // is not ok now, and fine at the next check.
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
    let mut at = &value;
    for key in &field.key {
        match at.get(key) {
            Some(v) => at = v,
            None => return Ok(false),
        }
    }
    Ok(json_equal(at, &field.expected))
}

/// Numbers compare by value (`1` equals `1.0`); everything else exactly.
fn json_equal(actual: &serde_json::Value, expected: &serde_json::Value) -> bool {
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) => a == e,
        _ => actual == expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(name: &str, source: FileSource, json_field: Option<JsonField>) -> FileTarget {
        FileTarget {
            name: name.to_owned(),
            source,
            max_age: Duration::from_secs(120),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            max_files: 2,
            json_field,
        }
    }

    #[test]
    fn a_missing_file_exists_zero_with_its_max_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target("w", FileSource::File(dir.path().join("absent")), None);
        let c = check(&t, SystemTime::now());
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.files[0].age, None);
        assert_eq!(c.files[0].problem, None);
    }

    #[test]
    fn a_glob_is_capped_and_counts_every_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.path().join(n)).expect("dir");
            std::fs::write(dir.path().join(n).join("hb"), "").expect("write");
        }
        let pattern = format!("{}/*/hb", dir.path().display());
        let t = target(
            "workers",
            FileSource::Glob {
                pattern,
                base: dir.path().to_owned(),
            },
            None,
        );
        let c = check(&t, SystemTime::now());
        assert_eq!(c.glob_matches, Some(3));
        let labels: Vec<&str> = c.files.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, vec!["workers/a/hb", "workers/b/hb"]);
        assert!(c.files.iter().all(|f| f.age.is_some()));
    }

    #[test]
    fn json_fields_compare_by_value_and_reads_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.json");
        let field = |key: &str, expected| JsonField {
            key: key.split('.').map(str::to_owned).collect(),
            expected,
            max_bytes: 64,
        };
        std::fs::write(&path, r#"{"state":"ok","worker":{"queue":3}}"#).expect("write");
        assert_eq!(json_field_ok(&path, &field("state", json!("ok"))), Ok(true));
        assert_eq!(
            json_field_ok(&path, &field("state", json!("failed"))),
            Ok(false)
        );
        assert_eq!(
            json_field_ok(&path, &field("worker.queue", json!(3.0))),
            Ok(true)
        );
        assert_eq!(
            json_field_ok(&path, &field("missing", json!("ok"))),
            Ok(false)
        );
        std::fs::write(&path, "{\"state\": ").expect("write");
        assert!(json_field_ok(&path, &field("state", json!("ok"))).is_err());
        std::fs::write(
            &path,
            format!(r#"{{"state":"ok","pad":"{}"}}"#, "x".repeat(100)),
        )
        .expect("write");
        assert!(
            json_field_ok(&path, &field("state", json!("ok")))
                .expect_err("too large")
                .contains("max_bytes")
        );
    }
}
