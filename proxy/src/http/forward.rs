//! One request's way through the proxy: route → backend → key → rewrite → upstream → back.

use super::body::{IdleTimeout, RequestBody, SseKeepAlive};
use super::error::Rejection;
use super::headers::strip_hop_by_hop;
use super::{BoxError, ProxyBody};
use crate::balance::OwnedInFlightGuard as InFlightGuard;
use crate::dataplane::{BackendState, Dataplane, KeyPoolState, KeyState, PoolState};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyway_api::model::{Auth, Protocol, Scheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_KEYWAY_BACKEND: HeaderName = HeaderName::from_static("x-keyway-backend");
static X_KEYWAY_KEY_ID: HeaderName = HeaderName::from_static("x-keyway-key-id");
static X_KEYWAY_POOL: HeaderName = HeaderName::from_static("x-keyway-pool");
static X_KEYWAY_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-keyway-overhead-ms");

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

/// The pooled upstream client (HTTP/1.1 and HTTP/2 over TLS via ALPN).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Forwards requests according to the current [`Dataplane`] router.
pub struct Forwarder {
    dataplane: Arc<Dataplane>,
    client: UpstreamClient,
    tls: rustls::ClientConfig,
    settings: ForwarderSettings,
}

fn build_client(
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
    http2_only: bool,
) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2_only)
        .build(https)
}

/// Keeps the in-flight counts up until the response body is finished or dropped (a client
/// that disconnects drops it, which also cancels the upstream request), and counts bodies
/// that end in an error.
struct ResponseBody {
    inner: ProxyBody,
    _backend: InFlightGuard,
    _request: InFlight,
    stream_errors: prometheus::IntCounter,
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(error))) = &polled {
            self.stream_errors.inc();
            tracing::warn!(error = %ErrorChain(error.as_ref()), "response stream ended with an error");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// True for HTTP/2 REFUSED_STREAM and GOAWAY: the upstream did not process the request.
fn is_refused_stream(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

/// Formats an error with its causes (`a: b: c`), which hyper keeps in the source chain.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The JSON body's `model`, for model routes. Other fields are skipped unparsed.
fn peek_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

/// Decrements the in-flight gauge however the request ends (including client disconnect).
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Forwarder ===

impl Forwarder {
    pub fn new(dataplane: Arc<Dataplane>, settings: ForwarderSettings) -> anyhow::Result<Self> {
        let tls = crate::tls::upstream_config(settings.upstream_ca.as_deref())?;
        let client = build_client(settings.connect_timeout, tls.clone(), false);
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
        let in_flight = InFlight(metrics.in_flight.clone());

        let router = self.dataplane.router();
        if !self.dataplane.is_loaded() {
            return self.reject(Rejection::NotReady, "no configuration loaded yet");
        }
        let (mut parts, body) = req.into_parts();

        // Read the body ahead only when a model route or a retry needs it.
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let read_ahead = router.read_ahead_bytes();
        let mut body = match RequestBody::read(body, read_ahead, content_length).await {
            Ok(b) => b,
            Err(error) => {
                tracing::debug!(%error, "client request body failed");
                return self.reject(Rejection::ClientBody, "the request body could not be read");
            }
        };
        let model = body.bytes().and_then(|b| peek_model(b));

        let Some(pool) = router.route(parts.uri.path(), &parts.headers, model.as_deref()) else {
            let msg = format!("no pool routes {} {}", parts.method, parts.uri.path());
            return self.reject(Rejection::NoRoute, &msg);
        };
        let key = match &pool.keys {
            Ok(None) => None,
            Ok(Some(kp)) => match kp.pick() {
                Some(k) => Some((kp, k)),
                None => {
                    let msg = format!("ApiKeyPool {} has no usable key", kp.label);
                    return self.reject(Rejection::NoKeys, &msg);
                }
            },
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
        let query = inject_key(
            pool,
            key.map(|(_, k)| k),
            &mut parts.headers,
            parts.uri.query(),
        );
        append_forwarded_for(&mut parts.headers, remote);
        parts.headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        parts.headers.insert(&X_REQUEST_ID, request_id.clone());
        if let Some((kp, k)) = key {
            k.counters.record_use();
            metrics
                .key_requests
                .with_label_values(&[kp.label.as_str(), k.id.as_str()])
                .inc();
        }

        let hash = pool.affinity_hash(&parts.headers);
        let response_timeout = pool
            .model
            .timeouts
            .response_headers
            .unwrap_or(self.settings.response_timeout);
        let retries = if body.replayable() {
            pool.model.retry.max_retries
        } else {
            0
        };
        let mut tried: Vec<usize> = Vec::with_capacity(1 + retries as usize);
        let mut overhead = started.elapsed();
        loop {
            // Retries only happen when another backend can take them (see `can_retry`), so
            // running out of backends here means there were none to begin with.
            let Some(idx) = pool.pick(hash, &tried) else {
                let msg = format!("pool {} has no backend that takes traffic", pool.label);
                return self.reject(Rejection::NoBackends, &msg);
            };
            tried.push(idx);
            let backend = &pool.backends[idx];
            let last_try = tried.len() > retries as usize || !pool.can_retry(&tried);
            let attempt_started = Instant::now();
            let Some(upstream_body) = body.take_for_upstream() else {
                return self.reject(Rejection::ClientBody, "the request body was already sent");
            };
            let mut headers = parts.headers.clone();
            headers.insert(header::HOST, backend_host(backend));
            let uri = match upstream_uri(backend, parts.uri.path(), query.as_deref()) {
                Ok(uri) => uri,
                Err(_) => {
                    return self.reject(
                        Rejection::UpstreamProtocol,
                        "request path is not a valid URI",
                    );
                }
            };
            let mut upstream_req = Request::new(upstream_body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = uri;
            *upstream_req.version_mut() = Version::HTTP_11;
            *upstream_req.headers_mut() = headers;
            backend.counters.record_use();
            let guard = pool.start_request(idx);
            let client = self.client_for(pool, backend);
            let result = tokio::time::timeout(response_timeout, client.request(upstream_req)).await;
            let received = Instant::now();

            let failure = match result {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let retryable = matches!(status.as_u16(), 502..=504);
                    pool.observe(idx, !status.is_server_error());
                    if status.is_server_error() {
                        backend.counters.record_failure();
                    }
                    if retryable && !last_try {
                        metrics
                            .retries
                            .with_label_values(&[pool.label.as_str(), "status"])
                            .inc();
                        tracing::info!(pool = %pool.label, backend = %backend.model.name, %status, "retrying on another backend");
                        continue;
                    }
                    if let Some((_, k)) = key
                        && matches!(status.as_u16(), 401 | 403 | 429)
                    {
                        k.counters.record_failure();
                    }
                    let ttfb = received - attempt_started;
                    metrics
                        .upstream_ttfb
                        .with_label_values(&[pool.label.as_str()])
                        .observe(ttfb.as_secs_f64());
                    let (mut resp_parts, resp_body) = resp.into_parts();
                    strip_hop_by_hop(&mut resp_parts.headers);
                    let upstream = resp_body.map_err(BoxError::from).boxed();
                    let upstream = match pool.model.timeouts.idle_stream {
                        Some(idle) => IdleTimeout::new(upstream, idle).boxed(),
                        None => upstream,
                    };
                    let is_sse = resp_parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("text/event-stream"));
                    let upstream = match pool.model.sse_keep_alive {
                        Some(every) if is_sse => {
                            // Comments change the length: the body is chunked from here on.
                            resp_parts.headers.remove(header::CONTENT_LENGTH);
                            SseKeepAlive::new(upstream, every).boxed()
                        }
                        _ => upstream,
                    };
                    let resp_body = ResponseBody {
                        inner: upstream,
                        _backend: guard,
                        _request: in_flight,
                        stream_errors: metrics
                            .stream_errors
                            .with_label_values(&[pool.label.as_str()]),
                    };
                    let resp = Response::from_parts(resp_parts, resp_body.boxed());
                    overhead += received.elapsed();
                    return self.finish(resp, pool, backend, key, &request_id, started, overhead);
                }
                Ok(Err(error)) => {
                    backend.counters.record_failure();
                    pool.observe(idx, false);
                    let retryable = error.is_connect() || is_refused_stream(&error);
                    let kind = if error.is_connect() {
                        Rejection::UpstreamConnect
                    } else {
                        Rejection::UpstreamProtocol
                    };
                    tracing::warn!(pool = %pool.label, backend = %backend.model.name, error = %ErrorChain(&error), "upstream request failed");
                    if retryable && !last_try {
                        metrics
                            .retries
                            .with_label_values(&[pool.label.as_str(), kind.as_str()])
                            .inc();
                        continue;
                    }
                    let msg = format!(
                        "backend {} of pool {} failed: {}",
                        backend.model.name,
                        pool.label,
                        kind.as_str()
                    );
                    (kind, msg)
                }
                Err(_) => {
                    backend.counters.record_failure();
                    pool.observe(idx, false);
                    tracing::warn!(pool = %pool.label, backend = %backend.model.name, timeout = ?response_timeout, "upstream timed out");
                    let msg = format!(
                        "backend {} of pool {} sent no response headers within {:?}",
                        backend.model.name, pool.label, response_timeout
                    );
                    (Rejection::UpstreamTimeout, msg)
                }
            };
            drop(guard);
            let (kind, msg) = failure;
            return self.finish(
                self.reject(kind, &msg),
                pool,
                backend,
                key,
                &request_id,
                started,
                overhead,
            );
        }
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
            .get_or_init(|| build_client(timeout, self.tls.clone(), http2))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        pool: &PoolState,
        backend: &BackendState,
        key: Option<(&Arc<KeyPoolState>, &KeyState)>,
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
        if self.settings.expose_headers {
            if let Ok(v) = HeaderValue::from_str(&pool.label) {
                headers.insert(&X_KEYWAY_POOL, v);
            }
            if let Ok(v) = HeaderValue::from_str(&backend.model.name) {
                headers.insert(&X_KEYWAY_BACKEND, v);
            }
            if let Some(Ok(v)) = key.map(|(_, k)| HeaderValue::from_str(&k.id)) {
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

/// Removes the client's own credential from where the pool injects keys, then injects the
/// chosen key. Returns the (possibly rewritten) query string.
fn inject_key(
    pool: &PoolState,
    key: Option<&KeyState>,
    headers: &mut http::HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    let Some(key) = key else {
        return query.map(str::to_string);
    };
    match &pool.model.auth {
        Auth::Header { name, prefix } => {
            let mut value = String::with_capacity(prefix.len() + key.value.expose().len());
            value.push_str(prefix);
            value.push_str(key.value.expose());
            // Validated at config time: no control characters. Marked sensitive so that
            // HPACK never indexes it and Debug output hides it.
            if let (Ok(name), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                v.set_sensitive(true);
                headers.insert(name, v);
            }
            query.map(str::to_string)
        }
        Auth::Query { param } => {
            let mut out = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                if k != param.as_str() {
                    out.append_pair(&k, &v);
                }
            }
            out.append_pair(param, key.value.expose());
            Some(out.finish())
        }
        // The body is rewritten by the caller, which owns it.
        Auth::BodyField { .. } => query.map(str::to_string),
    }
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
