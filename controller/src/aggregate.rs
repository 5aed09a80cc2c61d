//! Pure: folds the latest report of every connected proxy into per-pool and per-key views for
//! status. Counters are summed (each proxy reports totals since it started); states take the
//! worst any proxy reports, with how many proxies agree. A replica folds its own proxies into
//! an [`Aggregate`] and publishes it; the leader merges every replica's.

use crate::proxies::ProxyState;
use keyway_api::model::ObjectId;
use keyway_api::spec::{BackendStatus, KeyStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the proxies say about one `LoadBalancerPool`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolView {
    pub backends: Vec<BackendStatus>,
    /// Backends every reporting proxy sees healthy.
    pub healthy: i32,
    /// Failover mode: the most reported active backend.
    pub active: Option<String>,
}

/// What the proxies say about one `ApiKeyPool`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPoolView {
    pub keys: Vec<KeyStatus>,
    /// Keys no proxy reports as anything but active.
    pub active: i32,
}

/// Per-object views from the proxies' latest reports.
#[derive(Clone, Debug, Default)]
pub struct Views {
    pub pools: BTreeMap<ObjectId, PoolView>,
    pub key_pools: BTreeMap<ObjectId, KeyPoolView>,
}

/// The proxies' latest reports folded per pool and key pool: what a replica publishes for the
/// others (compact: a few numbers per backend and key), and what several replicas' folds merge
/// into. Object ids are `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, BTreeMap<String, BackendAcc>>,
    /// Failover mode: votes for the active backend.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, BTreeMap<String, KeyAcc>>,
}

/// One backend over the reporting proxies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendAcc {
    #[serde(rename = "h")]
    healthy: u32,
    #[serde(rename = "n")]
    reporting: u32,
    #[serde(rename = "q")]
    requests: u64,
    #[serde(rename = "f")]
    failures: u64,
    /// Every proxy probes the same backend: the latest figures of any of them.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    capacity: Option<f64>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    consumption: Option<f64>,
}

/// One key over the reporting proxies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyAcc {
    #[serde(rename = "w")]
    worst: u8,
    #[serde(rename = "why", default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(rename = "until", default)]
    until_ms: u64,
    /// Proxies reporting the worst state.
    #[serde(rename = "k")]
    in_worst: u32,
    #[serde(rename = "n")]
    reporting: u32,
    #[serde(rename = "q")]
    requests: u64,
    #[serde(rename = "f")]
    failures: u64,
    #[serde(rename = "t")]
    tokens: u64,
    #[serde(rename = "l", default)]
    last_used_ms: u64,
}

/// `active` < `cooling` < `exhausted` < `disabled`; unknown states rank as active.
fn rank(state: &str) -> u8 {
    match state {
        "cooling" => 1,
        "exhausted" => 2,
        "disabled" => 3,
        _ => 0,
    }
}

fn state_name(rank: u8) -> &'static str {
    ["active", "cooling", "exhausted", "disabled"][rank.min(3) as usize]
}

fn object_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn object_id(key: &str) -> ObjectId {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    ObjectId::new(ns, name)
}

/// Builds the views of connected proxies. `rfc3339` formats unix milliseconds (injected to
/// keep this pure).
pub fn build(proxies: &[ProxyState], rfc3339: impl Fn(u64) -> Option<String>) -> Views {
    fold(proxies).views(rfc3339)
}

/// Folds the latest report of each proxy.
pub fn fold(proxies: &[ProxyState]) -> Aggregate {
    let mut agg = Aggregate::default();
    for report in proxies.iter().filter_map(|p| p.report.as_ref()) {
        for b in &report.backends {
            let acc = agg
                .backends
                .entry(object_key(&b.namespace, &b.pool))
                .or_default()
                .entry(b.backend.clone())
                .or_default();
            acc.merge(&BackendAcc {
                healthy: u32::from(b.healthy && !b.ejected),
                reporting: 1,
                requests: b.requests,
                failures: b.failures,
                capacity: b.capacity,
                consumption: b.consumption,
            });
        }
        for p in report.pools.iter().filter(|p| !p.active_backend.is_empty()) {
            *agg.active
                .entry(object_key(&p.namespace, &p.pool))
                .or_default()
                .entry(p.active_backend.clone())
                .or_default() += 1;
        }
        for k in &report.keys {
            agg.keys
                .entry(object_key(&k.namespace, &k.key_pool))
                .or_default()
                .entry(k.key_id.clone())
                .or_default()
                .merge(&KeyAcc {
                    worst: rank(&k.state),
                    reason: (!k.reason.is_empty()).then(|| k.reason.clone()),
                    until_ms: k.until_unix_ms,
                    in_worst: 1,
                    reporting: 1,
                    requests: k.requests,
                    failures: k.failures,
                    tokens: k.tokens,
                    last_used_ms: k.last_used_unix_ms,
                });
        }
    }
    agg
}

// === impl Aggregate ===

impl Aggregate {
    /// Adds another replica's fold (its proxies are other proxies).
    pub fn merge(&mut self, other: &Aggregate) {
        for (pool, list) in &other.backends {
            let mine = self.backends.entry(pool.clone()).or_default();
            for (name, acc) in list {
                mine.entry(name.clone()).or_default().merge(acc);
            }
        }
        for (pool, votes) in &other.active {
            let mine = self.active.entry(pool.clone()).or_default();
            for (name, n) in votes {
                *mine.entry(name.clone()).or_default() += n;
            }
        }
        for (kp, list) in &other.keys {
            let mine = self.keys.entry(kp.clone()).or_default();
            for (id, acc) in list {
                mine.entry(id.clone()).or_default().merge(acc);
            }
        }
    }

    /// The per-object views for status.
    pub fn views(&self, rfc3339: impl Fn(u64) -> Option<String>) -> Views {
        let mut views = Views::default();
        for (pool, list) in &self.backends {
            let mut view = PoolView::default();
            for (name, acc) in list {
                if acc.healthy == acc.reporting {
                    view.healthy += 1;
                }
                view.backends.push(BackendStatus {
                    name: name.clone(),
                    healthy: format!("{}/{}", acc.healthy, acc.reporting),
                    requests: acc.requests as i64,
                    failures: acc.failures as i64,
                    capacity: acc.capacity.map(|c| c.round() as i64),
                    consumption: acc.consumption.map(|c| c.round() as i64),
                });
            }
            view.active = self.active.get(pool).and_then(|votes| {
                votes
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map(|(name, _)| name.clone())
            });
            views.pools.insert(object_id(pool), view);
        }
        for (kp, list) in &self.keys {
            let mut view = KeyPoolView::default();
            for (id, acc) in list {
                if acc.worst == 0 {
                    view.active += 1;
                }
                view.keys.push(KeyStatus {
                    id: id.clone(),
                    state: state_name(acc.worst).to_string(),
                    reason: acc.reason.clone(),
                    until: (acc.until_ms > 0).then(|| rfc3339(acc.until_ms)).flatten(),
                    proxies: format!("{}/{}", acc.in_worst, acc.reporting),
                    requests: acc.requests as i64,
                    failures: acc.failures as i64,
                    tokens: acc.tokens as i64,
                    last_used: (acc.last_used_ms > 0)
                        .then(|| rfc3339(acc.last_used_ms))
                        .flatten(),
                });
            }
            views.key_pools.insert(object_id(kp), view);
        }
        views
    }
}

// === impl BackendAcc ===

impl BackendAcc {
    fn merge(&mut self, o: &BackendAcc) {
        self.healthy += o.healthy;
        self.reporting += o.reporting;
        self.requests += o.requests;
        self.failures += o.failures;
        self.capacity = o.capacity.or(self.capacity);
        self.consumption = o.consumption.or(self.consumption);
    }
}

// === impl KeyAcc ===

impl KeyAcc {
    /// The worst state wins, with how many proxies report it.
    fn merge(&mut self, o: &KeyAcc) {
        if self.reporting == 0 || o.worst > self.worst {
            self.worst = o.worst;
            self.in_worst = 0;
            self.reason = None;
            self.until_ms = 0;
        }
        if o.worst == self.worst {
            self.in_worst += o.in_worst;
            if o.reason.is_some() {
                self.reason = o.reason.clone();
            }
            self.until_ms = self.until_ms.max(o.until_ms);
        }
        self.reporting += o.reporting;
        self.requests += o.requests;
        self.failures += o.failures;
        self.tokens += o.tokens;
        self.last_used_ms = self.last_used_ms.max(o.last_used_ms);
    }
}

#[cfg(test)]
mod tests;
