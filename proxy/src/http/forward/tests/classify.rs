use super::super::classify::{Failure, Outcome, classify, timed_out, upstream_failed};
use super::*;
use crate::dataplane::KeyPoolState;
use crate::http::error::Rejection;
use crate::keys::{KeyState, Lease, ProbePurpose};
use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

fn state(kp: &KeyPoolState, id: &str) -> KeyState {
    kp.engine
        .snapshot()
        .into_iter()
        .find(|k| k.id == id)
        .unwrap()
        .state
}

fn lease(kp: &KeyPoolState, id: &str) -> Option<Lease> {
    Some(kp.engine.try_acquire_id(id).unwrap())
}

#[tokio::test]
async fn a_rate_limited_key_cools_and_the_next_key_is_tried() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut l = lease(&kp, "k1");
    let resp = response(429, &[("retry-after", "30")], "slow down");
    match classify(p, 0, resp, &mut l, true, false, Instant::now()).await {
        Outcome::NextKey(resp) => {
            assert_eq!(resp.status(), 429);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "slow down", "the error body is kept for the client");
        }
        other => panic!("{other:?}"),
    }
    assert!(l.is_none(), "the lease is settled");
    assert!(matches!(state(&kp, "k1"), KeyState::Cooling { .. }));
    // Never the backend's fault.
    assert_eq!(p.backends[0].counters.failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_quota_error_body_is_a_refusal_too() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut l = lease(&kp, "k2");
    let body = r#"{"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}"#;
    let outcome = classify(
        p,
        0,
        response(400, &[], body),
        &mut l,
        true,
        false,
        Instant::now(),
    )
    .await;
    assert!(matches!(outcome, Outcome::NextKey(_)), "{outcome:?}");
    assert!(l.is_none());
    // Without a key, a 400 is just the answer.
    let mut none = None;
    let outcome = classify(
        p,
        0,
        response(400, &[], body),
        &mut none,
        true,
        false,
        Instant::now(),
    )
    .await;
    assert!(matches!(outcome, Outcome::Respond(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_refused_key_is_verified_before_it_is_disabled() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut l = lease(&kp, "k1");
    let outcome = classify(
        p,
        0,
        response(401, &[], "{}"),
        &mut l,
        true,
        false,
        Instant::now(),
    )
    .await;
    assert!(matches!(outcome, Outcome::NextKey(_)), "{outcome:?}");
    // One request is not evidence against the key: a free probe decides.
    assert!(
        matches!(state(&kp, "k1"), KeyState::Active),
        "{:?}",
        state(&kp, "k1")
    );
    let due = kp.engine.reprobe_due();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].0.as_str(), due[0].2), ("k1", ProbePurpose::Verify));
}

#[tokio::test]
async fn a_gateway_error_tries_another_backend_with_the_same_key() {
    let dp = dataplane(&keyed(""));
    let router = dp.router();
    let p = pool(&router, "llm");
    let kp = router.key_pools[0].clone();
    let mut l = lease(&kp, "k1");
    let outcome = classify(
        p,
        1,
        response(503, &[], ""),
        &mut l,
        true,
        false,
        Instant::now(),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::NextBackend(Rejection::UpstreamStatus)),
        "{outcome:?}"
    );
    assert_eq!(l.as_ref().unwrap().id(), "k1", "the key stays");
    assert_eq!(p.backends[1].counters.failures.load(Ordering::Relaxed), 1);

    // The last try: the 503 is the answer, and the key keeps its lease (not its fault).
    let outcome = classify(
        p,
        1,
        response(503, &[], ""),
        &mut l,
        true,
        true,
        Instant::now(),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Respond(ref r) if r.status() == 503),
        "{outcome:?}"
    );
    assert!(l.is_some());
    // Another 5xx counts against the key as well.
    let outcome = classify(
        p,
        1,
        response(500, &[], ""),
        &mut l,
        true,
        false,
        Instant::now(),
    )
    .await;
    assert!(matches!(outcome, Outcome::Respond(_)), "{outcome:?}");
    assert!(l.is_none());
    assert_eq!(
        kp.engine
            .snapshot()
            .iter()
            .find(|k| k.id == "k1")
            .unwrap()
            .failures,
        1
    );
}

#[tokio::test]
async fn success_is_the_answer() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let p = pool(&router, "open");
    let mut none = None;
    let outcome = classify(
        p,
        0,
        response(200, &[], "ok"),
        &mut none,
        false,
        false,
        Instant::now(),
    )
    .await;
    match outcome {
        Outcome::Respond(resp) => {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_before_a_response() {
    let dp = dataplane(KEYLESS);
    let router = dp.router();
    let p = pool(&router, "open");
    let error = std::io::Error::other("connection refused");
    let outcome = upstream_failed(p, 0, Failure::Connect, &error, false);
    assert!(
        matches!(outcome, Outcome::NextBackend(Rejection::UpstreamConnect)),
        "{outcome:?}"
    );
    let outcome = upstream_failed(p, 0, Failure::RefusedStream, &error, false);
    assert!(
        matches!(outcome, Outcome::NextBackend(Rejection::UpstreamProtocol)),
        "{outcome:?}"
    );
    // The upstream may have processed it: never replayed.
    match upstream_failed(p, 0, Failure::Protocol, &error, false) {
        Outcome::Fail(r) => {
            assert_eq!(r.rejection, Rejection::UpstreamProtocol);
            assert_eq!(
                r.message,
                "backend a of pool default/open failed: upstream_protocol"
            );
        }
        other => panic!("{other:?}"),
    }
    match upstream_failed(p, 0, Failure::Connect, &error, true) {
        Outcome::Fail(r) => assert_eq!(r.rejection, Rejection::UpstreamConnect),
        other => panic!("{other:?}"),
    }
    match timed_out(p, 1, Duration::from_secs(2)) {
        Outcome::Fail(r) => {
            assert_eq!(r.rejection, Rejection::UpstreamTimeout);
            assert!(r.message.contains("within 2s"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.backends[0].counters.failures.load(Ordering::Relaxed), 4);
    assert_eq!(p.backends[1].counters.failures.load(Ordering::Relaxed), 1);
}
