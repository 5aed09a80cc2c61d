//! The scheduler behind [`KeyPool`]: key state, the ready heaps, timers and the wait queue,
//! all guarded by the pool's one mutex. Times are milliseconds on the pool's clock.
//!
//! One file on purpose, above the usual size: every method keeps the same invariant (each key
//! is in exactly one place, and the ready heaps, timer heap, per-place counts and the wait
//! queue agree with it) inside one critical section. Split by topic, each part would reach
//! into the others' fields; the invariant is easier to check where it is kept.

use super::ready::{MAX_LANES, NO_LANE, Ready};
use super::window::{Field, Window};
use super::{
    KeyConfig, KeyId, KeyLimits, KeyState, KeyStatus, Lease, PoolSettings, Selection, Shared,
    Stickiness, Unavailable, UnavailableReason, millis,
};
use crate::hash::{fmix64, fnv1a};
use keyway_api::secret::SecretValue;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

/// The quota window, and the Retry-After above which a rate-limited key counts as exhausted.
const MINUTE_MS: u64 = 60_000;
/// Auth refusals of a key (401/403) from this many different requests within
/// [`STRIKE_WINDOW_MS`] disable it when no free probe can tell (body-field keys, upstreams
/// without a free endpoint). One request alone never disables a key.
const STRIKES_TO_DISABLE: usize = 3;
const STRIKE_WINDOW_MS: u64 = 60_000;
/// A key a probe just accepted is not probed again for this long: a client that keeps
/// sending requests the upstream refuses costs at most one free probe per key per interval.
const VERIFY_INTERVAL_MS: u64 = 10_000;
/// Longest failure-ratio disable (unless the configured backoff is longer).
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// How long a key stays deprioritised when the upstream gave no reset time.
const DEFAULT_PACING_MS: u64 = 60_000;
/// Pass increment of a weight-1 key under stride scheduling.
const STRIDE: u128 = 1 << 32;
/// Distinct keys a sticky request tries on the ring before the strategy picks.
const STICKY_CANDIDATES: usize = 16;
/// Ready sets up to this size are compared exactly by `LeastUsed`.
const P2C_SCAN_UP_TO: usize = 8;
/// Random draws `LeastUsed` makes to find two candidates not excluded.
const P2C_ATTEMPTS: usize = 8;

/// How a lease ended.
pub(super) enum Outcome {
    Success(Option<u64>),
    RateLimited(Option<Duration>),
    AuthFailed(u16),
    Failed,
    Cancelled,
}

/// What a lease holds of its key.
pub(super) struct Grant {
    pub(super) slot: u32,
    /// Distinguishes the key from a later one reusing its slot.
    pub(super) incarnation: u64,
    /// This lease is the trial request of a key on probation.
    trial: bool,
    /// The ids and values by slot as of the last update; the key's is at `slot`. One table
    /// shared by every lease: taking a lease increments one reference count that stays in
    /// the cache, not one per key (with 10,000 keys each would miss, and an atomic increment
    /// that misses stalls the pick).
    creds: Arc<[Cred]>,
}

impl Grant {
    pub(super) fn id(&self) -> &str {
        &self.creds[self.slot as usize].id
    }

    pub(super) fn value(&self) -> &SecretValue {
        &self.creds[self.slot as usize].value
    }
}

/// A key's id and value, as of the last update.
struct Cred {
    id: Arc<str>,
    value: Arc<SecretValue>,
}

/// A queued request.
pub(super) struct Waiter {
    id: u64,
    affinity: Option<u64>,
    exclude: Vec<KeyId>,
    tx: oneshot::Sender<Lease>,
}

/// Why a timed key is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Cooling,
    /// Upstream exhaustion or a full local window.
    Exhausted,
    Disabled,
}

/// Where a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Out of rotation (weight or a limit of 0) or removed.
    Off,
    /// Eligible, in `preferred`.
    Ready,
    /// Eligible but deprioritised, in `paced` (with a timer for the end).
    Paced,
    /// Blocked until the instant, with a timer.
    Timed(Class, u64),
    /// Waiting for one of its leases to end.
    Capacity,
    /// Disabled after an authentication failure, waiting for a probe.
    Parked,
}

/// A key's health.
#[derive(Clone, Debug)]
enum Health {
    Active,
    Cooling { until: u64 },
    Exhausted { until: u64 },
    Disabled { until: u64, reason: String },
    Probation,
    AuthFailed { status: u16, next_probe: u64 },
}

#[derive(Clone, Copy, Default)]
struct Totals {
    successes: u64,
    failures: u64,
    rate_limited: u64,
    cancelled: u64,
    tokens: u64,
}

/// One key's state. The fields a pick reads and writes come first, in a fixed order (`repr(C)`,
/// aligned to a cache line), so a pick touches the first four cache lines of one key and
/// nothing else of it: with 10,000 keys (about 4 MB of them) the keys do not fit in the
/// cache, and every further line touched was a miss. Line 0 holds all that least-used
/// sampling and a sticky candidate read (place, seq, in flight, the window's head and request
/// sum); `hot_fields_share_the_first_cache_lines` checks the offsets.
#[repr(C, align(64))]
struct Key {
    // Line 0.
    place: Place,
    /// Sequence number of the last pick (round robin order, tie breaks).
    seq: u64,
    in_flight: u32,
    live: bool,
    trial_out: bool,
    /// Its first 32 bytes (head second, request sum, current bucket) are hot.
    window: Window,
    // Line 1 (after the window's cold tail).
    /// Deprioritised until then (0: not).
    pace_until: u64,
    last_used: Option<u64>,
    // Line 2.
    limits: KeyLimits,
    incarnation: u64,
    /// Stride scheduling pass.
    pass: u128,
    // Line 3.
    health: Health,
    /// Requests started since the key joined the pool (the rest of the totals are cold).
    requests: u64,
    // Cold.
    /// Bumped on every move, invalidating timers set for an earlier place.
    generation: u64,
    totals: Totals,
    id: Arc<str>,
    value: Arc<SecretValue>,
    /// Consecutive failure-ratio disables.
    streak: u32,
    /// What the auth refusals say about the key (see [`Suspicion`]).
    suspicion: Suspicion,
}

/// Evidence about a key that was refused (401/403) for some request: a refusal may be the
/// request's fault (a bad organization header), so the key is disabled only when a free
/// probe with it is refused too, or, when no probe can tell, after refusals of several
/// different requests.
#[derive(Clone, Debug, Default)]
struct Suspicion {
    /// When recent requests with this key were refused (at most [`STRIKES_TO_DISABLE`]).
    strikes: Vec<u64>,
    /// The status of the last refusal.
    status: u16,
    /// A probe is wanted (handed out by `reprobe_due`).
    probe_wanted: bool,
    /// A probe was handed out and has not answered yet.
    probing: bool,
    /// When a probe last accepted the key.
    accepted_at: Option<u64>,
    /// Probes cannot tell for this key (body-field auth, no free endpoint): strikes decide.
    unprovable: bool,
}

/// What a free probe with a key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// 2xx: the upstream accepts the key.
    Accepted,
    /// 401/403: the upstream refuses the key itself.
    Refused,
    /// Anything else (no free endpoint, a timeout, 5xx, a body-field key): no evidence.
    Unknown,
}

/// Why a key is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbePurpose {
    /// Disabled by refusals: re-enable it when the upstream accepts it again.
    Reenable,
    /// Refused for one request: is it the key or the request?
    Verify,
}

impl Key {
    fn new(config: KeyConfig, incarnation: u64, generation: u64, now: u64) -> Self {
        Self {
            live: true,
            incarnation,
            id: Arc::from(config.id.as_str()),
            value: Arc::new(config.value),
            limits: config.limits,
            health: Health::Active,
            place: Place::Off,
            generation,
            in_flight: 0,
            trial_out: false,
            window: Window::new(now),
            totals: Totals::default(),
            requests: 0,
            last_used: None,
            seq: 0,
            pass: 0,
            pace_until: 0,
            streak: 0,
            suspicion: Suspicion::default(),
        }
    }

    /// Configured out of rotation. A requests or tokens quota of 0 is not: it is a quota
    /// grant of nothing for now (controller mode), so the key counts as exhausted with no
    /// known return and requests wait for the next grant (`KeyPool::update`).
    fn unused(&self) -> bool {
        let l = &self.limits;
        l.weight == 0 || l.max_concurrent == Some(0)
    }
}

/// Keys per place class, for reasons without a scan.
#[derive(Clone, Copy, Default)]
struct Counts {
    ready: usize,
    capacity: usize,
    cooling: usize,
    exhausted: usize,
    disabled: usize,
}

impl Counts {
    fn cell(&mut self, place: Place) -> Option<&mut usize> {
        match place {
            Place::Off => None,
            Place::Ready | Place::Paced => Some(&mut self.ready),
            Place::Capacity => Some(&mut self.capacity),
            Place::Timed(Class::Cooling, _) => Some(&mut self.cooling),
            Place::Timed(Class::Exhausted, _) => Some(&mut self.exhausted),
            Place::Timed(Class::Disabled, _) | Place::Parked => Some(&mut self.disabled),
        }
    }

    fn add(&mut self, place: Place) {
        if let Some(c) = self.cell(place) {
            *c += 1;
        }
    }

    fn sub(&mut self, place: Place) {
        if let Some(c) = self.cell(place) {
            *c = c.saturating_sub(1);
        }
    }

    fn total(&self) -> usize {
        self.ready + self.capacity + self.cooling + self.exhausted + self.disabled
    }
}

/// Settings in scheduler units, sanitised.
#[derive(Clone, Copy)]
struct Tuning {
    selection: Selection,
    cooldown: u64,
    failure_ratio: f64,
    min_requests: u64,
    backoff: u64,
    reprobe: u64,
    queue_max_len: usize,
    queue_max_wait: u64,
    load_factor: Option<f64>,
}

impl Tuning {
    fn new(s: &PoolSettings) -> Self {
        Self {
            selection: s.selection,
            cooldown: millis(s.default_cooldown).max(1),
            failure_ratio: if s.failure_ratio.is_nan() {
                0.5
            } else {
                s.failure_ratio.clamp(0.0, 1.0)
            },
            min_requests: u64::from(s.min_requests.max(1)),
            backoff: millis(s.disable_backoff).max(1),
            reprobe: millis(s.auth_reprobe_interval).max(1),
            queue_max_len: s.queue_max_len,
            queue_max_wait: millis(s.queue_max_wait),
            load_factor: s.stickiness.map(|Stickiness { load_factor }| {
                if load_factor.is_nan() {
                    Stickiness::DEFAULT_LOAD_FACTOR
                } else {
                    load_factor.max(1.0)
                }
            }),
        }
    }
}

pub(super) struct Sched {
    settings: PoolSettings,
    t: Tuning,
    /// Slab of keys; removed keys stay (not live) until their slot is reused.
    keys: Vec<Key>,
    free: Vec<u32>,
    /// Live keys in config order.
    order: Vec<u32>,
    by_id: HashMap<Arc<str>, u32>,
    /// Every slot's id and value (see `Grant::creds`); rebuilt by `update`, the only place
    /// they change.
    creds: Arc<[Cred]>,
    preferred: Ready,
    paced: Ready,
    /// Weighted selection: the weights that have a FIFO lane of their own in `preferred`
    /// and `paced` (a picked key's new pass is the largest of its weight's keys).
    weight_lanes: Vec<u32>,
    /// (instant, slot, generation); entries whose generation is old are ignored.
    timers: BinaryHeap<Reverse<(u64, u32, u64)>>,
    /// Keys waiting for a probe.
    parked: BTreeSet<u32>,
    /// Stickiness ring: sorted points, each with the slot owning it (side by side: the lookup
    /// finds the owner in the cache line it searched).
    ring: Vec<(u64, u32)>,
    /// `ring_index[b]`: the first point whose top `ring_bits` bits are at least `b` (one
    /// entry more than the buckets), so a lookup searches a bucket of a few points instead of
    /// the whole ring (which misses the cache at every step with 10,000 keys).
    ring_index: Vec<u32>,
    ring_bits: u32,
    ring_keys: usize,
    seq: u64,
    /// State of the generator behind least-used sampling (see [`below`]).
    rng: u64,
    /// Stride scheduling virtual time: the pass of the last pick.
    vtime: u128,
    next_incarnation: u64,
    next_waiter: u64,
    total_in_flight: u64,
    counts: Counts,
    waiters: VecDeque<Waiter>,
    /// The latest instant a waiter sleeps until (0: none since the last wake-up call).
    sleeping_until: u64,
    /// Waiters should recompute their sleep.
    rearm: bool,
}

impl Sched {
    pub(super) fn new(settings: PoolSettings, keys: Vec<KeyConfig>, now: u64) -> Self {
        let mut s = Self {
            t: Tuning::new(&settings),
            settings: settings.clone(),
            keys: Vec::new(),
            free: Vec::new(),
            order: Vec::new(),
            by_id: HashMap::new(),
            creds: Arc::from(Vec::new()),
            preferred: Ready::default(),
            paced: Ready::default(),
            weight_lanes: Vec::new(),
            timers: BinaryHeap::new(),
            parked: BTreeSet::new(),
            ring: Vec::new(),
            ring_index: Vec::new(),
            ring_bits: 0,
            ring_keys: 0,
            seq: 0,
            rng: rand::random(),
            vtime: 0,
            next_incarnation: 0,
            next_waiter: 0,
            total_in_flight: 0,
            counts: Counts::default(),
            waiters: VecDeque::new(),
            sleeping_until: 0,
            rearm: false,
        };
        s.update(settings, keys, now);
        s
    }

    pub(super) fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub(super) fn queue_limits(&self) -> (usize, u64) {
        (self.t.queue_max_len, self.t.queue_max_wait)
    }

    pub(super) fn take_rearm(&mut self) -> bool {
        std::mem::take(&mut self.rearm)
    }

    pub(super) fn force_rearm(&mut self) {
        self.rearm = true;
        self.sleeping_until = 0;
    }

    // --- config ---

    pub(super) fn update(&mut self, settings: PoolSettings, configs: Vec<KeyConfig>, now: u64) {
        self.t = Tuning::new(&settings);
        self.settings = settings;
        let mut order = Vec::with_capacity(configs.len());
        let mut kept = HashSet::with_capacity(configs.len());
        for config in configs {
            let slot = match self.by_id.get(config.id.as_str()) {
                Some(&slot) => {
                    if !kept.insert(slot) {
                        continue; // a duplicate id: the first one wins
                    }
                    let k = &mut self.keys[slot as usize];
                    if *k.value != config.value {
                        k.value = Arc::new(config.value);
                    }
                    k.limits = config.limits;
                    slot
                }
                None => {
                    let slot = self.alloc(config, now);
                    kept.insert(slot);
                    slot
                }
            };
            order.push(slot);
        }
        for slot in std::mem::take(&mut self.order) {
            if !kept.contains(&slot) {
                self.remove_key(slot);
            }
        }
        self.order = order;
        self.preferred.reserve_slots(self.keys.len());
        self.paced.reserve_slots(self.keys.len());
        self.weight_lanes.clear();
        for &slot in &self.order {
            let w = self.keys[slot as usize].limits.weight;
            if self.weight_lanes.len() < MAX_LANES && !self.weight_lanes.contains(&w) {
                self.weight_lanes.push(w);
            }
        }
        // Re-place every key: limits or the strategy (heap order) may have changed.
        for i in 0..self.order.len() {
            let slot = self.order[i];
            let place = self.keys[slot as usize].place;
            self.leave(slot, place);
            self.keys[slot as usize].place = Place::Off;
            self.reconcile(slot, now);
        }
        self.rebuild_ring();
        // A new table only when an id or value changed: leases keep the table they were
        // taken with alive, and updates that change limits only (quota grants) are frequent.
        let same = self.creds.len() == self.keys.len()
            && self
                .keys
                .iter()
                .zip(self.creds.iter())
                .all(|(k, c)| Arc::ptr_eq(&k.id, &c.id) && Arc::ptr_eq(&k.value, &c.value));
        if !same {
            self.creds = self
                .keys
                .iter()
                .map(|k| Cred {
                    id: k.id.clone(),
                    value: k.value.clone(),
                })
                .collect();
        }
        self.force_rearm();
    }

    fn alloc(&mut self, config: KeyConfig, now: u64) -> u32 {
        self.next_incarnation += 1;
        let incarnation = self.next_incarnation;
        let slot = match self.free.pop() {
            Some(slot) => {
                let generation = self.keys[slot as usize].generation + 1;
                self.keys[slot as usize] = Key::new(config, incarnation, generation, now);
                slot
            }
            None => {
                self.keys.push(Key::new(config, incarnation, 0, now));
                (self.keys.len() - 1) as u32
            }
        };
        self.by_id.insert(self.keys[slot as usize].id.clone(), slot);
        slot
    }

    fn remove_key(&mut self, slot: u32) {
        let place = self.keys[slot as usize].place;
        self.leave(slot, place);
        let k = &mut self.keys[slot as usize];
        k.place = Place::Off;
        k.live = false;
        self.total_in_flight = self.total_in_flight.saturating_sub(u64::from(k.in_flight));
        self.by_id.remove(&k.id);
        self.free.push(slot);
    }

    fn rebuild_ring(&mut self) {
        self.ring.clear();
        self.ring_index.clear();
        self.ring_bits = 0;
        self.ring_keys = 0;
        if self.t.load_factor.is_none() {
            return;
        }
        let members: Vec<u32> = self
            .order
            .iter()
            .copied()
            .filter(|&s| !self.keys[s as usize].unused())
            .collect();
        let vnodes: u64 = match members.len() {
            0..=100 => 128,
            101..=1000 => 32,
            _ => 16,
        };
        let mut points = Vec::with_capacity(members.len() * vnodes as usize);
        for &slot in &members {
            let base = fnv1a(self.keys[slot as usize].id.as_bytes());
            for v in 0..vnodes {
                points.push((vnode_point(base, v), slot));
            }
        }
        let keys = &self.keys;
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| keys[a.1 as usize].id.cmp(&keys[b.1 as usize].id))
        });
        self.ring = points;
        self.ring_keys = members.len();
        // About one point per bucket, at most 2^18 buckets.
        let bits = (usize::BITS - self.ring.len().leading_zeros()).clamp(1, 18);
        self.ring_bits = bits;
        let buckets = 1usize << bits;
        self.ring_index = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            let lo = (b as u64) << (64 - bits);
            while i < self.ring.len() && self.ring[i].0 < lo {
                i += 1;
            }
            self.ring_index.push(i as u32);
        }
        self.ring_index.push(self.ring.len() as u32);
    }

    // --- places ---

    /// Where the key belongs now; applies expired cooldowns and disables on the way.
    fn target(&mut self, slot: u32, now: u64) -> Place {
        let k = &mut self.keys[slot as usize];
        if !k.live || k.unused() {
            return Place::Off;
        }
        match k.health {
            Health::Cooling { until } if now < until => {
                return Place::Timed(Class::Cooling, until);
            }
            Health::Exhausted { until } if now < until => {
                return Place::Timed(Class::Exhausted, until);
            }
            Health::Cooling { .. } | Health::Exhausted { .. } => k.health = Health::Active,
            Health::Disabled { until, .. } if now < until => {
                return Place::Timed(Class::Disabled, until);
            }
            Health::Disabled { .. } => k.health = Health::Probation,
            Health::AuthFailed { .. } => return Place::Parked,
            Health::Probation | Health::Active => {}
        }
        if matches!(k.health, Health::Probation) && k.trial_out {
            return Place::Capacity;
        }
        if k.limits.max_concurrent.is_some_and(|m| k.in_flight >= m) {
            return Place::Capacity;
        }
        let mut until = None;
        if let Some(rpm) = k.limits.requests_per_minute {
            until = k.window.below_at(now, Field::Requests, u64::from(rpm));
        }
        if let Some(tpm) = k.limits.tokens_per_minute
            && let Some(at) = k.window.below_at(now, Field::Tokens, tpm)
        {
            until = Some(until.map_or(at, |u: u64| u.max(at)));
        }
        if let Some(until) = until {
            return Place::Timed(Class::Exhausted, until);
        }
        if k.pace_until > now {
            return Place::Paced;
        }
        Place::Ready
    }

    /// Moves the key where it belongs (re-inserting a ready key with its new priority).
    fn reconcile(&mut self, slot: u32, now: u64) {
        let target = self.target(slot, now);
        let current = self.keys[slot as usize].place;
        if target == current && !matches!(target, Place::Ready | Place::Paced) {
            return;
        }
        if target == Place::Ready && current == Place::Ready {
            // The common case after a pick: same heap, new priority. No timer depends on a
            // ready key's generation, so it stays.
            let p = self.priority(slot);
            let lane = self.lane(slot);
            self.preferred.update(slot, p, lane);
            return;
        }
        self.leave(slot, current);
        self.enter(slot, current, target);
    }

    fn leave(&mut self, slot: u32, place: Place) {
        self.counts.sub(place);
        match place {
            Place::Ready => {
                self.preferred.remove(slot);
            }
            Place::Paced => {
                self.paced.remove(slot);
            }
            Place::Parked => {
                self.parked.remove(&slot);
            }
            Place::Off | Place::Timed(..) | Place::Capacity => {}
        }
        self.keys[slot as usize].generation += 1;
    }

    fn enter(&mut self, slot: u32, from: Place, to: Place) {
        self.counts.add(to);
        let weighted = self.t.selection == Selection::Weighted;
        let vtime = self.vtime;
        let k = &mut self.keys[slot as usize];
        k.place = to;
        let generation = k.generation;
        if weighted
            && matches!(to, Place::Ready | Place::Paced)
            && !matches!(from, Place::Ready | Place::Paced)
        {
            k.pass = k.pass.max(vtime);
        }
        match to {
            Place::Ready => {
                let p = self.priority(slot);
                let lane = self.lane(slot);
                self.preferred.push(slot, p, lane);
            }
            Place::Paced => {
                let p = self.priority(slot);
                let lane = self.lane(slot);
                self.paced.push(slot, p, lane);
                let until = self.keys[slot as usize].pace_until;
                self.push_timer(until, slot, generation);
            }
            Place::Timed(_, until) => self.push_timer(until, slot, generation),
            Place::Parked => {
                self.parked.insert(slot);
            }
            Place::Off | Place::Capacity => {}
        }
    }

    fn priority(&self, slot: u32) -> u128 {
        let k = &self.keys[slot as usize];
        match self.t.selection {
            Selection::Weighted => k.pass,
            Selection::TimeWindow { .. } => {
                (u128::from(k.last_used.map_or(0, |t| t.saturating_add(1))) << 64)
                    | u128::from(k.seq)
            }
            Selection::RoundRobin | Selection::LeastUsed => u128::from(k.seq),
        }
    }

    /// The FIFO lane of a key in `preferred` and `paced`: one for least-recently-used
    /// orders, one per weight (up to [`MAX_LANES`]) for stride scheduling.
    fn lane(&self, slot: u32) -> u8 {
        if self.t.selection != Selection::Weighted {
            return 0;
        }
        let w = self.keys[slot as usize].limits.weight;
        self.weight_lanes
            .iter()
            .position(|&l| l == w)
            .map_or(NO_LANE, |i| i as u8)
    }

    fn push_timer(&mut self, at: u64, slot: u32, generation: u64) {
        if !self.waiters.is_empty() && at < self.sleeping_until {
            self.force_rearm();
        }
        self.timers.push(Reverse((at, slot, generation)));
        if self.timers.len() > 4 * self.keys.len() + 64 {
            let keys = &self.keys;
            self.timers
                .retain(|Reverse((_, s, g))| keys[*s as usize].generation == *g);
        }
    }

    fn timer_valid(&self, slot: u32, generation: u64) -> bool {
        let k = &self.keys[slot as usize];
        k.live && k.generation == generation
    }

    /// Applies every timer that is due.
    pub(super) fn promote(&mut self, now: u64) {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timer_valid(slot, generation) {
                self.reconcile(slot, now);
            }
        }
    }

    /// The next instant a timer is due, if any.
    pub(super) fn next_timer(&mut self) -> Option<u64> {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if self.timer_valid(slot, generation) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// The earliest timed key not in `excl`, and why it is blocked.
    fn earliest(&mut self, excl: &[u32]) -> Option<(u64, Class)> {
        let mut stash = Vec::new();
        let mut found = None;
        while let Some(Reverse(entry)) = self.timers.pop() {
            let (at, slot, generation) = entry;
            if !self.timer_valid(slot, generation) {
                continue;
            }
            stash.push(entry);
            if excl.contains(&slot) {
                continue;
            }
            if let Place::Timed(class, _) = self.keys[slot as usize].place {
                found = Some((at, class));
                break;
            }
        }
        for entry in stash {
            self.timers.push(Reverse(entry));
        }
        found
    }

    // --- picking ---

    /// Live slots of these ids, deduplicated.
    pub(super) fn resolve(&self, ids: &[KeyId]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for id in ids {
            if let Some(&slot) = self.by_id.get(id.as_str())
                && !out.contains(&slot)
            {
                out.push(slot);
            }
        }
        out
    }

    /// The key with this id, if it may take a request now (ready or paced).
    pub(super) fn pick_id(&self, id: &str) -> Option<u32> {
        let &slot = self.by_id.get(id)?;
        matches!(self.keys[slot as usize].place, Place::Ready | Place::Paced).then_some(slot)
    }

    /// The key the next request should use, if any is eligible.
    pub(super) fn pick(&mut self, now: u64, affinity: Option<u64>, excl: &[u32]) -> Option<u32> {
        if self.preferred.is_empty() && self.paced.is_empty() {
            return None;
        }
        if let (Some(hash), Some(load_factor)) = (affinity, self.t.load_factor)
            && let Some(slot) = self.sticky(hash, load_factor, excl)
        {
            return Some(slot);
        }
        self.pick_from(false, now, excl)
            .or_else(|| self.pick_from(true, now, excl))
    }

    fn pick_from(&mut self, paced: bool, now: u64, excl: &[u32]) -> Option<u32> {
        let heap = if paced { &self.paced } else { &self.preferred };
        if heap.is_empty() {
            return None;
        }
        if self.t.selection == Selection::LeastUsed
            && let Some(slot) = self.least_used(paced, now, excl)
        {
            return Some(slot);
        }
        self.heap_min(paced, excl)
    }

    /// The minimum not in `excl`: O(|excl|) on top of a peek.
    fn heap_min(&mut self, paced: bool, excl: &[u32]) -> Option<u32> {
        let ready = if paced {
            &mut self.paced
        } else {
            &mut self.preferred
        };
        if excl.is_empty() {
            return ready.peek();
        }
        let mut stash = Vec::new();
        let mut found = None;
        while let Some(slot) = ready.peek() {
            if !excl.contains(&slot) {
                found = Some(slot);
                break;
            }
            if !ready.remove(slot) {
                break;
            }
            stash.push(slot);
        }
        for slot in stash {
            let (p, lane) = (self.priority(slot), self.lane(slot));
            let ready = if paced {
                &mut self.paced
            } else {
                &mut self.preferred
            };
            ready.push(slot, p, lane);
        }
        found
    }

    /// Fewest requests in the window, then fewest in flight, then picked longest ago.
    fn least_used(&mut self, paced: bool, now: u64, excl: &[u32]) -> Option<u32> {
        let heap = if paced { &self.paced } else { &self.preferred };
        let n = heap.len();
        let mut candidates = [0u32; P2C_SCAN_UP_TO];
        let mut count = 0;
        if n <= P2C_SCAN_UP_TO {
            for i in 0..n {
                let slot = heap.at(i);
                if !excl.contains(&slot) {
                    candidates[count] = slot;
                    count += 1;
                }
            }
        } else {
            for _ in 0..P2C_ATTEMPTS {
                let slot = heap.at(below(&mut self.rng, n));
                if !excl.contains(&slot) {
                    // The pick moves the winner in the ready set: load its entry now, while
                    // the candidates' keys load, instead of after.
                    heap.touch(slot);
                    candidates[count] = slot;
                    count += 1;
                    if count == 2 {
                        break;
                    }
                }
            }
        }
        let mut best: Option<((u64, u32, u64), u32)> = None;
        for &slot in &candidates[..count] {
            let k = &mut self.keys[slot as usize];
            let score = (k.window.requests(now), k.in_flight, k.seq);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, slot));
            }
        }
        best.map(|(_, slot)| slot)
    }

    /// The first ready key clockwise from the hash whose load is within the bound.
    fn sticky(&self, hash: u64, load_factor: f64, excl: &[u32]) -> Option<u32> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let start = self.ring_start(fmix64(hash));
        let usable = (self.counts.ready + self.counts.capacity).max(1);
        let cap = (load_factor * (self.total_in_flight as f64 + 1.0) / usable as f64).ceil();
        let limit = STICKY_CANDIDATES.min(self.ring_keys);
        let mut seen = [u32::MAX; STICKY_CANDIDATES];
        let mut count = 0;
        for i in 0..len {
            let slot = self.ring[(start + i) % len].1;
            if seen[..count].contains(&slot) {
                continue;
            }
            seen[count] = slot;
            count += 1;
            let k = &self.keys[slot as usize];
            if k.place == Place::Ready
                && !excl.contains(&slot)
                && (k.in_flight == 0 || f64::from(k.in_flight) + 1.0 <= cap)
            {
                return Some(slot);
            }
            if count == limit {
                break;
            }
        }
        None
    }

    /// The first ring point at or after `point` (`len` when none).
    fn ring_start(&self, point: u64) -> usize {
        let b = (point >> (64 - self.ring_bits)) as usize;
        let (lo, hi) = (self.ring_index[b] as usize, self.ring_index[b + 1] as usize);
        lo + self.ring[lo..hi].partition_point(|&(p, _)| p < point)
    }

    /// Counts a request on the key and hands out the grant.
    pub(super) fn reserve(&mut self, slot: u32, now: u64) -> Grant {
        self.seq += 1;
        let weighted = self.t.selection == Selection::Weighted;
        let k = &mut self.keys[slot as usize];
        k.in_flight += 1;
        k.window.add_request(now);
        k.requests += 1;
        k.last_used = Some(now);
        k.seq = self.seq;
        if weighted {
            self.vtime = k.pass;
            k.pass += STRIDE / u128::from(k.limits.weight.max(1));
        }
        let trial = matches!(k.health, Health::Probation);
        if trial {
            k.trial_out = true;
        }
        let grant = Grant {
            slot,
            incarnation: k.incarnation,
            trial,
            creds: self.creds.clone(),
        };
        self.total_in_flight += 1;
        self.reconcile(slot, now);
        grant
    }

    /// Takes back a grant nobody received.
    fn unreserve(&mut self, grant: &Grant, now: u64) {
        let Some(k) = self.live_key(grant) else {
            return;
        };
        k.in_flight = k.in_flight.saturating_sub(1);
        k.window.remove_request(now);
        k.requests = k.requests.saturating_sub(1);
        if grant.trial {
            k.trial_out = false;
        }
        self.total_in_flight = self.total_in_flight.saturating_sub(1);
        self.reconcile(grant.slot, now);
    }

    fn live_key(&mut self, grant: &Grant) -> Option<&mut Key> {
        self.keys
            .get_mut(grant.slot as usize)
            .filter(|k| k.live && k.incarnation == grant.incarnation)
    }

    /// Why nothing could be picked for a request excluding `excl`.
    pub(super) fn unavailable(&mut self, now: u64, excl: &[u32]) -> Unavailable {
        let mut c = self.counts;
        for &slot in excl {
            c.sub(self.keys[slot as usize].place);
        }
        if c.total() == 0 {
            return Unavailable {
                reason: UnavailableReason::NoKeys,
                retry_after: None,
            };
        }
        // u64::MAX: a quota of 0, which returns only with a new grant (unknown).
        let in_ms =
            |at: u64| (at != u64::MAX).then(|| Duration::from_millis(at.saturating_sub(now)));
        let earliest = self.earliest(excl);
        if c.capacity > 0 || c.ready > 0 {
            // A busy key frees up whenever a request ends: the earliest timed key (if any) is
            // only an upper bound.
            return Unavailable {
                reason: UnavailableReason::AtCapacity,
                retry_after: earliest.and_then(|(at, _)| in_ms(at)),
            };
        }
        if let Some((at, class)) = earliest {
            return Unavailable {
                reason: match class {
                    Class::Cooling => UnavailableReason::Cooling,
                    Class::Exhausted => UnavailableReason::Exhausted,
                    Class::Disabled => UnavailableReason::Disabled,
                },
                retry_after: in_ms(at),
            };
        }
        // Only keys waiting for a probe: the next probe is the earliest they can return.
        let next_probe = self
            .parked
            .iter()
            .filter(|&&s| !excl.contains(&s))
            .filter_map(|&s| match self.keys[s as usize].health {
                Health::AuthFailed { next_probe, .. } => Some(next_probe),
                _ => None,
            })
            .min();
        Unavailable {
            reason: UnavailableReason::Disabled,
            retry_after: next_probe.and_then(in_ms),
        }
    }

    // --- outcomes ---

    pub(super) fn release(&mut self, grant: &Grant, outcome: Outcome, now: u64) {
        let t = self.t;
        let Some(k) = self.live_key(grant) else {
            return;
        };
        k.in_flight = k.in_flight.saturating_sub(1);
        let trial = grant.trial && matches!(k.health, Health::Probation);
        if grant.trial {
            k.trial_out = false;
        }
        // Outcomes feed the failure ratio while the key is active, or decide its trial.
        let counts = trial || matches!(k.health, Health::Active);
        match outcome {
            Outcome::Success(tokens) => {
                k.totals.successes += 1;
                if let Some(tokens) = tokens {
                    k.totals.tokens = k.totals.tokens.saturating_add(tokens);
                    k.window.add_tokens(now, tokens);
                }
                if trial {
                    k.health = Health::Active;
                }
                if counts {
                    k.window.add_outcome(now, true);
                    self.judge(grant.slot, now);
                }
            }
            Outcome::Failed => {
                k.totals.failures += 1;
                if trial {
                    self.disable(grant.slot, now, "trial request failed".to_owned());
                } else if counts {
                    k.window.add_outcome(now, false);
                    self.judge(grant.slot, now);
                }
            }
            Outcome::RateLimited(cooldown) => {
                k.totals.rate_limited += 1;
                if trial {
                    // The key answered: it is healthy, just out of quota.
                    k.health = Health::Active;
                }
                let d = cooldown.map_or(t.cooldown, millis).max(1);
                let until = now.saturating_add(d);
                let long = d > MINUTE_MS;
                match k.health {
                    Health::Active => {
                        k.health = if long {
                            Health::Exhausted { until }
                        } else {
                            Health::Cooling { until }
                        };
                    }
                    Health::Cooling { until: u } | Health::Exhausted { until: u } if u < until => {
                        k.health = if long {
                            Health::Exhausted { until }
                        } else {
                            Health::Cooling { until }
                        };
                    }
                    _ => {}
                }
            }
            Outcome::AuthFailed(status) => {
                k.totals.failures += 1;
                let sus = &mut k.suspicion;
                sus.status = status;
                sus.strikes
                    .retain(|at| now.saturating_sub(*at) < STRIKE_WINDOW_MS);
                sus.strikes.push(now);
                if sus.strikes.len() > STRIKES_TO_DISABLE {
                    sus.strikes.remove(0);
                }
                let recently_accepted = sus
                    .accepted_at
                    .is_some_and(|at| now.saturating_sub(at) < VERIFY_INTERVAL_MS);
                if sus.unprovable && sus.strikes.len() >= STRIKES_TO_DISABLE {
                    // No probe can tell, and different requests keep being refused.
                    k.suspicion = Suspicion::default();
                    k.health = Health::AuthFailed {
                        status,
                        next_probe: now.saturating_add(t.reprobe),
                    };
                } else {
                    if !sus.unprovable && !sus.probing && !recently_accepted {
                        sus.probe_wanted = true;
                    }
                    // Under suspicion, other keys go first (it is still used when no other
                    // key is eligible): a revoked key is not tried once per request while
                    // the evidence comes in.
                    if !recently_accepted {
                        k.pace_until = now.saturating_add(VERIFY_INTERVAL_MS);
                    }
                }
            }
            Outcome::Cancelled => k.totals.cancelled += 1,
        }
        self.total_in_flight = self.total_in_flight.saturating_sub(1);
        self.reconcile(grant.slot, now);
    }

    /// Disables an active key whose failure ratio is over the limit.
    fn judge(&mut self, slot: u32, now: u64) {
        let t = self.t;
        let k = &mut self.keys[slot as usize];
        if !matches!(k.health, Health::Active) {
            return;
        }
        let (ok, failed) = k.window.outcomes(now);
        let total = ok + failed;
        if total < t.min_requests {
            return;
        }
        let ratio = failed as f64 / total as f64;
        if ratio > t.failure_ratio {
            self.disable(
                slot,
                now,
                format!("failure ratio {ratio:.2} over {total} requests"),
            );
        } else {
            k.streak = 0;
        }
    }

    fn disable(&mut self, slot: u32, now: u64, reason: String) {
        let t = self.t;
        let k = &mut self.keys[slot as usize];
        let cap = MAX_BACKOFF_MS.max(t.backoff);
        let backoff = t
            .backoff
            .checked_shl(k.streak)
            .filter(|b| b >> k.streak == t.backoff)
            .map_or(cap, |b| b.min(cap));
        k.streak = k.streak.saturating_add(1).min(63);
        k.health = Health::Disabled {
            until: now.saturating_add(backoff),
            reason,
        };
        k.window.clear_outcomes();
    }

    pub(super) fn pace(
        &mut self,
        slot: u32,
        incarnation: u64,
        nearly_spent: bool,
        reset_in: Option<Duration>,
        now: u64,
    ) {
        let Some(k) = self
            .keys
            .get_mut(slot as usize)
            .filter(|k| k.live && k.incarnation == incarnation)
        else {
            return;
        };
        k.pace_until = if nearly_spent {
            now.saturating_add(reset_in.map_or(DEFAULT_PACING_MS, millis).max(1))
        } else {
            0
        };
        self.reconcile(slot, now);
    }

    pub(super) fn reprobe_due(&mut self, now: u64) -> Vec<(KeyId, SecretValue, ProbePurpose)> {
        let reprobe = self.t.reprobe;
        let mut out = Vec::new();
        for &slot in &self.parked {
            let k = &mut self.keys[slot as usize];
            if let Health::AuthFailed { next_probe, .. } = &mut k.health
                && *next_probe <= now
            {
                *next_probe = now.saturating_add(reprobe);
                out.push((
                    k.id.to_string(),
                    SecretValue::clone(&k.value),
                    ProbePurpose::Reenable,
                ));
            }
        }
        for k in self.keys.iter_mut().filter(|k| k.live) {
            if k.suspicion.probe_wanted {
                k.suspicion.probe_wanted = false;
                k.suspicion.probing = true;
                out.push((
                    k.id.to_string(),
                    SecretValue::clone(&k.value),
                    ProbePurpose::Verify,
                ));
            }
        }
        out
    }

    pub(super) fn probe_result(
        &mut self,
        id: &str,
        purpose: ProbePurpose,
        answer: ProbeAnswer,
        now: u64,
    ) {
        let reprobe = self.t.reprobe;
        let Some(&slot) = self.by_id.get(id) else {
            return;
        };
        let k = &mut self.keys[slot as usize];
        match purpose {
            ProbePurpose::Reenable => {
                if let Health::AuthFailed { next_probe, .. } = &mut k.health {
                    if answer == ProbeAnswer::Accepted {
                        k.health = Health::Active;
                        k.window.clear_outcomes();
                        self.reconcile(slot, now);
                    } else {
                        *next_probe = now.saturating_add(reprobe);
                    }
                }
            }
            ProbePurpose::Verify => {
                let sus = &mut k.suspicion;
                sus.probing = false;
                match answer {
                    // The key works: the refusals were the requests' doing.
                    ProbeAnswer::Accepted => {
                        sus.strikes.clear();
                        sus.accepted_at = Some(now);
                        k.pace_until = 0;
                        self.reconcile(slot, now);
                    }
                    // Refused without any request of a client: the key itself.
                    ProbeAnswer::Refused => {
                        let status = sus.status;
                        k.suspicion = Suspicion::default();
                        if !matches!(k.health, Health::AuthFailed { .. }) {
                            k.health = Health::AuthFailed {
                                status,
                                next_probe: now.saturating_add(reprobe),
                            };
                            self.reconcile(slot, now);
                        }
                    }
                    ProbeAnswer::Unknown => {
                        sus.unprovable = true;
                        if sus.strikes.len() >= STRIKES_TO_DISABLE {
                            let status = sus.status;
                            k.suspicion = Suspicion::default();
                            k.health = Health::AuthFailed {
                                status,
                                next_probe: now.saturating_add(reprobe),
                            };
                            self.reconcile(slot, now);
                        }
                    }
                }
            }
        }
    }

    // --- waiters ---

    pub(super) fn queue_len(&self) -> usize {
        self.waiters.len()
    }

    pub(super) fn enqueue(
        &mut self,
        affinity: Option<u64>,
        exclude: Vec<KeyId>,
        tx: oneshot::Sender<Lease>,
    ) -> u64 {
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.waiters.push_back(Waiter {
            id,
            affinity,
            exclude,
            tx,
        });
        id
    }

    pub(super) fn remove_waiter(&mut self, id: u64) {
        if let Some(i) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.remove(i);
        }
    }

    /// A waiter will sleep until `at` at the latest.
    pub(super) fn note_sleep(&mut self, at: u64) {
        self.sleeping_until = self.sleeping_until.max(at);
    }

    /// Serves waiters in arrival order with the keys eligible now. Inlined: it runs twice
    /// per pick, nearly always with nobody waiting.
    #[inline]
    pub(super) fn pump(&mut self, now: u64, shared: &Arc<Shared>) {
        if !self.waiters.is_empty() {
            self.serve_waiters(now, shared);
        }
    }

    fn serve_waiters(&mut self, now: u64, shared: &Arc<Shared>) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.preferred.is_empty() && self.paced.is_empty() {
                break;
            }
            let excl = self.resolve(&self.waiters[i].exclude);
            let affinity = self.waiters[i].affinity;
            let Some(slot) = self.pick(now, affinity, &excl) else {
                i += 1;
                continue;
            };
            let grant = self.reserve(slot, now);
            let Some(waiter) = self.waiters.remove(i) else {
                self.unreserve(&grant, now);
                break;
            };
            if let Err(mut lease) = waiter.tx.send(Lease::new(shared.clone(), grant)) {
                // The waiter is gone: take the grant back without re-entering the lock.
                lease.armed = false;
                self.unreserve(&lease.grant, now);
            }
        }
    }

    // --- status ---

    pub(super) fn snapshot(&mut self, now: u64, sys_now: SystemTime) -> Vec<KeyStatus> {
        let at = |t: u64| -> SystemTime {
            if t >= now {
                sys_now + Duration::from_millis(t - now)
            } else {
                sys_now
                    .checked_sub(Duration::from_millis(now - t))
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }
        };
        let mut out = Vec::with_capacity(self.order.len());
        for i in 0..self.order.len() {
            let slot = self.order[i];
            let k = &mut self.keys[slot as usize];
            let state = if k.unused() {
                KeyState::Disabled {
                    reason: "weight or maxConcurrent of 0: takes no traffic".to_owned(),
                    until: None,
                }
            } else {
                match &k.health {
                    Health::Active => KeyState::Active,
                    Health::Cooling { until } if *until > now => {
                        KeyState::Cooling { until: at(*until) }
                    }
                    Health::Exhausted { until } if *until > now => {
                        KeyState::Exhausted { until: at(*until) }
                    }
                    Health::Cooling { .. } | Health::Exhausted { .. } => KeyState::Active,
                    Health::Disabled { until, reason } if *until > now => KeyState::Disabled {
                        reason: reason.clone(),
                        until: Some(at(*until)),
                    },
                    Health::Disabled { .. } | Health::Probation => KeyState::Probation,
                    Health::AuthFailed { status, .. } => KeyState::Disabled {
                        reason: format!("upstream answered {status}: likely revoked"),
                        until: None,
                    },
                }
            };
            out.push(KeyStatus {
                id: k.id.to_string(),
                state,
                limits: k.limits,
                requests: k.requests,
                successes: k.totals.successes,
                failures: k.totals.failures,
                rate_limited: k.totals.rate_limited,
                cancelled: k.totals.cancelled,
                tokens: k.totals.tokens,
                last_used: k.last_used.map(at),
                requests_in_window: k.window.requests(now),
                tokens_in_window: k.window.tokens(now),
                in_flight: k.in_flight,
                deprioritized_until: (k.pace_until > now).then(|| at(k.pace_until)),
            });
        }
        out
    }
}

// === sampling ===

/// A uniform draw from `0..n` (`n` > 0) for least-used sampling: wyrand, seeded per pool from
/// the thread's generator. Statistical quality is all sampling needs, and it is a few
/// instructions on a field the pick already has in cache, where drawing from the thread-local
/// generator costs a thread-local lookup and a reference count per draw. The range is mapped
/// by multiplication (the bias, below n / 2^64, is irrelevant here).
fn below(state: &mut u64, n: usize) -> usize {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    let r = ((t >> 64) as u64) ^ (t as u64);
    ((u128::from(r) * n as u128) >> 64) as usize
}

// === hashing ===

/// The ring point of virtual node `v` of the key whose id hashed to `base`.
pub(super) fn vnode_point(base: u64, v: u64) -> u64 {
    fmix64(base ^ v.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of, size_of_val};

    /// A pick touches the first four cache lines of its key only, and least-used sampling and
    /// sticky candidates the first one (see [`Key`]).
    /// Leases share one table of ids and values, replaced only when an id or value changes.
    #[test]
    fn the_credentials_table_changes_only_with_ids_or_values() {
        let config = |v: &str, rpm| {
            vec![
                KeyConfig::new("a", SecretValue::new("va".to_owned())),
                KeyConfig::new("b", SecretValue::new(v.to_owned())).with_limits(KeyLimits {
                    requests_per_minute: rpm,
                    ..KeyLimits::default()
                }),
            ]
        };
        let settings = PoolSettings::default();
        let mut s = Sched::new(settings.clone(), config("vb", None), 0);
        let first = s.creds.clone();
        s.update(settings.clone(), config("vb", Some(5)), 0);
        assert!(
            Arc::ptr_eq(&first, &s.creds),
            "a limit change kept the table"
        );
        let lease = s.reserve(1, 0);
        assert_eq!((lease.id(), lease.value().expose()), ("b", "vb"));
        s.update(settings.clone(), config("vb2", Some(5)), 0);
        assert!(
            !Arc::ptr_eq(&first, &s.creds),
            "a new value made a new table"
        );
        assert_eq!(lease.value().expose(), "vb", "a lease keeps its value");
        let lease = s.reserve(1, 0);
        assert_eq!((lease.id(), lease.value().expose()), ("b", "vb2"));
        s.update(settings, config("vb2", Some(5))[1..].to_vec(), 0);
        let lease = s.reserve(1, 0);
        assert_eq!((lease.id(), lease.value().expose()), ("b", "vb2"));
    }

    /// Least-used sampling draws every position, about equally often.
    #[test]
    fn sampling_is_uniform() {
        let mut state = 7;
        for n in [1usize, 2, 3, 10, 1_000] {
            let mut seen = vec![0u32; n];
            let draws = 2_000 * n as u32;
            for _ in 0..draws {
                seen[below(&mut state, n)] += 1;
            }
            let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
            assert!(*lo >= 1_700 && *hi <= 2_300, "n = {n}: {lo}..={hi}");
        }
    }

    #[test]
    fn hot_fields_share_the_first_cache_lines() {
        assert_eq!(align_of::<Key>(), 64);
        let k = Key::new(
            KeyConfig::new("k", SecretValue::new("v".to_owned())),
            1,
            0,
            0,
        );
        let line0 = [
            (offset_of!(Key, place), size_of_val(&k.place)),
            (offset_of!(Key, seq), size_of_val(&k.seq)),
            (offset_of!(Key, in_flight), size_of_val(&k.in_flight)),
            (offset_of!(Key, live), size_of_val(&k.live)),
            (offset_of!(Key, trial_out), size_of_val(&k.trial_out)),
            (offset_of!(Key, window), Window::HOT_BYTES),
        ];
        for (offset, size) in line0 {
            assert!(offset + size <= 64, "{offset} + {size}");
        }
        let lines0to3 = [
            (offset_of!(Key, pace_until), size_of_val(&k.pace_until)),
            (offset_of!(Key, last_used), size_of_val(&k.last_used)),
            (offset_of!(Key, limits), size_of_val(&k.limits)),
            (offset_of!(Key, incarnation), size_of_val(&k.incarnation)),
            (offset_of!(Key, pass), size_of_val(&k.pass)),
            (offset_of!(Key, health), size_of_val(&k.health)),
            (offset_of!(Key, requests), size_of_val(&k.requests)),
        ];
        for (offset, size) in lines0to3 {
            assert!(offset + size <= 4 * 64, "{offset} + {size}");
        }
        eprintln!(
            "Key: {} bytes; health ends at {}",
            size_of::<Key>(),
            offset_of!(Key, health) + size_of_val(&k.health)
        );
    }
}
