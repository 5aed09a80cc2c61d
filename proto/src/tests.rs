use super::*;
use keyway_api::manifest::Manifests;

#[test]
fn round_trips_the_model() {
    let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: team}
stringData: {k1: v1, k2: v2}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys, namespace: team}
spec:
  secretRef: {name: s}
  selection: weighted
  defaults: {weight: 2, requestsPerMinute: 60}
  keys: [{id: k2, weight: 5, tokensPerMinute: 1000, maxConcurrent: 3}]
  cooldown: {defaultSeconds: 9}
  disable: {failureRatio: 0.25, minRequests: 4, reprobeSeconds: 60}
  queue: {maxLength: 7, maxWaitSeconds: 3}
  stickiness: {header: X-User, promptPrefixBytes: 256}
  requestStreamUsage: true
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: p, namespace: team}
spec:
  apiKeyPoolRef: {name: keys}
  auth: {type: query, queryParam: key}
  routes: [{pathPrefix: /v1/, model: "gpt-*", headers: [{name: X-Team, value: a}]}]
  mode: failover
  evacuatePrimary: true
  strategy: consistentHash
  consistentHash: {header: X-User, loadFactor: 1.5}
  healthCheck: {path: /healthz, intervalSeconds: 3, deep: true}
  outlierDetection: {consecutiveFailures: 2}
  retry: {maxRetries: 2, bufferBytes: 1024}
  timeouts: {connect: 250ms, idleStream: 30s}
  sseKeepAlive: 15s
  backends:
    - {name: a, role: primary, endpoint: "http://127.0.0.1:1/x", hostHeader: api.example.com, weight: 3}
    - {name: b, role: secondary, protocol: http2, endpoint: "http://127.0.0.1:2", healthCheck: {url: "http://127.0.0.1:3/h"}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: mc, namespace: team}
spec:
  mode: multiCluster
  affinity:
    header: X-User
    ttlMinutes: 30
    maxEntries: 5000
    store: redis
    redis: {sentinels: ["s1:26379", "s2:26379"], masterName: m, db: 2, timeout: 20ms, passwordEnv: KEYWAY_REDIS_PASSWORD}
  balanceAlgorithm:
    overloadedCapacityRatio: 0.9
    clusterWeightSmoothingFactor: 0.1
    modelHeader: X-Model
    tokenRebalance: {imbalanceRatio: 2, maxFraction: 0.1}
  backends:
    - {name: east, endpoint: "http://127.0.0.1:4"}
    - {name: west, endpoint: "http://127.0.0.1:5"}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: mcp, namespace: team}
spec:
  affinity: {header: Mcp-Session-Id, store: redis, redis: {address: "127.0.0.1:6379", tls: true, passwordSecretRef: {name: redis-auth, key: pw}}}
  backends:
    - {name: a, endpoint: "http://127.0.0.1:6"}
---
apiVersion: v1
kind: Secret
metadata: {name: redis-auth, namespace: team}
stringData: {pw: redis-secret-pw}
"#;
    let model = Manifests::parse(yaml, &|_| None)
        .unwrap()
        .resolve()
        .unwrap();
    let wire = Snapshot::from_model(7, &model);
    assert_eq!(wire.version, 7);
    let debug = format!("{wire:?}");
    assert!(debug.contains("<redacted>"), "the password is redacted");
    assert!(!debug.contains("redis-secret-pw"), "{debug}");
    let back = model::Snapshot::try_from(wire).unwrap();
    assert_eq!(back, model);
}

#[test]
fn rejects_a_bad_endpoint_naming_the_field() {
    let wire = Snapshot {
        version: 1,
        pools: vec![Pool {
            namespace: "n".into(),
            name: "p".into(),
            backends: vec![Backend {
                name: "a".into(),
                endpoint: "nope".into(),
                ..Default::default()
            }],
            hash_header: "user-id".into(),
            auth: Some(Auth {
                kind: Some(auth::Kind::Query(QueryAuth { param: "k".into() })),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = model::Snapshot::try_from(wire).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("pools[0].backends[0].endpoint:"),
        "{err}"
    );
}

#[test]
fn a_delta_carries_only_what_changed_and_rebuilds_the_snapshot() {
    let yaml = |weight: u32, third: bool| {
        let mut y = format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: s, namespace: t}}
stringData: {{k: v}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys, namespace: t}}
spec: {{secretRef: {{name: s}}}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: a, namespace: t}}
spec:
  apiKeyPoolRef: {{name: keys}}
  backends: [{{name: x, endpoint: "http://x", weight: {weight}}}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: b, namespace: t}}
spec:
  backends: [{{name: x, endpoint: "http://x"}}]
"#
        );
        if third {
            y.push_str(
                    "---\napiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {name: c, namespace: t}\nspec:\n  backends: [{name: x, endpoint: \"http://x\"}]\n",
                );
        }
        Manifests::parse(&y, &|_| None).unwrap().resolve().unwrap()
    };
    let base = yaml(1, true);
    let next = yaml(2, false);
    let delta = Snapshot::delta(5, 4, &base, &next);
    assert_eq!(delta.base_version, 4);
    let names: Vec<&str> = delta.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a"], "only the changed pool travels");
    assert!(delta.key_pools.is_empty());
    assert_eq!(delta.removed_pools.len(), 1);
    assert_eq!(delta.removed_pools[0].name, "c");
    let mut applied = base.clone();
    apply_delta(&mut applied, delta).unwrap();
    assert_eq!(applied, next);
}

#[test]
fn key_debug_is_redacted() {
    let k = Key {
        id: "a".into(),
        value: "sk-secret".into(),
        ..Default::default()
    };
    assert!(!format!("{k:?}").contains("sk-secret"));
}
