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

fn granted(mut p: PoolInput, namespaces: &[&str]) -> PoolInput {
    p.spec.allowed_proxy_namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    p
}

/// The key owner's side of a grant.
fn consenting(mut k: KeyPoolInput, namespaces: &[&str]) -> KeyPoolInput {
    k.spec.allowed_proxy_namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    k
}

/// Namespaces a (private), b (the proxy's) and c (grants b one of its two pools).
fn three_namespaces() -> Index {
    let mut s = secrets("a", "sa", &[("ka", "value-a")]);
    s.extend(secrets("b", "sb", &[("kb", "value-b")]));
    s.extend(secrets("c", "sc", &[("kc", "value-c")]));
    s.extend(secrets("c", "sd", &[("kd", "value-d")]));
    build(
        &[
            pool("a", "llm", "http://a", Some("keys")),
            pool("b", "llm", "http://b", Some("keys")),
            granted(pool("c", "shared", "http://c", Some("keys")), &["b"]),
            granted(pool("c", "other", "http://c", Some("other-keys")), &["x"]),
        ],
        &[
            key_pool("a", "keys", "sa"),
            key_pool("b", "keys", "sb"),
            consenting(key_pool("c", "keys", "sc"), &["b"]),
            consenting(key_pool("c", "other-keys", "sd"), &["x"]),
        ],
        &s,
        &mut LastGood::default(),
    )
}

fn ids(snap: &model::Snapshot) -> (Vec<String>, Vec<String>) {
    (
        snap.pools.iter().map(|p| p.id.to_string()).collect(),
        snap.key_pools.iter().map(|k| k.id.to_string()).collect(),
    )
}

#[test]
fn asking_for_a_namespace_without_a_grant_gives_nothing_of_it() {
    let idx = three_namespaces();
    let snap = idx.snapshot_for_proxy("b", &["a".into()], &[]);
    assert_eq!(
        ids(&snap),
        (vec!["b/llm".into()], vec!["b/keys".into()]),
        "namespace a grants nothing, so none of its pools or keys"
    );
    assert_eq!(snap, idx.snapshot_for("b", &[]));
}

#[test]
fn a_grant_sends_that_pool_and_its_keys_only_when_named() {
    let idx = three_namespaces();
    let snap = idx.snapshot_for_proxy("b", &["a".into(), "c".into()], &["c/shared".into()]);
    assert_eq!(
        ids(&snap),
        (
            vec!["b/llm".into(), "c/shared".into()],
            vec!["b/keys".into(), "c/keys".into()]
        ),
        "own pools plus the named grant; c/other grants x, not b, and its key pool stays home"
    );
    // A granted pool the proxy did not name is not sent, even for an asked-for namespace.
    assert_eq!(
        idx.snapshot_for_proxy("b", &["c".into()], &[]),
        idx.snapshot_for("b", &[])
    );
    // Naming it is enough: the namespace counts as asked for.
    assert_eq!(idx.snapshot_for_proxy("b", &[], &["c/shared".into()]), snap);
    // The namespace x was granted c/other.
    let x = idx.snapshot_for_proxy("x", &[], &["c/other".into()]);
    assert_eq!(
        ids(&x),
        (vec!["c/other".into()], vec!["c/other-keys".into()])
    );
}

#[test]
fn a_grant_needs_the_key_owners_consent() {
    let s = secrets("c", "sc", &[("kc", "value-c")]);
    let pools = [granted(
        pool("c", "shared", "http://c", Some("keys")),
        &["b"],
    )];
    let named = ["c/shared".to_string()];
    // The pool's author grants b, the ApiKeyPool does not: b gets nothing.
    let idx = build(
        &pools,
        &[key_pool("c", "keys", "sc")],
        &s,
        &mut LastGood::default(),
    );
    let b = idx.snapshot_for_proxy("b", &[], &named);
    assert!(b.pools.is_empty() && b.key_pools.is_empty(), "{b:?}");
    // The key owner consents to another namespace only: still nothing for b.
    let other = [consenting(key_pool("c", "keys", "sc"), &["x"])];
    let idx = build(&pools, &other, &s, &mut LastGood::default());
    assert!(idx.snapshot_for_proxy("b", &[], &named).pools.is_empty());
    // Both consent: served.
    let both = [consenting(key_pool("c", "keys", "sc"), &["b"])];
    let idx = build(&pools, &both, &s, &mut LastGood::default());
    assert_eq!(idx.snapshot_for_proxy("b", &[], &named).key_pools.len(), 1);
    // A pool without keys needs only its own grant.
    let keyless = [granted(pool("c", "open", "http://c", None), &["b"])];
    let idx = build(&keyless, &[], &s, &mut LastGood::default());
    assert_eq!(
        idx.snapshot_for_proxy("b", &[], &["c/open".into()])
            .pools
            .len(),
        1
    );
}

#[test]
fn the_pool_filter_takes_names_and_qualified_names() {
    let idx = three_namespaces();
    let extra = ["c".to_string()];
    // A bare name is one of the proxy's own pools, never a granted one.
    let by_name = idx.snapshot_for_proxy("b", &extra, &["shared".into()]);
    assert!(by_name.pools.is_empty(), "{by_name:?}");
    let qualified = idx.snapshot_for_proxy("b", &extra, &["b/llm".into()]);
    assert_eq!(
        ids(&qualified),
        (vec!["b/llm".into()], vec!["b/keys".into()])
    );
    // Own names narrow the own pools; a foreign name adds to them.
    let both = idx.snapshot_for_proxy("b", &extra, &["llm".into(), "c/shared".into()]);
    assert_eq!(ids(&both).0, vec!["b/llm".to_string(), "c/shared".into()]);
    // A filter naming a pool that is not granted does not bypass the grant.
    let sneaky = idx.snapshot_for_proxy("b", &["a".into()], &["a/llm".into()]);
    assert_eq!(ids(&sneaky).0, vec!["b/llm".to_string()]);
}

#[test]
fn a_revoked_grant_takes_effect_even_while_serving_the_last_good_version() {
    let mut lg = LastGood::default();
    let s = secrets("c", "sc", &[("kc", "value-c")]);
    let kps = [consenting(key_pool("c", "keys", "sc"), &["b"])];
    let before = build(
        &[granted(
            pool("c", "shared", "http://c", Some("keys")),
            &["b"],
        )],
        &kps,
        &s,
        &mut lg,
    );
    assert_eq!(
        before
            .snapshot_for_proxy("b", &[], &["c/shared".into()])
            .pools
            .len(),
        1
    );
    // An invalid edit that also drops the grant: c keeps serving the last good pool, b loses it.
    let after = build(
        &[pool("c", "shared", "gopher://c", Some("keys"))],
        &kps,
        &s,
        &mut lg,
    );
    assert!(after.pools[&ObjectId::new("c", "shared")].serving_last_good);
    assert_eq!(after.snapshot_for("c", &[]).pools.len(), 1);
    let b = after.snapshot_for_proxy("b", &[], &["c/shared".into()]);
    assert!(b.pools.is_empty() && b.key_pools.is_empty());
}
