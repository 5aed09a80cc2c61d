//! Request and response bodies on their way through the proxy.
//!
//! - [`RequestBody`]: a request body read ahead up to a limit, so it can be replayed on retry
//!   and peeked for model routing; a larger body streams through (and is not retried).
//! - [`IdleTimeout`]: fails a response body that goes silent for too long.

use super::{BoxError, ProxyBody};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A request body, fully buffered or still streaming.
pub enum RequestBody {
    /// Read to the end: replayable.
    Buffered(Bytes),
    /// Over the limit: the part read so far, then the rest. Sent once.
    Streaming(Option<(Bytes, Incoming)>),
}

/// A response body stopped because the upstream went silent.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeoutError(pub Duration);

// === impl RequestBody ===

impl RequestBody {
    /// Reads `body` until its end or until more than `limit` bytes arrived. A declared
    /// `Content-Length` above the limit skips reading ahead altogether.
    pub async fn read(
        mut body: Incoming,
        limit: usize,
        content_length: Option<u64>,
    ) -> Result<Self, hyper::Error> {
        if content_length.is_some_and(|n| n > limit as u64) || limit == 0 && !body.is_end_stream() {
            return Ok(Self::Streaming(Some((Bytes::new(), body))));
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    return Ok(Self::Streaming(Some((buf.freeze(), body))));
                }
            }
            // Request trailers are rare for LLM APIs and are dropped.
        }
        Ok(Self::Buffered(buf.freeze()))
    }

    /// The whole body, when it was buffered.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Self::Buffered(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// The body for one upstream attempt. A streaming body can be taken only once.
    pub fn take_for_upstream(&mut self) -> Option<ProxyBody> {
        match self {
            Self::Buffered(b) if b.is_empty() => {
                Some(Empty::new().map_err(|never| match never {}).boxed())
            }
            Self::Buffered(b) => Some(Full::new(b.clone()).map_err(|never| match never {}).boxed()),
            Self::Streaming(slot) => {
                let (prefix, rest) = slot.take()?;
                let head = futures::stream::iter(
                    (!prefix.is_empty()).then(|| Ok::<_, BoxError>(Frame::data(prefix))),
                );
                let tail = BodyStream::new(rest).map(|r| r.map_err(BoxError::from));
                Some(BodyExt::boxed(StreamBody::new(head.chain(tail))))
            }
        }
    }
}

/// Wraps an SSE response body: while the upstream is silent for `interval` at an event
/// boundary, emits `: keep-alive` comment lines (which SSE clients ignore) so that
/// idle-timeout middleboxes do not cut a stream that is waiting for its first token.
pub struct SseKeepAlive {
    inner: ProxyBody,
    interval: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The bytes sent so far end at an event boundary (or nothing was sent yet), so a comment
    /// cannot split an event.
    at_boundary: bool,
}

const KEEP_ALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

// === impl SseKeepAlive ===

impl SseKeepAlive {
    pub fn new(inner: ProxyBody, interval: Duration) -> Self {
        Self {
            inner,
            interval,
            sleep: Box::pin(tokio::time::sleep(interval)),
            at_boundary: true,
        }
    }
}

impl Body for SseKeepAlive {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    this.at_boundary = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                }
                this.sleep.as_mut().reset(Instant::now() + this.interval);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.sleep.as_mut().reset(Instant::now() + this.interval);
                    if this.at_boundary {
                        // Register the reset timer with this task before returning.
                        let _ = this.sleep.as_mut().poll(cx);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                            KEEP_ALIVE_COMMENT,
                        )))));
                    }
                    let _ = this.sleep.as_mut().poll(cx);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Wraps a response body: if no frame arrives for `timeout`, the body ends with an error,
/// which closes the client's stream instead of leaving it hanging.
pub struct IdleTimeout {
    inner: ProxyBody,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

// === impl IdleTimeout ===

impl IdleTimeout {
    pub fn new(inner: ProxyBody, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.as_mut().reset(Instant::now() + this.timeout);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeoutError(this.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
