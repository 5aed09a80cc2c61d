//! An HTTP/2 upstream that sheds streams mid-load, as providers' front ends do when they
//! restart or reach their stream limit: it refuses some streams (RST_STREAM REFUSED_STREAM)
//! and ends connections with a graceful GOAWAY. Neither kind of stream was processed, so the
//! proxy sends them again and no request fails.

mod support;

use bytes::Bytes;
use h2::Reason;
use keyway_testkit::client::chat;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::FileProxy;
use tokio::net::TcpListener;

/// What the upstream did, counted on its side.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    streams: AtomicUsize,
    refused: AtomicUsize,
    goaways: AtomicUsize,
    answered: AtomicUsize,
}

const REPLY: &str = r#"{"id":"chatcmpl-h2","object":"chat.completion","model":"mock-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

/// An h2c upstream (prior knowledge) that refuses every `refuse_every`-th stream and sends a
/// graceful GOAWAY on a connection after it accepted `goaway_after` streams.
async fn shedding_upstream(refuse_every: usize, goaway_after: usize) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                let mut accepted = 0;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    accepted += 1;
                    let n = c.streams.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % refuse_every == 0 {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                        respond.send_reset(Reason::REFUSED_STREAM);
                    } else {
                        let c = c.clone();
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            // Work in progress while more streams arrive.
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            let resp = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(())
                                .unwrap();
                            if let Ok(mut send) = respond.send_response(resp, false)
                                && send
                                    .send_data(Bytes::from_static(REPLY.as_bytes()), true)
                                    .is_ok()
                            {
                                c.answered.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    if accepted == goaway_after {
                        c.goaways.fetch_add(1, Ordering::Relaxed);
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    (url, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_and_goaway_fail_no_request() {
    let (url, counts) = shedding_upstream(7, 25).await;
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  backends:
    - {{name: h2, endpoint: "{url}", protocol: http2}}
"#
    );
    let p = FileProxy::start(&yaml).await;
    let proxy = p.url();
    // 8 clients, 40 requests each.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..40 {
                    match chat(&proxy, &[]).await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    let (streams, refused, goaways, connections, answered) = (
        counts.streams.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.goaways.load(Ordering::Relaxed),
        counts.connections.load(Ordering::Relaxed),
        counts.answered.load(Ordering::Relaxed),
    );
    assert!(
        failed.is_empty(),
        "{} of 320 requests failed (upstream: {streams} streams accepted, {refused} refused, \
         {answered} answered, {goaways} GOAWAYs, {connections} connections): {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(refused >= 20, "the upstream refused streams: {refused}");
    assert!(goaways >= 5, "the upstream said GOAWAY: {goaways}");
    // A new connection after each GOAWAY (but the last, when no request followed it), and
    // one at a time: requests wait for the connection being opened instead of each opening
    // their own.
    assert!(
        (goaways..=goaways + 2).contains(&connections),
        "{connections} connections for {goaways} GOAWAYs"
    );
    assert_eq!(answered, 320, "each request was processed exactly once");
}
