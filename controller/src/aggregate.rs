//! Pure: folds the latest report of every connected proxy into per-pool and per-key views for
//! status. Counters are summed (each proxy reports totals since it started); states take the
//! worst any proxy reports, with how many proxies agree.

use crate::proxies::ProxyState;
use keyway_api::model::ObjectId;
use keyway_api::spec::{BackendStatus, KeyStatus};
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

#[derive(Default)]
struct BackendAcc {
    healthy: u32,
    reporting: u32,
    requests: u64,
    failures: u64,
    /// Every proxy probes the same backend: the latest figures of any of them.
    capacity: Option<f64>,
    consumption: Option<f64>,
}

#[derive(Default)]
struct KeyAcc {
    worst: u8,
    reason: Option<String>,
    until_ms: u64,
    in_worst: u32,
    reporting: u32,
    requests: u64,
    failures: u64,
    tokens: u64,
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

/// Builds the views. `rfc3339` formats unix milliseconds (injected to keep this pure).
pub fn build(proxies: &[ProxyState], rfc3339: impl Fn(u64) -> Option<String>) -> Views {
    let mut backends: BTreeMap<ObjectId, BTreeMap<String, BackendAcc>> = BTreeMap::new();
    let mut active: BTreeMap<ObjectId, BTreeMap<String, u32>> = BTreeMap::new();
    let mut keys: BTreeMap<ObjectId, BTreeMap<String, KeyAcc>> = BTreeMap::new();
    for report in proxies.iter().filter_map(|p| p.report.as_ref()) {
        for b in &report.backends {
            let acc = backends
                .entry(ObjectId::new(&b.namespace, &b.pool))
                .or_default()
                .entry(b.backend.clone())
                .or_default();
            acc.reporting += 1;
            acc.healthy += u32::from(b.healthy && !b.ejected);
            acc.requests += b.requests;
            acc.failures += b.failures;
            acc.capacity = b.capacity.or(acc.capacity);
            acc.consumption = b.consumption.or(acc.consumption);
        }
        for p in report.pools.iter().filter(|p| !p.active_backend.is_empty()) {
            *active
                .entry(ObjectId::new(&p.namespace, &p.pool))
                .or_default()
                .entry(p.active_backend.clone())
                .or_default() += 1;
        }
        for k in &report.keys {
            let acc = keys
                .entry(ObjectId::new(&k.namespace, &k.key_pool))
                .or_default()
                .entry(k.key_id.clone())
                .or_default();
            let r = rank(&k.state);
            if acc.reporting == 0 || r > acc.worst {
                acc.worst = r;
                acc.in_worst = 0;
                acc.reason = None;
                acc.until_ms = 0;
            }
            if r == acc.worst {
                acc.in_worst += 1;
                if !k.reason.is_empty() {
                    acc.reason = Some(k.reason.clone());
                }
                acc.until_ms = acc.until_ms.max(k.until_unix_ms);
            }
            acc.reporting += 1;
            acc.requests += k.requests;
            acc.failures += k.failures;
            acc.tokens += k.tokens;
            acc.last_used_ms = acc.last_used_ms.max(k.last_used_unix_ms);
        }
    }

    let mut views = Views::default();
    for (pool, list) in backends {
        let mut view = PoolView::default();
        for (name, acc) in list {
            if acc.healthy == acc.reporting {
                view.healthy += 1;
            }
            view.backends.push(BackendStatus {
                name,
                healthy: format!("{}/{}", acc.healthy, acc.reporting),
                requests: acc.requests as i64,
                failures: acc.failures as i64,
                capacity: acc.capacity.map(|c| c.round() as i64),
                consumption: acc.consumption.map(|c| c.round() as i64),
            });
        }
        view.active = active.remove(&pool).and_then(|votes| {
            votes
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(name, _)| name)
        });
        views.pools.insert(pool, view);
    }
    for (kp, list) in keys {
        let mut view = KeyPoolView::default();
        for (id, acc) in list {
            if acc.worst == 0 {
                view.active += 1;
            }
            view.keys.push(KeyStatus {
                id,
                state: state_name(acc.worst).to_string(),
                reason: acc.reason,
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
        views.key_pools.insert(kp, view);
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_proto as pb;

    fn proxy(report: pb::Report) -> ProxyState {
        ProxyState {
            report: Some(report),
            ..Default::default()
        }
    }

    fn backend(name: &str, healthy: bool, requests: u64) -> pb::BackendReport {
        pb::BackendReport {
            namespace: "ns".into(),
            pool: "p".into(),
            backend: name.into(),
            requests,
            failures: 0,
            healthy,
            ejected: false,
            capacity: Some(2000.0),
            consumption: Some(15.4),
        }
    }

    fn key(id: &str, state: &str, reason: &str, requests: u64) -> pb::KeyReport {
        pb::KeyReport {
            namespace: "ns".into(),
            key_pool: "k".into(),
            key_id: id.into(),
            requests,
            state: state.into(),
            reason: reason.into(),
            tokens: 10,
            last_used_unix_ms: requests,
            ..Default::default()
        }
    }

    #[test]
    fn sums_counters_and_takes_the_worst_state() {
        let p1 = proxy(pb::Report {
            backends: vec![backend("a", true, 5), backend("b", true, 1)],
            keys: vec![key("k1", "active", "", 3), key("k2", "cooling", "429", 1)],
            pools: vec![pb::PoolReport {
                namespace: "ns".into(),
                pool: "p".into(),
                active_backend: "b".into(),
            }],
        });
        let p2 = proxy(pb::Report {
            backends: vec![backend("a", false, 7), backend("b", true, 2)],
            keys: vec![
                key("k1", "active", "", 4),
                key("k2", "disabled", "upstream answered 401", 2),
            ],
            pools: vec![pb::PoolReport {
                namespace: "ns".into(),
                pool: "p".into(),
                active_backend: "b".into(),
            }],
        });
        let v = build(&[p1, p2, ProxyState::default()], |ms| {
            Some(format!("t{ms}"))
        });
        let pool = &v.pools[&ObjectId::new("ns", "p")];
        assert_eq!(pool.backends[0].healthy, "1/2");
        assert_eq!(pool.backends[0].requests, 12);
        assert_eq!(pool.backends[0].capacity, Some(2000));
        assert_eq!(pool.backends[0].consumption, Some(15));
        assert_eq!(pool.healthy, 1);
        assert_eq!(pool.active.as_deref(), Some("b"));
        let kp = &v.key_pools[&ObjectId::new("ns", "k")];
        assert_eq!(kp.active, 1);
        assert_eq!(kp.keys[0].requests, 7);
        assert_eq!(kp.keys[0].tokens, 20);
        assert_eq!(kp.keys[1].state, "disabled");
        assert_eq!(kp.keys[1].reason.as_deref(), Some("upstream answered 401"));
        assert_eq!(kp.keys[1].proxies, "1/2");
        assert_eq!(kp.keys[1].last_used.as_deref(), Some("t2"));
    }
}
