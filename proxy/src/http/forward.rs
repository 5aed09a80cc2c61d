//! One request's way through the proxy: route → key → backend → rewrite → upstream → back.
//!
//! The attempt loop lives in [`Forwarder::serve`]. Two kinds of retry share it:
//! - a **key refusal** (429, a quota error, 401/403) settles that key's lease and replays the
//!   request with the next eligible key, before anything reaches the client;
//! - a **backend failure** (connect error, 502/503/504, refused HTTP/2 stream) replays it on
//!   another backend with the same key, up to `spec.retry.maxRetries`.
//!
//! Both need a replayable (buffered) body; a request whose body streamed through is sent once.

use super::body::{IdleTimeout, RequestBody, SseKeepAlive};
use super::client::{self, ErrorChain, UpstreamClient};
use super::error::Rejection;
use super::headers::strip_hop_by_hop;
use super::inject;
use super::response::{ClusterTokens, RequestGauge, ResponseBody, UsageTap};
use super::{BoxError, ProxyBody};
use crate::dataplane::{BackendState, Dataplane, KeyPoolState, PoolState};
use crate::dataplane::{PlaceError, Placement};
use crate::keys::{KeyId, Lease, Unavailable};
use crate::usage;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use keyway_api::model::{Auth, Mode, Protocol, Scheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_KEYWAY_BACKEND: HeaderName = HeaderName::from_static("x-keyway-backend");
static X_KEYWAY_KEY_ID: HeaderName = HeaderName::from_static("x-keyway-key-id");
static X_KEYWAY_POOL: HeaderName = HeaderName::from_static("x-keyway-pool");
static X_KEYWAY_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-keyway-overhead-ms");

/// Upstream error bodies up to this size are read to recognise quota errors.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Below this share of a key's remaining requests or tokens, other keys are preferred.
const NEARLY_SPENT: f64 = 0.05;
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

/// Forwards requests according to the current [`Dataplane`] router.
pub struct Forwarder {
    dataplane: Arc<Dataplane>,
    client: UpstreamClient,
    tls: rustls::ClientConfig,
    settings: ForwarderSettings,
}

/// What one upstream attempt came to.
enum Outcome {
    /// Send this response to the client.
    Respond(Response<ProxyBody>),
    /// The key was refused; try the next key (same backend allowed).
    NextKey(Response<ProxyBody>),
    /// The backend failed; try another backend (same key).
    NextBackend(Rejection),
}

/// The request as it is sent upstream, rebuilt for every attempt.
struct Prepared {
    method: http::Method,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: RequestBody,
}

// === impl Forwarder ===

impl Forwarder {
    pub fn new(dataplane: Arc<Dataplane>, settings: ForwarderSettings) -> anyhow::Result<Self> {
        let tls = crate::tls::upstream_config(settings.upstream_ca.as_deref())?;
        let client = client::build(settings.connect_timeout, tls.clone(), false);
        Ok(Self {
            dataplane,
            client,
            tls,
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
        let started = Instant::now();
        let metrics = self.dataplane.metrics();
        metrics.in_flight.inc();
        // Moves into the response body on success, so streams count until they end.
        let gauge = RequestGauge(metrics.in_flight.clone());

        let router = self.dataplane.router();
        if !self.dataplane.is_loaded() {
            return self.reject(Rejection::NotReady, "no configuration loaded yet");
        }
        let (mut parts, body) = req.into_parts();

        // Read the body ahead only when a model route, key injection or a retry needs it.
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = match RequestBody::read(body, router.read_ahead_bytes(), content_length).await {
            Ok(b) => b,
            Err(error) => {
                tracing::debug!(%error, "client request body failed");
                return self.reject(Rejection::ClientBody, "the request body could not be read");
            }
        };
        let model = if router.needs_model() {
            body.bytes().and_then(|b| peek_model(b))
        } else {
            None
        };

        let Some(pool) = router.route(parts.uri.path(), &parts.headers, model.as_deref()) else {
            let msg = format!("no pool routes {} {}", parts.method, parts.uri.path());
            return self.reject(Rejection::NoRoute, &msg);
        };
        if !keyway_api::model::Cidr::allows(&pool.model.allowed_sources, remote.ip()) {
            let msg = format!(
                "pool {} does not accept requests from {}; see its spec.allowedSources",
                pool.label,
                remote.ip()
            );
            return self.reject(Rejection::ForbiddenSource, &msg);
        }
        let key_pool = match &pool.keys {
            Ok(kp) => kp.as_ref(),
            Err(name) => {
                let msg = format!(
                    "ApiKeyPool {name} referenced by pool {} is not available; see its status",
                    pool.label
                );
                return self.reject(Rejection::KeyPoolUnavailable, &msg);
            }
        };

        let request_id = match parts.headers.get(&X_REQUEST_ID) {
            Some(v) => v.clone(),
            None => new_request_id(),
        };
        strip_hop_by_hop(&mut parts.headers);
        append_forwarded_for(&mut parts.headers, remote);
        parts.headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        parts.headers.insert(&X_REQUEST_ID, request_id.clone());

        let mut prepared = Prepared {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
        };
        let placement = match pool.place(&prepared.headers, model.as_deref()).await {
            Ok(p) => p,
            Err(PlaceError::NoCluster { model }) => {
                let msg = match model {
                    Some(m) => format!(
                        "pool {}: no cluster can take model {m:?} now (each is unhealthy, lacks the model, or is overloaded)",
                        pool.label
                    ),
                    None => format!(
                        "pool {}: no cluster can take traffic now (each is unhealthy or overloaded)",
                        pool.label
                    ),
                };
                return self.reject(Rejection::NoCluster, &msg);
            }
            Err(PlaceError::SessionGone { backend }) => {
                let msg = format!(
                    "session not found: its backend {backend} is no longer part of pool {}; start a new session",
                    pool.label
                );
                return self.reject(Rejection::SessionGone, &msg);
            }
        };
        let mut pinned_key = placement.key_id.clone();
        let mut strip_usage = false;
        let mut key_affinity = None;
        if let Some(kp) = key_pool {
            inject::strip_client_credential(&pool.model.auth, &mut prepared.headers);
            if matches!(pool.model.auth, Auth::BodyField { .. }) && !prepared.body.replayable() {
                let msg = format!(
                    "pool {} injects the key into the JSON body, which must be at most {} bytes",
                    pool.label,
                    router.read_ahead_bytes()
                );
                return self.reject(Rejection::BodyTooLarge, &msg);
            }
            if kp.model.request_stream_usage
                && let Some(rewritten) = prepared
                    .body
                    .bytes()
                    .and_then(|b| usage::add_include_usage(b))
            {
                prepared.body = RequestBody::Buffered(Bytes::from(rewritten));
                prepared.headers.remove(header::CONTENT_LENGTH);
                strip_usage = true;
            }
            key_affinity = key_affinity_hash(kp, &prepared);
        }

        let hash = pool.affinity_hash(&prepared.headers);
        let max_backend_retries = if prepared.body.replayable() {
            pool.model.retry.max_retries as usize
        } else {
            0
        };
        let mut failed_backends: Vec<usize> = Vec::new();
        let mut refused_keys: Vec<KeyId> = Vec::new();
        let mut lease: Option<Lease> = None;
        // Time spent waiting on upstreams; everything else is Keyway's overhead.
        let mut upstream_time = Duration::ZERO;

        for _ in 0..MAX_ATTEMPTS {
            // A session keeps the key that opened it while that key may be used.
            if let (Some(kp), Some(id)) = (key_pool, pinned_key.take())
                && lease.is_none()
            {
                match kp.engine.try_acquire_id(&id) {
                    Some(l) => {
                        metrics
                            .key_requests
                            .with_label_values(&[kp.label.as_str(), l.id()])
                            .inc();
                        lease = Some(l);
                    }
                    None => pool.cluster_metrics.deviation("session_key_unavailable"),
                }
            }
            if let Some(kp) = key_pool
                && lease.is_none()
            {
                let waited = Instant::now();
                // Refused keys are not excluded: the engine already holds them out (cooling
                // or disabled), and once a cooldown ends the waiting request may use them.
                let acquired = kp.engine.acquire(key_affinity, &[]).await;
                let wait = waited.elapsed();
                metrics
                    .key_wait
                    .with_label_values(&[kp.label.as_str()])
                    .observe(wait.as_secs_f64());
                match acquired {
                    Ok(l) => {
                        metrics
                            .key_requests
                            .with_label_values(&[kp.label.as_str(), l.id()])
                            .inc();
                        lease = Some(l);
                    }
                    Err(unavailable) => {
                        return self.keys_unavailable(kp, &unavailable, &refused_keys, &request_id);
                    }
                }
            }
            let Some(idx) = next_backend(pool, &placement, hash, &failed_backends) else {
                let msg = format!("pool {} has no backend that takes traffic", pool.label);
                return self.reject(Rejection::NoBackends, &msg);
            };
            let backend = &pool.backends[idx];
            let mut tried = failed_backends.clone();
            tried.push(idx);
            // A session's backend owns the session: its failure is the answer.
            let last_backend_try = placement.pinned
                || failed_backends.len() >= max_backend_retries
                || !pool.can_retry(&tried);
            let key_id = lease.as_ref().map(|l| l.id().to_string());

            let attempt_started = Instant::now();
            let upstream_req =
                match self.build_request(pool, backend, &mut prepared, lease.as_ref()) {
                    Ok(r) => r,
                    Err(rejection) => return rejection,
                };
            backend.counters.record_use();
            let guard = pool.start_request(idx);
            let response_timeout = pool
                .model
                .timeouts
                .response_headers
                .unwrap_or(self.settings.response_timeout);
            let result = tokio::time::timeout(
                response_timeout,
                self.client_for(pool, backend).request(upstream_req),
            )
            .await;
            let received = Instant::now();
            upstream_time += received - attempt_started;

            let outcome = match result {
                Ok(Ok(resp)) => {
                    metrics
                        .upstream_ttfb
                        .with_label_values(&[pool.label.as_str()])
                        .observe((received - attempt_started).as_secs_f64());
                    self.classify(pool, idx, resp, &mut lease, key_pool, last_backend_try)
                        .await
                }
                Ok(Err(error)) => {
                    backend.counters.record_failure();
                    pool.observe(idx, false);
                    let kind = if error.is_connect() {
                        Rejection::UpstreamConnect
                    } else {
                        Rejection::UpstreamProtocol
                    };
                    tracing::warn!(pool = %pool.label, backend = %backend.model.name, error = %ErrorChain(&error), "upstream request failed");
                    let msg = format!(
                        "backend {} of pool {} failed: {}",
                        backend.model.name,
                        pool.label,
                        kind.as_str()
                    );
                    if (error.is_connect() || client::is_refused_stream(&error))
                        && !last_backend_try
                    {
                        Outcome::NextBackend(kind)
                    } else {
                        Outcome::Respond(self.reject(kind, &msg))
                    }
                }
                Err(_) => {
                    backend.counters.record_failure();
                    pool.observe(idx, false);
                    tracing::warn!(pool = %pool.label, backend = %backend.model.name, timeout = ?response_timeout, "upstream timed out");
                    let msg = format!(
                        "backend {} of pool {} sent no response headers within {:?}",
                        backend.model.name, pool.label, response_timeout
                    );
                    Outcome::Respond(self.reject(Rejection::UpstreamTimeout, &msg))
                }
            };

            match outcome {
                Outcome::NextBackend(kind) => {
                    metrics
                        .retries
                        .with_label_values(&[pool.label.as_str(), kind.as_str()])
                        .inc();
                    failed_backends.push(idx);
                }
                Outcome::NextKey(resp) => {
                    if !prepared.body.replayable() {
                        let overhead = started.elapsed().saturating_sub(upstream_time);
                        return self.finish(
                            resp,
                            pool,
                            backend,
                            key_id.as_deref(),
                            &request_id,
                            started,
                            overhead,
                        );
                    }
                    if let Some(id) = key_id {
                        refused_keys.push(id);
                    }
                    metrics
                        .retries
                        .with_label_values(&[pool.label.as_str(), "key_refused"])
                        .inc();
                }
                Outcome::Respond(resp) => {
                    let (mut resp_parts, resp_body) = resp.into_parts();
                    strip_hop_by_hop(&mut resp_parts.headers);
                    if resp_parts.status.is_success() {
                        pool.learn_session(
                            placement.affinity_value.as_deref(),
                            &resp_parts.headers,
                            idx,
                            key_id.as_deref(),
                        )
                        .await;
                    }
                    let is_sse = resp_parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("text/event-stream"));
                    let mut upstream = resp_body;
                    if let Some(idle) = pool.model.timeouts.idle_stream {
                        upstream = IdleTimeout::new(upstream, idle).boxed();
                    }
                    if let Some(every) = pool.model.sse_keep_alive
                        && is_sse
                    {
                        // Comments change the length: the body is chunked from here on.
                        resp_parts.headers.remove(header::CONTENT_LENGTH);
                        upstream = SseKeepAlive::new(upstream, every).boxed();
                    }
                    let cluster = (pool.model.mode == Mode::MultiCluster).then(|| ClusterTokens {
                        counters: backend.counters.clone(),
                        total: metrics
                            .clusters
                            .tokens
                            .with_label_values(&[pool.label.as_str(), backend.model.name.as_str()]),
                    });
                    let tap = match (lease.take(), key_pool) {
                        (Some(l), Some(kp)) => {
                            let strip = strip_usage && is_sse;
                            if strip {
                                resp_parts.headers.remove(header::CONTENT_LENGTH);
                            }
                            let tokens = metrics
                                .key_tokens
                                .with_label_values(&[kp.label.as_str(), l.id()]);
                            Some(UsageTap::new(Some(l), is_sse, strip, Some(tokens), cluster))
                        }
                        _ => cluster.map(|c| UsageTap::new(None, is_sse, false, None, Some(c))),
                    };
                    let body = ResponseBody::new(
                        upstream,
                        guard,
                        gauge,
                        metrics
                            .stream_errors
                            .with_label_values(&[pool.label.as_str()]),
                        tap,
                    );
                    let resp = Response::from_parts(resp_parts, body.boxed());
                    let overhead = started.elapsed().saturating_sub(upstream_time);
                    return self.finish(
                        resp,
                        pool,
                        backend,
                        key_id.as_deref(),
                        &request_id,
                        started,
                        overhead,
                    );
                }
            }
        }
        self.reject(
            Rejection::UpstreamConnect,
            "too many upstream attempts for one request",
        )
    }

    /// Builds one attempt's request: the key injected, the Host of the backend.
    #[allow(clippy::result_large_err)]
    fn build_request(
        &self,
        pool: &PoolState,
        backend: &BackendState,
        prepared: &mut Prepared,
        lease: Option<&Lease>,
    ) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
        let mut headers = prepared.headers.clone();
        let mut query = prepared.query.clone();
        let body = match lease {
            Some(l) => {
                query = inject::inject(&pool.model.auth, l.value(), &mut headers, query.as_deref());
                match (&pool.model.auth, prepared.body.bytes()) {
                    (Auth::BodyField { .. }, Some(bytes)) => {
                        match inject::inject_body(&pool.model.auth, l.value(), bytes) {
                            Some(b) => {
                                headers.remove(header::CONTENT_LENGTH);
                                Some(Full::new(b).map_err(|never| match never {}).boxed())
                            }
                            None => {
                                return Err(self.reject(
                                    Rejection::ClientBody,
                                    "the pool injects the key into a JSON body field; the request body is not a JSON object",
                                ));
                            }
                        }
                    }
                    _ => prepared.body.take_for_upstream(),
                }
            }
            None => prepared.body.take_for_upstream(),
        };
        let Some(body) = body else {
            return Err(self.reject(Rejection::ClientBody, "the request body was already sent"));
        };
        headers.insert(header::HOST, backend_host(backend));
        for (name, value) in &pool.model.default_headers {
            if !headers.contains_key(name.as_str())
                && let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                )
            {
                headers.insert(n, v);
            }
        }
        let uri = upstream_uri(backend, &prepared.path, query.as_deref()).map_err(|_| {
            self.reject(
                Rejection::UpstreamProtocol,
                "request path is not a valid URI",
            )
        })?;
        let mut req = Request::new(body);
        *req.method_mut() = prepared.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Decides what an upstream response means for the key and the backend.
    async fn classify(
        &self,
        pool: &PoolState,
        idx: usize,
        resp: Response<Incoming>,
        lease: &mut Option<Lease>,
        key_pool: Option<&Arc<KeyPoolState>>,
        last_backend_try: bool,
    ) -> Outcome {
        let backend = &pool.backends[idx];
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        // Key problems (401/403/429, quota errors) are the key pool's business and never
        // count against the backend.
        let quota_candidate = lease.is_some() && status.is_client_error();
        let (body, quota_error): (ProxyBody, bool) =
            if quota_candidate && small_body(&parts.headers) {
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
                (body.map_err(BoxError::from).boxed(), false)
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

        pool.observe(idx, !status.is_server_error());
        if status.is_server_error() {
            backend.counters.record_failure();
            if matches!(status.as_u16(), 502..=504) && !last_backend_try {
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
        if key_pool.is_none() {
            *lease = None;
        }
        Outcome::Respond(resp)
    }

    /// The shared upstream client, or the backend's own when it speaks HTTP/2 only or the pool
    /// sets its own connect timeout.
    fn client_for<'a>(&'a self, pool: &PoolState, backend: &'a BackendState) -> &'a UpstreamClient {
        let timeout = pool
            .model
            .timeouts
            .connect
            .unwrap_or(self.settings.connect_timeout);
        let http2 = backend.model.protocol == Protocol::Http2;
        if !http2 && timeout == self.settings.connect_timeout {
            return &self.client;
        }
        backend
            .client
            .get_or_init(|| client::build(timeout, self.tls.clone(), http2))
    }

    /// No key can take the request: 429 with `Retry-After` at the earliest refill, naming the
    /// pool and the reason (never the keys' values).
    fn keys_unavailable(
        &self,
        kp: &KeyPoolState,
        unavailable: &Unavailable,
        refused: &[KeyId],
        request_id: &HeaderValue,
    ) -> Response<ProxyBody> {
        let retry_after = unavailable.retry_after_or_default();
        let mut msg = format!("ApiKeyPool {}: {unavailable}", kp.label);
        if !refused.is_empty() {
            msg.push_str(&format!(
                "; {} key(s) were refused upstream for this request",
                refused.len()
            ));
        }
        self.dataplane
            .metrics()
            .key_unavailable
            .with_label_values(&[kp.label.as_str(), unavailable.reason.as_str()])
            .inc();
        let mut resp = self.reject(Rejection::KeysUnavailable, &msg);
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        resp.headers_mut().insert(&X_REQUEST_ID, request_id.clone());
        resp
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        pool: &PoolState,
        backend: &BackendState,
        key_id: Option<&str>,
        request_id: &HeaderValue,
        started: Instant,
        overhead: Duration,
    ) -> Response<ProxyBody> {
        let metrics = self.dataplane.metrics();
        if self.settings.expose_headers {
            let headers = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&backend.model.name) {
                headers.insert(&X_KEYWAY_BACKEND, v);
            }
            if let Some(Ok(v)) = key_id.map(HeaderValue::from_str) {
                headers.insert(&X_KEYWAY_KEY_ID, v);
            }
        }
        metrics
            .requests
            .with_label_values(&[
                pool.label.as_str(),
                backend.model.name.as_str(),
                resp.status().as_str(),
            ])
            .inc();
        self.finish_plain(resp, pool, request_id, started, overhead)
    }

    /// Response decoration that does not depend on a backend.
    fn finish_plain(
        &self,
        mut resp: Response<ProxyBody>,
        pool: &PoolState,
        request_id: &HeaderValue,
        started: Instant,
        overhead: Duration,
    ) -> Response<ProxyBody> {
        let metrics = self.dataplane.metrics();
        metrics.overhead.observe(overhead.as_secs_f64());
        let headers = resp.headers_mut();
        headers.insert(&X_REQUEST_ID, request_id.clone());
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
        metrics
            .request_duration
            .with_label_values(&[pool.label.as_str()])
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    fn reject(&self, rejection: Rejection, message: &str) -> Response<ProxyBody> {
        self.dataplane
            .metrics()
            .rejected
            .with_label_values(&[rejection.as_str()])
            .inc();
        rejection.response(message)
    }
}

/// The backend for the next attempt: where placement put the request, else the pool's
/// balancer (multiCluster: another eligible cluster, counted as a deviation).
fn next_backend(
    pool: &PoolState,
    placement: &Placement,
    hash: Option<u64>,
    failed: &[usize],
) -> Option<usize> {
    match placement.backend {
        Some(b) if !failed.contains(&b) => Some(b),
        Some(_) if placement.pinned => None,
        _ if pool.model.mode == Mode::MultiCluster => {
            let next = pool.retry_cluster(placement.model.as_deref(), failed);
            if next.is_some() && !failed.is_empty() {
                pool.cluster_metrics.deviation("retry");
            }
            next
        }
        _ => pool.pick(hash, failed),
    }
}

/// The stickiness hash for key selection: the configured header, else the prompt prefix.
fn key_affinity_hash(kp: &KeyPoolState, prepared: &Prepared) -> Option<u64> {
    let st = kp.model.stickiness.as_ref()?;
    if let Some(v) = prepared.headers.get(st.header.as_str()) {
        return Some(crate::hash::hash_key(v.as_bytes()));
    }
    let n = st.prompt_prefix_bytes as usize;
    if n == 0 {
        return None;
    }
    let body = prepared.body.bytes()?;
    Some(crate::hash::hash_key(&body[..body.len().min(n)]))
}

/// Whether the response declares a body small enough to read for a quota error.
fn small_body(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_ERROR_BODY)
}

/// The JSON body's `model`, for model routes. Other fields are skipped unparsed.
pub fn peek_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

fn upstream_uri(
    backend: &BackendState,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, http::Error> {
    let endpoint = &backend.model.endpoint;
    let scheme = match endpoint.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let mut path_and_query = String::with_capacity(
        endpoint.path_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    path_and_query.push_str(&endpoint.path_prefix);
    path_and_query.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Uri::builder()
        .scheme(scheme)
        .authority(endpoint.authority.as_str())
        .path_and_query(path_and_query)
        .build()
}

/// The Host header: `hostHeader` if set, else the endpoint's host (with its port unless it is
/// the scheme's default).
fn backend_host(backend: &BackendState) -> HeaderValue {
    let model = &backend.model;
    if let Some(h) = &model.host_header
        && let Ok(v) = HeaderValue::from_str(h)
    {
        return v;
    }
    let authority = &model.endpoint.authority;
    let host = match model.endpoint.scheme {
        Scheme::Http => authority.strip_suffix(":80"),
        Scheme::Https => authority.strip_suffix(":443"),
    }
    .unwrap_or(authority);
    HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

fn append_forwarded_for(headers: &mut http::HeaderMap, remote: SocketAddr) {
    let ip = remote.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

fn new_request_id() -> HeaderValue {
    let id: u128 = rand::random();
    HeaderValue::from_str(&format!("{id:032x}")).unwrap_or_else(|_| HeaderValue::from_static("0"))
}
