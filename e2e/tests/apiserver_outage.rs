//! Static stability when the API server goes away: proxies keep serving, the controller keeps
//! serving proxies (even new ones) from its cache, and when the API server returns the
//! controller's watches recover, changes flow again and status is written again. Uses a cluster of its own, since it
//! stops the API server.

use keyway_api::spec::{ApiKeyPool, LoadBalancerPool};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::{Cluster, Controller, MockUpstream, Proxy, Timings, wait_for};
use kube::Api;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_and_controller_ride_out_an_api_server_outage() {
    let mut t = Timings::new("apiserver_outage");
    let cluster = Cluster::start_private("outage-cluster")
        .await
        .expect("private cluster");
    t.phase("private cluster");
    let ns = cluster.namespace("outage").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    let pools = |keys: &str| {
        format!(
            r#"apiVersion: v1
kind: Secret
metadata:
  name: keys
  labels: {{keyway.dev/api-keys: "true"}}
stringData:
{keys}---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata:
  name: keys
spec:
  secretRef:
    name: keys
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata:
  name: llm
spec:
  apiKeyPoolRef:
    name: keys
  backends:
    - name: a
      endpoint: "{}"
"#,
            upstream.url()
        )
    };
    ns.apply(&pools("  key-a: \"sk-outage-aaaa\"\n")).await;
    // Proxy authentication needs the API server (TokenReview), so this test runs without it.
    let controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--proxy-auth", "none", "--leader-election=false"],
    )
    .await;
    let token = cluster.dir().join("outage-token");
    std::fs::write(&token, "unused").expect("token file");
    let token = token.to_string_lossy().into_owned();
    let proxy = Proxy::start(&controller, ns.name(), &["--token-file", &token]).await;
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    assert_eq!(
        http.post_json(&url, &chat_request("m", "hi"))
            .await
            .unwrap()
            .status,
        200
    );
    t.phase("serving");

    cluster.stop_apiserver().await;
    t.phase("API server stopped");
    for _ in 0..20 {
        let r = http
            .post_json(&url, &chat_request("m", "hi"))
            .await
            .expect("request");
        assert_eq!(r.status, 200, "the proxy keeps serving: {}", r.text());
    }
    // A proxy that connects during the outage is served from the controller's cache.
    let late = Proxy::start(&controller, ns.name(), &["--token-file", &token]).await;
    let r = http
        .post_json(
            &format!("{}/v1/chat/completions", late.url),
            &chat_request("m", "hi"),
        )
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    t.phase("served during the outage");

    cluster
        .restart_apiserver()
        .await
        .expect("restart the API server");
    t.phase("API server back");
    // The controller's watches recover: a key added now reaches the proxy.
    ns.apply(&pools(
        "  key-a: \"sk-outage-aaaa\"\n  key-b: \"sk-outage-bbbb\"\n",
    ))
    .await;
    wait_for(
        Duration::from_secs(60),
        "the new key reached the proxy",
        || async {
            let s = http
                .get(&format!("{}/status", proxy.admin_url))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .map_err(|e| e.to_string())?;
            let n = s["keyPools"][0]["keys"].as_array().map_or(0, Vec::len);
            if n == 2 { Ok(()) } else { Err(s.to_string()) }
        },
    )
    .await;
    t.phase("watches recovered");
    // Status resumes: what happened during the outage (a second proxy connected) and after
    // it (a second key) is written to the resources.
    let pools: Api<LoadBalancerPool> = Api::namespaced(cluster.client().await, ns.name());
    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(Duration::from_secs(60), "status written again", || async {
        let lbp = pools.get("llm").await.map_err(|e| e.to_string())?;
        let akp = key_pools.get("keys").await.map_err(|e| e.to_string())?;
        let (lbp, akp) = (
            lbp.status.unwrap_or_default(),
            akp.status.unwrap_or_default(),
        );
        if lbp.connected_proxies == 2 && akp.total_keys == 2 {
            Ok(())
        } else {
            Err(format!(
                "connectedProxies {}, totalKeys {}",
                lbp.connected_proxies, akp.total_keys
            ))
        }
    })
    .await;
    t.phase("status resumed");
    t.total();
}
