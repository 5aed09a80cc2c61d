//! Quota sharing: a key's `requestsPerMinute` and `tokensPerMinute` are global, so each proxy
//! serving the key's pool gets an even share, and N replicas together stay within the quota.
//! Shares are whole numbers that add up exactly to the quota (the remainder goes to the first
//! proxies by id); a proxy whose share of a key is zero does not get that key at all.

use crate::index::Index;
use keyway_api::model::{self, ObjectId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A connected proxy as the split sees it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    /// Other namespaces it asked for (it gets their pools that grant its namespace).
    pub namespaces: &'a [String],
    /// The pools it asked for; empty means every pool of its namespace.
    pub pools: &'a [String],
}

/// Which peers receive each key pool (sorted ids): computed once per index and membership,
/// then shared by every session.
#[derive(Debug, Default)]
pub struct Serving {
    by_key_pool: HashMap<ObjectId, Vec<String>>,
}

/// The latest [`Serving`] and what it was computed from, shared by the discovery sessions.
#[derive(Clone, Default)]
pub struct ServingCache {
    latest: Arc<Mutex<Option<Cached>>>,
}

struct Cached {
    index: Arc<Index>,
    peers: Arc<Vec<crate::proxies::Peer>>,
    serving: Arc<Serving>,
}

impl ServingCache {
    /// The table for this index and membership, computed by the first session that asks.
    pub fn get(&self, index: &Arc<Index>, peers: &Arc<Vec<crate::proxies::Peer>>) -> Arc<Serving> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = latest.as_ref()
            && Arc::ptr_eq(&c.index, index)
            && Arc::ptr_eq(&c.peers, peers)
        {
            return c.serving.clone();
        }
        let borrowed: Vec<Peer<'_>> = peers
            .iter()
            .map(|p| Peer {
                id: &p.proxy_id,
                namespace: &p.namespace,
                namespaces: &p.namespaces,
                pools: &p.pools,
            })
            .collect();
        let serving = Arc::new(Serving::compute(index, &borrowed));
        *latest = Some(Cached {
            index: index.clone(),
            peers: peers.clone(),
            serving: serving.clone(),
        });
        serving
    }
}

impl Serving {
    /// For every key pool of the index, the peers sent at least one pool that uses it.
    pub fn compute(index: &Index, peers: &[Peer<'_>]) -> Self {
        let mut by_key_pool = HashMap::new();
        for (ns, snap) in &index.namespaces {
            for kp in &snap.key_pools {
                let users: Vec<&model::Pool> = snap
                    .pools
                    .iter()
                    .filter(|p| p.key_pool.as_deref() == Some(kp.id.name.as_str()))
                    .collect();
                let mut serving: Vec<String> = peers
                    .iter()
                    .filter(|peer| {
                        users
                            .iter()
                            .any(|p| index.selects(p, peer.namespace, peer.namespaces, peer.pools))
                    })
                    .map(|peer| peer.id.to_string())
                    .collect();
                serving.sort_unstable();
                serving.dedup();
                by_key_pool.insert(ObjectId::new(ns.clone(), kp.id.name.clone()), serving);
            }
        }
        Self { by_key_pool }
    }

    /// `me`'s rank among the peers that receive key pool `kp`, and how many there are.
    fn position(&self, kp: &ObjectId, me: &str) -> (usize, usize) {
        let serving = self.by_key_pool.get(kp).map_or(&[][..], Vec::as_slice);
        match serving.binary_search_by(|id| id.as_str().cmp(me)) {
            Ok(rank) => (rank, serving.len()),
            // Not counted yet (e.g. connected a moment ago): it takes its place in the order.
            Err(rank) => (rank, serving.len() + 1),
        }
    }

    /// Rewrites the key limits of `snapshot` (the one being sent to proxy `me`) to `me`'s
    /// share.
    pub fn apply(&self, snapshot: &mut model::Snapshot, me: &str) {
        apply(snapshot, |kp| self.position(kp, me));
    }
}

/// Rewrites the key limits of `snapshot` (the one being sent to proxy `me`) to `me`'s share.
/// `index` tells which peers are sent which pools, and so which key pools. (Sessions use a
/// shared [`ServingCache`]; this one-shot form is for tests.)
#[cfg(test)]
fn share(snapshot: &mut model::Snapshot, index: &Index, me: &str, peers: &[Peer<'_>]) {
    Serving::compute(index, peers).apply(snapshot, me);
}

fn apply(snapshot: &mut model::Snapshot, position: impl Fn(&ObjectId) -> (usize, usize)) {
    for kp in &mut snapshot.key_pools {
        let (rank, n) = position(&kp.id);
        if n <= 1 {
            continue;
        }
        kp.keys.retain_mut(|k| {
            let rpm = k
                .limits
                .requests_per_minute
                .map(|g| split(u64::from(g), rank, n));
            let tpm = k.limits.tokens_per_minute.map(|g| split(g, rank, n));
            if rpm == Some(0) || tpm == Some(0) {
                return false;
            }
            k.limits.requests_per_minute = rpm.map(|v| v as u32);
            k.limits.tokens_per_minute = tpm;
            true
        });
    }
}

/// Share number `rank` of `n` of `total`: the shares add up to `total` exactly.
fn split(total: u64, rank: usize, n: usize) -> u64 {
    let n = n as u64;
    total / n + u64::from((rank as u64) < total % n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::manifest::Manifests;

    fn snapshot() -> model::Snapshot {
        let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: t, labels: {keyway.dev/api-keys: "true"}}
stringData: {k1: v1, k2: v2}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys, namespace: t}
spec:
  secretRef: {name: s}
  defaults: {requestsPerMinute: 7, tokensPerMinute: 1000}
  keys: [{id: k2, requestsPerMinute: 2}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: p, namespace: t}
spec:
  apiKeyPoolRef: {name: keys}
  backends: [{name: a, endpoint: "http://a"}]
"#;
        Manifests::parse(yaml, &|_| None)
            .unwrap()
            .resolve()
            .unwrap()
    }

    fn peers<'a>(ids: &'a [&'a str], empty: &'a [String]) -> Vec<Peer<'a>> {
        ids.iter()
            .map(|id| Peer {
                id,
                namespace: "t",
                namespaces: empty,
                pools: empty,
            })
            .collect()
    }

    fn index(snapshot: &model::Snapshot) -> Index {
        let mut idx = Index::default();
        idx.namespaces.insert("t".into(), snapshot.clone());
        idx
    }

    #[test]
    fn shares_add_up_to_the_quota() {
        let none: Vec<String> = vec![];
        let ids = ["p-a", "p-b", "p-c"];
        let base = snapshot();
        let mut rpm_k1 = 0;
        let mut tpm_k1 = 0;
        let mut k2_holders = 0;
        for me in ids {
            let mut s = base.clone();
            share(&mut s, &index(&base), me, &peers(&ids, &none));
            let keys = &s.key_pools[0].keys;
            rpm_k1 += keys[0].limits.requests_per_minute.unwrap();
            tpm_k1 += keys[0].limits.tokens_per_minute.unwrap();
            k2_holders += keys.iter().filter(|k| k.id == "k2").count();
        }
        assert_eq!(rpm_k1, 7);
        assert_eq!(tpm_k1, 1000);
        assert_eq!(
            k2_holders, 2,
            "2 rpm over 3 proxies: one proxy gets none of k2"
        );
    }

    #[test]
    fn a_single_proxy_keeps_the_whole_quota_and_other_namespaces_do_not_count() {
        let none: Vec<String> = vec![];
        let base = snapshot();
        let mut s = base.clone();
        let mut ps = peers(&["me"], &none);
        ps.push(Peer {
            id: "elsewhere",
            namespace: "other",
            namespaces: &none,
            pools: &none,
        });
        share(&mut s, &index(&base), "me", &ps);
        assert_eq!(s, base);
    }

    #[test]
    fn peers_that_asked_for_other_pools_do_not_count() {
        let none: Vec<String> = vec![];
        let other = vec!["unrelated".to_string()];
        let base = snapshot();
        let mut s = base.clone();
        let ps = vec![
            Peer {
                id: "me",
                namespace: "t",
                namespaces: &none,
                pools: &none,
            },
            Peer {
                id: "x",
                namespace: "t",
                namespaces: &none,
                pools: &other,
            },
        ];
        share(&mut s, &index(&base), "me", &ps);
        assert_eq!(s, base);
    }

    #[test]
    fn granted_peers_of_other_namespaces_take_a_share() {
        let none: Vec<String> = vec![];
        let t = vec!["t".to_string()];
        // A granted pool is only served to a proxy that names it.
        let tp = vec!["t/p".to_string()];
        let base = snapshot();
        let mut idx = index(&base);
        let ps = vec![
            Peer {
                id: "me",
                namespace: "t",
                namespaces: &none,
                pools: &none,
            },
            Peer {
                id: "guest",
                namespace: "u",
                namespaces: &t,
                pools: &tp,
            },
        ];
        // Asking for namespace t is not enough: t/p does not grant u.
        let mut s = base.clone();
        share(&mut s, &idx, "me", &ps);
        assert_eq!(s, base);
        // Once granted, the guest is sent t/keys too, so the quota is split in two.
        idx.grants
            .insert(ObjectId::new("t", "p"), ["u".to_string()].into());
        let mut s = base.clone();
        share(&mut s, &idx, "me", &ps);
        let mut g = base.clone();
        share(&mut g, &idx, "guest", &ps);
        // 7 rpm: the remainder goes to the first id ("guest").
        assert_eq!(g.key_pools[0].keys[0].limits.requests_per_minute, Some(4));
        assert_eq!(s.key_pools[0].keys[0].limits.requests_per_minute, Some(3));
    }
}
