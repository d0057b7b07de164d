//! API rate limits: how much budget is left and when it resets, per API,
//! resource and token, polled from GitHub's `GET /rate_limit` (which costs no
//! budget) or from any API's rate-limit response headers.
//!
//! Each token is its own collector (`target="<api>/<token>"`), so one revoked
//! token fails alone. A failed poll leaves the value series out — a zero would
//! read as "exhausted" — but keeps `loopwatch_ratelimit_observed_timestamp_seconds`,
//! whose age then grows, and the throttled counters. After a `Retry-After`
//! the API is not asked again before it allows.

pub mod headers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, StatusCode, Url};

use super::{BoxFuture, BuildError, Built, CollectError, Job, Periodic, Reason};
use crate::config::{HttpMethod, RateLimitKind, RateLimitTarget};
use crate::error::Chain;
use crate::families::{self, ThrottleKind};
use crate::metrics::{Families, FamilyBuilder, unix_now};

/// The `token` label of a target without tokens.
const ANONYMOUS: &str = "anonymous";
/// The longest wait a `Retry-After` or reset may impose before the next poll.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Error bodies are read this far, for their message.
const MAX_ERROR_BODY: usize = 4096;
/// GitHub returns a dozen resources; more than this is not a rate-limit answer.
const MAX_RESOURCES: usize = 64;
/// Redirects followed per poll.
const MAX_REDIRECTS: usize = 3;

/// The `{api, token}` label pairs these targets poll, which apps may not
/// report too (the same series twice would be an invalid exposition).
pub fn polled_budgets(targets: &[RateLimitTarget]) -> std::collections::HashSet<(String, String)> {
    targets
        .iter()
        .flat_map(|t| {
            let tokens: Vec<String> = if t.tokens.is_empty() {
                vec![ANONYMOUS.to_owned()]
            } else {
                t.tokens.iter().map(|tc| tc.name.clone()).collect()
            };
            tokens.into_iter().map(|token| (t.name.clone(), token))
        })
        .collect()
}

pub fn build(targets: &[RateLimitTarget]) -> Result<Vec<Built>, BuildError> {
    let mut built = Vec::new();
    for t in targets {
        let shared = Target::new(t)?;
        let tokens: Vec<(String, Option<HeaderValue>)> = if t.tokens.is_empty() {
            vec![(ANONYMOUS.to_owned(), None)]
        } else {
            t.tokens
                .iter()
                .map(|token| (token.name.clone(), Some(token.header_value.clone())))
                .collect()
        };
        let n = tokens.len() as u32;
        for (k, (token, auth)) in (0u32..).zip(tokens) {
            built.push(Built {
                kind: "ratelimits",
                target: format!("{}/{token}", t.name),
                job: Job::Periodic {
                    interval: t.interval,
                    timeout: t.timeout,
                    collector: Box::new(TokenPoller {
                        target: shared.clone(),
                        token,
                        auth,
                        resources: BTreeMap::new(),
                        observed: BTreeMap::new(),
                        throttled: BTreeMap::new(),
                        backoff: None,
                        // The tokens of one API take turns over the interval.
                        phase: t.interval * k / n,
                    }),
                },
            });
        }
    }
    Ok(built)
}

/// What the tokens of one configured API share.
#[derive(Clone)]
struct Target {
    api: String,
    kind: RateLimitKind,
    /// The URL requested.
    url: Url,
    client: Client,
    method: Method,
    resource: Option<String>,
    names: headers::Names,
    token_header: HeaderName,
}

impl Target {
    fn new(t: &RateLimitTarget) -> Result<Self, BuildError> {
        let url = match t.kind {
            RateLimitKind::Github => {
                let mut url = t.url.clone();
                let path = format!("{}/rate_limit", url.path().trim_end_matches('/'));
                url.set_path(&path);
                url
            }
            RateLimitKind::Http => t.url.clone(),
        };
        let mut builder = Client::builder()
            .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
            .timeout(t.timeout)
            .connect_timeout(Duration::from_secs(3).min(t.timeout))
            // Redirects are followed in `TokenPoller::request`, which drops
            // the token when one leaves the origin.
            .redirect(reqwest::redirect::Policy::none());
        for cert in &t.ca_certificates {
            builder = builder.add_root_certificate(cert.clone());
        }
        let client = builder.build().map_err(|source| BuildError::HttpClient {
            target: t.name.clone(),
            source,
        })?;
        Ok(Self {
            api: t.name.clone(),
            kind: t.kind,
            url,
            client,
            method: match t.method {
                HttpMethod::Get => Method::GET,
                HttpMethod::Head => Method::HEAD,
            },
            resource: t.resource.clone(),
            names: headers::Names {
                limit: t.limit_header.clone(),
                remaining: t.remaining_header.clone(),
                reset: t.reset_header.clone(),
                reset_format: t.reset_format,
            },
            token_header: t.token_header.clone(),
        })
    }
}

/// One reading of one resource.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    limit: Option<f64>,
    remaining: f64,
    reset: Option<f64>,
}

/// Polls one API with one token.
struct TokenPoller {
    target: Target,
    token: String,
    /// The `token_header` value, marked sensitive; `None` for anonymous polls.
    auth: Option<HeaderValue>,
    /// The latest successful reading per resource; cleared when a poll fails.
    resources: BTreeMap<String, Reading>,
    /// Unix time of each resource's latest reading; kept when polls fail.
    observed: BTreeMap<String, f64>,
    throttled: BTreeMap<(String, &'static str), u64>,
    /// After `Retry-After`: no request before this instant. Until then the
    /// last poll's outcome stands: its error, or (when the refusal still
    /// carried the budget) its readings.
    backoff: Option<(Instant, Option<CollectError>)>,
    phase: Duration,
}

impl TokenPoller {
    fn families(&self) -> Families {
        let mut b = FamilyBuilder::default();
        let api = self.target.api.as_str();
        let token = self.token.as_str();
        for (resource, r) in &self.resources {
            let labels = [api, resource.as_str(), token];
            if let Some(limit) = r.limit {
                b.gauge(&families::RATELIMIT_LIMIT, &labels, limit);
            }
            b.gauge(&families::RATELIMIT_REMAINING, &labels, r.remaining);
            if let Some(reset) = r.reset {
                b.gauge(&families::RATELIMIT_RESET, &labels, reset);
            }
        }
        for (resource, at) in &self.observed {
            b.gauge(
                &families::RATELIMIT_OBSERVED,
                &[api, resource.as_str(), token],
                *at,
            );
        }
        // Every budget seen has both counters from 0, so rate() sees the first refusal.
        let mut throttled = self.throttled.clone();
        for resource in self.observed.keys() {
            for kind in ThrottleKind::ALL.map(ThrottleKind::as_str) {
                throttled.entry((resource.clone(), kind)).or_default();
            }
        }
        for ((resource, kind), n) in &throttled {
            b.counter(
                &families::RATELIMIT_THROTTLED,
                &[api, resource.as_str(), token, kind],
                *n as f64,
            );
        }
        b.finish()
    }

    /// Sends the request, following at most [`MAX_REDIRECTS`] redirects by
    /// hand: reqwest's own policy drops only `Authorization` and cookies when
    /// the host changes, so a custom `token_header` (`X-Api-Key`) would reach
    /// whatever host a redirect names (#15). Once a redirect leaves the
    /// origin (scheme, host and port), the token is sent no more.
    async fn request(&self) -> Result<reqwest::Response, CollectError> {
        let mut url = self.target.url.clone();
        let mut with_token = true;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .target
                .client
                .request(self.target.method.clone(), url.clone());
            if self.target.kind == RateLimitKind::Github {
                request = request
                    .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                    .header("X-GitHub-Api-Version", "2022-11-28");
            }
            if let (true, Some(auth)) = (with_token, &self.auth) {
                request = request.header(self.target.token_header.clone(), auth.clone());
            }
            let response = request.send().await.map_err(|e| transport_error(&e))?;
            let Some(next) = redirect_target(&response, &url)? else {
                return Ok(response);
            };
            with_token &= same_origin(&url, &next);
            url = next;
        }
        Err(CollectError::new(
            Reason::Http4xx,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// One poll: the new readings, or why there are none.
    async fn read(&mut self) -> Result<BTreeMap<String, Reading>, CollectError> {
        let response = self.request().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let observed = headers::read(&headers, &self.target.names);
        let body = if self.target.method == Method::HEAD
            || (status.is_success() && self.target.kind == RateLimitKind::Http)
        {
            String::new()
        } else {
            read_body(response, status).await?
        };
        let message = api_message(&body);

        if let Some(kind) = throttle(status, &headers, observed.as_ref(), &message) {
            let resource = self.resource_name(observed.as_ref());
            let kind_label = kind.as_str();
            *self.throttled.entry((resource, kind_label)).or_default() += 1;
            let wait = headers::retry_after(&headers).or_else(|| {
                // Exhausted without Retry-After: GitHub says to wait for the reset.
                observed
                    .as_ref()
                    .and_then(|o| o.reset)
                    .map(|r| Duration::from_secs_f64((r - unix_now()).max(0.0)))
            });
            let error = CollectError::new(
                Reason::Http4xx,
                format!("HTTP {status}: {kind_label} rate limit: {message}"),
            );
            // A generic API's throttled answer still carries its budget.
            let outcome = match &observed {
                Some(o) if self.target.kind == RateLimitKind::Http => Ok(self.single(o)),
                _ => Err(error),
            };
            if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                self.backoff = Some((
                    Instant::now() + wait.min(MAX_BACKOFF),
                    outcome.as_ref().err().cloned(),
                ));
            }
            return outcome;
        }
        if !(status.is_success() || status.is_redirection()) {
            let reason = match status {
                StatusCode::UNAUTHORIZED => Reason::Auth,
                s if s.is_server_error() => Reason::Http5xx,
                _ => Reason::Http4xx,
            };
            return Err(CollectError::new(
                reason,
                format!("HTTP {status}: {message}"),
            ));
        }
        match self.target.kind {
            RateLimitKind::Github => github_resources(&body),
            RateLimitKind::Http => match observed {
                Some(o) => Ok(self.single(&o)),
                None => Err(CollectError::new(
                    Reason::Parse,
                    format!(
                        "HTTP {status} without rate-limit headers (looked for {})",
                        self.looked_for()
                    ),
                )),
            },
        }
    }

    fn resource_name(&self, observed: Option<&headers::Observed>) -> String {
        let from_headers = observed.and_then(|o| o.resource.as_deref());
        match self.target.kind {
            // GitHub names the budget it refused; without it, the default "core".
            RateLimitKind::Github => from_headers.unwrap_or("core"),
            RateLimitKind::Http => self
                .target
                .resource
                .as_deref()
                .or(from_headers)
                .unwrap_or("default"),
        }
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
    }

    fn single(&self, o: &headers::Observed) -> BTreeMap<String, Reading> {
        let mut out = BTreeMap::new();
        if let Some(remaining) = o.remaining {
            out.insert(
                self.resource_name(Some(o)),
                Reading {
                    limit: o.limit,
                    remaining,
                    reset: o.reset,
                },
            );
        }
        out
    }

    fn looked_for(&self) -> String {
        let n = &self.target.names;
        match &n.remaining {
            Some(name) => name.clone(),
            None => "X-RateLimit-Remaining, X-Rate-Limit-Remaining, RateLimit-Remaining, RateLimit"
                .to_owned(),
        }
    }
}

/// Whether the response is a rate-limit refusal, and which kind.
fn throttle(
    status: StatusCode,
    headers: &HeaderMap,
    observed: Option<&headers::Observed>,
    message: &str,
) -> Option<ThrottleKind> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    if observed.and_then(|o| o.remaining) == Some(0.0) {
        return Some(ThrottleKind::Primary);
    }
    let secondary = message
        .to_ascii_lowercase()
        .contains("secondary rate limit")
        || headers.contains_key(reqwest::header::RETRY_AFTER)
        || status == StatusCode::TOO_MANY_REQUESTS;
    secondary.then_some(ThrottleKind::Secondary)
}

/// The body of an answer we need to read, bounded.
async fn read_body(
    mut response: reqwest::Response,
    status: StatusCode,
) -> Result<String, CollectError> {
    let limit = if status.is_success() {
        1 << 20
    } else {
        MAX_ERROR_BODY
    };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            if status.is_success() {
                return Err(CollectError::new(
                    Reason::Parse,
                    format!("the answer is larger than {limit} bytes"),
                ));
            }
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// GitHub's `message` from an error body, bounded and on one line.
fn api_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let trimmed = one_line.trim();
    if trimmed.is_empty() {
        "no message".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Every resource of a `GET /rate_limit` answer.
fn github_resources(body: &str) -> Result<BTreeMap<String, Reading>, CollectError> {
    let parse = |m: String| CollectError::new(Reason::Parse, m);
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| parse(format!("the /rate_limit answer is not JSON: {e}")))?;
    let resources = value
        .get("resources")
        .and_then(|r| r.as_object())
        .ok_or_else(|| parse("the /rate_limit answer has no resources object".to_owned()))?;
    let mut out = BTreeMap::new();
    for (name, r) in resources.iter().take(MAX_RESOURCES) {
        let field = |key: &str| r.get(key).and_then(serde_json::Value::as_f64);
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        match (valid, field("limit"), field("remaining"), field("reset")) {
            (true, Some(limit), Some(remaining), Some(reset)) => {
                out.insert(
                    name.clone(),
                    Reading {
                        limit: Some(limit),
                        remaining,
                        reset: Some(reset),
                    },
                );
            }
            _ => {
                return Err(parse(format!(
                    "resource {:?} of the /rate_limit answer lacks limit, remaining or reset",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(parse(
            "the /rate_limit answer lists no resources".to_owned(),
        ));
    }
    Ok(out)
}

/// Where a redirect answer points, `None` when the answer is not one to follow.
fn redirect_target(response: &reqwest::Response, from: &Url) -> Result<Option<Url>, CollectError> {
    use reqwest::StatusCode as S;
    let status = response.status();
    if !matches!(
        status,
        S::MOVED_PERMANENTLY
            | S::FOUND
            | S::SEE_OTHER
            | S::TEMPORARY_REDIRECT
            | S::PERMANENT_REDIRECT
    ) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
        return Ok(None);
    };
    let bad = |why: &str| CollectError::new(Reason::Http4xx, format!("HTTP {status}: {why}"));
    let location = location
        .to_str()
        .map_err(|_| bad("the Location header is not text"))?;
    let next = from
        .join(location)
        .map_err(|_| bad("the Location header is not a URL"))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad("redirected to a URL that is not http or https"));
    }
    Ok(Some(next))
}

/// Whether two URLs share scheme, host and port: a token may go to both.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn transport_error(e: &reqwest::Error) -> CollectError {
    let reason = if e.is_timeout() {
        Reason::Timeout
    } else if e.is_connect() {
        Reason::Connect
    } else if e.is_decode() || e.is_body() {
        Reason::Io
    } else {
        Reason::Other
    };
    // The chain names the cause ("Connection refused"); the URL carries no token.
    CollectError::new(reason, Chain(e).to_string())
}

impl Periodic for TokenPoller {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            if let Some((until, error)) = &self.backoff {
                if Instant::now() < *until {
                    return match error {
                        Some(e) => Err(e.clone()),
                        None => Ok(self.families()),
                    };
                }
                self.backoff = None;
            }
            match self.read().await {
                Ok(readings) => {
                    let now = unix_now();
                    // A resource the API no longer lists is gone, not stale.
                    self.observed.retain(|r, _| readings.contains_key(r));
                    for resource in readings.keys() {
                        self.observed.insert(resource.clone(), now);
                    }
                    self.resources = readings;
                    Ok(self.families())
                }
                Err(e) => {
                    self.resources.clear();
                    Err(e)
                }
            }
        })
    }

    fn down(&self) -> Families {
        // The driver calls this after a failed poll, when `resources` is empty.
        self.families()
    }

    fn phase(&self) -> Duration {
        self.phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_answer_lists_every_resource() {
        let body = r#"{"resources":{"core":{"limit":5000,"used":1,"remaining":4999,"reset":1691591363},"search":{"limit":30,"used":12,"remaining":18,"reset":1691591091},"graphql":{"limit":5000,"used":7,"remaining":4993,"reset":1691593228}},"rate":{"limit":5000,"used":1,"remaining":4999,"reset":1372700873}}"#;
        let r = github_resources(body).expect("parsed");
        assert_eq!(r.len(), 3);
        assert_eq!(r["search"].remaining, 18.0);
        assert_eq!(r["core"].reset, Some(1_691_591_363.0));
        for bad in [
            "not json",
            "{}",
            r#"{"resources":{}}"#,
            r#"{"resources":{"core":{"limit":"x"}}}"#,
        ] {
            assert_eq!(
                github_resources(bad).map(|_| ()).map_err(|e| e.reason),
                Err(Reason::Parse),
                "{bad}"
            );
        }
    }

    #[test]
    fn origin_is_scheme_host_and_port() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(same_origin(
            &u("https://a.example/x"),
            &u("https://a.example:443/y")
        ));
        for other in [
            "http://a.example/x",
            "https://b.example/x",
            "https://a.example:8443/x",
        ] {
            assert!(
                !same_origin(&u("https://a.example/x"), &u(other)),
                "{other}"
            );
        }
    }

    #[test]
    fn messages_are_bounded_single_lines() {
        assert_eq!(
            api_message(r#"{"message":"Bad credentials","documentation_url":"x"}"#),
            "Bad credentials"
        );
        assert_eq!(api_message(""), "no message");
        assert_eq!(api_message(&"a\n".repeat(500)).len(), 199);
    }
}
