//! Which proxies are connected and what each was sent. Read by the status writer
//! (`connectedProxies`), written by the discovery sessions.

use keyway_api::model::ObjectId;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One connected proxy.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    pub proxy_id: String,
    pub namespace: String,
    /// Other namespaces it asked for (it is sent their pools that grant its namespace).
    pub namespaces: Vec<String>,
    /// The pools it asked for; empty means all of its namespace.
    pub pools: Vec<String>,
    /// Pools in the last snapshot sent.
    pub served: BTreeSet<ObjectId>,
    pub sent_version: u64,
    pub acked_version: u64,
    /// The last NACK's message, cleared by the next ACK.
    pub last_nack: Option<String>,
    /// The latest usage and health report (counters are totals since the proxy started).
    pub report: Option<keyway_proto::Report>,
}

/// Who a connected proxy is and what it asked for: what quota sharing needs, without the
/// served sets and reports of [`ProxyState`].
#[derive(Clone, Debug)]
pub struct Peer {
    pub proxy_id: String,
    pub namespace: String,
    pub namespaces: Vec<String>,
    pub pools: Vec<String>,
}

/// The registry of connected proxies. Every change bumps a watch so the status writer wakes.
#[derive(Clone)]
pub struct Proxies {
    inner: Arc<Mutex<HashMap<u64, ProxyState>>>,
    /// The connected proxies' identities, rebuilt on connect and disconnect only and shared
    /// by every session (`Arc`), so a change does not clone every proxy's state per session.
    peers: Arc<Mutex<Arc<Vec<Peer>>>>,
    next_session: Arc<AtomicU64>,
    changed: watch::Sender<u64>,
    /// Bumped only when a proxy connects or disconnects (quota shares depend on it).
    membership: watch::Sender<u64>,
}

/// Deregisters its proxy when the discovery session ends, however it ends.
pub struct Session {
    id: u64,
    proxies: Proxies,
}

// === impl Proxies ===

impl Default for Proxies {
    fn default() -> Self {
        Self {
            inner: Default::default(),
            peers: Default::default(),
            next_session: Arc::new(AtomicU64::new(1)),
            changed: watch::channel(0).0,
            membership: watch::channel(0).0,
        }
    }
}

impl Proxies {
    pub fn register(
        &self,
        proxy_id: String,
        namespace: String,
        namespaces: Vec<String>,
        pools: Vec<String>,
    ) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.update(|m| {
            m.insert(
                id,
                ProxyState {
                    proxy_id,
                    namespace,
                    namespaces,
                    pools,
                    ..Default::default()
                },
            );
        });
        self.membership_changed();
        Session {
            id,
            proxies: self.clone(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes on connects and disconnects only.
    pub fn subscribe_membership(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }

    /// The connected proxies' identities (cheap: shared until the membership changes).
    pub fn peers(&self) -> Arc<Vec<Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn membership_changed(&self) {
        let mut peers: Vec<Peer> = self
            .lock()
            .values()
            .map(|p| Peer {
                proxy_id: p.proxy_id.clone(),
                namespace: p.namespace.clone(),
                namespaces: p.namespaces.clone(),
                pools: p.pools.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(peers);
        self.membership.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn list(&self) -> Vec<ProxyState> {
        self.lock().values().cloned().collect()
    }

    /// Connected proxies that were sent `pool`.
    pub fn serving(&self, pool: &ObjectId) -> usize {
        self.lock()
            .values()
            .filter(|p| p.served.contains(pool))
            .count()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyState>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<u64, ProxyState>)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

// === impl Session ===

impl Session {
    pub fn sent(&self, version: u64, served: BTreeSet<ObjectId>) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.sent_version = version;
                p.served = served;
            }
        });
    }

    pub fn acked(&self, version: u64) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.acked_version = version;
                p.last_nack = None;
            }
        });
    }

    pub fn reported(&self, report: keyway_proto::Report) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.report = Some(report);
            }
        });
    }

    pub fn nacked(&self, error: String) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.last_nack = Some(error);
            }
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let id = self.id;
        self.proxies.update(|m| {
            m.remove(&id);
        });
        self.proxies.membership_changed();
    }
}

impl Session {
    /// The registry this session belongs to.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }
}
