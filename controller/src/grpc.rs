//! The discovery service: one bidirectional stream per proxy. Knows nothing of Kubernetes: it
//! reads a `watch::Receiver<Arc<Index>>`, so tests feed it directly, and asks an
//! [`Authenticate`] who the caller is.

use crate::allocator::{GRANT_TTL, GrantTable, RENEW_EVERY};
use crate::auth::{self, Authenticate, Identity};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::proxies::{GrantValues, Proxies, Session};
use anyhow::Context;
use keyway_api::model::{self, ObjectId};
use keyway_proto as pb;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
    /// One snapshot per proxy selector and index, shared by the sessions that asked the same.
    views: Views,
    /// The quota grant table in force ([`crate::allocator`]); `None` until there is one.
    grants: watch::Receiver<Option<Arc<GrantTable>>>,
    /// Keeps the default (empty) grants channel open.
    _grants_tx: Option<Arc<watch::Sender<Option<Arc<GrantTable>>>>>,
    limits: StreamLimits,
    /// Open streams per authenticated identity.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// Holds one of an identity's stream slots; frees it when the session ends.
struct StreamSlot {
    user: Option<String>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
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

/// What a proxy asked for: its namespace, extra namespaces and pool filter.
type Selector = (String, Vec<String>, Vec<String>);

/// The pool and key pool ids of a snapshot.
type Ids = (Arc<BTreeSet<ObjectId>>, Arc<BTreeSet<ObjectId>>);

fn ids_of(s: &model::Snapshot) -> Ids {
    (
        Arc::new(s.pools.iter().map(|p| p.id.clone()).collect()),
        Arc::new(s.key_pools.iter().map(|k| k.id.clone()).collect()),
    )
}

/// The snapshot each selector gets from the current index, computed once per index change
/// and shared (`Arc`) by every session with that selector, with its protobuf form and the
/// deltas from the previous snapshot, also encoded once. Sessions hold `Arc`s into it, so
/// memory grows with pools + proxies, not their product.
#[derive(Clone, Default)]
pub struct Views {
    inner: Arc<Mutex<HashMap<Selector, View>>>,
}

struct View {
    index: Arc<Index>,
    snapshot: Arc<model::Snapshot>,
    /// Its pool and key pool ids, for the registry.
    ids: Option<Ids>,
    full: Option<Arc<pb::Snapshot>>,
    /// Deltas to `snapshot` from earlier snapshots (by address), the last few.
    deltas: Vec<(usize, Arc<pb::Snapshot>)>,
}

// === impl Views ===

impl Views {
    /// The snapshot for `selector` under `index` (the same `Arc` while its content stays).
    pub fn snapshot(&self, index: &Arc<Index>, selector: &Selector) -> Arc<model::Snapshot> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get(selector)
            && Arc::ptr_eq(&v.index, index)
        {
            return v.snapshot.clone();
        }
        let fresh = index.snapshot_for_proxy(&selector.0, &selector.1, &selector.2);
        let v = m.entry(selector.clone()).or_insert_with(|| View {
            index: index.clone(),
            snapshot: Arc::new(model::Snapshot::default()),
            ids: None,
            full: None,
            deltas: Vec::new(),
        });
        v.index = index.clone();
        if *v.snapshot != fresh {
            v.snapshot = Arc::new(fresh);
            v.ids = None;
            v.full = None;
            v.deltas.clear();
        }
        let out = v.snapshot.clone();
        // Forget selectors no session uses any more.
        m.retain(|_, v| Arc::strong_count(&v.snapshot) > 1 || Arc::ptr_eq(&v.snapshot, &out));
        out
    }

    /// The pool and key pool ids of `snapshot`, shared when it is this cache's.
    fn ids(&self, selector: &Selector, snapshot: &Arc<model::Snapshot>) -> Ids {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .get_mut(selector)
            .filter(|v| Arc::ptr_eq(&v.snapshot, snapshot))
        {
            Some(v) => v.ids.get_or_insert_with(|| ids_of(snapshot)).clone(),
            None => ids_of(snapshot),
        }
    }

    /// The protobuf of `snapshot` (one of this cache's), whole or as a delta from `base`.
    fn encoded(
        &self,
        selector: &Selector,
        snapshot: &Arc<model::Snapshot>,
        base: Option<&Arc<model::Snapshot>>,
    ) -> Arc<pb::Snapshot> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = m
            .get_mut(selector)
            .filter(|v| Arc::ptr_eq(&v.snapshot, snapshot))
        else {
            // Not the cached one (a proxy whose quota is rewritten): encode it alone.
            return Arc::new(match base {
                Some(b) => pb::Snapshot::delta(0, 0, b, snapshot),
                None => pb::Snapshot::from_model(0, snapshot),
            });
        };
        match base {
            None => v
                .full
                .get_or_insert_with(|| Arc::new(pb::Snapshot::from_model(0, snapshot)))
                .clone(),
            Some(b) => {
                let key = Arc::as_ptr(b) as usize;
                if let Some((_, d)) = v.deltas.iter().find(|(k, _)| *k == key) {
                    return d.clone();
                }
                let d = Arc::new(pb::Snapshot::delta(0, 0, b, snapshot));
                if v.deltas.len() >= 4 {
                    v.deltas.remove(0);
                }
                v.deltas.push((key, d.clone()));
                d
            }
        }
    }
}

// === impl DiscoveryService ===

impl DiscoveryService {
    pub fn new(
        index: watch::Receiver<Arc<Index>>,
        proxies: Proxies,
        metrics: Metrics,
        drain: watch::Receiver<bool>,
    ) -> Self {
        let (tx, grants) = watch::channel(None);
        Self {
            index,
            proxies,
            metrics,
            drain,
            auth: Arc::new(auth::NoAuth),
            views: Views::default(),
            grants,
            _grants_tx: Some(Arc::new(tx)),
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

    /// Hands out quota from this grant table ([`crate::allocator`]).
    pub fn with_grants(mut self, grants: watch::Receiver<Option<Arc<GrantTable>>>) -> Self {
        self.grants = grants;
        self._grants_tx = None;
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
        let quota_identity = quota_identity(&identity, &hello.namespace);
        let session = self.proxies.register(
            hello.proxy_id.clone(),
            quota_identity.clone(),
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
            run_session(
                hello,
                quota_identity,
                session,
                inbound,
                tx,
                service,
                lifetime,
            )
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whom quota is shared by: the authenticated user (a ServiceAccount), or, without
/// authentication, the namespace the proxy claims.
fn quota_identity(identity: &Identity, namespace: &str) -> String {
    match &identity.namespace {
        Some(_) => identity.user.clone(),
        None => format!("unauthenticated:{namespace}"),
    }
}

/// Pushes a snapshot whenever this proxy's view of the index changes (a delta when the
/// proxy accepts them), and its quota grants whenever they change or need renewing, and
/// folds its replies into the registry, until either side goes away.
async fn run_session(
    hello: pb::Hello,
    quota_identity: String,
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
        views,
        mut grants,
        ..
    } = service;
    let selector: Selector = (
        hello.namespace.clone(),
        hello.namespaces.clone(),
        hello.pools.clone(),
    );
    // Older proxies take a snapshot's quota as theirs: they are sent their grant in its
    // place, in a snapshot of their own.
    let legacy_quota = !hello.accepts_quota_grants;
    let mut version = 0u64;
    let mut last_sent: Option<Arc<model::Snapshot>> = None;
    let mut last_was_delta = false;
    let mut resync = false;
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut grants_due = true;
    let mut last_grants: Option<(u64, Arc<GrantValues>)> = None;
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
            changed = grants.changed() => {
                if changed.is_err() { break }
                grants_due = true;
            }
            _ = renew.tick() => grants_due = true,
            msg = inbound.message() => {
                match msg {
                    Ok(Some(m)) => {
                        let nacked = handle_reply(&hello, &session, &metrics, last_sent.as_deref(), m);
                        // A refused delta (the proxy lost its base): send it whole.
                        if nacked && last_was_delta {
                            resync = true;
                        } else {
                            continue;
                        }
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
        let idx = index.borrow_and_update().clone();
        let table = grants.borrow_and_update().clone();
        let view = views.snapshot(&idx, &selector);
        let snapshot = if legacy_quota {
            let mut s = (*view).clone();
            rewrite_quotas(&mut s, table.as_deref(), &quota_identity, &hello.proxy_id);
            if last_sent.as_deref() == Some(&s) {
                last_sent.clone().unwrap_or_else(|| Arc::new(s))
            } else {
                Arc::new(s)
            }
        } else {
            view
        };
        // Shared views keep their `Arc` while their content stays: no deep comparison.
        let unchanged = last_sent
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &snapshot));
        if resync || !unchanged {
            let base = if hello.accepts_deltas && !resync {
                last_sent.as_ref()
            } else {
                None
            };
            let encoded = views.encoded(&selector, &snapshot, base);
            let mut msg = (*encoded).clone();
            let base_version = if base.is_some() { version } else { 0 };
            version += 1;
            msg.version = version;
            msg.base_version = base_version;
            let msg = pb::ControllerMessage {
                message: Some(pb::controller_message::Message::Snapshot(msg)),
            };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
            metrics.snapshots_sent.inc();
            let (served, key_pools) = views.ids(&selector, &snapshot);
            session.sent(version, served, key_pools);
            tracing::debug!(proxy_id = %hello.proxy_id, version, delta = base.is_some(), pools = snapshot.pools.len(), "sent snapshot");
            last_was_delta = base.is_some();
            resync = false;
            last_sent = Some(snapshot.clone());
            grants_due = true;
        }
        if legacy_quota || !grants_due {
            continue;
        }
        grants_due = false;
        let Some(table) = table else { continue };
        let (msg, values) = grants_for(&table, &snapshot, &quota_identity, &hello.proxy_id);
        let values = Arc::new(values);
        let changed = last_grants
            .as_ref()
            .is_none_or(|(v, old)| *v != table.version || **old != *values);
        let msg = pb::ControllerMessage {
            message: Some(pb::controller_message::Message::Grants(msg)),
        };
        if tx.send(Ok(msg)).await.is_err() {
            break;
        }
        if changed {
            metrics.quota_grants_sent.inc();
            session.granted(table.version, values.clone());
            last_grants = Some((table.version, values));
        }
    }
    metrics.connected_proxies.dec();
    tracing::info!(proxy_id = %hello.proxy_id, namespace = %hello.namespace, "proxy disconnected");
}

/// This proxy's grants for the quota keys of `snapshot`, as sent and as recorded.
fn grants_for(
    table: &GrantTable,
    snapshot: &model::Snapshot,
    identity: &str,
    proxy: &str,
) -> (pb::QuotaGrants, GrantValues) {
    let served: BTreeSet<String> = snapshot
        .key_pools
        .iter()
        .map(|k| format!("{}/{}/", k.id.namespace, k.id.name))
        .collect();
    let mut keys = Vec::new();
    let mut values = GrantValues::new();
    for e in table.for_proxy(identity, proxy).iter() {
        let mut parts = e.key.splitn(3, '/');
        let (Some(ns), Some(kp), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !served.contains(&format!("{ns}/{kp}/")) {
            continue;
        }
        values.insert(e.key.clone(), (e.rpm, e.tpm));
        keys.push(pb::KeyGrant {
            namespace: ns.to_owned(),
            key_pool: kp.to_owned(),
            key_id: id.to_owned(),
            requests_per_minute: e.rpm.map(|v| v.min(u64::from(u32::MAX)) as u32),
            tokens_per_minute: e.tpm,
            fallback_requests_per_minute: e.fallback_rpm.map(|v| v.min(u64::from(u32::MAX)) as u32),
            fallback_tokens_per_minute: e.fallback_tpm,
        });
    }
    let msg = pb::QuotaGrants {
        version: table.version,
        ttl_ms: GRANT_TTL.as_millis() as u64,
        keys,
    };
    (msg, values)
}

/// For proxies that do not take [`pb::QuotaGrants`]: each quota in `snapshot` becomes this
/// proxy's grant (0 without one).
fn rewrite_quotas(
    snapshot: &mut model::Snapshot,
    table: Option<&GrantTable>,
    identity: &str,
    proxy: &str,
) {
    let mine: HashMap<&str, (Option<u64>, Option<u64>)> = table
        .map(|t| {
            t.for_proxy(identity, proxy)
                .iter()
                .map(|e| (e.key.as_str(), (e.rpm, e.tpm)))
                .collect()
        })
        .unwrap_or_default();
    for kp in &mut snapshot.key_pools {
        for k in &mut kp.keys {
            let key = crate::allocator::quota_key(&kp.id.namespace, &kp.id.name, &k.id);
            let (rpm, tpm) = mine.get(key.as_str()).copied().unwrap_or((None, None));
            if k.limits.requests_per_minute.is_some() {
                k.limits.requests_per_minute =
                    Some(rpm.unwrap_or(0).min(u64::from(u32::MAX)) as u32);
            }
            if k.limits.tokens_per_minute.is_some() {
                k.limits.tokens_per_minute = Some(tpm.unwrap_or(0));
            }
        }
    }
}

/// Folds a reply into the registry; true for a NACK.
fn handle_reply(
    hello: &pb::Hello,
    session: &Session,
    metrics: &Metrics,
    last_sent: Option<&model::Snapshot>,
    msg: pb::ProxyMessage,
) -> bool {
    match msg.message {
        Some(pb::proxy_message::Message::Ack(a)) => {
            metrics.snapshot_replies.with_label_values(&["ack"]).inc();
            session.acked(a.version);
        }
        Some(pb::proxy_message::Message::Nack(n)) => {
            metrics.snapshot_replies.with_label_values(&["nack"]).inc();
            tracing::warn!(proxy_id = %hello.proxy_id, version = n.version, error = %n.error, "proxy rejected a snapshot");
            session.nacked(n.error);
            return true;
        }
        Some(pb::proxy_message::Message::Report(report)) => {
            metrics.reports.inc();
            session.reported(entitled_report(report, last_sent));
        }
        Some(pb::proxy_message::Message::Hello(_)) | None => {
            tracing::debug!(proxy_id = %hello.proxy_id, "ignoring unexpected message");
        }
    }
    false
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
