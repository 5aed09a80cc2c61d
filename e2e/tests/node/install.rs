//! `helm install` with default values on a real node: the controller's Pods start from the
//! image built on this machine, the kubelet's probes make both replicas Ready, one replica
//! holds the Lease, and the webhook's certificate is created and patched into the
//! configuration, all with the chart's RBAC and the Pods' mounted ServiceAccount tokens.

use crate::common::{RELEASE_NS, cluster, installed, serial};
use base64::Engine;
use keyway_e2e::node::node;
use keyway_e2e::wait_for;
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_install_runs_two_ready_replicas_one_leader_and_the_webhook_cert() {
    let _serial = serial().await;
    let installed = installed().await;
    let cluster = cluster().await;
    eprintln!(
        "[e2e timing] node: cluster up {:.1}s, install to Ready {:.1}s",
        node().await.startup().as_secs_f64(),
        installed.install_to_ready.as_secs_f64()
    );

    // Both replicas Ready through the kubelet's probes (readiness on /readyz, liveness on
    // /healthz of the admin port), and none restarted.
    let pods: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&[
                "-n",
                RELEASE_NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=controller",
                "-o",
                "json",
            ])
            .await,
    )
    .expect("pods JSON");
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let live: Vec<&Value> = items
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(live.len(), 2, "two controller replicas by default: {pods}");
    let mut names = Vec::new();
    for pod in &live {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["ready"], true, "{name} is Ready: {status}");
        assert_eq!(
            status["restartCount"], 0,
            "{name} never restarted: {status}"
        );
        assert_eq!(
            status["imageID"]
                .as_str()
                .map(|s| s.starts_with("sha256:") || s.contains("@sha256:")),
            Some(true),
            "{name} runs an image from the node's containerd: {status}"
        );
        names.push(name);
    }

    // One of them holds the Lease.
    let holder = wait_for(
        Duration::from_secs(60),
        "a replica holds the Lease",
        || async {
            let out = cluster
                .kubectl(&[
                    "-n",
                    RELEASE_NS,
                    "get",
                    "lease",
                    "keyway-controller",
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ])
                .await;
            let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if names.contains(&holder) {
                Ok(holder)
            } else {
                Err(format!("holder {holder:?}, replicas {names:?}"))
            }
        },
    )
    .await;
    eprintln!("[e2e node] Lease keyway-controller held by {holder}");

    // The webhook certificate: created in the Secret, its CA patched into the configuration.
    let ca = wait_for(Duration::from_secs(60), "the webhook Secret", || async {
        let out = cluster
            .kubectl(&[
                "-n",
                RELEASE_NS,
                "get",
                "secret",
                "keyway-webhook-tls",
                "-o",
                r#"jsonpath={.data.ca\.crt}"#,
            ])
            .await;
        let ca = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if ca.is_empty() {
            Err("no ca.crt yet".to_owned())
        } else {
            Ok(ca)
        }
    })
    .await;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(&ca)
        .expect("ca.crt is base64");
    let ca_pem = String::from_utf8_lossy(&ca_pem).into_owned();
    wait_for(Duration::from_secs(60), "caBundle patched in", || async {
        let out = cluster
            .kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "keyway-sidecar-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .await;
        let bundle = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(&bundle)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if bundle.contains(ca_pem.trim()) {
            Ok(())
        } else {
            Err(format!("caBundle: {bundle:?}"))
        }
    })
    .await;

    // The chart's RBAC was enough for everything the replicas did (logs through the kubelet).
    for name in &names {
        let logs = cluster
            .kubectl_ok(&["-n", RELEASE_NS, "logs", name, "--tail=-1"])
            .await;
        assert!(
            !logs.contains("Forbidden") && !logs.contains("forbidden"),
            "{name} was refused something by the API server:\n{logs}"
        );
    }
}
