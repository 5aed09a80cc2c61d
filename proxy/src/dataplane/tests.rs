use super::*;
use keyway_api::manifest::Manifests;
use std::sync::atomic::Ordering;

fn snapshot(yaml: &str) -> Arc<model::Snapshot> {
    Arc::new(
        Manifests::parse(yaml, &|_| None)
            .unwrap()
            .resolve()
            .unwrap(),
    )
}

const TWO_POOLS: &str = r#"
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: catch-all}
spec:
  backends: [{name: a, endpoint: "http://127.0.0.1:1"}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: anthropic}
spec:
  routes:
    - pathPrefix: /v1/messages
    - pathPrefix: /v1/
      headers: [{name: x-provider, value: anthropic}]
  backends:
    - {name: a, endpoint: "http://127.0.0.1:2"}
    - {name: b, endpoint: "http://127.0.0.1:3"}
    - {name: idle, endpoint: "http://127.0.0.1:4", weight: 0}
"#;

fn dataplane() -> Dataplane {
    Dataplane::new(Metrics::register(&prometheus::Registry::new()).unwrap())
}

#[test]
fn routes_by_most_specific_match() {
    let dp = dataplane();
    dp.apply(snapshot(TWO_POOLS));
    let r = dp.router();
    let empty = http::HeaderMap::new();
    assert_eq!(
        r.route("/v1/messages", &empty, None).unwrap().model.id.name,
        "anthropic"
    );
    assert_eq!(
        r.route("/v1/chat/completions", &empty, None)
            .unwrap()
            .model
            .id
            .name,
        "catch-all"
    );
    let mut h = http::HeaderMap::new();
    h.insert("x-provider", "anthropic".parse().unwrap());
    assert_eq!(
        r.route("/v1/chat/completions", &h, None)
            .unwrap()
            .model
            .id
            .name,
        "anthropic"
    );
}

#[test]
fn own_namespace_pools_win_route_ties_over_granted_ones() {
    let yaml = r#"
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: mine, namespace: team-b}
spec:
  backends: [{name: a, endpoint: "http://127.0.0.1:1"}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: shared, namespace: team-c}
spec:
  routes: [{pathPrefix: /}]
  backends: [{name: a, endpoint: "http://127.0.0.1:2"}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: chat, namespace: team-c}
spec:
  routes: [{pathPrefix: /v1/chat}]
  backends: [{name: a, endpoint: "http://127.0.0.1:3"}]
"#;
    let dp = dataplane();
    dp.set_home_namespace("team-b");
    dp.apply(snapshot(yaml));
    let r = dp.router();
    let empty = http::HeaderMap::new();
    let route = |path: &str| r.route(path, &empty, None).unwrap().model.id.to_string();
    // A granted `/` ties with the own catch-all, and the own pool wins.
    assert_eq!(route("/v1/embeddings"), "team-b/mine");
    // A longer granted prefix is more specific: the proxy named that pool on purpose.
    assert_eq!(route("/v1/chat/completions"), "team-c/chat");
    // Without a home namespace (file mode) `/` is still more specific than no route at all.
    let file = dataplane();
    file.apply(snapshot(yaml));
    let r = file.router();
    assert_eq!(
        r.route("/v1/embeddings", &empty, None)
            .unwrap()
            .model
            .id
            .to_string(),
        "team-c/shared"
    );
}

#[test]
fn no_route_without_a_catch_all() {
    let dp = dataplane();
    let only_routed = TWO_POOLS.split("---").nth(1).unwrap();
    dp.apply(snapshot(only_routed));
    assert!(
        dp.router()
            .route("/other", &http::HeaderMap::new(), None)
            .is_none()
    );
}

#[test]
fn round_robin_skips_zero_weight_backends() {
    let dp = dataplane();
    dp.apply(snapshot(TWO_POOLS));
    let r = dp.router();
    let pool = r
        .route("/v1/messages", &http::HeaderMap::new(), None)
        .unwrap();
    let picks: Vec<_> = (0..6)
        .map(|_| {
            pool.backends[pool.pick(None, &[]).unwrap()]
                .model
                .name
                .clone()
        })
        .collect();
    assert_eq!(picks, ["a", "b", "a", "b", "a", "b"]);
}

#[test]
fn counters_survive_a_swap_but_not_removal() {
    let dp = dataplane();
    dp.apply(snapshot(TWO_POOLS));
    let r = dp.router();
    let pool = r
        .route("/v1/messages", &http::HeaderMap::new(), None)
        .unwrap();
    pool.backends[0].counters.record_use();
    dp.apply(snapshot(&TWO_POOLS.replace("127.0.0.1:3", "127.0.0.1:5")));
    let r2 = dp.router();
    let pool2 = r2
        .route("/v1/messages", &http::HeaderMap::new(), None)
        .unwrap();
    assert_eq!(
        pool2.backends[0].counters.requests.load(Ordering::Relaxed),
        1
    );

    dp.apply(snapshot(&TWO_POOLS.replace(
        "{name: a, endpoint: \"http://127.0.0.1:2\"}",
        "{name: c, endpoint: \"http://127.0.0.1:2\"}",
    )));
    dp.apply(snapshot(TWO_POOLS));
    let r3 = dp.router();
    let pool3 = r3
        .route("/v1/messages", &http::HeaderMap::new(), None)
        .unwrap();
    assert_eq!(
        pool3.backends[0].counters.requests.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn the_live_view_reads_pools_backends_and_keys() {
    let dp = dataplane();
    let keyed = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k1: v1, k2: v2}\n---\n\
                 apiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata: {name: keys}\nspec: {secretRef: {name: s}}\n---\n";
    dp.apply(snapshot(&format!(
        "{keyed}{}",
        TWO_POOLS.replace(
            "metadata: {name: anthropic}\nspec:\n",
            "metadata: {name: anthropic}\nspec:\n  apiKeyPoolRef: {name: keys}\n"
        )
    )));
    let r = dp.router();
    let pool = r
        .route("/v1/messages", &http::HeaderMap::new(), None)
        .unwrap();
    pool.backends[1].counters.record_use();
    pool.backends[1].counters.record_failure();

    let view = dp.view();
    let pools: Vec<_> = view.pools().collect();
    assert_eq!(pools.len(), 2);
    let p = pools
        .iter()
        .find(|p| p.label() == "default/anthropic")
        .unwrap();
    assert_eq!(p.healthy_backends(), 2, "weight 0 takes no traffic");
    assert!(p.key_pool_available());
    let b: Vec<_> = p.backends().collect();
    assert_eq!(
        b.iter().map(|b| b.name()).collect::<Vec<_>>(),
        ["a", "b", "idle"]
    );
    assert_eq!((b[1].requests, b[1].failures), (1, 1));
    assert!(b[1].last_used_ms > 0);
    assert!(b[0].available && b[0].healthy && !b[0].ejected);
    assert!(!b[2].available, "weight 0");
    let kps: Vec<_> = view.key_pools().collect();
    assert_eq!(kps.len(), 1);
    assert_eq!(kps[0].state.label, "default/keys");
    let ids: Vec<_> = kps[0]
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.state))
        .collect();
    assert_eq!(ids, [("k1", "active"), ("k2", "active")]);
}
