//! Which proxies are connected to this replica, what each was sent and granted, and what
//! proxies that left may still hold. Written by the discovery sessions; read by the status
//! writer, the replica report and the quota allocator.

use keyway_api::model::ObjectId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One connected proxy.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    pub proxy_id: String,
    /// Who it authenticated as (quota is shared per identity).
    pub identity: String,
    pub namespace: String,
    /// Other namespaces it asked for (it is sent their pools that grant its namespace).
    pub namespaces: Vec<String>,
    /// The pools it asked for; empty means all of its namespace.
    pub pools: Vec<String>,
    /// Pools in the last snapshot sent (shared by the sessions sent the same snapshot).
    pub served: Arc<BTreeSet<ObjectId>>,
    pub sent_version: u64,
    pub acked_version: u64,
    /// The last NACK's message, cleared by the next ACK.
    pub last_nack: Option<String>,
    /// The latest usage and health report (counters are totals since the proxy started).
    pub report: Option<keyway_proto::Report>,
    /// Key pools in the last snapshot sent (shared likewise).
    pub key_pools: Arc<BTreeSet<ObjectId>>,
    /// Quota grants sent and not yet superseded by an acknowledged newer version.
    pub grants: GrantLog,
}

/// Quota key (`namespace/keyPool/keyId`) → (requests, tokens) per minute.
pub type GrantValues = BTreeMap<String, (Option<u64>, Option<u64>)>;

/// The quota grants sent to one proxy, oldest first, from the last one it acknowledged (its
/// report's `quota_version`) on: what it may be using now.
#[derive(Clone, Debug, Default)]
pub struct GrantLog {
    sent: Vec<(u64, Arc<GrantValues>)>,
    /// The version its latest report says is in force.
    pub acked: u64,
}

/// A proxy that disconnected, whose quota still counts until its lease and its last sliding
/// minute have run out (it may still be serving, cut off from every controller).
#[derive(Clone, Debug)]
pub struct Departed {
    pub proxy_id: String,
    pub identity: String,
    /// Per quota key: (requests, tokens) it may still hold.
    pub held: BTreeMap<String, (u64, u64)>,
    pub until: std::time::Instant,
}

/// The registry of connected proxies. Every change bumps a watch so the status writer wakes.
#[derive(Clone)]
pub struct Proxies {
    inner: Arc<Mutex<HashMap<u64, ProxyState>>>,
    departed: Arc<Mutex<Vec<Departed>>>,
    /// How long a departed proxy's quota keeps counting.
    hold: std::time::Duration,
    next_session: Arc<AtomicU64>,
    changed: watch::Sender<u64>,
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
            departed: Default::default(),
            hold: crate::allocator::HOLD_AFTER_DEPARTURE,
            next_session: Arc::new(AtomicU64::new(1)),
            changed: watch::channel(0).0,
        }
    }
}

impl Proxies {
    pub fn register(
        &self,
        proxy_id: String,
        identity: String,
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
                    identity,
                    namespace,
                    namespaces,
                    pools,
                    ..Default::default()
                },
            );
        });
        Session {
            id,
            proxies: self.clone(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn list(&self) -> Vec<ProxyState> {
        self.lock().values().cloned().collect()
    }

    /// Applies `f` to every connected proxy without cloning them.
    pub fn with_each<R>(&self, mut f: impl FnMut(&ProxyState) -> R) -> Vec<R> {
        self.lock().values().map(&mut f).collect()
    }

    /// Departed proxies whose quota still counts (expired ones are dropped).
    pub fn departed(&self) -> Vec<Departed> {
        let now = std::time::Instant::now();
        let mut d = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        d.retain(|p| p.until > now);
        d.clone()
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
    pub fn sent(
        &self,
        version: u64,
        served: Arc<BTreeSet<ObjectId>>,
        key_pools: Arc<BTreeSet<ObjectId>>,
    ) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.sent_version = version;
                p.served = served;
                p.key_pools = key_pools;
            }
        });
    }

    /// Quota grants of `version` were sent.
    pub fn granted(&self, version: u64, values: Arc<GrantValues>) {
        self.proxies.update(|m| {
            if let Some(p) = m.get_mut(&self.id) {
                p.grants.record(version, values);
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
                p.grants.acknowledged(report.quota_version);
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
        let mut gone = None;
        self.proxies.update(|m| {
            gone = m.remove(&id);
        });
        if let Some(p) = gone {
            let held = p.held();
            if !held.is_empty() {
                let departed = Departed {
                    proxy_id: p.proxy_id,
                    identity: p.identity,
                    held,
                    until: std::time::Instant::now() + self.proxies.hold,
                };
                let mut d = self
                    .proxies
                    .departed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                d.push(departed);
            }
        }
    }
}

// === impl ProxyState ===

impl ProxyState {
    /// Per quota key of its grants: the (requests, tokens) it may be using: what it used in
    /// its sliding minute, and any grant it may not have replaced yet.
    pub fn held(&self) -> BTreeMap<String, (u64, u64)> {
        let mut held: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (_, values) in &self.grants.sent {
            for (key, (rpm, tpm)) in values.iter() {
                let h = held.entry(key.clone()).or_default();
                h.0 = h.0.max(rpm.unwrap_or(0));
                h.1 = h.1.max(tpm.unwrap_or(0));
            }
        }
        for k in self.report.iter().flat_map(|r| &r.keys) {
            let key = crate::allocator::quota_key(&k.namespace, &k.key_pool, &k.key_id);
            if let Some(h) = held.get_mut(&key) {
                h.0 = h.0.max(k.window_requests);
                h.1 = h.1.max(k.window_tokens);
            }
        }
        held
    }
}

// === impl GrantLog ===

impl GrantLog {
    fn record(&mut self, version: u64, values: Arc<GrantValues>) {
        if self
            .sent
            .last()
            .is_some_and(|(v, old)| *v == version && **old == *values)
        {
            return; // a renewal
        }
        self.sent.push((version, values));
        // Bounded: a proxy that never acknowledges keeps only its latest grants and the
        // largest ones (the largest is what it may use).
        if self.sent.len() > 16 {
            self.sent.drain(1..self.sent.len() - 8);
        }
    }

    fn acknowledged(&mut self, version: u64) {
        self.acked = version;
        // Everything before the acknowledged version is superseded.
        if let Some(pos) = self.sent.iter().rposition(|(v, _)| *v <= version) {
            self.sent.drain(..pos);
        }
    }

    /// The newest grants sent.
    pub fn latest(&self) -> Option<&(u64, Arc<GrantValues>)> {
        self.sent.last()
    }
}

impl Session {
    /// The registry this session belongs to.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(rpm: u64) -> Arc<GrantValues> {
        Arc::new([("t/keys/k".to_string(), (Some(rpm), None))].into())
    }

    fn report(version: u64, window: u64) -> keyway_proto::Report {
        keyway_proto::Report {
            quota_version: version,
            keys: vec![keyway_proto::KeyReport {
                namespace: "t".into(),
                key_pool: "keys".into(),
                key_id: "k".into(),
                window_requests: window,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_proxy_holds_its_usage_and_every_grant_it_may_not_have_replaced() {
        let proxies = Proxies::default();
        let s = proxies.register("p".into(), "sa".into(), "t".into(), vec![], vec![]);
        s.granted(1, values(9));
        s.reported(report(1, 2));
        let held = |p: &Proxies| p.list()[0].held()["t/keys/k"].0;
        assert_eq!(held(&proxies), 9, "grant 9 in force");
        // A smaller grant is sent: until it is acknowledged, 9 still counts.
        s.granted(2, values(3));
        assert_eq!(held(&proxies), 9);
        s.reported(report(2, 5));
        assert_eq!(
            held(&proxies),
            5,
            "acknowledged: the grant 3, but 5 used this minute"
        );
        s.reported(report(2, 0));
        assert_eq!(held(&proxies), 3);
        // Gone: it keeps counting for a while (its lease and minute).
        drop(s);
        let d = proxies.departed();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].held["t/keys/k"], (3, 0));
    }
}
