//! Unit tests of the forwarder's stages, each against a compiled config (no network except
//! where the stage is the network: `send`).

mod admit;
mod attempt;
mod classify;
mod place;
mod respond;

use crate::dataplane::{Dataplane, PoolState, Router};
use crate::metrics::Metrics;
use keyway_api::manifest::Manifests;
use std::sync::Arc;

/// A compiled config from manifests (no health checks, so nothing is spawned).
fn dataplane(yaml: &str) -> Arc<Dataplane> {
    compiled(snapshot(yaml))
}

fn snapshot(yaml: &str) -> keyway_api::model::Snapshot {
    Manifests::parse(yaml, &|_| None)
        .unwrap()
        .resolve()
        .unwrap()
}

fn compiled(snapshot: keyway_api::model::Snapshot) -> Arc<Dataplane> {
    let dp = Dataplane::new(Metrics::register(&prometheus::Registry::new()).unwrap());
    dp.apply(Arc::new(snapshot));
    Arc::new(dp)
}

/// The pool named `name` of the router.
fn pool<'r>(router: &'r Router, name: &str) -> &'r Arc<PoolState> {
    router
        .pools
        .iter()
        .find(|p| p.model.id.name == name)
        .unwrap()
}

/// Two keys and a pool of two backends (`a`, `b`) injecting them as a bearer token;
/// `{extra}` is spliced into the pool's spec.
fn keyed(extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys}}
stringData: {{k1: "sk-one", k2: "sk-two"}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec:
  secretRef: {{name: llm-keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
  {extra}
  backends:
    - {{name: a, endpoint: "http://127.0.0.1:1/prefix"}}
    - {{name: b, endpoint: "https://b.example:443"}}
"#
    )
}

/// A pool of two backends without keys.
const KEYLESS: &str = r#"
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: open}
spec:
  backends:
    - {name: a, endpoint: "http://127.0.0.1:1"}
    - {name: b, endpoint: "http://127.0.0.1:2"}
"#;

/// The metric's sample with these label values (0 when absent).
fn counter(vec: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
    vec.with_label_values(labels).get()
}

/// A request placed on `pool` with `body`, as the attempts see it.
fn exchange<'r>(
    router: &'r Router,
    pool_name: &str,
    body: crate::http::body::RequestBody,
    placement: crate::dataplane::Placement,
) -> super::place::Exchange<'r> {
    let pool = pool(router, pool_name);
    super::place::Exchange {
        pool,
        key_pool: pool.keys.as_ref().ok().and_then(Option::as_ref),
        request_id: http::HeaderValue::from_static("req-1"),
        prepared: super::admit::Prepared {
            method: http::Method::POST,
            path: "/v1/chat/completions".into(),
            query: Some("a=1".into()),
            headers: http::HeaderMap::new(),
            body,
        },
        placement,
        keys: Default::default(),
        backend_hash: None,
        started: std::time::Instant::now(),
        upstream_time: std::time::Duration::ZERO,
    }
}

fn buffered(s: &str) -> crate::http::body::RequestBody {
    crate::http::body::RequestBody::Buffered(bytes::Bytes::copy_from_slice(s.as_bytes()))
}
