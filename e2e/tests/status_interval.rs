//! `--status-counter-interval-seconds` through the real binary and API server: under steady
//! traffic (usage counters change with every proxy report, 5 a second) each resource's status
//! is patched at most once per interval, and the counters still reach it.

use keyway_api::spec::ApiKeyPool;
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, wait_for};
use kube::Api;
use std::time::{Duration, Instant};

const INTERVAL_SECS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counters_are_written_at_most_once_per_interval() {
    let mut t = Timings::new("status_interval");
    let cluster = cluster().await;
    let ns = cluster.namespace("status-interval").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    ns.apply(
        &Manifests::new()
            .secret("keys", &[("key-a", "sk-e2e-interval-aaaa")])
            .key_pool("keys", "keys")
            .pool("llm", "keys")
            .backend("a", &upstream.url())
            .yaml(),
    )
    .await;
    let interval = INTERVAL_SECS.to_string();
    let controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--status-counter-interval-seconds", &interval],
    )
    .await;
    let proxy = Proxy::start(&controller, ns.name(), &["--report-interval", "200ms"]).await;
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    let requests_in_status = || async {
        let akp = key_pools.get("keys").await.map_err(|e| e.to_string())?;
        Ok::<i64, String>(
            akp.status
                .unwrap_or_default()
                .keys
                .iter()
                .map(|k| k.requests)
                .sum(),
        )
    };
    let send = || async {
        let r = http
            .post_json(&url, &chat_request("m", "hi"))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    };
    send().await;
    wait_for(
        Duration::from_secs(30),
        "the first request in status",
        || async {
            match requests_in_status().await? {
                n if n >= 1 => Ok(()),
                n => Err(format!("requests {n}")),
            }
        },
    )
    .await;
    t.phase("status written once");

    let patches = |kind: &'static str| {
        let http = http.clone();
        let metrics = format!("{}/metrics", controller.admin_url);
        async move {
            let text = http.get(&metrics).await.expect("controller metrics").text();
            keyway_testkit::metrics::sum(
                &text,
                "keyway_controller_status_patches_total",
                &[&format!("kind=\"{kind}\"")],
            )
        }
    };
    let before = (
        patches("ApiKeyPool").await,
        patches("LoadBalancerPool").await,
    );
    let started = Instant::now();
    let mut sent = 1;
    while started.elapsed() < Duration::from_secs(4 * INTERVAL_SECS) {
        send().await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = (
        patches("ApiKeyPool").await,
        patches("LoadBalancerPool").await,
    );
    let window = started.elapsed().as_secs_f64();
    // At most one write per interval of the window measured, plus one at each end.
    let most = (window / INTERVAL_SECS as f64).ceil() + 2.0;
    let written = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "[status_interval] {sent} requests in {window:.1} s: {} ApiKeyPool and {} LoadBalancerPool patches (at most {most})",
        written.0, written.1
    );
    assert!(
        written.0 <= most && written.1 <= most,
        "{written:?} patches in {window:.1} s with a {INTERVAL_SECS} s interval"
    );
    assert!(
        written.0 >= 2.0,
        "the counters were written during the window: {written:?}"
    );
    // And the last counts arrive, within an interval or so.
    wait_for(
        Duration::from_secs(30),
        "every request counted in status",
        || async {
            match requests_in_status().await? {
                n if n == sent => Ok(()),
                n => Err(format!("requests {n} of {sent}")),
            }
        },
    )
    .await;
    t.phase("counters at most once per interval");
    t.total();
}
