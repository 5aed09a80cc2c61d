//! Accept loop shared by the traffic and admin ports: HTTP/1.1 and h2c on one listener,
//! graceful shutdown that lets in-flight requests (and streams) finish, and the
//! [`Limits`] that bound what clients can hold (connections, header size and time, declared
//! body size), each answered with a fast, explicit error.

use super::ProxyBody;
use super::error::{Rejection, error_body};
use bytes::Bytes;
use futures::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections over the limit being answered `503` at once; beyond that (a flood) they are
/// closed without an answer, so refusing never holds more than this many sockets.
const MAX_REFUSALS: usize = 1024;

/// hyper's smallest read buffer; a header limit below it cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

/// What one listener accepts. Every limit fails fast with an explicit answer instead of
/// queueing: over `max_connections` a connection gets `503` and is closed; a request head
/// larger than `max_header_bytes` gets `431`; a head not complete within
/// `header_read_timeout` (slowloris) gets its connection closed; a declared
/// `Content-Length` over `max_request_body` gets `413`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open client connections at once; `None`: unbounded.
    pub max_connections: Option<usize>,
    /// From the connection opening (or the previous response) to a complete request head.
    /// Also closes keep-alive connections idle for this long.
    pub header_read_timeout: Duration,
    /// Request line plus headers, HTTP/1.1 (at least 8 KiB) and HTTP/2 (header list size).
    pub max_header_bytes: usize,
    /// A request declaring a larger `Content-Length` is refused with `413`; `None`: unbounded.
    pub max_request_body: Option<u64>,
}

/// What the limits share across every accept loop of one port (all traffic threads): the
/// connection budget and the counters of what was refused.
#[derive(Clone, Debug, Default)]
pub struct LimitState {
    /// The limits this state enforces.
    pub limits: Limits,
    /// One permit per open connection; `None`: unbounded.
    permits: Option<Arc<Semaphore>>,
    /// One permit per connection being refused (`MAX_REFUSALS`).
    refusals: Option<Arc<Semaphore>>,
    /// `keyway_proxy_connections_rejected_total`.
    connections_rejected: Option<prometheus::IntCounter>,
    /// `keyway_proxy_open_connections`.
    open_connections: Option<prometheus::IntGauge>,
}

// === impl LimitState ===

impl LimitState {
    /// The budget for `limits`; with a registry, its counters are registered there.
    pub fn new(
        limits: &Limits,
        registry: Option<&prometheus::Registry>,
    ) -> prometheus::Result<Self> {
        let mut state = Self {
            limits: limits.clone(),
            permits: limits
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            refusals: Some(Arc::new(Semaphore::new(MAX_REFUSALS))),
            ..Self::default()
        };
        if let Some(registry) = registry {
            let rejected = prometheus::IntCounter::new(
                "keyway_proxy_connections_rejected_total",
                "Client connections refused because --max-connections were open",
            )?;
            let open = prometheus::IntGauge::new(
                "keyway_proxy_open_connections",
                "Client connections open on the traffic port",
            )?;
            registry.register(Box::new(rejected.clone()))?;
            registry.register(Box::new(open.clone()))?;
            state.connections_rejected = Some(rejected);
            state.open_connections = Some(open);
        }
        Ok(state)
    }
}

/// A connection that is not sent a request head in time is closed before protocol
/// detection finishes (hyper's own header timeout starts only after it).
#[derive(Debug, thiserror::Error)]
#[error("no request head within {0:?}")]
struct FirstRequestTimeout(Duration);

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: Some(10_000),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_request_body: Some(32 * 1024 * 1024),
        }
    }
}

impl Limits {
    /// The admin port: its own small connection budget (so traffic-port floods and admin
    /// scrapers never compete), no body limit, the same header limits and timeouts.
    pub fn admin() -> Self {
        Self {
            max_connections: Some(256),
            max_request_body: None,
            ..Self::default()
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes.max(MIN_HEADER_BYTES));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }

    /// `413` when the request declares a body over the limit.
    fn check_body(&self, headers: &http::HeaderMap) -> Option<Response<ProxyBody>> {
        let max = self.max_request_body?;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())?;
        (declared > max).then(|| {
            Rejection::BodyTooLarge.response(&format!(
                "request body of {declared} bytes is over this proxy's limit of {max} bytes (--max-request-body)"
            ))
        })
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true, then waits up to `drain` for
/// open connections to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limit_state: LimitState,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let limits = Arc::new(limit_state.limits.clone());
    let builder = limits.builder();
    let permits = limit_state.permits.clone();
    let graceful = GracefulShutdown::new();
    let stop = async move {
        // The guard wait_for returns is not Send; drop it inside this future.
        let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let permit = match &permits {
                    None => None,
                    Some(p) => match p.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            if let Some(c) = &limit_state.connections_rejected {
                                c.inc();
                            }
                            tracing::debug!(%remote, "connection limit reached; refusing");
                            let refusal = limit_state
                                .refusals
                                .as_ref()
                                .and_then(|r| r.clone().try_acquire_owned().ok());
                            if let Some(refusal) = refusal {
                                let plain = tls.is_none();
                                tokio::spawn(async move {
                                    refuse(stream, plain).await;
                                    drop(refusal);
                                });
                            }
                            continue;
                        }
                    },
                };
                let open = limit_state.open_connections.clone().map(OpenGuard::new);
                let handler = handler.clone();
                let first_request = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let seen = first_request.clone();
                let conn_limits = limits.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    let fut = match conn_limits.check_body(req.headers()) {
                        None => Either::Left(handler(req, remote)),
                        Some(refused) => Either::Right(std::future::ready(refused)),
                    };
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let stream = FirstRequestDeadline::new(stream, limits.header_read_timeout, first_request);
                match &tls {
                    None => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _open = open;
                            if let Err(error) = conn.await {
                                tracing::debug!(%error, %remote, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, so a slow client
                        // never holds up the accept loop; it is bounded in time.
                        let acceptor = acceptor.clone();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _open = open;
                            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                            let stream = match handshake {
                                Ok(Ok(s)) => s,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %remote, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            if let Err(error) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(%error, %remote, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain timeout; closing them"
        );
    }
}

/// Answers a connection over the limit with `503` (plain HTTP) or just closes it (TLS, where
/// a plaintext answer would be garbage), without ever reading a request.
async fn refuse(mut stream: TcpStream, plain: bool) {
    if plain {
        // Written once: a flood of refusals costs no JSON encoding each.
        static BODY: LazyLock<Bytes> = LazyLock::new(|| {
            error_body(
                Rejection::TooManyConnections.as_str(),
                "this proxy is at its connection limit (--max-connections); retry later",
            )
        });
        let body = &*BODY;
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        // Read what the client already sent, briefly, so the close is a FIN the client can
        // read the answer before, not a reset.
        let mut sink = [0u8; 4096];
        let drain = async {
            loop {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// Keeps `keyway_proxy_open_connections` right however the connection ends.
struct OpenGuard(prometheus::IntGauge);

impl OpenGuard {
    fn new(g: prometheus::IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A client stream that fails its reads if no request head was complete within `timeout` of
/// the connection opening. hyper's `header_read_timeout` covers every head once HTTP/1 is
/// chosen; this covers the protocol detection before it (a client that connects and sends
/// nothing, or a byte a minute), so an idle connection cannot hold a slot forever.
struct FirstRequestDeadline<S> {
    inner: S,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: Arc<std::sync::atomic::AtomicBool>,
}

// === impl FirstRequestDeadline ===

impl<S> FirstRequestDeadline<S> {
    fn new(inner: S, timeout: Duration, seen: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            inner,
            timeout,
            sleep: Some(Box::pin(tokio::time::sleep(timeout))),
            seen,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstRequestDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.sleep.is_some() && this.seen.load(std::sync::atomic::Ordering::Relaxed) {
            this.sleep = None;
        }
        if result.is_pending()
            && let Some(sleep) = this.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                FirstRequestTimeout(this.timeout),
            )));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstRequestDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
