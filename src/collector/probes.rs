//! HTTP(S) probes: one request every `interval` (up, duration, status) and,
//! when configured, a concurrency probe: bursts of N simultaneous requests
//! (the success ratio, the answers by status class and the p95 latency of
//! each burst), so a health endpoint that answers one request but fails
//! under 5 concurrent ones is seen.
//!
//! A probe's request failing is a value (`loopwatch_probe_up 0`), not a
//! failed poll. Header values are secrets: they are marked sensitive, never
//! logged, and only sent to the configured URL's origin — redirects are
//! followed here, not by reqwest, so a header such as `X-Api-Key` (which
//! reqwest would forward) never crosses to another host.
//!
//! Bursts can never become load: each level is capped
//! ([`crate::config::MAX_CONCURRENCY`]), and one round of bursts per probe
//! runs per concurrency interval (at least 30 s), across reloads too
//! ([`BurstMemory`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::header::LOCATION;
use reqwest::{Client, Method, StatusCode, Url};

use super::{BoxFuture, BuildError, Built, CollectError, Job, Periodic};
use crate::config::ProbeTarget;
use crate::error::Chain;
use crate::families::{self, ResponseClass};
use crate::metrics::{Families, FamilyBuilder};

/// How long a concurrency probe's last round is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// When each concurrency probe last ran its bursts, and what they found,
/// kept across reloads: a SIGHUP storm restarts collectors, never bursts.
#[derive(Default)]
pub struct BurstMemory {
    last: Mutex<HashMap<String, (Instant, Vec<BurstResult>)>>,
}

pub fn build(targets: &[ProbeTarget], memory: &Arc<BurstMemory>) -> Result<Vec<Built>, BuildError> {
    let mut built = Vec::new();
    for t in targets {
        let prober = Arc::new(Prober::new(t)?);
        // The single request may wait for a round of bursts to end.
        let wait = t.concurrency.as_ref().map_or(Duration::ZERO, |c| c.timeout);
        built.push(Built {
            kind: "probes",
            target: t.name.clone(),
            job: Job::Periodic {
                interval: t.interval,
                timeout: t.timeout + wait + Duration::from_secs(1),
                collector: Box::new(Probe {
                    prober: prober.clone(),
                    last_failure: None,
                }),
            },
        });
        if let Some(c) = &t.concurrency {
            built.push(Built {
                kind: "probes",
                target: format!("{}/concurrency", t.name),
                job: Job::Periodic {
                    interval: c.interval,
                    timeout: c.timeout,
                    collector: Box::new(Burst {
                        prober,
                        levels: c.levels.clone(),
                        interval: c.interval,
                        memory: memory.clone(),
                    }),
                },
            });
        }
    }
    Ok(built)
}

/// The requests of one probe.
struct Prober {
    target: ProbeTarget,
    client: Client,
    /// Held by a round of bursts and by the single request, so they never
    /// overlap: a burst of N measures N concurrent requests, not N + 1.
    exclusive: tokio::sync::Mutex<()>,
}

/// How one request ended.
#[derive(Debug, Clone)]
struct Outcome {
    /// The final status; `None`: no answer.
    status: Option<StatusCode>,
    /// As the probe defines success: an expected status, a matching body.
    ok: bool,
    duration: Duration,
    /// Why it is not ok, for the log.
    failure: Option<String>,
}

impl Prober {
    fn new(t: &ProbeTarget) -> Result<Self, BuildError> {
        let mut builder = Client::builder()
            .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
            .timeout(t.timeout)
            .connect_timeout(t.timeout)
            // Redirects are followed in `request`, which decides where the
            // configured headers may go.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(t.insecure_skip_verify);
        for cert in &t.ca_certificates {
            builder = builder.add_root_certificate(cert.clone());
        }
        let client = builder.build().map_err(|source| BuildError::HttpClient {
            target: t.name.clone(),
            source,
        })?;
        Ok(Self {
            target: t.clone(),
            client,
            exclusive: tokio::sync::Mutex::new(()),
        })
    }

    /// One request, with its redirects, within the probe's timeout.
    async fn request(&self) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(self.target.timeout, self.exchange()).await;
        let duration = started.elapsed();
        match result {
            Err(_) => Outcome {
                status: None,
                ok: false,
                duration,
                failure: Some(format!(
                    "no answer within {}",
                    humantime::format_duration(self.target.timeout)
                )),
            },
            Ok(Err(failure)) => Outcome {
                status: None,
                ok: false,
                duration,
                failure: Some(failure),
            },
            Ok(Ok((status, failure))) => Outcome {
                status: Some(status),
                ok: failure.is_none(),
                duration,
                failure,
            },
        }
    }

    /// The final status and, when it is not a success, why.
    async fn exchange(&self) -> Result<(StatusCode, Option<String>), String> {
        let t = &self.target;
        let mut url = t.url.clone();
        let mut method = t.method.clone();
        let mut hops = 0;
        loop {
            let mut request = self.client.request(method.clone(), url.clone());
            // Secret headers go to the configured origin only.
            if same_origin(&url, &t.url) {
                for (name, value) in &t.headers {
                    request = request.header(name.clone(), value.clone());
                }
            }
            let response = request
                .send()
                .await
                .map_err(|e| Chain(&e.without_url()).to_string())?;
            let status = response.status();
            if status.is_redirection() && hops < t.max_redirects {
                if let Some(next) = redirect_target(&url, &response) {
                    hops += 1;
                    // 303, and 301/302 after a POST, become GET, as browsers do.
                    if status == StatusCode::SEE_OTHER
                        || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                            && method == Method::POST)
                    {
                        method = Method::GET;
                    }
                    url = next;
                    continue;
                }
            }
            let expected = t
                .expected_status
                .iter()
                .any(|r| r.contains(&status.as_u16()));
            if !expected {
                return Ok((status, Some(format!("unexpected status {status}"))));
            }
            let Some(re) = &t.body_match else {
                return Ok((status, None));
            };
            let body = read_body(response, t.max_body_bytes).await?;
            return Ok(if re.is_match(&body) {
                (status, None)
            } else {
                (
                    status,
                    Some("the body does not match body_match".to_owned()),
                )
            });
        }
    }
}

/// Scheme, host and port are the same.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The `Location` of a redirect, resolved against the URL it came from;
/// `None` when absent or not http(s).
fn redirect_target(from: &Url, response: &reqwest::Response) -> Option<Url> {
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    let next = from.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}

/// The body, read up to `limit` bytes (a match in the rest is not seen).
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Chain(&e.without_url()).to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The single request every `interval`.
struct Probe {
    prober: Arc<Prober>,
    /// The last failure logged, so a lasting one is logged once.
    last_failure: Option<String>,
}

impl Periodic for Probe {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let outcome = {
                let _turn = self.prober.exclusive.lock().await;
                self.prober.request().await
            };
            let name = self.prober.target.name.as_str();
            if outcome.failure != self.last_failure {
                match &outcome.failure {
                    Some(why) => tracing::warn!(probe = name, error = %why, "Probe failed"),
                    None => tracing::info!(probe = name, "Probe succeeded"),
                }
                self.last_failure = outcome.failure.clone();
            }
            let mut b = FamilyBuilder::default();
            let labels = [name];
            b.gauge(
                &families::PROBE_UP,
                &labels,
                f64::from(u8::from(outcome.ok)),
            );
            b.gauge(
                &families::PROBE_DURATION,
                &labels,
                outcome.duration.as_secs_f64(),
            );
            b.gauge(
                &families::PROBE_STATUS_CODE,
                &labels,
                outcome.status.map_or(0.0, |s| f64::from(s.as_u16())),
            );
            Ok(b.finish())
        })
    }
}

/// What one burst of `concurrency` simultaneous requests found.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstResult {
    concurrency: usize,
    successes: usize,
    classes: [usize; ResponseClass::ALL.len()],
    p95: Duration,
}

impl BurstResult {
    fn of(concurrency: usize, outcomes: &[Outcome]) -> Self {
        let mut classes = [0; ResponseClass::ALL.len()];
        for o in outcomes {
            let class = o.status.map_or(ResponseClass::Error, |s| {
                ResponseClass::of_status(s.as_u16())
            });
            if let Some(i) = ResponseClass::ALL.iter().position(|c| *c == class) {
                classes[i] += 1;
            }
        }
        let mut durations: Vec<Duration> = outcomes.iter().map(|o| o.duration).collect();
        durations.sort();
        Self {
            concurrency,
            successes: outcomes.iter().filter(|o| o.ok).count(),
            classes,
            p95: nearest_rank(&durations, 0.95),
        }
    }
}

/// The nearest-rank percentile of sorted values; zero for none.
fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The concurrency probe: one burst per level, one round per interval.
struct Burst {
    prober: Arc<Prober>,
    levels: Vec<usize>,
    interval: Duration,
    memory: Arc<BurstMemory>,
}

impl Burst {
    /// Bursts of this probe are remembered under its name, URL and levels.
    fn key(&self) -> String {
        format!(
            "{} {} {:?}",
            self.prober.target.name, self.prober.target.url, self.levels
        )
    }

    fn families(&self, results: &[BurstResult]) -> Families {
        let mut b = FamilyBuilder::default();
        let probe = self.prober.target.name.as_str();
        for r in results {
            let n = r.concurrency.to_string();
            let labels = [probe, n.as_str()];
            b.gauge(
                &families::PROBE_CONCURRENCY_SUCCESS_RATIO,
                &labels,
                r.successes as f64 / r.concurrency.max(1) as f64,
            );
            b.gauge(
                &families::PROBE_CONCURRENCY_P95,
                &labels,
                r.p95.as_secs_f64(),
            );
            for (class, count) in ResponseClass::ALL.iter().zip(r.classes) {
                b.gauge(
                    &families::PROBE_CONCURRENCY_RESPONSES,
                    &[probe, n.as_str(), class.as_str()],
                    count as f64,
                );
            }
        }
        b.finish()
    }
}

impl Periodic for Burst {
    fn poll(&mut self) -> BoxFuture<'_, Result<Families, CollectError>> {
        Box::pin(async move {
            let key = self.key();
            // A tenth of slack for the schedule's jitter: bursts stay at
            // least 27 s apart.
            let earliest = self.interval - self.interval / 10;
            {
                let mut last = self.memory.last.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((at, results)) = last.get(&key) {
                    if at.elapsed() < earliest {
                        return Ok(self.families(results));
                    }
                }
                // The round is booked before it starts: one cut off by a
                // reload still counts, so its successor does not burst again.
                last.retain(|_, (at, _)| at.elapsed() < FORGET_AFTER);
                let previous = last.get(&key).map(|(_, r)| r.clone()).unwrap_or_default();
                last.insert(key.clone(), (Instant::now(), previous));
            }
            let _turn = self.prober.exclusive.lock().await;
            let mut results = Vec::new();
            for &n in &self.levels {
                let n = n.min(crate::config::MAX_CONCURRENCY);
                let outcomes = join_all((0..n).map(|_| self.prober.request())).await;
                results.push(BurstResult::of(n, &outcomes));
            }
            if let Some(entry) = self
                .memory
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&key)
            {
                entry.1 = results.clone();
            }
            Ok(self.families(&results))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_the_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(nearest_rank(&ms(&[]), 0.95), Duration::ZERO);
        assert_eq!(nearest_rank(&ms(&[7]), 0.95), Duration::from_millis(7));
        // 5 values: rank ceil(4.75) = 5, the largest.
        assert_eq!(
            nearest_rank(&ms(&[1, 2, 3, 4, 50]), 0.95),
            Duration::from_millis(50)
        );
        // 40 values: rank 38.
        let forty: Vec<u64> = (1..=40).collect();
        assert_eq!(nearest_rank(&ms(&forty), 0.95), Duration::from_millis(38));
    }

    #[test]
    fn origins_differ_by_scheme_host_or_port() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(same_origin(&u("http://a/x"), &u("http://a:80/y?q")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://b/x")));
        assert!(!same_origin(&u("http://a:8080/x"), &u("http://a:8081/x")));
    }

    #[test]
    fn bursts_count_by_class() {
        let o = |status: Option<u16>, ok| Outcome {
            status: status.map(|s| StatusCode::from_u16(s).expect("status")),
            ok,
            duration: Duration::from_millis(10),
            failure: None,
        };
        let r = BurstResult::of(
            5,
            &[
                o(Some(200), true),
                o(Some(500), false),
                o(Some(503), false),
                o(None, false),
                o(Some(404), false),
            ],
        );
        assert_eq!(r.successes, 1);
        // 2xx, 3xx, 4xx, 5xx, error
        assert_eq!(r.classes, [1, 0, 1, 2, 1]);
    }
}
