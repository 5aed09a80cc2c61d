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
    /// A JSON answer, kept until it ends to read its `usage`: the first chunk as it came (most
    /// answers are one chunk, so nothing is copied), later ones appended to a copy.
    Json {
        first: Bytes,
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
                first: Bytes::new(),
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
            TapKind::Json {
                first,
                buf,
                overflow,
            } => {
                if !*overflow {
                    if first.len() + buf.len() + data.len() > MAX_USAGE_JSON {
                        *overflow = true;
                        *first = Bytes::new();
                        buf.clear();
                    } else if first.is_empty() && buf.is_empty() {
                        *first = data.clone();
                    } else {
                        if !first.is_empty() {
                            buf.extend_from_slice(first);
                            *first = Bytes::new();
                        }
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
            TapKind::Json {
                first,
                buf,
                overflow,
            } => {
                let whole: &[u8] = if buf.is_empty() { first } else { buf };
                let used = (!*overflow).then(|| usage::from_json(whole)).flatten();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens a JSON answer delivered in `chunks` reports, as the tap counts them.
    fn tokens_of(chunks: &[&[u8]]) -> u64 {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let mut tap = UsageTap::new(None, false, false, Some(counter.clone()), None);
        for c in chunks {
            assert_eq!(
                tap.observe(Bytes::copy_from_slice(c)),
                *c,
                "sent on unchanged"
            );
        }
        tap.finish();
        counter.get()
    }

    #[test]
    fn json_usage_is_read_from_one_chunk_or_many() {
        let answer: &[u8] = br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(tokens_of(&[answer]), 7);
        let (a, rest) = answer.split_at(10);
        let (b, c) = rest.split_at(20);
        assert_eq!(tokens_of(&[a, b, c]), 7);
        assert_eq!(tokens_of(&[b"", a, b"", b, c]), 7);
    }

    #[test]
    fn a_json_answer_above_the_bound_is_not_parsed() {
        let big = vec![b' '; MAX_USAGE_JSON];
        let answer: &[u8] = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(tokens_of(&[&big, answer]), 0);
    }
}
