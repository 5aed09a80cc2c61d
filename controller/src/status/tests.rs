use super::*;
use keyway_api::resolve::{ConfigError, Reason};

/// `--status-counter-interval-seconds`: counters alone are written at most once per
/// interval, however often proxies report; any other change is written at once.
#[test]
fn counters_alone_are_written_at_most_once_per_interval() {
    let interval = Duration::from_secs(10);
    let status = |requests: i64, state: &str| ApiKeyPoolStatus {
        total_keys: 1,
        active_keys: i32::from(state == "active"),
        keys: vec![keyway_api::spec::KeyStatus {
            id: "k1".into(),
            state: state.into(),
            proxies: "1/1".into(),
            requests,
            ..Default::default()
        }],
        ..Default::default()
    };
    let start = Instant::now();
    let mut last: Option<(ApiKeyPoolStatus, Instant)> = None;
    let mut writes = Vec::new();
    // A report every second for 60 s, each with one more request.
    for second in 0..=60u64 {
        let now = start + Duration::from_secs(second);
        let desired = status(second as i64, "active");
        if due(last.as_ref(), None, &desired, interval, now) == Due::Write {
            writes.push(second);
            last = Some((desired, now));
        }
    }
    assert_eq!(writes, [0, 10, 20, 30, 40, 50, 60]);

    // A state change is written at once, one second after a counter write.
    let now = start + Duration::from_secs(61);
    let disabled = status(61, "disabled");
    assert_eq!(
        due(last.as_ref(), None, &disabled, interval, now),
        Due::Write
    );
    // What is written, or already in the API, is not written again.
    let (written, at) = last.clone().unwrap();
    assert_eq!(
        due(last.as_ref(), None, &written, interval, at),
        Due::Unchanged
    );
    assert_eq!(
        due(None, Some(&written), &written, interval, now),
        Due::Unchanged
    );
}

#[test]
fn transition_time_moves_only_on_status_change() {
    let ok = Resolution {
        generation: Some(2),
        result: Ok(2),
        serving_last_good: false,
    };
    let mut first = pool_status(&ok, 1, None, None);
    first.conditions[0].last_transition_time = Some("2026-01-01T00:00:00Z".into());
    let again = pool_status(&ok, 3, None, Some(&first));
    assert_eq!(
        again.conditions[0].last_transition_time,
        first.conditions[0].last_transition_time
    );
    assert_eq!(again.connected_proxies, 3);

    let bad = Resolution {
        generation: Some(3),
        result: Err(ConfigError::new("o", "spec.x", Reason::InvalidSpec, "nope")),
        serving_last_good: true,
    };
    let failed = pool_status(&bad, 3, None, Some(&again));
    assert_eq!(failed.conditions[0].status, "False");
    assert_eq!(failed.conditions[0].reason, "InvalidSpec");
    assert!(failed.conditions[0].message.contains("last valid version"));
    assert_ne!(
        failed.conditions[0].last_transition_time,
        first.conditions[0].last_transition_time
    );
    assert_eq!(failed.total_backends, 2, "keeps describing what is served");
}

#[test]
fn degraded_names_the_most_urgent_reason() {
    use keyway_api::manifest::Manifests;
    use keyway_api::spec::{BackendStatus, KeyStatus};
    let yaml = r#"
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: p}
spec:
  mode: failover
  evacuatePrimary: true
  backends:
    - {name: a, role: primary, endpoint: "http://a"}
    - {name: b, role: secondary, endpoint: "http://b"}
"#;
    let snap = Manifests::parse(yaml, &|_| None)
        .unwrap()
        .resolve()
        .unwrap();
    let model = &snap.pools[0];
    let backend = |name: &str| BackendStatus {
        name: name.into(),
        healthy: "1/1".into(),
        ..Default::default()
    };
    let view = PoolView {
        backends: vec![backend("a"), backend("b")],
        healthy: 2,
        active: Some("b".into()),
    };
    let on_primary = PoolView {
        active: Some("a".into()),
        ..view.clone()
    };
    let mut h = Health {
        model: Some(model),
        view: Some(&view),
        keys: None,
        nack: None,
    };
    assert_eq!(degraded(&h).1, "Evacuated");
    h.view = Some(&on_primary);
    assert_eq!(degraded(&h).1, "EvacuationBlocked");
    let keys = KeyPoolView {
        keys: vec![KeyStatus {
            id: "k".into(),
            state: "cooling".into(),
            ..Default::default()
        }],
        active: 0,
    };
    h.keys = Some(&keys);
    assert_eq!(degraded(&h).1, "KeysExhausted");
    let none_healthy = PoolView {
        healthy: 0,
        ..view.clone()
    };
    h.view = Some(&none_healthy);
    assert_eq!(degraded(&h).1, "NoHealthyBackends");
    h.nack = Some(("proxy-1", "pools[0]: bad"));
    let (status, reason, message) = degraded(&h);
    assert_eq!((status, reason), ("True", "ProxiesNotAcknowledged"));
    assert!(message.contains("proxy-1"));
    h.nack = None;
    h.view = None;
    assert_eq!(degraded(&h).0, "Unknown");
}
