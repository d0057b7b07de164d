//! The one registry `/metrics` encodes, and the pieces collectors fill it with:
//! [`FamilyBuilder`] for per-poll snapshots, [`Snapshots`] to publish them,
//! and the exporter's own `loopwatch_build_info`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Opts, Registry, TextEncoder};

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
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_label(label_pairs(labels));
        metric.set_gauge(gauge);
        self.push(name, help, MetricType::GAUGE, metric);
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::from_label(label_pairs(labels));
        metric.set_counter(counter);
        self.push(name, help, MetricType::COUNTER, metric);
    }

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

/// One published snapshot slot per running collector.
pub type Slot = ArcSwap<Families>;

/// All snapshot slots, swapped as a whole when the collector set changes on
/// reload. Registered once; a scrape reads whatever is current and never
/// waits on a collector.
#[derive(Default)]
pub struct Snapshots {
    slots: ArcSwap<Vec<Arc<Slot>>>,
}

impl Snapshots {
    pub fn replace(&self, slots: Vec<Arc<Slot>>) {
        self.slots.store(Arc::new(slots));
    }
}

struct SnapshotCollector(Arc<Snapshots>);

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        // Families vary with the configuration; the registry merges them by name.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let slots = self.0.slots.load();
        let mut out = Vec::new();
        for slot in slots.iter() {
            out.extend(slot.load().iter().cloned());
        }
        out
    }
}

/// Registers the snapshot slots with the registry.
pub fn register_snapshots(registry: &Registry, snapshots: Arc<Snapshots>) {
    registry
        .register(Box::new(SnapshotCollector(snapshots)))
        .expect("the snapshot collector is registered once");
}

/// What the build knows about itself (set by build.rs).
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    pub const REVISION: &str = env!("LOOPWATCH_GIT_REVISION");
    pub const BRANCH: &str = env!("LOOPWATCH_GIT_BRANCH");
    pub const RUST_VERSION: &str = env!("LOOPWATCH_RUST_VERSION");

    /// `--version` output, in the exporter convention.
    pub fn version_line() -> String {
        format!(
            "loopwatch, version {VERSION} (branch: {BRANCH}, revision: {REVISION})\n  rust version: {RUST_VERSION}\n  platform: {}/{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )
    }
}

/// Registers `loopwatch_build_info{version, revision, branch, rust_version, os, arch} 1`.
pub fn register_build_info(registry: &Registry) {
    let opts = Opts::new(
        "loopwatch_build_info",
        "A metric with a constant '1' value labeled by version, revision, branch, rust_version, os and arch from which loopwatch was built.",
    )
    .const_label("version", build::VERSION)
    .const_label("revision", build::REVISION)
    .const_label("branch", build::BRANCH)
    .const_label("rust_version", build::RUST_VERSION)
    .const_label("os", std::env::consts::OS)
    .const_label("arch", std::env::consts::ARCH);
    let gauge = prometheus::Gauge::with_opts(opts).expect("valid build_info");
    gauge.set(1.0);
    registry
        .register(Box::new(gauge))
        .expect("build_info is registered once");
}

/// Encodes the registry in the text format.
pub fn encode(registry: &Registry) -> Vec<u8> {
    let families = registry.gather();
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a malformed family would be a bug.
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "Failed to encode metrics");
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge_same_named_families() {
        let registry = Registry::new();
        let snapshots = Arc::new(Snapshots::default());
        register_snapshots(&registry, snapshots.clone());
        let mut a = FamilyBuilder::default();
        a.gauge("x_value", "help", &[("group", "a")], 1.0);
        let mut b = FamilyBuilder::default();
        b.gauge("x_value", "help", &[("group", "b")], 2.0);
        let slot_a = Arc::new(Slot::from_pointee(a.finish()));
        let slot_b = Arc::new(Slot::from_pointee(b.finish()));
        snapshots.replace(vec![slot_a.clone(), slot_b]);
        let text = String::from_utf8(encode(&registry)).expect("utf8");
        assert_eq!(text.matches("# HELP x_value").count(), 1, "{text}");
        assert!(text.contains("x_value{group=\"a\"} 1\n"), "{text}");
        assert!(text.contains("x_value{group=\"b\"} 2\n"), "{text}");
        // A new snapshot without group a removes its series.
        slot_a.store(Arc::new(Vec::new()));
        let text = String::from_utf8(encode(&registry)).expect("utf8");
        assert!(!text.contains("group=\"a\""), "{text}");
    }
}
