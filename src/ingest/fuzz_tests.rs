//! Property tests: whatever bytes or messages arrive, ingest never panics,
//! counts every message once, and never grows past its budget. Failing
//! cases are kept in `proptest-regressions/` and replayed first.

use super::*;
use proptest::prelude::*;

fn setup() -> (Registry, Ingest) {
    let registry = Registry::new();
    let watchdog = Arc::new(Watchdog::register(&registry));
    let config = IngestConfig {
        max_series_per_loop: 40,
        max_series_per_app: 120,
        max_series: 200,
        ..IngestConfig::default()
    };
    (
        registry.clone(),
        Ingest::register(&registry, watchdog, config),
    )
}

/// JSON values of every type, numbers at their edges included.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[a-z0-9_. :-]{0,12}".prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Messages that look like the protocol's, with any field's value replaced.
fn protocol_like() -> impl Strategy<Value = Vec<u8>> {
    let kinds = prop_oneof![
        Just("heartbeat"),
        Just("stall"),
        Just("pool"),
        Just("ratelimit"),
        Just("bye"),
    ];
    let fields = prop::collection::btree_map(
        prop_oneof![
            Just("pid".to_owned()),
            Just("worker".to_owned()),
            Just("interval_s".to_owned()),
            Just("stall_threshold_s".to_owned()),
            Just("lag_s".to_owned()),
            Just("tasks_pending".to_owned()),
            Just("tasks_created".to_owned()),
            Just("slow_callbacks".to_owned()),
            Just("failures".to_owned()),
            Just("cancellations".to_owned()),
            Just("stall_id".to_owned()),
            Just("blocked_s".to_owned()),
            Just("site".to_owned()),
            Just("stack".to_owned()),
            Just("pool".to_owned()),
            Just("size".to_owned()),
            Just("max".to_owned()),
            Just("in_use".to_owned()),
            Just("waiting".to_owned()),
            Just("waiting_max".to_owned()),
            Just("acquires".to_owned()),
            Just("wait_seconds".to_owned()),
            Just("api".to_owned()),
            Just("resource".to_owned()),
            Just("limit".to_owned()),
            Just("remaining".to_owned()),
            Just("reset".to_owned()),
            Just("throttled".to_owned()),
        ],
        any_json(),
        0..12,
    );
    (kinds, "[a-c]{1,2}", "[a-b]", 1u32..6, fields).prop_map(|(kind, app, lp, pid, fields)| {
        let mut m = serde_json::json!({"v": 1, "type": kind, "app": app, "loop": lp, "pid": pid, "interval_s": 0.25, "stall_threshold_s": 0.5, "lag_s": 0.0, "tasks_pending": 0, "tasks_created": 0, "slow_callbacks": 0, "failures": [], "cancellations": []});
        let obj = m.as_object_mut().expect("object");
        obj.extend(fields);
        serde_json::to_vec(&m).expect("json")
    })
}

/// Hostile messages found by hand and by issue #15, replayed every run.
#[test]
fn the_corpus_is_handled_or_rejected_and_counted() {
    let (registry, ingest) = setup();
    let corpus = include_str!("../../tests/corpus/ingest.ndjson");
    let mut accepted = 0;
    for line in corpus.lines() {
        if ingest.handle(line.as_bytes(), Transport::Udp).is_ok() {
            accepted += 1;
        }
    }
    let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
    let counted =
        crate::metrics::tests::sample(&text, r#"loopwatch_ingest_messages_total{transport="udp"}"#);
    assert_eq!(counted as usize, corpus.lines().count());
    assert!(!text.contains(r#"app_name="loopwatch""#), "{text}");
    assert!(accepted >= 1, "the well-formed one is accepted");
}

proptest! {
    // Bounded for CI; `PROPTEST_CASES=100000 cargo test fuzz` runs longer by hand.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48)
    ))]

    #[test]
    fn any_bytes_are_handled_or_rejected(raw in prop::collection::vec(any::<u8>(), 0..10_000)) {
        let (_registry, ingest) = setup();
        let _ = ingest.handle(&raw, Transport::Udp);
    }

    #[test]
    fn any_message_sequence_is_counted_once_and_stays_within_the_budget(
        messages in prop::collection::vec(protocol_like(), 1..60)
    ) {
        let (registry, ingest) = setup();
        let mut outcomes = 0u64;
        for m in &messages {
            let _ = ingest.handle(m, Transport::Http);
            outcomes += 1;
        }
        ingest.sweep();
        let text = String::from_utf8(crate::metrics::encode(&registry)).expect("utf8");
        let counted = crate::metrics::tests::sample(&text, r#"loopwatch_ingest_messages_total{transport="http"}"#);
        prop_assert_eq!(counted as u64, outcomes);
        prop_assert!(crate::metrics::tests::sample(&text, "loopwatch_ingest_series") <= 200.0);
        let views = serde_json::to_vec(&ingest.loop_page(0, 1000, 1 << 20)).expect("json");
        prop_assert!(views.len() < 2 << 20);
    }
}
