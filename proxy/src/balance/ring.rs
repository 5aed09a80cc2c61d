//! The consistent-hash ring of [`Strategy::ConsistentHash`](super::Strategy): virtual nodes
//! placed by backend *name* (stable across rebuilds and replicas), looked up with bounded
//! load (Mirrokni, Thorup, Zadimoghaddam: "Consistent Hashing with Bounded Loads").

use super::{BackendSpec, Candidates, MAX_RING_POINTS, VNODES_PER_WEIGHT, View};
use crate::hash::{fmix64, fnv1a, fnv1a_from};

/// Virtual nodes sorted by point; `owners[k]` is the backend at `points[k]`.
pub(super) struct Ring {
    pub(super) points: Box<[u64]>,
    owners: Box<[u32]>,
    /// Distinct owners on the ring.
    backends: usize,
    /// Whether every owner index is below 128 (visited backends fit a `u128` bitmask).
    trackable: bool,
}

// === impl Ring ===

impl Ring {
    pub(super) fn build(backends: &[BackendSpec<'_>], active: &[usize]) -> Self {
        let total: u64 = active.iter().map(|&i| u64::from(backends[i].weight)).sum();
        // Below the cap each backend's points depend only on its own name and weight, so a
        // change to one backend never moves keys between two others.
        let vnodes = |w: u32| {
            let w = u64::from(w);
            if total.saturating_mul(VNODES_PER_WEIGHT) <= MAX_RING_POINTS {
                w * VNODES_PER_WEIGHT
            } else {
                (w * MAX_RING_POINTS / total).max(1)
            }
        };
        let mut entries: Vec<(u64, u32)> = Vec::new();
        let mut owners = 0;
        for &i in active {
            let Ok(owner) = u32::try_from(i) else {
                break;
            };
            let b = &backends[i];
            let base = fnv1a(b.name.as_bytes());
            let count = vnodes(b.weight);
            owners += 1;
            entries.reserve(usize::try_from(count).unwrap_or(0));
            for v in 0..count {
                entries.push((vnode_point(base, v), owner));
            }
        }
        // Ties between names are broken by name, so the ring doesn't depend on backend order.
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| backends[a.1 as usize].name.cmp(backends[b.1 as usize].name))
        });
        Self {
            points: entries.iter().map(|e| e.0).collect(),
            owners: entries.iter().map(|e| e.1).collect(),
            backends: owners,
            trackable: entries.iter().all(|e| e.1 < 128),
        }
    }

    /// The first usable backend clockwise from `h` whose load stays within the bound; if none
    /// is, the first usable one.
    pub(super) fn pick(
        &self,
        h: u64,
        load_factor: f64,
        v: &View<'_, impl Candidates>,
    ) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|&p| p < h);
        // Track visited backends (when all indexes fit a bitmask) to stop once every backend
        // has been considered; otherwise the walk is bounded by the ring length.
        let trackable = self.trackable;
        let mut visited: u128 = 0;
        let mut remaining = self.backends;
        let mut bound: Option<f64> = None;
        let mut fallback = None;
        let mut last = u32::MAX;
        for k in 0..len {
            let owner = self.owners[(start + k) % len];
            if owner == last {
                continue;
            }
            last = owner;
            let i = owner as usize;
            if trackable {
                let bit = 1u128 << i;
                if visited & bit != 0 {
                    continue;
                }
                visited |= bit;
            }
            if v.usable(i) {
                let in_flight = v.c.in_flight(i);
                // Nothing in flight is always within the bound (load_factor >= 1).
                if in_flight == 0 || load_factor.is_infinite() {
                    return Some(i);
                }
                let cap = *bound.get_or_insert_with(|| {
                    let (total, count) = v.summary();
                    (load_factor * (total as f64 + 1.0) / count.max(1) as f64).ceil()
                });
                if in_flight as f64 + 1.0 <= cap {
                    return Some(i);
                }
                fallback = fallback.or(Some(i));
            }
            if trackable {
                remaining -= 1;
                if remaining == 0 {
                    break;
                }
            }
        }
        fallback
    }
}

/// The ring point of virtual node `v` of the backend whose name hashed to `base`:
/// `fmix64(FNV-1a(name ++ v as 8 little-endian bytes))`.
pub(super) fn vnode_point(base: u64, v: u64) -> u64 {
    fmix64(fnv1a_from(base, &v.to_le_bytes()))
}
