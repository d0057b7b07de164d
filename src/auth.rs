//! Who may ask: basic auth from the web config file (bcrypt hashes, checked
//! off the server's runtime, in time that does not depend on whether the user
//! exists), and the ingest door's checks (loopback peers, a bearer token
//! compared in constant time).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, header};
use tokio::sync::Semaphore;

use crate::config::{BasicAuthUsers, Secret};

/// Compares in time that depends on the lengths only, never on where the
/// first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a peer is on this host: 127.0.0.0/8 or ::1, also as an
/// IPv4-mapped address on a dual-stack socket.
pub fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Whether the request carries `Authorization: Bearer <token>`.
pub fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes()))
}

/// bcrypt checks running at once at most: each costs tens of milliseconds
/// of CPU, and a flood of wrong passwords must not take every core.
const MAX_CONCURRENT_VERIFIES: usize = 2;

/// Basic auth against the users of the web config file.
pub struct BasicAuth {
    users: BasicAuthUsers,
    /// The password last verified per user, so a scrape every 15 s costs one
    /// bcrypt check in all, not one each (as the exporter-toolkit caches).
    verified: Mutex<HashMap<String, Secret>>,
    slots: Arc<Semaphore>,
}

impl BasicAuth {
    pub fn new(users: BasicAuthUsers) -> Self {
        Self {
            users,
            verified: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFIES)),
        }
    }

    /// Whether the request's credentials are a configured user's.
    pub async fn check(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = basic_credentials(headers) else {
            return false;
        };
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&user)
            .is_some_and(|known| {
                constant_time_eq(known.expose().as_bytes(), password.expose().as_bytes())
            });
        if cached {
            return true;
        }
        // An unknown user is checked against the dummy hash, which no
        // password matches, so it takes as long as a known one.
        let (known, hash) = match self.users.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.users.dummy_hash.clone()),
        };
        let Ok(_permit) = self.slots.acquire().await else {
            return false;
        };
        let given = password.clone();
        let matches = tokio::task::spawn_blocking(move || {
            bcrypt::verify(given.expose(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if matches && known {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user, password);
            return true;
        }
        false
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, Secret)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), Secret::new(password.to_owned())))
}

/// Standard base64 with padding (RFC 4648 §4), as browsers and clients send.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 || bytes.len() > 8192 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_credentials() {
        assert_eq!(
            base64_decode("YWxpY2U6czNjcmV0").as_deref(),
            Some(&b"alice:s3cret"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert!(base64_decode("YQ=").is_none());
        assert!(base64_decode("Y===").is_none());
        assert!(base64_decode("YQ==YQ==").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "Basic YWxpY2U6czNjcmV0".parse().expect("value"),
        );
        let (user, password) = basic_credentials(&headers).expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("alice", "s3cret"));
    }

    #[test]
    fn loopback_includes_mapped_addresses() {
        for ip in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["192.0.2.2", "::ffff:192.0.2.2", "fd00::2", "::"] {
            assert!(!is_loopback(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn r15_basic_auth_accepts_the_right_password_only() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let auth = BasicAuth::new(BasicAuthUsers {
            users: [("alice".to_owned(), hash)].into_iter().collect(),
            dummy_hash: bcrypt::hash("x", 4).expect("hash"),
        });
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().expect("value"));
            h
        };
        // alice:s3cret, twice (the second from the cache).
        assert!(auth.check(&with("Basic YWxpY2U6czNjcmV0")).await);
        assert!(auth.check(&with("Basic YWxpY2U6czNjcmV0")).await);
        // alice:wrong, bob:s3cret, none.
        assert!(!auth.check(&with("Basic YWxpY2U6d3Jvbmc=")).await);
        assert!(!auth.check(&with("Basic Ym9iOnMzY3JldA==")).await);
        assert!(!auth.check(&HeaderMap::new()).await);
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
