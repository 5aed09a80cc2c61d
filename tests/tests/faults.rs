//! Upstream and dependency faults, in-process, against real mock upstreams (and raw TCP
//! servers for what a well-behaved HTTP server cannot send) on loopback.
//!
//! Every client call is bounded by [`CLIENT_DEADLINE`]: a request that hangs becomes a
//! failed outcome, never a stuck test. Every test ends by checking that no panic happened
//! anywhere in the process (a detached connection task would otherwise only print) and that
//! the proxy still answers `/healthz`. The guarantees and the figures measured are in
//! `docs/reliability.md`.

mod support;

use http::Method;
use keyway_testkit::client::{Reply, chat, get, send};
use keyway_testkit::redis::RedisServer;
use keyway_testkit::{Behavior, MockUpstream, RawReply, RawUpstream, eventually};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{FileProxy, Load, Outcome, metric, panics, summary};

const T: Duration = Duration::from_secs(15);
/// No client call waits longer than this; the proxy's own timeouts are far shorter.
const CLIENT_DEADLINE: Duration = Duration::from_secs(8);
const KEYS: &[(&str, &str)] = &[
    ("key-a", "sk-fault-aaaa"),
    ("key-b", "sk-fault-bbbb"),
    ("key-c", "sk-fault-cccc"),
];

/// A pool over `backends` (name, url), with a key pool of `keys` if any, `extra` spliced into
/// the pool's spec (two-space indented lines).
fn pool(backends: &[(&str, String)], keys: &[(&str, &str)], extra: &str) -> String {
    let mut yaml = String::new();
    if !keys.is_empty() {
        let entries: String = keys
            .iter()
            .map(|(k, v)| format!("  {k}: \"{v}\"\n"))
            .collect();
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: llm-keys, labels: {{keyway.dev/api-keys: \"true\"}}}}\nstringData:\n{entries}---\n\
             apiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata: {{name: keys}}\n\
             spec:\n  secretRef: {{name: llm-keys}}\n---\n"
        ));
    }
    let backends: String = backends
        .iter()
        .map(|(n, u)| format!("    - {{name: {n}, endpoint: \"{u}\"}}\n"))
        .collect();
    let key_ref = if keys.is_empty() {
        ""
    } else {
        "  apiKeyPoolRef: {name: keys}\n"
    };
    yaml.push_str(&format!(
        "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: llm}}\n\
         spec:\n{key_ref}{extra}  backends:\n{backends}"
    ));
    yaml
}

fn chat_load(url: String) -> impl Fn(usize) -> support::ReplyFuture + Send + Sync + 'static {
    move |_| {
        let url = url.clone();
        Box::pin(async move { chat(&url, &[]).await })
    }
}

async fn bounded_chat(url: &str) -> Result<Reply, String> {
    match tokio::time::timeout(CLIENT_DEADLINE, chat(url, &[])).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("transport error: {e}")),
        Err(_) => Err(format!("no answer within {CLIENT_DEADLINE:?}")),
    }
}

/// An error the proxy wrote itself: JSON `{"error": {"type", "source": "keyway"}}`.
fn keyway_error(o: &Outcome) -> bool {
    serde_json::from_str::<serde_json::Value>(&o.body)
        .is_ok_and(|j| j["error"]["source"] == "keyway")
}

async fn alive(p: &FileProxy, panics_before: usize) {
    let r = tokio::time::timeout(CLIENT_DEADLINE, get(&format!("{}/healthz", p.admin())))
        .await
        .expect("healthz answers")
        .expect("healthz");
    assert_eq!(r.status, 200);
    assert_eq!(panics(), panics_before, "a panic happened during the test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dies_mid_load_requests_fail_over_and_none_hang() {
    let before = panics();
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&pool(
        &[("a", a.url()), ("b", b.url())],
        KEYS,
        "  retry: {maxRetries: 1}\n",
    ))
    .await;
    let load = Load::start(8, CLIENT_DEADLINE, chat_load(p.url()));
    eventually(T, "load reaches backend a", || async {
        a.request_count() > 50
    })
    .await;
    // The upstream process goes away: its listener and every open connection close.
    let died = Instant::now();
    drop(a);
    let b_before = b.request_count();
    eventually(T, "load goes on, on b alone", || async {
        b.request_count() > b_before + 200
    })
    .await;
    let outcomes = load.stop().await;

    let hung: Vec<_> = outcomes.iter().filter(|o| o.status.is_none()).collect();
    assert!(hung.is_empty(), "{}", summary(&outcomes));
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != Some(200)).collect();
    for o in &failed {
        assert!(
            matches!(o.status, Some(502..=504)) && keyway_error(o),
            "only clean 502/503/504 from keyway: {}",
            summary(&outcomes)
        );
    }
    // At most the requests in flight on a (8 workers) and a stale pooled connection each.
    assert!(failed.len() <= 16, "{}", summary(&outcomes));
    // And only around the death: of the requests started after it, all but those (at most 8
    // stale connections) succeed, and the last 100 to start all do (failover settled). Counted
    // in requests, not in seconds, so a slow machine does not matter.
    let mut by_start: Vec<&Outcome> = outcomes.iter().collect();
    by_start.sort_by_key(|o| o.started);
    let after_death = by_start.iter().filter(|o| o.started > died);
    assert!(
        after_death.filter(|o| o.status != Some(200)).count() <= 8,
        "{}",
        summary(&outcomes)
    );
    assert!(
        by_start.len() > 100
            && by_start[by_start.len() - 100..]
                .iter()
                .all(|o| o.status == Some(200)),
        "{}",
        summary(&outcomes)
    );
    eprintln!(
        "[faults] upstream died mid-load: {} ({} failed)",
        summary(&outcomes),
        failed.len()
    );
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstreams_get_a_504_within_the_response_timeout() {
    let before = panics();
    // One that answers HTTP but never the response, one that accepts TCP and never speaks.
    let hangs = MockUpstream::start("hang").await.unwrap();
    hangs.set_behavior(Behavior::Hang);
    let silent = RawUpstream::start(RawReply {
        bytes: Vec::new(),
        per_byte: Duration::ZERO,
        then_hang: true,
    })
    .await
    .unwrap();
    for (name, url) in [("hang", hangs.url()), ("silent", silent.url())] {
        // The proxy-wide response timeout is far away: a 504 before 4 s is the pool's 500 ms.
        let p = FileProxy::start_with(
            &pool(
                &[(name, url)],
                &[],
                "  timeouts: {responseHeaders: 500ms}\n",
            ),
            far_global_timeout,
        )
        .await;
        let calls = (0..10).map(|_| bounded_chat_timed(p.url()));
        for (r, took) in futures::future::join_all(calls).await {
            let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.status, 504, "{name}: {}", r.text());
            assert_eq!(r.json()["error"]["type"], "upstream_timeout");
            // Never before the timeout; after it by however long a loaded machine takes,
            // but well before the client deadline (8 s) or the proxy-wide timeout (30 s).
            assert!(
                took >= Duration::from_millis(450) && took < Duration::from_secs(4),
                "{name}: answered after {took:?}"
            );
        }
        alive(&p, before).await;
    }
}

/// Moves the proxy-wide response timeout (2 s in the test settings) out of the way, so that
/// a timely 504 can only come from the pool's own timeout.
fn far_global_timeout(s: &mut keyway_proxy::Settings) {
    s.forwarder.response_timeout = Duration::from_secs(30);
}

async fn bounded_chat_timed(url: String) -> (Result<Reply, String>, Duration) {
    let started = Instant::now();
    let r = bounded_chat(&url).await;
    (r, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_garbage_http_get_a_clean_502_fast() {
    let before = panics();
    let reset = MockUpstream::start("reset").await.unwrap();
    reset.set_behavior(Behavior::Reset);
    let mut upstreams = vec![("reset".to_string(), reset.url())];
    let garbage: [(&str, &[u8]); 6] = [
        ("binary", b"\x00\x01\x02\xff garbage\r\n\r\n"),
        (
            "bad-status",
            b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "bad-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        ),
        ("bad-header", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
        ("closed", b""),
        ("not-http", b"SSH-2.0-OpenSSH_9.2\r\n"),
    ];
    let mut raws = Vec::new();
    for (name, bytes) in garbage {
        let raw = RawUpstream::start(RawReply::close_after(bytes))
            .await
            .unwrap();
        upstreams.push((name.to_string(), raw.url()));
        raws.push(raw);
    }
    for (name, url) in &upstreams {
        let p = FileProxy::start(&pool(&[(name, url.clone())], &[], "")).await;
        // "Fast" means not waited out: a proxy that waited for more would answer 504 (the
        // response timeout), or nothing within the client deadline; a 502 is the upstream's
        // failure recognised as soon as it happened.
        for _ in 0..5 {
            let r = bounded_chat(&p.url())
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.status, 502, "{name}: {}", r.text());
            assert_eq!(r.json()["error"]["source"], "keyway", "{name}");
        }
        alive(&p, before).await;
    }

    // A response whose body breaks off after the head: the client's body ends in an error
    // (not a hang) and the stream error is counted.
    let short = RawUpstream::start(RawReply::close_after(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"short\":",
    ))
    .await
    .unwrap();
    let p = FileProxy::start(&pool(&[("short", short.url())], &[], "")).await;
    let r = bounded_chat(&p.url()).await;
    assert!(
        r.as_ref().is_err_and(|e| e.starts_with("transport error")),
        "a truncated body is an error at the client: {r:?}"
    );
    eventually(T, "the stream error is counted", || async {
        metric(&p.admin(), "keyway_proxy_stream_errors_total", &[]).await >= 1.0
    })
    .await;
    alive(&p, before).await;

    // With a second backend, a resetting one is taken out by passive health: load settles on
    // the healthy one; no request hangs, failures are clean 502s.
    let good = MockUpstream::start("good").await.unwrap();
    let p = FileProxy::start(&pool(
        &[("reset", reset.url()), ("good", good.url())],
        KEYS,
        "",
    ))
    .await;
    let load = Load::start(4, CLIENT_DEADLINE, chat_load(p.url()));
    eventually(T, "load settles on the good backend", || async {
        good.request_count() > 200
    })
    .await;
    let outcomes = load.stop().await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.status == Some(200) || (o.status == Some(502) && keyway_error(o))),
        "{}",
        summary(&outcomes)
    );
    let failed = outcomes.iter().filter(|o| o.status != Some(200)).count();
    assert!(
        failed * 4 < outcomes.len(),
        "most requests are served: {}",
        summary(&outcomes)
    );
    eprintln!(
        "[faults] reset backend + good backend: {}",
        summary(&outcomes)
    );
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_are_relayed_or_cut_by_their_timeouts() {
    let before = panics();
    // A body trickled in small pieces arrives whole.
    let slow = MockUpstream::start("slow").await.unwrap();
    slow.set_behavior(Behavior::Trickle {
        chunk: 16,
        interval: Duration::from_millis(20),
    });
    let p = FileProxy::start(&pool(&[("slow", slow.url())], KEYS, "")).await;
    let r = bounded_chat(&p.url()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from slow"
    );

    // Silent longer than `idleStream` mid-body: the stream is cut, the client sees an error.
    slow.set_behavior(Behavior::Trickle {
        chunk: 16,
        interval: Duration::from_millis(800),
    });
    let p = FileProxy::start(&pool(
        &[("slow", slow.url())],
        KEYS,
        "  timeouts: {idleStream: 200ms}\n",
    ))
    .await;
    let started = Instant::now();
    let r = bounded_chat(&p.url()).await;
    assert!(
        r.as_ref().is_err_and(|e| e.starts_with("transport error")),
        "cut stream: {r:?}"
    );
    // The whole trickled body takes over 8 s (and the client deadline is 8 s): an error
    // well before that is the 200 ms idle timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eventually(T, "the cut stream is counted", || async {
        metric(&p.admin(), "keyway_proxy_stream_errors_total", &[]).await >= 1.0
    })
    .await;
    alive(&p, before).await;

    // A response head trickled byte by byte: within the response timeout it is relayed,
    // beyond it the client gets 504 on time.
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let trickled = RawUpstream::start(RawReply {
        bytes: head.to_vec(),
        per_byte: Duration::from_millis(3),
        then_hang: false,
    })
    .await
    .unwrap();
    let p = FileProxy::start(&pool(
        &[("t", trickled.url())],
        &[],
        "  timeouts: {responseHeaders: 2s}\n",
    ))
    .await;
    let r = bounded_chat(&p.url()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{}");
    let crawling = RawUpstream::start(RawReply {
        bytes: head.to_vec(),
        per_byte: Duration::from_millis(100),
        then_hang: false,
    })
    .await
    .unwrap();
    let p = FileProxy::start_with(
        &pool(
            &[("c", crawling.url())],
            &[],
            "  timeouts: {responseHeaders: 500ms}\n",
        ),
        far_global_timeout,
    )
    .await;
    let started = Instant::now();
    let r = bounded_chat(&p.url()).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    // The head takes 7 s to crawl in; the proxy-wide timeout is 30 s: a 504 before 4 s is
    // the pool's 500 ms.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_cut_half_way_ends_at_the_client_and_is_counted() {
    let before = panics();
    let up = MockUpstream::start("sse").await.unwrap();
    up.set_stream(10, Duration::from_millis(30));
    up.set_behavior(Behavior::AbortStream { after: 3 });
    let p = FileProxy::start(&pool(&[("sse", up.url())], KEYS, "")).await;
    let (got, errored) =
        tokio::time::timeout(CLIENT_DEADLINE, support::stream_chat(&p.url(), None))
            .await
            .expect("the stream ends, it does not hang");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(errored, "the client sees the stream break, not a clean end");
    eventually(T, "keyway_proxy_stream_errors_total counts it", || async {
        metric(
            &p.admin(),
            "keyway_proxy_stream_errors_total",
            &[r#"pool="default/llm""#],
        )
        .await
            == 1.0
    })
    .await;
    // A whole stream afterwards is fine.
    up.set_behavior(Behavior::Normal);
    let (got, errored) =
        tokio::time::timeout(CLIENT_DEADLINE, support::stream_chat(&p.url(), None))
            .await
            .unwrap();
    assert!(!errored && String::from_utf8_lossy(&got).contains("[DONE]"));
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_and_a_429_storm_mid_load_move_traffic_to_the_spare_key() {
    let before = panics();
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&pool(&[("a", a.url()), ("b", b.url())], KEYS, "")).await;
    let load = Load::start(8, CLIENT_DEADLINE, chat_load(p.url()));
    eventually(T, "load flows", || async {
        a.request_count() + b.request_count() > 60
    })
    .await;
    // key-b is revoked upstream; key-c hits a 429 storm (every use, Retry-After 1s).
    for up in [&a, &b] {
        up.set_key_behavior(KEYS[1].1, Some(Behavior::status(401)));
        up.set_key_behavior(KEYS[2].1, Some(Behavior::rate_limited(1)));
    }
    a.clear();
    b.clear();
    eventually(T, "load goes on through the storm", || async {
        a.request_count() + b.request_count() > 400
    })
    .await;
    let outcomes = load.stop().await;
    let ok = outcomes.iter().filter(|o| o.status == Some(200)).count();
    assert_eq!(
        ok,
        outcomes.len(),
        "sent == answered 200 while a spare key exists: {}",
        summary(&outcomes)
    );
    // The revoked key is disabled once a free probe with it is refused too (a single 401
    // may be the request's fault); meanwhile it is passed over, so it is not tried once per
    // request (at most the requests already holding it when it was revoked, one per worker,
    // plus the odd use while no other key was eligible).
    eventually(T, "key-b disabled", || async {
        let status = get(&format!("{}/status", p.admin())).await.unwrap().json();
        status["keyPools"][0]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == "key-b" && k["state"] == "disabled")
    })
    .await;
    let b_uses = a
        .received_keys()
        .into_iter()
        .chain(b.received_keys())
        .filter(|k| k == KEYS[1].1)
        .count();
    assert!(
        b_uses <= 10,
        "revoked key used {b_uses} times after revocation"
    );
    eprintln!("[faults] 401 + 429 storm: {}", summary(&outcomes));
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_config_versions_under_load_fail_no_request() {
    let before = panics();
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let version = |i: usize| {
        let keys = [
            ("key-a", format!("sk-churn-a-{i}")),
            ("key-b", format!("sk-churn-b-{i}")),
        ];
        let keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pool(&[("a", a.url()), ("b", b.url())], &keys, "").replace(
            &format!("{{name: a, endpoint: \"{}\"}}", a.url()),
            &format!("{{name: a, endpoint: \"{}\", weight: {i}}}", a.url()),
        )
    };
    let p = FileProxy::start(&version(1)).await;
    let load = Load::start(8, CLIENT_DEADLINE, chat_load(p.url()));
    let started = Instant::now();
    for i in 2..=101 {
        p.rewrite(&version(i));
        let url = format!("{}/status", p.admin());
        eventually(T, &format!("version {i} applied"), || async {
            get(&url)
                .await
                .is_ok_and(|r| r.json()["pools"][0]["backends"][0]["weight"] == i)
        })
        .await;
        // No torn config: once `/status` shows version i (its weight), a new request carries
        // a key value of version i, never an older one nor a mix of two versions.
        let probe = i.to_string();
        let r = chat(&p.url(), &[("x-version-probe", &probe)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "version {i}: {}", r.text());
        let sent: Vec<String> = a
            .requests()
            .into_iter()
            .chain(b.requests())
            .filter(|q| q.header("x-version-probe") == Some(probe.as_str()))
            .filter_map(|q| q.key)
            .collect();
        assert!(
            sent.len() == 1
                && [format!("sk-churn-a-{i}"), format!("sk-churn-b-{i}")].contains(&sent[0]),
            "version {i} is live in /status, but the request sent {sent:?}"
        );
    }
    let took = started.elapsed();
    let outcomes = load.stop().await;
    let ok = outcomes.iter().filter(|o| o.status == Some(200)).count();
    assert_eq!(ok, outcomes.len(), "{}", summary(&outcomes));
    assert!(outcomes.len() > 100, "load ran: {}", summary(&outcomes));
    // Every key that went upstream is exactly one version's value.
    for k in a.received_keys().into_iter().chain(b.received_keys()) {
        let version = k
            .strip_prefix("sk-churn-a-")
            .or_else(|| k.strip_prefix("sk-churn-b-"))
            .and_then(|v| v.parse::<usize>().ok());
        assert!(version.is_some_and(|v| (1..=101).contains(&v)), "{k}");
    }
    eprintln!(
        "[faults] 100 config versions in {took:?} under load: {}",
        summary(&outcomes)
    );
    alive(&p, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_concurrent_multi_cluster_load_fails_no_request() {
    let before = panics();
    let mut redis = RedisServer::start().await;
    let east = MockUpstream::start("east").await.unwrap();
    let west = MockUpstream::start("west").await.unwrap();
    let deep = json!({"models": [{"name": "llama", "payload": {
        "healthy": true, "capacity": 1000, "consumption": 0}}]});
    east.set_deep_health(deep.clone());
    west.set_deep_health(deep);
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: models}}
spec:
  mode: multiCluster
  healthCheck: {{path: /health/deep, intervalSeconds: 1, deep: true}}
  affinity: {{store: redis, redis: {{address: "{}", timeout: 200ms}}}}
  backends:
    - {{name: east, endpoint: "{}"}}
    - {{name: west, endpoint: "{}"}}
"#,
        redis.address(),
        east.url(),
        west.url()
    );
    let p = FileProxy::start(&yaml).await;
    let status = format!("{}/status", p.admin());
    eventually(T, "both clusters report the model", || async {
        get(&status).await.is_ok_and(|r| {
            r.json()["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| {
                    b.iter()
                        .all(|b| b["models"].as_array().is_some_and(|m| !m.is_empty()))
                })
        })
    })
    .await;
    let url = p.url();
    let load = Load::start(8, CLIENT_DEADLINE, move |w| {
        let url = url.clone();
        Box::pin(async move {
            let n: u32 = rand_user(w);
            let body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]});
            send(
                Method::POST,
                &format!("{url}/v1/chat/completions"),
                &[
                    ("content-type", "application/json"),
                    ("user-id", &format!("user-{n}")),
                ],
                body.to_string(),
            )
            .await
        })
    });
    let total = || east.request_count() + west.request_count();
    eventually(T, "load flows with redis up", || async { total() > 200 }).await;
    redis.stop().await;
    let mark = total();
    eventually(T, "load goes on without redis", || async {
        total() > mark + 400
    })
    .await;
    let outcomes = load.stop().await;
    let ok = outcomes.iter().filter(|o| o.status == Some(200)).count();
    assert_eq!(ok, outcomes.len(), "{}", summary(&outcomes));
    assert!(
        metric(
            &p.admin(),
            "keyway_proxy_affinity_store_fallbacks_total",
            &[]
        )
        .await
            > 0.0
    );
    eprintln!("[faults] redis stopped under load: {}", summary(&outcomes));
    alive(&p, before).await;
}

/// A user id for worker `w`: 50 users, spread over time.
fn rand_user(w: usize) -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    (N.fetch_add(1, Ordering::Relaxed) + w as u32) % 50
}
