//! One request's way through the proxy: route → backend → key → rewrite → upstream → back.

use super::ProxyBody;
use super::error::Rejection;
use super::headers::strip_hop_by_hop;
use crate::dataplane::{BackendState, Dataplane, KeyPoolState, KeyState, PoolState};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyway_api::model::{Auth, Scheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_KEYWAY_BACKEND: HeaderName = HeaderName::from_static("x-keyway-backend");
static X_KEYWAY_KEY_ID: HeaderName = HeaderName::from_static("x-keyway-key-id");
static X_KEYWAY_POOL: HeaderName = HeaderName::from_static("x-keyway-pool");

/// Timeouts and response decoration for the traffic port.
#[derive(Clone, Debug)]
pub struct ForwarderSettings {
    /// TCP (and TLS) connect to an upstream.
    pub connect_timeout: Duration,
    /// From request sent to upstream response headers received.
    pub response_timeout: Duration,
    /// Add `x-keyway-pool`, `x-keyway-backend` and `x-keyway-key-id` to responses.
    pub expose_headers: bool,
}

/// Forwards requests according to the current [`Dataplane`] router.
pub struct Forwarder {
    dataplane: Arc<Dataplane>,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    settings: ForwarderSettings,
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            dataplane,
            client,
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
        let _in_flight = InFlight(metrics.in_flight.clone());

        let router = self.dataplane.router();
        if !self.dataplane.is_loaded() {
            return self.reject(Rejection::NotReady, "no configuration loaded yet");
        }
        let (mut parts, body) = req.into_parts();
        let Some(pool) = router.route(parts.uri.path(), &parts.headers) else {
            let msg = format!("no pool routes {} {}", parts.method, parts.uri.path());
            return self.reject(Rejection::NoRoute, &msg);
        };
        let Some(backend) = pool.pick_backend() else {
            let msg = format!("pool {} has no backend that takes traffic", pool.label);
            return self.reject(Rejection::NoBackends, &msg);
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
        parts.uri = match upstream_uri(backend, parts.uri.path(), query.as_deref()) {
            Ok(uri) => uri,
            Err(_) => {
                return self.reject(
                    Rejection::UpstreamProtocol,
                    "request path is not a valid URI",
                );
            }
        };
        parts.version = Version::HTTP_11;
        parts.headers.insert(header::HOST, backend_host(backend));
        append_forwarded_for(&mut parts.headers, remote);
        parts.headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        parts.headers.insert(&X_REQUEST_ID, request_id.clone());

        backend.counters.record_use();
        if let Some((kp, k)) = key {
            k.counters.record_use();
            metrics
                .key_requests
                .with_label_values(&[kp.label.as_str(), k.id.as_str()])
                .inc();
        }

        let upstream_req = Request::from_parts(parts, body.boxed());
        let overhead_before = started.elapsed();
        let result = tokio::time::timeout(
            self.settings.response_timeout,
            self.client.request(upstream_req),
        )
        .await;
        let after_upstream = Instant::now();

        let mut resp = match result {
            Ok(Ok(resp)) => resp.map(|b| b.boxed()),
            Ok(Err(error)) => {
                backend.counters.record_failure();
                let kind = if error.is_connect() {
                    Rejection::UpstreamConnect
                } else {
                    Rejection::UpstreamProtocol
                };
                tracing::warn!(pool = %pool.label, backend = %backend.model.name, %error, "upstream request failed");
                let msg = format!(
                    "backend {} of pool {} failed: {}",
                    backend.model.name,
                    pool.label,
                    kind.as_str()
                );
                return self.finish(
                    self.reject(kind, &msg),
                    pool,
                    backend,
                    key,
                    &request_id,
                    started,
                );
            }
            Err(_) => {
                backend.counters.record_failure();
                tracing::warn!(pool = %pool.label, backend = %backend.model.name, timeout = ?self.settings.response_timeout, "upstream timed out");
                let msg = format!(
                    "backend {} of pool {} sent no response headers within {:?}",
                    backend.model.name, pool.label, self.settings.response_timeout
                );
                return self.finish(
                    self.reject(Rejection::UpstreamTimeout, &msg),
                    pool,
                    backend,
                    key,
                    &request_id,
                    started,
                );
            }
        };

        let status = resp.status();
        if status.is_server_error() {
            backend.counters.record_failure();
        }
        if let Some((_, k)) = key
            && matches!(status.as_u16(), 401 | 403 | 429)
        {
            k.counters.record_failure();
        }
        strip_hop_by_hop(resp.headers_mut());
        let resp = self.finish(resp, pool, backend, key, &request_id, started);
        metrics
            .overhead
            .observe((overhead_before + after_upstream.elapsed()).as_secs_f64());
        resp
    }

    fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        pool: &PoolState,
        backend: &BackendState,
        key: Option<(&Arc<KeyPoolState>, &KeyState)>,
        request_id: &HeaderValue,
        started: Instant,
    ) -> Response<ProxyBody> {
        let metrics = self.dataplane.metrics();
        let headers = resp.headers_mut();
        headers.insert(&X_REQUEST_ID, request_id.clone());
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
