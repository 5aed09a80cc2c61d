//! Control-plane faults and secret hygiene against the real API server (docs/reliability.md):
//!
//! - the controller killed and restarted while the proxy serves load: zero failed requests,
//!   and the proxy ACKs the new controller's snapshot;
//! - the proxy-controller stream partitioned without a FIN (a TCP relay that starts dropping
//!   every byte): zero failed requests, the proxy's HTTP/2 keepalive notices and it
//!   reconnects;
//! - a full flow (pools, keys, a revoked key, a 429, status, events) after which no key value
//!   appears in any log line, status, event, `/metrics`, `/status` or response header.
//!
//! The API server stopping and restarting is `apiserver_outage.rs`.

use keyway_e2e::cluster::TestNamespace;
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, random_hex, wait_for};
use keyway_testkit::Behavior;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn manifests(upstream: &str, keys: &[(&str, &str)]) -> String {
    Manifests::new()
        .secret("keys", keys)
        .key_pool("keys", "keys")
        .pool("llm", "keys")
        .backend("a", upstream)
        .yaml()
}

/// Sum of a metric's series (lines starting with `name{` or `name `) containing every label
/// fragment.
async fn metric(http: &HttpClient, admin: &str, name: &str, labels: &[&str]) -> f64 {
    let Ok(r) = http.get(&format!("{admin}/metrics")).await else {
        return -1.0;
    };
    keyway_testkit::metrics::sum(&r.text(), name, labels)
}

/// Patches the pool (`strategy: leastRequest`) and waits until the proxy serves the change:
/// proof that the proxy's current control-plane stream carries config.
async fn a_patch_reaches_the_proxy(ns: &TestNamespace, http: &HttpClient, proxy: &Proxy) {
    ns.kubectl_ok(&[
        "patch",
        "lbp",
        "llm",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":"leastRequest"}}"#,
    ])
    .await;
    wait_for(
        Duration::from_secs(15),
        "patch reaches the proxy",
        || async {
            let s = http
                .get(&format!("{}/status", proxy.admin_url))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .map_err(|e| e.to_string())?;
            if s["pools"][0]["strategy"] == "leastRequest" {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
}

/// Client load on the proxy until stopped: (sent, answered 200, first failure).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize, Option<String>)>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let sent = Arc::new(AtomicUsize::new(0));
            let ok = Arc::new(AtomicUsize::new(0));
            let first_failure = Arc::new(std::sync::Mutex::new(None));
            let mut handles = Vec::new();
            for _ in 0..workers {
                let (url, s, sent, ok, ff) = (
                    url.clone(),
                    s.clone(),
                    sent.clone(),
                    ok.clone(),
                    first_failure.clone(),
                );
                handles.push(tokio::spawn(async move {
                    let http = HttpClient::new();
                    while !s.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        match http.post_json(&url, &chat_request("m", "hi")).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let msg = match other {
                                    Ok(r) => format!("HTTP {}: {}", r.status, r.text()),
                                    Err(e) => format!("{e:#}"),
                                };
                                ff.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get_or_insert(msg);
                            }
                        }
                    }
                }));
            }
            for h in handles {
                let _ = h.await;
            }
            let first = first_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            (
                sent.load(Ordering::Relaxed),
                ok.load(Ordering::Relaxed),
                first,
            )
        });
        Load { stop, task }
    }

    async fn stop(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

async fn wait_requests(upstream: &MockUpstream, more: usize, what: &str) {
    let from = upstream.request_count();
    wait_for(Duration::from_secs(30), what, || async {
        let n = upstream.request_count();
        if n >= from + more {
            Ok(())
        } else {
            Err(format!("{} more requests so far", n - from))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_and_restarted_under_load_fails_no_request_and_the_proxy_resyncs() {
    let mut t = Timings::new("controller_restart");
    let cluster = cluster().await;
    let ns = cluster.namespace("rel-restart").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    ns.apply(&manifests(
        &upstream.url(),
        &[("key-a", "sk-e2e-restart-a")],
    ))
    .await;
    let mut controller = Controller::start(cluster, Some(ns.name())).await;
    let proxy = Proxy::start(&controller, ns.name(), &[]).await;
    let http = HttpClient::new();
    let load = Load::start(format!("{}/v1/chat/completions", proxy.url), 4);
    wait_requests(&upstream, 50, "load flows").await;
    t.phase("ready, load flowing");

    controller.process.kill().await;
    wait_requests(&upstream, 100, "load goes on with the controller dead").await;
    wait_for(
        Duration::from_secs(10),
        "proxy sees the controller gone",
        || async {
            match metric(
                &http,
                &proxy.admin_url,
                "keyway_proxy_controller_connected",
                &[],
            )
            .await
            {
                0.0 => Ok(()),
                v => Err(format!("connected={v}")),
            }
        },
    )
    .await;
    t.phase("controller killed");

    let restarted = Instant::now();
    let controller = Controller::restart(cluster, Some(ns.name()), &controller).await;
    wait_for(
        Duration::from_secs(20),
        "the proxy ACKs the new controller's snapshot",
        || async {
            let acks = metric(
                &http,
                &controller.admin_url,
                "keyway_controller_snapshot_replies_total",
                &[r#"result="ack""#],
            )
            .await;
            let connected = metric(
                &http,
                &proxy.admin_url,
                "keyway_proxy_controller_connected",
                &[],
            )
            .await;
            if acks >= 1.0 && connected == 1.0 {
                Ok(())
            } else {
                Err(format!("acks={acks} connected={connected}"))
            }
        },
    )
    .await;
    let resynced = restarted.elapsed();
    // The new controller's config is live: a change made now reaches the proxy.
    a_patch_reaches_the_proxy(&ns, &http, &proxy).await;
    wait_requests(&upstream, 50, "load goes on after the resync").await;
    let (sent, ok, first) = load.stop().await;
    assert_eq!(ok, sent, "zero failed requests; first failure: {first:?}");
    eprintln!(
        "[e2e measurement] controller kill -9 + restart under load: {sent} requests, {ok} ok; proxy resynced (ACK) {resynced:?} after the restart began"
    );
    t.phase("restarted, resynced");
    t.total();
}

/// A TCP relay whose existing connections can be turned into a black hole: bytes in both
/// directions are read and dropped, nothing is closed (no FIN, no RST), like a partition.
/// Connections opened afterwards are relayed normally.
struct Relay {
    addr: std::net::SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let conns: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Default::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (c, a) = (conns.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(false));
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone()));
                tokio::spawn(pipe(sr, cw, frozen));
            }
        });
        Relay {
            addr,
            conns,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn blackhole_existing(&self) {
        for f in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            f.store(true, Ordering::SeqCst);
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue; // dropped on the floor
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if !frozen.load(Ordering::SeqCst) {
        let _ = to.shutdown().await;
    } else {
        // A partition sends no FIN: hold the socket open until the test ends.
        std::mem::forget(to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_to_the_controller_fails_no_request_and_the_proxy_reconnects() {
    let mut t = Timings::new("partition");
    let cluster = cluster().await;
    let ns = cluster.namespace("rel-partition").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    ns.apply(&manifests(&upstream.url(), &[("key-a", "sk-e2e-part-a")]))
        .await;
    let mut controller = Controller::start(cluster, Some(ns.name())).await;
    let relay = Relay::start(
        controller
            .grpc_url
            .trim_start_matches("http://")
            .to_string(),
    )
    .await;
    // The proxy dials the relay, not the controller.
    let direct = std::mem::replace(&mut controller.grpc_url, relay.url());
    let proxy = Proxy::start(&controller, ns.name(), &[]).await;
    controller.grpc_url = direct;
    assert_eq!(relay.accepted(), 1);
    let http = HttpClient::new();
    let load = Load::start(format!("{}/v1/chat/completions", proxy.url), 4);
    wait_requests(&upstream, 50, "load flows").await;
    t.phase("ready through the relay, load flowing");

    let cut = Instant::now();
    relay.blackhole_existing();
    wait_for(
        Duration::from_secs(40),
        "the proxy notices the silent stream and reconnects",
        || async {
            if relay.accepted() >= 2 {
                Ok(())
            } else {
                Err(format!("{} relay connections", relay.accepted()))
            }
        },
    )
    .await;
    let detected = cut.elapsed();
    wait_for(
        Duration::from_secs(15),
        "the proxy is connected again",
        || async {
            match metric(
                &http,
                &proxy.admin_url,
                "keyway_proxy_controller_connected",
                &[],
            )
            .await
            {
                1.0 => Ok(()),
                v => Err(format!("connected={v}")),
            }
        },
    )
    .await;
    t.phase("partition detected, reconnected");
    // The new stream carries config: a change reaches the proxy.
    a_patch_reaches_the_proxy(&ns, &http, &proxy).await;
    let (sent, ok, first) = load.stop().await;
    assert_eq!(ok, sent, "zero failed requests; first failure: {first:?}");
    assert!(
        detected < Duration::from_secs(25),
        "keepalive (10 s interval + 5 s timeout) detects the partition: {detected:?}"
    );
    eprintln!(
        "[e2e measurement] silent partition: detected and reconnected after {detected:?}; {sent} requests, {ok} ok"
    );
    t.total();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_value_appears_in_logs_status_events_metrics_or_headers() {
    let mut t = Timings::new("secret_hygiene");
    let cluster = cluster().await;
    let ns = cluster.namespace("rel-secrets").await;
    let upstream = MockUpstream::start("a").await.expect("mock");
    upstream.set_stream(3, Duration::ZERO);
    let keys: Vec<(String, String)> = ["key-ok", "key-revoked", "key-limited"]
        .iter()
        .map(|id| (id.to_string(), format!("sk-hygiene-{}", random_hex(24))))
        .collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    upstream.set_key_behavior(&keys[1].1, Some(Behavior::status(401)));
    upstream.set_key_behavior(&keys[2].1, Some(Behavior::rate_limited(2)));
    ns.apply(&manifests(&upstream.url(), &key_refs)).await;
    let mut controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--status-counter-interval-seconds", "1"],
    )
    .await;
    let mut proxy = Proxy::start(
        &controller,
        ns.name(),
        &[
            "--report-interval",
            "200ms",
            "--expose-headers",
            "true",
            "--overhead-header",
        ],
    )
    .await;
    t.phase("ready");

    // Traffic: JSON and SSE; the revoked and the rate-limited keys are refused upstream and
    // the requests are served by the remaining key.
    let http = HttpClient::new();
    let url = format!("{}/v1/chat/completions", proxy.url);
    let mut headers = String::new();
    for i in 0..20 {
        let mut body = chat_request("m", "hi there");
        if i % 2 == 1 {
            body["stream"] = serde_json::json!(true);
        }
        let r = http.post_json(&url, &body).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        for (k, v) in &r.headers {
            headers.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
    }
    // A request the proxy refuses itself (no route) and one with the client's own bogus key.
    for (path, auth) in [
        ("/nowhere", "Bearer sk-client-own"),
        ("/v1/models", "Bearer x"),
    ] {
        let r = http
            .send(
                http::Method::GET,
                &format!("{}{path}", proxy.url),
                &[("authorization", auth)],
                bytes::Bytes::new(),
            )
            .await
            .expect("request");
        for (k, v) in &r.headers {
            headers.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
    }
    t.phase("traffic");

    let ns_name = ns.name().to_string();
    wait_for(
        Duration::from_secs(20),
        "status shows the revoked key and a KeyDisabled event exists",
        || async {
            let akp = cluster
                .kubectl_ok(&["get", "akp", "keys", "-n", &ns_name, "-o", "yaml"])
                .await;
            let events = cluster
                .kubectl_ok(&["get", "events", "-n", &ns_name, "-o", "yaml"])
                .await;
            if akp.contains("disabled") && events.contains("KeyDisabled") {
                Ok(())
            } else {
                Err(akp)
            }
        },
    )
    .await;
    t.phase("status and events written");

    let mut evidence = vec![
        ("response headers", headers),
        (
            "kubectl get lbp,akp,events -o yaml",
            cluster
                .kubectl_ok(&["get", "lbp,akp,events", "-n", ns.name(), "-o", "yaml"])
                .await,
        ),
    ];
    for (what, url) in [
        ("proxy /metrics", format!("{}/metrics", proxy.admin_url)),
        ("proxy /status", format!("{}/status", proxy.admin_url)),
        (
            "controller /metrics",
            format!("{}/metrics", controller.admin_url),
        ),
    ] {
        let body = http.get(&url).await.expect("admin endpoint").text();
        assert!(!body.is_empty(), "{what} is empty");
        evidence.push((what, body));
    }
    proxy.process.kill().await;
    controller.process.kill().await;
    evidence.push(("proxy logs", proxy.process.logs()));
    evidence.push(("controller logs", controller.process.logs()));
    let mut checked = 0;
    for (what, text) in &evidence {
        for (id, value) in &keys {
            // The whole value, and its random part alone (in case of a prefix being cut).
            let random = value.trim_start_matches("sk-hygiene-");
            assert!(
                !text.contains(value.as_str()) && !text.contains(random),
                "the value of {id} appears in {what}"
            );
        }
        checked += text.lines().count();
    }
    // The logs were written at debug level and do mention the keys by id.
    let logs = &evidence
        .iter()
        .find(|(w, _)| *w == "proxy logs")
        .expect("logs")
        .1;
    assert!(logs.contains("key-revoked"), "the proxy logs name key ids");
    eprintln!(
        "[e2e measurement] secret hygiene: {checked} lines of logs, status, events, metrics and headers checked; no key value found"
    );
    t.total();
}
