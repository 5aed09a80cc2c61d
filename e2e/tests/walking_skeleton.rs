//! The walking skeleton: Secret + ApiKeyPool + LoadBalancerPool applied with kubectl, the
//! controller pushing them to a proxy, traffic with keys injected, status, key rotation, a
//! proxy going away, and no key value in any log.

use keyway_api::spec::{ApiKeyPool, Condition, LoadBalancerPool};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, random_hex, wait_for};
use kube::Api;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How soon a Secret change must reach the upstreams.
const ROTATION_DEADLINE: Duration = Duration::from_secs(2);
/// How soon status must reflect a change (proxy connected or gone).
const STATUS_DEADLINE: Duration = Duration::from_secs(15);

fn manifests(a: &str, b: &str, key_a: &str, key_b: &str) -> String {
    Manifests::new()
        .secret("llm-keys", &[("key-a", key_a), ("key-b", key_b)])
        .key_pool("keys", "llm-keys")
        .pool("llm", "keys")
        .backend("a", a)
        .backend("b", b)
        .yaml()
}

/// Every key value either upstream has received.
fn keys_seen(a: &MockUpstream, b: &MockUpstream) -> BTreeSet<String> {
    a.received_keys()
        .into_iter()
        .chain(b.received_keys())
        .collect()
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// Sends one chat completion through the proxy; Err unless it is a 200.
async fn chat(http: &HttpClient, url: &str, n: usize) -> Result<(), String> {
    let r = http
        .post_json(url, &chat_request("gpt-4o-mini", &format!("hello {n}")))
        .await
        .map_err(|e| format!("request {n}: {e:#}"))?;
    if r.status != 200 {
        return Err(format!("request {n}: HTTP {}: {}", r.status, r.text()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_skeleton() {
    let mut t = Timings::new("walking_skeleton");
    let cluster = cluster().await;
    t.phase("shared cluster (includes its start-up if this test came first)");

    let ns = cluster.namespace("skeleton").await;
    let a = MockUpstream::start("a").await.expect("start mock a");
    let b = MockUpstream::start("b").await.expect("start mock b");
    let key_a = format!("sk-test-aaaa{}", random_hex(24));
    let key_b = format!("sk-test-bbbb{}", random_hex(24));
    ns.apply(&manifests(&a.url(), &b.url(), &key_a, &key_b))
        .await;
    t.phase("namespace + mock upstreams + kubectl apply");

    let controller = Controller::start(cluster, Some(ns.name())).await;
    t.phase("controller ready");
    let mut proxy = Proxy::start(&controller, ns.name(), &[]).await;
    t.phase("proxy ready (config received)");

    // --- traffic: both backends, both keys, nothing else ---
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    for n in 0..20 {
        chat(&http, &url, n).await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(a.request_count() > 0, "upstream a got no request");
    assert!(b.request_count() > 0, "upstream b got no request");
    assert_eq!(
        a.request_count() + b.request_count(),
        20,
        "one upstream request per client request"
    );
    let seen = keys_seen(&a, &b);
    assert_eq!(
        seen,
        BTreeSet::from([key_a.clone(), key_b.clone()]),
        "the upstreams must see exactly the two pool keys"
    );
    t.phase("20 requests through the proxy");

    // --- status, as a user sees it and as the API holds it ---
    let table = wait_for(
        STATUS_DEADLINE,
        "kubectl get lbp shows llm Ready",
        || async {
            let out = ns.kubectl_ok(&["get", "lbp"]).await;
            let row_ready = out
                .lines()
                .any(|l| l.split_whitespace().next() == Some("llm") && l.contains("True"));
            if row_ready { Ok(out) } else { Err(out) }
        },
    )
    .await;
    eprintln!("kubectl get lbp:\n{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["NAME", "STRATEGY", "BACKENDS", "PROXIES", "READY", "AGE"] {
        assert!(header.contains(&column), "no {column} column in:\n{table}");
    }

    let client = cluster.client().await;
    let pools: Api<LoadBalancerPool> = Api::namespaced(client.clone(), ns.name());
    let key_pools: Api<ApiKeyPool> = Api::namespaced(client.clone(), ns.name());
    wait_for(
        STATUS_DEADLINE,
        "LoadBalancerPool llm: Ready=True, connectedProxies=1, observedGeneration current",
        || async {
            let p = pools.get("llm").await.map_err(|e| e.to_string())?;
            let st = p.status.clone().unwrap_or_default();
            let ok = ready(&st.conditions).is_some_and(|c| c.status == "True")
                && st.connected_proxies == 1
                && st.total_backends == 2
                && st.observed_generation.is_some()
                && st.observed_generation == p.metadata.generation;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "status {st:?}, generation {:?}",
                    p.metadata.generation
                ))
            }
        },
    )
    .await;
    wait_for(
        STATUS_DEADLINE,
        "ApiKeyPool keys: Ready=True, totalKeys=2",
        || async {
            let p = key_pools.get("keys").await.map_err(|e| e.to_string())?;
            let st = p.status.clone().unwrap_or_default();
            if ready(&st.conditions).is_some_and(|c| c.status == "True") && st.total_keys == 2 {
                Ok(())
            } else {
                Err(format!("status {st:?}"))
            }
        },
    )
    .await;
    t.phase("status (kubectl table + API)");

    // --- key rotation: a Secret change reaches the traffic within 2 s ---
    let key_b2 = format!("sk-test-bbbb{}", random_hex(24));
    a.clear();
    b.clear();
    let patch = serde_json::json!({"stringData": {"key-b": key_b2}}).to_string();
    ns.kubectl_ok(&["patch", "secret", "llm-keys", "--type=merge", "-p", &patch])
        .await;
    let patched = Instant::now();
    let mut n = 100;
    wait_for(
        ROTATION_DEADLINE,
        "the new key-b value reaches an upstream",
        || {
            n += 1;
            let (http, url, a, b, key_b2) = (&http, &url, &a, &b, &key_b2);
            async move {
                chat(http, url, n).await?;
                if keys_seen(a, b).contains(key_b2) {
                    Ok(())
                } else {
                    Err("new value not seen yet".to_owned())
                }
            }
        },
    )
    .await;
    eprintln!(
        "[e2e timing] walking_skeleton: Secret patch -> new key at the upstream: {:.3}s",
        patched.elapsed().as_secs_f64()
    );
    let during = keys_seen(&a, &b);
    let allowed = BTreeSet::from([key_a.clone(), key_b.clone(), key_b2.clone()]);
    assert!(
        during.is_subset(&allowed),
        "unexpected key values during rotation"
    );
    a.clear();
    b.clear();
    for n in 200..210 {
        chat(&http, &url, n).await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        keys_seen(&a, &b),
        BTreeSet::from([key_a.clone(), key_b2.clone()]),
        "after the rotation only key-a and the new key-b may be used (never the old key-b)"
    );
    t.phase("key rotation");

    // --- the proxy goes away: status follows ---
    proxy.process.kill().await;
    wait_for(STATUS_DEADLINE, "connectedProxies drops to 0", || async {
        let p = pools.get("llm").await.map_err(|e| e.to_string())?;
        let st = p.status.unwrap_or_default();
        if st.connected_proxies == 0 {
            Ok(())
        } else {
            Err(format!("connectedProxies {}", st.connected_proxies))
        }
    })
    .await;
    t.phase("proxy killed -> connectedProxies 0");

    // --- secret hygiene: no key value (nor its random part) in any log ---
    for process in [&controller.process, &proxy.process] {
        let logs = process.logs();
        assert!(
            !logs.trim().is_empty(),
            "{} wrote no logs at all; the leak check would prove nothing",
            process.name()
        );
        for (id, value) in [
            ("key-a", &key_a),
            ("key-b", &key_b),
            ("key-b (new)", &key_b2),
        ] {
            let random_part = &value["sk-test-aaaa".len()..];
            assert!(
                !logs.contains(random_part),
                "the {} logs contain the value of {id} (see {})",
                process.name(),
                process.log_dir().display()
            );
        }
    }
    t.phase("log hygiene");
    t.total();
}
