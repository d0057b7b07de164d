//! Secrets (DSNs, passwords, tokens): given inline with `${ENV}` references or
//! read from a `*_file` key, and kept in a [`SecretString`] from the moment
//! they are decoded, so that they never reach a log line, a label, the
//! landing page or a `{:?}` by accident. Each is resolved once per load.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// A secret as written in the file or resolved from it. `Debug` prints
/// `[REDACTED]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl Secret {
    pub(crate) fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Why a secret could not be resolved. No variant holds the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("give the value or the *_file key, not both")]
    Both,
    #[error("has an unterminated ${{...}} reference")]
    Unterminated,
    #[error("${{{0}}} is not an environment variable name")]
    BadName(String),
    #[error("refers to the environment variable {0}, which is not set")]
    Unset(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretError {
    /// The key the problem is about: the `*_file` key when its file could
    /// not be read, else the inline key.
    pub fn key<'a>(&self, inline: &'a str, file: &'a str) -> &'a str {
        match self {
            SecretError::Read { .. } => file,
            _ => inline,
        }
    }
}

/// Replaces every `${NAME}` with the environment variable `NAME`.
pub fn expand_env(value: &str) -> Result<String, SecretError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SecretError::BadName(name.to_owned()));
        }
        let var = std::env::var(name).map_err(|_| SecretError::Unset(name.to_owned()))?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves a secret from an inline value (with `${ENV}`) or a file, whose
/// trailing newline is dropped. Giving both is an error.
pub fn resolve(
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => return Err(SecretError::Both),
        (Some(v), None) => expand_env(v.expose())?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| SecretError::Read {
                path: path.to_owned(),
                source,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    Ok(Some(Secret::new(value)))
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
        assert!(matches!(
            expand_env("${LOOPWATCH_SURELY_UNSET_VAR}"),
            Err(SecretError::Unset(name)) if name == "LOOPWATCH_SURELY_UNSET_VAR"
        ));
        assert!(matches!(
            expand_env("${oops"),
            Err(SecretError::Unterminated)
        ));
    }

    #[test]
    fn reads_files_and_hides_the_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let secret = resolve(None, Some(&file)).expect("ok").expect("some");
        assert_eq!(secret.expose(), "s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
        let inline = Secret::new("x".into());
        let both = resolve(Some(&inline), Some(&file)).expect_err("both");
        assert_eq!(both.key("token", "token_file"), "token");
        let missing = resolve(None, Some(&dir.path().join("absent"))).expect_err("absent");
        assert_eq!(missing.key("token", "token_file"), "token_file");
    }
}
