use super::super::admit::Prepared;
use super::super::place::{KeyPrep, place_refusal, prepare_keys};
use super::*;
use crate::dataplane::PlaceError;
use crate::hash::hash_key;
use crate::http::body::RequestBody;
use crate::http::error::Rejection;
use bytes::Bytes;
use http::{HeaderMap, Method};

fn prepared(headers: &[(&str, &str)], body: RequestBody) -> Prepared {
    let mut h = HeaderMap::new();
    for (n, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Prepared {
        method: Method::POST,
        path: "/v1/chat/completions".into(),
        query: None,
        headers: h,
        body,
    }
}

fn json(body: &str) -> RequestBody {
    RequestBody::Buffered(Bytes::copy_from_slice(body.as_bytes()))
}

#[test]
fn placement_failures_name_the_pool() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let p = pool(&router, "open");
    let r = place_refusal(
        p,
        PlaceError::NoCluster {
            model: Some("m".into()),
        },
    );
    assert_eq!(r.rejection, Rejection::NoCluster);
    assert!(
        r.message.contains("default/open") && r.message.contains("\"m\""),
        "{}",
        r.message
    );
    let r = place_refusal(p, PlaceError::NoCluster { model: None });
    assert!(
        r.message.contains("no cluster can take traffic"),
        "{}",
        r.message
    );
    let r = place_refusal(
        p,
        PlaceError::SessionGone {
            backend: "x".into(),
        },
    );
    assert_eq!(r.rejection, Rejection::SessionGone);
    assert!(r.message.contains("backend x"), "{}", r.message);
}

#[test]
fn the_clients_credential_never_goes_upstream() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut req = prepared(
        &[("authorization", "Bearer client"), ("x-keep", "1")],
        json("{}"),
    );
    let prep = prepare_keys(p, &kp, &mut req, 1024).unwrap();
    assert_eq!(prep, KeyPrep::default());
    assert!(!req.headers.contains_key("authorization"));
    assert!(req.headers.contains_key("x-keep"));
}

#[test]
fn a_body_field_key_needs_a_buffered_body() {
    let dp = dataplane(&keyed("auth: {type: bodyField, field: api_key}"));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut req = prepared(&[], RequestBody::Streaming(None));
    let r = prepare_keys(p, &kp, &mut req, 4096).unwrap_err();
    assert_eq!(r.rejection, Rejection::BodyTooLarge);
    assert!(r.message.contains("at most 4096 bytes"), "{}", r.message);
    let mut req = prepared(&[], json("{}"));
    assert!(prepare_keys(p, &kp, &mut req, 4096).is_ok());
}

#[test]
fn a_stream_asks_for_usage_when_the_key_pool_counts_it() {
    let yaml = keyed("").replace(
        "secretRef: {name: llm-keys}",
        "secretRef: {name: llm-keys}\n  requestStreamUsage: true",
    );
    let dp = dataplane(&yaml);
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut req = prepared(
        &[("content-length", "40")],
        json(r#"{"model": "m", "stream": true}"#),
    );
    let prep = prepare_keys(p, &kp, &mut req, 4096).unwrap();
    assert!(prep.strip_usage);
    assert!(!req.headers.contains_key("content-length"));
    let body = String::from_utf8(req.body.bytes().unwrap().to_vec()).unwrap();
    assert!(body.contains("include_usage"), "{body}");

    // Not a stream: nothing to ask for.
    let mut req = prepared(&[], json(r#"{"model": "m"}"#));
    assert!(!prepare_keys(p, &kp, &mut req, 4096).unwrap().strip_usage);
}

#[test]
fn key_stickiness_hashes_the_header_else_the_prompt_prefix() {
    let yaml = keyed("").replace(
        "secretRef: {name: llm-keys}",
        "secretRef: {name: llm-keys}\n  stickiness: {header: user-id, promptPrefixBytes: 4}",
    );
    let dp = dataplane(&yaml);
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut req = prepared(&[("user-id", "u1")], json("{\"a\": 1}"));
    let prep = prepare_keys(p, &kp, &mut req, 4096).unwrap();
    assert_eq!(prep.affinity, Some(hash_key(b"u1")));
    let mut req = prepared(&[], json("{\"a\": 1}"));
    let prep = prepare_keys(p, &kp, &mut req, 4096).unwrap();
    assert_eq!(prep.affinity, Some(hash_key(b"{\"a\"")));
    let mut req = prepared(&[], RequestBody::Streaming(None));
    assert_eq!(prepare_keys(p, &kp, &mut req, 4096).unwrap().affinity, None);
}
