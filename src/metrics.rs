//! The one registry `/metrics` encodes, and the pieces collectors fill it with:
//! [`FamilyBuilder`] for per-poll snapshots, [`Snapshots`] to publish them
//! (encoded once per poll, not per scrape),
//! and the exporter's own `loopwatch_build_info`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::families::{self, Family};
use crate::version;

/// Now as Unix seconds, for `*_timestamp_seconds` gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The metric families one poll produced.
pub type Families = Vec<MetricFamily>;

/// The content type Prometheus 3 requires for the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds a fresh set of families for one poll, so that a series gone at the
/// source is gone from `/metrics` once the snapshot is swapped in.
#[derive(Default)]
pub struct FamilyBuilder {
    families: Vec<MetricFamily>,
}

impl FamilyBuilder {
    /// One sample of `family` with these label values, in the family's label order.
    pub fn gauge(&mut self, family: &Family, values: &[&str], value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        self.add(family, values, &[], MetricType::GAUGE, |m| {
            m.set_gauge(gauge)
        });
    }

    pub fn counter(&mut self, family: &Family, values: &[&str], value: f64) {
        let mut counter = Counter::default();
        counter.set_value(value);
        self.add(family, values, &[], MetricType::COUNTER, |m| {
            m.set_counter(counter)
        });
    }

    /// A counter sample with labels beyond the family's own (a log rule's
    /// named groups): `extra` names must not repeat the family's.
    pub fn counter_with(
        &mut self,
        family: &Family,
        values: &[&str],
        extra: &[(&str, &str)],
        value: f64,
    ) {
        let mut counter = Counter::default();
        counter.set_value(value);
        self.add(family, values, extra, MetricType::COUNTER, |m| {
            m.set_counter(counter)
        });
    }

    /// A histogram sample: `buckets` are (upper bound, cumulative count),
    /// without `+Inf` (the encoder adds it from `count`).
    pub fn histogram(
        &mut self,
        family: &Family,
        values: &[&str],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut histogram = Histogram::default();
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        histogram.set_bucket(
            buckets
                .iter()
                .map(|&(upper, cumulative)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(upper);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect(),
        );
        self.add(family, values, &[], MetricType::HISTOGRAM, |m| {
            m.set_histogram(histogram)
        });
    }

    fn add(
        &mut self,
        family: &Family,
        values: &[&str],
        extra: &[(&str, &str)],
        kind: MetricType,
        set: impl FnOnce(&mut Metric),
    ) {
        if family.labels.len() != values.len() {
            // A bug, but never worth a panic in a scrape: log it and skip the sample.
            tracing::error!(
                family = family.name,
                "Label values do not match the family's labels"
            );
            return;
        }
        // Sorted by name, as the registry's own vectors print them, so a
        // family filled from both sources reads alike.
        let mut labels: Vec<(&str, &str)> = family
            .labels
            .iter()
            .copied()
            .zip(values.iter().copied())
            .chain(extra.iter().copied())
            .collect();
        labels.sort_unstable_by_key(|(name, _)| *name);
        let mut metric = Metric::from_label(label_pairs(&labels));
        set(&mut metric);
        self.push(family.name, family.help, kind, metric);
    }

    /// A gauge by raw name. Its last user is `loops.rs`, which the ingest
    /// rewrite moves to [`FamilyBuilder::gauge`]; delete it then.
    fn push(&mut self, name: &str, help: &str, kind: MetricType, metric: Metric) {
        if let Some(family) = self.families.iter_mut().find(|f| f.name() == name) {
            family.mut_metric().push(metric);
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        family.set_metric(vec![metric]);
        self.families.push(family);
    }

    pub fn finish(self) -> Families {
        self.families
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

/// One family in the text format, encoded once when its snapshot is
/// published so that a scrape only copies bytes: its `# HELP` / `# TYPE`
/// lines and its sample lines.
pub struct EncodedFamily {
    name: String,
    header: Vec<u8>,
    samples: Vec<u8>,
}

/// Encodes each family on its own, split into header and samples.
pub fn encode_families(families: &[MetricFamily]) -> Vec<EncodedFamily> {
    let encoder = TextEncoder::new();
    families
        .iter()
        .filter(|f| !f.get_metric().is_empty())
        .filter_map(|f| {
            let mut header = Vec::new();
            if let Err(e) = encoder.encode(std::slice::from_ref(f), &mut header) {
                tracing::error!(error = %e, family = f.name(), "Failed to encode a metric family");
                return None;
            }
            // The encoder writes the comment lines first, then one line per sample.
            let mut split = 0;
            while header[split..].starts_with(b"# ") {
                split += header[split..].iter().position(|&b| b == b'\n')? + 1;
            }
            let samples = header.split_off(split);
            Some(EncodedFamily {
                name: f.name().to_owned(),
                header,
                samples,
            })
        })
        .collect()
}

/// One published snapshot slot per running collector.
pub type Slot = ArcSwap<Vec<EncodedFamily>>;

/// All snapshot slots, swapped as a whole when the collector set changes on
/// reload. A scrape reads whatever is current and never waits on a collector.
#[derive(Default)]
pub struct Snapshots {
    slots: ArcSwap<Vec<Arc<Slot>>>,
}

impl Snapshots {
    pub fn replace(&self, slots: Vec<Arc<Slot>>) {
        self.slots.store(Arc::new(slots));
    }
}

/// Registers `loopwatch_build_info{version, revision, branch, rust_version, os, arch} 1`.
pub fn register_build_info(registry: &Registry) {
    families::BUILD_INFO
        .gauge_vec(registry)
        .with_label_values(&[
            version::VERSION,
            version::REVISION,
            version::BRANCH,
            version::RUST_VERSION,
            std::env::consts::OS,
            std::env::consts::ARCH,
        ])
        .set(1.0);
}

/// Encodes the registry in the text format.
#[cfg(test)]
pub fn encode(registry: &Registry) -> Vec<u8> {
    encode_with(registry, &Snapshots::default())
}

/// Encodes the registry and the collectors' published snapshots; families of
/// the same name (apps' pools and loopwatch's own, say) are written as one.
pub fn encode_with(registry: &Registry, snapshots: &Snapshots) -> Vec<u8> {
    let live = encode_families(&registry.gather());
    let published: Vec<Arc<Vec<EncodedFamily>>> = snapshots
        .slots
        .load()
        .iter()
        .map(|s| s.load_full())
        .collect();
    let mut by_name: BTreeMap<&str, (&[u8], Vec<&[u8]>)> = BTreeMap::new();
    for f in live.iter().chain(published.iter().flat_map(|p| p.iter())) {
        by_name
            .entry(f.name.as_str())
            .or_insert_with(|| (f.header.as_slice(), Vec::new()))
            .1
            .push(&f.samples);
    }
    let size = by_name
        .values()
        .map(|(h, samples)| h.len() + samples.iter().map(|s| s.len()).sum::<usize>())
        .sum();
    let mut buf = Vec::with_capacity(size);
    for (header, samples) in by_name.values() {
        buf.extend_from_slice(header);
        for s in samples {
            buf.extend_from_slice(s);
        }
    }
    buf
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::families::Kind;

    const X_VALUE: Family = Family {
        name: "x_value",
        help: "help",
        kind: Kind::Gauge,
        labels: &["group"],
    };
    const Y_TOTAL: Family = Family {
        name: "y_total",
        help: "help y",
        kind: Kind::Counter,
        labels: &[],
    };

    /// The value of the one sample printed exactly as `series`; panics when absent.
    pub(crate) fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    }

    #[test]
    fn snapshots_merge_same_named_families() {
        let registry = Registry::new();
        let live = X_VALUE.gauge_vec(&registry);
        live.with_label_values(&["live"]).set(3.0);
        let snapshots = Snapshots::default();
        let mut a = FamilyBuilder::default();
        a.gauge(&X_VALUE, &["a"], 1.0);
        a.counter(&Y_TOTAL, &[], 5.0);
        let mut b = FamilyBuilder::default();
        b.gauge(&X_VALUE, &["b"], 2.0);
        let slot_a = Arc::new(Slot::from_pointee(encode_families(&a.finish())));
        let slot_b = Arc::new(Slot::from_pointee(encode_families(&b.finish())));
        snapshots.replace(vec![slot_a.clone(), slot_b]);
        let text = String::from_utf8(encode_with(&registry, &snapshots)).expect("utf8");
        assert_eq!(text.matches("# HELP x_value").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE x_value gauge").count(), 1, "{text}");
        assert!(text.contains("x_value{group=\"live\"} 3\n"), "{text}");
        assert!(text.contains("x_value{group=\"a\"} 1\n"), "{text}");
        assert!(text.contains("x_value{group=\"b\"} 2\n"), "{text}");
        assert!(
            text.contains("# TYPE y_total counter\ny_total 5\n"),
            "{text}"
        );
        // A new snapshot without group a removes its series.
        slot_a.store(Arc::new(Vec::new()));
        let text = String::from_utf8(encode_with(&registry, &snapshots)).expect("utf8");
        assert!(!text.contains("group=\"a\""), "{text}");
        assert!(!text.contains("y_total"), "{text}");
    }
}
