//! Rate limits that apps report from the headers they see. They belong to
//! the API and token, not to the loop that saw them, and fill the same
//! families as the `ratelimits` collector's polls — so a report naming a
//! budget loopwatch polls itself is refused: two sources would print the
//! same series twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Series;
use super::protocol::{RateLimit, Rejection};
use crate::config::IngestConfig;
use crate::families::{FoldKind, OTHER, ThrottleKind};
use crate::metrics::unix_now;

#[derive(Default)]
pub(super) struct RateLimits {
    /// `{api, resource, token}` reported by apps, and when last.
    seen: HashMap<[String; 3], Instant>,
    /// `{api, token}` that loopwatch polls itself.
    polled: HashSet<(String, String)>,
}

impl RateLimits {
    pub(super) fn set_polled(&mut self, polled: HashSet<(String, String)>) {
        self.polled = polled;
    }

    pub(super) fn report(
        &mut self,
        series: &Series,
        app: &str,
        rl: &RateLimit,
        config: &IngestConfig,
    ) -> Result<(), Rejection> {
        let token = rl.token.as_deref().unwrap_or(app);
        if self.polled.contains(&(rl.api.clone(), token.to_owned())) {
            return Err(Rejection::Reserved);
        }
        let key = [rl.api.clone(), rl.resource.clone(), token.to_owned()];
        let key = if self.seen.contains_key(&key) || self.seen.len() < config.max_ratelimits {
            key
        } else {
            series.folded(FoldKind::RateLimit, 1.0);
            [OTHER.to_owned(), OTHER.to_owned(), OTHER.to_owned()]
        };
        let [api, resource, token] = [key[0].as_str(), key[1].as_str(), key[2].as_str()];
        if !self.seen.contains_key(&key) {
            // Both counters from 0, so rate() sees the first refusal.
            for kind in ThrottleKind::ALL {
                series
                    .throttled
                    .with_label_values(&[api, resource, token, kind.as_str()]);
            }
        }
        if let Some((limit, remaining, reset)) = rl.budget() {
            let [l, r, t, observed] = &series.ratelimit;
            let labels = [api, resource, token];
            l.with_label_values(&labels).set(limit as f64);
            r.with_label_values(&labels).set(remaining as f64);
            t.with_label_values(&labels).set(reset);
            observed.with_label_values(&labels).set(unix_now());
        }
        if let Some(kind) = rl.throttled {
            series
                .throttled
                .with_label_values(&[api, resource, token, kind.as_str()])
                .inc();
        }
        self.seen.insert(key, Instant::now());
        Ok(())
    }

    /// Removes the series of budgets no app reported for `expiry`.
    pub(super) fn expire(&mut self, series: &Series, expiry: Duration) {
        self.seen.retain(|[api, resource, token], seen| {
            let keep = seen.elapsed() <= expiry;
            if !keep {
                let labels = [api.as_str(), resource.as_str(), token.as_str()];
                for gauge in &series.ratelimit {
                    let _ = gauge.remove_label_values(&labels);
                }
                for kind in ThrottleKind::ALL {
                    let _ = series.throttled.remove_label_values(&[
                        api,
                        resource,
                        token,
                        kind.as_str(),
                    ]);
                }
            }
            keep
        });
    }
}
