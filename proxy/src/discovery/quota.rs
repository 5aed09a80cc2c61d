//! Quota leases from the controller (controller mode). A key's `requestsPerMinute` and
//! `tokensPerMinute` are global: the proxy serves only what the controller's latest
//! [`pb::QuotaGrants`] grant it, until the lease runs out; then each key's fallback (a safe
//! share no larger than the grant). Before the first grant a quota key has a limit of 0: its
//! requests wait (bounded by the pool's queue) rather than use capacity another proxy holds.
//!
//! The proxy tells the controller what it wants per key in every report: what it used in the
//! sliding minute, or [`WANTS_UNBOUNDED`] when requests found the key's grant spent since the
//! previous report.

use keyway_api::model::{self, ObjectId};
use keyway_proto as pb;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A want with no bound: requests waited or were refused for lack of quota.
pub const WANTS_UNBOUNDED: u64 = u64::MAX;

/// The grants in force.
#[derive(Clone, Debug)]
pub struct Grants {
    pub version: u64,
    /// When the lease runs out without a renewal.
    pub expires: Instant,
    keys: HashMap<(ObjectId, String), pb::KeyGrant>,
}

// === impl Grants ===

impl Grants {
    /// Grants received `now`.
    pub fn new(msg: pb::QuotaGrants, now: Instant) -> Self {
        let keys = msg
            .keys
            .into_iter()
            .map(|g| {
                (
                    (ObjectId::new(&g.namespace, &g.key_pool), g.key_id.clone()),
                    g,
                )
            })
            .collect();
        Self {
            version: msg.version,
            expires: now + Duration::from_millis(msg.ttl_ms.max(1)),
            keys,
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.expires
    }
}

/// `base` (global quotas, as the controller sent it) with each quota replaced by this proxy's
/// grant: the granted value while the lease holds, the fallback after it, 0 before any grant.
pub fn effective(base: &model::Snapshot, grants: Option<&Grants>, now: Instant) -> model::Snapshot {
    let mut out = base.clone();
    let expired = grants.is_none_or(|g| g.expired(now));
    for kp in &mut out.key_pools {
        for k in &mut kp.keys {
            if k.limits.requests_per_minute.is_none() && k.limits.tokens_per_minute.is_none() {
                continue;
            }
            let grant = grants.and_then(|g| g.keys.get(&(kp.id.clone(), k.id.clone())));
            let (rpm, tpm) = match grant {
                None => (Some(0), Some(0)),
                Some(g) if expired => {
                    (g.fallback_requests_per_minute, g.fallback_tokens_per_minute)
                }
                Some(g) => (g.requests_per_minute, g.tokens_per_minute),
            };
            // Only the quotas the key has are replaced; a missing grant value grants 0.
            if k.limits.requests_per_minute.is_some() {
                k.limits.requests_per_minute = Some(rpm.unwrap_or(0));
            }
            if k.limits.tokens_per_minute.is_some() {
                k.limits.tokens_per_minute = Some(tpm.unwrap_or(0));
            }
        }
    }
    out
}

/// Per key pool, how many requests found the quota spent when the last report was built.
#[derive(Debug, Default)]
pub struct Starved {
    seen: HashMap<ObjectId, u64>,
}

// === impl Starved ===

impl Starved {
    /// Whether `pool`'s starved count grew since the previous call (remembers `now_count`).
    pub fn grew(&mut self, pool: &ObjectId, now_count: u64) -> bool {
        let before = self.seen.insert(pool.clone(), now_count);
        before.is_some_and(|b| now_count > b) || (before.is_none() && now_count > 0)
    }
}

/// What a key wants per minute: `used` in its sliding minute, or without bound if `starved`.
pub fn wants(used: u64, starved: bool) -> u64 {
    if starved { WANTS_UNBOUNDED } else { used }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::manifest::Manifests;

    fn base() -> model::Snapshot {
        let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: t}
stringData: {k1: v1, k2: v2}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys, namespace: t}
spec:
  secretRef: {name: s}
  keys: [{id: k1, requestsPerMinute: 12, tokensPerMinute: 1000}]
"#;
        Manifests::parse(yaml, &|_| None)
            .unwrap()
            .resolve()
            .unwrap()
    }

    fn limits(s: &model::Snapshot, id: &str) -> (Option<u32>, Option<u64>) {
        let k = s.key_pools[0].keys.iter().find(|k| k.id == id).unwrap();
        (k.limits.requests_per_minute, k.limits.tokens_per_minute)
    }

    #[test]
    fn grants_replace_quotas_until_the_lease_runs_out() {
        let now = Instant::now();
        let b = base();
        // Before any grant: 0 (wait), and keys without a quota are untouched.
        let s = effective(&b, None, now);
        assert_eq!(limits(&s, "k1"), (Some(0), Some(0)));
        assert_eq!(limits(&s, "k2"), (None, None));
        let g = Grants::new(
            pb::QuotaGrants {
                version: 3,
                ttl_ms: 20_000,
                keys: vec![pb::KeyGrant {
                    namespace: "t".into(),
                    key_pool: "keys".into(),
                    key_id: "k1".into(),
                    requests_per_minute: Some(9),
                    tokens_per_minute: Some(700),
                    fallback_requests_per_minute: Some(1),
                    fallback_tokens_per_minute: None,
                }],
            },
            now,
        );
        assert_eq!(
            limits(&effective(&b, Some(&g), now), "k1"),
            (Some(9), Some(700))
        );
        let later = now + Duration::from_secs(21);
        assert_eq!(
            limits(&effective(&b, Some(&g), later), "k1"),
            (Some(1), Some(0)),
            "after the lease: the fallback, 0 where none"
        );
    }

    #[test]
    fn starved_pools_want_without_bound() {
        let mut st = Starved::default();
        let id = ObjectId::new("t", "keys");
        assert!(!st.grew(&id, 0));
        assert_eq!(wants(3, st.grew(&id, 0)), 3);
        assert_eq!(wants(3, st.grew(&id, 2)), WANTS_UNBOUNDED);
        assert_eq!(wants(3, st.grew(&id, 2)), 3);
    }
}
