//! The `ratelimits` section resolved: the URL parsed (and checked for
//! credentials), the extra CA certificates read once, and each token's
//! header value built once and marked sensitive, so it never prints.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Certificate, Url};

use super::error::Problems;
use super::schema::{HttpMethod, RateLimitKind, RateLimitTargetConfig, ResetFormat};
use super::secret;
use super::validate::{check_label_value, check_schedule};

/// GitHub's API when `url` is not given.
const GITHUB_API: &str = "https://api.github.com";

/// An API whose rate limits are polled, once per token.
#[derive(Debug, Clone)]
pub struct RateLimitTarget {
    /// The `api` label value.
    pub name: String,
    pub kind: RateLimitKind,
    /// `github`: the API base URL; `http`: the URL requested.
    pub url: Url,
    pub interval: Duration,
    pub timeout: Duration,
    /// Extra CA certificates, read from `ca_file` at load.
    pub ca_certificates: Vec<Certificate>,
    pub method: HttpMethod,
    /// `http`: the `resource` label when given.
    pub resource: Option<String>,
    /// `http`: header names when the API uses its own.
    pub limit_header: Option<String>,
    pub remaining_header: Option<String>,
    pub reset_header: Option<String>,
    pub reset_format: ResetFormat,
    /// The header that carries each token.
    pub token_header: HeaderName,
    /// None: one anonymous poll.
    pub tokens: Vec<Token>,
}

/// One token: its label and the ready header value.
#[derive(Debug, Clone)]
pub struct Token {
    /// The `token` label value.
    pub name: String,
    /// `token_prefix` and the token, marked sensitive (`Debug` prints `Sensitive`).
    pub header_value: HeaderValue,
}

/// An `http(s)` URL without credentials (they would leak into errors).
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials: give them as tokens".to_owned());
    }
    Ok(url)
}

/// A CA bundle larger than this is not one (the system's own is ~200 KiB).
const MAX_CA_FILE: u64 = 4 << 20;

/// Extra CA certificates from a PEM file.
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, String> {
    let pem = secret::read_bounded(path, MAX_CA_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn header_name(
    problems: &mut Problems,
    path: &str,
    key: &str,
    name: Option<&String>,
) -> Option<HeaderName> {
    let name = name?;
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            problems.push(
                format!("{path}.{key}"),
                format!("{name:?} is not an HTTP header name"),
            );
            None
        }
    }
}

pub(super) fn resolve(
    targets: &[RateLimitTargetConfig],
    problems: &mut Problems,
) -> Vec<RateLimitTarget> {
    let mut seen = HashSet::new();
    let mut resolved = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let path = format!("ratelimits[{i}]");
        let before = problems.0.len();
        check_label_value(problems, format!("{path}.name"), &t.name);
        if !seen.insert(t.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("{:?} is used by an earlier target", t.name),
            );
        }
        check_schedule(problems, &path, t.interval, t.timeout);
        if let Some(t) = resolve_target(problems, &path, t) {
            if problems.0.len() == before {
                resolved.push(t);
            }
        }
    }
    resolved
}

fn resolve_target(
    problems: &mut Problems,
    path: &str,
    t: &RateLimitTargetConfig,
) -> Option<RateLimitTarget> {
    let url = match (&t.url, t.kind) {
        (None, RateLimitKind::Http) => {
            problems.push(format!("{path}.url"), "is required for kind http");
            None
        }
        (given, _) => match parse_url(given.as_deref().unwrap_or(GITHUB_API)) {
            Ok(url) => Some(url),
            Err(e) => {
                problems.push(format!("{path}.url"), e);
                None
            }
        },
    };
    if t.kind == RateLimitKind::Github {
        for (key, given) in [
            ("method", t.method.is_some()),
            ("resource", t.resource.is_some()),
            ("limit_header", t.limit_header.is_some()),
            ("remaining_header", t.remaining_header.is_some()),
            ("reset_header", t.reset_header.is_some()),
            ("reset_format", t.reset_format.is_some()),
            ("token_header", t.token_header.is_some()),
            ("token_prefix", t.token_prefix.is_some()),
        ] {
            if given {
                problems.push(format!("{path}.{key}"), "applies to kind http only");
            }
        }
    }
    if let Some(resource) = &t.resource {
        check_label_value(problems, format!("{path}.resource"), resource);
    }
    for (key, header) in [
        ("limit_header", &t.limit_header),
        ("remaining_header", &t.remaining_header),
        ("reset_header", &t.reset_header),
    ] {
        header_name(problems, path, key, header.as_ref());
    }
    let token_header = header_name(problems, path, "token_header", t.token_header.as_ref())
        .unwrap_or(reqwest::header::AUTHORIZATION);
    let ca_certificates = match &t.ca_file {
        Some(ca) => read_ca_file(ca).unwrap_or_else(|e| {
            problems.push(format!("{path}.ca_file"), e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    let prefix = t.token_prefix.as_deref().unwrap_or("Bearer ");
    let mut names = HashSet::new();
    let mut tokens = Vec::new();
    for (j, token) in t.tokens.iter().enumerate() {
        let tpath = format!("{path}.tokens[{j}]");
        check_label_value(problems, format!("{tpath}.name"), &token.name);
        if !names.insert(token.name.as_str()) {
            problems.push(
                format!("{tpath}.name"),
                format!("{:?} is used by an earlier token", token.name),
            );
        }
        match secret::resolve(token.token.as_ref(), token.token_file.as_deref()) {
            Ok(Some(value)) if value.expose().is_empty() => {
                problems.push(format!("{tpath}.token"), "is empty")
            }
            Ok(Some(value)) => {
                match HeaderValue::from_str(&format!("{prefix}{}", value.expose())) {
                    Ok(mut header_value) => {
                        header_value.set_sensitive(true);
                        tokens.push(Token {
                            name: token.name.clone(),
                            header_value,
                        });
                    }
                    Err(_) => problems.push(
                        format!("{tpath}.token"),
                        "contains characters an HTTP header cannot carry",
                    ),
                }
            }
            Ok(None) => problems.push(format!("{tpath}.token"), "give token or token_file"),
            Err(e) => problems.push(format!("{tpath}.{}", e.key("token", "token_file")), e),
        }
    }
    Some(RateLimitTarget {
        name: t.name.clone(),
        kind: t.kind,
        url: url?,
        interval: t.interval,
        timeout: t.timeout,
        ca_certificates,
        method: t.method.unwrap_or_default(),
        resource: t.resource.clone(),
        limit_header: t.limit_header.clone(),
        remaining_header: t.remaining_header.clone(),
        reset_header: t.reset_header.clone(),
        reset_format: t.reset_format.unwrap_or_default(),
        token_header,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_without_credentials() {
        assert!(parse_url("https://github.example.com/api/v3").is_ok());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://user:secret@x").is_err());
        assert!(parse_url("not a url").is_err());
    }
}
