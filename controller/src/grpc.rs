//! The discovery service: one bidirectional stream per proxy. Knows nothing of Kubernetes: it
//! reads a `watch::Receiver<Arc<Index>>`, so tests feed it directly, and asks an
//! [`Authenticate`] who the caller is.

use crate::auth::{self, Authenticate, Identity};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::proxies::{Proxies, Session};
use crate::quota;
use anyhow::Context;
use keyway_api::model::{self, ObjectId};
use keyway_proto as pb;
use std::collections::BTreeSet;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long a connected caller may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most extra namespaces one Hello may ask for.
const MAX_EXTRA_NAMESPACES: usize = 100;
/// Longest `Hello.proxy_id` (a pod name is at most 253 characters, plus a suffix).
pub const MAX_PROXY_ID_LEN: usize = 300;
/// Most entries of `Hello.pools`.
pub const MAX_POOLS: usize = 256;
/// Longest pool filter entry: `namespace/name`.
const MAX_POOL_ENTRY_LEN: usize = 63 + 1 + 253;
/// Longest `Hello.build_version`.
const MAX_BUILD_VERSION_LEN: usize = 64;
/// Longest key state reason kept from a report (it lands in status and Events).
const MAX_REASON_LEN: usize = 256;
/// A stream's lifetime is its maximum less up to this fraction, at random, so a fleet that
/// connected together does not reconnect together.
const LIFETIME_JITTER: f64 = 0.2;

/// Per-stream and per-identity bounds (`--stream-max-lifetime-seconds`,
/// `--max-streams-per-identity`).
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// A stream ends after at most this long (jittered down by up to 20%); the proxy
    /// reconnects with a fresh token, which is reviewed again.
    pub max_lifetime: Duration,
    /// Most concurrent streams of one authenticated identity (ServiceAccount); 0: unbounded.
    pub max_streams_per_identity: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_lifetime: Duration::from_secs(600),
            max_streams_per_identity: 1000,
        }
    }
}

/// Serves snapshots from the index to connected proxies.
#[derive(Clone)]
pub struct DiscoveryService {
    index: watch::Receiver<Arc<Index>>,
    proxies: Proxies,
    metrics: Metrics,
    /// Closes every stream when the controller shuts down.
    drain: watch::Receiver<bool>,
    /// Who a caller is; [`auth::NoAuth`] unless [`DiscoveryService::with_authenticator`].
    auth: Arc<dyn Authenticate>,
    /// Quota shares' serving table, computed once per index and membership change.
    serving: quota::ServingCache,
    limits: StreamLimits,
    /// Open streams per authenticated identity.
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// Holds one of an identity's stream slots; frees it when the session ends.
struct StreamSlot {
    user: Option<String>,
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(user) = &self.user {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = streams.get_mut(user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    streams.remove(user);
                }
            }
        }
    }
}

type SnapshotStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

// === impl DiscoveryService ===

impl DiscoveryService {
    pub fn new(
        index: watch::Receiver<Arc<Index>>,
        proxies: Proxies,
        metrics: Metrics,
        drain: watch::Receiver<bool>,
    ) -> Self {
        Self {
            index,
            proxies,
            metrics,
            drain,
            auth: Arc::new(auth::NoAuth),
            serving: quota::ServingCache::default(),
            limits: StreamLimits::default(),
            streams: Arc::default(),
        }
    }

    /// Bounds streams' lifetime and count per identity.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes a stream slot of `identity`, or refuses when it has all it may have. Proxies
    /// that are not authenticated (`--proxy-auth none`) have no identity to count.
    fn stream_slot(&self, identity: &Identity) -> Result<StreamSlot, Status> {
        let max = self.limits.max_streams_per_identity;
        if identity.namespace.is_none() || max == 0 {
            return Ok(StreamSlot {
                user: None,
                streams: self.streams.clone(),
            });
        }
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = streams.entry(identity.user.clone()).or_default();
        if *n >= max {
            return Err(Status::resource_exhausted(format!(
                "{} already has {max} open discovery streams (--max-streams-per-identity)",
                identity.user
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            user: Some(identity.user.clone()),
            streams: self.streams.clone(),
        })
    }

    /// Authenticates every stream with `auth` (the controller passes its `--proxy-auth`).
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticate>) -> Self {
        self.auth = auth;
        self
    }

    pub fn into_server(self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type StreamStream = SnapshotStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let remote = request.remote_addr();
        // Authenticate before reading anything else: an unknown caller gets nothing, not even
        // a session waiting for its Hello.
        let identity = match auth::bearer(request.metadata()) {
            Ok(token) => self.auth.authenticate(token.as_deref()).await,
            Err(status) => Err(status),
        }
        .inspect_err(|status| {
            tracing::info!(?remote, code = ?status.code(), reason = status.message(), "refused a discovery stream");
        })?;
        let slot = self.stream_slot(&identity).inspect_err(|status| {
            tracing::warn!(?remote, user = %identity.user, reason = status.message(), "refused a discovery stream");
        })?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let hello = match first {
            Some(pb::ProxyMessage {
                message: Some(pb::proxy_message::Message::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let hello = check_hello(hello, &identity).inspect_err(|status| {
            tracing::info!(?remote, user = %identity.user, code = ?status.code(), reason = status.message(), "refused a discovery stream");
        })?;
        let (tx, rx) = mpsc::channel(4);
        let session = self.proxies.register(
            hello.proxy_id.clone(),
            hello.namespace.clone(),
            hello.namespaces.clone(),
            hello.pools.clone(),
        );
        tracing::info!(proxy_id = %hello.proxy_id, namespace = %hello.namespace, extra_namespaces = ?hello.namespaces, pools = ?hello.pools, user = %identity.user, "proxy connected");
        self.metrics.connected_proxies.inc();
        let service = self.clone();
        let lifetime = self
            .limits
            .max_lifetime
            .mul_f64(1.0 - LIFETIME_JITTER * rand::random::<f64>());
        tokio::spawn(async move {
            let _slot = slot;
            run_session(hello, session, inbound, tx, service, lifetime).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Pushes a snapshot whenever this proxy's view of the index changes, and folds its replies
/// into the registry, until either side goes away.
async fn run_session(
    hello: pb::Hello,
    session: Session,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    service: DiscoveryService,
    lifetime: Duration,
) {
    let DiscoveryService {
        mut index,
        metrics,
        mut drain,
        serving,
        ..
    } = service;
    let mut version = 0u64;
    let mut last_sent = None;
    let mut membership = session.proxies().subscribe_membership();
    index.mark_changed();
    let draining = async move {
        let _ = drain.wait_for(|d| *d).await.map(|_| ());
    };
    tokio::pin!(draining);
    // The stream does not outlive the credentials it was opened with: the proxy reconnects
    // with a fresh token, which is reviewed again.
    let expired = tokio::time::sleep(lifetime);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            changed = index.changed() => if changed.is_err() { break },
            changed = membership.changed() => if changed.is_err() { break },
            msg = inbound.message() => {
                match msg {
                    Ok(Some(m)) => {
                        handle_reply(&hello, &session, &metrics, last_sent.as_ref(), m);
                        continue;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy_id = %hello.proxy_id, %status, "proxy stream error");
                        break;
                    }
                }
            }
            _ = &mut draining => break,
            _ = &mut expired => {
                tracing::debug!(proxy_id = %hello.proxy_id, ?lifetime, "stream lifetime reached; the proxy reconnects");
                break;
            }
            _ = tx.closed() => break,
        }
        membership.borrow_and_update();
        let snapshot = {
            let idx = index.borrow_and_update().clone();
            let mut snapshot =
                idx.snapshot_for_proxy(&hello.namespace, &hello.namespaces, &hello.pools);
            serving
                .get(&idx, &session.proxies().peers())
                .apply(&mut snapshot, &hello.proxy_id);
            snapshot
        };
        if last_sent.as_ref() == Some(&snapshot) {
            continue;
        }
        version += 1;
        let msg = pb::ControllerMessage {
            message: Some(pb::controller_message::Message::Snapshot(
                pb::Snapshot::from_model(version, &snapshot),
            )),
        };
        if tx.send(Ok(msg)).await.is_err() {
            break;
        }
        metrics.snapshots_sent.inc();
        let served: BTreeSet<ObjectId> = snapshot.pools.iter().map(|p| p.id.clone()).collect();
        session.sent(version, served);
        tracing::debug!(proxy_id = %hello.proxy_id, version, pools = snapshot.pools.len(), "sent snapshot");
        last_sent = Some(snapshot);
    }
    metrics.connected_proxies.dec();
    tracing::info!(proxy_id = %hello.proxy_id, namespace = %hello.namespace, "proxy disconnected");
}

fn handle_reply(
    hello: &pb::Hello,
    session: &Session,
    metrics: &Metrics,
    last_sent: Option<&model::Snapshot>,
    msg: pb::ProxyMessage,
) {
    match msg.message {
        Some(pb::proxy_message::Message::Ack(a)) => {
            metrics.snapshot_replies.with_label_values(&["ack"]).inc();
            session.acked(a.version);
        }
        Some(pb::proxy_message::Message::Nack(n)) => {
            metrics.snapshot_replies.with_label_values(&["nack"]).inc();
            tracing::warn!(proxy_id = %hello.proxy_id, version = n.version, error = %n.error, "proxy rejected a snapshot");
            session.nacked(n.error);
        }
        Some(pb::proxy_message::Message::Report(report)) => {
            metrics.reports.inc();
            session.reported(entitled_report(report, last_sent));
        }
        Some(pb::proxy_message::Message::Hello(_)) | None => {
            tracing::debug!(proxy_id = %hello.proxy_id, "ignoring unexpected message");
        }
    }
}

/// Checks a Hello against the caller's identity: an authenticated proxy speaks only for the
/// namespace of its ServiceAccount. Tidies the extra namespaces it asks for.
pub fn check_hello(mut hello: pb::Hello, identity: &Identity) -> Result<pb::Hello, Status> {
    if hello.namespace.is_empty() || hello.proxy_id.is_empty() {
        return Err(Status::invalid_argument(
            "Hello.namespace and Hello.proxy_id are required",
        ));
    }
    check_bounds(&hello)?;
    if let Some(ns) = &identity.namespace
        && *ns != hello.namespace
    {
        return Err(Status::permission_denied(format!(
            "Hello.namespace is {:?} but the proxy authenticated as {} of namespace {ns:?}: \
             a proxy is served the namespace of its ServiceAccount (set --namespace or \
             POD_NAMESPACE to it; other namespaces' pools need a grant and --extra-namespaces)",
            hello.namespace, identity.user
        )));
    }
    let own = hello.namespace.clone();
    hello.namespaces.retain(|ns| !ns.is_empty() && *ns != own);
    hello.namespaces.sort();
    hello.namespaces.dedup();
    if hello.namespaces.len() > MAX_EXTRA_NAMESPACES {
        return Err(Status::invalid_argument(format!(
            "Hello.namespaces asks for more than {MAX_EXTRA_NAMESPACES} namespaces"
        )));
    }
    Ok(hello)
}

/// Sizes a Hello may have: every field lands in logs, metrics or memory per stream.
fn check_bounds(hello: &pb::Hello) -> Result<(), Status> {
    let too_long = |field: &str, max: usize| {
        Status::invalid_argument(format!("{field} is longer than {max} bytes"))
    };
    if hello.proxy_id.len() > MAX_PROXY_ID_LEN {
        return Err(too_long("Hello.proxy_id", MAX_PROXY_ID_LEN));
    }
    if hello.proxy_id.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(
            "Hello.proxy_id has control characters",
        ));
    }
    if hello.namespace.len() > 63 {
        return Err(too_long("Hello.namespace", 63));
    }
    if hello.build_version.len() > MAX_BUILD_VERSION_LEN {
        return Err(too_long("Hello.build_version", MAX_BUILD_VERSION_LEN));
    }
    if hello.pools.len() > MAX_POOLS {
        return Err(Status::invalid_argument(format!(
            "Hello.pools names more than {MAX_POOLS} pools"
        )));
    }
    if let Some(p) = hello.pools.iter().find(|p| p.len() > MAX_POOL_ENTRY_LEN) {
        return Err(too_long(
            &format!(
                "Hello.pools entry {:?}",
                p.chars().take(40).collect::<String>()
            ),
            MAX_POOL_ENTRY_LEN,
        ));
    }
    // Before dedup: a long list of duplicates is refused too.
    if hello.namespaces.len() > MAX_EXTRA_NAMESPACES * 2
        || hello.namespaces.iter().any(|n| n.len() > 63)
    {
        return Err(Status::invalid_argument(format!(
            "Hello.namespaces: at most {MAX_EXTRA_NAMESPACES} namespace names of at most 63 bytes"
        )));
    }
    Ok(())
}

/// Keeps only what a report says about what this proxy was sent: pools, their backends,
/// key pools and their key ids. A proxy cannot write the status, or raise Events, of objects
/// or keys it was not given, nor make up key ids or backends; a key's reason is bounded.
pub fn entitled_report(mut report: pb::Report, sent: Option<&model::Snapshot>) -> pb::Report {
    let pools: BTreeSet<(&str, &str)> = sent
        .iter()
        .flat_map(|s| &s.pools)
        .map(|p| (p.id.namespace.as_str(), p.id.name.as_str()))
        .collect();
    let backends: BTreeSet<(&str, &str, &str)> = sent
        .iter()
        .flat_map(|s| &s.pools)
        .flat_map(|p| {
            p.backends
                .iter()
                .map(|b| (p.id.namespace.as_str(), p.id.name.as_str(), b.name.as_str()))
        })
        .collect();
    let keys: BTreeSet<(&str, &str, &str)> = sent
        .iter()
        .flat_map(|s| &s.key_pools)
        .flat_map(|k| {
            k.keys
                .iter()
                .map(|key| (k.id.namespace.as_str(), k.id.name.as_str(), key.id.as_str()))
        })
        .collect();
    report.backends.retain(|b| {
        backends.contains(&(b.namespace.as_str(), b.pool.as_str(), b.backend.as_str()))
    });
    report
        .pools
        .retain(|p| pools.contains(&(p.namespace.as_str(), p.pool.as_str())));
    for p in &mut report.pools {
        if !backends.contains(&(
            p.namespace.as_str(),
            p.pool.as_str(),
            p.active_backend.as_str(),
        )) {
            p.active_backend.clear();
        }
    }
    report.keys.retain(|k| {
        keys.contains(&(k.namespace.as_str(), k.key_pool.as_str(), k.key_id.as_str()))
            && matches!(
                k.state.as_str(),
                "active" | "cooling" | "exhausted" | "disabled"
            )
    });
    for k in &mut report.keys {
        if k.reason.len() > MAX_REASON_LEN {
            let mut end = MAX_REASON_LEN;
            while !k.reason.is_char_boundary(end) {
                end -= 1;
            }
            k.reason.truncate(end);
        }
    }
    report
}

/// The TLS settings of the discovery listener from PEM files, read at start-up so a bad file
/// stops the controller with a clear message.
pub fn server_tls(cert: &Path, key: &Path) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("reading the gRPC TLS certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("reading the gRPC TLS key {}", key.display()))?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
        // A client that stalls its handshake does not hold a connection for long.
        .timeout(Duration::from_secs(10)))
}

/// A gRPC server builder: TLS when `tls` is given; plaintext otherwise, with a warning, since
/// the stream carries key values.
pub fn server_builder(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder
            .tls_config(tls)
            .context("the gRPC TLS certificate or key is invalid (PEM expected)"),
        None => {
            tracing::warn!(
                "the gRPC listener is plaintext: API key values travel in clear to the proxies; \
                 give --grpc-tls-cert and --grpc-tls-key"
            );
            Ok(builder)
        }
    }
}

#[cfg(test)]
mod tests;
