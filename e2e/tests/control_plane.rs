//! Control-plane behaviour against the real API server: quota shared between proxies,
//! change propagation from `kubectl patch` to the proxies (measured), static stability when
//! the controller dies under load, and pool deletion reaching the proxies.

use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, wait_for};
use std::time::{Duration, Instant};

fn manifests(upstream: &str, akp_extra: &str, lbp_extra: &str) -> String {
    Manifests::new()
        .secret("keys", &[("key-a", "sk-e2e-cp-aaaa")])
        .key_pool("keys", "keys")
        .spec(akp_extra)
        .pool("llm", "keys")
        .spec(lbp_extra)
        .backend_with_role("primary", "primary", upstream)
        .backend_with_role("secondary", "secondary", &format!("{upstream}/secondary"))
        .yaml()
}

async fn status(http: &HttpClient, proxy: &Proxy) -> serde_json::Value {
    http.get(&format!("{}/status", proxy.admin_url))
        .await
        .expect("GET /status")
        .json()
        .expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_share_a_keys_quota() {
    let cluster = cluster().await;
    let ns = cluster.namespace("quota-share").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    ns.apply(&manifests(
        &upstream.url(),
        "  defaults:\n    requestsPerMinute: 6\n  queue:\n    maxLength: 0\n",
        "  mode: failover\n",
    ))
    .await;
    let controller = Controller::start(cluster, Some(ns.name())).await;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Proxy::start(&controller, ns.name(), &[]).await);
    }
    let http = HttpClient::new();
    // Quota goes where the demand is: the proxies ask in turn until the key's 6 requests of
    // the minute are used (each refusal tells the controller that proxy wants more).
    let started = Instant::now();
    let mut answered = 0;
    let mut by_proxy = [0usize; 3];
    while answered < 6 && started.elapsed() < Duration::from_secs(30) {
        for (i, p) in proxies.iter().enumerate() {
            let r = http
                .post_json(
                    &format!("{}/v1/chat/completions", p.url),
                    &chat_request("m", "hi"),
                )
                .await
                .expect("request");
            if r.status == 200 {
                answered += 1;
                by_proxy[i] += 1;
            } else {
                assert!(matches!(r.status.as_u16(), 429 | 503), "{}", r.text());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        answered, 6,
        "the key's whole minute is usable: {by_proxy:?}"
    );
    assert!(
        by_proxy.iter().all(|&n| n >= 1),
        "every proxy served: {by_proxy:?}"
    );
    // And not one more, from any of them, within the minute.
    for p in &proxies {
        let r = http
            .post_json(
                &format!("{}/v1/chat/completions", p.url),
                &chat_request("m", "hi"),
            )
            .await
            .expect("request");
        assert_ne!(r.status, 200, "over the quota: {}", r.text());
    }
    assert_eq!(
        upstream.request_count(),
        6,
        "3 proxies together stay within the key's 6 requests per minute"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuation_propagates_quickly_and_survives_a_controller_crash() {
    let mut t = Timings::new("control_plane");
    let cluster = cluster().await;
    let ns = cluster.namespace("propagation").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    ns.apply(&manifests(&upstream.url(), "", "  mode: failover\n"))
        .await;
    let mut controller = Controller::start(cluster, Some(ns.name())).await;
    let proxy = Proxy::start(&controller, ns.name(), &[]).await;
    let http = HttpClient::new();
    t.phase("ready");

    // Toggle evacuatePrimary repeatedly; time from `kubectl patch` returning to the proxy
    // serving the new value.
    let mut samples = Vec::new();
    for i in 0..10 {
        let evacuate = i % 2 == 0;
        let patch = format!(r#"{{"spec":{{"evacuatePrimary":{evacuate}}}}}"#);
        let started = Instant::now();
        ns.kubectl_ok(&["patch", "lbp", "llm", "--type=merge", "-p", &patch])
            .await;
        let patched = Instant::now();
        wait_for(
            Duration::from_secs(10),
            "proxy applied the toggle",
            || async {
                let s = status(&http, &proxy).await;
                if s["pools"][0]["evacuatePrimary"] == evacuate {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            },
        )
        .await;
        samples.push((patched.elapsed(), patched - started));
    }
    let mut latencies: Vec<Duration> = samples.iter().map(|(l, _)| *l).collect();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() - 1];
    eprintln!(
        "[e2e measurement] evacuatePrimary propagation (patch accepted -> proxy serving), {} toggles: p50 {:?}, max {:?}",
        latencies.len(),
        p50,
        p99
    );
    t.phase("propagation");

    // With evacuation in effect, the pool's Degraded condition says so.
    ns.kubectl_ok(&[
        "patch",
        "lbp",
        "llm",
        "--type=merge",
        "-p",
        r#"{"spec":{"evacuatePrimary":true}}"#,
    ])
    .await;
    let pools: kube::Api<keyway_api::spec::LoadBalancerPool> =
        kube::Api::namespaced(cluster.client().await, ns.name());
    wait_for(
        Duration::from_secs(20),
        "Degraded=True, reason Evacuated",
        || async {
            let st = pools
                .get("llm")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let degraded = st.conditions.iter().find(|c| c.type_ == "Degraded");
            match degraded {
                Some(c) if c.status == "True" && c.reason == "Evacuated" => Ok(()),
                _ => Err(format!("{st:?}")),
            }
        },
    )
    .await;
    t.phase("degraded: evacuated");

    // Add a cluster (a backend) with a JSON patch, as the README shows: the proxy serves it
    // and the status counts it.
    ns.kubectl_ok(&[
        "patch",
        "lbp",
        "llm",
        "--type=json",
        "-p",
        &format!(
            r#"[{{"op":"add","path":"/spec/backends/-","value":{{"name":"added","role":"secondary","endpoint":"{}"}}}}]"#,
            upstream.url()
        ),
    ])
    .await;
    wait_for(
        Duration::from_secs(20),
        "the added backend is served and counted",
        || async {
            let served = status(&http, &proxy).await["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["name"] == "added"));
            let total = pools
                .get("llm")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default()
                .total_backends;
            if served && total == 3 {
                Ok(())
            } else {
                Err(format!("totalBackends {total:?}"))
            }
        },
    )
    .await;
    t.phase("backend added by JSON patch");

    // Under load, kill -9 the controller: the proxy keeps serving its last snapshot.
    let url = format!("{}/v1/chat/completions", proxy.url);
    let load = {
        let url = url.clone();
        tokio::spawn(async move {
            let http = HttpClient::new();
            let (mut sent, mut ok) = (0, 0);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                sent += 1;
                if let Ok(r) = http.post_json(&url, &chat_request("m", "hi")).await
                    && r.status == 200
                {
                    ok += 1;
                }
            }
            (sent, ok)
        })
    };
    let before = upstream.request_count();
    wait_for(Duration::from_secs(5), "load is flowing", || async {
        if upstream.request_count() > before + 5 {
            Ok(())
        } else {
            Err("waiting".to_string())
        }
    })
    .await;
    controller.process.kill().await;
    let (sent, ok) = load.await.expect("load task");
    assert!(sent > 10, "load ran ({sent} requests)");
    assert_eq!(
        ok, sent,
        "zero failed requests while the controller was down"
    );
    t.phase("controller killed under load");

    // A change made while the controller is down reaches the proxy once it is back.
    ns.kubectl_ok(&["delete", "lbp", "llm"]).await;
    let _controller = Controller::restart(cluster, Some(ns.name()), &controller).await;
    wait_for(
        Duration::from_secs(15),
        "deleted pool removed from the proxy after resync",
        || async {
            let s = status(&http, &proxy).await;
            if s["pools"].as_array().is_some_and(|p| p.is_empty()) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
    let r = http
        .post_json(&url, &chat_request("m", "hi"))
        .await
        .expect("request");
    assert_eq!(r.status, 404, "the deleted pool no longer routes");
    t.phase("resync and deletion");
    t.total();
}
