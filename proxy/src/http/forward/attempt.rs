//! The stages of one upstream attempt before its answer is classified: **key** (a lease on
//! one of the pool's keys), **backend** (where placement put the request, else the pool's
//! balancer), **inject** (the upstream request: the key, the backend's Host, the pool's
//! default headers) and **send** (bounded by the response-header timeout).

use super::admit::Prepared;
use super::place::Exchange;
use crate::dataplane::{BackendState, KeyPoolState, Placement, PoolState};
use crate::http::ProxyBody;
use crate::http::client::UpstreamClient;
use crate::http::error::{Refusal, Rejection};
use crate::http::inject;
use crate::keys::{Lease, Unavailable};
use crate::metrics::Metrics;
use http::{HeaderName, HeaderValue, Request, Uri, Version, header};
use http_body_util::{BodyExt, Full};
use keyway_api::model::{Auth, Mode, Scheme};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one request's attempts have come to so far.
pub(super) struct Tries {
    /// Backends that failed this request (never tried again for it).
    pub failed: Vec<usize>,
    /// Keys the upstream refused for this request.
    pub refused_keys: usize,
    /// 401/403 answers so far: one may be the key's fault, two are the request's.
    pub auth_refusals: usize,
    /// Streams the upstream refused unprocessed (REFUSED_STREAM, GOAWAY), sent again.
    pub refused_streams: usize,
    /// The key of the next attempt; a backend retry keeps it.
    pub lease: Option<Lease>,
    /// A session's key, tried first.
    pinned_key: Option<Arc<str>>,
    /// Backend retries allowed: none when the body streamed through.
    max_backend_retries: usize,
}

/// One attempt on its way: its response headers, or `Err` when none came in time.
pub(super) type Sending = tokio::time::Timeout<hyper_util::client::legacy::ResponseFuture>;

// === impl Tries ===

impl Tries {
    pub fn new(ex: &Exchange<'_>) -> Self {
        let max_backend_retries = if ex.prepared.body.replayable() {
            ex.pool.model.retry.max_retries as usize
        } else {
            0
        };
        Self {
            failed: Vec::new(),
            refused_keys: 0,
            auth_refusals: 0,
            refused_streams: 0,
            lease: None,
            pinned_key: ex.placement.key_id.clone(),
            max_backend_retries,
        }
    }

    /// The key stage: holds a lease for the next attempt. A session keeps the key that
    /// opened it while that key may be used; otherwise the key pool chooses (waiting,
    /// bounded, when no key can take the request now).
    pub async fn lease_key(
        &mut self,
        kp: &KeyPoolState,
        pool: &PoolState,
        affinity: Option<u64>,
        metrics: &Metrics,
    ) -> Result<(), Unavailable> {
        if let Some(id) = self.pinned_key.take()
            && self.lease.is_none()
        {
            match kp.engine.try_acquire_id(&id) {
                Some(l) => {
                    kp.count_request(metrics, l.id());
                    self.lease = Some(l);
                }
                None => pool.cluster_metrics.deviation("session_key_unavailable"),
            }
        }
        if self.lease.is_some() {
            return Ok(());
        }
        let waited = Instant::now();
        // Refused keys are not excluded: the engine already holds them out (cooling or
        // disabled), and once a cooldown ends the waiting request may use them.
        let acquired = kp.engine.acquire(affinity, &[]).await;
        kp.series
            .wait
            .get(|| metrics.key_wait.with_label_values(&[kp.label.as_str()]))
            .observe(waited.elapsed().as_secs_f64());
        let lease = acquired?;
        kp.count_request(metrics, lease.id());
        self.lease = Some(lease);
        Ok(())
    }

    /// Whether a failure of the attempt on backend `idx` is the answer: a session's backend
    /// owns the session, the retries are spent, or no other backend could take one now.
    pub fn is_last_backend_try(
        &mut self,
        pool: &PoolState,
        placement: &Placement,
        idx: usize,
    ) -> bool {
        if placement.pinned || self.failed.len() >= self.max_backend_retries {
            return true;
        }
        self.failed.push(idx);
        let retry = pool.can_retry(&self.failed);
        self.failed.pop();
        !retry
    }
}

/// The backend stage: where placement put the request, else the pool's balancer
/// (multiCluster: another eligible cluster, counted as a deviation). Never one in `failed`.
pub(super) fn next_backend(
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

/// The inject stage: one attempt's request, the key injected (header, query or body field),
/// the client's Host replaced by the backend's `hostHeader` (or left to the client, see
/// [`host_header`]) and the pool's default headers set.
pub(super) fn build_request(
    pool: &PoolState,
    backend: &BackendState,
    prepared: &mut Prepared,
    lease: Option<&Lease>,
) -> Result<Request<ProxyBody>, Refusal> {
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
                            return Err(Refusal::new(
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
        return Err(Refusal::new(
            Rejection::ClientBody,
            "the request body was already sent",
        ));
    };
    headers.remove(header::HOST);
    if let Some(host) = host_header(backend) {
        headers.insert(header::HOST, host);
    }
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
        Refusal::new(
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

/// The send stage: the request on its way, until its response headers or `timeout`. Not an
/// `async fn`: the loop awaits the client's own future, with no wrapper around it.
pub(super) fn send(client: &UpstreamClient, req: Request<ProxyBody>, timeout: Duration) -> Sending {
    tokio::time::timeout(timeout, client.request(req))
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
    let path = without_repeated_segment(&endpoint.path_prefix, path);
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

/// The request path to append to an endpoint's path: without its leading segment when the
/// endpoint's path already ends in that segment, so `https://h/v1` + `/v1/chat/completions`
/// is `https://h/v1/chat/completions`, not `/v1/v1/...` (base URLs are habitually written with
/// their version, e.g. the Python proxy's `SERVICE_ENDPOINTS`).
pub(crate) fn without_repeated_segment<'p>(endpoint_path: &str, path: &'p str) -> &'p str {
    let Some(i) = endpoint_path.rfind('/') else {
        return path;
    };
    let last = &endpoint_path[i..];
    if last.len() > 1
        && path.starts_with(last)
        && matches!(path.as_bytes().get(last.len()), None | Some(b'/'))
    {
        &path[last.len()..]
    } else {
        path
    }
}

/// The Host header the request carries: the backend's `hostHeader`, else none. Without one
/// the endpoint's authority is the URI's, which the client sends as it fits the connection:
/// over HTTP/1.1 as the Host header (without the scheme's default port), over HTTP/2 as the
/// `:authority` pseudo-header only. A Host header next to `:authority` is a duplicate Host
/// to some servers (nginx answers 400), and which protocol a `https` connection speaks is
/// only known once ALPN chose it.
fn host_header(backend: &BackendState) -> Option<HeaderValue> {
    HeaderValue::from_str(backend.model.host_header.as_deref()?).ok()
}
