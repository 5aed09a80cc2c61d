//! Read / route: the request's body is read ahead as far as routing and replays need, its
//! pool is found and checked (sources, key pool), and the headers that say where it came
//! from are set.

use crate::dataplane::{KeyPoolState, PoolState, Router};
use crate::http::body::RequestBody;
use crate::http::error::{Refusal, Rejection};
use crate::http::headers::strip_hop_by_hop;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use hyper::body::Incoming;
use keyway_api::model::Cidr;
use std::net::SocketAddr;
use std::sync::Arc;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A request routed to a pool.
pub(super) struct Routed<'r> {
    pub pool: &'r Arc<PoolState>,
    /// The pool's keys; `None`: the pool injects no key.
    pub key_pool: Option<&'r Arc<KeyPoolState>>,
    /// The JSON body's `model`, when routing or placement reads it.
    pub model: Option<String>,
    pub request_id: HeaderValue,
    pub prepared: Prepared,
}

/// The request as it is sent upstream, rebuilt for every attempt.
pub(super) struct Prepared {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: RequestBody,
}

// === impl Routed ===

impl<'r> Routed<'r> {
    /// Reads the body ahead (only when a model route, key injection or a retry needs it),
    /// routes the request and sets its forwarding headers.
    pub async fn read(
        router: &'r Router,
        req: Request<Incoming>,
        remote: SocketAddr,
        tls: bool,
    ) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = match RequestBody::read(body, router.read_ahead_bytes(), content_length).await {
            Ok(b) => b,
            Err(error) => {
                tracing::debug!(%error, "client request body failed");
                return Err(Refusal::new(
                    Rejection::ClientBody,
                    "the request body could not be read",
                ));
            }
        };
        let model = if router.needs_model() {
            body.bytes().and_then(|b| peek_model(b))
        } else {
            None
        };
        let (pool, key_pool, strip) = route(
            router,
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            model.as_deref(),
            remote,
        )?;
        let request_id = forwarding_headers(&mut parts.headers, remote, tls);
        let prepared = Prepared {
            path: stripped(parts.uri.path(), strip),
            query: parts.uri.query().map(str::to_string),
            method: parts.method,
            headers: parts.headers,
            body,
        };
        Ok(Self {
            pool,
            key_pool,
            model,
            request_id,
            prepared,
        })
    }
}

/// A routed request: its pool, key pool and the route's `stripPrefix`.
type RouteResult<'r> = (
    &'r Arc<PoolState>,
    Option<&'r Arc<KeyPoolState>>,
    Option<&'r str>,
);

/// The pool a request belongs to, its key pool and the route's `stripPrefix`, or why none
/// takes it: no route, a source the pool does not accept, or a key pool that is missing.
pub(super) fn route<'r>(
    router: &'r Router,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    model: Option<&str>,
    remote: SocketAddr,
) -> Result<RouteResult<'r>, Refusal> {
    let Some((pool, strip)) = router.route_with(path, headers, model) else {
        return Err(Refusal::new(
            Rejection::NoRoute,
            format!("no pool routes {method} {path}"),
        ));
    };
    if !Cidr::allows(&pool.model.allowed_sources, remote.ip()) {
        return Err(Refusal::new(
            Rejection::ForbiddenSource,
            format!(
                "pool {} does not accept requests from {}; see its spec.allowedSources",
                pool.label,
                remote.ip()
            ),
        ));
    }
    match &pool.keys {
        Ok(kp) => Ok((pool, kp.as_ref(), strip)),
        Err(name) => Err(Refusal::new(
            Rejection::KeyPoolUnavailable,
            format!(
                "ApiKeyPool {name} referenced by pool {} is not available; see its status",
                pool.label
            ),
        )),
    }
}

/// The path sent upstream: without the route's `stripPrefix` (whole segments; the route's
/// `pathPrefix` starts with it, so the path does too), and never empty.
pub(super) fn stripped(path: &str, strip: Option<&str>) -> String {
    match strip.and_then(|s| path.strip_prefix(s)) {
        Some("") => "/".to_string(),
        Some(rest) => rest.to_string(),
        None => path.to_string(),
    }
}

/// Strips hop-by-hop headers and sets `x-forwarded-for`, `x-forwarded-proto` and
/// `x-request-id` (the client's, or a new one). Returns the request id.
pub(super) fn forwarding_headers(
    headers: &mut HeaderMap,
    remote: SocketAddr,
    tls: bool,
) -> HeaderValue {
    let request_id = match headers.get(&super::X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => new_request_id(),
    };
    strip_hop_by_hop(headers);
    append_forwarded_for(headers, remote);
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    headers.insert(&super::X_REQUEST_ID, request_id.clone());
    request_id
}

/// The JSON body's `model`, for model routes. Other fields are skipped unparsed.
pub fn peek_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

fn append_forwarded_for(headers: &mut HeaderMap, remote: SocketAddr) {
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
