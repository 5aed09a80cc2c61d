//! The key pool through the real proxy: refusals retried on the next key, cooldowns, the wait
//! queue, disabling, quotas from usage, injection modes, rotation under load, and no key value
//! anywhere a user or operator can see.

mod support;

use bytes::Bytes;
use keyway_testkit::client::{Reply, chat, get, send};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::FileProxy;

const KEY_A: &str = "sk-test-alpha-0001";
const KEY_B: &str = "sk-test-bravo-0002";

/// One backend, keys `key-a` and `key-b`, `{akp}` spliced into the ApiKeyPool spec and
/// `{lbp}` into the LoadBalancerPool spec.
fn config(upstream: &str, akp: &str, lbp: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData:
  key-a: "{KEY_A}"
  key-b: "{KEY_B}"
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec:
  secretRef: {{name: llm-keys}}
{akp}---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
{lbp}  backends:
    - {{name: a, endpoint: "{upstream}"}}
"#
    )
}

fn key_of(r: &Reply) -> String {
    r.header("x-keyway-key-id").unwrap_or("none").to_string()
}

async fn key_state(p: &FileProxy, id: &str) -> serde_json::Value {
    let status = get(&format!("{}/status", p.admin())).await.unwrap().json();
    status["keyPools"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_429_is_retried_with_the_next_key_and_the_key_cools_down() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "", "")).await;
    const COOLDOWN: Duration = Duration::from_secs(3);
    up.fail_next(1, Behavior::rate_limited(COOLDOWN.as_secs()));
    // The key cools from when the proxy got the 429, which is after this instant: until
    // `sent + COOLDOWN` it is certainly cooling. Bounds below come from that, not from how
    // fast the machine is.
    let sent = Instant::now();
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(
        r.status, 200,
        "the client never sees the 429 another key could serve"
    );
    let keys = up.received_keys();
    assert_eq!(keys.len(), 2, "one refused attempt, one retry");
    assert_ne!(keys[0], keys[1], "the retry used the other key");
    let cooled = if keys[0] == KEY_A { "key-a" } else { "key-b" };
    let other = if cooled == "key-a" { "key-b" } else { "key-a" };
    assert_eq!(key_of(&r), other);

    let state = key_state(&p, cooled).await;
    assert_eq!(state["state"], "cooling", "{state}");
    // While it cools, every request goes to the other key; once it is back, round robin
    // brings it back within two requests.
    let mut during = 0;
    loop {
        let key = key_of(&chat(&p.url(), &[]).await.unwrap());
        let done = Instant::now();
        if key == cooled {
            assert!(
                done >= sent + COOLDOWN,
                "the cooled key served {:?} after the 429, before its Retry-After",
                done - sent
            );
            break;
        }
        assert_eq!(key, other);
        during += usize::from(done < sent + COOLDOWN);
        assert!(
            done < sent + COOLDOWN + Duration::from_secs(10),
            "the cooled key never came back"
        );
    }
    assert!(during >= 1, "no request ran while the key cooled");
}

#[tokio::test]
async fn a_request_waits_for_a_key_to_free_up() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(
        &up.url(),
        "  queue: {maxLength: 10, maxWaitSeconds: 10}\n",
        "",
    ))
    .await;
    up.fail_next(2, Behavior::rate_limited(1));
    let started = Instant::now();
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "both keys cooled for 1 s; the request waited ({:?})",
        started.elapsed()
    );
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains("keyway_proxy_key_wait_seconds_count{key_pool=\"default/keys\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn when_every_key_cools_the_client_gets_429_with_retry_after() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(
        &up.url(),
        "  queue: {maxLength: 10, maxWaitSeconds: 1}\n",
        "",
    ))
    .await;
    up.fail_next(2, Behavior::rate_limited(30));
    let started = Instant::now();
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        // The wait is 1 s, the keys cool for 30 s: anything near 30 s waited for them.
        started.elapsed() < Duration::from_secs(10),
        "answered within the max wait"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (25..=31).contains(&retry_after),
        "Retry-After is the earliest refill, got {retry_after}"
    );
    let j = r.json();
    assert_eq!(j["error"]["type"], "keys_unavailable");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("default/keys"), "{msg}");
    assert!(!msg.contains(KEY_A) && !msg.contains(KEY_B));
    assert_eq!(
        up.request_count(),
        2,
        "no further upstream attempt while every key cools"
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(
        &up.url(),
        "  queue: {maxLength: 0}\n  defaults: {maxConcurrent: 1}\n",
        "",
    ))
    .await;
    up.set_behavior(Behavior::Delay(Duration::from_millis(500)));
    let url = p.url();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { chat(&url, &[]).await.unwrap().status })
        })
        .collect();
    eventually(Duration::from_secs(5), "both keys busy", || async {
        up.request_count() == 2
    })
    .await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    for t in slow {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn a_revoked_key_is_disabled_with_a_reason_and_the_request_is_served_by_another() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "", "")).await;
    // key-a is revoked: the upstream refuses it for every request, probes included.
    up.set_key_behavior(KEY_A, Some(Behavior::status(401)));
    // Round robin: one of the first two requests meets key-a and is served by key-b.
    for _ in 0..2 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    // The free probe of key-a is refused too: that is evidence about the key.
    eventually(Duration::from_secs(10), "key-a disabled", || async {
        key_state(&p, "key-a").await["state"] == "disabled"
    })
    .await;
    let state = key_state(&p, "key-a").await;
    assert!(state["reason"].as_str().unwrap().contains("401"), "{state}");
    let probe = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/models" && r.key.as_deref() == Some(KEY_A))
        .expect("key-a was probed");
    assert_eq!(probe.method, http::Method::GET, "probes never cost tokens");
    for _ in 0..4 {
        assert_eq!(key_of(&chat(&p.url(), &[]).await.unwrap()), "key-b");
    }
}

/// A request the upstream refuses for itself (here a bad organization header): it is
/// replayed on one other key at most, the client gets the upstream's 401, and no key is
/// disabled, because a free probe with each refused key passes.
#[tokio::test]
async fn one_request_cannot_disable_keys() {
    let up = MockUpstream::start("a").await.unwrap();
    // Four keys: without the bound, one request would walk through all of them.
    let four = config(&up.url(), "", "").replace(
        &format!("  key-b: \"{KEY_B}\"\n"),
        &format!(
            "  key-b: \"{KEY_B}\"\n  key-c: \"sk-test-charlie-0003\"\n  key-d: \"sk-test-delta-0004\"\n"
        ),
    );
    let p = FileProxy::start(&four).await;
    up.set_header_behavior("openai-organization", "org-wrong", Behavior::status(401));
    let bad = [("openai-organization", "org-wrong")];
    let r = chat(&p.url(), &bad).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let tried = up
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    assert_eq!(
        tried, 2,
        "the refusal is replayed on one other key, no more"
    );
    // The two refused keys were suspected and probed for free; both probes pass.
    eventually(
        Duration::from_secs(10),
        "both refused keys verified",
        || async {
            up.requests()
                .iter()
                .filter(|r| r.path == "/v1/models")
                .count()
                >= 2
        },
    )
    .await;
    // The same bad request again and again: still no key is disabled.
    for _ in 0..5 {
        assert_eq!(chat(&p.url(), &bad).await.unwrap().status, 401);
    }
    for id in ["key-a", "key-b", "key-c", "key-d"] {
        assert_eq!(key_state(&p, id).await["state"], "active", "{id}");
    }
    // Each refused key was probed and passed, so each serves again (a suspected key is only
    // passed over until its probe answers).
    let served = Mutex::new(std::collections::BTreeSet::new());
    eventually(Duration::from_secs(10), "every key serves", || async {
        let key = key_of(&chat(&p.url(), &[]).await.unwrap());
        let mut served = served.lock().unwrap();
        served.insert(key);
        served.len() == 4
    })
    .await;
}

#[tokio::test]
async fn requests_per_minute_are_enforced_per_key() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(
        &up.url(),
        "  defaults: {requestsPerMinute: 2}\n  queue: {maxLength: 0}\n",
        "",
    ))
    .await;
    let mut codes = vec![];
    for _ in 0..5 {
        codes.push(chat(&p.url(), &[]).await.unwrap().status.as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 200, 429], "2 keys × 2 per minute");
    assert_eq!(up.request_count(), 4);
    let r = chat(&p.url(), &[]).await.unwrap();
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&retry_after));
}

#[tokio::test]
async fn tokens_per_minute_count_usage_from_json_and_streams() {
    let up = MockUpstream::start("a").await.unwrap();
    // One key: key-b's quota is 1 token so it is spent by any request.
    let akp = "  defaults: {tokensPerMinute: 1000}\n  keys: [{id: key-b, tokensPerMinute: 1}]\n  queue: {maxLength: 0}\n  selection: leastUsed\n  requestStreamUsage: true\n";
    let p = FileProxy::start(&config(&up.url(), akp, "")).await;
    // JSON: usage is read from the body.
    for _ in 0..2 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    let b = key_state(&p, "key-b").await;
    let a = key_state(&p, "key-a").await;
    let total = a["tokens"].as_u64().unwrap() + b["tokens"].as_u64().unwrap();
    assert_eq!(
        total, 10,
        "2 requests × (2 prompt + 3 completion) tokens: {a} {b}"
    );
    // key-b is now over its 1-token quota: everything goes to key-a.
    for _ in 0..3 {
        assert_eq!(key_of(&chat(&p.url(), &[]).await.unwrap()), "key-a");
    }

    // SSE: the proxy asks for usage and strips the extra chunk from the client's stream.
    let before = key_state(&p, "key-a").await["tokens"].as_u64().unwrap();
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi there"}]}"#;
    let r = send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", p.url()),
        &[("content-type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let upstream_body = up.requests().last().unwrap().json().unwrap();
    assert_eq!(
        upstream_body["stream_options"]["include_usage"], true,
        "usage was requested upstream"
    );
    assert!(
        !r.text().contains("\"usage\""),
        "the client did not ask for the usage chunk: {}",
        r.text()
    );
    assert!(r.text().contains("data: [DONE]"));
    eventually(Duration::from_secs(2), "stream tokens counted", || async {
        key_state(&p, "key-a").await["tokens"].as_u64().unwrap() > before
    })
    .await;
}

#[tokio::test]
async fn body_field_injection_replaces_the_clients_own_key() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(
        &up.url(),
        "",
        "  auth: {type: bodyField, field: api_key}\n",
    ))
    .await;
    let body = r#"{"query":"rust","api_key":"client-own-key"}"#;
    let r = send(
        http::Method::POST,
        &format!("{}/search", p.url()),
        &[("content-type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let sent = up.requests().pop().unwrap().json().unwrap();
    assert_eq!(sent["query"], "rust");
    let injected = sent["api_key"].as_str().unwrap();
    assert!(injected == KEY_A || injected == KEY_B, "{sent}");

    // Not JSON: a clear 400, and nothing reaches the upstream.
    let r = send(
        http::Method::POST,
        &format!("{}/search", p.url()),
        &[],
        "not json",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test]
async fn sticky_clients_stay_on_one_key() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "  stickiness: {header: user-id}\n", "")).await;
    for user in ["alice", "bob", "carol", "dave"] {
        let first = key_of(&chat(&p.url(), &[("user-id", user)]).await.unwrap());
        for _ in 0..5 {
            assert_eq!(
                key_of(&chat(&p.url(), &[("user-id", user)]).await.unwrap()),
                first,
                "{user}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_under_load_loses_no_request() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = Arc::new(FileProxy::start(&config(&up.url(), "", "")).await);
    let url = p.url();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..100 {
                    if chat(&url, &[])
                        .await
                        .map(|r| r.status == 200)
                        .unwrap_or(false)
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    for i in 0..5 {
        let rotated = config(&up.url(), "", "").replace(KEY_B, &format!("sk-test-rotated-{i}"));
        p.rewrite(&rotated);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answered = 0;
    for w in workers {
        answered += w.await.unwrap();
    }
    assert_eq!(answered, 400, "sent 400, every one answered 200");
    assert!(
        up.received_keys()
            .iter()
            .any(|k| k.starts_with("sk-test-rotated-"))
    );
}

/// A writer that keeps every log line in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_key_value_appears_in_logs_status_metrics_or_headers() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime is single-threaded, so every task logs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "  queue: {maxLength: 0}\n", "")).await;
    let mut seen = String::new();
    let mut record = |r: &Reply| {
        for (k, v) in &r.headers {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        seen.push_str(&r.text());
    };
    record(
        &chat(&p.url(), &[("authorization", "Bearer client-secret")])
            .await
            .unwrap(),
    );
    up.fail_next(1, Behavior::rate_limited(30));
    record(&chat(&p.url(), &[]).await.unwrap());
    up.fail_next(1, Behavior::status(401));
    record(&chat(&p.url(), &[]).await.unwrap());
    // Both keys are out now: the 429 names the pool only.
    record(&chat(&p.url(), &[]).await.unwrap());
    let stream = r#"{"model":"m","stream":true,"messages":[]}"#;
    record(
        &send(
            http::Method::POST,
            &format!("{}/v1/chat/completions", p.url()),
            &[],
            Bytes::from(stream),
        )
        .await
        .unwrap(),
    );
    for path in ["/status", "/metrics", "/healthz", "/readyz"] {
        record(&get(&format!("{}{path}", p.admin())).await.unwrap());
    }
    // An invalid edit is logged with its field path.
    p.rewrite(&config(&up.url(), "  selection: sometimes\n", ""));
    eventually(Duration::from_secs(5), "rejected edit logged", || async {
        String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("spec.selection")
    })
    .await;

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logs.len() > 1000,
        "logs were captured ({} bytes)",
        logs.len()
    );
    assert!(seen.contains("x-keyway-key-id"), "headers were captured");
    for secret in [KEY_A, KEY_B] {
        assert!(!logs.contains(secret), "a key value is in the logs");
        assert!(
            !seen.contains(secret),
            "a key value is in a response, status or metrics"
        );
    }
    assert!(
        !seen.contains("client-secret"),
        "the client's credential is not echoed"
    );
}

#[tokio::test]
async fn a_disabled_key_is_reprobed_for_free_and_re_enabled() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "  disable: {reprobeSeconds: 10}\n", "")).await;
    up.set_key_behavior(KEY_A, Some(Behavior::status(401)));
    for _ in 0..2 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    eventually(Duration::from_secs(10), "key-a disabled", || async {
        key_state(&p, "key-a").await["state"] == "disabled"
    })
    .await;
    // The key is fixed upstream: the next scheduled probe re-enables it.
    up.set_key_behavior(KEY_A, None);
    eventually(
        Duration::from_secs(20),
        "key re-enabled after a passing probe",
        || async { key_state(&p, "key-a").await["state"] == "active" },
    )
    .await;
    let probes: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/models" && r.key.as_deref() == Some(KEY_A))
        .collect();
    assert!(probes.len() >= 2, "verified, then re-probed");
    assert!(
        probes.iter().all(|r| r.method == http::Method::GET),
        "probes never cost tokens"
    );
}

/// 401, 403 and 429 are about a key (or the client's request), never about the backend: however
/// many come in a row, passive health does not eject it, with keys or without. The control:
/// two 502s in a row do eject it under the same settings, so the check can fail.
#[tokio::test]
async fn key_refusals_never_mark_the_backend_down() {
    let up = MockUpstream::start("a").await.unwrap();
    let sensitive = "  outlierDetection: {consecutiveFailures: 2}\n";
    // A refused request waits at most 1 s for a key (the keys cool down for 2 s after a 429).
    let wait = "  queue: {maxLength: 10, maxWaitSeconds: 1}\n";
    let keyed = FileProxy::start(&config(&up.url(), wait, sensitive)).await;
    let keyless = FileProxy::start(&format!(
        "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: llm}}\nspec:\n{sensitive}  backends:\n    - {{name: a, endpoint: \"{}\"}}\n",
        up.url()
    ))
    .await;
    // The upstream refuses requests carrying these headers, whatever key they carry; a key's
    // free probe passes, so no key is disabled and every request reaches the backend.
    up.set_header_behavior("x-refuse", "401", Behavior::status(401));
    up.set_header_behavior("x-refuse", "403", Behavior::status(403));
    up.set_header_behavior("x-refuse", "429", Behavior::rate_limited(2));
    up.set_header_behavior("x-refuse", "502", Behavior::status(502));
    let backend = |p: &FileProxy| {
        let url = format!("{}/status", p.admin());
        async move { get(&url).await.unwrap().json()["pools"][0]["backends"][0].clone() }
    };
    for p in [&keyed, &keyless] {
        let before = up.request_count();
        for code in ["401", "403", "401", "403", "429"] {
            let r = chat(&p.url(), &[("x-refuse", code)]).await.unwrap();
            assert_eq!(r.status.as_str(), code, "{}", r.text());
        }
        assert!(
            up.request_count() - before >= 5,
            "the refusals came from the backend"
        );
        let b = backend(p).await;
        assert!(b["healthy"] == true && b["ejected"] == false, "{b}");
        // After the keys' cooldown (429), a plain request is served by that backend.
        eventually(Duration::from_secs(5), "served after refusals", || async {
            chat(&p.url(), &[]).await.unwrap().status == 200
        })
        .await;
    }
    // Control: the same count of 5xx answers does eject the backend.
    for _ in 0..2 {
        let r = chat(&keyless.url(), &[("x-refuse", "502")]).await.unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
    }
    let b = backend(&keyless).await;
    assert!(b["ejected"] == true, "two 502s eject: {b}");
}

/// Keys refused at every attempt (each a 429 here) end the request with the upstream's last
/// refusal once the attempts run out, not with a 502 of Keyway's own.
#[tokio::test]
async fn a_request_refused_on_every_attempt_gets_the_upstreams_last_refusal() {
    let up = MockUpstream::start("a").await.unwrap();
    let secret: String = (0..20)
        .map(|i| format!("  key-{i:02}: \"sk-many-{i:04}\"\n"))
        .collect();
    let yaml = config(&up.url(), "", "").replace(
        &format!("  key-a: \"{KEY_A}\"\n  key-b: \"{KEY_B}\"\n"),
        &secret,
    );
    let p = FileProxy::start(&yaml).await;
    up.set_behavior(Behavior::rate_limited(30));
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("30"), "{:?}", r.headers);
    assert_eq!(up.request_count(), 16, "one attempt per key, 16 at most");
}

/// A response saying a key has under 5% of its requests left (`x-ratelimit-remaining-*`) paces
/// that key: the forwarder passes it over while another key is ready, until the reset the
/// upstream named, without a 429 ever being needed.
#[tokio::test]
async fn a_key_nearly_spent_per_its_rate_limit_headers_is_passed_over() {
    let up = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&config(&up.url(), "", "")).await;
    // key-a's answers say 2 of 100 requests are left, resetting in 60 s; key-b's say nothing.
    up.set_key_behavior(
        KEY_A,
        Some(Behavior::Status {
            code: 200,
            headers: vec![
                ("x-ratelimit-limit-requests".into(), "100".into()),
                ("x-ratelimit-remaining-requests".into(), "2".into()),
                ("x-ratelimit-reset-requests".into(), "60s".into()),
            ],
            body: r#"{"id":"x","object":"chat.completion","choices":[]}"#.into(),
        }),
    );
    let mut used = Vec::new();
    for _ in 0..10 {
        let r = chat(&p.url(), &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        used.push(key_of(&r));
    }
    // Round robin would alternate (5 and 5); key-a serves once, says it is nearly spent, and
    // is passed over from then on.
    let a = used.iter().filter(|k| *k == "key-a").count();
    assert_eq!(a, 1, "{used:?}");
    // The control: a key whose answers say 50 of 100 are left stays in rotation.
    up.set_key_behavior(KEY_A, None);
    let p2 = FileProxy::start(&config(&up.url(), "", "")).await;
    up.set_key_behavior(
        KEY_A,
        Some(Behavior::Status {
            code: 200,
            headers: vec![
                ("x-ratelimit-limit-requests".into(), "100".into()),
                ("x-ratelimit-remaining-requests".into(), "50".into()),
            ],
            body: r#"{"id":"x","object":"chat.completion","choices":[]}"#.into(),
        }),
    );
    let mut used = Vec::new();
    for _ in 0..10 {
        used.push(key_of(&chat(&p2.url(), &[]).await.unwrap()));
    }
    assert_eq!(used.iter().filter(|k| *k == "key-a").count(), 5, "{used:?}");
}
