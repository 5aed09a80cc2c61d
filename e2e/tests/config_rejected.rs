//! A proxy that cannot apply a pushed config NACKs it; the controller turns the NACK into a
//! `ConfigRejected` warning Event on the pool and a `Degraded` condition, both on the real API
//! server. The NACK comes from a raw discovery client (the real proxy NACKs only what the
//! controller would never send: `proxy/src/discovery` and `tests/tests/discovery.rs` cover its
//! side).

use keyway_api::spec::LoadBalancerPool;
use keyway_e2e::discovery::{self, Dial, hello};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::process::DEFAULT_AUDIENCE;
use keyway_e2e::{Controller, Timings, cluster, wait_for};
use keyway_proto as pb;
use kube::Api;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_becomes_a_config_rejected_event_and_a_degraded_condition() {
    let mut t = Timings::new("config_rejected");
    let cluster = cluster().await;
    let ns = cluster.namespace("config-rejected").await;
    ns.apply(
        &Manifests::new()
            .secret("keys", &[("key-a", "sk-e2e-nack-aaaa")])
            .key_pool("keys", "keys")
            .pool("llm", "keys")
            .backend("a", "http://127.0.0.1:1")
            .yaml(),
    )
    .await;
    let controller = Controller::start(cluster, Some(ns.name())).await;
    let token = cluster
        .service_account_token(ns.name(), "keyway-proxy", Some(DEFAULT_AUDIENCE))
        .await;
    let dial = Dial {
        url: controller.grpc_url.clone(),
        ..Dial::default()
    };
    let hello = hello(ns.name());
    let proxy_id = hello.proxy_id.clone();
    let (tx, mut inbound) = discovery::open(&dial, Some(&token), hello)
        .await
        .expect("stream opened");
    let snapshot = discovery::next_snapshot(&mut inbound, Duration::from_secs(30))
        .await
        .expect("a snapshot");
    t.phase("snapshot received");
    let error = "spec.backends[0]: e2e cannot apply this";
    tx.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Nack(pb::Nack {
            version: snapshot.version,
            error: error.to_owned(),
        })),
    })
    .await
    .expect("NACK sent");

    let events_ns = ns.name().to_string();
    wait_for(Duration::from_secs(30), "ConfigRejected event", || async {
        let out = cluster
            .kubectl(&[
                "get",
                "events",
                "-n",
                &events_ns,
                "-o",
                "custom-columns=TYPE:.type,REASON:.reason,KIND:.involvedObject.kind,OBJ:.involvedObject.name,NOTE:.message",
            ])
            .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().any(|l| {
            l.contains("Warning")
                && l.contains("ConfigRejected")
                && l.contains("LoadBalancerPool")
                && l.contains("llm")
                && l.contains(&proxy_id)
                && l.contains("e2e cannot apply this")
        }) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    t.phase("event");

    let pools: Api<LoadBalancerPool> = Api::namespaced(cluster.client().await, ns.name());
    wait_for(Duration::from_secs(30), "Degraded condition", || async {
        let lbp = pools.get("llm").await.map_err(|e| e.to_string())?;
        let st = lbp.status.unwrap_or_default();
        match st.conditions.iter().find(|c| c.type_ == "Degraded") {
            Some(c)
                if c.status == "True"
                    && c.reason == "ProxiesNotAcknowledged"
                    && c.message.contains(&proxy_id) =>
            {
                Ok(())
            }
            _ => Err(format!("{:?}", st.conditions)),
        }
    })
    .await;
    t.phase("condition");
    drop(tx);
    t.total();
}
