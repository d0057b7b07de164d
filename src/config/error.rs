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

/// The most of a value a problem line shows.
pub const EXCERPT_CHARS: usize = 64;

/// A value as a problem line shows it: quoted, and cut after
/// [`EXCERPT_CHARS`] characters with "…" (a 1 MB value is not echoed, #15).
pub fn excerpt(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{:?}", head + "…")
    } else {
        format!("{head:?}")
    }
}

/// Cuts every quoted (`"…"`) or backquoted run longer than [`EXCERPT_CHARS`]
/// in a message, then the message itself: whatever a check or a decoder
/// wrote, a problem line stays short.
pub(super) fn bound_message(message: &str) -> String {
    const MAX_MESSAGE: usize = 512;
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE + 8));
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for c in message.chars() {
        match quote {
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    quote = Some((c, 0));
                }
            }
            Some((q, n)) => {
                let closing = c == q && !escaped;
                escaped = !escaped && c == '\\' && q == '"';
                if closing {
                    out.push(c);
                    quote = None;
                } else {
                    if n < EXCERPT_CHARS {
                        out.push(c);
                    } else if n == EXCERPT_CHARS {
                        out.push('…');
                    }
                    quote = Some((q, n + 1));
                }
            }
        }
        if out.len() > MAX_MESSAGE {
            out.push('…');
            break;
        }
    }
    out
}

/// A key path whose every key is cut to [`EXCERPT_CHARS`] (an unknown key
/// may be any length).
pub(super) fn bound_path(path: &str) -> String {
    if path.len() <= 256 {
        return path.to_owned();
    }
    path.split('.')
        .map(|key| {
            let mut chars = key.chars();
            let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
            if chars.next().is_some() {
                head + "…"
            } else {
                head
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Problem {
    pub(super) fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            path: bound_path(&path.into()),
            location: None,
            message: bound_message(&message.to_string()),
        }
    }

    pub(super) fn at(mut self, location: Option<(usize, usize)>) -> Self {
        self.location = location;
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_as_short_excerpts() {
        let long = "x".repeat(1000);
        assert_eq!(excerpt("ab"), "\"ab\"");
        assert_eq!(excerpt(&long), format!("\"{}…\"", "x".repeat(64)));
        let m = bound_message(&format!(
            "invalid value: string {long:?}, expected `{long}` or \"a\\\"b\""
        ));
        assert_eq!(
            m,
            format!(
                "invalid value: string \"{x}…\", expected `{x}…` or \"a\\\"b\"",
                x = "x".repeat(64)
            )
        );
        assert!(bound_message(&long).chars().count() < 600);
        assert!(bound_path(&format!("a.{long}")).len() < 80);
    }
}
