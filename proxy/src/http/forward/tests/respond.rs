use super::super::respond::{Answer, learn};
use super::super::{Forwarder, ForwarderSettings};
use super::*;
use crate::dataplane::Placement;
use crate::http::response::RequestGauge;
use crate::keys::{Unavailable, UnavailableReason};
use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use std::time::Duration;

fn forwarder(dp: &Arc<Dataplane>, expose: bool, overhead: bool) -> Forwarder {
    Forwarder::new(
        dp.clone(),
        ForwarderSettings {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            expose_headers: expose,
            overhead_header: overhead,
            upstream_ca: None,
        },
    )
    .unwrap()
}

fn upstream(
    status: u16,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Response<crate::http::ProxyBody> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap()
}

#[test]
fn finish_says_where_the_request_went_when_asked() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let ex = exchange(&router, "llm", buffered("{}"), Placement::default());
    let backend = &ex.pool.backends[1];

    let f = forwarder(&dp, true, true);
    let resp = f.finish(upstream(200, &[], "ok"), &ex, backend, Some("k1"));
    let h = resp.headers();
    assert_eq!(h["x-keyway-backend"], "b");
    assert_eq!(h["x-keyway-key-id"], "k1");
    assert_eq!(h["x-keyway-pool"], "default/llm");
    assert_eq!(h["x-request-id"], "req-1");
    let overhead: f64 = h["x-keyway-overhead-ms"].to_str().unwrap().parse().unwrap();
    assert!(overhead >= 0.0);
    assert_eq!(
        counter(&dp.metrics().requests, &["default/llm", "b", "200"]),
        1
    );

    let f = forwarder(&dp, false, false);
    let resp = f.finish(upstream(502, &[], ""), &ex, backend, Some("k1"));
    let h = resp.headers();
    assert_eq!(h["x-request-id"], "req-1", "the request id is always there");
    for name in [
        "x-keyway-backend",
        "x-keyway-key-id",
        "x-keyway-pool",
        "x-keyway-overhead-ms",
    ] {
        assert!(!h.contains_key(name), "{name}");
    }
    assert_eq!(
        counter(&dp.metrics().requests, &["default/llm", "b", "502"]),
        1
    );
}

#[tokio::test]
async fn no_key_is_a_429_with_the_earliest_retry() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let kp = router.key_pools[0].clone();
    let f = forwarder(&dp, true, false);
    let unavailable = Unavailable {
        reason: UnavailableReason::Cooling,
        retry_after: Some(Duration::from_millis(2_100)),
    };
    let id = http::HeaderValue::from_static("req-9");
    let resp = f.keys_unavailable(&kp, &unavailable, 2, &id);
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3", "rounded up");
    assert_eq!(resp.headers()["x-request-id"], "req-9");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.contains("ApiKeyPool default/keys"), "{body}");
    assert!(body.contains("2 key(s) were refused upstream"), "{body}");
    assert!(!body.contains("sk-"), "never a key value: {body}");
    let m = dp.metrics();
    assert_eq!(counter(&m.key_unavailable, &["default/keys", "cooling"]), 1);
    assert_eq!(counter(&m.rejected, &["keys_unavailable"]), 1);

    let now = Unavailable {
        reason: UnavailableReason::NoKeys,
        retry_after: Some(Duration::ZERO),
    };
    let resp = f.keys_unavailable(&kp, &now, 0, &id);
    assert_eq!(resp.headers()["retry-after"], "1", "at least a second");
}

#[tokio::test]
async fn respond_wraps_the_body_and_the_session_is_learned() {
    let yaml = KEYLESS.replace(
        "spec:\n  backends:",
        "spec:\n  affinity: {header: mcp-session-id}\n  sseKeepAlive: 15s\n  backends:",
    );
    let dp = dataplane(&yaml);
    let router = dp.router();
    let ex = exchange(&router, "open", buffered("{}"), Placement::default());
    let f = forwarder(&dp, true, false);
    let gauge = dp.metrics().in_flight.clone();
    gauge.inc();
    let (head, body) = upstream(
        200,
        &[
            ("content-type", "text/event-stream"),
            ("content-length", "12"),
            ("mcp-session-id", "s-1"),
        ],
        "data: hi\n\n\n\n",
    )
    .into_parts();
    learn(&ex, &head, 1, None).await;
    let answer = Answer {
        head,
        body,
        backend: 1,
        key_id: None,
        lease: None,
        in_flight: ex.pool.start_request(1),
    };
    let resp = f.respond(&ex, answer, RequestGauge(gauge.clone()));
    assert!(
        !resp.headers().contains_key("content-length"),
        "keep-alive comments change the length"
    );
    assert_eq!(resp.headers()["x-keyway-backend"], "b");
    assert_eq!(gauge.get(), 1, "in flight until the body ends");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "data: hi\n\n\n\n");
    assert_eq!(gauge.get(), 0);

    // The session's next request goes to the backend that opened it.
    let mut headers = http::HeaderMap::new();
    headers.insert("mcp-session-id", "s-1".parse().unwrap());
    let placed = ex.pool.place(&headers, None).await.unwrap();
    assert_eq!((placed.backend, placed.pinned), (Some(1), true));

    // An error answer opens no session.
    let (head, _) = upstream(500, &[("mcp-session-id", "s-2")], "").into_parts();
    learn(&ex, &head, 0, None).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("mcp-session-id", "s-2".parse().unwrap());
    let placed = ex.pool.place(&headers, None).await.unwrap();
    assert!(!placed.pinned);
}
