//! The proxy in standalone mode, in-process, against real mock upstreams on loopback.

mod support;

use keyway_testkit::client::{chat, get};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use std::collections::HashSet;
use std::time::Duration;
use support::{FileProxy, two_backend_pool};

const KEYS: &[(&str, &str)] = &[("key-a", "sk-test-aaaa1111"), ("key-b", "sk-test-bbbb2222")];

#[tokio::test]
async fn round_robin_over_backends_and_keys_with_bearer_injection() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&two_backend_pool(&a.url(), &b.url(), KEYS, "")).await;

    for _ in 0..20 {
        let r = chat(&p.url(), &[("authorization", "Bearer client-own-token")])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-keyway-backend").is_some());
        assert!(r.header("x-keyway-key-id").is_some());
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(a.request_count(), 10);
    assert_eq!(b.request_count(), 10);
    let seen: HashSet<String> = a
        .received_keys()
        .into_iter()
        .chain(b.received_keys())
        .collect();
    let expected: HashSet<String> = KEYS.iter().map(|(_, v)| v.to_string()).collect();
    assert_eq!(
        seen, expected,
        "only pool keys reach upstream; the client's token is replaced"
    );
    let req = &a.requests()[0];
    assert_eq!(req.header("host"), Some(a.addr().to_string().as_str()));
    assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(req.path, "/v1/chat/completions");
}

#[tokio::test]
async fn header_injection_with_a_custom_header_strips_the_clients_credential() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = two_backend_pool(&a.url(), &b.url(), KEYS, "auth: {header: x-api-key}");
    let p = FileProxy::start(&yaml).await;
    let r = chat(&p.url(), &[("x-api-key", "client-key")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let req = a.requests().pop().or_else(|| b.requests().pop()).unwrap();
    let sent = req.header("x-api-key").unwrap();
    assert!(KEYS.iter().any(|(_, v)| *v == sent), "got {sent}");
    assert!(req.header("authorization").is_none());
}

#[tokio::test]
async fn query_injection_replaces_the_clients_parameter() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = two_backend_pool(
        &a.url(),
        &b.url(),
        KEYS,
        "auth: {type: query, queryParam: key}",
    );
    let p = FileProxy::start(&yaml).await;
    let r = get(&format!(
        "{}/v1beta/models?key=client-key&alt=json",
        p.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let req = a.requests().pop().or_else(|| b.requests().pop()).unwrap();
    let query = req.query.clone().unwrap();
    assert!(query.contains("alt=json"), "{query}");
    assert!(!query.contains("client-key"), "{query}");
    assert_eq!(query.matches("key=").count(), 1, "{query}");
    assert!(KEYS.iter().any(|(_, v)| Some(v.to_string()) == req.key));
}

#[tokio::test]
async fn unrouted_requests_get_a_json_404_naming_the_path() {
    let a = MockUpstream::start("a").await.unwrap();
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: only-v1}}
spec:
  routes: [{{pathPrefix: /v1/}}]
  backends: [{{name: a, endpoint: "{}"}}]
"#,
        a.url()
    );
    let p = FileProxy::start(&yaml).await;
    let r = get(&format!("{}/v2/other", p.url())).await.unwrap();
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"]["type"], "no_route");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v2/other")
    );
    assert_eq!(a.request_count(), 0);
    // Without a key pool, the client's credential passes through untouched.
    let r = chat(&p.url(), &[("authorization", "Bearer mine")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(a.received_keys(), ["mine"]);
}

#[tokio::test]
async fn endpoint_path_prefix_and_host_header_are_applied() {
    let a = MockUpstream::start("a").await.unwrap();
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: p}}
spec:
  backends: [{{name: a, endpoint: "{}/openai/", hostHeader: api.example.com}}]
"#,
        a.url()
    );
    let p = FileProxy::start(&yaml).await;
    let r = get(&format!("{}/v1/models", p.url())).await.unwrap();
    assert_eq!(r.status, 200);
    let req = a.requests().pop().unwrap();
    assert_eq!(req.path, "/openai/v1/models");
    assert_eq!(req.header("host"), Some("api.example.com"));
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_old_config_serving_and_a_valid_one_applies() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let good = two_backend_pool(&a.url(), &b.url(), KEYS, "");
    let p = FileProxy::start(&good).await;

    p.rewrite(&good.replace(&b.url(), "gopher://nowhere"));
    // The rejection is counted; then requests still go to both old backends.
    let metrics = format!("{}/metrics", p.admin());
    eventually(
        Duration::from_secs(5),
        "config rejection counted",
        || async {
            get(&metrics)
                .await
                .unwrap()
                .text()
                .contains("keyway_proxy_config_updates_total{result=\"rejected\"} 1")
        },
    )
    .await;
    for _ in 0..4 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    assert_eq!(
        b.request_count(),
        2,
        "backend b still served after the bad edit"
    );

    // Rotate key-b's value with a valid edit: new requests carry the new value.
    p.rewrite(&good.replace("sk-test-bbbb2222", "sk-test-bbbb3333"));
    eventually(Duration::from_secs(5), "rotated key in use", || async {
        chat(&p.url(), &[]).await.unwrap();
        a.received_keys()
            .iter()
            .chain(b.received_keys().iter())
            .any(|k| k == "sk-test-bbbb3333")
    })
    .await;
}

#[tokio::test]
async fn upstream_failures_become_clear_json_errors() {
    let a = MockUpstream::start("a").await.unwrap();
    let dead = format!("http://127.0.0.1:{}", keyway_testkit::free_port());
    let yaml = two_backend_pool(&dead, &a.url(), KEYS, "retry: {maxRetries: 0}");
    let p = FileProxy::start(&yaml).await;
    let mut codes = vec![];
    for _ in 0..2 {
        let r = chat(&p.url(), &[]).await.unwrap();
        codes.push(r.status.as_u16());
        if r.status == 502 {
            assert_eq!(r.json()["error"]["type"], "upstream_connect");
            assert_eq!(r.header("x-keyway-backend"), Some("a"));
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        [200, 502],
        "without retries the dead backend's request fails"
    );

    a.set_behavior(Behavior::Hang);
    let r = chat(&p.url(), &[]).await.unwrap();
    let r = if r.status == 502 {
        chat(&p.url(), &[]).await.unwrap()
    } else {
        r
    };
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "upstream_timeout");
}

#[tokio::test]
async fn admin_endpoints_show_ids_and_usage_never_key_values() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&two_backend_pool(&a.url(), &b.url(), KEYS, "")).await;
    for _ in 0..4 {
        chat(&p.url(), &[]).await.unwrap();
    }
    assert_eq!(
        get(&format!("{}/readyz", p.admin())).await.unwrap().status,
        200
    );
    let status = get(&format!("{}/status", p.admin())).await.unwrap();
    let j = status.json();
    assert_eq!(j["keyPools"][0]["keys"][0]["id"], "key-a");
    assert_eq!(j["keyPools"][0]["keys"][0]["requests"], 2);
    assert_eq!(j["keyPools"][0]["keys"][0]["state"], "active");
    assert_eq!(j["pools"][0]["backends"][1]["usage"]["requests"], 2);
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains(
            r#"keyway_proxy_key_requests_total{key_id="key-b",key_pool="default/keys"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "keyway_proxy_requests_total{backend=\"a\",code=\"200\",pool=\"default/llm\"} 2"
        ),
        "{metrics}"
    );
    for (_, value) in KEYS {
        assert!(!status.text().contains(value));
        assert!(!metrics.contains(value));
    }
}

#[tokio::test]
async fn h2c_clients_are_served() {
    use http_body_util::{BodyExt, Full};
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&two_backend_pool(&a.url(), &b.url(), KEYS, "")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::get(format!("{}/v1/models", p.url()))
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn traffic_threads_serve_concurrent_requests_and_drain_on_shutdown() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyway.yaml");
    std::fs::write(&path, two_backend_pool(&a.url(), &b.url(), KEYS, "")).unwrap();
    let mut settings = support::settings(keyway_proxy::Source::File {
        path,
        reload_interval: Duration::from_millis(50),
    });
    settings.traffic_threads = 2;
    let proxy = keyway_proxy::start(settings, prometheus::Registry::new())
        .await
        .unwrap();
    let url = format!("http://{}", proxy.addr);
    let calls = (0..64).map(|_| chat(&url, &[]));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().status, 200);
    }
    assert_eq!(a.request_count() + b.request_count(), 64);

    // A slow request in flight when shutdown begins still completes.
    a.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    b.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let slow = tokio::spawn({
        let url = url.clone();
        async move { chat(&url, &[]).await }
    });
    eventually(
        Duration::from_secs(5),
        "the slow request reached an upstream",
        || async { a.request_count() + b.request_count() == 65 },
    )
    .await;
    proxy.begin_shutdown();
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    tokio::time::timeout(Duration::from_secs(5), proxy.run_until(async {}))
        .await
        .expect("the traffic threads stop after draining")
        .unwrap();
}

/// A reload swaps the config for new requests only: a request and an SSE stream in flight on
/// the old config finish on it (its backend, its key), whole, while requests that start after
/// the swap use the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_on_the_old_config_during_a_reload() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let old = two_backend_pool(
        &a.url(),
        &a.url(),
        &[("key-old", "sk-old-1111")],
        "timeouts: {responseHeaders: 20s}",
    )
    .replace("- {name: b, ", "- {name: a2, ");
    let p = FileProxy::start(&old).await;
    // Slow answers on the old backend: a 200 after 4 s, and a stream of 10 events 400 ms
    // apart (long enough that the swap, polled every 50 ms, happens while they run).
    a.set_header_behavior("x-slow", "1", Behavior::Delay(Duration::from_secs(4)));
    a.set_stream(10, Duration::from_millis(400));
    let url = p.url();
    let slow = tokio::spawn(async move { chat(&url, &[("x-slow", "1")]).await.unwrap() });
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let url = p.url();
    let stream = tokio::spawn(async move { support::stream_chat(&url, Some(first_tx)).await });
    first_rx.await.expect("the stream started");
    eventually(
        Duration::from_secs(5),
        "both in flight upstream",
        || async { a.request_count() == 2 },
    )
    .await;

    // The new config: another backend, another key; the old ones are gone.
    let new = two_backend_pool(&b.url(), &b.url(), &[("key-new", "sk-new-2222")], "")
        .replace("- {name: a, ", "- {name: b1, ")
        .replace("- {name: b, ", "- {name: b2, ");
    p.rewrite(&new);
    let status = format!("{}/status", p.admin());
    eventually(Duration::from_secs(5), "new config live", || async {
        get(&status)
            .await
            .is_ok_and(|r| r.json()["pools"][0]["backends"][0]["name"] == "b1")
    })
    .await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        b.received_keys(),
        ["sk-new-2222"],
        "new requests: new config"
    );
    assert!(
        !slow.is_finished() && !stream.is_finished(),
        "the old requests were still in flight at the swap"
    );

    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert!(
        slow.header("x-keyway-backend")
            .is_some_and(|n| n.starts_with('a'))
    );
    assert_eq!(slow.header("x-keyway-key-id"), Some("key-old"));
    let (bytes, broken) = stream.await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!broken && text.contains("data: [DONE]"), "{text}");
    assert_eq!(a.received_keys(), ["sk-old-1111", "sk-old-1111"]);
}
