//! Classify: what an attempt's answer means for the key and the backend. A key refusal
//! (429, a quota error, 401/403) settles the key and asks for the next one; a backend failure
//! (connect error, refused stream, 502/503/504) asks for another backend unless this was the
//! last try; anything else is the answer.

use crate::dataplane::PoolState;
use crate::http::client::ErrorChain;
use crate::http::error::{Refusal, Rejection};
use crate::http::upstream::{FailureKind, SendError};
use crate::http::{BoxError, ProxyBody};
use crate::keys::Lease;
use crate::usage;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant, SystemTime};

/// Upstream error bodies up to this size are read to recognise quota errors.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Below this share of a key's remaining requests or tokens, other keys are preferred.
const NEARLY_SPENT: f64 = 0.05;

/// What one upstream attempt came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Send this response to the client.
    Respond(Response<ProxyBody>),
    /// The attempt failed and this refusal is the answer.
    Fail(Refusal),
    /// The key was refused; try the next key (same backend allowed).
    NextKey(Response<ProxyBody>),
    /// The backend failed; try another backend (same key).
    NextBackend(Rejection),
    /// The backend did not process the request; send it again (same key, any backend).
    SameBackend(Rejection),
}

/// How an attempt failed before any response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// No connection (the upstream did not see the request).
    Connect,
    /// HTTP/2 REFUSED_STREAM or GOAWAY: the upstream did not process the request.
    RefusedStream,
    /// Anything else: the request may have been processed.
    Protocol,
}

// === impl Failure ===

impl Failure {
    pub fn of(error: &SendError) -> Self {
        match error.kind {
            FailureKind::Connect => Failure::Connect,
            FailureKind::RefusedStream => Failure::RefusedStream,
            FailureKind::Protocol => Failure::Protocol,
        }
    }

    fn rejection(self) -> Rejection {
        match self {
            Failure::Connect => Rejection::UpstreamConnect,
            Failure::RefusedStream | Failure::Protocol => Rejection::UpstreamProtocol,
        }
    }

    /// The upstream did not process the request, so another backend may take it.
    fn retryable(self) -> bool {
        matches!(self, Failure::Connect | Failure::RefusedStream)
    }
}

/// The same backend refused the request's stream (REFUSED_STREAM, or GOAWAY before
/// processing it): the stream is sent again, to the same backend, on a fresh stream (a
/// connection that said GOAWAY takes no new stream, so the pool opens a new one). Not a
/// backend failure: an upstream sheds streams when it restarts or is at its stream limit.
/// Bounded per request by [`MAX_REFUSED_STREAM_RETRIES`]; after that the refusal counts as a
/// backend failure.
pub(super) fn stream_refused(pool: &PoolState, idx: usize) -> Outcome {
    tracing::debug!(pool = %pool.label, backend = %pool.backends[idx].model.name, "upstream refused the stream; sending it again");
    Outcome::SameBackend(Rejection::UpstreamProtocol)
}

/// Refused streams sent again to the same backend within one request.
pub(super) const MAX_REFUSED_STREAM_RETRIES: usize = 5;

/// Decides what an upstream response means for the key and the backend. Settles the lease
/// of a refused key (and of a key that failed with a 5xx other than 502-504) and takes it.
pub(super) async fn classify<B>(
    pool: &PoolState,
    idx: usize,
    resp: Response<B>,
    lease: &mut Option<Lease>,
    keyed: bool,
    last_try: bool,
    now: Instant,
) -> Outcome
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let backend = &pool.backends[idx];
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        backend.counters.record_rate_limited();
    }
    let (parts, body) = resp.into_parts();
    // Key problems (401/403/429, quota errors) are the key pool's business and never count
    // against the backend.
    let quota_candidate = lease.is_some() && status.is_client_error();
    let (body, quota_error): (ProxyBody, bool) = if quota_candidate && small_body(&parts.headers) {
        match http_body_util::Limited::new(body, MAX_ERROR_BODY)
            .collect()
            .await
        {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let quota = usage::quota_error_in_body(status.as_u16(), &bytes);
                (
                    Full::new(bytes).map_err(|never| match never {}).boxed(),
                    quota,
                )
            }
            Err(error) => {
                // The error body broke off; answer with what we know.
                tracing::debug!(error = %error, "upstream error body failed");
                (
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed(),
                    false,
                )
            }
        }
    } else {
        (body.map_err(Into::into).boxed(), false)
    };
    let resp = Response::from_parts(parts, body);

    if let Some(l) = lease.take_if(|_| status == StatusCode::TOO_MANY_REQUESTS || quota_error) {
        // At least a second: a `Retry-After: 0` must not make one request spin on one key.
        let cooldown = usage::cooldown_from_headers(resp.headers(), SystemTime::now())
            .map(|d| d.max(Duration::from_secs(1)));
        tracing::info!(pool = %pool.label, key_id = %l.id(), cooldown = ?cooldown, "key rate limited; trying the next key");
        l.rate_limited(cooldown);
        return Outcome::NextKey(resp);
    }
    if let Some(l) = lease.take_if(|_| matches!(status.as_u16(), 401 | 403)) {
        tracing::warn!(pool = %pool.label, key_id = %l.id(), %status, "key refused by the upstream; disabling it");
        l.auth_failed(status.as_u16());
        return Outcome::NextKey(resp);
    }

    pool.observe_at(idx, !status.is_server_error(), now);
    if status.is_server_error() {
        backend.counters.record_failure();
        if matches!(status.as_u16(), 502..=504) && !last_try {
            tracing::info!(pool = %pool.label, backend = %backend.model.name, %status, "retrying on another backend");
            return Outcome::NextBackend(Rejection::UpstreamStatus);
        }
        if let Some(l) = lease.take_if(|_| !matches!(status.as_u16(), 502..=504)) {
            l.failed();
        }
    }
    if let Some(l) = lease.as_ref() {
        let remaining = usage::remaining_from_headers(resp.headers());
        if remaining.nearly_spent(NEARLY_SPENT) {
            let reset = usage::cooldown_from_headers(resp.headers(), SystemTime::now());
            l.pacing(true, reset);
        }
    }
    if !keyed {
        *lease = None;
    }
    Outcome::Respond(resp)
}

/// The attempt on backend `idx` failed before any response: another backend when the
/// upstream did not process the request and this was not the last try, else the refusal.
pub(super) fn upstream_failed(
    pool: &PoolState,
    idx: usize,
    failure: Failure,
    error: &(dyn std::error::Error + 'static),
    last_try: bool,
) -> Outcome {
    let backend = &pool.backends[idx];
    backend.counters.record_failure();
    pool.observe(idx, false);
    let kind = failure.rejection();
    tracing::warn!(pool = %pool.label, backend = %backend.model.name, error = %ErrorChain(error), "upstream request failed");
    if failure.retryable() && !last_try {
        return Outcome::NextBackend(kind);
    }
    Outcome::Fail(Refusal::new(
        kind,
        format!(
            "backend {} of pool {} failed: {}",
            backend.model.name,
            pool.label,
            kind.as_str()
        ),
    ))
}

/// The attempt on backend `idx` sent no response headers within `timeout`: the refusal is
/// the answer (the upstream may be working on the request, so it is not replayed).
pub(super) fn timed_out(pool: &PoolState, idx: usize, timeout: Duration) -> Outcome {
    let backend = &pool.backends[idx];
    backend.counters.record_failure();
    pool.observe(idx, false);
    tracing::warn!(pool = %pool.label, backend = %backend.model.name, timeout = ?timeout, "upstream timed out");
    Outcome::Fail(Refusal::new(
        Rejection::UpstreamTimeout,
        format!(
            "backend {} of pool {} sent no response headers within {:?}",
            backend.model.name, pool.label, timeout
        ),
    ))
}

/// Whether the response declares a body small enough to read for a quota error.
fn small_body(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_ERROR_BODY)
}
