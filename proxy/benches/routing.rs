//! Route matching: `Router::route` over the compiled snapshot of a manifest with 1, 10 and 100
//! pools. Every pool has two routes (a path prefix plus a tenant header; a path prefix plus a
//! model glob), and one extra pool without routes catches the rest. Cases:
//! - `header`: the request carries the last pool's tenant header (every route is checked);
//! - `model`: the request names the last pool's model (globs are matched);
//! - `catch_all`: nothing specific matches, the pool without routes answers;
//! - `single_pool`: the common standalone setup, one pool, no routes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use keyway_api::manifest::Manifests;
use keyway_proxy::dataplane::Dataplane;
use keyway_proxy::metrics::Metrics;
use std::fmt::Write;
use std::hint::black_box;
use std::sync::Arc;

const PATH: &str = "/v1/chat/completions";

fn manifest(pools: usize, routes: bool) -> String {
    let mut y = String::new();
    for i in 0..pools {
        writeln!(
            y,
            "---\napiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: pool-{i}}}\nspec:\n  backends:\n    - {{name: a, endpoint: \"http://127.0.0.1:18000\"}}\n    - {{name: b, endpoint: \"http://127.0.0.1:18001\"}}"
        )
        .unwrap();
        if routes {
            writeln!(
                y,
                "  routes:\n    - pathPrefix: /v1/chat\n      headers: [{{name: x-tenant, value: tenant-{i}}}]\n    - pathPrefix: /v1\n      model: \"model-{i}-*\""
            )
            .unwrap();
        }
    }
    if routes {
        y.push_str("---\napiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {name: rest}\nspec:\n  backends:\n    - {name: a, endpoint: \"http://127.0.0.1:18000\"}\n");
    }
    y
}

fn dataplane(yaml: &str) -> Dataplane {
    let snapshot = Manifests::parse(yaml, &|_| None)
        .and_then(|m| m.resolve())
        .unwrap_or_else(|e| panic!("invalid bench manifest: {e:?}"));
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let dp = Dataplane::new(metrics);
    dp.apply(Arc::new(snapshot));
    dp
}

fn route(c: &mut Criterion) {
    // `apply` may start tasks (health checks); give it a runtime to start them on.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _rt = rt.enter();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));

    let single = dataplane(&manifest(1, false));
    let router = single.router();
    let empty = HeaderMap::new();
    g.bench_function("single_pool", |b| {
        b.iter(|| black_box(router.route(black_box(PATH), &empty, None)).is_some())
    });

    for n in [1usize, 10, 100] {
        let dp = dataplane(&manifest(n, true));
        let router = dp.router();
        assert_eq!(router.pools.len(), n + 1);
        let last = n - 1;
        let mut tenant = HeaderMap::new();
        tenant.insert(
            "x-tenant",
            HeaderValue::from_str(&format!("tenant-{last}")).unwrap(),
        );
        tenant.insert("content-type", HeaderValue::from_static("application/json"));
        let model = format!("model-{last}-mini");
        let want = format!("pool-{last}");

        let hit = router.route(PATH, &tenant, None).expect("a pool");
        assert_eq!(hit.model.id.name, want);
        g.bench_function(BenchmarkId::new("header", n), |b| {
            b.iter(|| black_box(router.route(black_box(PATH), &tenant, None)).is_some())
        });

        let hit = router.route(PATH, &empty, Some(&model)).expect("a pool");
        assert_eq!(hit.model.id.name, want);
        g.bench_function(BenchmarkId::new("model", n), |b| {
            b.iter(|| {
                black_box(router.route(black_box(PATH), &empty, Some(black_box(&model)))).is_some()
            })
        });

        let hit = router.route(PATH, &empty, Some("gpt-4o")).expect("a pool");
        assert_eq!(hit.model.id.name, "rest");
        g.bench_function(BenchmarkId::new("catch_all", n), |b| {
            b.iter(|| black_box(router.route(black_box(PATH), &empty, Some("gpt-4o"))).is_some())
        });
    }
    g.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
