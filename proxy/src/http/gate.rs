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

/// Whether a request to a loopback listener names a loopback host (`localhost`, `127.x.y.z`,
/// `[::1]`, with any port) in its `Host` (or HTTP/2 `:authority`). A browser sends the page's
/// own domain there, so a web page whose domain resolves to 127.0.0.1 (DNS rebinding) cannot
/// use a developer's local proxy and its keys. A request naming no host at all (HTTP/1.0) is
/// not a browser's and passes.
fn loopback_host<B>(req: &http::Request<B>) -> bool {
    let host = match req.headers().get(http::header::HOST) {
        Some(h) => match h.to_str() {
            Ok(h) => h,
            Err(_) => return false,
        },
        None => match req.uri().authority() {
            Some(a) => a.as_str(),
            None => return true,
        },
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Listener-level checks of the traffic port (source address, client token) and the sampled
/// access log, around the forwarder.
pub(crate) struct TrafficGate {
    /// The listener is a loopback address: requests must name a loopback host (see
    /// [`loopback_host`]).
    pub loopback_only: bool,
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
        if self.loopback_only && !loopback_host(&req) {
            return reject(
                Rejection::ForbiddenHost,
                "this proxy listens on loopback and serves requests for localhost, 127.0.0.1 or [::1] only (another Host is a web page reaching it through DNS rebinding)",
            );
        }
        if let Some(tokens) = &self.tokens {
            let found = tokens.check(req.headers());
            if found.is_empty() {
                return reject(
                    Rejection::Unauthorized,
                    "a Keyway client token is required: send it as Authorization: Bearer <token> (or x-keyway-token)",
                );
            }
            // The client's Keyway token never goes upstream, in whichever headers it came.
            for header in found {
                req.headers_mut().remove(header);
            }
            req.headers_mut().remove("x-keyway-token");
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

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn loopback_listeners_serve_loopback_hosts_only() {
        let req = |host: Option<&str>| {
            let mut b = http::Request::builder().uri("/v1/chat/completions");
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:8080",
            "127.0.0.1:8080",
            "127.0.0.2",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(loopback_host(&req(Some(ok))), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example:8080",
            "10.0.0.1:8080",
            "[::2]:8080",
        ] {
            assert!(!loopback_host(&req(Some(bad))), "{bad}");
        }
        assert!(loopback_host(&req(None)), "no Host: not a browser");
        let h2 = http::Request::builder()
            .uri("http://evil.example:8080/v1/models")
            .body(())
            .unwrap();
        assert!(
            !loopback_host(&h2),
            ":authority counts when there is no Host"
        );
    }
}
