//! Secrets (tokens, passwords): given inline with `${ENV}` references or read
//! from a `*_file` key, and kept in a [`SecretString`] so that they never reach
//! a log line, a label or the landing page by accident.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

/// A resolved secret. `Debug` prints `[REDACTED]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Replaces every `${NAME}` with the environment variable `NAME`.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "has an unterminated ${...} reference".to_owned())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("${{{name}}} is not an environment variable name"));
        }
        let var = std::env::var(name)
            .map_err(|_| format!("refers to the environment variable {name}, which is not set"))?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves a secret from an inline value (with `${ENV}`) or a file, whose
/// trailing newline is dropped. Giving both is an error.
pub fn resolve(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Secret>, String> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => return Err("give the value or the *_file key, not both".into()),
        (Some(v), None) => expand_env(v)?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Secret(SecretString::from(value))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_env_references() {
        // PATH is set in every test environment.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(
            expand_env("a${PATH}b").expect("expands"),
            format!("a{path}b")
        );
        assert!(
            expand_env("${LOOPWATCH_SURELY_UNSET_VAR}")
                .expect_err("unset")
                .contains("LOOPWATCH_SURELY_UNSET_VAR")
        );
        assert!(expand_env("${oops").is_err());
    }

    #[test]
    fn reads_files_and_hides_the_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let secret = resolve(None, Some(&file)).expect("ok").expect("some");
        assert_eq!(secret.expose(), "s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
        assert!(resolve(Some("x"), Some(&file)).is_err());
    }
}
