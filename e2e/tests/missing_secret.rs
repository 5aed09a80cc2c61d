//! An ApiKeyPool whose Secret does not exist is reported, and the controller keeps running.

use keyway_api::spec::ApiKeyPool;
use keyway_e2e::http::HttpClient;
use keyway_e2e::{Controller, Timings, cluster, wait_for};
use kube::Api;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_reported() {
    let mut t = Timings::new("missing_secret");
    let cluster = cluster().await;
    t.phase("shared cluster (includes its start-up if this test came first)");
    let ns = cluster.namespace("missing-secret").await;
    ns.apply(
        r#"apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata:
  name: orphan
spec:
  secretRef:
    name: no-such-secret
"#,
    )
    .await;
    t.phase("namespace + kubectl apply");
    let mut controller = Controller::start(cluster, Some(ns.name())).await;
    t.phase("controller ready");

    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        Duration::from_secs(15),
        "ApiKeyPool orphan: Ready=False, reason SecretNotFound",
        || async {
            let p = key_pools.get("orphan").await.map_err(|e| e.to_string())?;
            let st = p.status.unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            if ready.is_some_and(|c| c.status == "False" && c.reason == "SecretNotFound") {
                Ok(())
            } else {
                Err(format!("status {st:?}"))
            }
        },
    )
    .await;
    t.phase("status SecretNotFound");

    let healthz = HttpClient::new()
        .get(&format!("{}/healthz", controller.admin_url))
        .await
        .expect("GET /healthz");
    assert_eq!(healthz.status, 200, "/healthz: {}", healthz.text());
    assert!(
        controller.process.exited().is_none(),
        "the controller must keep running"
    );
    t.total();
}
