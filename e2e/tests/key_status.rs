//! What proxies see about keys and backends reaches the resources' status: a key the upstream
//! refuses (401) is `disabled` with its reason in `ApiKeyPool.status`, usage is summed, and the
//! pool's backends show `healthy: 1/1`. The refused request itself is served by the other key.

use keyway_api::spec::{ApiKeyPool, LoadBalancerPool};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, random_hex, wait_for};
use keyway_testkit::Behavior;
use kube::Api;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_states_and_usage_reach_the_status() {
    let mut t = Timings::new("key_status");
    let cluster = cluster().await;
    let ns = cluster.namespace("key-status").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    let (key_a, key_b) = (
        format!("sk-e2e-a-{}", random_hex(12)),
        format!("sk-e2e-b-{}", random_hex(12)),
    );
    ns.apply(
        &Manifests::new()
            .secret("keys", &[("key-a", &key_a), ("key-b", &key_b)])
            .key_pool("keys", "keys")
            .pool("llm", "keys")
            .backend("a", &upstream.url())
            .yaml(),
    )
    .await;
    let mut controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--status-counter-interval-seconds", "1"],
    )
    .await;
    let mut proxy = Proxy::start(&controller, ns.name(), &["--report-interval", "200ms"]).await;
    t.phase("applied, controller and proxy ready");

    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    // key-a is revoked upstream: its requests and its free probe are refused.
    upstream.set_key_behavior(&key_a, Some(Behavior::status(401)));
    for _ in 0..6 {
        let r = http
            .post_json(&url, &chat_request("m", "hi there"))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let refused = "key-a";
    t.phase("traffic with one key refused");

    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        Duration::from_secs(15),
        "ApiKeyPool status shows the disabled key and usage",
        || async {
            let st = key_pools
                .get("keys")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let k = st
                .keys
                .iter()
                .find(|k| k.id == refused)
                .ok_or(format!("{st:?}"))?;
            let requests: i64 = st.keys.iter().map(|k| k.requests).sum();
            if k.state == "disabled"
                && k.reason.as_deref().is_some_and(|r| r.contains("401"))
                && st.active_keys == 1
                && st.total_keys == 2
                && requests == 7
            {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;
    t.phase("ApiKeyPool status");

    let pools: Api<LoadBalancerPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        Duration::from_secs(15),
        "LoadBalancerPool status shows backend health",
        || async {
            let st = pools
                .get("llm")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match st.backends.first() {
                Some(b) if b.healthy == "1/1" && st.healthy_backends == 1 && b.requests == 7 => {
                    Ok(())
                }
                _ => Err(format!("{st:?}")),
            }
        },
    )
    .await;
    t.phase("LoadBalancerPool status");

    // The transition is also an Event on the ApiKeyPool, naming the key id and the reason.
    let events_ns = ns.name().to_string();
    wait_for(Duration::from_secs(15), "KeyDisabled event", || async {
        let out = cluster
            .kubectl(&[
                "get",
                "events",
                "-n",
                &events_ns,
                "-o",
                "custom-columns=REASON:.reason,OBJ:.involvedObject.name,NOTE:.message",
            ])
            .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().any(|l| {
            l.contains("KeyDisabled")
                && l.contains("keys")
                && l.contains(refused)
                && l.contains("401")
        }) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    t.phase("event");

    // Key values never reach the status, the proxy's logs or the controller's.
    let akp = cluster
        .kubectl_ok(&["get", "akp", "keys", "-n", ns.name(), "-o", "yaml"])
        .await;
    let logs = format!("{}{}", proxy.process.logs(), controller.process.logs());
    for secret in [&key_a, &key_b] {
        assert!(
            !akp.contains(secret.as_str()),
            "a key value is in the ApiKeyPool"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "a key value is in the logs"
        );
    }
    proxy.process.kill().await;
    controller.process.kill().await;
    t.total();
}
