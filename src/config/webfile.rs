//! The `--web.config.file` of the Prometheus exporter-toolkit
//! (docs/web-configuration.md there): TLS with optional client certificates,
//! basic auth with bcrypt hashes, and extra response headers. Read once at
//! start; a bad file names the key and its line, and loopwatch exits 2.
//!
//! Resolved into a [`WebSecurity`]: a built rustls server configuration (the
//! ring provider), the users' parsed hashes and a dummy hash of the same cost
//! that unknown users are checked against, so the time an answer takes does
//! not tell which users exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::error::{ConfigError, Problem, Problems};
use super::locate::Locations;

/// The file as written (exporter-toolkit keys; unknown keys are errors).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebConfigFile {
    /// TLS; absent: plain HTTP.
    tls_server_config: Option<RawTls>,
    /// HTTP server options.
    http_server_config: Option<RawHttpServer>,
    /// User name → bcrypt hash of the password; empty: no basic auth.
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    /// PEM file with the server certificate (and its chain).
    cert_file: Option<PathBuf>,
    /// PEM file with the server's private key.
    key_file: Option<PathBuf>,
    /// `NoClientCert` (default), `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`.
    client_auth_type: Option<String>,
    /// PEM file with the CAs client certificates are verified against.
    client_ca_file: Option<PathBuf>,
    /// `TLS12` (default) or `TLS13`.
    min_version: Option<String>,
    /// `TLS12` or `TLS13` (default).
    max_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttpServer {
    /// Accepted for compatibility; loopwatch serves HTTP/1.1 only.
    http2: Option<bool>,
    /// Headers added to every response (the exporter-toolkit's allowed set).
    headers: BTreeMap<String, String>,
}

/// Response headers the exporter-toolkit allows in `http_server_config.headers`.
const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// Largest certificate, key or CA file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Users and their bcrypt hashes.
#[derive(Clone)]
pub struct BasicAuthUsers {
    pub users: BTreeMap<String, String>,
    /// A hash of the users' cost that no password matches, checked for
    /// unknown users so they cost the same time as known ones.
    pub dummy_hash: String,
}

impl std::fmt::Debug for BasicAuthUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthUsers")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The resolved web configuration file; the default is plain HTTP without auth.
#[derive(Debug, Clone, Default)]
pub struct WebSecurity {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub basic_auth: Option<BasicAuthUsers>,
    /// Extra response headers, name and value (names from [`ALLOWED_HEADERS`]).
    pub headers: Vec<(String, String)>,
}

/// Reads and resolves a web configuration file; every problem names its key
/// (and line where the file shows it).
pub fn load_web_config_file(path: &Path) -> Result<WebSecurity, ConfigError> {
    let source_name = path.display().to_string();
    let fail = |problems| ConfigError {
        source_name: source_name.clone(),
        problems,
    };
    let text = read_limited(path).map_err(|e| {
        fail(vec![Problem::new(
            "",
            format!("cannot read the web config file: {e}"),
        )])
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| fail(vec![Problem::new("", "the web config file is not UTF-8")]))?;
    let locations = Locations::of(&text);
    let raw: RawWebConfigFile = if text.trim().is_empty() {
        RawWebConfigFile::default()
    } else {
        let de = serde_norway::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            let location = inner
                .location()
                .map(|l| (l.line(), l.column()))
                .or_else(|| locations.find(&key));
            fail(vec![Problem {
                path: key,
                location,
                message: clean_serde_message(&inner.to_string()),
            }])
        })?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Problems::default();
    let security = resolve(&raw, base, &mut problems);
    if problems.0.is_empty() {
        Ok(security)
    } else {
        Err(fail(
            problems
                .0
                .into_iter()
                .map(|mut p| {
                    p.location = locations.find(&p.path);
                    p
                })
                .collect(),
        ))
    }
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut out = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PEM_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PEM_BYTES} bytes"
        )));
    }
    Ok(out)
}

/// Relative paths are relative to the web config file, as in the exporter-toolkit.
fn relative_to(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn resolve(raw: &RawWebConfigFile, base: &Path, problems: &mut Problems) -> WebSecurity {
    let tls = raw
        .tls_server_config
        .as_ref()
        .and_then(|t| resolve_tls(t, base, problems))
        .map(Arc::new);
    let basic_auth = resolve_users(&raw.basic_auth_users, problems);
    let mut headers = Vec::new();
    if let Some(http) = &raw.http_server_config {
        let _ = http.http2;
        for (name, value) in &http.headers {
            match ALLOWED_HEADERS
                .iter()
                .find(|h| h.eq_ignore_ascii_case(name))
            {
                None => problems.push(
                    format!("http_server_config.headers.{name}"),
                    format!("is not one of {}", ALLOWED_HEADERS.join(", ")),
                ),
                Some(_)
                    if value.is_empty()
                        || value.len() > 4096
                        || value.chars().any(|c| c.is_control()) =>
                {
                    problems.push(
                        format!("http_server_config.headers.{name}"),
                        "must be 1 to 4096 characters without control characters",
                    )
                }
                Some(h) => headers.push(((*h).to_owned(), value.clone())),
            }
        }
    }
    WebSecurity {
        tls,
        basic_auth,
        headers,
    }
}

fn resolve_users(
    users: &BTreeMap<String, String>,
    problems: &mut Problems,
) -> Option<BasicAuthUsers> {
    if users.is_empty() {
        return None;
    }
    let mut cost = None;
    for (user, hash) in users {
        if user.is_empty() || user.contains(':') {
            problems.push(
                format!("basic_auth_users.{user}"),
                "a user name must not be empty nor contain ':'",
            );
        }
        match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) => cost = cost.max(Some(parts.get_cost())),
            Err(_) => problems.push(
                format!("basic_auth_users.{user}"),
                "is not a bcrypt hash ($2y$…); make one with `htpasswd -nBC 10 USER` or Python's bcrypt",
            ),
        }
    }
    let cost = cost?;
    match bcrypt::hash("loopwatch: no password matches this", cost) {
        Ok(dummy_hash) => Some(BasicAuthUsers {
            users: users.clone(),
            dummy_hash,
        }),
        Err(e) => {
            problems.push(
                "basic_auth_users",
                format!("cannot hash at cost {cost}: {e}"),
            );
            None
        }
    }
}

fn version(
    key: &str,
    value: Option<&str>,
    problems: &mut Problems,
) -> Option<&'static rustls::SupportedProtocolVersion> {
    match value? {
        "TLS13" => Some(&rustls::version::TLS13),
        "TLS12" => Some(&rustls::version::TLS12),
        "TLS10" | "TLS11" => {
            problems.push(
                format!("tls_server_config.{key}"),
                "TLS 1.0 and 1.1 are not supported; use TLS12 or TLS13",
            );
            None
        }
        other => {
            problems.push(
                format!("tls_server_config.{key}"),
                format!("{other:?} is not TLS12 or TLS13"),
            );
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    None,
    IfGiven,
    Required,
}

fn resolve_tls(raw: &RawTls, base: &Path, problems: &mut Problems) -> Option<rustls::ServerConfig> {
    let before = problems.0.len();
    let key_path = |k: &str| format!("tls_server_config.{k}");
    let client_auth = match raw.client_auth_type.as_deref() {
        None | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::IfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::Required,
        Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            problems.push(
                key_path("client_auth_type"),
                format!("{other} accepts certificates nobody verified and is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            );
            ClientAuth::None
        }
        Some(other) => {
            problems.push(
                key_path("client_auth_type"),
                format!("{other:?} is not NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            );
            ClientAuth::None
        }
    };
    let min = version("min_version", raw.min_version.as_deref(), problems);
    let max = version("max_version", raw.max_version.as_deref(), problems);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    let rank = |v: &rustls::SupportedProtocolVersion| {
        u8::from(v.version == rustls::ProtocolVersion::TLSv1_3)
    };
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        if min.is_none_or(|m| rank(v) >= rank(m)) && max.is_none_or(|m| rank(v) <= rank(m)) {
            versions.push(v);
        }
    }
    if versions.is_empty() {
        problems.push(
            key_path("min_version"),
            "is above tls_server_config.max_version",
        );
    }

    let certs = match &raw.cert_file {
        None => {
            problems.push(key_path("cert_file"), "is required with tls_server_config");
            None
        }
        Some(path) => read_certs(&relative_to(base, path))
            .map_err(|e| problems.push(key_path("cert_file"), e))
            .ok(),
    };
    let key = match &raw.key_file {
        None => {
            problems.push(key_path("key_file"), "is required with tls_server_config");
            None
        }
        Some(path) => {
            let path = relative_to(base, path);
            read_limited(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|pem| {
                    PrivateKeyDer::from_pem_slice(&pem)
                        .map_err(|e| format!("{} holds no PEM private key: {e}", path.display()))
                })
                .map_err(|e| problems.push(key_path("key_file"), e))
                .ok()
        }
    };
    let roots = match (&raw.client_ca_file, client_auth) {
        (None, ClientAuth::None) => None,
        (None, _) => {
            problems.push(
                key_path("client_ca_file"),
                "is required to verify client certificates",
            );
            None
        }
        (Some(path), _) => {
            let mut roots = rustls::RootCertStore::empty();
            match read_certs(&relative_to(base, path)) {
                Ok(certs) => {
                    for cert in certs {
                        if let Err(e) = roots.add(cert) {
                            problems.push(
                                key_path("client_ca_file"),
                                format!("bad CA certificate: {e}"),
                            );
                        }
                    }
                }
                Err(e) => problems.push(key_path("client_ca_file"), e),
            }
            Some(roots)
        }
    };
    if problems.0.len() > before {
        return None;
    }
    let (certs, key) = (certs?, key?);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
    {
        Ok(b) => b,
        Err(e) => {
            problems.push("tls_server_config", e);
            return None;
        }
    };
    let builder = match (roots, client_auth) {
        (Some(roots), ClientAuth::IfGiven | ClientAuth::Required) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if client_auth == ClientAuth::IfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            match verifier.build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    problems.push(key_path("client_ca_file"), e);
                    return None;
                }
            }
        }
        _ => builder.with_no_client_auth(),
    };
    match builder.with_single_cert(certs, key) {
        Ok(mut config) => {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(config)
        }
        Err(e) => {
            problems.push(
                key_path("key_file"),
                format!("does not match tls_server_config.cert_file, or is not usable: {e}"),
            );
            None
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_limited(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// serde_norway's message without its trailing `at line L column C` (the
/// problem carries the location itself).
fn clean_serde_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebSecurity, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.yml");
        std::fs::write(&path, text).expect("write");
        load_web_config_file(&path)
    }

    #[test]
    fn an_empty_file_is_plain_http_without_auth() {
        let s = load("").expect("valid");
        assert!(s.tls.is_none() && s.basic_auth.is_none() && s.headers.is_empty());
    }

    #[test]
    fn r15_bad_web_config_names_the_key_and_line() {
        let e = load("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_fil: x\n")
            .expect_err("unknown key");
        let text = e.to_string();
        assert!(
            text.contains("line 3") && text.contains("key_fil"),
            "{text}"
        );

        let e = load("basic_auth_users:\n  alice: plaintext\ntls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS10\n")
            .expect_err("bad values");
        let text = e.to_string();
        for (line, key) in [
            ("line 2", "basic_auth_users.alice: is not a bcrypt hash"),
            ("line 4", "tls_server_config.cert_file: cannot read"),
            ("line 5", "tls_server_config.key_file: cannot read"),
            ("line 3", "tls_server_config.client_ca_file: is required"),
            ("line 7", "tls_server_config.min_version: TLS 1.0"),
        ] {
            assert!(
                text.lines().any(|l| l.contains(line) && l.contains(key)),
                "{key} at {line}:\n{text}"
            );
        }
        assert!(
            !text.contains("plaintext"),
            "the hash value is not echoed: {text}"
        );
    }

    #[test]
    fn users_get_a_dummy_hash_of_their_cost() {
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let s = load(&format!(
            "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .expect("valid");
        let users = s.basic_auth.expect("users");
        assert_eq!(
            users
                .dummy_hash
                .parse::<bcrypt::HashParts>()
                .expect("hash")
                .get_cost(),
            4
        );
        assert!(!bcrypt::verify("pw", &users.dummy_hash).expect("verify"));
        assert_eq!(
            s.headers,
            vec![("X-Frame-Options".to_owned(), "deny".to_owned())]
        );
        let e =
            load("http_server_config:\n  headers:\n    Set-Cookie: a\n").expect_err("not allowed");
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("Set-Cookie"),
            "{e}"
        );
    }
}
