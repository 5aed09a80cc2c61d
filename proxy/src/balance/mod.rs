//! Backend selection: given a pool's backends and what the caller knows about them right now
//! ([`Candidates`]), [`Balancer::pick`] chooses the index of the backend a request goes to.
//!
//! Everything that can be precomputed (the smooth weighted round robin sequence, the
//! consistent-hash ring) is built once in [`Balancer::new`], when a config snapshot is
//! compiled. Picking is lock-free (one atomic cursor, thread-local randomness) and O(1) or
//! O(log n) in the common case; scans happen only in degenerate cases (most backends
//! ineligible), and are bounded by the number of backends or the sequence/ring length.
//!
//! Strategies:
//! - [`Strategy::RoundRobin`]: each backend in turn, weights ignored (except 0).
//! - [`Strategy::WeightedRoundRobin`]: nginx's smooth weighted round robin (5,1,1 gives
//!   `a a b a c a a`), precomputed as a sequence walked by an atomic cursor.
//! - [`Strategy::LeastRequest`]: power of two choices on requests in flight per unit of
//!   weight.
//! - [`Strategy::ConsistentHash`]: a ring of virtual nodes placed by backend *name*, with
//!   bounded load (Mirrokni, Thorup, Zadimoghaddam: "Consistent Hashing with Bounded Loads").
//! - [`Strategy::LeastLoaded`]: power of two choices on consumption/capacity reported by
//!   deep health checks.
//!
//! Weight 0 backends never get traffic; backends the caller marks ineligible are skipped;
//! `None` means no backend could take the request.

mod in_flight;
mod ring;

pub use in_flight::{InFlight, InFlightGuard, OwnedInFlightGuard};

use crate::hash::fmix64;
use ring::Ring;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Virtual nodes per unit of weight on the consistent-hash ring.
const VNODES_PER_WEIGHT: u64 = 100;
/// Ring size above which virtual node counts are scaled down (keeping each backend >= 1).
const MAX_RING_POINTS: u64 = 100_000;
/// Smooth WRR sequence length above which weights are scaled down (keeping each >= 1).
const MAX_WRR_SEQUENCE: u64 = 4096;
/// Random draws the power-of-two-choices strategies try before scanning for eligible
/// backends.
const P2C_ATTEMPTS: usize = 4;
/// Pools this small are sampled by a scan directly (cheaper than retrying random draws).
const P2C_SCAN_BELOW: usize = 8;
/// Consumption/capacity assumed for a backend whose load is unknown.
pub const UNKNOWN_LOAD_RATIO: f64 = 0.5;

/// How a backend is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// Each eligible backend in turn, ignoring weights (weight 0 still gets nothing).
    RoundRobin,
    /// Smooth weighted round robin like nginx: weights 1:2 interleave as `b a b`, not `a b b`.
    WeightedRoundRobin,
    /// Power of two choices: of two random eligible backends, the one with fewer requests in
    /// flight per unit of weight.
    LeastRequest,
    /// A hash ring keyed by the request's affinity hash, with bounded load: a backend whose
    /// in-flight count would exceed `load_factor` times the average passes the request on to
    /// the next backend clockwise. Requests without a hash are balanced round robin.
    ConsistentHash {
        /// Maximum load of a backend relative to the average, e.g. 1.25. Values below 1 are
        /// treated as 1, NaN as [`Strategy::DEFAULT_LOAD_FACTOR`], and infinity disables the
        /// bound (plain consistent hashing).
        load_factor: f64,
    },
    /// Power of two choices: of two random eligible backends, the one with the lower
    /// consumption/capacity ratio reported by deep health checks (unknown:
    /// [`UNKNOWN_LOAD_RATIO`]); ties fall back to [`Strategy::LeastRequest`]'s comparison.
    LeastLoaded,
}

impl Strategy {
    /// The bounded-load factor used when none is configured.
    pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

    /// The strategy configured on a resolved pool.
    pub fn for_pool(pool: &keyway_api::model::Pool) -> Self {
        use keyway_api::model::Strategy as S;
        match pool.strategy {
            S::RoundRobin => Self::RoundRobin,
            S::WeightedRoundRobin => Self::WeightedRoundRobin,
            S::LeastRequest => Self::LeastRequest,
            S::ConsistentHash => Self::ConsistentHash {
                load_factor: f64::from(pool.hash_load_factor_pct) / 100.0,
            },
            S::LeastLoaded => Self::LeastLoaded,
        }
    }
}

/// Per-backend input at build time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec<'a> {
    /// The backend's name, unique within the pool. Consistent hashing places the backend on
    /// the ring by this name, so the same name lands on the same points in every process.
    pub name: &'a str,
    /// Relative share of traffic for weighted strategies; 0 takes no traffic at all.
    pub weight: u32,
}

/// What [`Balancer::pick`] needs to know about the backends right now. Index `i` is the
/// backend's position in the `backends` slice the balancer was built from; indexes at or
/// beyond `len()` are never picked.
pub trait Candidates {
    /// Number of backends known to the caller.
    fn len(&self) -> usize;

    /// Whether `len()` is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// May backend `i` take this request (healthy, not ejected, allowed role)?
    fn eligible(&self, i: usize) -> bool;

    /// Requests in flight on backend `i` (tracked by the caller, e.g. with [`InFlight`]).
    fn in_flight(&self, i: usize) -> u64;

    /// `(capacity, consumption)` reported by deep health checks, if known (for
    /// [`Strategy::LeastLoaded`]).
    fn load(&self, i: usize) -> Option<(f64, f64)>;

    /// `(total requests in flight, number of eligible backends)` over the eligible backends,
    /// for the bound of [`Strategy::ConsistentHash`]. `None` (the default) makes the balancer
    /// compute it with an O(n) scan, only when the backend a key hashes to is busy; callers
    /// that maintain these numbers (see [`InFlight::total`]) can return them to keep every
    /// pick O(log n).
    fn in_flight_summary(&self) -> Option<(u64, usize)> {
        None
    }
}

/// Chooses backends for one pool. Build one per config snapshot; share it between threads.
pub struct Balancer {
    strategy: Strategy,
    kind: Kind,
    /// Weight per backend index.
    weights: Box<[u32]>,
    /// Indexes of backends with weight > 0, in order.
    active: Box<[usize]>,
    /// Round robin position (also used by consistent hashing for requests without a hash).
    cursor: AtomicUsize,
}

enum Kind {
    RoundRobin,
    Weighted { sequence: Box<[usize]> },
    LeastRequest,
    ConsistentHash { ring: Ring, load_factor: f64 },
    LeastLoaded,
}

impl Balancer {
    /// Builds the balancer for `backends` (indexes into this slice are what `pick` returns).
    ///
    /// Build cost: O(n) for round robin and the power-of-two strategies; O(L·n) for weighted
    /// round robin (L: sequence length, at most ~4096); O(P log P) for consistent hashing (P:
    /// virtual nodes, 100 per unit of weight, scaled down to about 100 000 in total when the
    /// weights sum to more than 1000).
    pub fn new(strategy: Strategy, backends: &[BackendSpec<'_>]) -> Self {
        let weights: Box<[u32]> = backends.iter().map(|b| b.weight).collect();
        let active: Box<[usize]> = (0..backends.len()).filter(|&i| weights[i] > 0).collect();
        let kind = match strategy {
            Strategy::RoundRobin => Kind::RoundRobin,
            Strategy::WeightedRoundRobin => Kind::Weighted {
                sequence: smooth_wrr_sequence(&weights, &active),
            },
            Strategy::LeastRequest => Kind::LeastRequest,
            Strategy::ConsistentHash { load_factor } => Kind::ConsistentHash {
                ring: Ring::build(backends, &active),
                load_factor: if load_factor.is_nan() {
                    Strategy::DEFAULT_LOAD_FACTOR
                } else {
                    load_factor.max(1.0)
                },
            },
            Strategy::LeastLoaded => Kind::LeastLoaded,
        };
        Self {
            strategy,
            kind,
            weights,
            active,
            cursor: AtomicUsize::new(0),
        }
    }

    /// A balancer for a resolved pool, with the pool's strategy and backends.
    pub fn for_pool(pool: &keyway_api::model::Pool) -> Self {
        let specs: Vec<BackendSpec<'_>> = pool
            .backends
            .iter()
            .map(|b| BackendSpec {
                name: &b.name,
                weight: b.weight,
            })
            .collect();
        Self::new(Strategy::for_pool(pool), &specs)
    }

    /// The strategy this balancer was built with.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Number of backends it was built from (including weight 0 ones).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether it was built from no backends.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Chooses a backend for a request. `hash` is the request's affinity hash (e.g.
    /// [`crate::hash::hash_key`] of the `user-id` header) for [`Strategy::ConsistentHash`]; `None` balances
    /// that request round robin. Other strategies ignore it. Any `u64` works: it is mixed
    /// again before use, so even sequential ids spread evenly.
    ///
    /// Returns `None` only when no backend with weight > 0 is eligible.
    pub fn pick(&self, hash: Option<u64>, c: &impl Candidates) -> Option<usize> {
        self.pick_excluding(hash, c, &[])
    }

    /// Like [`Balancer::pick`], never returning an index in `exclude` (backends a retry
    /// already tried). `None` when every eligible backend is excluded.
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        c: &impl Candidates,
        exclude: &[usize],
    ) -> Option<usize> {
        let view = View {
            c,
            weights: &self.weights,
            n: c.len().min(self.weights.len()),
            exclude,
        };
        match &self.kind {
            Kind::RoundRobin => self.cycle(&self.active, &view),
            Kind::Weighted { sequence } => self.cycle(sequence, &view),
            Kind::LeastRequest => self.two_choices(&view, |a, b| view.compare_requests(a, b)),
            Kind::LeastLoaded => self.two_choices(&view, |a, b| {
                let (ra, rb) = (load_ratio(c.load(a)), load_ratio(c.load(b)));
                if ra < rb {
                    a
                } else if rb < ra {
                    b
                } else {
                    view.compare_requests(a, b)
                }
            }),
            Kind::ConsistentHash { ring, load_factor } => match hash {
                Some(h) => ring.pick(fmix64(h), *load_factor, &view),
                None => self.cycle(&self.active, &view),
            },
        }
    }

    /// Walks `list` (backend indexes, possibly repeated) with the shared cursor, returning the
    /// first usable entry at or after the cursor's position. Ineligible entries are skipped;
    /// when nobody else moved the cursor meanwhile, it is moved past them too, so the
    /// remaining backends keep their exact shares instead of the next one absorbing the
    /// skipped one's turns.
    fn cycle(&self, list: &[usize], v: &View<'_, impl Candidates>) -> Option<usize> {
        let len = list.len();
        if len == 0 {
            return None;
        }
        let t = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut advance = true;
        for k in 0..len {
            let i = list[t.wrapping_add(k) % len];
            if v.exclude.contains(&i) {
                // Excluded for this request only: don't take its turn away from others.
                advance = false;
                continue;
            }
            if v.eligible(i) {
                if k > 0 && advance {
                    let next = t.wrapping_add(1);
                    let _ = self.cursor.compare_exchange(
                        next,
                        next.wrapping_add(k),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Some(i);
            }
        }
        None
    }

    /// Power of two choices: samples two distinct usable backends uniformly and lets `better`
    /// choose; a single usable backend is returned as is.
    fn two_choices<C: Candidates>(
        &self,
        v: &View<'_, C>,
        better: impl Fn(usize, usize) -> usize,
    ) -> Option<usize> {
        match self.sample_two(v) {
            (Some(a), Some(b)) => Some(better(a, b)),
            (a, _) => a,
        }
    }

    /// Two distinct usable backends chosen uniformly at random (`(Some, None)` when only one
    /// is usable). O(1) expected while a fair share of backends is usable; otherwise one
    /// bounded scan.
    fn sample_two(&self, v: &View<'_, impl Candidates>) -> (Option<usize>, Option<usize>) {
        let m = self.active.len();
        if m >= P2C_SCAN_BELOW {
            let mut first = None;
            for _ in 0..P2C_ATTEMPTS {
                let r = rand::random::<u64>();
                let x = reduce((r >> 32) as u32, m);
                let mut y = reduce(r as u32, m - 1);
                if y >= x {
                    y += 1;
                }
                for i in [self.active[x], self.active[y]] {
                    if first != Some(i) && v.usable(i) {
                        match first {
                            None => first = Some(i),
                            Some(f) => return (Some(f), Some(i)),
                        }
                    }
                }
            }
        }
        // Few backends, or few of them usable: count them, then take two random ranks.
        let count = self.active.iter().filter(|&&i| v.usable(i)).count();
        match count {
            0 => (None, None),
            1 => (self.active.iter().copied().find(|&i| v.usable(i)), None),
            _ => {
                let r = rand::random::<u64>();
                let x = reduce((r >> 32) as u32, count);
                let mut y = reduce(r as u32, count - 1);
                if y >= x {
                    y += 1;
                }
                let mut found = (None, None);
                for (rank, i) in self
                    .active
                    .iter()
                    .copied()
                    .filter(|&i| v.usable(i))
                    .enumerate()
                {
                    if rank == x {
                        found.0 = Some(i);
                    } else if rank == y {
                        found.1 = Some(i);
                    }
                }
                match found {
                    (Some(a), Some(b)) => (Some(a), Some(b)),
                    // Eligibility changed between the two passes.
                    (a, b) => (a.or(b), None),
                }
            }
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Balancer");
        d.field("strategy", &self.strategy)
            .field("weights", &self.weights);
        match &self.kind {
            Kind::Weighted { sequence } => d.field("sequence_len", &sequence.len()),
            Kind::ConsistentHash { ring, .. } => d.field("ring_points", &ring.points.len()),
            _ => &mut d,
        };
        d.finish_non_exhaustive()
    }
}

/// The caller's candidates as one request sees them.
struct View<'a, C> {
    c: &'a C,
    weights: &'a [u32],
    /// Indexes at or above this are unknown to the caller or to the balancer.
    n: usize,
    exclude: &'a [usize],
}

impl<C: Candidates> View<'_, C> {
    /// Eligible for any request (ignores `exclude`).
    fn eligible(&self, i: usize) -> bool {
        i < self.n && self.weights[i] > 0 && self.c.eligible(i)
    }

    /// Eligible for this request.
    fn usable(&self, i: usize) -> bool {
        !self.exclude.contains(&i) && self.eligible(i)
    }

    /// The one of `a`, `b` with fewer requests in flight per unit of weight; on a tie, a
    /// random one in proportion to weight (so idle backends still share by weight).
    fn compare_requests(&self, a: usize, b: usize) -> usize {
        let (wa, wb) = (u128::from(self.weights[a]), u128::from(self.weights[b]));
        let la = u128::from(self.c.in_flight(a)) * wb;
        let lb = u128::from(self.c.in_flight(b)) * wa;
        if la < lb {
            a
        } else if lb < la {
            b
        } else if (rand::random::<u64>() as u128 % (wa + wb)) < wa {
            a
        } else {
            b
        }
    }

    /// `(total in flight, count)` over eligible backends.
    fn summary(&self) -> (u64, usize) {
        if let Some(s) = self.c.in_flight_summary() {
            return s;
        }
        (0..self.n)
            .filter(|&i| self.eligible(i))
            .fold((0, 0), |(t, n), i| {
                (t.saturating_add(self.c.in_flight(i)), n + 1)
            })
    }
}

// === helpers ===

/// Maps a uniform `x` onto `0..m` (Lemire's multiply-shift; bias below m / 2^32).
fn reduce(x: u32, m: usize) -> usize {
    ((u64::from(x) * m as u64) >> 32) as usize
}

/// Consumption/capacity, [`UNKNOWN_LOAD_RATIO`] when unknown or not a number, infinite when
/// there is no capacity but some consumption.
fn load_ratio(load: Option<(f64, f64)>) -> f64 {
    let Some((capacity, consumption)) = load else {
        return UNKNOWN_LOAD_RATIO;
    };
    if capacity.is_nan() || consumption.is_nan() {
        return UNKNOWN_LOAD_RATIO;
    }
    let r = if capacity > 0.0 {
        consumption.max(0.0) / capacity
    } else if consumption > 0.0 {
        f64::INFINITY
    } else {
        UNKNOWN_LOAD_RATIO
    };
    if r.is_nan() { UNKNOWN_LOAD_RATIO } else { r }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// nginx's smooth weighted round robin, unrolled into one full cycle: each step every
/// backend's `current` grows by its weight, the largest (first on ties) is chosen and loses
/// the total. Weights are divided by their gcd, and scaled down (each nonzero weight kept
/// >= 1) if the cycle would exceed [`MAX_WRR_SEQUENCE`].
fn smooth_wrr_sequence(weights: &[u32], active: &[usize]) -> Box<[usize]> {
    let mut w: Vec<u64> = active.iter().map(|&i| u64::from(weights[i])).collect();
    let normalize = |w: &mut Vec<u64>| {
        let g = w.iter().fold(0, |g, &x| gcd(g, x)).max(1);
        w.iter_mut().for_each(|x| *x /= g);
    };
    normalize(&mut w);
    let total: u64 = w.iter().sum();
    if total > MAX_WRR_SEQUENCE {
        w.iter_mut()
            .for_each(|x| *x = (*x * MAX_WRR_SEQUENCE / total).max(1));
        normalize(&mut w);
    }
    let total: u64 = w.iter().sum();
    let total_signed = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; w.len()];
    let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        let mut best_current = i64::MIN;
        for (k, (cur, &weight)) in current.iter_mut().zip(&w).enumerate() {
            *cur += i64::try_from(weight).unwrap_or(i64::MAX);
            if *cur > best_current {
                best = k;
                best_current = *cur;
            }
        }
        current[best] -= total_signed;
        sequence.push(active[best]);
    }
    sequence.into_boxed_slice()
}

#[cfg(test)]
mod tests;
