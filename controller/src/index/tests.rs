use super::*;
use keyway_api::spec::{BackendSpec, LocalObjectRef};

fn pool(ns: &str, name: &str, endpoint: &str, key_pool: Option<&str>) -> PoolInput {
    PoolInput {
        id: ObjectId::new(ns, name),
        generation: Some(1),
        spec: LoadBalancerPoolSpec {
            backends: vec![BackendSpec {
                name: "a".into(),
                endpoint: endpoint.into(),
                ..Default::default()
            }],
            api_key_pool_ref: key_pool.map(|n| LocalObjectRef { name: n.into() }),
            ..Default::default()
        },
    }
}

fn key_pool(ns: &str, name: &str, secret: &str) -> KeyPoolInput {
    KeyPoolInput {
        id: ObjectId::new(ns, name),
        generation: Some(1),
        spec: ApiKeyPoolSpec {
            secret_ref: LocalObjectRef {
                name: secret.into(),
            },
            ..Default::default()
        },
    }
}

fn secrets(
    ns: &str,
    name: &str,
    keys: &[(&str, &str)],
) -> BTreeMap<ObjectId, BTreeMap<String, SecretValue>> {
    let mut m = BTreeMap::new();
    m.insert(
        ObjectId::new(ns, name),
        keys.iter()
            .map(|(k, v)| (k.to_string(), SecretValue::new(*v)))
            .collect(),
    );
    m
}

#[test]
fn resolves_pools_and_keys_per_namespace() {
    let mut lg = LastGood::default();
    let idx = build(
        &[
            pool("a", "p", "http://x", Some("k")),
            pool("b", "q", "http://y", None),
        ],
        &[key_pool("a", "k", "s")],
        &secrets("a", "s", &[("k1", "v1"), ("k2", "v2")]),
        &mut lg,
    );
    let a = idx.snapshot_for("a", &[]);
    assert_eq!(a.pools.len(), 1);
    assert_eq!(a.key_pools[0].keys.len(), 2);
    let b = idx.snapshot_for("b", &[]);
    assert_eq!(b.pools.len(), 1);
    assert!(
        b.key_pools.is_empty(),
        "namespace b never sees namespace a's keys"
    );
    assert_eq!(idx.pools[&ObjectId::new("a", "p")].result, Ok(1));
    assert_eq!(idx.key_pools[&ObjectId::new("a", "k")].result, Ok(2));
}

#[test]
fn missing_secret_and_key_pool_are_reported() {
    let mut lg = LastGood::default();
    let idx = build(
        &[
            pool("a", "p", "http://x", Some("k")),
            pool("a", "r", "http://x", Some("nope")),
        ],
        &[key_pool("a", "k", "missing")],
        &BTreeMap::new(),
        &mut lg,
    );
    let kp = idx.key_pools[&ObjectId::new("a", "k")]
        .result
        .clone()
        .unwrap_err();
    assert_eq!(kp.reason, Reason::SecretNotFound);
    let p = idx.pools[&ObjectId::new("a", "p")]
        .result
        .clone()
        .unwrap_err();
    assert_eq!(p.reason, Reason::SecretNotFound);
    let r = idx.pools[&ObjectId::new("a", "r")]
        .result
        .clone()
        .unwrap_err();
    assert_eq!(r.reason, Reason::KeyPoolNotFound);
    // Both pools are still served, so requests get a clear error instead of a 404.
    assert_eq!(idx.snapshot_for("a", &[]).pools.len(), 2);
}

#[test]
fn an_invalid_edit_keeps_the_last_good_pool() {
    let mut lg = LastGood::default();
    let good = build(
        &[pool("a", "p", "http://x", None)],
        &[],
        &BTreeMap::new(),
        &mut lg,
    );
    let bad = build(
        &[pool("a", "p", "gopher://x", None)],
        &[],
        &BTreeMap::new(),
        &mut lg,
    );
    assert_eq!(good.snapshot_for("a", &[]), bad.snapshot_for("a", &[]));
    let res = &bad.pools[&ObjectId::new("a", "p")];
    assert!(res.serving_last_good);
    assert_eq!(
        res.result.clone().unwrap_err().field,
        "spec.backends[0].endpoint"
    );

    // Deleting the pool forgets it.
    let gone = build(&[], &[], &BTreeMap::new(), &mut lg);
    assert!(gone.snapshot_for("a", &[]).pools.is_empty());
    let bad_again = build(
        &[pool("a", "p", "gopher://x", None)],
        &[],
        &BTreeMap::new(),
        &mut lg,
    );
    assert!(bad_again.snapshot_for("a", &[]).pools.is_empty());
}

#[test]
fn a_pool_filter_sends_only_the_keys_it_uses() {
    let mut lg = LastGood::default();
    let mut s = secrets("a", "s1", &[("k1", "v1")]);
    s.extend(secrets("a", "s2", &[("k2", "v2")]));
    let idx = build(
        &[
            pool("a", "p1", "http://x", Some("kp1")),
            pool("a", "p2", "http://x", Some("kp2")),
        ],
        &[key_pool("a", "kp1", "s1"), key_pool("a", "kp2", "s2")],
        &s,
        &mut lg,
    );
    let snap = idx.snapshot_for("a", &["p1".to_string()]);
    assert_eq!(snap.pools.len(), 1);
    assert_eq!(snap.key_pools.len(), 1);
    assert_eq!(snap.key_pools[0].id.name, "kp1");
}
