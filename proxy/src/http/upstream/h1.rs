//! HTTP/1.1 upstream connections driven inside the request's own task.
//!
//! hyper's `client::conn::http1` splits a connection in two: the `SendRequest` handle and
//! the `Connection` future that does the I/O. Instead of spawning the future (one more task,
//! a channel and a wake-up per request, which is what hyper-util's pooled client does), the
//! request's task polls it: while waiting for the response head ([`send`]), then inside the
//! response body ([`H1Body`]) as the client reads it. When the body has ended the pair goes
//! back to the pool idle, unpolled until its next request; a peer's close in between is
//! noticed when it is taken out ([`Idle::usable`]).

use super::connect::Io;
use super::{Shared, SlotKey};
use crate::http::ProxyBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// One HTTP/1.1 connection: the handle and the I/O future, polled by whoever holds it. The
/// future (its buffers, about 700 bytes) is boxed once per connection, so requests move a
/// pointer.
pub(super) struct Conn {
    sender: http1::SendRequest<ProxyBody>,
    io: Box<http1::Connection<Io, ProxyBody>>,
}

/// A connection in the pool, since when ([`crate::clock::coarse_ms`]).
pub(super) struct Idle {
    pub conn: Conn,
    pub since: u64,
}

/// What a failed send on one connection leaves: the error, and the request when it was never
/// written (so it can go out on another connection).
pub(super) type Failed = (hyper::Error, Option<Request<ProxyBody>>);

// === impl Conn ===

impl Conn {
    pub async fn handshake(io: Io) -> hyper::Result<Self> {
        let (sender, io) = http1::Builder::new().handshake(io).await?;
        Ok(Self {
            sender,
            io: Box::new(io),
        })
    }
}

// === impl Idle ===

impl Idle {
    /// False when the peer closed the connection while it idled: its I/O future is polled
    /// once without waiting, which reads the peer's FIN (or stray bytes, an error) if any came.
    pub fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut *self.conn.io).poll(&mut cx).is_ready() {
            return false;
        }
        !self.conn.sender.is_closed()
    }
}

/// Sends `req` on `conn`, driving the connection until the response head: the response with
/// a body that keeps driving it and returns it to `shared` at its end.
pub(super) async fn send(
    mut conn: Conn,
    mut req: Request<ProxyBody>,
    shared: &Arc<Shared>,
    key: &SlotKey,
) -> Result<Response<H1Body>, Failed> {
    // Origin form on the wire: `GET /v1/x HTTP/1.1`, the authority in `Host`.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(pq);
    }
    let mut io_done = false;
    // Ready: the previous exchange is fully processed.
    let ready = std::future::poll_fn(|cx| {
        if Pin::new(&mut *conn.io).poll(cx).is_ready() {
            io_done = true;
        }
        conn.sender.poll_ready(cx)
    })
    .await;
    if let Err(error) = ready {
        return Err((error, Some(req)));
    }
    let mut response = std::pin::pin!(conn.sender.try_send_request(req));
    let answered = std::future::poll_fn(|cx| {
        if !io_done && Pin::new(&mut *conn.io).poll(cx).is_ready() {
            // The connection ended; the response future resolves with its error, or with
            // the response when the peer closed right after it.
            io_done = true;
        }
        response.as_mut().poll(cx)
    })
    .await;
    match answered {
        Ok(resp) => Ok(resp.map(|body| H1Body {
            body,
            conn: (!io_done).then_some(conn),
            back_to: Some((shared.clone(), key.clone())),
        })),
        Err(mut e) => {
            let unsent = e.take_message();
            Err((e.into_error(), unsent))
        }
    }
}

/// A response body from an HTTP/1.1 upstream: polls the connection's I/O as it is read, and
/// returns the connection to the pool once the body has ended. Dropped earlier (the client
/// went away), it closes the connection.
pub(crate) struct H1Body {
    body: Incoming,
    conn: Option<Conn>,
    back_to: Option<(Arc<Shared>, SlotKey)>,
}

impl H1Body {
    fn release(&mut self) {
        if let (Some(conn), Some((shared, key))) = (self.conn.take(), self.back_to.take())
            && !conn.sender.is_closed()
        {
            shared.put_idle(key, conn);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && Pin::new(&mut *conn.io).poll(cx).is_ready()
        {
            // Closed (or failed); what was read is still in the body.
            this.conn = None;
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            Some(Err(_)) => this.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
