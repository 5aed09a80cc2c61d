//! Two controllers for one namespace: both serve proxies, only the Lease holder writes status;
//! when the holder is killed (-9, no release) the survivor takes the Lease within the lease
//! duration and writes status from then on.

use keyway_api::spec::{ApiKeyPool, Condition, LoadBalancerPool};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::{Cluster, Controller, MockUpstream, Proxy, Timings, cluster, wait_for};
use kube::Api;
use std::time::{Duration, Instant};

const LEASE: &str = "keyway-controller";
const LEASE_SECONDS: u64 = 3;
/// Killed holder -> survivor holds the Lease: one lease duration without renewal, plus the
/// survivor's polling (a third of it) and slack for a loaded machine.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(LEASE_SECONDS + 7);
/// How soon status must reflect a change once a leader exists.
const STATUS_DEADLINE: Duration = Duration::from_secs(15);

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// The Lease's `holderIdentity`, if the Lease exists and is held.
async fn holder(cluster: &Cluster, namespace: &str) -> Option<String> {
    let out = cluster
        .kubectl(&[
            "-n",
            namespace,
            "get",
            "lease",
            LEASE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await;
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

/// The sum of the samples of `metric` (with `filter` in the line) on a controller's /metrics.
async fn metric(
    http: &HttpClient,
    controller: &Controller,
    metric: &str,
    filter: &str,
) -> Result<f64, String> {
    let r = http
        .get(&format!("{}/metrics", controller.admin_url))
        .await
        .map_err(|e| format!("GET /metrics: {e:#}"))?;
    Ok(keyway_testkit::metrics::sum(&r.text(), metric, &[filter]))
}

async fn is_leader(http: &HttpClient, controller: &Controller) -> Result<bool, String> {
    Ok(metric(http, controller, "keyway_controller_leader", "").await? == 1.0)
}

/// One chat completion through `proxy`; Err unless it is a 200.
async fn chat(http: &HttpClient, proxy: &Proxy) -> Result<(), String> {
    let r = http
        .post_json(
            &format!("{}/v1/chat/completions", proxy.url),
            &chat_request("gpt-4o-mini", "hello"),
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("HTTP {}: {}", r.status, r.text()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_status_and_a_survivor_takes_over() {
    let mut t = Timings::new("leader_election");
    let cluster = cluster().await;
    t.phase("shared cluster (includes its start-up if this test came first)");
    let ns = cluster.namespace("leader-election").await;
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    ns.apply(&format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata:
  name: llm
spec:
  backends:
    - name: a
      endpoint: "{}"
"#,
        upstream.url()
    ))
    .await;
    let duration = LEASE_SECONDS.to_string();
    let args = [
        "--lease-namespace",
        ns.name(),
        "--lease-duration-seconds",
        &duration,
    ];
    let (first, second) = tokio::join!(
        Controller::start_with(cluster, Some(ns.name()), &args),
        Controller::start_with(cluster, Some(ns.name()), &args),
    );
    t.phase("namespace + kubectl apply + two controllers ready");

    // --- exactly one holds the Lease, and it is the one that says so ---
    let http = HttpClient::new();
    let (held_by, first_leads) = wait_for(
        TAKEOVER_DEADLINE,
        "the Lease is held and exactly one controller reports keyway_controller_leader 1",
        || async {
            let h = holder(cluster, ns.name()).await;
            let leads = (
                is_leader(&http, &first).await?,
                is_leader(&http, &second).await?,
            );
            match (h, leads) {
                (Some(h), (true, false)) => Ok((h, true)),
                (Some(h), (false, true)) => Ok((h, false)),
                (h, leads) => Err(format!("holder {h:?}, leader metrics {leads:?}")),
            }
        },
    )
    .await;
    let (mut leader, follower) = if first_leads {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        leader.process.logs().contains(&held_by),
        "the holder {held_by:?} is not the controller reporting itself leader"
    );
    assert!(!follower.process.logs().contains(&held_by));
    t.phase("one leader");

    // --- the follower serves proxies; only the leader writes status ---
    let proxy = Proxy::start(&follower, ns.name(), &[]).await;
    chat(&http, &proxy)
        .await
        .unwrap_or_else(|e| panic!("through the follower's proxy: {e}"));
    t.phase("proxy on the follower ready and serving");

    let pools: Api<LoadBalancerPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        STATUS_DEADLINE,
        "LoadBalancerPool llm: Ready=True",
        || async {
            let p = pools.get("llm").await.map_err(|e| e.to_string())?;
            let st = p.status.unwrap_or_default();
            if ready(&st.conditions).is_some_and(|c| c.status == "True") {
                Ok(())
            } else {
                Err(format!("status {st:?}"))
            }
        },
    )
    .await;
    let patches = "keyway_controller_status_patches_total";
    assert!(metric(&http, &leader, patches, "").await.unwrap() >= 1.0);
    assert_eq!(
        metric(&http, &follower, patches, "").await.unwrap(),
        0.0,
        "the follower patched status"
    );
    t.phase("status written by the leader only");

    // --- kill -9 the leader: no release, the survivor must wait for expiry ---
    leader.process.kill().await;
    let killed = Instant::now();
    // A change only the new leader can report.
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
    let new_holder = wait_for(
        TAKEOVER_DEADLINE,
        "the survivor holds the Lease and reports keyway_controller_leader 1",
        || async {
            let h = holder(cluster, ns.name()).await;
            let leads = is_leader(&http, &follower).await?;
            match h {
                Some(h) if h != held_by && leads => Ok(h),
                h => Err(format!("holder {h:?}, survivor leads: {leads}")),
            }
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!(
        "[e2e timing] leader_election: kill -9 -> survivor holds the Lease: {:.3}s",
        took.as_secs_f64()
    );
    assert!(follower.process.logs().contains(&new_holder));
    assert_eq!(
        metric(
            &http,
            &follower,
            "keyway_controller_leader_transitions_total",
            ""
        )
        .await
        .unwrap(),
        1.0
    );
    t.phase("survivor holds the Lease");

    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        STATUS_DEADLINE,
        "ApiKeyPool orphan: Ready=False, reason SecretNotFound (written by the survivor)",
        || async {
            let p = key_pools.get("orphan").await.map_err(|e| e.to_string())?;
            let st = p.status.unwrap_or_default();
            if ready(&st.conditions)
                .is_some_and(|c| c.status == "False" && c.reason == "SecretNotFound")
            {
                Ok(())
            } else {
                Err(format!("status {st:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "[e2e timing] leader_election: kill -9 -> status written by the survivor: {:.3}s",
        killed.elapsed().as_secs_f64()
    );
    assert!(metric(&http, &follower, patches, "").await.unwrap() >= 1.0);
    t.phase("survivor writes status");

    // --- proxies keep being served by the survivor ---
    let second_proxy = Proxy::start(&follower, ns.name(), &[]).await;
    for p in [&proxy, &second_proxy] {
        chat(&http, p)
            .await
            .unwrap_or_else(|e| panic!("through {}: {e}", p.id));
    }
    t.phase("a second proxy on the survivor ready and serving");
    t.total();
}
