//! API key selection for one `ApiKeyPool`: which key a request uses, per-key quotas, key
//! health, and a bounded wait when no key can take a request right now. With five keys, users
//! get five keys' worth of throughput and never see a 429 another key could have served.
//!
//! # Use
//!
//! A [`KeyPool`] is built once per pool and shared (`Arc`) by every request. A request takes a
//! [`Lease`] with [`KeyPool::acquire`] (waits, bounded) or [`KeyPool::try_acquire`] (never
//! waits), sends the lease's [`Lease::value`] upstream, and reports the outcome on the lease
//! ([`Lease::success`], [`Lease::rate_limited`], [`Lease::auth_failed`], [`Lease::failed`]).
//! A lease dropped without a report counts as cancelled (neither success nor failure). The
//! lease holds one of the key's concurrency slots until it is reported or dropped.
//! [`KeyPool::update`] applies a new config in place (key rotation) and keeps the counters,
//! state and leases of keys that stay. Key values never appear in any `Debug`, `Display` or
//! error of this module: keys are named by id.
//!
//! # Eligibility
//!
//! A key can take a request when it is active (not cooling, exhausted or disabled), has a
//! free concurrency slot (`max_concurrent`), and its usage over the last minute is under its
//! limits: requests *started* in the window `< requests_per_minute`, tokens *reported* in the
//! window `< tokens_per_minute`. The minute is a sliding window of 61 one-second buckets with
//! running sums (O(1) amortised; a request stays counted between 60 and 61 seconds, so the
//! count never undercounts a strict 60 s window). Tokens are only known once a response
//! completes, so a key can overshoot its TPM by what its in-flight requests consume; requests
//! are counted when they start (a cancelled request still counts) and never overshoot.
//!
//! # Scheduling
//!
//! One `std::sync::Mutex` per pool guards the scheduler; every critical section is short and
//! O(log n) at most (n = keys), never held across an `.await`, and a key's check-and-reserve
//! happens in one of them, so concurrent requests can never overshoot a limit. Each key is in
//! exactly one place:
//! - *ready*: eligible now, in an indexed min-heap ordered for the selection strategy (a
//!   second heap holds ready keys that are deprioritised by [`Lease::pacing`]; they are picked
//!   only when no other key is eligible);
//! - *timed*: blocked until a known instant (cooldown end, window refill, disable end), in a
//!   timer heap; expired entries are moved back lazily by whichever call comes next;
//! - *at capacity*: waiting for one of its leases to end (the release puts it back);
//! - *parked*: disabled after a 401/403 until a probe succeeds ([`KeyPool::reprobe_due`]).
//!
//! So a pick never visits an ineligible key: picking is O(log n) with 10,000 keys even when
//! most of them are cooling, and when none is eligible the reason and the earliest refill come
//! from per-place counts and the top of the timer heap (no scan).
//!
//! Strategies ([`Selection`]):
//! - `RoundRobin`: the ready key picked longest ago (keys in turn; a key back from a cooldown
//!   gets the next turn).
//! - `Weighted`: stride scheduling, a deterministic smooth weighted round robin: each key has
//!   a pass value advanced by `1/weight` per pick, the lowest pass goes next; a key returning
//!   to the ready set starts at the current pass so it cannot monopolise the pool.
//! - `LeastUsed`: fewest requests started in the current window (then fewest in flight); pools
//!   of up to 8 ready keys are compared exactly, larger ones by power of two choices (two
//!   random ready keys, the less used wins), O(1).
//! - `TimeWindow { window }`: the least recently used ready key (min-heap on last use). That
//!   realises "prefer keys not used in the last `window`" for every window length: a key used
//!   within the window is only picked when every eligible key was.
//!
//! Weight 0 (or a limit of 0) takes a key out of rotation.
//!
//! # Stickiness
//!
//! With [`PoolSettings::stickiness`] and an affinity hash (the caller hashes a user id or a
//! prompt prefix), keys are placed on a hash ring by *id* (stable across rebuilds and across
//! proxy replicas; 128, 32 or 16 virtual nodes per key for up to 100, 1,000 or more keys, the
//! smaller sets being prefixes of the larger). The request goes to the first key clockwise
//! that is ready (not deprioritised), not excluded, and whose in-flight count stays within
//! `ceil(load_factor × (in flight in the pool + 1) / usable keys)` (consistent hashing with
//! bounded loads; a key with nothing in flight always qualifies). At most 16 keys are tried,
//! then the strategy picks. A user therefore moves only when their key is cooling, spent,
//! disabled, deprioritised or overloaded, and always to the same next key.
//!
//! # Health
//!
//! - [`Lease::rate_limited`]: the key cools for the given time (or the default cooldown); a
//!   Retry-After longer than a minute marks it exhausted instead. It returns by itself.
//! - [`Lease::failed`] (5xx, connect errors) and [`Lease::success`] feed the key's failure
//!   ratio over the sliding minute: once at least `min_requests` outcomes are in and
//!   failures/total exceeds `failure_ratio`, the key is disabled for `disable_backoff`,
//!   doubling for each consecutive disable up to an hour (the streak resets once a full
//!   minute of at least `min_requests` outcomes stays under the ratio). When the backoff ends
//!   the key is half-open ([`KeyState::Probation`]): exactly one trial request; success makes
//!   it active, failure disables it again (longer), a cancelled trial allows another.
//! - [`Lease::auth_failed`]: disabled until a probe succeeds; [`KeyPool::reprobe_due`] hands
//!   out keys to probe every `auth_reprobe_interval`, [`KeyPool::probe_result`] re-enables.
//!
//! # Waiting
//!
//! [`KeyPool::acquire`] queues in a FIFO bounded by `queue_max_len`, for at most
//! `queue_max_wait`. Whenever a key may have become eligible (a lease ends, a timer expires,
//! [`KeyPool::update`], a successful probe) waiters are served in arrival order, directly
//! from the critical section that freed the key; a waiter that cannot use the freed key (it
//! excluded it) lets the next one try. A new request never overtakes waiters: the queue is
//! served before any new pick, including [`KeyPool::try_acquire`]'s. Waiters also sleep until
//! the earliest timer, so cooldown ends and window refills wake them without a background
//! task. When no key can become eligible before the wait would end (every usable key is
//! blocked past the deadline and none is merely at capacity), `acquire` fails at once with
//! the blocking reason and its `retry_after` instead of holding the request for nothing.
//!
//! Time is the monotonic clock (coarse on Linux) in milliseconds since the pool was created (tokio's timer only
//! drives the waiters' sleeps); tests move the pool's clock forward instead of pausing tokio's.
//!
//! Above the usual file size on purpose: a hundred lines of this file are the documented
//! contract above, and the rest is the public API of one type family ([`KeyPool`], [`Lease`]
//! and their settings and reports) that callers read in one place; the scheduling lives in
//! `sched`.

mod heap;
mod ready;
mod sched;
#[cfg(test)]
mod tests;
mod window;

use keyway_api::secret::SecretValue;
use sched::{Grant, Outcome, Sched};
pub use sched::{ProbeAnswer, ProbePurpose};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};

/// A key's id: its name in the pool (never its value).
pub type KeyId = String;

/// How a key is chosen among the eligible ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// Each key in turn.
    #[default]
    RoundRobin,
    /// In proportion to [`KeyLimits::weight`], smoothly interleaved (stride scheduling).
    Weighted,
    /// The key with the fewest requests in the current minute (power of two choices in large
    /// pools).
    LeastUsed,
    /// Prefer keys not used in the last `window`: the least recently used key.
    TimeWindow {
        /// How long a key counts as recently used.
        window: Duration,
    },
}

/// What one key may take: the domain model's limits (weight 0 takes the key out of rotation
/// under every strategy; tokens may overshoot by what in-flight requests use).
pub use keyway_api::model::KeyLimits;

/// One key of the pool.
#[derive(Clone, Debug)]
pub struct KeyConfig {
    /// Unique within the pool; the only way the key is ever named. Later duplicates of an id
    /// are ignored.
    pub id: KeyId,
    /// The secret sent upstream.
    pub value: SecretValue,
    /// Weight and quotas.
    pub limits: KeyLimits,
}

impl KeyConfig {
    /// A key with default limits (weight 1, no quotas).
    pub fn new(id: impl Into<KeyId>, value: SecretValue) -> Self {
        Self {
            id: id.into(),
            value,
            limits: KeyLimits::default(),
        }
    }

    /// The same key with these limits.
    pub fn with_limits(mut self, limits: KeyLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Keep requests with the same affinity hash on the same key, within a load bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stickiness {
    /// A key keeps its users while its in-flight count stays within this factor of the pool
    /// average (consistent hashing with bounded loads). Values below 1 count as 1, NaN as
    /// [`Stickiness::DEFAULT_LOAD_FACTOR`], infinity removes the bound.
    pub load_factor: f64,
}

impl Stickiness {
    /// The load factor used by default.
    pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;
}

impl Default for Stickiness {
    fn default() -> Self {
        Self {
            load_factor: Self::DEFAULT_LOAD_FACTOR,
        }
    }
}

/// How a pool behaves; see the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// How a key is chosen.
    pub selection: Selection,
    /// How long a rate-limited key rests when the upstream gave no Retry-After.
    pub default_cooldown: Duration,
    /// Failures/outcomes over the last minute above which a key is disabled (0..=1; NaN
    /// counts as 0.5; 1 never disables).
    pub failure_ratio: f64,
    /// Outcomes needed in the minute before the failure ratio is judged (at least 1).
    pub min_requests: u32,
    /// How long a key disabled by its failure ratio rests the first time; doubles on each
    /// consecutive disable, up to an hour.
    pub disable_backoff: Duration,
    /// How often a key disabled by a 401/403 is offered for a probe.
    pub auth_reprobe_interval: Duration,
    /// Requests that may wait for a key at once; 0 disables waiting.
    pub queue_max_len: usize,
    /// How long a request may wait for a key.
    pub queue_max_wait: Duration,
    /// Keep requests with the same affinity on the same key.
    pub stickiness: Option<Stickiness>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            selection: Selection::RoundRobin,
            default_cooldown: Duration::from_secs(60),
            failure_ratio: 0.5,
            min_requests: 10,
            disable_backoff: Duration::from_secs(60),
            auth_reprobe_interval: Duration::from_secs(300),
            queue_max_len: 100,
            queue_max_wait: Duration::from_secs(30),
            stickiness: None,
        }
    }
}

/// A key's state as reported by [`KeyPool::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Takes traffic (within its limits).
    Active,
    /// Rate limited by the upstream; returns by itself at `until`.
    Cooling {
        /// When the cooldown ends.
        until: SystemTime,
    },
    /// The upstream asked for a pause longer than a minute; returns by itself at `until`.
    Exhausted {
        /// When the key is expected to have quota again.
        until: SystemTime,
    },
    /// Takes no traffic: `until` is when it is tried again by itself (`None`: only after a
    /// successful probe, or never for a key configured out of rotation).
    Disabled {
        /// Why, e.g. `failure ratio 0.62 over 20 requests`.
        reason: String,
        /// When the key gets a trial request.
        until: Option<SystemTime>,
    },
    /// Back from a failure-ratio disable: one trial request decides.
    Probation,
}

/// One key's state and usage, from [`KeyPool::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key's id.
    pub id: KeyId,
    /// Health state.
    pub state: KeyState,
    /// Configured limits.
    pub limits: KeyLimits,
    /// Requests started since the key joined the pool.
    pub requests: u64,
    /// Requests reported successful.
    pub successes: u64,
    /// Requests reported failed (including authentication failures).
    pub failures: u64,
    /// Requests reported rate limited.
    pub rate_limited: u64,
    /// Leases dropped without a report.
    pub cancelled: u64,
    /// Tokens reported.
    pub tokens: u64,
    /// When the key last started a request.
    pub last_used: Option<SystemTime>,
    /// Requests started in the sliding minute (compare with `limits.requests_per_minute`).
    pub requests_in_window: u64,
    /// Tokens reported in the sliding minute (compare with `limits.tokens_per_minute`).
    pub tokens_in_window: u64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Set while the upstream said the key is nearly spent: other keys are preferred.
    pub deprioritized_until: Option<SystemTime>,
}

/// Why no key was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnavailableReason {
    /// The pool has no key this request may use (empty, or every key excluded or out of
    /// rotation). Waiting does not help.
    NoKeys,
    /// Keys are cooling after rate limits. When usable keys are blocked for different
    /// reasons, the reason is that of the key expected back first.
    Cooling,
    /// Keys' quotas are spent: their minute window is full or the upstream asked for a long
    /// pause.
    Exhausted,
    /// Keys are disabled (failure ratio or authentication).
    Disabled,
    /// Some usable key is only at its concurrency limit; it frees up when a request ends.
    AtCapacity,
    /// Too many requests are already waiting.
    QueueFull,
    /// The wait for a key ran out.
    QueueTimeout,
}

// === impl UnavailableReason ===

impl UnavailableReason {
    /// The bounded metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableReason::NoKeys => "no_keys",
            UnavailableReason::Cooling => "cooling",
            UnavailableReason::Exhausted => "exhausted",
            UnavailableReason::Disabled => "disabled",
            UnavailableReason::AtCapacity => "at_capacity",
            UnavailableReason::QueueFull => "queue_full",
            UnavailableReason::QueueTimeout => "queue_timeout",
        }
    }
}

/// No key now: why, and when one is expected back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// Why.
    pub reason: UnavailableReason,
    /// The earliest a key this request may use becomes eligible again (cooldown end, window
    /// refill, disable end, next probe). `None` when unknown: keys at capacity free up
    /// whenever a request ends (with [`UnavailableReason::AtCapacity`] it is the earliest
    /// blocked key's return if there is one, an upper bound). See
    /// [`Unavailable::retry_after_or_default`].
    pub retry_after: Option<Duration>,
}

impl Unavailable {
    /// What to suggest to a client when `retry_after` is unknown.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

    /// `retry_after`, or [`Unavailable::DEFAULT_RETRY_AFTER`] when unknown.
    pub fn retry_after_or_default(&self) -> Duration {
        self.retry_after.unwrap_or(Self::DEFAULT_RETRY_AFTER)
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            UnavailableReason::NoKeys => "no API key can take this request",
            UnavailableReason::Cooling => "every API key is cooling down after a rate limit",
            UnavailableReason::Exhausted => "every API key's quota is spent",
            UnavailableReason::Disabled => "every API key is disabled",
            UnavailableReason::AtCapacity => "every API key is at its concurrency limit",
            UnavailableReason::QueueFull => "too many requests are waiting for an API key",
            UnavailableReason::QueueTimeout => "timed out waiting for an API key",
        })?;
        if let Some(d) = self.retry_after {
            write!(f, " (retry in {:.1}s)", d.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for Unavailable {}

/// The keys of one `ApiKeyPool` and their state; share it with `Arc`.
pub struct KeyPool {
    shared: Arc<Shared>,
}

/// What the pool and its leases share.
struct Shared {
    sched: Mutex<Sched>,
    clock: Clock,
    /// Wakes waiters to recompute their sleep (an earlier timer, an update).
    rearm: Notify,
    /// Requests that found every usable key's quota spent (see [`KeyPool::quota_starved`]).
    starved: AtomicU64,
}

/// Milliseconds since the pool was created (plus a skew that tests advance).
struct Clock {
    /// [`crate::clock::coarse_ns`] when the pool was created.
    epoch_ns: u64,
    skew_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Self {
            epoch_ns: crate::clock::coarse_ns(),
            skew_ms: AtomicU64::new(0),
        }
    }

    /// Read on every pick: integer arithmetic on nanoseconds (no `Duration`, no 128-bit
    /// division).
    #[inline]
    fn now(&self) -> u64 {
        (crate::clock::coarse_ns().saturating_sub(self.epoch_ns) / 1_000_000)
            .saturating_add(self.skew_ms.load(Ordering::Relaxed))
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl Shared ===

impl Shared {
    /// Runs `f` under the scheduler lock at the current time: expired timers are applied and
    /// waiters served before and after it. Wakes sleeping waiters afterwards if needed.
    fn run<R>(self: &Arc<Self>, f: impl FnOnce(&mut Sched, u64, &Arc<Shared>) -> R) -> R {
        let (r, rearm) = {
            let mut s = self.sched.lock().unwrap_or_else(PoisonError::into_inner);
            // Read under the lock, so the scheduler never sees time go back.
            let now = self.clock.now();
            s.promote(now);
            s.pump(now, self);
            let r = f(&mut s, now, self);
            s.pump(now, self);
            (r, s.take_rearm())
        };
        if rearm {
            self.rearm.notify_waiters();
        }
        r
    }
}

impl Shared {
    /// Counts a request that found every usable key's quota spent: the demand a quota grant
    /// did not meet.
    fn note_unmet(&self, u: Unavailable) -> Unavailable {
        if u.reason == UnavailableReason::Exhausted {
            self.starved.fetch_add(1, Ordering::Relaxed);
        }
        u
    }
}

// === impl KeyPool ===

impl KeyPool {
    /// A pool with these keys.
    pub fn new(settings: PoolSettings, keys: Vec<KeyConfig>) -> Self {
        let clock = Clock::new();
        let sched = Sched::new(settings, keys, clock.now());
        Self {
            shared: Arc::new(Shared {
                sched: Mutex::new(sched),
                clock,
                rearm: Notify::new(),
                starved: AtomicU64::new(0),
            }),
        }
    }

    /// Applies a new config (key rotation, new limits or settings). Keys that stay (same id)
    /// keep their counters, state and in-flight leases, and take the new value and limits for
    /// new leases; removed keys take no new requests while their in-flight leases complete
    /// normally (their reports are ignored); new keys start fresh. Waiters are served with the
    /// new keys at once.
    pub fn update(&self, settings: PoolSettings, keys: Vec<KeyConfig>) {
        self.shared.run(|s, now, _| s.update(settings, keys, now));
    }

    /// An eligible key now, or why not and when the earliest one frees up. Never waits;
    /// requests already waiting in [`KeyPool::acquire`] are served first. `affinity` keeps
    /// requests with the same hash on the same key (with [`PoolSettings::stickiness`]);
    /// `exclude` lists keys not to use (e.g. already tried by this request).
    pub fn try_acquire(
        &self,
        affinity: Option<u64>,
        exclude: &[KeyId],
    ) -> Result<Lease, Unavailable> {
        self.shared.run(|s, now, shared| {
            let excl = s.resolve(exclude);
            match s.pick(now, affinity, &excl) {
                Some(slot) => Ok(Lease::new(shared.clone(), s.reserve(slot, now))),
                None => Err(shared.note_unmet(s.unavailable(now, &excl))),
            }
        })
    }

    /// The key with this id, if it is eligible now (a learned session keeps its key). Never
    /// waits; `None` when the key is gone, cooling, exhausted, disabled or at capacity.
    pub fn try_acquire_id(&self, id: &str) -> Option<Lease> {
        self.shared.run(|s, now, shared| {
            let slot = s.pick_id(id)?;
            Some(Lease::new(shared.clone(), s.reserve(slot, now)))
        })
    }

    /// Like [`KeyPool::try_acquire`], but when no key is eligible, waits (first come, first
    /// served) up to `queue_max_wait` for one to free up. Fails with
    /// [`UnavailableReason::QueueFull`] at once when `queue_max_len` requests already wait,
    /// with [`UnavailableReason::QueueTimeout`] when the wait runs out, and at once with the
    /// blocking reason when no key can become eligible before the wait would end (or waiting
    /// is disabled, or no key may be used at all). Cancel-safe: dropping the future leaves the
    /// queue.
    pub async fn acquire(
        &self,
        affinity: Option<u64>,
        exclude: &[KeyId],
    ) -> Result<Lease, Unavailable> {
        let first = self.shared.run(|s, now, shared| {
            let excl = s.resolve(exclude);
            if let Some(slot) = s.pick(now, affinity, &excl) {
                return Err(Ok(Lease::new(shared.clone(), s.reserve(slot, now))));
            }
            let u = shared.note_unmet(s.unavailable(now, &excl));
            let (max_len, max_wait) = s.queue_limits();
            let hopeless = match u.reason {
                UnavailableReason::NoKeys => true,
                UnavailableReason::AtCapacity => false,
                _ => u.retry_after.is_some_and(|d| millis(d) > max_wait),
            };
            if hopeless || max_len == 0 || max_wait == 0 {
                return Err(Err(u));
            }
            if s.queue_len() >= max_len {
                return Err(Err(Unavailable {
                    reason: UnavailableReason::QueueFull,
                    retry_after: u.retry_after,
                }));
            }
            let (tx, rx) = oneshot::channel();
            let id = s.enqueue(affinity, exclude.to_vec(), tx);
            Ok((id, rx, now.saturating_add(max_wait)))
        });
        let (id, rx, deadline) = match first {
            Ok(queued) => queued,
            Err(done) => return done,
        };
        let mut waiting = Waiting {
            shared: self.shared.clone(),
            id,
            rx,
        };
        loop {
            let notified = self.shared.rearm.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rx = &mut waiting.rx;
            let step = self.shared.run(|s, now, _| {
                if let Ok(lease) = rx.try_recv() {
                    return Step::Granted(lease);
                }
                if now >= deadline {
                    s.remove_waiter(id);
                    let excl = s.resolve(exclude);
                    let u = s.unavailable(now, &excl);
                    return Step::TimedOut(Unavailable {
                        reason: UnavailableReason::QueueTimeout,
                        retry_after: u.retry_after,
                    });
                }
                let wake = s.next_timer().map_or(deadline, |t| t.min(deadline));
                s.note_sleep(wake);
                Step::Sleep(Duration::from_millis(wake.saturating_sub(now).max(1)))
            });
            match step {
                Step::Granted(lease) => return Ok(lease),
                Step::TimedOut(u) => return Err(u),
                Step::Sleep(d) => {
                    tokio::select! {
                        granted = &mut waiting.rx => {
                            return granted.map_err(|_| Unavailable {
                                reason: UnavailableReason::QueueTimeout,
                                retry_after: None,
                            });
                        }
                        _ = tokio::time::sleep(d) => {}
                        _ = &mut notified => {}
                    }
                }
            }
        }
    }

    /// Every key's state and usage, in config order. O(keys).
    pub fn snapshot(&self) -> Vec<KeyStatus> {
        let sys_now = SystemTime::now();
        self.shared.run(|s, now, _| s.snapshot(now, sys_now))
    }

    /// Requests so far that found every usable key's quota spent (they waited or were
    /// refused): monotonic. In controller mode an increase means the proxy wants more quota
    /// than it was granted.
    pub fn quota_starved(&self) -> u64 {
        self.shared.starved.load(Ordering::Relaxed)
    }

    /// Requests waiting in [`KeyPool::acquire`].
    pub fn queue_len(&self) -> usize {
        self.shared.run(|s, _, _| s.queue_len())
    }

    /// The current settings.
    pub fn settings(&self) -> PoolSettings {
        self.shared.run(|s, _, _| s.settings().clone())
    }

    /// Keys disabled by an authentication failure whose probe is due, with their values, for
    /// the caller to probe (e.g. list models) and report with [`KeyPool::probe_result`]. A key
    /// handed out is offered again only after another `auth_reprobe_interval`, so a lost
    /// probe is retried.
    pub fn reprobe_due(&self) -> Vec<(KeyId, SecretValue, ProbePurpose)> {
        self.shared.run(|s, now, _| s.reprobe_due(now))
    }

    /// The result of a probe of a key from [`KeyPool::reprobe_due`]. Re-enabling: accepted
    /// re-enables it (and serves waiters), otherwise it stays disabled until its next probe.
    /// Verifying a refused key: refused disables it, accepted clears the suspicion.
    pub fn probe_result(&self, id: &str, purpose: ProbePurpose, answer: ProbeAnswer) {
        self.shared
            .run(|s, now, _| s.probe_result(id, purpose, answer, now));
    }

    /// Moves the pool's clock forward (tests of windows and cooldowns) and wakes waiters.
    #[cfg(test)]
    fn advance(&self, d: Duration) {
        self.shared
            .clock
            .skew_ms
            .fetch_add(millis(d), Ordering::Relaxed);
        self.shared.run(|s, _, _| s.force_rearm());
    }
}

impl fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPool")
            .field("queue_len", &self.queue_len())
            .finish_non_exhaustive()
    }
}

/// What a waiter does next.
enum Step {
    Granted(Lease),
    TimedOut(Unavailable),
    Sleep(Duration),
}

/// A queued [`KeyPool::acquire`]; leaves the queue when dropped. A lease granted but not yet
/// received is dropped with `rx`, which releases it.
struct Waiting {
    shared: Arc<Shared>,
    id: u64,
    rx: oneshot::Receiver<Lease>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.run(|s, _, _| s.remove_waiter(id));
    }
}

/// The right to send one request with one key. Holds a concurrency slot of the key until it
/// is reported or dropped; dropping it unreported counts as cancelled.
pub struct Lease {
    shared: Arc<Shared>,
    grant: Grant,
    /// Cleared once reported, so `Drop` does nothing more.
    armed: bool,
}

impl Lease {
    fn new(shared: Arc<Shared>, grant: Grant) -> Self {
        Self {
            shared,
            grant,
            armed: true,
        }
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        self.grant.id()
    }

    /// The key's value, to send upstream. A value changed by [`KeyPool::update`] applies to
    /// leases taken after the update.
    pub fn value(&self) -> &SecretValue {
        self.grant.value()
    }

    /// The request succeeded; `tokens` (when known) count towards the key's TPM.
    pub fn success(self, tokens: Option<u64>) {
        self.finish(Outcome::Success(tokens));
    }

    /// The upstream answered 429: the key cools for `cooldown` (the Retry-After; the default
    /// cooldown when `None`); longer than a minute marks it exhausted.
    pub fn rate_limited(self, cooldown: Option<Duration>) {
        self.finish(Outcome::RateLimited(cooldown));
    }

    /// The upstream refused this request with the key (401/403). That is evidence about the
    /// request as much as the key: the key is disabled only when a free probe with it is
    /// refused too (asked for here, run by [`crate::reprobe`]), or, when no probe can tell,
    /// after refusals of several different requests.
    pub fn auth_failed(self, status: u16) {
        self.finish(Outcome::AuthFailed(status));
    }

    /// A failure that may be the key's (5xx, connect error): feeds the failure ratio.
    pub fn failed(self) {
        self.finish(Outcome::Failed);
    }

    /// The upstream's rate-limit headers say the key is `nearly_spent` (or no longer): while
    /// it is, other keys are preferred (it is still used when no other key is eligible),
    /// until `reset_in` passes (a minute when unknown).
    pub fn pacing(&self, nearly_spent: bool, reset_in: Option<Duration>) {
        let (slot, incarnation) = (self.grant.slot, self.grant.incarnation);
        self.shared
            .run(|s, now, _| s.pace(slot, incarnation, nearly_spent, reset_in, now));
    }

    fn finish(mut self, outcome: Outcome) {
        self.armed = false;
        let grant = &self.grant;
        self.shared.run(|s, now, _| s.release(grant, outcome, now));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            let grant = &self.grant;
            self.shared
                .run(|s, now, _| s.release(grant, Outcome::Cancelled, now));
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}
