//! The controller's admin port: `/healthz`, `/readyz` (caches synced and gRPC listening),
//! `/metrics`; and, for clients on loopback only (`kubectl port-forward`), `/status` (JSON:
//! this replica, leadership, watched namespaces, the pools and key pools it resolved, the
//! proxies connected to it with their config versions and ACK/NACK) and `/`, a page that
//! polls it. The port listens on the pod network for Prometheus; the state beyond metrics
//! stays on the pod. Never a key value: ids and reasons only.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What `/status` reads.
#[derive(Clone)]
pub struct StatusSource {
    /// This replica's Lease identity (`single` without leader election).
    pub identity: String,
    pub leader: watch::Receiver<bool>,
    pub leader_election: bool,
    /// Watched namespaces (empty: all).
    pub namespaces: Vec<String>,
    pub index: watch::Receiver<Arc<crate::index::Index>>,
    pub proxies: crate::proxies::Proxies,
}

/// The controller's status page.
const PAGE: &str = include_str!("admin_page.html");
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Serves until `drain` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
    status: StatusSource,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let stop = async move {
        let _ = drain.wait_for(|d| *d).await.map(|_| ());
    };
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let registry = registry.clone();
        let ready = ready.clone();
        let status = status.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = handle(req.uri().path(), &registry, &ready, &status, remote);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn handle(
    path: &str,
    registry: &Registry,
    ready: &watch::Receiver<bool>,
    status: &StatusSource,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let local = remote.ip().is_loopback();
    match path {
        "/" | "/status" if !local => text(
            StatusCode::FORBIDDEN,
            "the controller's status is served to loopback clients only: \
             kubectl -n NAMESPACE port-forward deploy/keyway-controller 9902, then open http://127.0.0.1:9902/\n",
        ),
        "/" => {
            let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(CSP),
            );
            r
        }
        "/status" => {
            let mut r = Response::new(Full::new(Bytes::from(status_json(status).to_string())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if *ready.borrow() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n"),
        "/metrics" => {
            let mut buf = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut buf) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::from(buf)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics, /status, /\n",
        ),
    }
}

fn text(status: StatusCode, s: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(s.as_bytes())));
    *r.status_mut() = status;
    r
}

/// `/status`: what this replica knows, by id.
fn status_json(s: &StatusSource) -> serde_json::Value {
    let index = s.index.borrow().clone();
    let resolution = |id: &keyway_api::model::ObjectId, r: &crate::index::Resolution| {
        json!({
            "namespace": id.namespace,
            "name": id.name,
            "generation": r.generation,
            "resolved": r.result.is_ok(),
            "count": r.result.as_ref().ok(),
            "reason": r.result.as_ref().err().map(|e| e.reason.as_str()),
            "message": r.result.as_ref().err().map(ToString::to_string),
            "servingLastGood": r.serving_last_good,
        })
    };
    let mut proxies = s.proxies.list();
    proxies.sort_by(|a, b| (&a.namespace, &a.proxy_id).cmp(&(&b.namespace, &b.proxy_id)));
    let proxies: Vec<_> = proxies
        .iter()
        .map(|p| {
            json!({
                "id": p.proxy_id,
                "identity": p.identity,
                "namespace": p.namespace,
                "pools": p.served.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "sentVersion": p.sent_version,
                "ackedVersion": p.acked_version,
                "acked": p.sent_version != 0 && p.acked_version == p.sent_version,
                "nack": p.last_nack,
                "reported": p.report.is_some(),
            })
        })
        .collect();
    json!({
        "identity": s.identity,
        "leaderElection": s.leader_election,
        "leader": *s.leader.borrow(),
        "watchedNamespaces": s.namespaces,
        "pools": index.pools.iter().map(|(id, r)| resolution(id, r)).collect::<Vec<_>>(),
        "keyPools": index.key_pools.iter().map(|(id, r)| resolution(id, r)).collect::<Vec<_>>(),
        "proxies": proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> StatusSource {
        StatusSource {
            identity: "replica-1".into(),
            leader: watch::channel(true).1,
            leader_election: true,
            namespaces: vec!["team-a".into()],
            index: watch::channel(Arc::new(crate::index::Index::default())).1,
            proxies: crate::proxies::Proxies::default(),
        }
    }

    fn get(path: &str, from: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let resp = handle(
            path,
            &Registry::new(),
            &watch::channel(true).1,
            &source(),
            from.parse().unwrap(),
        );
        let status = resp.status();
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn status_is_for_loopback_clients_and_metrics_for_everyone() {
        let (code, body) = get("/status", "127.0.0.1:5000");
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["leader"], true);
        assert_eq!(v["identity"], "replica-1");
        assert_eq!(v["watchedNamespaces"][0], "team-a");
        assert_eq!(get("/", "[::1]:5000").0, StatusCode::OK);
        for path in ["/", "/status"] {
            let (code, body) = get(path, "192.0.2.7:5000");
            assert_eq!(code, StatusCode::FORBIDDEN, "{path} from the pod network");
            assert!(body.contains("port-forward"), "{body}");
        }
        assert_eq!(get("/metrics", "192.0.2.7:5000").0, StatusCode::OK);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in [
            "http://",
            "https://",
            "src=\"",
            "<link",
            "@import",
            "url(",
            "innerHTML",
        ] {
            assert!(
                !super::PAGE.contains(needle),
                "the controller's page contains {needle:?}"
            );
        }
    }
}
