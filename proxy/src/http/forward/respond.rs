//! Respond / account: the answer on its way back. The response body keeps the request (and
//! the backend) counted as in flight until it ends, settles the key's lease with the tokens
//! it reports, and bounds idle streams; the headers say where the request went; the metrics
//! count it.

use super::place::Exchange;
use super::{Forwarder, X_REQUEST_ID};
use crate::balance::OwnedInFlightGuard;
use crate::dataplane::{BackendState, KeyPoolState};
use crate::http::ProxyBody;
use crate::http::body::{IdleTimeout, SseKeepAlive};
use crate::http::error::{Refusal, Rejection};
use crate::http::response::{ClusterTokens, RequestGauge, ResponseBody, UsageTap};
use crate::keys::{Lease, Unavailable};
use http::{HeaderName, HeaderValue, Response, header};
use http_body_util::BodyExt;
use keyway_api::model::Mode;

static X_KEYWAY_BACKEND: HeaderName = HeaderName::from_static("x-keyway-backend");
static X_KEYWAY_KEY_ID: HeaderName = HeaderName::from_static("x-keyway-key-id");
static X_KEYWAY_POOL: HeaderName = HeaderName::from_static("x-keyway-pool");
static X_KEYWAY_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-keyway-overhead-ms");

/// The answer of the attempt that ends the request (its hop-by-hop headers stripped).
pub(super) struct Answer {
    pub head: http::response::Parts,
    pub body: ProxyBody,
    /// The index of the backend that answered.
    pub backend: usize,
    pub key_id: Option<String>,
    /// The key's lease, settled when the body ends.
    pub lease: Option<Lease>,
    /// Counts the request on its backend until the body ends (least-request balancing).
    pub in_flight: OwnedInFlightGuard,
}

/// Remembers the session a successful answer opened (an affinity header the request did not
/// send), so the session's next requests come back to this backend with this key.
pub(super) async fn learn(
    ex: &Exchange<'_>,
    head: &http::response::Parts,
    backend: usize,
    key_id: Option<&str>,
) {
    if head.status.is_success() {
        ex.pool
            .learn_session(
                ex.placement.affinity_value.as_deref(),
                &head.headers,
                backend,
                key_id,
            )
            .await;
    }
}

// === impl Forwarder ===

impl Forwarder {
    /// The client's response: the body wrapped so it bounds idle streams, keeps SSE alive
    /// and settles the key, then decorated and counted.
    pub(super) fn respond(
        &self,
        ex: &Exchange<'_>,
        answer: Answer,
        gauge: RequestGauge,
    ) -> Response<ProxyBody> {
        let metrics = self.dataplane.metrics();
        let pool = ex.pool;
        let backend = &pool.backends[answer.backend];
        let (mut parts, upstream) = (answer.head, answer.body);
        let is_sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut upstream = upstream;
        if let Some(idle) = pool.model.timeouts.idle_stream {
            upstream = IdleTimeout::new(upstream, idle).boxed();
        }
        if let Some(every) = pool.model.sse_keep_alive
            && is_sse
        {
            // Comments change the length: the body is chunked from here on.
            parts.headers.remove(header::CONTENT_LENGTH);
            upstream = SseKeepAlive::new(upstream, every).boxed();
        }
        let cluster = (pool.model.mode == Mode::MultiCluster).then(|| ClusterTokens {
            counters: backend.counters.clone(),
            total: metrics
                .clusters
                .tokens
                .with_label_values(&[pool.label.as_str(), backend.model.name.as_str()]),
        });
        let tap = match (answer.lease, ex.key_pool) {
            (Some(l), Some(kp)) => {
                let strip = ex.keys.strip_usage && is_sse;
                if strip {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                let tokens = kp.tokens_counter(metrics, l.id());
                Some(UsageTap::new(Some(l), is_sse, strip, Some(tokens), cluster))
            }
            _ => cluster.map(|c| UsageTap::new(None, is_sse, false, None, Some(c))),
        };
        let body = ResponseBody::new(
            upstream,
            answer.in_flight,
            gauge,
            pool.series
                .stream_errors
                .get(|| {
                    metrics
                        .stream_errors
                        .with_label_values(&[pool.label.as_str()])
                })
                .clone(),
            tap,
        );
        let resp = Response::from_parts(parts, body.boxed());
        self.finish(resp, ex, backend, answer.key_id.as_deref())
    }

    /// Decorates and counts a response from `backend`: where it went (`x-keyway-*` when
    /// exposed), the request id, Keyway's overhead; requests, overhead and duration metrics.
    pub(super) fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        ex: &Exchange<'_>,
        backend: &BackendState,
        key_id: Option<&str>,
    ) -> Response<ProxyBody> {
        let elapsed = ex.started.elapsed();
        let overhead = elapsed.saturating_sub(ex.upstream_time);
        let metrics = self.dataplane.metrics();
        let pool = ex.pool;
        let headers = resp.headers_mut();
        if self.settings.expose_headers {
            if let Ok(v) = HeaderValue::from_str(&backend.model.name) {
                headers.insert(&X_KEYWAY_BACKEND, v);
            }
            if let Some(Ok(v)) = key_id.map(HeaderValue::from_str) {
                headers.insert(&X_KEYWAY_KEY_ID, v);
            }
        }
        let by_status = || {
            metrics.requests.with_label_values(&[
                pool.label.as_str(),
                backend.model.name.as_str(),
                resp.status().as_str(),
            ])
        };
        if resp.status() == http::StatusCode::OK {
            backend.series.ok.get(by_status).inc();
        } else {
            by_status().inc();
        }
        metrics.overhead.observe(overhead.as_secs_f64());
        let headers = resp.headers_mut();
        headers.insert(&X_REQUEST_ID, ex.request_id.clone());
        if self.settings.overhead_header
            && let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0))
        {
            headers.insert(&X_KEYWAY_OVERHEAD_MS, v);
        }
        if self.settings.expose_headers
            && let Ok(v) = HeaderValue::from_str(&pool.label)
        {
            headers.insert(&X_KEYWAY_POOL, v);
        }
        pool.series
            .duration
            .get(|| {
                metrics
                    .request_duration
                    .with_label_values(&[pool.label.as_str()])
            })
            .observe(elapsed.as_secs_f64());
        resp
    }

    /// No key can take the request: 429 with `Retry-After` at the earliest refill, naming the
    /// pool and the reason (never the keys' values).
    pub(super) fn keys_unavailable(
        &self,
        kp: &KeyPoolState,
        unavailable: &Unavailable,
        refused: usize,
        request_id: &HeaderValue,
    ) -> Response<ProxyBody> {
        let retry_after = unavailable.retry_after_or_default();
        let mut msg = format!("ApiKeyPool {}: {unavailable}", kp.label);
        if refused > 0 {
            msg.push_str(&format!(
                "; {refused} key(s) were refused upstream for this request"
            ));
        }
        self.dataplane
            .metrics()
            .key_unavailable
            .with_label_values(&[kp.label.as_str(), unavailable.reason.as_str()])
            .inc();
        let mut resp = self.refuse(Refusal::new(Rejection::KeysUnavailable, msg));
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        resp.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
        resp
    }
}
