//! The real `keyway-proxy` binary as a process: graceful shutdown on SIGTERM with requests
//! and a long SSE stream in flight, and a soak run that samples its RSS and open file
//! descriptors from `/proc` under mixed traffic.
//!
//! Needs the binaries built (`make test` runs `cargo build --workspace --bins` first).
//! `KEYWAY_SOAK_SECS` sets the soak duration (default 45 s).

mod support;

use keyway_testkit::client::{chat, get};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use std::time::{Duration, Instant};
use support::{Load, ProxyProcess, summary};

const T: Duration = Duration::from_secs(15);

fn yaml(backends: &[(&str, String)], keys: &[(&str, &str)]) -> String {
    let entries: String = keys
        .iter()
        .map(|(k, v)| format!("  {k}: \"{v}\"\n"))
        .collect();
    let backends: String = backends
        .iter()
        .map(|(n, u)| format!("    - {{name: {n}, endpoint: \"{u}\"}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: k, labels: {{keyway.dev/api-keys: \"true\"}}}}\nstringData:\n{entries}---\n\
         apiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata: {{name: keys}}\n\
         spec: {{secretRef: {{name: k}}}}\n---\n\
         apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: llm}}\n\
         spec:\n  apiKeyPoolRef: {{name: keys}}\n  retry: {{maxRetries: 1}}\n  backends:\n{backends}"
    )
}

async fn status_code(url: &str) -> Option<u16> {
    match tokio::time::timeout(Duration::from_secs(2), get(url)).await {
        Ok(Ok(r)) => Some(r.status.as_u16()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_then_drains_in_flight_requests_and_exits_zero() {
    let up = MockUpstream::start("a").await.unwrap();
    // A 3 s stream: 15 chunks 200 ms apart.
    up.set_stream(15, Duration::from_millis(200));
    let mut p = ProxyProcess::start(
        &yaml(&[("a", up.url())], &[("key-a", "sk-proc-aaaa")]),
        &["--drain-timeout", "10s", "--shutdown-delay", "1s"],
    )
    .await;
    assert_eq!(status_code(&format!("{}/readyz", p.admin)).await, Some(200));

    // In flight at SIGTERM: a long SSE stream and a JSON request the upstream answers late.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let url = p.url.clone();
    let stream = tokio::spawn(async move { support::stream_chat(&url, Some(first_tx)).await });
    tokio::time::timeout(T, first_rx)
        .await
        .expect("stream started")
        .unwrap();
    up.fail_next(1, Behavior::Delay(Duration::from_secs(2)));
    let url = p.url.clone();
    let slow = tokio::spawn(async move { chat(&url, &[]).await });
    eventually(T, "the slow request reached the upstream", || async {
        up.request_count() >= 2
    })
    .await;

    let signalled = Instant::now();
    p.signal("TERM");
    // 1. Readiness fails while the listener still accepts (the shutdown delay).
    let mut not_ready_at = None;
    let mut refused_at = None;
    let traffic_addr = p.url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + T;
    while refused_at.is_none() && Instant::now() < deadline {
        if not_ready_at.is_none() && status_code(&format!("{}/readyz", p.admin)).await == Some(503)
        {
            not_ready_at = Some(signalled.elapsed());
        }
        if tokio::net::TcpStream::connect(&traffic_addr).await.is_err() {
            refused_at = Some(signalled.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let not_ready_at = not_ready_at.expect("/readyz turned 503 after SIGTERM");
    let refused_at = refused_at.expect("the traffic listener closed");
    assert!(
        not_ready_at < refused_at,
        "readiness fails ({not_ready_at:?}) before the listener closes ({refused_at:?})"
    );
    assert!(
        refused_at >= Duration::from_millis(900),
        "the listener stays open for --shutdown-delay: {refused_at:?}"
    );

    // 2. In-flight work completes.
    let (got, errored) = tokio::time::timeout(T, stream).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        !errored && text.contains("[DONE]"),
        "the stream finished: {text}"
    );
    let r = tokio::time::timeout(T, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // 3. Clean exit.
    let status = tokio::time::timeout(T, p.child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    let exited_at = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    eprintln!(
        "[lifecycle] SIGTERM: /readyz 503 after {not_ready_at:?}, listener closed after {refused_at:?}, exit 0 after {exited_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_drain_timeout_is_cut_and_the_process_still_exits_zero() {
    let up = MockUpstream::start("a").await.unwrap();
    // 30 s of stream; the drain allows 1 s.
    up.set_stream(100, Duration::from_millis(300));
    let mut p = ProxyProcess::start(
        &yaml(&[("a", up.url())], &[("key-a", "sk-proc-aaaa")]),
        &["--drain-timeout", "1s"],
    )
    .await;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let url = p.url.clone();
    let stream = tokio::spawn(async move { support::stream_chat(&url, Some(first_tx)).await });
    tokio::time::timeout(T, first_rx).await.unwrap().unwrap();
    let signalled = Instant::now();
    p.signal("TERM");
    let status = tokio::time::timeout(T, p.child.wait())
        .await
        .expect("exits")
        .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    // Not before the 1 s drain timeout; and long before the stream would have ended (30 s),
    // with room for a loaded machine.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "exit after the drain timeout: {took:?}"
    );
    let (got, _) = tokio::time::timeout(T, stream)
        .await
        .expect("the client's stream ends, it does not hang")
        .unwrap();
    assert!(!String::from_utf8_lossy(&got).contains("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_keeps_memory_and_file_descriptors_flat() {
    let secs: u64 = std::env::var("KEYWAY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    for up in [&a, &b] {
        up.set_stream(5, Duration::from_millis(5));
        // key-c is rate limited on every use: it cools down and comes back, over and over.
        up.set_key_behavior("sk-soak-cccc", Some(Behavior::rate_limited(1)));
    }
    let p = ProxyProcess::start(
        &yaml(
            &[("a", a.url()), ("b", b.url())],
            &[
                ("key-a", "sk-soak-aaaa"),
                ("key-b", "sk-soak-bbbb"),
                ("key-c", "sk-soak-cccc"),
            ],
        ),
        &[],
    )
    .await;
    let url = p.url.clone();
    // 4 JSON workers, 2 SSE workers.
    let load = Load::start(6, Duration::from_secs(10), move |w| {
        let url = url.clone();
        Box::pin(async move {
            if w < 4 {
                chat(&url, &[]).await
            } else {
                let (got, errored) = support::stream_chat(&url, None).await;
                let ok = !errored && String::from_utf8_lossy(&got).contains("[DONE]");
                Ok(keyway_testkit::client::Reply {
                    status: if ok {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::BAD_GATEWAY
                    },
                    headers: Default::default(),
                    body: got.into(),
                })
            }
        })
    });
    let started = Instant::now();
    let warmup = Duration::from_secs((secs / 4).max(5));
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let mut flip = false;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Backend a fails (502, retried on b) every other period: failover, recovery.
        flip = !flip;
        a.set_behavior(if flip {
            Behavior::status(502)
        } else {
            Behavior::Normal
        });
        let (rss, fds) = p.resources();
        samples.push((started.elapsed(), rss, fds));
    }
    a.set_behavior(Behavior::Normal);
    let outcomes = load.stop().await;
    let (rss_end, fds_end) = p.resources();
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= warmup).collect();
    assert!(
        after.len() >= 2,
        "enough samples after warm-up: {samples:?}"
    );
    let (rss_start, fds_start) = (after[0].1, after[0].2);
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let requests = outcomes.len();
    eprintln!(
        "[soak] {secs}s, {requests} requests ({:.0}/s): RSS start-after-warmup {rss_start} KiB, end {rss_end} KiB, max {rss_max} KiB; FDs start {fds_start}, end {fds_end}, max {fds_max}",
        requests as f64 / secs as f64
    );
    eprintln!("[soak] samples (t, RSS KiB, FDs): {samples:?}");
    let ok = outcomes.iter().filter(|o| o.status == Some(200)).count();
    assert_eq!(ok, requests, "{}", summary(&outcomes));
    assert!(
        rss_end <= rss_start + 10 * 1024,
        "RSS grew by more than 10 MiB after warm-up: {rss_start} -> {rss_end} KiB"
    );
    let rising = after.windows(2).filter(|w| w[1].1 > w[0].1).count();
    assert!(
        after.len() < 4 || rising < after.len() - 1,
        "RSS rose at every sample after warm-up: {after:?}"
    );
    assert!(
        fds_end <= fds_start + 16,
        "open file descriptors grew: {fds_start} -> {fds_end}"
    );
}
