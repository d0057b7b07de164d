//! From a file to a [`RawConfig`] with every problem in one run (#15).
//!
//! The file is read bounded ([`MAX_CONFIG_FILE`], regular files only), the
//! text becomes a budgeted tree ([`super::yaml`]), and the tree is decoded
//! into the serde structs. serde stops at the first error, so on each error
//! the loader records it, removes the failing node and decodes again: an
//! unknown key on line 5 and a bad value on line 8 are both reported. A node
//! whose value was wrong may leave defaults behind it, so the semantic
//! checks of its enclosing item (a list entry, or a top-level section) are
//! not reported: they could be consequences of the first problem.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::error::Problem;
use super::schema::RawConfig;
use super::secret::{self, FileError};
use super::yaml::{self, NodeDe};

/// The largest configuration file read: a big one (hundreds of targets) is a
/// few tens of KiB.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Problems decoding stops after; the rest are found once these are fixed.
const MAX_PROBLEMS: usize = 100;

/// Reads the configuration file, bounded.
pub(super) fn read_file(path: &Path) -> Result<String, Problem> {
    secret::read_bounded_text(path, MAX_CONFIG_FILE).map_err(|e| {
        let why = match e {
            FileError::Io(e) => e.to_string(),
            other => other.to_string(),
        };
        Problem::new("", format!("cannot read the file: {why}"))
    })
}

/// The decoded configuration, and what decoding found wrong.
pub(super) struct Decoded {
    pub config: RawConfig,
    /// Decoding problems, each with its original key path and position.
    pub problems: Vec<Problem>,
    /// What the semantic checks need to report on the file as written.
    pub tree: Option<yaml::Node>,
    /// Items (as written) a decoding problem touched: their semantic
    /// problems are left out.
    tainted: Vec<String>,
}

impl Decoded {
    /// The path as written of a problem the checks found on the decoded
    /// config, or `None` when the problem sits in a tainted item.
    pub fn original_path(&self, path: &str) -> Option<String> {
        let original = match &self.tree {
            Some(tree) if !path.starts_with("--") => tree.original_path(path),
            _ => path.to_owned(),
        };
        let under = |t: &String| {
            original == *t
                || original
                    .strip_prefix(t.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        (!self.tainted.iter().any(under)).then_some(original)
    }
}

/// The item a problem at `path` spoils: its nearest enclosing list entry,
/// else its top-level section.
fn enclosing_item(path: &str) -> String {
    match path.rfind(']') {
        Some(end) => path[..=end].to_owned(),
        None => path.split(['.', '[']).next().unwrap_or_default().to_owned(),
    }
}

fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(cut) => &path[..cut],
        None => "",
    }
}

/// Decodes `text`; `Err` holds problems that stop everything (syntax,
/// budget), `Ok` may still carry decoding problems.
pub(super) fn decode(text: &str) -> Result<Decoded, Vec<Problem>> {
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(vec![Problem::new(
            "",
            format!("is larger than {MAX_CONFIG_FILE} bytes"),
        )]);
    }
    let located = |p: yaml::ReadProblem| Problem::new(p.path, p.message).at(p.at);
    let read = yaml::read(text).map_err(|p| vec![located(p)])?;
    let mut problems: Vec<Problem> = read.problems.into_iter().map(located).collect();
    let Some(mut root) = read.root else {
        return Ok(Decoded {
            config: RawConfig::default(),
            problems,
            tree: None,
            tainted: Vec::new(),
        });
    };
    // Mappings a node was removed from: their "missing field" is no news.
    let mut pruned_under: HashSet<String> = HashSet::new();
    let mut tainted = Vec::new();
    loop {
        let e = match RawConfig::deserialize(NodeDe(&root)) {
            Ok(config) => {
                return Ok(Decoded {
                    config,
                    problems,
                    // The pruned tree: the decoded config's indices are its indices.
                    tree: Some(root),
                    tainted,
                });
            }
            Err(e) => e,
        };
        let path = e.path.clone().unwrap_or_default();
        let missing = e.message.starts_with("missing field");
        if !(missing && pruned_under.contains(&path)) {
            problems.push(Problem::new(path.clone(), &e.message).at(e.at));
        }
        if path.is_empty() || problems.len() >= MAX_PROBLEMS || !root.remove(&path) {
            return Err(problems);
        }
        pruned_under.insert(parent(&path).to_owned());
        if !e.message.starts_with("unknown field") {
            tainted.push(enclosing_item(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decoding_problem_in_one_run() {
        let text = "\
runtime:
  enabled: true
processes:
  - name: a
    bogus: 1
    match: {comm: [x]}
  - name: b
    interval: soon
    match: {comm: [y]}
  - interval: 1s
    match: {comm: [z]}
ratelimits:
  - name: r
    kind: gitlab
";
        let d = decode(text).expect("decodes around the problems");
        let found: Vec<(&str, usize)> = d
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.location.map_or(0, |l| l.0)))
            .collect();
        assert_eq!(
            found,
            vec![
                ("processes[0].bogus", 5),
                ("processes[1].interval", 8),
                ("processes[2]", 10),
                ("ratelimits[0].kind", 14),
            ],
            "{:?}",
            d.problems
        );
        assert!(d.problems[2].message.contains("missing field `name`"));
        // Item 0 survives (its unknown key was all), item 1 too, with a default
        // interval whose consequences are not reported.
        assert_eq!(d.config.processes.len(), 2);
        assert_eq!(
            d.original_path("processes[0].name").as_deref(),
            Some("processes[0].name")
        );
        assert_eq!(d.original_path("processes[1].timeout"), None);
        assert!(d.config.ratelimits.is_empty());
    }

    /// Any text, and YAML-like text built from the pieces that matter here
    /// (anchors, aliases, tags, flow and block nodes, schema keys): never a
    /// panic, and every problem line short.
    mod property {
        use proptest::prelude::*;

        use crate::config::{WebFlags, parse};

        fn check(text: &str) {
            if let Err(e) = parse(text, "p.yml", &WebFlags::default()) {
                for line in e.to_string().lines() {
                    assert!(line.chars().count() < 1200, "{line}");
                }
            }
        }

        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "processes:",
                "postgres:",
                "ratelimits:",
                "runtime:",
                "web:",
                "ingest:",
                "\n",
                "\n  ",
                "\n    ",
                "- ",
                "name: ",
                "match: ",
                "comm: ",
                "interval: ",
                "timeout: ",
                "kind: ",
                "tokens: ",
                "dsn: ",
                "x",
                "1s",
                "500000000y",
                "&a ",
                "*a",
                "&b ",
                "*b",
                "!Foo ",
                "!!str ",
                "[",
                "]",
                "{",
                "}",
                ", ",
                ": ",
                "'q'",
                "\"",
                "~",
                "true",
                "-1",
                "0x10",
                "<<: ",
                "---\n",
                "# c\n",
                "? ",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
            ))]

            #[test]
            fn any_text_is_a_config_or_problems(text in ".{0,400}") {
                check(&text);
            }

            #[test]
            fn yaml_like_text_is_a_config_or_problems(
                pieces in prop::collection::vec(piece(), 0..80)
            ) {
                check(&pieces.concat());
            }
        }
    }
}
