use super::super::admit::{forwarding_headers, peek_model, route};
use super::*;
use crate::http::error::Rejection;
use http::{HeaderMap, Method};
use std::net::SocketAddr;

const LOCAL: &str = "127.0.0.1:5000";

fn remote() -> SocketAddr {
    LOCAL.parse().unwrap()
}

fn refused<T>(r: Result<T, crate::http::error::Refusal>) -> crate::http::error::Refusal {
    match r {
        Ok(_) => panic!("routed"),
        Err(refusal) => refusal,
    }
}

#[test]
fn routes_to_the_pool_and_its_key_pool() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let (pool, kp, _) = route(
        &router,
        &Method::POST,
        "/v1/chat/completions",
        &HeaderMap::new(),
        None,
        remote(),
    )
    .unwrap();
    assert_eq!(pool.label, "default/llm");
    assert_eq!(kp.unwrap().label, "default/keys");

    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let (_, kp, _) = route(
        &router,
        &Method::GET,
        "/",
        &HeaderMap::new(),
        None,
        remote(),
    )
    .unwrap();
    assert!(kp.is_none());
}

#[test]
fn refuses_what_no_pool_takes() {
    let dp = dataplane(&keyed("routes: [{pathPrefix: /v1/}]"));
    let router = dp.router();
    let refusal = refused(route(
        &router,
        &Method::GET,
        "/other",
        &HeaderMap::new(),
        None,
        remote(),
    ));
    assert_eq!(refusal.rejection, Rejection::NoRoute);
    assert_eq!(refusal.message, "no pool routes GET /other");

    let dp = dataplane(&keyed("allowedSources: [10.0.0.0/8]"));
    let router = dp.router();
    let refusal = refused(route(
        &router,
        &Method::GET,
        "/",
        &HeaderMap::new(),
        None,
        remote(),
    ));
    assert_eq!(refusal.rejection, Rejection::ForbiddenSource);
    assert!(refusal.message.contains("127.0.0.1"), "{}", refusal.message);
    let inside = "10.1.2.3:5000".parse().unwrap();
    assert!(route(&router, &Method::GET, "/", &HeaderMap::new(), None, inside).is_ok());
}

#[test]
fn a_missing_key_pool_is_named() {
    // The controller sends a pool whose ApiKeyPool is not (or no longer) available.
    let mut snap = snapshot(&keyed(""));
    snap.key_pools.clear();
    let dp = compiled(snap);
    let router = dp.router();
    let refusal = refused(route(
        &router,
        &Method::GET,
        "/",
        &HeaderMap::new(),
        None,
        remote(),
    ));
    assert_eq!(refusal.rejection, Rejection::KeyPoolUnavailable);
    assert!(
        refusal.message.contains("ApiKeyPool default/keys"),
        "{}",
        refusal.message
    );
}

#[test]
fn forwarding_headers_say_where_the_request_came_from() {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    h.insert("connection", "close, x-hop".parse().unwrap());
    h.insert("x-hop", "1".parse().unwrap());
    h.insert("x-request-id", "client-id".parse().unwrap());
    let id = forwarding_headers(&mut h, remote(), true);
    assert_eq!(id, "client-id");
    assert_eq!(h["x-request-id"], "client-id");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert!(!h.contains_key("x-hop") && !h.contains_key("connection"));

    let mut h = HeaderMap::new();
    let id = forwarding_headers(&mut h, remote(), false);
    let id = id.to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(h["x-request-id"], id);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let other = forwarding_headers(&mut HeaderMap::new(), remote(), false);
    assert_ne!(other, id, "every request gets its own id");
}

#[test]
fn peeks_the_model_only() {
    assert_eq!(
        peek_model(br#"{"messages": [{"x": 1}], "model": "gpt-x"}"#).as_deref(),
        Some("gpt-x")
    );
    assert_eq!(peek_model(br#"{"messages": []}"#), None);
    assert_eq!(peek_model(b"not json"), None);
}
