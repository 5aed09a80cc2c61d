//! The controller's admin port: `/healthz`, `/readyz` (caches synced and gRPC listening),
//! `/metrics`.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves until `drain` turns true.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let stop = async move {
        let _ = drain.wait_for(|d| *d).await.map(|_| ());
    };
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
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
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = handle(&req, &registry, &ready);
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
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
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
            "not found; try /healthz, /readyz, /metrics\n",
        ),
    }
}

fn text(status: StatusCode, s: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(s.as_bytes())));
    *r.status_mut() = status;
    r
}
