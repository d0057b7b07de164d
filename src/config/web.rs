//! The `web` section and the command-line flags that override it: merged
//! before validation, so each value is checked once, by one rule, and the
//! problem names the flag when the flag gave the value.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::Problems;
use super::schema::{IngestConfig, WebConfig};
use super::secret::{self, Secret};

/// Web settings given on the command line; each wins over its config key.
#[derive(Debug, Clone, Default)]
pub struct WebFlags {
    /// `--web.listen-address` (repeatable): replaces `web.listen_addresses`.
    pub listen_addresses: Vec<String>,
    /// `--web.telemetry-path`.
    pub telemetry_path: Option<String>,
    /// `--web.max-requests`.
    pub max_requests: Option<usize>,
    /// `--web.disable-exporter-metrics`: set, it wins; unset, the file decides.
    pub disable_exporter_metrics: bool,
    /// `--web.systemd-socket`: serve on the socket systemd passed (socket
    /// activation) instead of the listen addresses.
    pub systemd_socket: bool,
}

impl WebFlags {
    /// The section with the flags applied.
    pub(super) fn apply(&self, web: &mut WebConfig) {
        if !self.listen_addresses.is_empty() {
            web.listen_addresses = self.listen_addresses.clone();
        }
        if let Some(path) = &self.telemetry_path {
            web.telemetry_path = path.clone();
        }
        if let Some(n) = self.max_requests {
            web.max_requests = n;
        }
        web.disable_exporter_metrics |= self.disable_exporter_metrics;
    }
}

/// The HTTP server's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Web {
    pub listen_addresses: Vec<SocketAddr>,
    /// Starts with `/` and is not `/`.
    pub telemetry_path: String,
    /// Concurrent scrapes allowed; `None`: no limit.
    pub max_requests: Option<usize>,
    /// Export loopwatch's own `process_*` metrics.
    pub exporter_metrics: bool,
    /// Open connections at most; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    pub read_header_timeout: Duration,
    pub request_timeout: Duration,
    /// Serve on systemd's socket (`--web.systemd-socket`).
    pub systemd_socket: bool,
}

/// Who may `POST /api/v1/events` besides loopback peers.
#[derive(Debug, Clone, Default)]
pub struct IngestDoor {
    /// The bearer token every post must carry, when set.
    pub token: Option<Secret>,
    /// The separate ingest listener, which accepts any peer.
    pub http_listen_address: Option<SocketAddr>,
}

/// `ingest.token`, `ingest.token_file` and `ingest.http_listen_address`.
pub(super) fn resolve_ingest_door(ingest: &IngestConfig, problems: &mut Problems) -> IngestDoor {
    let token = match secret::resolve(ingest.token.as_ref(), ingest.token_file.as_deref()) {
        Ok(Some(t))
            if t.expose().len() < 16
                || t.expose()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control()) =>
        {
            problems.push(
                "ingest.token",
                "must be at least 16 characters without spaces or control characters",
            );
            None
        }
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("ingest.{}", e.key("token", "token_file")), e);
            None
        }
    };
    let address = &ingest.http_listen_address;
    let http_listen_address = if address.is_empty() {
        None
    } else {
        parse_http_listen_address(address)
            .map_err(|e| problems.push("ingest.http_listen_address", e))
            .ok()
    };
    IngestDoor {
        token,
        http_listen_address,
    }
}

/// Parses an HTTP listen address: as [`parse_listen_address`], but `:PORT`
/// means every IPv4 and IPv6 interface (`[::]:PORT`, dual-stack, bound as
/// `0.0.0.0:PORT` where IPv6 is unavailable), as in the Go exporters.
pub fn parse_http_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| {
            format!("{text:?} is not a listen address like :10071, 127.0.0.1:10071 or [::]:10071")
        })?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    parse_listen_address(text)
}

/// Parses a listen address as exporters take it: `:10071` (every IPv4
/// interface), `[::]:10071`, `127.0.0.1:10071` or `localhost:10071`.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let bad =
        || format!("{text:?} is not a listen address like :10071, 127.0.0.1:10071 or [::]:10071");
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| bad())
}

/// Resolves the merged section; a problem names the flag when a flag gave the value.
pub(super) fn resolve(web: &WebConfig, flags: &WebFlags, problems: &mut Problems) -> Web {
    let from_flags = !flags.listen_addresses.is_empty();
    if web.listen_addresses.is_empty() {
        problems.push("web.listen_addresses", "needs at least one address");
    }
    let mut listen_addresses = Vec::new();
    for (i, text) in web.listen_addresses.iter().enumerate() {
        match parse_http_listen_address(text) {
            Ok(addr) => listen_addresses.push(addr),
            Err(e) if from_flags => problems.push("--web.listen-address", e),
            Err(e) => problems.push(format!("web.listen_addresses[{i}]"), e),
        }
    }
    let path = &web.telemetry_path;
    if !path.starts_with('/') || path.len() < 2 {
        let (key, shown) = match flags.telemetry_path {
            Some(_) => ("--web.telemetry-path", format!("{path:?} ")),
            None => ("web.telemetry_path", String::new()),
        };
        problems.push(
            key,
            format!("{shown}must start with / and name a path other than /"),
        );
    }
    for (key, value) in [
        ("web.read_header_timeout", web.read_header_timeout),
        ("web.request_timeout", web.request_timeout),
    ] {
        if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
            problems.push(key, "must be between 100ms and 1h");
        }
    }
    if web.max_connections > 1_000_000 {
        problems.push(
            "web.max_connections",
            "must be at most 1000000 (0: from the open-file limit)",
        );
    }
    Web {
        listen_addresses,
        telemetry_path: path.clone(),
        max_requests: (web.max_requests > 0).then_some(web.max_requests),
        exporter_metrics: !web.disable_exporter_metrics,
        max_connections: (web.max_connections > 0).then_some(web.max_connections),
        read_header_timeout: web.read_header_timeout,
        request_timeout: web.request_timeout,
        systemd_socket: flags.systemd_socket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_exporter_forms() {
        assert_eq!(
            parse_listen_address(":10071"),
            Ok("0.0.0.0:10071".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_address("[::]:9"),
            Ok("[::]:9".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_address("localhost:80"),
            Ok("127.0.0.1:80".parse().expect("addr"))
        );
        assert!(parse_listen_address("10071").is_err());
        assert!(parse_listen_address(":99999").is_err());
        assert_eq!(
            parse_http_listen_address(":10071"),
            Ok("[::]:10071".parse().expect("addr"))
        );
    }
}
