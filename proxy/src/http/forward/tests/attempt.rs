use super::super::attempt::{Tries, build_request, next_backend, send};
use super::super::classify::Failure;
use super::*;
use crate::dataplane::Placement;
use crate::http::body::RequestBody;
use crate::http::error::Rejection;
use crate::keys::UnavailableReason;
use http_body_util::BodyExt;
use std::time::Duration;

#[test]
fn the_backend_is_where_placement_put_it_else_the_balancers() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let p = pool(&router, "open");
    let placed = Placement {
        backend: Some(1),
        ..Placement::default()
    };
    assert_eq!(next_backend(p, &placed, None, &[]), Some(1));
    // Placed but failed: the balancer picks another.
    assert_eq!(next_backend(p, &placed, None, &[1]), Some(0));
    let pinned = Placement {
        backend: Some(1),
        pinned: true,
        ..Placement::default()
    };
    assert_eq!(
        next_backend(p, &pinned, None, &[1]),
        None,
        "a session never moves"
    );
    let free = Placement::default();
    assert_eq!(next_backend(p, &free, None, &[0]), Some(1));
    assert_eq!(next_backend(p, &free, None, &[0, 1]), None);
}

#[test]
fn the_last_backend_try_is_known_before_sending() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let free = Placement::default();
    // retry.maxRetries defaults to 1 and the body is replayable: one retry on the other one.
    let ex = exchange(&router, "open", buffered("{}"), Placement::default());
    let mut tries = Tries::new(&ex);
    assert!(!tries.is_last_backend_try(ex.pool, &free, 0));
    tries.failed.push(0);
    assert!(
        tries.is_last_backend_try(ex.pool, &free, 1),
        "retries spent"
    );
    assert_eq!(
        tries.failed,
        [0],
        "the check leaves the failures as they were"
    );

    // A body that streamed through is sent once.
    let ex = exchange(
        &router,
        "open",
        RequestBody::Streaming(None),
        Placement::default(),
    );
    assert!(Tries::new(&ex).is_last_backend_try(ex.pool, &free, 0));
    // A session's backend owns the session.
    let pinned = Placement {
        backend: Some(0),
        pinned: true,
        ..Placement::default()
    };
    let ex = exchange(&router, "open", buffered("{}"), pinned);
    assert!(Tries::new(&ex).is_last_backend_try(ex.pool, &ex.placement, 0));
}

#[test]
fn the_last_backend_try_when_no_other_backend_could_take_it() {
    let dp = dataplane(&KEYLESS.replace(
        "- {name: b, endpoint: \"http://127.0.0.1:2\"}",
        "- {name: b, endpoint: \"http://127.0.0.1:2\", weight: 0}",
    ));
    let router = dp.router();
    let ex = exchange(&router, "open", buffered("{}"), Placement::default());
    assert!(Tries::new(&ex).is_last_backend_try(ex.pool, &ex.placement, 0));
}

#[tokio::test]
async fn the_key_is_the_sessions_while_it_may_be_used() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let metrics = dp.metrics();
    let pinned = Placement {
        key_id: Some("k2".into()),
        ..Placement::default()
    };
    let ex = exchange(&router, "llm", buffered("{}"), pinned);
    let kp = ex.key_pool.unwrap();
    let mut tries = Tries::new(&ex);
    tries.lease_key(kp, ex.pool, None, metrics).await.unwrap();
    assert_eq!(tries.lease.as_ref().unwrap().id(), "k2");
    assert_eq!(counter(&metrics.key_requests, &["default/keys", "k2"]), 1);
    // A held lease is kept (a backend retry keeps its key).
    tries.lease_key(kp, ex.pool, None, metrics).await.unwrap();
    assert_eq!(counter(&metrics.key_requests, &["default/keys", "k2"]), 1);

    // A session whose key left: another key, counted as a deviation.
    let gone = Placement {
        key_id: Some("k9".into()),
        ..Placement::default()
    };
    let ex = exchange(&router, "llm", buffered("{}"), gone);
    let mut tries = Tries::new(&ex);
    tries.lease_key(kp, ex.pool, None, metrics).await.unwrap();
    assert!(tries.lease.is_some());
    assert_eq!(
        counter(
            &metrics.clusters.deviations,
            &["default/llm", "session_key_unavailable"]
        ),
        1
    );
}

#[tokio::test]
async fn no_key_is_an_error_with_the_reason() {
    let dp = dataplane(&keyed("").replace("{k1: \"sk-one\", k2: \"sk-two\"}", "{k1: \"sk-one\"}"));
    let router = dp.router();
    let metrics = dp.metrics();
    let ex = exchange(&router, "llm", buffered("{}"), Placement::default());
    let kp = ex.key_pool.unwrap();
    // Hold the only key at its limit: weight 0 keys are out of rotation, so use an exclusion
    // through the engine instead: take it and rate-limit it for a long time.
    let first = kp.engine.try_acquire(None, &[]).unwrap();
    first.rate_limited(Some(Duration::from_secs(3600)));
    let mut tries = Tries::new(&ex);
    let unavailable = tries
        .lease_key(kp, ex.pool, None, metrics)
        .await
        .unwrap_err();
    assert_ne!(unavailable.reason, UnavailableReason::NoKeys);
    assert!(tries.lease.is_none());
}

#[test]
fn inject_puts_the_key_the_host_and_the_path_prefix() {
    let dp = dataplane(&keyed("").replace(
        r#"endpoint: "https://b.example:443"}"#,
        r#"endpoint: "https://b.example:443", hostHeader: "model.example"}"#,
    ));
    let router = dp.router();
    let mut ex = exchange(&router, "llm", buffered("{\"x\": 1}"), Placement::default());
    ex.prepared.headers.insert("x-client", "1".parse().unwrap());
    ex.prepared
        .headers
        .insert("host", "keyway.client.example".parse().unwrap());
    let kp = ex.key_pool.unwrap();
    let lease = kp.engine.try_acquire_id("k1").unwrap();
    let req = build_request(
        ex.pool,
        &ex.pool.backends[0],
        &mut ex.prepared,
        Some(&lease),
    )
    .unwrap();
    assert_eq!(
        req.uri(),
        "http://127.0.0.1:1/prefix/v1/chat/completions?a=1"
    );
    // No Host header: the client writes the URI's authority as Host over HTTP/1.1 and as
    // `:authority` alone over HTTP/2 (a Host next to it is a duplicate to nginx: 400).
    assert_eq!(
        req.headers().get("host"),
        None,
        "the client's Host is dropped"
    );
    assert_eq!(req.headers()["authorization"], "Bearer sk-one");
    assert!(req.headers()["authorization"].is_sensitive());
    assert_eq!(req.headers()["x-client"], "1");
    assert_eq!(req.method(), http::Method::POST);
    assert!(
        ex.prepared.body.replayable(),
        "a buffered body is sent again on retry"
    );

    // A backend's hostHeader is the Host.
    let req = build_request(
        ex.pool,
        &ex.pool.backends[1],
        &mut ex.prepared,
        Some(&lease),
    )
    .unwrap();
    assert_eq!(req.headers()["host"], "model.example");
    assert_eq!(req.uri().scheme_str(), Some("https"));
    assert_eq!(req.uri().authority().unwrap(), "b.example:443");
}

#[tokio::test]
async fn inject_a_query_or_a_body_field() {
    let dp = dataplane(&keyed("auth: {type: query, queryParam: key}"));
    let router = dp.router();
    let mut ex = exchange(&router, "llm", buffered("{}"), Placement::default());
    ex.prepared.query = Some("key=client&a=1".into());
    let lease = ex.key_pool.unwrap().engine.try_acquire_id("k2").unwrap();
    let req = build_request(
        ex.pool,
        &ex.pool.backends[0],
        &mut ex.prepared,
        Some(&lease),
    )
    .unwrap();
    assert_eq!(req.uri().query(), Some("a=1&key=sk-two"));

    let dp = dataplane(&keyed("auth: {type: bodyField, field: api_key}"));
    let router = dp.router();
    let mut ex = exchange(
        &router,
        "llm",
        buffered(r#"{"api_key": "client"}"#),
        Placement::default(),
    );
    ex.prepared
        .headers
        .insert("content-length", "21".parse().unwrap());
    let lease = ex.key_pool.unwrap().engine.try_acquire_id("k1").unwrap();
    let req = build_request(
        ex.pool,
        &ex.pool.backends[0],
        &mut ex.prepared,
        Some(&lease),
    )
    .unwrap();
    assert!(!req.headers().contains_key("content-length"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"api_key": "sk-one"}"#);

    let mut ex = exchange(&router, "llm", buffered("[1]"), Placement::default());
    let r = build_request(
        ex.pool,
        &ex.pool.backends[0],
        &mut ex.prepared,
        Some(&lease),
    )
    .unwrap_err();
    assert_eq!(r.rejection, Rejection::ClientBody);
}

#[test]
fn a_streamed_body_goes_once() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let mut ex = exchange(
        &router,
        "open",
        RequestBody::Streaming(None),
        Placement::default(),
    );
    let r = build_request(ex.pool, &ex.pool.backends[0], &mut ex.prepared, None).unwrap_err();
    assert_eq!(r.rejection, Rejection::ClientBody);
    assert_eq!(r.message, "the request body was already sent");
}

#[tokio::test]
async fn send_is_bounded_by_the_response_timeout() {
    let client = crate::http::client::build(
        Duration::from_secs(1),
        crate::tls::upstream_config(None).unwrap(),
        false,
    );
    // Accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let req = |addr: std::net::SocketAddr| {
        http::Request::get(format!("http://{addr}/"))
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    };
    assert!(
        send(&client, req(addr), Duration::from_millis(200))
            .await
            .is_err()
    );
    hold.abort();

    // Nothing listens: a connect error, which another backend may retry.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = send(&client, req(addr), Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(Failure::of(&error), Failure::Connect);
}

#[test]
fn an_endpoint_ending_in_the_requests_first_segment_does_not_double_it() {
    use super::super::attempt::without_repeated_segment as join;
    assert_eq!(join("/v1", "/v1/chat/completions"), "/chat/completions");
    assert_eq!(join("/v1", "/v1"), "");
    assert_eq!(join("/api/v1", "/v1/messages"), "/messages");
    // Only a whole segment, and only the endpoint's last one.
    assert_eq!(join("/v1", "/v1beta/models"), "/v1beta/models");
    assert_eq!(join("/v1/x", "/v1/messages"), "/v1/messages");
    assert_eq!(join("", "/v1/messages"), "/v1/messages");
    assert_eq!(join("/openai", "/openai/deployments/d"), "/deployments/d");
}
