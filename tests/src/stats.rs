//! A read-only JSON endpoint for test binaries that run inside Pods (the mock upstream, the
//! app client): the e2e harness on the node reaches a Pod's IP directly and reads what the
//! binary counted, with no `kubectl exec` or log scraping.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the endpoint answers: the current numbers, as JSON.
pub type Snapshot = Arc<dyn Fn() -> Value + Send + Sync>;

/// Binds `addr` and answers every `GET` with `snapshot()` (any path), until the process ends.
///
/// # Errors
///
/// If `addr` cannot be bound.
pub async fn serve(addr: SocketAddr, snapshot: Snapshot) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let snapshot = Arc::clone(&snapshot);
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = snapshot().to_string();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(StatusCode::OK)
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}
