use super::*;
use keyway_proto as pb;

fn proxy(report: pb::Report) -> ProxyState {
    ProxyState {
        report: Some(report),
        ..Default::default()
    }
}

fn backend(name: &str, healthy: bool, requests: u64) -> pb::BackendReport {
    pb::BackendReport {
        namespace: "ns".into(),
        pool: "p".into(),
        backend: name.into(),
        requests,
        failures: 0,
        healthy,
        ejected: false,
        capacity: Some(2000.0),
        consumption: Some(15.4),
    }
}

fn key(id: &str, state: &str, reason: &str, requests: u64) -> pb::KeyReport {
    pb::KeyReport {
        namespace: "ns".into(),
        key_pool: "k".into(),
        key_id: id.into(),
        requests,
        state: state.into(),
        reason: reason.into(),
        tokens: 10,
        last_used_unix_ms: requests,
        ..Default::default()
    }
}

#[test]
fn folds_of_two_replicas_merge_into_the_fold_of_all_proxies() {
    let p1 = proxy(pb::Report {
        backends: vec![backend("a", true, 5)],
        keys: vec![key("k1", "cooling", "429", 3)],
        ..Default::default()
    });
    let p2 = proxy(pb::Report {
        backends: vec![backend("a", false, 7)],
        keys: vec![key("k1", "active", "", 4)],
        ..Default::default()
    });
    let p3 = proxy(pb::Report {
        backends: vec![backend("a", true, 1)],
        keys: vec![key("k1", "cooling", "429 again", 1)],
        ..Default::default()
    });
    let all = fold(&[p1.clone(), p2.clone(), p3.clone()]);
    // One replica has p1 and p2, the other p3, published as JSON and read back.
    let mut merged = fold(&[p1, p2]);
    let theirs: Aggregate =
        serde_json::from_str(&serde_json::to_string(&fold(&[p3])).unwrap()).unwrap();
    merged.merge(&theirs);
    let fmt = |ms: u64| Some(format!("t{ms}"));
    let (a, b) = (all.views(fmt), merged.views(fmt));
    let pool = ObjectId::new("ns", "p");
    assert_eq!(b.pools[&pool].backends[0].healthy, "2/3");
    assert_eq!(a.pools[&pool], b.pools[&pool]);
    let kp = ObjectId::new("ns", "k");
    assert_eq!(b.key_pools[&kp].keys[0].proxies, "2/3");
    assert_eq!(b.key_pools[&kp].keys[0].requests, 8);
    assert_eq!(
        a.key_pools[&kp].keys[0].state,
        b.key_pools[&kp].keys[0].state
    );
}

#[test]
fn sums_counters_and_takes_the_worst_state() {
    let p1 = proxy(pb::Report {
        backends: vec![backend("a", true, 5), backend("b", true, 1)],
        keys: vec![key("k1", "active", "", 3), key("k2", "cooling", "429", 1)],
        pools: vec![pb::PoolReport {
            namespace: "ns".into(),
            pool: "p".into(),
            active_backend: "b".into(),
        }],
        ..Default::default()
    });
    let p2 = proxy(pb::Report {
        backends: vec![backend("a", false, 7), backend("b", true, 2)],
        keys: vec![
            key("k1", "active", "", 4),
            key("k2", "disabled", "upstream answered 401", 2),
        ],
        pools: vec![pb::PoolReport {
            namespace: "ns".into(),
            pool: "p".into(),
            active_backend: "b".into(),
        }],
        ..Default::default()
    });
    let v = build(&[p1, p2, ProxyState::default()], |ms| {
        Some(format!("t{ms}"))
    });
    let pool = &v.pools[&ObjectId::new("ns", "p")];
    assert_eq!(pool.backends[0].healthy, "1/2");
    assert_eq!(pool.backends[0].requests, 12);
    assert_eq!(pool.backends[0].capacity, Some(2000));
    assert_eq!(pool.backends[0].consumption, Some(15));
    assert_eq!(pool.healthy, 1);
    assert_eq!(pool.active.as_deref(), Some("b"));
    let kp = &v.key_pools[&ObjectId::new("ns", "k")];
    assert_eq!(kp.active, 1);
    assert_eq!(kp.keys[0].requests, 7);
    assert_eq!(kp.keys[0].tokens, 20);
    assert_eq!(kp.keys[1].state, "disabled");
    assert_eq!(kp.keys[1].reason.as_deref(), Some("upstream answered 401"));
    assert_eq!(kp.keys[1].proxies, "1/2");
    assert_eq!(kp.keys[1].last_used.as_deref(), Some("t2"));
}
