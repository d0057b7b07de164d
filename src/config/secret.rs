//! Secrets (DSNs, passwords, tokens): given inline with `${ENV}` references or
//! read from a `*_file` key, and kept in a [`SecretString`] from the moment
//! they are decoded, so that they never reach a log line, a label, the
//! landing page or a `{:?}` by accident. Each is resolved once per load.
//!
//! Every file the configuration names (`*_file` secrets, CA bundles, the
//! configuration itself) is read through [`read_bounded`]: a regular file
//! only, and at most a fixed size, so `token_file: /dev/zero` or a FIFO is a
//! clear problem at load, not an exporter killed at 23.5 GB or hung (#15).

use std::io::Read;
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
    Read { path: PathBuf, source: FileError },
}

/// The most a `*_file` secret may hold: a token or a password is far smaller.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Why a file named in the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// What a non-regular file is, for the problem line.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads a regular file (symlinks followed) of at most `limit` bytes. The
/// type is checked before the file is opened, since opening a FIFO blocks,
/// and again on the open file; at most `limit + 1` bytes are ever read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(FileError::NotRegular(file_kind(kind)));
    }
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(file_kind(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // A file that grows after the check is still cut at the limit.
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| {
        FileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })
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
        (None, Some(path)) => read_bounded_text(path, MAX_SECRET_FILE)
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

    #[test]
    fn files_are_bounded_and_regular() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE as usize + 1]).expect("write");
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![b'a'; MAX_SECRET_FILE as usize]).expect("write");
        assert!(matches!(
            read_bounded(&big, MAX_SECRET_FILE),
            Err(FileError::TooLarge { .. })
        ));
        assert_eq!(
            read_bounded(&exact, MAX_SECRET_FILE)
                .expect("at the limit")
                .len(),
            MAX_SECRET_FILE as usize
        );
        for (path, kind) in [
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            match read_bounded(path, MAX_SECRET_FILE) {
                Err(FileError::NotRegular(k)) => assert_eq!(k, kind),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let e = resolve(None, Some(Path::new("/dev/zero"))).expect_err("a device");
        assert_eq!(
            e.to_string(),
            "cannot read /dev/zero: it is a character device, not a regular file"
        );
    }
}
