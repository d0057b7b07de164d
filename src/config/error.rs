//! Configuration problems: each names its key path (or the command-line flag
//! that set the value) and, once located, its line and column in the file.

use std::fmt;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `processes[1].match.cmdline[0]`, or a flag such as
    /// `--web.telemetry-path` when the value came from the command line;
    /// empty for the file itself.
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong, never echoing a secret.
    pub message: String,
}

impl Problem {
    pub(super) fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            location: None,
            message: message.to_string(),
        }
    }

    /// Whether the value came from a command-line flag, not the file.
    pub fn is_flag(&self) -> bool {
        self.path.starts_with("--")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.location {
            write!(f, "line {line}:{col}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration source.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<default>` for the embedded config.
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let source = if problem.is_flag() {
                "command line"
            } else {
                &self.source_name
            };
            write!(f, "{source}: {problem}")?;
        }
        Ok(())
    }
}

/// Problems collected while one source is validated.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.0.push(Problem::new(path, message));
    }
}
