//! An app on a real node reaches its LLM through the sidecar the webhook injected: the
//! requests carry the pool's keys, the pool counts both proxies, a Job with the sidecar
//! completes, restarting the controller (a rollout, then losing the leader) fails no request,
//! and `kubectl patch` of `evacuatePrimary` moves the app's traffic.

use crate::common::{
    APP_LABEL, POD_TIMEOUT, RELEASE_NS, app, app_manifest, app_stats, by_upstream, cluster, pods,
    serial, stats, total,
};
use keyway_e2e::node::node;
use keyway_e2e::{TestNamespace, wait_for};
use serde_json::Value;
use std::time::Duration;

/// How soon a change must show in what the app sees (the README measures ~60 ms for a patch
/// to reach proxies; Pods on a loaded machine get far more slack).
const CONVERGE: Duration = Duration::from_secs(60);

async fn pool_status(ns: &TestNamespace) -> Value {
    serde_json::from_str(&ns.kubectl_ok(&["get", "lbp", "llm", "-o", "json"]).await)
        .unwrap_or(Value::Null)
}

/// The PROXIES column of `kubectl get lbp llm`, as a user reads it (by the header's offset:
/// an empty cell, such as ACTIVE before any report, shifts whitespace-separated fields).
async fn proxies_column(ns: &TestNamespace) -> Result<String, String> {
    let table = ns.kubectl_ok(&["get", "lbp", "llm"]).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let at = header
        .find("PROXIES")
        .ok_or_else(|| format!("no PROXIES column: {table}"))?;
    row.get(at..)
        .and_then(|cell| cell.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no row: {table}"))
}

async fn wait_two_proxies(ns: &TestNamespace) {
    wait_for(
        CONVERGE,
        "`kubectl get lbp` counts both app proxies",
        || async {
            match proxies_column(ns).await? {
                v if v == "2" => Ok(()),
                v => Err(format!(
                    "PROXIES {v}; status {}",
                    pool_status(ns).await["status"]
                )),
            }
        },
    )
    .await;
}

async fn leader() -> String {
    cluster()
        .await
        .kubectl_ok(&[
            "-n",
            RELEASE_NS,
            "get",
            "lease",
            "keyway-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reaches_its_llm_through_the_injected_native_sidecar_with_pool_keys() {
    let _serial = serial().await;
    let app = app().await;
    let ns = &app.ns;
    eprintln!(
        "[e2e timing] node: injection to first request {:.1}s",
        app.injection_to_first_request.as_secs_f64()
    );

    // The sidecar is a native one: an init container that keeps running, started (and
    // ready, through its startup probe) before the app.
    let (pod, _) = pods(ns, APP_LABEL)
        .await
        .into_iter()
        .next()
        .expect("an app pod");
    let spec: Value =
        serde_json::from_str(&ns.kubectl_ok(&["get", "pod", &pod, "-o", "json"]).await)
            .expect("pod JSON");
    let init = &spec["spec"]["initContainers"][0];
    assert_eq!(init["name"], "keyway-proxy", "{}", spec["spec"]);
    assert_eq!(init["restartPolicy"], "Always", "{init}");
    assert_eq!(init["startupProbe"]["httpGet"]["path"], "/readyz", "{init}");
    let containers = spec["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        containers.iter().all(|c| c["name"] != "keyway-proxy"),
        "{containers:?}"
    );
    assert!(spec["metadata"]["annotations"]["keyway.dev/injected"].is_string());

    // Every request of both replicas succeeded, from the first one: the app started only
    // once its proxy had its configuration.
    let all = app_stats(ns).await.expect("app stats");
    assert_eq!(all.len(), 2, "{all:?}");
    for (pod, s) in &all {
        assert_eq!(s["failed"], 0, "{pod}: {s}");
        assert_eq!(s["failed_before_first_ok"], 0, "{pod}: {s}");
        assert!(s["ok"].as_u64() > Some(0), "{pod}: {s}");
        assert!(
            s["upstreams"]["mock-a"].as_u64() > Some(0),
            "{pod}: primary serves: {s}"
        );
    }

    // The upstream saw the pool's keys and nothing else.
    let mocks = stats(ns, "app=mock-a").await.expect("mock stats");
    let keys = mocks[0].1["mocks"][0]["keys"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(!keys.is_empty(), "mock-a received keys: {mocks:?}");
    for k in keys.keys() {
        assert!(
            app.keys.contains(k),
            "mock-a received a key that is not the pool's"
        );
    }

    // The pool's status counts both proxies, whichever replica each one is connected to.
    wait_two_proxies(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_the_sidecar_completes() {
    let _serial = serial().await;
    let app = app().await;
    let ns = &app.ns;
    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: {deadline}
  template:
{template}"#,
        deadline = POD_TIMEOUT.as_secs(),
        template = job_template(),
    );
    ns.apply(&job).await;
    let out = ns
        .kubectl_ok(&[
            "wait",
            "--for=condition=complete",
            &format!("--timeout={}s", POD_TIMEOUT.as_secs()),
            "job/once",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    let phase = ns
        .kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "job-name=once",
            "-o",
            "jsonpath={.items[0].status.phase}",
        ])
        .await;
    assert_eq!(phase.trim(), "Succeeded");
}

/// The app's pod template with `--count 5` (exit 0 only if all five succeeded), as a Job's
/// template: a Deployment's template with `restartPolicy: Never`.
fn job_template() -> String {
    let deployment = app_manifest("job", 1, &["--count", "5", "--interval-ms", "50"]);
    let template = deployment
        .split_once("  template:\n")
        .map(|(_, t)| t)
        .unwrap_or_default()
        .replace("    spec:\n", "    spec:\n      restartPolicy: Never\n");
    template.lines().map(|l| format!("  {l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_rollout_and_leader_loss_fail_no_app_request() {
    let _serial = serial().await;
    let app = app().await;
    let ns = &app.ns;
    let cluster = cluster().await;
    let node = node().await;
    let before = app_stats(ns).await.expect("app stats");
    let (failed0, ok0) = (total(&before, "failed"), total(&before, "ok"));

    // A rolling restart of the controller Deployment.
    cluster
        .kubectl_ok(&[
            "-n",
            RELEASE_NS,
            "rollout",
            "restart",
            "deployment/keyway-controller",
        ])
        .await;
    node.rollout(RELEASE_NS, "deployment/keyway-controller")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Then the leader dies.
    let replicas = |names: String| {
        names
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let live = || async {
        replicas(
            cluster
                .kubectl_ok(&[
                    "-n",
                    RELEASE_NS,
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/component=controller",
                    "--field-selector=status.phase=Running",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ])
                .await,
        )
    };
    let old_leader = wait_for(CONVERGE, "a new replica holds the Lease", || async {
        let holder = leader().await;
        if live().await.contains(&holder) {
            Ok(holder)
        } else {
            Err(holder)
        }
    })
    .await;
    cluster
        .kubectl_ok(&["-n", RELEASE_NS, "delete", "pod", &old_leader])
        .await;
    node.rollout(RELEASE_NS, "deployment/keyway-controller")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait_for(CONVERGE, "another replica took the Lease", || async {
        let holder = leader().await;
        if holder != old_leader && live().await.contains(&holder) {
            Ok(())
        } else {
            Err(holder)
        }
    })
    .await;

    // The app was served throughout, without one failed request ...
    let after = wait_for(CONVERGE, "the app keeps sending", || async {
        let s = app_stats(ns).await?;
        if total(&s, "ok") > ok0 + 20 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(
        total(&after, "failed"),
        failed0,
        "requests failed while the controller restarted: {after:?}"
    );
    // ... and the status converges under the new leader.
    wait_two_proxies(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuating_the_primary_moves_the_apps_traffic() {
    let _serial = serial().await;
    let app = app().await;
    let ns = &app.ns;
    let patch = |evacuate: bool| format!(r#"{{"spec":{{"evacuatePrimary":{evacuate}}}}}"#);

    ns.kubectl_ok(&["patch", "lbp", "llm", "--type=merge", "-p", &patch(true)])
        .await;
    let moved = wait_for(CONVERGE, "the app's requests reach mock-b", || async {
        let s = app_stats(ns).await?;
        if by_upstream(&s, "mock-b") > 0 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Once moved, nothing more goes to the primary while more goes to the secondary.
    let a = by_upstream(&moved, "mock-a");
    let b = by_upstream(&moved, "mock-b");
    let later = wait_for(CONVERGE, "more requests answered by mock-b", || async {
        let s = app_stats(ns).await?;
        if by_upstream(&s, "mock-b") >= b + 20 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(
        by_upstream(&later, "mock-a"),
        a,
        "the primary got traffic while evacuated: {later:?}"
    );
    // What the README's `kubectl get lbp llm -o jsonpath='{.status.activeBackend}'` shows.
    wait_for(CONVERGE, "status.activeBackend is secondary", || async {
        let status = pool_status(ns).await;
        match status["status"]["activeBackend"].as_str() {
            Some("secondary") => Ok(()),
            _ => Err(status["status"].to_string()),
        }
    })
    .await;

    // And back.
    ns.kubectl_ok(&["patch", "lbp", "llm", "--type=merge", "-p", &patch(false)])
        .await;
    wait_for(
        CONVERGE,
        "the app's requests reach mock-a again",
        || async {
            let s = app_stats(ns).await?;
            if by_upstream(&s, "mock-a") > a {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    assert_eq!(total(&app_stats(ns).await.expect("stats"), "failed"), 0);
}
