//! The upstream pool against real local servers (hyper's own HTTP/1.1 and HTTP/2 servers, and
//! a raw socket where a server must misbehave): reuse, a peer's close while idle, timeouts,
//! HTTP/2 streams sharing a connection up to the bound, then a second connection.

use super::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn upstreams() -> Upstreams {
    Upstreams::new(&crate::tls::upstream_config(None).unwrap())
}

fn target(addr: SocketAddr, http2: bool) -> SlotKey {
    Arc::new(Target {
        https: false,
        authority: addr.to_string(),
        server_name: None,
        http2,
    })
}

fn get(addr: SocketAddr) -> Request<ProxyBody> {
    Request::get(format!("http://{addr}/v1/x"))
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap()
}

async fn read(resp: Response<UpstreamBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Polls `cond` every 5 ms until it holds or 10 s pass.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP/1.1 server answering `ok <path>`, counting the connections it accepted.
async fn h1_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = format!("ok {}", req.uri());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn one_http1_connection_serves_requests_one_after_another() {
    let (addr, accepted) = h1_server().await;
    let (up, t) = (upstreams(), target(addr, false));
    for _ in 0..5 {
        let resp = up
            .send(&t, get(addr), Duration::from_secs(5))
            .await
            .unwrap();
        // Origin form on the wire.
        assert_eq!(read(resp).await, "ok /v1/x");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(up.counts(), (1, 0, 0), "the connection is idle in the pool");
}

#[tokio::test]
async fn a_response_dropped_unread_closes_its_connection() {
    let (addr, accepted) = h1_server().await;
    let (up, t) = (upstreams(), target(addr, false));
    let resp = up
        .send(&t, get(addr), Duration::from_secs(5))
        .await
        .unwrap();
    drop(resp);
    assert_eq!(up.counts().0, 0, "a half-read connection is not reused");
    let resp = up
        .send(&t, get(addr), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(read(resp).await, "ok /v1/x");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    // Answers one request per connection with keep-alive headers, then closes it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let closes = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closes = closes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(s);
                closes.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let (up, t) = (upstreams(), target(addr, false));
    for round in 1..=3 {
        let resp = up
            .send(&t, get(addr), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read(resp).await, "ok");
        until("the upstream's close", || {
            closed.load(Ordering::SeqCst) == round
        })
        .await;
        // Let the FIN arrive.
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_silent_upstream_is_bounded_by_the_callers_timeout_and_a_closed_port_is_a_connect_error()
{
    let up = upstreams();
    // Accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let t = target(addr, false);
    let sent = tokio::time::timeout(
        Duration::from_millis(200),
        up.send(&t, get(addr), Duration::from_secs(1)),
    )
    .await;
    assert!(sent.is_err(), "no answer, no response");
    hold.abort();

    // Nothing listens: a connect error, which another backend may retry.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = up
        .send(&target(addr, false), get(addr), Duration::from_secs(5))
        .await
        .err()
        .expect("nothing listens");
    assert_eq!(error.kind, FailureKind::Connect);
}

/// An h2c server whose answers wait for `release`; counts connections and requests seen.
async fn held_h2_server(
    release: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (conns.clone(), reqs.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (r, release) = (r.clone(), release.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let (r, mut release) = (r.clone(), release.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = release.wait_for(|go| *go).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"h2"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1000)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, conns, reqs)
}

#[tokio::test]
async fn http2_streams_share_a_connection_up_to_the_bound_then_a_second_one_opens() {
    let (go, release) = tokio::sync::watch::channel(false);
    let (addr, conns, reqs) = held_h2_server(release).await;
    let up = Arc::new(upstreams());
    let t = target(addr, true);
    let n = h2::MAX_STREAMS + 1;
    let mut sends = Vec::new();
    for _ in 0..n {
        let (up, t) = (up.clone(), t.clone());
        sends.push(tokio::spawn(async move {
            let resp = up.send(&t, get(addr), Duration::from_secs(5)).await?;
            assert_eq!(resp.version(), http::Version::HTTP_2);
            Ok::<_, SendError>(read(resp).await)
        }));
    }
    until("every request at the upstream", || {
        reqs.load(Ordering::SeqCst) == n
    })
    .await;
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "{n} streams: two connections"
    );
    assert_eq!(up.counts(), (0, 2, n));
    go.send(true).unwrap();
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap(), "h2");
    }
    assert_eq!(
        up.counts(),
        (0, 2, 0),
        "streams given back, connections kept"
    );
    // The next request takes a stream on a pooled connection.
    let resp = up
        .send(&t, get(addr), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(read(resp).await, "h2");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_burst_of_first_requests_to_an_http2_upstream_opens_one_connection() {
    let (go, release) = tokio::sync::watch::channel(true);
    let (addr, conns, _) = held_h2_server(release).await;
    let up = Arc::new(upstreams());
    let t = target(addr, true);
    let sends: Vec<_> = (0..20)
        .map(|_| {
            let (up, t) = (up.clone(), t.clone());
            tokio::spawn(async move {
                let resp = up.send(&t, get(addr), Duration::from_secs(5)).await?;
                Ok::<_, SendError>(read(resp).await)
            })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap().unwrap(), "h2");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    drop(go);
}

#[tokio::test]
async fn idle_connections_of_upstreams_no_longer_asked_for_are_swept() {
    let (addr, _) = h1_server().await;
    let (up, t) = (upstreams(), target(addr, false));
    let resp = up
        .send(&t, get(addr), Duration::from_secs(5))
        .await
        .unwrap();
    read(resp).await;
    assert_eq!(up.counts().0, 1);
    // Not yet due: nothing happens.
    let now = crate::clock::coarse_ms();
    up.shared.sweep_if_due(&mut up.shared.lock(), now);
    assert_eq!(up.counts().0, 1);
    // Past the idle timeout and the sweep interval: the connection is closed and the
    // upstream forgotten, though no request went to it again.
    let later = now + IDLE_TIMEOUT_MS + SWEEP_EVERY_MS;
    up.shared.sweep_if_due(&mut up.shared.lock(), later);
    assert_eq!(up.counts(), (0, 0, 0));
    assert!(up.shared.lock().is_empty(), "the upstream's entry is gone");
}
