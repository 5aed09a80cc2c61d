//! Data-plane behaviour through the real proxy against mock upstreams on loopback: strategies,
//! health-driven failover and evacuation, retries, streaming, timeouts, HTTP/2, routing.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keyway_testkit::client::{chat, get, send};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use std::time::{Duration, Instant};
use support::FileProxy;

fn pool(extra_spec: &str, backends: &[(&str, &str, &str)]) -> String {
    let list: String = backends
        .iter()
        .map(|(name, url, more)| format!("    - {{name: {name}, endpoint: \"{url}\"{more}}}\n"))
        .collect();
    format!(
        "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: p}}\nspec:\n{extra_spec}  backends:\n{list}"
    )
}

fn served_by(r: &keyway_testkit::client::Reply) -> String {
    r.header("x-mock-upstream").unwrap_or("none").to_string()
}

#[tokio::test]
async fn weighted_round_robin_honours_weights_smoothly() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = pool(
        "  strategy: weightedRoundRobin\n",
        &[
            ("a", &a.url(), ", weight: 1"),
            ("b", &b.url(), ", weight: 3"),
        ],
    );
    let p = FileProxy::start(&yaml).await;
    let mut seq = String::new();
    for _ in 0..20 {
        let r = get(&format!("{}/v1/models", p.url())).await.unwrap();
        seq.push_str(&served_by(&r));
    }
    assert_eq!(a.request_count(), 5, "{seq}");
    assert_eq!(b.request_count(), 15, "{seq}");
    assert!(
        !seq.contains("aa"),
        "smooth: the light backend never goes twice in a row: {seq}"
    );
    assert!(
        !seq.contains("bbbb"),
        "smooth: no burst longer than the weight: {seq}"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_users_in_place_when_another_backend_leaves() {
    let ups = [
        MockUpstream::start("a").await.unwrap(),
        MockUpstream::start("b").await.unwrap(),
        MockUpstream::start("c").await.unwrap(),
    ];
    let all: Vec<(&str, String, &str)> = ["a", "b", "c"]
        .iter()
        .zip(&ups)
        .map(|(n, u)| (*n, u.url(), ""))
        .collect();
    let spec = "  strategy: consistentHash\n  consistentHash: {header: user-id, loadFactor: 10}\n";
    let with = |skip: Option<&str>| {
        let v: Vec<(&str, &str, &str)> = all
            .iter()
            .filter(|(n, _, _)| Some(*n) != skip)
            .map(|(n, u, m)| (*n, u.as_str(), *m))
            .collect();
        pool(spec, &v)
    };
    let p = FileProxy::start(&with(None)).await;
    let url = format!("{}/v1/models", p.url());
    let mut placement = std::collections::HashMap::new();
    for user in 0..60 {
        let id = format!("user-{user}");
        let r = send(http::Method::GET, &url, &[("user-id", &id)], Bytes::new())
            .await
            .unwrap();
        placement.insert(id, served_by(&r));
    }
    // Sticky.
    for (id, backend) in placement.iter().take(10) {
        let r = send(http::Method::GET, &url, &[("user-id", id)], Bytes::new())
            .await
            .unwrap();
        assert_eq!(&served_by(&r), backend);
    }
    // Backend c leaves: users of a and b stay where they were; only c's users move.
    p.rewrite(&with(Some("c")));
    eventually(
        Duration::from_secs(5),
        "config without c applied",
        || async {
            get(&format!("{}/status", p.admin())).await.unwrap().json()["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.len() == 2)
        },
    )
    .await;
    let mut moved = 0;
    for (id, before) in &placement {
        let r = send(http::Method::GET, &url, &[("user-id", id)], Bytes::new())
            .await
            .unwrap();
        let now = served_by(&r);
        if before == "c" {
            assert_ne!(now, "c");
            moved += 1;
        } else {
            assert_eq!(&now, before, "{id} moved although its backend stayed");
        }
    }
    assert!(moved > 0, "some users were on c");
}

const FAILOVER: &str = "  mode: failover\n  healthCheck: {path: /v1/models, intervalSeconds: 1, timeoutSeconds: 1, failThreshold: 2, successThreshold: 2}\n";

#[tokio::test]
async fn failover_follows_health_checks_and_fails_back() {
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let yaml = pool(
        FAILOVER,
        &[
            ("primary", &primary.url(), ", role: primary"),
            ("secondary", &secondary.url(), ", role: secondary"),
        ],
    );
    let p = FileProxy::start(&yaml).await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(served_by(&r), "primary");

    primary.set_behavior(Behavior::status(503));
    let probes_before = primary
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/models")
        .count();
    let status = format!("{}/status", p.admin());
    eventually(
        Duration::from_secs(10),
        "failover to the secondary",
        || async { get(&status).await.unwrap().json()["pools"][0]["activeBackend"] == "secondary" },
    )
    .await;
    let failed_probes = primary
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/models")
        .count()
        - probes_before;
    assert!(
        (2..=3).contains(&failed_probes),
        "switched after failThreshold=2 failed probes (one more may be in flight), saw {failed_probes}"
    );
    // Traffic follows, and the proxy answers with the secondary's 200 (no 503 leaks through).
    let primary_chats = primary
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    for _ in 0..5 {
        let r = chat(&p.url(), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(served_by(&r), "secondary");
    }
    assert_eq!(
        primary
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        primary_chats
    );

    primary.set_behavior(Behavior::Normal);
    eventually(
        Duration::from_secs(10),
        "failback to the primary",
        || async { get(&status).await.unwrap().json()["pools"][0]["activeBackend"] == "primary" },
    )
    .await;
    assert_eq!(served_by(&chat(&p.url(), &[]).await.unwrap()), "primary");
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains(r#"keyway_proxy_failovers_total{pool="default/p",to="secondary"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keyway_proxy_failovers_total{pool="default/p",to="primary"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn evacuate_primary_toggles_through_a_config_change() {
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let backends = [
        ("primary", primary.url(), ", role: primary"),
        ("secondary", secondary.url(), ", role: secondary"),
    ];
    let b: Vec<(&str, &str, &str)> = backends
        .iter()
        .map(|(n, u, m)| (*n, u.as_str(), *m))
        .collect();
    let off = pool(FAILOVER, &b);
    let on = pool(&format!("{FAILOVER}  evacuatePrimary: true\n"), &b);
    let p = FileProxy::start(&off).await;
    assert_eq!(served_by(&chat(&p.url(), &[]).await.unwrap()), "primary");

    p.rewrite(&on);
    eventually(
        Duration::from_secs(5),
        "evacuated to the secondary",
        || async { served_by(&chat(&p.url(), &[]).await.unwrap()) == "secondary" },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(served_by(&chat(&p.url(), &[]).await.unwrap()), "secondary");
    }

    // Evacuation never sends traffic to an unhealthy secondary: it stays on the primary.
    secondary.set_behavior(Behavior::status(503));
    eventually(
        Duration::from_secs(10),
        "secondary unhealthy, primary serves",
        || async {
            get(&format!("{}/status", p.admin())).await.unwrap().json()["pools"][0]["activeBackend"]
                == "primary"
        },
    )
    .await;
    secondary.set_behavior(Behavior::Normal);

    p.rewrite(&off);
    eventually(Duration::from_secs(10), "back on the primary", || async {
        served_by(&chat(&p.url(), &[]).await.unwrap()) == "primary"
    })
    .await;
}

#[tokio::test]
async fn retries_replay_the_body_on_another_backend() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = pool("", &[("a", &a.url(), ""), ("b", &b.url(), "")]);
    let p = FileProxy::start(&yaml).await;
    a.fail_next(10, Behavior::status(503));
    b.fail_next(10, Behavior::status(503));
    // Both fail: the client gets the upstream's 503 after one retry, not a hang.
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 503);
    a.reset();
    b.reset();

    // a always answers 502: the request that lands there first is replayed on b.
    a.set_behavior(Behavior::status(502));
    let body = r#"{"model":"m","messages":[{"role":"user","content":"replay me"}]}"#;
    for _ in 0..2 {
        let r = send(
            http::Method::POST,
            &format!("{}/v1/chat/completions", p.url()),
            &[("content-type", "application/json")],
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(served_by(&r), "b");
    }
    assert!(a.request_count() >= 1, "a was tried");
    assert_eq!(b.request_count(), 2, "every request ended on b");
    let bodies: Vec<String> = a
        .requests()
        .iter()
        .chain(b.requests().iter())
        .map(|r| r.body_text())
        .collect();
    assert!(
        bodies.iter().all(|b| b == body),
        "the body was replayed intact"
    );
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains(r#"keyway_proxy_retries_total{pool="default/p",reason="status"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn connect_errors_retry_and_large_bodies_are_not_replayed() {
    let a = MockUpstream::start("a").await.unwrap();
    let dead = format!("http://127.0.0.1:{}", keyway_testkit::free_port());
    let yaml = pool(
        "  retry: {maxRetries: 1, bufferBytes: 150}\n",
        &[("dead", &dead, ""), ("a", &a.url(), "")],
    );
    let p = FileProxy::start(&yaml).await;
    for _ in 0..4 {
        let r = chat(&p.url(), &[]).await.unwrap();
        assert_eq!(r.status, 200, "connect errors fail over: {}", r.text());
    }
    // A body over bufferBytes streams through once; to the dead backend that is a 502.
    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(200));
    let mut statuses = vec![];
    for _ in 0..2 {
        let r = send(
            http::Method::POST,
            &format!("{}/v1/chat/completions", p.url()),
            &[],
            big.clone(),
        )
        .await
        .unwrap();
        statuses.push(r.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert!(
        a.requests().iter().any(|r| r.body_text() == big),
        "streamed bodies arrive intact"
    );
}

/// Reads a response frame by frame, returning each data chunk with its arrival time.
async fn frames(url: &str, body: &str) -> (http::StatusCode, Vec<(Instant, Bytes)>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut out = vec![];
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    out.push((Instant::now(), d));
                }
            }
            Err(_) => break,
        }
    }
    (status, out)
}

const STREAM_REQ: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// An upstream that answers `POST /v1/chat/completions` with an SSE stream whose events it
/// sends one at a time, each only when the test says so (`go`): `events` events, then
/// `data: [DONE]` on the last `go`. Anything else gets a 404.
async fn gated_sse_upstream(events: usize) -> (String, tokio::sync::mpsc::UnboundedSender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (go, gate) = tokio::sync::mpsc::unbounded_channel::<()>();
    let gate = std::sync::Arc::new(tokio::sync::Mutex::new(gate));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.starts_with("post /v1/chat/completions") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let mut gate = gate.lock().await;
                for i in 0..=events {
                    if gate.recv().await.is_none() {
                        return;
                    }
                    let event = if i < events {
                        format!("data: {{\"event\":{i}}}\n\n")
                    } else {
                        "data: [DONE]\n\n".to_string()
                    };
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (url, go)
}

/// Each SSE event reaches the client on its own, before the upstream sends the next: the
/// upstream sends event k+1 only after the client got event k, so a proxy that held events
/// back (buffering the body, or batching) would never deliver and the read would time out.
/// No wall-clock window is involved.
#[tokio::test]
async fn sse_chunks_pass_through_one_by_one_without_buffering() {
    const EVENTS: usize = 5;
    let (upstream, go) = gated_sse_upstream(EVENTS).await;
    let p = FileProxy::start(&pool("", &[("a", &upstream, "")])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{}/v1/chat/completions", p.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(STREAM_REQ)))
        .unwrap();
    // The head comes before any event: the proxy does not wait for the body either.
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response head before the first event")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = String::new();
    for i in 0..=EVENTS {
        go.send(()).unwrap();
        let want = if i < EVENTS {
            format!("data: {{\"event\":{i}}}\n\n")
        } else {
            "data: [DONE]\n\n".to_string()
        };
        while !got.contains(&want) {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} held back; got so far: {got:?}"))
                .expect("the stream ended early")
                .unwrap();
            if let Ok(d) = frame.into_data() {
                got.push_str(&String::from_utf8_lossy(&d));
            }
        }
    }
    assert!(body.frame().await.is_none_or(|f| f.is_ok()), "a clean end");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let a = MockUpstream::start("a").await.unwrap();
    a.set_stream(50, Duration::from_millis(100));
    let p = FileProxy::start(&pool("", &[("a", &a.url(), "")])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{}/v1/chat/completions", p.url()))
        .body(Full::new(Bytes::from(STREAM_REQ)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    drop(client);
    eventually(
        Duration::from_secs(3),
        "upstream stream cancelled",
        || async { a.streams_cancelled() == 1 },
    )
    .await;
    let metrics = format!("{}/metrics", p.admin());
    eventually(Duration::from_secs(3), "nothing left in flight", || async {
        get(&metrics)
            .await
            .unwrap()
            .text()
            .contains("keyway_proxy_requests_in_flight 0")
    })
    .await;
}

#[tokio::test]
async fn no_retry_once_the_response_started_and_idle_streams_are_cut() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    // Events 5 s apart: a cut long before the second event is the 300 ms idle timeout.
    a.set_stream(5, Duration::from_secs(5));
    b.set_stream(5, Duration::from_secs(5));
    let yaml = pool(
        "  timeouts: {idleStream: 300ms}\n",
        &[("a", &a.url(), ""), ("b", &b.url(), "")],
    );
    let p = FileProxy::start(&yaml).await;
    let started = Instant::now();
    let (status, chunks) = frames(&format!("{}/v1/chat/completions", p.url()), STREAM_REQ).await;
    assert_eq!(status, 200);
    assert_eq!(
        chunks.len(),
        1,
        "the first chunk arrived, then the stream was cut"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut by the idle timeout, not the upstream"
    );
    assert_eq!(
        a.request_count() + b.request_count(),
        1,
        "never retried after the response started"
    );
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains(r#"keyway_proxy_stream_errors_total{pool="default/p"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_h2c() {
    let a = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&pool("", &[("a", &a.url(), ", protocol: http2")])).await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(a.requests()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn model_routes_pick_the_pool_from_the_json_body() {
    let openai = MockUpstream::start("openai").await.unwrap();
    let anthropic = MockUpstream::start("anthropic").await.unwrap();
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: openai}}
spec:
  routes: [{{model: "gpt-*"}}]
  backends: [{{name: a, endpoint: "{}"}}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: anthropic}}
spec:
  routes: [{{model: "claude-*"}}]
  backends: [{{name: a, endpoint: "{}"}}]
"#,
        openai.url(),
        anthropic.url()
    );
    let p = FileProxy::start(&yaml).await;
    let url = format!("{}/v1/chat/completions", p.url());
    let ask = |model: &str| format!(r#"{{"model":"{model}","messages":[]}}"#);
    let r = send(http::Method::POST, &url, &[], ask("claude-3-5-sonnet"))
        .await
        .unwrap();
    assert_eq!(served_by(&r), "anthropic");
    assert_eq!(
        anthropic.requests()[0].body_text(),
        ask("claude-3-5-sonnet"),
        "the peeked body is forwarded intact"
    );
    let r = send(http::Method::POST, &url, &[], ask("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(served_by(&r), "openai");
    let r = send(http::Method::POST, &url, &[], ask("llama-3"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "no_route");
}

#[tokio::test]
async fn passive_outlier_detection_ejects_a_failing_backend() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = pool(
        "  retry: {maxRetries: 0}\n  outlierDetection: {consecutiveFailures: 2, baseEjectionSeconds: 30}\n",
        &[("a", &a.url(), ""), ("b", &b.url(), "")],
    );
    let p = FileProxy::start(&yaml).await;
    a.set_behavior(Behavior::status(500));
    let mut failures = 0;
    for _ in 0..20 {
        if chat(&p.url(), &[]).await.unwrap().status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "a is ejected after two consecutive 5xx");
    let status = get(&format!("{}/status", p.admin())).await.unwrap().json();
    assert_eq!(status["pools"][0]["backends"][0]["ejected"], true);

    // The last healthy backend is never ejected: with b failing too, traffic still flows.
    b.set_behavior(Behavior::status(500));
    for _ in 0..6 {
        assert_eq!(
            chat(&p.url(), &[]).await.unwrap().status,
            500,
            "answered, not refused"
        );
    }
}

#[tokio::test]
async fn overhead_header_and_tls_listener() {
    use std::io::Write;
    let a = MockUpstream::start("a").await.unwrap();
    // The TLS listener is exercised with a self-signed certificate made by openssl.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let file = dir.path().join("keyway.yaml");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(pool("", &[("a", &a.url(), "")]).as_bytes())
        .unwrap();
    let mut settings = support::settings(keyway_proxy::Source::File {
        path: file,
        reload_interval: Duration::from_secs(1),
    });
    settings.tls = Some((cert.clone(), key));
    settings.forwarder.overhead_header = true;
    let proxy = keyway_proxy::start(settings, prometheus::Registry::new())
        .await
        .unwrap();

    // The upstream takes 300 ms: time Keyway waits, which its overhead must not include.
    const UPSTREAM_MS: f64 = 300.0;
    a.set_behavior(Behavior::Delay(Duration::from_millis(UPSTREAM_MS as u64)));
    // curl runs as a child process; a blocking wait would stall this single-threaded runtime.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "\ntimes %{time_appconnect} %{time_total}\n",
            "--cacert",
        ])
        .arg(&cert)
        .arg(format!("https://localhost:{}/v1/models", proxy.addr.port()))
        .output()
        .await
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.starts_with("http/2 200"),
        "h2 over TLS by ALPN: {headers}"
    );
    let overhead: f64 = headers
        .lines()
        .find_map(|l| l.strip_prefix("x-keyway-overhead-ms: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // What curl measured after the TLS handshake is the request's whole exchange: Keyway's
    // overhead plus the upstream's 300 ms (plus loopback). An overhead that counted the
    // upstream's time would exceed what is left after taking those 300 ms off.
    let (handshake, total): (f64, f64) = headers
        .lines()
        .find_map(|l| {
            let mut t = l.strip_prefix("times ")?.split(' ');
            Some((t.next()?.parse().ok()?, t.next()?.parse().ok()?))
        })
        .expect("curl's -w times");
    let exchange_ms = (total - handshake) * 1000.0;
    assert!(exchange_ms >= UPSTREAM_MS, "{exchange_ms} ms");
    assert!(
        (0.0..=exchange_ms - UPSTREAM_MS + 1.0).contains(&overhead),
        "overhead {overhead} ms of a {exchange_ms} ms exchange with a {UPSTREAM_MS} ms upstream"
    );
    assert_eq!(a.requests()[0].header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn sse_keep_alive_comments_fill_a_long_wait_for_the_first_token() {
    let a = MockUpstream::start("a").await.unwrap();
    // Headers and the first event come at once; then 700 ms of silence before each next one.
    a.set_stream(2, Duration::from_millis(700));
    let p = FileProxy::start(&pool("  sseKeepAlive: 200ms\n", &[("a", &a.url(), "")])).await;
    let (status, chunks) = frames(&format!("{}/v1/chat/completions", p.url()), STREAM_REQ).await;
    assert_eq!(status, 200);
    let text: String = chunks
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    let comments = text.matches(": keep-alive\n\n").count();
    assert!(
        comments >= 2,
        "keep-alive comments were sent during the silence: {text}"
    );
    // Every event survives intact and in order.
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data:"))
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    assert_eq!(events.len(), 3, "2 content events + [DONE]: {text}");
}
