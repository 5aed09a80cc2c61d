//! Keyway's own upstream connection pool: where a forwarded request finds its connection.
//!
//! One [`Upstreams`] per traffic thread (each thread's `Forwarder` owns one), so a connection
//! is opened, used and reused on one thread's event loop. Per upstream ([`Target`]: scheme,
//! `host:port`, TLS server name, HTTP/2 by prior knowledge) it keeps idle HTTP/1.1
//! connections, driven inside the request's task while in use (`h1`), and shared HTTP/2
//! connections with a bounded number of streams each (`h2`). TLS upstreams choose HTTP/2 or
//! HTTP/1.1 by ALPN (`connect`). A connection idle for 50 s is closed: checked when it is
//! taken, and swept every 10 s across upstreams, so those no request asks for any more (a
//! backend removed from the config) do not keep theirs.
//!
//! Errors say what the upstream saw ([`SendError::kind`]): nothing (no connection, or a
//! refused stream: safe to send again), or possibly the request.

mod connect;
mod h1;
mod h2;
#[cfg(test)]
mod tests;

use self::connect::TlsConfigs;
use crate::http::ProxyBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// An idle connection older than this is closed instead of reused (below the 60–75 s
/// keep-alive timeouts of common servers, so Keyway is the side that closes).
const IDLE_TIMEOUT_MS: u64 = 50_000;
/// Idle HTTP/1.1 connections kept per upstream and thread.
const MAX_IDLE_PER_TARGET: usize = 256;
/// How often idle connections of every upstream are swept (on the next checkout).
const SWEEP_EVERY_MS: u64 = 10_000;
/// Sends of one request on pooled connections that turned out closed (or closing) before it
/// was written.
const MAX_STALE_RETRIES: usize = 2;

/// Where a backend's connections go, fixed when its snapshot is compiled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub https: bool,
    /// `host:port`.
    pub authority: String,
    /// The TLS server name (SNI and certificate): the backend's `hostHeader` when set,
    /// else the host of `authority`.
    pub server_name: Option<ServerName<'static>>,
    /// HTTP/2 by prior knowledge (`protocol: http2`); TLS upstreams otherwise choose by ALPN.
    pub http2: bool,
}

type SlotKey = Arc<Target>;

/// Upstream connections of one traffic thread.
pub struct Upstreams {
    shared: Arc<Shared>,
    tls: TlsConfigs,
}

/// The pool proper, shared with the response bodies that give connections back.
pub(crate) struct Shared {
    slots: Mutex<HashMap<SlotKey, Slot>>,
    /// When every upstream's idle connections were last swept ([`crate::clock::coarse_ms`]).
    swept: std::sync::atomic::AtomicU64,
}

/// One upstream's connections.
#[derive(Default)]
struct Slot {
    idle: Vec<h1::Idle>,
    h2: Vec<h2::Conn>,
    /// The upstream spoke HTTP/2 last time: requests wait for a connection being opened
    /// rather than open one each.
    speaks_h2: bool,
    /// An HTTP/2 connection is being opened; `opened` tells waiters when it is done.
    connecting_h2: bool,
    opened: Arc<tokio::sync::Notify>,
}

/// How a send failed, by what the upstream saw of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection (TCP, TLS or the HTTP/2 handshake failed, or it timed out).
    Connect,
    /// HTTP/2 REFUSED_STREAM, or a stream above a graceful GOAWAY's last one: the upstream
    /// did not process the request.
    RefusedStream,
    /// Anything else: the request may have been processed.
    Protocol,
}

/// A failed upstream send.
#[derive(Debug)]
pub struct SendError {
    pub kind: FailureKind,
    source: crate::http::BoxError,
}

/// A response body from an upstream.
pub struct UpstreamBody(Protocol);

enum Protocol {
    H1(h1::H1Body),
    H2(h2::H2Body),
}

// === impl Upstreams ===

impl Upstreams {
    /// A pool whose TLS connections use `tls` (the upstream trust; ALPN is set here).
    pub fn new(tls: &rustls::ClientConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::new()),
                swept: std::sync::atomic::AtomicU64::new(crate::clock::coarse_ms()),
            }),
            tls: TlsConfigs::new(tls),
        }
    }

    /// Sends `req` to `target` (its URI absolute), on a pooled connection or a new one made
    /// within `connect_timeout`. The caller bounds the wait for the response head.
    pub async fn send(
        &self,
        target: &SlotKey,
        mut req: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut stale = 0;
        let mut may_wait = true;
        loop {
            let conn = match self.shared.checkout(target, may_wait) {
                Checkout::H2(sender, slot) => match h2::send(sender, slot, req).await {
                    Ok(resp) => return Ok(resp.map(|b| UpstreamBody(Protocol::H2(b)))),
                    // The connection was closing and never took it: another one takes it.
                    Err((_, Some(unsent))) if stale < MAX_STALE_RETRIES => {
                        stale += 1;
                        req = unsent;
                        continue;
                    }
                    Err((error, _)) => return Err(SendError::from_hyper(error)),
                },
                Checkout::H1(conn) => Some(conn),
                Checkout::WaitH2(opened) => {
                    // Once, and bounded: a request that still finds no room connects itself.
                    let _ = tokio::time::timeout(connect_timeout, opened).await;
                    may_wait = false;
                    None
                }
                Checkout::Connect => {
                    let opened = self.open(target, connect_timeout).await?;
                    match opened {
                        Opened::H1(conn) => Some(conn),
                        // Now in the pool; the next turn takes a stream on it.
                        Opened::H2 => None,
                    }
                }
            };
            let Some(conn) = conn else { continue };
            match h1::send(conn, req, &self.shared, target).await {
                Ok(resp) => return Ok(resp.map(|b| UpstreamBody(Protocol::H1(b)))),
                // Closed before the request was written: another connection takes it.
                Err((_, Some(unsent))) if stale < MAX_STALE_RETRIES => {
                    stale += 1;
                    req = unsent;
                }
                Err((error, _)) => return Err(SendError::from_hyper(error)),
            }
        }
    }

    /// Opens a connection: an HTTP/1.1 one for the caller, or an HTTP/2 one into the pool.
    async fn open(&self, target: &SlotKey, timeout: Duration) -> Result<Opened, SendError> {
        // However the connect ends (done, failed, or abandoned with the request), requests
        // waiting for it look again.
        let _ended = ConnectEnded {
            shared: &self.shared,
            target,
        };
        let opened = tokio::time::timeout(timeout, async {
            let (io, is_h2) = connect::connect(target, &self.tls).await?;
            if is_h2 {
                h2::Conn::handshake(io)
                    .await
                    .map(Fresh::H2)
                    .map_err(std::io::Error::other)
            } else {
                h1::Conn::handshake(io)
                    .await
                    .map(Fresh::H1)
                    .map_err(std::io::Error::other)
            }
        })
        .await;
        let opened = match opened {
            Ok(Ok(fresh)) => Ok(fresh),
            Ok(Err(error)) => Err(SendError {
                kind: FailureKind::Connect,
                source: error.into(),
            }),
            Err(_) => Err(SendError {
                kind: FailureKind::Connect,
                source: format!("connect timed out after {timeout:?}").into(),
            }),
        };
        self.shared.opened(target, opened)
    }

    /// Connections pooled now, for tests and the status page: (idle HTTP/1.1, HTTP/2, open
    /// HTTP/2 streams) over every upstream.
    pub fn counts(&self) -> (usize, usize, usize) {
        let slots = self.shared.lock();
        slots.values().fold((0, 0, 0), |(i, c, s), slot| {
            (
                i + slot.idle.len(),
                c + slot.h2.iter().filter(|c| !c.is_retired()).count(),
                s + slot.h2.iter().map(h2::Conn::streams).sum::<usize>(),
            )
        })
    }
}

// === impl Slot ===

impl Slot {
    /// Drops HTTP/2 connections that take no new stream (failed, GOAWAY) or have carried
    /// none for [`IDLE_TIMEOUT_MS`]; connections with open streams stay.
    fn drop_dead_h2(&mut self, now: u64) {
        self.h2
            .retain(|c| !c.is_retired() && (c.streams() > 0 || !idle_too_long(c.last_used, now)));
    }
}

/// Whether a connection idle since `since` (both [`crate::clock::coarse_ms`]) is past
/// [`IDLE_TIMEOUT_MS`].
fn idle_too_long(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= IDLE_TIMEOUT_MS
}

/// What [`Shared::checkout`] found.
enum Checkout {
    H1(h1::Conn),
    H2(
        hyper::client::conn::http2::SendRequest<ProxyBody>,
        h2::StreamSlot,
    ),
    /// Another request is opening an HTTP/2 connection; wait for it, then look again.
    WaitH2(Pin<Box<tokio::sync::futures::OwnedNotified>>),
    /// Nothing to use: open a connection.
    Connect,
}

/// What a connect yields to the caller.
enum Opened {
    H1(h1::Conn),
    /// An HTTP/2 connection, now in the pool.
    H2,
}

/// A new connection, by the protocol the upstream speaks.
enum Fresh {
    H1(h1::Conn),
    H2(h2::Conn),
}

/// Ends an HTTP/2 connect in progress when dropped ([`Shared::connect_ended`]).
struct ConnectEnded<'a> {
    shared: &'a Shared,
    target: &'a SlotKey,
}

impl Drop for ConnectEnded<'_> {
    fn drop(&mut self) {
        self.shared.connect_ended(self.target);
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SlotKey, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one request to `target`, or what to do to get one. With `may_wait`,
    /// a request to an HTTP/2 upstream whose connection is being opened waits for it.
    fn checkout(&self, target: &SlotKey, may_wait: bool) -> Checkout {
        let mut slots = self.lock();
        let now = crate::clock::coarse_ms();
        self.sweep_if_due(&mut slots, now);
        let slot = match slots.get_mut(target) {
            Some(s) => s,
            None => slots.entry(target.clone()).or_insert_with(|| Slot {
                speaks_h2: target.http2,
                ..Slot::default()
            }),
        };
        if !slot.h2.is_empty() {
            slot.drop_dead_h2(now);
            // The least busy connection with room.
            let least = slot
                .h2
                .iter_mut()
                .filter(|c| c.has_room())
                .min_by_key(|c| c.streams());
            if let Some(conn) = least
                && let Some((sender, stream)) = conn.take_stream()
            {
                conn.last_used = now;
                return Checkout::H2(sender, stream);
            }
        }
        while let Some(mut idle) = slot.idle.pop() {
            if !idle_too_long(idle.since, now) && idle.usable() {
                return Checkout::H1(idle.conn);
            }
        }
        if slot.speaks_h2 && slot.connecting_h2 && may_wait {
            let mut wait = Box::pin(slot.opened.clone().notified_owned());
            // Registered before the lock goes, so the wake-up cannot be missed.
            wait.as_mut().enable();
            return Checkout::WaitH2(wait);
        }
        if slot.speaks_h2 {
            slot.connecting_h2 = true;
        }
        Checkout::Connect
    }

    /// Records a finished connect: an HTTP/2 connection joins the pool.
    fn opened(
        &self,
        target: &SlotKey,
        opened: Result<Fresh, SendError>,
    ) -> Result<Opened, SendError> {
        let fresh = opened?;
        let mut slots = self.lock();
        let slot = slots.entry(target.clone()).or_default();
        match fresh {
            Fresh::H1(h1) => {
                slot.speaks_h2 = false;
                Ok(Opened::H1(h1))
            }
            Fresh::H2(h2) => {
                slot.speaks_h2 = true;
                slot.h2.push(h2);
                Ok(Opened::H2)
            }
        }
    }

    /// A connect ended (after [`Shared::opened`], or abandoned): requests waiting for an
    /// HTTP/2 connection look again.
    fn connect_ended(&self, target: &SlotKey) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(target)
            && slot.connecting_h2
        {
            slot.connecting_h2 = false;
            slot.opened.notify_waiters();
        }
    }

    /// Every [`SWEEP_EVERY_MS`]: closes the idle connections of every upstream that outlived
    /// [`IDLE_TIMEOUT_MS`], and forgets upstreams left with nothing (a backend removed from
    /// the config, a provider no longer called), so connections and map entries do not pile
    /// up for upstreams no request asks for any more.
    fn sweep_if_due(&self, slots: &mut HashMap<SlotKey, Slot>, now: u64) {
        use std::sync::atomic::Ordering;
        if now.saturating_sub(self.swept.load(Ordering::Relaxed)) < SWEEP_EVERY_MS {
            return;
        }
        self.swept.store(now, Ordering::Relaxed);
        slots.retain(|_, slot| {
            slot.idle.retain(|i| !idle_too_long(i.since, now));
            slot.drop_dead_h2(now);
            !slot.idle.is_empty() || !slot.h2.is_empty() || slot.connecting_h2
        });
    }

    /// An HTTP/1.1 connection whose exchange ended, back in the pool.
    fn put_idle(&self, target: SlotKey, conn: h1::Conn) {
        let mut slots = self.lock();
        let slot = slots.entry(target).or_default();
        if slot.idle.len() >= MAX_IDLE_PER_TARGET {
            // The oldest goes.
            slot.idle.remove(0);
        }
        slot.idle.push(h1::Idle {
            conn,
            since: crate::clock::coarse_ms(),
        });
    }
}

// === impl SendError ===

impl SendError {
    fn from_hyper(error: hyper::Error) -> Self {
        let kind = if crate::http::client::is_refused_stream(&error) {
            FailureKind::RefusedStream
        } else {
            FailureKind::Protocol
        };
        Self {
            kind,
            source: error.into(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            crate::http::client::ErrorChain(self.source.as_ref())
        )
    }
}

impl std::error::Error for SendError {}

// === impl UpstreamBody ===

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Protocol::H1(b) => Pin::new(b).poll_frame(cx),
            Protocol::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Protocol::H1(b) => b.is_end_stream(),
            Protocol::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Protocol::H1(b) => b.size_hint(),
            Protocol::H2(b) => b.size_hint(),
        }
    }
}
