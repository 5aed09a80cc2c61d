//! A mock OpenAI-compatible LLM upstream.
//!
//! [`MockUpstream`] is a real HTTP server (HTTP/1.1 and h2c on the same port,
//! via hyper-util's auto connection builder) bound on 127.0.0.1. It records
//! every request it receives and its behaviour can be changed at runtime with
//! [`MockUpstream::set_behavior`] / [`MockUpstream::fail_next`].
//!
//! Endpoints (when the behaviour is [`Behavior::Normal`]):
//!
//! * `POST /v1/chat/completions`: OpenAI-shaped JSON answer, or an SSE stream
//!   when the request body has `"stream": true` (see
//!   [`MockUpstream::set_stream`]).
//! * `GET /v1/models`: a one-entry model list (cheap health probe).
//! * `GET /health/deep`: a deep-health JSON body, settable with
//!   [`MockUpstream::set_deep_health`]; by default [`default_deep_health`].
//! * `POST /mcp`: a minimal MCP (Streamable HTTP) server: `initialize` opens a session and
//!   answers with an `Mcp-Session-Id` header (`NAME-session-N`); any other call needs a
//!   session this mock opened (400 without the header, 404 for an unknown session).
//!   `GET /mcp` with a known session is a one-event SSE stream.
//! * `GET /healthz`: always `200 ok`, **never affected by behaviours** (and it
//!   does not consume [`MockUpstream::fail_next`] slots), so it can be used to
//!   wait for the mock itself to be up. It is still recorded.
//! * anything else: `200` with `{"upstream":NAME,"method":..,"path":..,"query":..}`.
//!
//! Every response produced by the mock carries the header
//! [`UPSTREAM_HEADER`]` : NAME`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Response header naming the mock that produced the response.
pub const UPSTREAM_HEADER: &str = "x-mock-upstream";
/// Model reported when the request does not name one, and listed by `GET /v1/models`.
pub const DEFAULT_MODEL: &str = "mock-model";
/// Default number of content chunks in a streamed chat completion.
pub const DEFAULT_STREAM_CHUNKS: usize = 5;
/// Text of every streamed content chunk.
pub const STREAM_TOKEN: &str = "tok";

/// How long [`MockUpstream::shutdown`] waits for in-flight responses (e.g. a
/// running SSE stream) before aborting the connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type MockBody = UnsyncBoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the mock does with a request (other than `GET /healthz`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Answer normally (see the module docs).
    #[default]
    Normal,
    /// Answer with this status, these extra headers and this body. The
    /// content type defaults to `application/json` when the body starts with
    /// `{` or `[` and `text/plain` otherwise, unless `headers` sets it.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Answer normally after this delay (before the response head is sent).
    Delay(Duration),
    /// Read the request, record it and never answer. The request is only
    /// released (by resetting it) when the mock shuts down.
    Hang,
    /// Read the request, record it, then drop the connection (HTTP/1) or
    /// reset the stream (h2) without any response: a transport-level failure.
    Reset,
    /// Answer normally, but send the body `chunk` bytes at a time, `interval` apart (a
    /// slow upstream that is not silent).
    Trickle { chunk: usize, interval: Duration },
    /// A streamed chat completion (whatever the request asked) that sends `after` events
    /// and then breaks off: the connection is cut mid-body, no `[DONE]`.
    AbortStream { after: usize },
}

impl Behavior {
    /// `Status` with an OpenAI-style error body and no extra headers.
    pub fn status(code: u16) -> Self {
        let message = StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("mock error");
        Behavior::Status {
            code,
            headers: Vec::new(),
            body: error_body(message, "mock_error").to_string(),
        }
    }

    /// `429 Too Many Requests` with `Retry-After: <retry_after_secs>` and an
    /// OpenAI-style `rate_limit_exceeded` error body.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Behavior::Status {
            code: 429,
            headers: vec![("retry-after".to_owned(), retry_after_secs.to_string())],
            body: error_body("Rate limit reached (mock)", "rate_limit_exceeded").to_string(),
        }
    }
}

/// One request as received by the mock.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/models?key=abc`.
    pub uri: String,
    /// Path only.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// HTTP version the request arrived with (HTTP/1.1 or HTTP/2 for h2c).
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The API key the mock received: `Authorization` (with a `Bearer ` prefix
    /// stripped, case-insensitively), else `x-api-key`, else `x-goog-api-key`,
    /// else the `key` query parameter. Empty values are treated as absent.
    pub key: Option<String>,
    /// When it arrived (for checks over sliding windows of time).
    pub at: std::time::Instant,
    /// The TLS server name (SNI) the connection asked for; `None` over plain TCP or
    /// without SNI.
    pub sni: Option<String>,
    /// The request target's authority: HTTP/2's `:authority`; `None` over HTTP/1.1 (origin
    /// form, the authority is in `Host`).
    pub authority: Option<String>,
}

impl RecordedRequest {
    /// The host the request was addressed to: its `Host` header, else its `:authority`.
    pub fn host(&self) -> Option<&str> {
        self.header("host").or(self.authority.as_deref())
    }

    /// First value of header `name` if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Body decoded as UTF-8 (lossily).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct State {
    requests: Vec<RecordedRequest>,
    behavior: Behavior,
    queued: VecDeque<Behavior>,
    stream_chunks: usize,
    stream_interval: Duration,
    deep_health: Value,
    mcp_sessions: HashSet<String>,
    /// Standing behaviours for requests carrying a given key (checked before the queue).
    key_behaviors: HashMap<String, Behavior>,
    /// Standing behaviours for requests carrying a header with a given value (checked
    /// first): a request the upstream refuses for itself, whatever its key.
    header_behaviors: Vec<(String, String, Behavior)>,
    /// When set, every request but `GET /healthz` waits for a permit before it is answered
    /// ([`MockUpstream::gate`]).
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            requests: Vec::new(),
            behavior: Behavior::Normal,
            queued: VecDeque::new(),
            stream_chunks: DEFAULT_STREAM_CHUNKS,
            stream_interval: Duration::ZERO,
            deep_health: default_deep_health(),
            mcp_sessions: HashSet::new(),
            key_behaviors: HashMap::new(),
            header_behaviors: Vec::new(),
            gate: None,
        }
    }
}

struct Shared {
    name: String,
    name_header: HeaderValue,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// Streams whose body was dropped before the last event was sent (client went away).
    streams_cancelled: Arc<AtomicU64>,
}

/// Counts a stream as cancelled if it is dropped before its last event went out.
struct StreamGuard {
    cancelled: Arc<AtomicU64>,
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.completed {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Locks the state. Poisoning is ignored: the state is plain data that is
    /// never left half-updated, and the server loop must not panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to a running mock upstream. Dropping it aborts the server (and all
/// its connections); [`MockUpstream::shutdown`] stops it gracefully.
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Serves HTTPS ([`MockUpstream::start_tls`]).
    tls: bool,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// A read-only view of what a mock recorded that can be kept apart from the mock (a stats
/// endpoint holds one while `main` keeps the mock to shut it down).
#[derive(Clone)]
pub struct MockRecords {
    shared: Arc<Shared>,
}

impl MockRecords {
    /// The mock's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The keys received so far, in order; requests without a key are skipped.
    pub fn received_keys(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter_map(|r| r.key.clone())
            .collect()
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a mock named `name` on 127.0.0.1 with a random free port.
    pub async fn start(name: &str) -> io::Result<MockUpstream> {
        Self::start_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a mock named `name` on `addr` (port 0 picks a free port).
    ///
    /// Fails if the address cannot be bound, or if `name` is not a valid
    /// HTTP header value (it is sent in [`UPSTREAM_HEADER`]).
    pub async fn start_on(name: &str, addr: SocketAddr) -> io::Result<MockUpstream> {
        Self::start_with(name, addr, None).await
    }

    /// Starts a mock named `name` on 127.0.0.1 with a random free port that serves HTTPS
    /// with `config` (its ALPN list decides between HTTP/2 and HTTP/1.1). Each request
    /// records the connection's SNI ([`RecordedRequest::sni`]).
    pub async fn start_tls(
        name: &str,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<MockUpstream> {
        Self::start_tls_on(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// [`MockUpstream::start_tls`] on `addr` (e.g. the address of a mock that was stopped).
    pub async fn start_tls_on(
        name: &str,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<MockUpstream> {
        Self::start_with(name, addr, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<MockUpstream> {
        let name_header = HeaderValue::from_str(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mock upstream name {name:?} is not a valid header value"),
            )
        })?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            name_header,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            streams_cancelled: Arc::new(AtomicU64::new(0)),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), shutdown_rx, tls));
        tracing::debug!(name, %addr, "mock upstream started");
        Ok(MockUpstream {
            shared,
            addr,
            tls: is_tls,
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The name given at start (sent back in [`UPSTREAM_HEADER`]).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A view of the records that can outlive this borrow.
    pub fn records(&self) -> MockRecords {
        MockRecords {
            shared: Arc::clone(&self.shared),
        }
    }

    /// All requests received so far (oldest first).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The keys received so far, in order; requests without a key are skipped.
    pub fn received_keys(&self) -> Vec<String> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter_map(|r| r.key.clone())
            .collect()
    }

    /// Forgets the recorded requests (behaviours are kept).
    pub fn clear(&self) {
        self.shared.lock().requests.clear();
    }

    /// Back to the initial state: no recorded requests, [`Behavior::Normal`],
    /// no queued `fail_next` behaviours, default stream settings.
    pub fn reset(&self) {
        *self.shared.lock() = State::default();
    }

    /// Sets the standing behaviour, used whenever no [`fail_next`] behaviour
    /// is queued.
    ///
    /// [`fail_next`]: MockUpstream::fail_next
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    /// The standing behaviour.
    pub fn behavior(&self) -> Behavior {
        self.shared.lock().behavior.clone()
    }

    /// The next `n` requests (other than `GET /healthz`) get `behavior`;
    /// after that the standing behaviour applies again (`Normal` unless
    /// changed with [`set_behavior`]). Calls accumulate: the queue is FIFO.
    ///
    /// [`set_behavior`]: MockUpstream::set_behavior
    pub fn fail_next(&self, n: usize, behavior: Behavior) {
        let mut state = self.shared.lock();
        state.queued.extend(std::iter::repeat_n(behavior, n));
    }

    /// Every request carrying API key `key` (as the mock extracts it) gets `behavior`, before
    /// any queued or standing behaviour; `None` removes the rule.
    pub fn set_key_behavior(&self, key: &str, behavior: Option<Behavior>) {
        let mut state = self.shared.lock();
        match behavior {
            Some(b) => state.key_behaviors.insert(key.to_owned(), b),
            None => state.key_behaviors.remove(key),
        };
    }

    /// Every request whose header `name` has `value` gets `behavior`, before any other rule:
    /// the upstream refusing the request itself (a bad organization header, say) whatever key
    /// it carries. A later rule for the same header and value replaces it.
    pub fn set_header_behavior(&self, name: &str, value: &str, behavior: Behavior) {
        let mut state = self.shared.lock();
        let name = name.to_ascii_lowercase();
        state
            .header_behaviors
            .retain(|(n, v, _)| !(*n == name && v == value));
        state
            .header_behaviors
            .push((name, value.to_owned(), behavior));
    }

    /// From now on every request (other than `GET /healthz`) is recorded when it arrives but
    /// answered only once [`MockUpstream::release`] lets it through, one per permit, in
    /// arrival order: a test steps through probes or requests one at a time, with no clock.
    pub fn gate(&self) {
        self.shared.lock().gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets `n` more gated requests be answered (see [`MockUpstream::gate`]).
    pub fn release(&self, n: usize) {
        if let Some(gate) = &self.shared.lock().gate {
            gate.add_permits(n);
        }
    }

    /// Number of `fail_next` behaviours not consumed yet.
    pub fn pending_failures(&self) -> usize {
        self.shared.lock().queued.len()
    }

    /// Streaming responses whose body was dropped before the last event went out (the
    /// client, or a proxy in between, went away).
    pub fn streams_cancelled(&self) -> u64 {
        self.shared.streams_cancelled.load(Ordering::Relaxed)
    }

    /// Streamed chat completions send `chunks` content chunks; every SSE
    /// event after the first (content chunks, usage chunk, `[DONE]`) is
    /// sent `interval` after the previous one. Default: 5 chunks, no delay.
    pub fn set_stream(&self, chunks: usize, interval: Duration) {
        let mut state = self.shared.lock();
        state.stream_chunks = chunks;
        state.stream_interval = interval;
    }

    /// Sets the body `GET /health/deep` answers with (any JSON value; default
    /// [`default_deep_health`]).
    /// The MCP sessions this mock has opened.
    pub fn mcp_sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.lock().mcp_sessions.iter().cloned().collect();
        v.sort();
        v
    }

    pub fn set_deep_health(&self, body: Value) {
        self.shared.lock().deep_health = body;
    }

    /// Stops accepting connections, lets in-flight responses finish (up to
    /// a short grace period), releases `Hang`/`Delay` requests by resetting
    /// them, and returns once the listener is closed.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(name = %self.shared.name, error = %e, "mock upstream task failed");
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_rx: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut conns = JoinSet::new();
    let mut stop = shutdown_rx.clone();
    loop {
        tokio::select! {
            () = wait_shutdown(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(accept_connection(stream, tls.clone(), Arc::clone(&shared), shutdown_rx.clone()));
                }
                Err(e) => {
                    // E.g. EMFILE: back off a little instead of spinning.
                    tracing::warn!(name = %shared.name, error = %e, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(name = %shared.name, "mock upstream: aborting connections after grace period");
    }
    // Dropping the JoinSet aborts whatever is left.
}

/// Completes the TLS handshake when the mock serves HTTPS, then serves the connection.
async fn accept_connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown_rx: watch::Receiver<bool>,
) {
    // SSE chunks must leave immediately.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let Some(acceptor) = tls else {
        return serve_connection(stream, None, shared, shutdown_rx).await;
    };
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let sni = stream.get_ref().1.server_name().map(str::to_owned);
            serve_connection(stream, sni, shared, shutdown_rx).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(name = %shared.name, error = %e, "mock upstream TLS handshake failed")
        }
        Err(_) => tracing::debug!(name = %shared.name, "mock upstream TLS handshake timed out"),
    }
}

async fn serve_connection<S>(
    stream: S,
    sni: Option<String>,
    shared: Arc<Shared>,
    shutdown_rx: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let name = shared.name.clone();
    let svc_shutdown = shutdown_rx.clone();
    let service =
        service_fn(move |req| handle(Arc::clone(&shared), svc_shutdown.clone(), sni.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stop = shutdown_rx;
    let result = tokio::select! {
        res = conn.as_mut() => res,
        () = wait_shutdown(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(name, error = %e, "mock upstream connection ended with error");
    }
}

/// Resolves once shutdown has been requested (or the handle is gone).
async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. the handle was dropped.
    let _ = rx.wait_for(|stopped| *stopped).await;
}

async fn handle(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    sni: Option<String>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let key = extract_key(&parts.headers, query.as_deref());
    let session = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_health = parts.method == Method::GET && path == "/healthz";
    tracing::debug!(
        name = %shared.name, method = %parts.method, uri, version = ?parts.version,
        has_key = key.is_some(), "mock upstream request"
    );
    let recorded = RecordedRequest {
        method: parts.method.clone(),
        uri,
        path: path.clone(),
        query: query.clone(),
        version: parts.version,
        headers: parts.headers,
        body: body.clone(),
        key,
        at: std::time::Instant::now(),
        sni,
        authority: parts.uri.authority().map(|a| a.to_string()),
    };
    let (behavior, gate) = {
        let mut state = shared.lock();
        let gate = state.gate.clone().filter(|_| !is_health);
        let by_key = recorded
            .key
            .as_ref()
            .and_then(|k| state.key_behaviors.get(k).cloned());
        let by_header = state
            .header_behaviors
            .iter()
            .find(|(n, v, _)| {
                recorded
                    .headers
                    .get(n.as_str())
                    .is_some_and(|h| h.as_bytes() == v.as_bytes())
            })
            .map(|(_, _, b)| b.clone());
        state.requests.push(recorded);
        let behavior = if is_health {
            Behavior::Normal
        } else if let Some(b) = by_header {
            b
        } else if let Some(b) = by_key {
            b
        } else {
            match state.queued.pop_front() {
                Some(b) => b,
                None => state.behavior.clone(),
            }
        };
        (behavior, gate)
    };
    // Recorded (and its behaviour chosen) on arrival; answered once the test releases it.
    if let Some(gate) = gate {
        tokio::select! {
            permit = gate.acquire() => permit.map_err(|e| -> BoxError { e.to_string().into() })?.forget(),
            () = wait_shutdown(&mut shutdown) => return Err("mock upstream shutting down (gated request)".into()),
        }
    }

    let normal = || {
        route(
            &shared,
            &parts.method,
            &path,
            query.as_deref(),
            &body,
            session.as_deref(),
        )
    };
    let mut response = match behavior {
        Behavior::Normal => normal(),
        Behavior::Status {
            code,
            headers,
            body,
        } => status_response(code, &headers, body),
        Behavior::Delay(delay) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = wait_shutdown(&mut shutdown) => return Err("mock upstream shutting down".into()),
            }
            normal()
        }
        Behavior::Hang => {
            wait_shutdown(&mut shutdown).await;
            return Err("mock upstream shutting down (hung request)".into());
        }
        Behavior::Reset => return Err("mock upstream: Behavior::Reset".into()),
        Behavior::Trickle { chunk, interval } => {
            let resp = route(
                &shared,
                &parts.method,
                &path,
                query.as_deref(),
                &body,
                session.as_deref(),
            );
            trickle(resp, chunk.max(1), interval).await
        }
        Behavior::AbortStream { after } => {
            let events = sse_events("chatcmpl-abort", 0, DEFAULT_MODEL, after + 5, false, 0);
            let interval = shared.lock().stream_interval;
            let frames = futures::stream::iter(events.into_iter().enumerate()).then(
                move |(i, event)| async move {
                    if i > 0 && !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                    if i >= after {
                        return Err::<Frame<Bytes>, BoxError>(
                            "mock upstream: Behavior::AbortStream".into(),
                        );
                    }
                    Ok(Frame::data(event))
                },
            );
            let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
    };
    response.headers_mut().insert(
        HeaderName::from_static(UPSTREAM_HEADER),
        shared.name_header.clone(),
    );
    Ok(response)
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
    session: Option<&str>,
) -> Response<MockBody> {
    match (method, path) {
        (&Method::POST | &Method::GET, "/mcp") => mcp(shared, method, body, session),
        (&Method::POST, "/v1/chat/completions") => chat_completions(shared, body),
        (&Method::POST, "/v1/messages") => anthropic_messages(shared, body),
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": [{
                    "id": DEFAULT_MODEL,
                    "object": "model",
                    "created": 0,
                    "owned_by": shared.name,
                }],
            }),
        ),
        (&Method::GET, "/healthz") => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, "/health/deep") => {
            let body = shared.lock().deep_health.clone();
            json_response(StatusCode::OK, &body)
        }
        _ => json_response(
            StatusCode::OK,
            &json!({
                "upstream": shared.name,
                "method": method.as_str(),
                "path": path,
                "query": query,
            }),
        ),
    }
}

/// Anthropic's Messages API shape: `usage.input_tokens`/`output_tokens` and its
/// `anthropic-ratelimit-*` headers.
fn anthropic_messages(shared: &Shared, body: &Bytes) -> Response<MockBody> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-test")
        .to_owned();
    let input_tokens = prompt_tokens(&request);
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "id": format!("msg_{}", shared.name),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": format!("hello from {}", shared.name)}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input_tokens, "output_tokens": 3},
        }),
    );
    let h = resp.headers_mut();
    for (name, value) in [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-tokens-limit", "100000"),
        ("anthropic-ratelimit-tokens-remaining", "99000"),
    ] {
        h.insert(name, http::HeaderValue::from_static(value));
    }
    resp
}

fn chat_completions(shared: &Shared, body: &Bytes) -> Response<MockBody> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &error_body(&format!("invalid JSON body: {e}"), "invalid_request_error"),
            );
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
        .to_owned();
    let prompt_tokens = prompt_tokens(&request);
    let id = format!(
        "chatcmpl-mock-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let (chunks, interval) = {
            let state = shared.lock();
            (state.stream_chunks, state.stream_interval)
        };
        let events = sse_events(&id, created, &model, chunks, include_usage, prompt_tokens);
        return sse_response(events, interval, shared.streams_cancelled.clone());
    }

    let content = format!("hello from {}", shared.name);
    let completion_tokens = count_words(&content);
    json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }),
    )
}

/// `POST /mcp` and `GET /mcp`: see the module docs.
fn mcp(
    shared: &Shared,
    method: &Method,
    body: &Bytes,
    session: Option<&str>,
) -> Response<MockBody> {
    let call: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    if method == Method::POST && call.get("method").and_then(Value::as_str) == Some("initialize") {
        let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let sid = format!("{}-session-{n}", shared.name);
        shared.lock().mcp_sessions.insert(sid.clone());
        let mut resp = json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": "2025-06-18",
                "serverInfo": {"name": shared.name},
                "capabilities": {},
            }}),
        );
        if let Ok(v) = HeaderValue::from_str(&sid) {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        return resp;
    }
    let Some(sid) = session else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_body("Mcp-Session-Id header required", "invalid_request_error"),
        );
    };
    if !shared.lock().mcp_sessions.contains(sid) {
        return json_response(
            StatusCode::NOT_FOUND,
            &error_body(&format!("unknown session {sid}"), "not_found_error"),
        );
    }
    if method == Method::GET {
        let event = sse_data(&json!({"upstream": shared.name, "session": sid}).to_string());
        return sse_response(vec![event], Duration::ZERO, Arc::new(AtomicU64::new(0)));
    }
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": {"upstream": shared.name, "session": sid}}),
    )
}

/// The SSE events of a streamed completion: `chunks` content chunks (the
/// first also carries `role`, the last `finish_reason: "stop"`), an optional
/// usage chunk (`choices: []`), then `[DONE]`.
fn sse_events(
    id: &str,
    created: u64,
    model: &str,
    chunks: usize,
    include_usage: bool,
    prompt_tokens: u64,
) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(chunks + 2);
    for i in 0..chunks {
        let mut delta = json!({ "content": STREAM_TOKEN });
        if i == 0 {
            delta["role"] = json!("assistant");
        }
        let finish_reason = if i + 1 == chunks {
            json!("stop")
        } else {
            Value::Null
        };
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        events.push(sse_data(&chunk.to_string()));
    }
    if include_usage {
        let completion_tokens = chunks as u64;
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        events.push(sse_data(&chunk.to_string()));
    }
    events.push(sse_data("[DONE]"));
    events
}

fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Streams each event as its own body frame, `interval` apart.
fn sse_response(
    events: Vec<Bytes>,
    interval: Duration,
    cancelled: Arc<AtomicU64>,
) -> Response<MockBody> {
    let last = events.len().saturating_sub(1);
    let guard = Arc::new(Mutex::new(StreamGuard {
        cancelled,
        completed: events.is_empty(),
    }));
    let frames = futures::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| {
        let guard = guard.clone();
        async move {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if i == last {
                guard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .completed = true;
            }
            Ok::<_, BoxError>(Frame::data(event))
        }
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The same response with its body re-sent `chunk` bytes at a time, `interval` apart.
async fn trickle(resp: Response<MockBody>, chunk: usize, interval: Duration) -> Response<MockBody> {
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let pieces: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let frames =
        futures::stream::iter(pieces.into_iter().enumerate()).then(move |(i, piece)| async move {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            Ok::<_, BoxError>(Frame::data(piece))
        });
    Response::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}

/// Deterministic fake token count: whitespace-separated words in the text of
/// all messages (string contents and `text` parts of array contents).
fn prompt_tokens(request: &Value) -> u64 {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return 0;
    };
    messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|content| match content {
            Value::String(s) => count_words(s),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(count_words)
                .sum(),
            _ => 0,
        })
        .sum()
}

fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn extract_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(auth) = header("authorization") {
        // Header values arrive trimmed, so an empty bearer token is just "Bearer".
        let key = match auth.get(..7) {
            _ if auth.eq_ignore_ascii_case("bearer") => "",
            Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => {
                auth.get(7..).unwrap_or_default().trim()
            }
            _ => auth,
        };
        if !key.is_empty() {
            return Some(key.to_owned());
        }
    }
    if let Some(key) = header("x-api-key").or_else(|| header("x-goog-api-key")) {
        return Some(key.to_owned());
    }
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == "key" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The default `GET /health/deep` body: [`DEFAULT_MODEL`] healthy, capacity
/// 100, consumption 0.
pub fn default_deep_health() -> Value {
    json!({"models": [{
        "name": DEFAULT_MODEL,
        "payload": {"healthy": true, "capacity": 100, "consumption": 0},
    }]})
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({ "error": { "message": message, "type": kind, "code": kind } })
}

fn full(body: impl Into<Bytes>) -> MockBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(status: StatusCode, text: &'static str) -> Response<MockBody> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn status_response(code: u16, headers: &[(String, String)], body: String) -> Response<MockBody> {
    let status = StatusCode::from_u16(code).unwrap_or_else(|_| {
        tracing::warn!(code, "Behavior::Status with invalid status code, using 500");
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let content_type = if body.trim_start().starts_with(['{', '[']) {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let mut content_type_set = false;
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                if name == header::CONTENT_TYPE && !content_type_set {
                    map.remove(header::CONTENT_TYPE);
                    content_type_set = true;
                }
                map.append(name, value);
            }
            _ => tracing::warn!(name, value, "Behavior::Status: skipping invalid header"),
        }
    }
    response
}

/// A raw TCP "upstream" for what a well-behaved HTTP server cannot do: answer garbage,
/// trickle a response head, or accept and never speak. Each connection's request head is read
/// (up to `\r\n\r\n` or 64 KiB), then [`RawReply`] is played.
pub struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// What a [`RawUpstream`] sends back.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// Bytes written after the request head was read.
    pub bytes: Vec<u8>,
    /// Pause before each byte (zero: all at once).
    pub per_byte: Duration,
    /// After the bytes, keep the connection open and silent instead of closing it.
    pub then_hang: bool,
}

impl RawReply {
    /// Writes `bytes` at once, then closes.
    pub fn close_after(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.to_vec(),
            per_byte: Duration::ZERO,
            then_hang: false,
        }
    }
}

impl RawUpstream {
    /// Starts on a free loopback port.
    pub async fn start(reply: RawReply) -> io::Result<RawUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        count.fetch_add(1, Ordering::Relaxed);
                        let reply = reply.clone();
                        conns.spawn(async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut head = Vec::new();
                            let mut buf = [0u8; 4096];
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                                match stream.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            if reply.per_byte.is_zero() {
                                let _ = stream.write_all(&reply.bytes).await;
                            } else {
                                for b in &reply.bytes {
                                    tokio::time::sleep(reply.per_byte).await;
                                    if stream.write_all(&[*b]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            if reply.then_hang {
                                // Until the peer goes away.
                                while let Ok(n) = stream.read(&mut buf).await {
                                    if n == 0 {
                                        break;
                                    }
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(RawUpstream {
            addr,
            connections,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn key_extraction_order() {
        let all = headers(&[
            ("authorization", "Bearer sk-a"),
            ("x-api-key", "sk-b"),
            ("x-goog-api-key", "sk-c"),
        ]);
        assert_eq!(extract_key(&all, Some("key=sk-d")).as_deref(), Some("sk-a"));
        assert_eq!(
            extract_key(&headers(&[("authorization", "bearer  sk-a ")]), None).as_deref(),
            Some("sk-a")
        );
        assert_eq!(
            extract_key(&headers(&[("authorization", "Basic abc")]), None).as_deref(),
            Some("Basic abc")
        );
        assert_eq!(
            extract_key(
                &headers(&[("authorization", "Bearer "), ("x-api-key", "sk-b")]),
                None
            )
            .as_deref(),
            Some("sk-b")
        );
        assert_eq!(
            extract_key(&headers(&[("x-goog-api-key", "sk-c")]), Some("key=sk-d")).as_deref(),
            Some("sk-c")
        );
        assert_eq!(
            extract_key(&HeaderMap::new(), Some("a=1&key=sk%2Fd")).as_deref(),
            Some("sk/d")
        );
        assert_eq!(extract_key(&HeaderMap::new(), Some("a=1")), None);
        assert_eq!(extract_key(&HeaderMap::new(), None), None);
    }

    #[test]
    fn prompt_tokens_counts_words() {
        let req = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
        ]});
        assert_eq!(prompt_tokens(&req), 5);
        assert_eq!(prompt_tokens(&json!({})), 0);
    }

    #[test]
    fn sse_event_shapes() {
        let events = sse_events("id", 1, "m", 2, true, 4);
        assert_eq!(events.len(), 4);
        assert!(
            events
                .iter()
                .all(|e| e.starts_with(b"data: ") && e.ends_with(b"\n\n"))
        );
        assert_eq!(&events[3][..], b"data: [DONE]\n\n");
        let usage: Value = serde_json::from_slice(&events[2][6..]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 6);
        assert_eq!(sse_events("id", 1, "m", 0, false, 0).len(), 1);
    }

    #[test]
    fn status_helpers() {
        let Behavior::Status {
            code,
            headers,
            body,
        } = Behavior::rate_limited(7)
        else {
            panic!("not a status");
        };
        assert_eq!(code, 429);
        assert_eq!(headers, vec![("retry-after".to_owned(), "7".to_owned())]);
        assert!(body.contains("rate_limit_exceeded"));
        let resp = status_response(42, &[("Content-Type".into(), "text/x".into())], "x".into());
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/x");
    }
}
