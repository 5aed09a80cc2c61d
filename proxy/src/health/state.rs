//! [`BackendHealth`]: the health of one backend, shared between its checker task (writer of
//! the active state and the deep-health models), the request path (writer of passive outcomes,
//! reader of everything) and the pool (which decides whether ejections may be ignored).
//!
//! Hot-path reads ([`BackendHealth::is_healthy`], [`BackendHealth::is_available`],
//! [`BackendHealth::is_ejected`]) are plain atomic loads. Writes that need several fields to
//! agree (threshold counters, ejection back-off) take a small mutex; they happen once per probe
//! or once per ejection, never per routed request (a request outcome is one atomic operation
//! unless it triggers an ejection).

use super::deep::{DeepSnapshot, ModelLoad};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Default [`OutlierSettings::consecutive_failures`].
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default [`OutlierSettings::base_ejection`].
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
/// Default [`OutlierSettings::max_ejection`].
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Default [`OutlierSettings::decay_period`].
pub const DEFAULT_EJECTION_DECAY: Duration = Duration::from_secs(60);

/// A change of the active-check state, returned by [`BackendHealth::record_check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Unhealthy → healthy (after `success_threshold` consecutive successful probes).
    Healthy,
    /// Healthy → unhealthy (after `fail_threshold` consecutive failed probes).
    Unhealthy,
}

impl Transition {
    /// The state transitioned to, as a metric label / log value (`healthy`, `unhealthy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Healthy => "healthy",
            Transition::Unhealthy => "unhealthy",
        }
    }

    /// The state transitioned from (`unhealthy`, `healthy`).
    pub fn previous(self) -> &'static str {
        match self {
            Transition::Healthy => "unhealthy",
            Transition::Unhealthy => "healthy",
        }
    }
}

/// Passive outlier detection (judged from real requests by the caller).
///
/// After `consecutive_failures` consecutive failed requests the backend is ejected for
/// `base_ejection * 2^(level - 1)`, capped at `max_ejection`, where `level` counts the
/// ejections of the current "streak". The streak decays with time spent *not* ejected: when a
/// new ejection happens, `level` first drops by one for every full `decay_period` that passed
/// since the previous ejection ended, then increases by one. With the defaults (5 failures,
/// 10 s, 300 s, 60 s) a backend that keeps failing is ejected for 10 s, 20 s, 40 s, ... 300 s;
/// one that stayed un-ejected for 2 minutes steps back down two levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive failed requests that eject the backend. `0` disables passive ejection.
    pub consecutive_failures: u32,
    /// First ejection duration.
    pub base_ejection: Duration,
    /// Longest ejection duration.
    pub max_ejection: Duration,
    /// Each full period spent not ejected forgives one earlier ejection (see above).
    /// `Duration::ZERO` means "never forget" (the back-off only grows).
    pub decay_period: Duration,
}

impl Default for OutlierSettings {
    /// 5 consecutive failures, 10 s base, 300 s max, 60 s decay.
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            decay_period: DEFAULT_EJECTION_DECAY,
        }
    }
}

impl OutlierSettings {
    /// The ejection duration at `level` (1 = first ejection of a streak).
    pub fn ejection_duration(&self, level: u32) -> Duration {
        let exp = level.saturating_sub(1).min(31);
        self.base_ejection
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

/// A passive ejection, returned by [`BackendHealth::record_outcome`] when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Ejected until this instant (exclusive).
    pub until: Instant,
    /// How long the ejection lasts.
    pub duration: Duration,
    /// Ejection level in the current streak (1 for the first; see [`OutlierSettings`]).
    pub level: u32,
}

#[derive(Debug, Default)]
struct ActiveCounters {
    consecutive_failures: u32,
    consecutive_successes: u32,
}

#[derive(Debug, Default)]
struct OutlierState {
    level: u32,
    /// End of the latest ejection.
    last_until: Option<Instant>,
}

/// The health of one backend. Share it with `Arc`.
///
/// [`is_healthy`](Self::is_healthy) = the active-check state AND not ejected by passive outlier
/// detection. A new backend **starts healthy**: it receives traffic as soon as it is configured
/// and is only marked unhealthy after `fail_threshold` consecutive failed probes (a backend that
/// is down at start-up therefore gets traffic for about `fail_threshold * interval`; passive
/// outlier detection usually ejects it sooner).
#[derive(Debug)]
pub struct BackendHealth {
    fail_threshold: u32,
    success_threshold: u32,
    outlier: OutlierSettings,
    /// Origin of the `*_nanos` fields.
    epoch: Instant,

    // Active checks.
    healthy: AtomicBool,
    active: Mutex<ActiveCounters>,

    // Passive outlier detection.
    request_failures: AtomicU32,
    /// Nanoseconds after `epoch` until which the backend is ejected; 0 = never ejected.
    ejected_until_nanos: AtomicU64,
    ejections: AtomicU64,
    outlier_state: Mutex<OutlierState>,

    // Deep health.
    deep: RwLock<Arc<DeepSnapshot>>,
}

impl Default for BackendHealth {
    /// Thresholds 3 (fail) / 2 (success), default [`OutlierSettings`].
    fn default() -> Self {
        Self::new(
            super::DEFAULT_FAIL_THRESHOLD,
            super::DEFAULT_SUCCESS_THRESHOLD,
            OutlierSettings::default(),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is a couple of counters that are never left half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BackendHealth {
    /// A healthy backend. Thresholds of 0 are treated as 1.
    pub fn new(fail_threshold: u32, success_threshold: u32, outlier: OutlierSettings) -> Self {
        Self {
            fail_threshold: fail_threshold.max(1),
            success_threshold: success_threshold.max(1),
            outlier,
            epoch: Instant::now(),
            healthy: AtomicBool::new(true),
            active: Mutex::new(ActiveCounters::default()),
            request_failures: AtomicU32::new(0),
            ejected_until_nanos: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            outlier_state: Mutex::new(OutlierState::default()),
            deep: RwLock::new(Arc::new(DeepSnapshot::default())),
        }
    }

    /// A healthy backend using the thresholds of `settings`.
    pub fn from_settings(settings: &super::HealthSettings, outlier: OutlierSettings) -> Self {
        Self::new(settings.fail_threshold, settings.success_threshold, outlier)
    }

    /// `(fail_threshold, success_threshold)` in effect.
    pub fn thresholds(&self) -> (u32, u32) {
        (self.fail_threshold, self.success_threshold)
    }

    /// The passive outlier settings in effect.
    pub fn outlier_settings(&self) -> &OutlierSettings {
        &self.outlier
    }

    // --- reads (hot path) ---

    /// Active-check state AND not currently ejected (uses `Instant::now()`).
    pub fn is_healthy(&self) -> bool {
        self.is_available(Instant::now(), false)
    }

    /// The active-check state alone (ignores passive ejection).
    pub fn is_active_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether passive outlier detection has ejected the backend at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until_nanos.load(Ordering::Acquire);
        until != 0 && self.nanos(now) < until
    }

    /// Whether the backend may receive traffic at `now`: active-healthy and, unless
    /// `ignore_ejection`, not ejected. The pool passes `ignore_ejection = true` when no
    /// backend is available otherwise (see [`any_available`]).
    pub fn is_available(&self, now: Instant, ignore_ejection: bool) -> bool {
        self.is_active_healthy() && (ignore_ejection || !self.is_ejected(now))
    }

    /// Total passive ejections so far.
    pub fn ejection_count(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    // --- active checks ---

    /// Records one probe result. Healthy → unhealthy after exactly `fail_threshold` consecutive
    /// failures; unhealthy → healthy after exactly `success_threshold` consecutive successes.
    /// A result of the other kind resets the streak. Returns the transition, if any.
    pub fn record_check(&self, ok: bool) -> Option<Transition> {
        let mut c = lock(&self.active);
        let healthy = self.healthy.load(Ordering::Acquire);
        if ok {
            c.consecutive_failures = 0;
            c.consecutive_successes = c.consecutive_successes.saturating_add(1);
            if !healthy && c.consecutive_successes >= self.success_threshold {
                c.consecutive_successes = 0;
                self.healthy.store(true, Ordering::Release);
                return Some(Transition::Healthy);
            }
        } else {
            c.consecutive_successes = 0;
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            if healthy && c.consecutive_failures >= self.fail_threshold {
                c.consecutive_failures = 0;
                self.healthy.store(false, Ordering::Release);
                return Some(Transition::Unhealthy);
            }
        }
        None
    }

    // --- passive outlier detection ---

    /// Records the outcome of one real request (the caller judges: connect errors and 5xx are
    /// failures). A success resets the consecutive-failure count. The failure that completes
    /// `consecutive_failures` ejects the backend (see [`OutlierSettings`] for the duration) and
    /// resets the count; if the backend is still ejected at that moment (the pool was ignoring
    /// ejections) nothing is extended and `None` is returned.
    pub fn record_outcome(&self, success: bool, now: Instant) -> Option<Ejection> {
        let threshold = self.outlier.consecutive_failures;
        if success {
            // Avoid dirtying the cache line on the common path.
            if self.request_failures.load(Ordering::Relaxed) != 0 {
                self.request_failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        if threshold == 0 {
            return None;
        }
        let failures = self
            .request_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < threshold {
            return None;
        }
        // Only one thread wins the reset; the others' failures count toward the next streak.
        if self
            .request_failures
            .compare_exchange(failures, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let mut state = lock(&self.outlier_state);
        if self.is_ejected(now) {
            return None;
        }
        let forgiven = match (state.last_until, self.outlier.decay_period.as_nanos()) {
            (Some(last), period) if period > 0 => {
                let quiet = now.saturating_duration_since(last).as_nanos();
                u32::try_from(quiet / period).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        // Levels beyond the one that reaches `max_ejection` change nothing; 32 bounds the shift.
        let level = state
            .level
            .saturating_sub(forgiven)
            .saturating_add(1)
            .min(32);
        let duration = self.outlier.ejection_duration(level);
        let until = now + duration;
        state.level = level;
        state.last_until = Some(until);
        // `max(1)`: 0 means "never ejected".
        self.ejected_until_nanos
            .store(self.nanos(until).max(1), Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(Ejection {
            until,
            duration,
            level,
        })
    }

    /// Ends a passive ejection now (e.g. an operator action). The back-off level is kept.
    pub fn clear_ejection(&self) {
        self.ejected_until_nanos.store(0, Ordering::Release);
        self.request_failures.store(0, Ordering::Relaxed);
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    // --- deep health ---

    /// A cheap snapshot (one `Arc` clone under a read lock) of the deep-health models.
    pub fn deep_snapshot(&self) -> Arc<DeepSnapshot> {
        self.deep
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the deep-health models (called by the checker after a successful deep probe).
    pub fn set_models(&self, models: Vec<(String, ModelLoad)>, now: Instant) {
        let snapshot = Arc::new(DeepSnapshot::new(models, now));
        *self.deep.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// The last reported load of `name`, if a deep probe reported it.
    pub fn model(&self, name: &str) -> Option<ModelLoad> {
        self.deep_snapshot().model(name)
    }

    /// All models of the last successful deep probe, sorted by name.
    pub fn models(&self) -> Vec<(String, ModelLoad)> {
        self.deep_snapshot().models()
    }

    /// `(capacity sum, consumption sum)` over the models reporting both; `None` if none does.
    pub fn load(&self) -> Option<(f64, f64)> {
        self.deep_snapshot().load()
    }
}

/// Whether any backend is available at `now` without ignoring ejections.
///
/// "Never eject the last healthy backend" is the pool's decision: when this returns `false`
/// the pool must route as if nothing were ejected, i.e. filter with
/// `b.is_available(now, true)`:
///
/// ```
/// # use keyway_proxy::health::{BackendHealth, any_available};
/// # use std::{sync::Arc, time::Instant};
/// # let backends = vec![Arc::new(BackendHealth::default())];
/// let now = Instant::now();
/// let ignore = !any_available(&backends, now);
/// let candidates: Vec<_> = backends.iter().filter(|b| b.is_available(now, ignore)).collect();
/// # assert_eq!(candidates.len(), 1);
/// ```
pub fn any_available(backends: &[Arc<BackendHealth>], now: Instant) -> bool {
    backends.iter().any(|b| b.is_available(now, false))
}

#[cfg(test)]
mod tests;
