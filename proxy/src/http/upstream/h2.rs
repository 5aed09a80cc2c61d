//! HTTP/2 upstream connections, shared by many requests at once.
//!
//! An HTTP/2 connection multiplexes streams, so its I/O runs in a task of its own (on the
//! thread that opened it) and every request holds a clone of its `SendRequest`. Each
//! connection carries at most [`MAX_STREAMS`] streams of Keyway's (fewer when the upstream's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` says so); a request that finds every connection of its
//! upstream full opens another. A connection that failed, or said GOAWAY, takes no new
//! streams; its open streams finish on it.

use super::connect::Io;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::http::ProxyBody;

/// Streams one connection carries at most, whatever the upstream allows.
pub(crate) const MAX_STREAMS: usize = 100;

/// One HTTP/2 connection.
pub(super) struct Conn {
    sender: http2::SendRequest<ProxyBody>,
    state: Arc<ConnState>,
    /// When a stream was last taken (or the connection opened), [`crate::clock::coarse_ms`].
    pub last_used: u64,
}

/// What the streams of a connection share with the pool.
pub(super) struct ConnState {
    /// Streams open now.
    streams: AtomicUsize,
    /// The upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`, as last seen by the connection.
    peer_limit: AtomicUsize,
    /// Failed or going away: no new stream.
    retired: AtomicBool,
}

/// A stream slot taken on a connection; given back when dropped.
pub(crate) struct StreamSlot {
    state: Arc<ConnState>,
}

// === impl Conn ===

impl Conn {
    /// The HTTP/2 handshake on `io`; the connection's I/O is spawned on the current runtime.
    pub async fn handshake(io: Io) -> hyper::Result<Self> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await?;
        let state = Arc::new(ConnState {
            streams: AtomicUsize::new(0),
            peer_limit: AtomicUsize::new(MAX_STREAMS),
            retired: AtomicBool::new(false),
        });
        let seen = state.clone();
        let mut connection = connection;
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let r = Pin::new(&mut connection).poll(cx);
                seen.peer_limit
                    .store(connection.current_max_send_streams(), Ordering::Relaxed);
                r
            })
            .await;
            if let Err(error) = ended {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
            seen.retired.store(true, Ordering::Relaxed);
        });
        Ok(Self {
            sender,
            state,
            last_used: crate::clock::coarse_ms(),
        })
    }

    /// Takes no new stream, ever.
    pub fn is_retired(&self) -> bool {
        self.state.retired.load(Ordering::Relaxed) || self.sender.is_closed()
    }

    pub fn streams(&self) -> usize {
        self.state.streams.load(Ordering::Relaxed)
    }

    /// Whether a new stream fits: not retired, and below both [`MAX_STREAMS`] and the
    /// upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub fn has_room(&self) -> bool {
        let peer = self.state.peer_limit.load(Ordering::Relaxed);
        let limit = MAX_STREAMS.min(peer.max(1));
        !self.is_retired() && self.streams() < limit
    }

    /// A stream on this connection, if it has room for one: its sender and slot.
    pub fn take_stream(&mut self) -> Option<(http2::SendRequest<ProxyBody>, StreamSlot)> {
        if !self.has_room() {
            return None;
        }
        self.state.streams.fetch_add(1, Ordering::Relaxed);
        Some((
            self.sender.clone(),
            StreamSlot {
                state: self.state.clone(),
            },
        ))
    }
}

// === impl StreamSlot ===

impl StreamSlot {
    /// The connection failed or is going away: no new stream on it.
    pub fn retire(&self) {
        self.state.retired.store(true, Ordering::Relaxed);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `req` as a stream of the connection `sender` belongs to. A request the connection
/// never took (it was closing) comes back with the error, to go out on another one.
pub(super) async fn send(
    mut sender: http2::SendRequest<ProxyBody>,
    slot: StreamSlot,
    mut req: Request<ProxyBody>,
) -> Result<Response<H2Body>, super::h1::Failed> {
    *req.version_mut() = Version::HTTP_2;
    // Connection-specific headers have no place in HTTP/2 (RFC 9113 §8.2.2).
    req.headers_mut().remove(http::header::CONNECTION);
    req.headers_mut().remove(http::header::TRANSFER_ENCODING);
    // The Host travels as `:authority` alone: a Host header next to it is a duplicate Host
    // to servers such as nginx (400). The connection's destination is the target's, whatever
    // the authority says.
    if let Some(host) = req.headers_mut().remove(http::header::HOST)
        && let Ok(authority) = http::uri::Authority::try_from(host.as_bytes())
    {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(authority);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp.map(|body| H2Body { body, _slot: slot })),
        Err(mut e) => {
            let unsent = e.take_message();
            let error = e.into_error();
            // Only a refused stream leaves the connection as good as it was.
            if unsent.is_some() || !is_refused_stream_only(&error) {
                slot.retire();
            }
            Err((error, unsent))
        }
    }
}

/// REFUSED_STREAM: the upstream declined this stream, not the connection.
fn is_refused_stream_only(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) && !h2.is_go_away();
        }
        source = e.source();
    }
    false
}

/// A response body from an HTTP/2 upstream, holding its stream slot until it ends or is
/// dropped.
pub(crate) struct H2Body {
    body: Incoming,
    _slot: StreamSlot,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
