//! One request's way through the proxy, as named stages. [`Forwarder::serve`] reads top-down:
//!
//! 1. **admit**: a config is loaded; the request counts as in flight until its response body
//!    ends.
//! 2. **read / route** (`admit`): the body is read ahead as far as routing and replays need,
//!    the pool is found and checked, the forwarding headers are set.
//! 3. **place** (`place`): where placement puts the request (a session's backend and key, a
//!    multiCluster user's cluster), and what key injection needs prepared.
//! 4. **attempts**, at most [`MAX_ATTEMPTS`] (`attempt`, `classify`): **key** (a lease),
//!    **backend**, **inject** (the upstream request with the key and the backend's Host),
//!    **send**, **classify** (respond, or try the next key, or the next backend).
//! 5. **respond / account** (`respond`): the response body that settles the key's lease and
//!    counts the stream, the decoration headers and the metrics.
//!
//! Two kinds of retry share the attempt loop:
//! - a **key refusal** (429, a quota error, 401/403) settles that key's lease and replays the
//!   request with the next eligible key, before anything reaches the client; when the attempts
//!   run out on refusals, the client gets the upstream's last one (its status and
//!   `Retry-After`), not an error of Keyway's;
//! - a **backend failure** (connect error, 502/503/504, refused HTTP/2 stream) replays it on
//!   another backend with the same key, up to `spec.retry.maxRetries`.
//!
//! Both need a replayable (buffered) body; a request whose body streamed through is sent once.
//!
//! The stages are plain functions called in order, not tower layers: `docs/architecture.md`
//! says why.

mod admit;
mod attempt;
mod classify;
mod place;
mod respond;
#[cfg(test)]
mod tests;

pub use admit::peek_model;
pub(crate) use attempt::without_repeated_segment;

use self::admit::Routed;
use self::attempt::{Tries, build_request, next_backend, send};
use self::classify::{
    Failure, MAX_REFUSED_STREAM_RETRIES, Outcome, classify, stream_refused, timed_out,
    upstream_failed,
};
use self::place::Exchange;
use self::respond::{Answer, learn};
use super::ProxyBody;
use super::error::{Refusal, Rejection};
use super::headers::strip_hop_by_hop;
use super::response::RequestGauge;
use super::upstream::Upstreams;
use crate::dataplane::{Dataplane, PoolState};
use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request never makes more upstream attempts than this, whatever the config.
const MAX_ATTEMPTS: usize = 16;

/// Timeouts and response decoration for the traffic port.
#[derive(Clone, Debug)]
pub struct ForwarderSettings {
    /// TCP (and TLS) connect to an upstream.
    pub connect_timeout: Duration,
    /// From request sent to upstream response headers received.
    pub response_timeout: Duration,
    /// Add `x-keyway-pool`, `x-keyway-backend` and `x-keyway-key-id` to responses.
    pub expose_headers: bool,
    /// Add `x-keyway-overhead-ms` (time spent in Keyway, upstream excluded) to responses.
    pub overhead_header: bool,
    /// Extra CA certificates (PEM) trusted for upstream TLS, besides the webpki roots.
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// Forwards requests according to the current [`Dataplane`] router. One per traffic thread,
/// each with its own upstream connections.
pub struct Forwarder {
    dataplane: Arc<Dataplane>,
    upstreams: Upstreams,
    settings: ForwarderSettings,
}

// === impl Forwarder ===

impl Forwarder {
    pub fn new(dataplane: Arc<Dataplane>, settings: ForwarderSettings) -> anyhow::Result<Self> {
        let tls = match dataplane.upstream_tls() {
            Some(tls) => tls.clone(),
            None => crate::tls::upstream_config(settings.upstream_ca.as_deref())?,
        };
        Ok(Self {
            dataplane,
            upstreams: Upstreams::new(&tls),
            settings,
        })
    }

    /// Serves one request. Never fails: problems become JSON error responses.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        tls: bool,
    ) -> Response<ProxyBody> {
        // admit
        let started = Instant::now();
        let metrics = self.dataplane.metrics();
        metrics.in_flight.inc();
        // Moves into the response body on success, so streams count until they end.
        let gauge = RequestGauge(metrics.in_flight.clone());
        let router = self.dataplane.router();
        if !self.dataplane.is_loaded() {
            return self.refuse(Refusal::new(
                Rejection::NotReady,
                "no configuration loaded yet",
            ));
        }

        // read / route
        let routed = match Routed::read(&router, req, remote, tls).await {
            Ok(r) => r,
            Err(refusal) => return self.refuse(refusal),
        };

        // place
        let placed = routed
            .pool
            .place(&routed.prepared.headers, routed.model.as_deref())
            .await;
        let mut exchange = match routed.placed(placed, started, router.read_ahead_bytes()) {
            Ok(e) => e,
            Err(refusal) => return self.refuse(refusal),
        };

        // attempts, then respond / account
        self.attempts(&mut exchange, gauge).await
    }

    /// The attempt loop: key → backend → inject → send → classify, until an answer.
    async fn attempts(&self, ex: &mut Exchange<'_>, gauge: RequestGauge) -> Response<ProxyBody> {
        let metrics = self.dataplane.metrics();
        let pool = ex.pool;
        let mut tries = Tries::new(ex);
        for attempt in 1..=MAX_ATTEMPTS {
            // key
            if let Some(kp) = ex.key_pool
                && let Err(unavailable) = tries.lease_key(kp, pool, ex.keys.affinity, metrics).await
            {
                return self.keys_unavailable(kp, &unavailable, tries.refused_keys, &ex.request_id);
            }

            // backend (the attempt's one clock read serves the choice and the timings)
            let attempt_started = Instant::now();
            let Some(idx) = next_backend(
                pool,
                &ex.placement,
                ex.backend_hash,
                &tries.failed,
                attempt_started,
            ) else {
                return self.refuse(Refusal::new(
                    Rejection::NoBackends,
                    format!("pool {} has no backend that takes traffic", pool.label),
                ));
            };
            let backend = &pool.backends[idx];
            let last_try = tries.is_last_backend_try(pool, &ex.placement, idx, attempt_started);
            let key_id = tries.lease.as_ref().map(|l| l.id().to_string());

            // inject
            let upstream_req =
                match build_request(pool, backend, &mut ex.prepared, tries.lease.as_ref()) {
                    Ok(r) => r,
                    Err(refusal) => return self.refuse(refusal),
                };
            backend.counters.record_use();
            let in_flight = pool.start_request(idx);

            // send
            let timeout = self.response_timeout(pool);
            let connect_timeout = self.connect_timeout(pool);
            let sent = send(
                &self.upstreams,
                backend,
                upstream_req,
                connect_timeout,
                timeout,
            )
            .await;
            let received = Instant::now();
            ex.upstream_time += received - attempt_started;

            // classify
            let outcome = match sent {
                Ok(Ok(resp)) => {
                    pool.series
                        .ttfb
                        .get(|| {
                            metrics
                                .upstream_ttfb
                                .with_label_values(&[pool.label.as_str()])
                        })
                        .observe((received - attempt_started).as_secs_f64());
                    let keyed = ex.key_pool.is_some();
                    classify(pool, idx, resp, &mut tries.lease, keyed, last_try, received).await
                }
                Ok(Err(error)) => match Failure::of(&error) {
                    Failure::RefusedStream
                        if ex.prepared.body.replayable()
                            && tries.refused_streams < MAX_REFUSED_STREAM_RETRIES =>
                    {
                        tries.refused_streams += 1;
                        stream_refused(pool, idx)
                    }
                    failure => upstream_failed(pool, idx, failure, &error, last_try),
                },
                Err(_) => timed_out(pool, idx, timeout),
            };
            let resp = match outcome {
                Outcome::NextBackend(kind) => {
                    metrics
                        .retries
                        .with_label_values(&[pool.label.as_str(), kind.as_str()])
                        .inc();
                    tries.failed.push(idx);
                    continue;
                }
                Outcome::SameBackend(kind) => {
                    metrics
                        .retries
                        .with_label_values(&[pool.label.as_str(), kind.as_str()])
                        .inc();
                    continue;
                }
                Outcome::NextKey(resp) => {
                    let auth_refused = matches!(resp.status().as_u16(), 401 | 403);
                    tries.auth_refusals += usize::from(auth_refused);
                    // An auth refusal is replayed on one other key at most: a request the
                    // upstream refuses for itself (a bad organization header) must not walk
                    // through, and cast suspicion on, every key of the pool. Out of attempts
                    // (keys refused again and again, say 429s with a short Retry-After), the
                    // client gets the upstream's last refusal, not a made-up 502.
                    if !ex.prepared.body.replayable()
                        || (auth_refused && tries.auth_refusals > 1)
                        || attempt == MAX_ATTEMPTS
                    {
                        return self.finish(resp, ex, backend, key_id.as_deref());
                    }
                    if key_id.is_some() {
                        tries.refused_keys += 1;
                    }
                    metrics
                        .retries
                        .with_label_values(&[pool.label.as_str(), "key_refused"])
                        .inc();
                    continue;
                }
                Outcome::Respond(resp) => resp,
                Outcome::Fail(refusal) => self.refuse(refusal),
            };

            // respond / account
            let (mut head, body) = resp.into_parts();
            strip_hop_by_hop(&mut head.headers);
            learn(ex, &head, idx, key_id.as_deref()).await;
            let answer = Answer {
                head,
                body,
                backend: idx,
                key_id,
                lease: tries.lease.take(),
                in_flight,
            };
            return self.respond(ex, answer, gauge);
        }
        self.refuse(Refusal::new(
            Rejection::UpstreamConnect,
            "too many upstream attempts for one request",
        ))
    }

    /// How long the pool's upstreams have to send response headers.
    fn response_timeout(&self, pool: &PoolState) -> Duration {
        pool.model
            .timeouts
            .response_headers
            .unwrap_or(self.settings.response_timeout)
    }

    /// How long the pool's upstreams have to accept a connection (TCP, TLS, HTTP/2).
    fn connect_timeout(&self, pool: &PoolState) -> Duration {
        pool.model
            .timeouts
            .connect
            .unwrap_or(self.settings.connect_timeout)
    }

    /// Answers the request itself, counted by reason.
    fn refuse(&self, refusal: Refusal) -> Response<ProxyBody> {
        self.dataplane
            .metrics()
            .rejected
            .with_label_values(&[refusal.rejection.as_str()])
            .inc();
        refusal.response()
    }
}
