//! How loopwatch talks to a PostgreSQL or PgBouncer server (#15): the libpq
//! TLS keys of the DSN (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) taken
//! out of it before tokio-postgres parses the rest (it knows neither
//! `verify-ca` nor `verify-full` nor the certificate keys), the certificate
//! files read once (size-limited), and the wire limits: whether a cleartext
//! password may be sent and how large a server message may be.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// libpq's `sslmode`, less `allow` (plaintext first, which loopwatch does not do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verification; plaintext only
    /// when the server refuses TLS (never after a failed handshake).
    Prefer,
    /// TLS, no verification of the server's certificate.
    Require,
    /// TLS, the server's chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS, the chain verified and the host name checked.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// A client certificate and its key (`sslcert`, `sslkey`). `Debug` hides the key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientIdentity {{ chain: {} certificates, key: [REDACTED] }}",
            self.chain.len()
        )
    }
}

/// Everything about a target's wire that is not in `tokio_postgres::Config`.
#[derive(Debug, Clone)]
pub struct PgWire {
    /// In effect: `require` with an `sslrootcert` is `verify-ca`, as in libpq.
    pub ssl_mode: SslMode,
    /// The trusted roots from `sslrootcert`; empty unless verifying.
    pub root_certs: Vec<CertificateDer<'static>>,
    pub client_identity: Option<ClientIdentity>,
    /// Send a password in cleartext when the server asks for one (it is
    /// allowed without this only over TLS with a verified certificate).
    pub allow_cleartext_password: bool,
    /// The largest server message accepted; a larger header fails the
    /// connection before anything is allocated for it.
    pub max_message_bytes: usize,
}

/// Certificate and key files larger than this are refused unread.
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;
/// Default of `max_message_bytes`: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Why the TLS keys of a DSN could not be resolved. No variant holds the DSN.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("sslmode={0} needs sslrootcert: the CA file to verify the server against")]
    NoRoot(&'static str),
    #[error("sslrootcert=system is not supported: give the CA file")]
    SystemRoot,
    #[error("sslcert and sslkey go together")]
    HalfIdentity,
    #[error("sslmode=disable with {0}: the file would not be used")]
    DisabledWith(&'static str),
    #[error("cannot read {key} {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The TLS keys found in a DSN, as written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl TlsParams {
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Splits the TLS keys off a DSN (`key=value` or URL form); the rest is
/// returned for tokio-postgres to parse. A DSN this cannot read is returned
/// whole, so that tokio-postgres names its syntax error.
pub fn split_tls_params(dsn: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let rest = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        split_url(dsn, &mut params)
    } else {
        split_key_values(dsn, &mut params)
    };
    match rest {
        Some(rest) => (rest, params),
        None => (dsn.to_owned(), TlsParams::default()),
    }
}

fn split_url(dsn: &str, params: &mut TlsParams) -> Option<String> {
    let Some((base, query)) = dsn.split_once('?') else {
        return Some(dsn.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        if !params.take(&percent_decode(key)?, percent_decode(value)?) {
            kept.push(pair);
        }
    }
    Some(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// libpq's `key = value` syntax: values quoted with `'` or bare, `\` escapes.
fn split_key_values(dsn: &str, params: &mut TlsParams) -> Option<String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = dsn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let end;
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (i, '\'') => {
                        end = i + 1;
                        break;
                    }
                    (_, c) => value.push(c),
                }
            }
        } else {
            loop {
                match chars.peek() {
                    None => {
                        end = dsn.len();
                        break;
                    }
                    Some(&(i, c)) if c.is_whitespace() => {
                        end = i;
                        break;
                    }
                    Some(&(_, '\\')) => {
                        chars.next();
                        value.push(chars.next()?.1);
                    }
                    Some(&(_, c)) => {
                        chars.next();
                        value.push(c);
                    }
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        if !params.take(&key, value) {
            kept.push(&dsn[start..end]);
        }
    }
    Some(kept.join(" "))
}

/// Reads a PEM file of at most [`MAX_PEM_FILE_BYTES`], never a device or FIFO.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, PgTlsError> {
    let fail = |reason: String| PgTlsError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_PEM_FILE_BYTES} bytes, not a certificate file"
        )));
    }
    let mut bytes = Vec::new();
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_PEM_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let bytes = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgTlsError::File {
            key,
            path: path.to_owned(),
            reason: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(PgTlsError::File {
            key,
            path: path.to_owned(),
            reason: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// The wire settings of a target from the DSN's TLS keys and its own keys.
pub fn resolve_wire(
    params: &TlsParams,
    allow_cleartext_password: bool,
    max_message_bytes: usize,
) -> Result<PgWire, PgTlsError> {
    let given = match params.sslmode.as_deref() {
        // libpq's default.
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => return Err(PgTlsError::BadMode(other.chars().take(32).collect())),
    };
    if given == SslMode::Disable {
        for (value, key) in [
            (&params.sslrootcert, "sslrootcert"),
            (&params.sslcert, "sslcert"),
        ] {
            if value.is_some() {
                return Err(PgTlsError::DisabledWith(key));
            }
        }
    }
    let root_certs = match params.sslrootcert.as_deref() {
        Some("system") => return Err(PgTlsError::SystemRoot),
        Some(path) => read_certs("sslrootcert", Path::new(path))?,
        None if given.verifies() => return Err(PgTlsError::NoRoot(given.as_str())),
        None => Vec::new(),
    };
    // libpq: "if a root CA file exists, the behavior of sslmode=require
    // will be the same as that of verify-ca".
    let ssl_mode = if given == SslMode::Require && !root_certs.is_empty() {
        SslMode::VerifyCa
    } else {
        given
    };
    let client_identity = match (&params.sslcert, &params.sslkey) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let chain = read_certs("sslcert", Path::new(cert))?;
            let bytes = read_pem("sslkey", Path::new(key))?;
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PgTlsError::File {
                key: "sslkey",
                path: PathBuf::from(key),
                reason: format!("not a PEM private key: {e}"),
            })?;
            Some(ClientIdentity {
                chain,
                key: Arc::new(key),
            })
        }
        _ => return Err(PgTlsError::HalfIdentity),
    };
    Ok(PgWire {
        ssl_mode,
        // Prefer and require do not verify: no roots to keep.
        root_certs: if ssl_mode.verifies() {
            root_certs
        } else {
            Vec::new()
        },
        client_identity,
        allow_cleartext_password,
        max_message_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(dsn: &str) -> (String, TlsParams) {
        split_tls_params(dsn)
    }

    #[test]
    fn takes_tls_keys_out_of_key_value_dsns() {
        let (rest, p) = split(
            "host=db port=5432 sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem' user=u password='a\\'b c'",
        );
        assert_eq!(rest, "host=db port=5432 user=u password='a\\'b c'");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca dir/ca.pem"));
        let (rest, p) = split("host = db sslmode = require");
        assert_eq!(rest, "host = db");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
    }

    #[test]
    fn takes_tls_keys_out_of_urls() {
        let (rest, p) = split(
            "postgresql://u:p%3F@db:5432/x?sslmode=verify-ca&application_name=a&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgresql://u:p%3F@db:5432/x?application_name=a");
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, p) = split("postgres://db/x?sslmode=require");
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        assert_eq!(split("postgres://db/x").0, "postgres://db/x");
    }

    #[test]
    fn leaves_unreadable_dsns_to_tokio_postgres() {
        let (rest, p) = split("host=db sslmode='require");
        assert_eq!(rest, "host=db sslmode='require");
        assert_eq!(p, TlsParams::default());
    }

    #[test]
    fn modes_follow_libpq() {
        let wire = |mode: Option<&str>| {
            let p = TlsParams {
                sslmode: mode.map(str::to_owned),
                ..TlsParams::default()
            };
            resolve_wire(&p, false, DEFAULT_MAX_MESSAGE_BYTES).map(|w| w.ssl_mode)
        };
        assert_eq!(wire(None).unwrap(), SslMode::Prefer);
        assert_eq!(wire(Some("require")).unwrap(), SslMode::Require);
        assert!(matches!(
            wire(Some("verify-full")),
            Err(PgTlsError::NoRoot(_))
        ));
        assert!(matches!(wire(Some("allow")), Err(PgTlsError::BadMode(_))));
    }

    #[test]
    fn certificate_files_are_size_limited_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_FILE_BYTES as usize + 1]).unwrap();
        for path in [big.to_str().unwrap(), "/dev/zero"] {
            let p = TlsParams {
                sslmode: Some("verify-ca".into()),
                sslrootcert: Some(path.into()),
                ..TlsParams::default()
            };
            let e = resolve_wire(&p, false, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
            assert!(matches!(e, PgTlsError::File { .. }), "{e}");
        }
    }
}
