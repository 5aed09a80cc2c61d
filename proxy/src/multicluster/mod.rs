//! Multi-cluster choice: which clusters may take a model's new users, how much each weighs,
//! and how a user's first cluster is chosen so that every replica agrees.
//!
//! Pure functions over [`Candidate`]s; `dataplane::placement` feeds them the live health.
//!
//! - A cluster is **eligible** for a model when it is healthy, the model is reported healthy
//!   there (deep health check), and the model is not overloaded
//!   (`consumption / capacity > overloadedCapacityRatio`).
//! - Its **weight** is `(capacity + capacity*s) / (consumption + capacity*s)`, `s` the
//!   smoothing factor: an idle cluster weighs `(1+s)/s`, one at capacity about 1.
//! - A user's **first cluster** is a weighted rendezvous hash of the user id over the eligible
//!   clusters: every replica seeing the same clusters picks the same one, with no shared
//!   store, and a cluster leaving moves only its own users.
//! - Requests without a user go by **weighted random** choice.

mod tokens;

use crate::hash::{fnv1a, splitmix64};

pub use tokens::TokenRate;

/// What the proxy knows about one cluster for one request's model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Healthy (active checks) and not ejected, with a weight above 0.
    pub available: bool,
    pub load: Load,
}

/// A cluster's report for the model (or for all its models when the request names none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// No deep health data: eligible with a neutral weight.
    Unknown,
    /// The deep health check does not list the model.
    Absent,
    /// The model is reported unhealthy.
    Unhealthy,
    /// Healthy; capacity and consumption when reported.
    Reported {
        capacity: Option<f64>,
        consumption: Option<f64>,
    },
}

/// Why a cluster cannot take new users of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// The cluster is unhealthy, or the model is unhealthy or absent there.
    Unhealthy,
    /// `consumption / capacity` is above the overload ratio (or capacity is 0).
    Overloaded,
}

/// The weight a cluster without capacity figures gets (that of an idle cluster at the
/// default smoothing, so mixed pools do not starve it).
const NEUTRAL_WEIGHT: f64 = 21.0;

/// `(capacity + capacity*s) / (consumption + capacity*s)`.
pub fn weight(capacity: f64, consumption: f64, smoothing: f64) -> f64 {
    let pad = capacity * smoothing;
    let w = (capacity + pad) / (consumption + pad);
    if w.is_finite() { w } else { NEUTRAL_WEIGHT }
}

/// The cluster's weight for new users, or why it takes none.
pub fn eligibility(
    c: &Candidate,
    overloaded_ratio: f64,
    smoothing: f64,
) -> Result<f64, Ineligible> {
    if !c.available {
        return Err(Ineligible::Unhealthy);
    }
    match c.load {
        Load::Unknown => Ok(NEUTRAL_WEIGHT),
        Load::Absent | Load::Unhealthy => Err(Ineligible::Unhealthy),
        Load::Reported {
            capacity: Some(cap),
            consumption: Some(used),
        } => {
            if cap <= 0.0 || used / cap > overloaded_ratio {
                Err(Ineligible::Overloaded)
            } else {
                Ok(weight(cap, used, smoothing))
            }
        }
        Load::Reported { .. } => Ok(NEUTRAL_WEIGHT),
    }
}

/// Weighted rendezvous (highest random weight) hashing: the cluster minimising
/// `-ln(u) / weight`, `u` uniform in (0, 1] from a hash of the user and the cluster's name.
/// `None` when no weight is above 0.
pub fn rendezvous<'a>(
    user: &str,
    clusters: impl IntoIterator<Item = (usize, &'a str, f64)>,
) -> Option<usize> {
    let user_hash = fnv1a(user.as_bytes());
    let mut best: Option<(usize, f64)> = None;
    for (i, name, w) in clusters {
        if w <= 0.0 || w.is_nan() {
            continue;
        }
        let h = splitmix64(user_hash ^ fnv1a(name.as_bytes()).rotate_left(17));
        // 53 random bits in (0, 1].
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = -u.ln() / w;
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Weighted random choice with `r` uniform in [0, 1).
pub fn weighted_pick(
    weights: impl IntoIterator<Item = (usize, f64)> + Clone,
    r: f64,
) -> Option<usize> {
    let total: f64 = weights.clone().into_iter().map(|(_, w)| w.max(0.0)).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let mut x = r * total;
    let mut last = None;
    for (i, w) in weights {
        if w <= 0.0 {
            continue;
        }
        last = Some(i);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    last
}

/// Token-rate rebalancing: among `(index, tokens per minute, capacity)` of the eligible
/// clusters, the busiest and least busy per unit of capacity, when the busiest exceeds the
/// least busy by more than `ratio`.
pub fn token_imbalance(
    clusters: impl IntoIterator<Item = (usize, f64, f64)>,
    ratio: f64,
) -> Option<(usize, usize)> {
    let mut busiest: Option<(usize, f64)> = None;
    let mut idlest: Option<(usize, f64)> = None;
    for (i, tpm, cap) in clusters {
        if cap <= 0.0 {
            continue;
        }
        let rate = tpm / cap;
        if busiest.is_none_or(|(_, r)| rate > r) {
            busiest = Some((i, rate));
        }
        if idlest.is_none_or(|(_, r)| rate < r) {
            idlest = Some((i, rate));
        }
    }
    let ((hi, hi_rate), (lo, lo_rate)) = (busiest?, idlest?);
    (hi != lo && hi_rate > 0.0 && hi_rate > lo_rate * ratio).then_some((hi, lo))
}

#[cfg(test)]
mod tests;
