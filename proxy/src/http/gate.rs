//! The traffic port's front door: the accept loop ([`serve_traffic`]) hands each request to
//! the [`TrafficGate`] (source addresses, client tokens, the sampled access log), which hands
//! it to the [`Forwarder`]. A request stays in `http` from accept to forward.

use super::error::Rejection;
use super::server::{self, LimitState};
use super::{Forwarder, ProxyBody};
use crate::access::ClientTokens;
use crate::dataplane::Dataplane;
use http::{Request, Response};
use hyper::body::Incoming;
use keyway_api::model::Cidr;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The traffic port's accept loop on the current runtime: the access gate, then one
/// forwarder.
pub(crate) async fn serve_traffic(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    forwarder: Arc<Forwarder>,
    gate: Arc<TrafficGate>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    limit_state: LimitState,
) {
    let is_tls = acceptor.is_some();
    server::serve(
        listener,
        acceptor,
        move |req, remote| {
            let f = forwarder.clone();
            let gate = gate.clone();
            async move {
                gate.serve(req, remote, |req| f.serve(req, remote, is_tls))
                    .await
            }
        },
        shutdown,
        drain,
        limit_state,
    )
    .await
}

/// Listener-level checks of the traffic port (source address, client token) and the sampled
/// access log, around the forwarder.
pub(crate) struct TrafficGate {
    /// `--allowed-sources`; empty: any.
    pub allowed: Vec<Cidr>,
    /// Client tokens, when client authentication is on.
    pub tokens: Option<Arc<ClientTokens>>,
    /// The share of requests written to the access log.
    pub sample: f64,
    pub dataplane: Arc<Dataplane>,
}

// === impl TrafficGate ===

impl TrafficGate {
    async fn serve<F, Fut>(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        next: F,
    ) -> Response<ProxyBody>
    where
        F: FnOnce(Request<Incoming>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let reject = |r: Rejection, msg: &str| {
            self.dataplane
                .metrics()
                .rejected
                .with_label_values(&[r.as_str()])
                .inc();
            r.response(msg)
        };
        if !Cidr::allows(&self.allowed, remote.ip()) {
            tracing::debug!(remote = %remote.ip(), "traffic from a source not in --allowed-sources");
            return reject(
                Rejection::ForbiddenSource,
                &format!("source {} is not allowed (--allowed-sources)", remote.ip()),
            );
        }
        if let Some(tokens) = &self.tokens {
            match tokens.check(req.headers()) {
                // The client's Keyway token never goes upstream.
                Some(header) => {
                    req.headers_mut().remove(header);
                    req.headers_mut().remove("x-keyway-token");
                }
                None => {
                    return reject(
                        Rejection::Unauthorized,
                        "a Keyway client token is required: send it as Authorization: Bearer <token> (or x-keyway-token)",
                    );
                }
            }
        }
        if self.sample <= 0.0 || rand::random::<f64>() >= self.sample {
            return next(req).await;
        }
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = next(req).await;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        tracing::info!(
            access_log = true,
            method = %method,
            path = %path,
            status = resp.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            remote = %remote.ip(),
            request_id = %header("x-request-id"),
            pool = %header("x-keyway-pool"),
            backend = %header("x-keyway-backend"),
            key_id = %header("x-keyway-key-id"),
            "request"
        );
        resp
    }
}
