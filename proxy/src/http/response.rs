//! The response body on its way back to the client: it keeps the request counted as in
//! flight until it ends, counts streams that end in an error, and reads token usage as it
//! passes (JSON or SSE, never buffering a stream) to settle the key's lease when it ends.

use super::BoxError;
use super::ProxyBody;
use super::client::ErrorChain;
use crate::balance::OwnedInFlightGuard;
use crate::dataplane::Counters;
use crate::keys::Lease;
use crate::usage::{self, SseUsageScanner, StripUsageChunk};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// JSON response bodies are inspected for usage up to this size.
const MAX_USAGE_JSON: usize = 1 << 20;

/// Decrements the in-flight gauge however the request ends (including client disconnect).
pub struct RequestGauge(pub prometheus::IntGauge);

impl Drop for RequestGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Settles a key's lease with the tokens the response reports, and credits them to the
/// cluster (multiCluster token rate).
pub struct UsageTap {
    lease: Option<Lease>,
    kind: TapKind,
    tokens: Option<prometheus::IntCounter>,
    cluster: Option<ClusterTokens>,
}

/// Where a multiCluster backend's tokens are counted.
pub struct ClusterTokens {
    pub counters: Arc<Counters>,
    pub total: prometheus::IntCounter,
}

enum TapKind {
    Json {
        buf: BytesMut,
        overflow: bool,
    },
    Sse {
        scanner: SseUsageScanner,
        strip: Option<StripUsageChunk>,
    },
}

/// The body handed to hyper for a proxied response.
pub struct ResponseBody {
    inner: ProxyBody,
    _backend: OwnedInFlightGuard,
    _request: RequestGauge,
    stream_errors: prometheus::IntCounter,
    tap: Option<UsageTap>,
    /// Set once the upstream body ended; a held tail may still be sent.
    ended: bool,
}

// === impl UsageTap ===

impl UsageTap {
    /// `sse`: the response is `text/event-stream`; `strip`: remove the usage chunk the proxy
    /// asked for on the client's behalf.
    pub fn new(
        lease: Option<Lease>,
        sse: bool,
        strip: bool,
        tokens: Option<prometheus::IntCounter>,
        cluster: Option<ClusterTokens>,
    ) -> Self {
        let kind = if sse {
            TapKind::Sse {
                scanner: SseUsageScanner::new(),
                strip: strip.then(StripUsageChunk::new),
            }
        } else {
            TapKind::Json {
                buf: BytesMut::new(),
                overflow: false,
            }
        };
        Self {
            lease,
            kind,
            tokens,
            cluster,
        }
    }

    /// Sees one chunk; returns what to send on (the same bytes unless a usage chunk is
    /// stripped).
    fn observe(&mut self, data: Bytes) -> Bytes {
        match &mut self.kind {
            TapKind::Json { buf, overflow } => {
                if !*overflow {
                    if buf.len() + data.len() > MAX_USAGE_JSON {
                        *overflow = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(&data);
                    }
                }
                data
            }
            TapKind::Sse { scanner, strip } => {
                scanner.feed(&data);
                match strip {
                    Some(s) => s.filter(&data),
                    None => data,
                }
            }
        }
    }

    /// The stream ended normally: bytes still held back, then the lease is settled.
    fn finish(&mut self) -> Bytes {
        let (tail, used) = match &mut self.kind {
            TapKind::Json { buf, overflow } => {
                let used = (!*overflow).then(|| usage::from_json(buf)).flatten();
                (Bytes::new(), used)
            }
            TapKind::Sse { scanner, strip } => (
                strip.as_mut().map_or_else(Bytes::new, |s| s.finish()),
                scanner.usage(),
            ),
        };
        let tokens = used.map(|u| u.total());
        if let Some(t) = tokens {
            if let Some(c) = &self.tokens {
                c.inc_by(t);
            }
            if let Some(c) = &self.cluster {
                c.total.inc_by(t);
                c.counters.tokens.add(t, std::time::Instant::now());
            }
        }
        if let Some(lease) = self.lease.take() {
            lease.success(tokens);
        }
        tail
    }
}

// === impl ResponseBody ===

impl ResponseBody {
    pub fn new(
        inner: ProxyBody,
        backend: OwnedInFlightGuard,
        request: RequestGauge,
        stream_errors: prometheus::IntCounter,
        tap: Option<UsageTap>,
    ) -> Self {
        Self {
            inner,
            _backend: backend,
            _request: request,
            stream_errors,
            tap,
            ended: false,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling once a Content-Length body is complete, so the end of the
        // stream is not always observed: settle the lease with what was seen.
        if !self.ended
            && let Some(tap) = self.tap.as_mut()
        {
            tap.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(tap) = this.tap.as_mut() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(tap.observe(data))))),
                    Err(trailers) => Poll::Ready(Some(Ok(trailers))),
                }
            }
            Poll::Ready(Some(Err(error))) => {
                this.stream_errors.inc();
                tracing::warn!(error = %ErrorChain(error.as_ref()), "response stream ended with an error");
                // The lease is dropped unsettled (cancelled): the usage is unknown.
                this.tap = None;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                let tail = this.tap.as_mut().map(UsageTap::finish).unwrap_or_default();
                if tail.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(tail))))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.tap.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.tap {
            // A stripped chunk changes the length.
            Some(UsageTap {
                kind: TapKind::Sse { strip: Some(_), .. },
                ..
            }) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}
