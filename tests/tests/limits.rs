//! Overload and hostile clients, in-process over raw TCP on loopback: every limit of the
//! traffic port answers fast and explicitly (503, 413, 431, a closed connection), a slow or
//! malformed client never blocks the others, and nothing a client sends can put CR/LF into
//! a header Keyway builds.

mod support;

use keyway_proxy::Source;
use keyway_proxy::http::server::Limits;
use keyway_testkit::client::{chat, get, send};
use keyway_testkit::{MockUpstream, eventually};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{metric, panics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn yaml(upstream: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: k, labels: {{keyway.dev/api-keys: "true"}}}}
stringData: {{key-a: "sk-limits-aaaa"}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec: {{secretRef: {{name: k}}}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
  backends: [{{name: a, endpoint: "{upstream}"}}]
"#
    )
}

async fn start(upstream: &str, limits: Limits) -> keyway_proxy::Running {
    start_threads(upstream, limits, 0).await
}

/// `threads` traffic threads (0: the test's runtime).
async fn start_threads(upstream: &str, limits: Limits, threads: usize) -> keyway_proxy::Running {
    let snapshot = keyway_api::manifest::Manifests::parse(&yaml(upstream), &|_| None)
        .unwrap()
        .resolve()
        .unwrap();
    let mut settings = support::settings(Source::Static(snapshot));
    settings.limits = limits;
    settings.traffic_threads = threads;
    keyway_proxy::start(settings, prometheus::Registry::new())
        .await
        .unwrap()
}

/// Far beyond [`RAW_WINDOW`]: a connection the proxy leaves to the header timeout instead of
/// answering and closing it stays open for the whole window.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`raw`] waits for the proxy to close the connection.
const RAW_WINDOW: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits {
        max_connections: Some(1000),
        header_read_timeout: HEADER_TIMEOUT,
        max_header_bytes: 16 * 1024,
        max_request_body: Some(1024),
    }
}

/// Writes `bytes`, then reads until the server closes (or [`RAW_WINDOW`] passes); returns
/// what was read and how long until the close (`took < RAW_WINDOW`: the proxy closed it).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(RAW_WINDOW, s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_a_fast_503_and_slots_free_up() {
    // On the test's runtime, and with two traffic threads sharing one budget.
    for threads in [0, 2] {
        connection_limit(threads).await;
    }
}

async fn connection_limit(threads: usize) {
    let before = panics();
    let up = MockUpstream::start("a").await.unwrap();
    let p = start_threads(
        &up.url(),
        Limits {
            max_connections: Some(4),
            ..limits()
        },
        threads,
    )
    .await;
    let admin = format!("http://{}", p.admin_addr);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(p.addr).await.unwrap());
    }
    eventually(T, "4 connections open", || async {
        metric(&admin, "keyway_proxy_open_connections", &[]).await == 4.0
    })
    .await;
    let (resp, took) = raw(
        p.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(status_of(&resp), Some(503), "{resp}");
    assert!(resp.contains("too_many_connections"), "{resp}");
    // Answered and closed at once, not queued until a slot frees (none does meanwhile).
    assert!(took < RAW_WINDOW, "{took:?}");
    assert!(metric(&admin, "keyway_proxy_connections_rejected_total", &[]).await >= 1.0);
    assert_eq!(up.request_count(), 0);
    // A slot frees up as soon as a connection closes.
    held.pop();
    let url = format!("http://{}", p.addr);
    eventually(T, "a new connection is served once one closed", || async {
        chat(&url, &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(panics(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_oversized_heads_get_431() {
    let before = panics();
    let up = MockUpstream::start("a").await.unwrap();
    let p = start(&up.url(), limits()).await;
    let url = format!("http://{}/v1/chat/completions", p.addr);

    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(2048));
    let r = send(
        http::Method::POST,
        &url,
        &[("content-type", "application/json")],
        big,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "body_too_large");
    assert!(r.text().contains("--max-request-body"), "{}", r.text());
    assert_eq!(up.request_count(), 0, "refused before any upstream work");
    let small = r#"{"model":"m","messages":[]}"#;
    let r = send(http::Method::POST, &url, &[], small).await.unwrap();
    assert_eq!(r.status, 200);

    // A head over 16 KiB: 431 straight from the HTTP layer.
    let big_header = "y".repeat(20 * 1024);
    let (resp, took) = raw(
        p.addr,
        format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {big_header}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), Some(431), "{resp}");
    assert!(
        took < RAW_WINDOW,
        "closed, not left to the header timeout: {took:?}"
    );
    let ok_header = "y".repeat(8 * 1024);
    let r = send(
        http::Method::GET,
        &format!("http://{}/v1/models", p.addr),
        &[("x-fine", &ok_header)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(panics(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_and_do_not_block_others() {
    let before = panics();
    let up = MockUpstream::start("a").await.unwrap();
    // Long enough that 20 requests on a loaded machine fit in it many times over: they must
    // all be answered while every slow client still holds its connection.
    let timeout = Duration::from_secs(2);
    let p = start(
        &up.url(),
        Limits {
            header_read_timeout: timeout,
            ..limits()
        },
    )
    .await;
    let addr = p.addr;
    // 50 slow clients: 20 send a head byte by byte (never finishing), 20 send nothing,
    // 10 send the first byte only (stuck in protocol detection).
    let mut slow = Vec::new();
    for i in 0..50 {
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ";
            let mut buf = [0u8; 1024];
            let closed = async {
                match i % 5 {
                    0 | 1 => {
                        let mut i = 0;
                        loop {
                            let b = head.get(i).copied().unwrap_or(b'a');
                            i += 1;
                            if s.write_all(&[b]).await.is_err() {
                                return;
                            }
                            tokio::select! {
                                r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    }
                    2 => {
                        let _ = s.write_all(b"P").await;
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                        }
                    }
                    _ => {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .map(|_| (started, Instant::now()))
        }));
    }
    // Meanwhile other clients are served: every one before the first slow client is cut, so
    // none waited for the slow ones to go.
    let url = format!("http://{addr}");
    for _ in 0..20 {
        let r = tokio::time::timeout(T, chat(&url, &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let served = Instant::now();
    let mut longest = Duration::ZERO;
    for t in slow {
        let (started, cut) = t.await.unwrap().expect("slow client cut within 10 s");
        let took = cut - started;
        assert!(
            cut > served,
            "a slow client was cut after {took:?}, before the others were served"
        );
        // Never before the timeout; some time after it on a busy machine.
        assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
        longest = longest.max(took);
    }
    assert!(longest < timeout * 3, "{longest:?}");
    eprintln!("[limits] 50 slowloris clients cut after at most {longest:?} (timeout {timeout:?})");
    assert_eq!(
        up.request_count(),
        20,
        "only the 20 normal requests reached the upstream"
    );
    assert_eq!(panics(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_nothing_reaches_upstream() {
    let before = panics();
    let up = MockUpstream::start("a").await.unwrap();
    let p = start(&up.url(), limits()).await;
    let cases: [(&str, &[u8]); 8] = [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        (
            "binary",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-bad: a\rX-Injected: 1\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nhost: x\r\nx bad: 1\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-bad: a\x00b\r\n\r\n",
        ),
        (
            "two different content-lengths",
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        ),
        ("unknown version", b"GET / HTTP/9.9\r\nhost: x\r\n\r\n"),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let (resp, took) = raw(p.addr, bytes).await;
        let status = status_of(&resp);
        assert!(
            status.is_none_or(|s| (400..500).contains(&s)),
            "{name}: {resp}"
        );
        assert!(
            took < RAW_WINDOW,
            "{name}: closed, not left to the header timeout: {took:?}"
        );
    }
    // The invalid chunk size may reach the upstream as a started request; nothing else may.
    assert!(up.request_count() <= 1, "{:?}", up.requests());
    for r in up.requests() {
        assert!(r.headers.get("x-injected").is_none());
    }

    // A JSON `model` with CR/LF routes nowhere special and never becomes a header.
    let body = r#"{"model":"m\r\nx-injected: 1","messages":[]}"#;
    let r = send(
        http::Method::POST,
        &format!("http://{}/v1/chat/completions", p.addr),
        &[("content-type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    for (name, value) in &r.headers {
        assert!(!name.as_str().contains("injected"));
        assert!(!value.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'));
    }
    for req in up.requests() {
        assert!(req.headers.get("x-injected").is_none());
        for v in req.headers.values() {
            assert!(!v.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'));
        }
    }
    let r = get(&format!("http://{}/healthz", p.admin_addr))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(panics(), before);
}

#[test]
fn config_values_that_would_become_headers_refuse_cr_lf() {
    // Each value carries CR/LF and a marker: the error must be the control-character refusal
    // of exactly that field (not any error the input happens to cause), and never repeat the
    // value (the marker sits in it).
    let cases = [
        (
            "key value",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: k, labels: {keyway.dev/api-keys: \"true\"}}\nstringData: {key-a: \"sk-a\\r\\nx-injected: 1\"}\n---\napiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata: {name: keys}\nspec: {secretRef: {name: k}}\n",
            "secret k entry \"key-a\"",
        ),
        (
            "hostHeader",
            "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {name: llm}\nspec:\n  backends: [{name: a, endpoint: \"http://127.0.0.1:1\", hostHeader: \"h\\r\\nx-injected: 1\"}]\n",
            "spec.backends[0].hostHeader",
        ),
        (
            "auth prefix",
            "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {name: llm}\nspec:\n  auth: {header: authorization, prefix: \"Bearer \\r\\nx-injected: \"}\n  backends: [{name: a, endpoint: \"http://127.0.0.1:1\"}]\n",
            "spec.auth.prefix",
        ),
    ];
    for (what, yaml, field) in cases {
        // The same input without the CR/LF is valid: the refusal is about them alone.
        let clean = yaml.replace("\\r\\n", " ");
        keyway_api::manifest::Manifests::parse(&clean, &|_| None)
            .and_then(|m| m.resolve().map(|_| ()))
            .unwrap_or_else(|e| panic!("{what} without CR/LF is valid: {e:?}"));
        let parsed = keyway_api::manifest::Manifests::parse(yaml, &|_| None)
            .and_then(|m| m.resolve().map(|_| ()));
        let errors = parsed.expect_err(what);
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!(errors[0].field, field, "{what}: {errors:?}");
        assert!(
            errors[0].message.contains("control characters"),
            "{what}: {errors:?}"
        );
        for text in [format!("{errors:?}"), errors[0].to_string()] {
            assert!(
                !text.contains("x-injected"),
                "{what}: the value is not echoed: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_never_cuts_a_long_stream_or_a_slow_upstream() {
    let before = panics();
    let up = MockUpstream::start("a").await.unwrap();
    // 1.5 s of stream and a 1.2 s late answer, with a 400 ms header timeout.
    up.set_stream(6, Duration::from_millis(300));
    let p = start(
        &up.url(),
        Limits {
            header_read_timeout: Duration::from_millis(400),
            ..limits()
        },
    )
    .await;
    let url = format!("http://{}", p.addr);
    let (got, errored) = tokio::time::timeout(T, support::stream_chat(&url, None))
        .await
        .unwrap();
    assert!(!errored, "{}", String::from_utf8_lossy(&got));
    assert!(String::from_utf8_lossy(&got).contains("[DONE]"));
    up.fail_next(
        1,
        keyway_testkit::Behavior::Delay(Duration::from_millis(1200)),
    );
    let r = tokio::time::timeout(T, chat(&url, &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(panics(), before);
}
