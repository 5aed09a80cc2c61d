//! The one read-only walk of live state. `/status` and `/pools/{pool}`, the gauges refreshed at
//! scrape time and the usage reports sent to the controller all read pools, backends and keys
//! through [`LiveView`], so they read the same fields the same way, at one instant.

use super::pool::{BackendState, KeyPoolState, PoolState};
use super::route::Router;
use crate::affinity::AffinityStore;
use crate::health::ModelLoad;
use crate::keys;
use keyway_api::model;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The live state of every pool and key pool of the current router, read at one instant.
pub struct LiveView {
    router: Arc<Router>,
    now: Instant,
}

/// One pool as the walk sees it.
#[derive(Clone, Copy)]
pub struct PoolView<'a> {
    pub state: &'a PoolState,
    now: Instant,
}

/// One backend as the walk sees it.
pub struct BackendView<'a> {
    pub state: &'a BackendState,
    /// The active health checks pass.
    pub healthy: bool,
    /// Ejected by passive outlier detection.
    pub ejected: bool,
    /// May take traffic: weight above 0, healthy and not ejected.
    pub available: bool,
    /// Deep health: capacity and consumption summed over the backend's models.
    pub load: Option<(f64, f64)>,
    pub requests: u64,
    pub failures: u64,
    /// Answers with status 429.
    pub rate_limited: u64,
    /// Requests on this backend now.
    pub in_flight: u64,
    /// Unix milliseconds of the last use; 0 = never.
    pub last_used_ms: u64,
    pub tokens_per_minute: f64,
}

/// One key pool as the walk sees it.
pub struct KeyPoolView<'a> {
    pub state: &'a KeyPoolState,
    /// Requests waiting for a key.
    pub queue_len: usize,
    pub keys: Vec<KeyView>,
}

/// One key as status, reports and metrics show it: id, never value.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: String,
    /// `active`, `cooling`, `exhausted` or `disabled`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a cooling, exhausted or disabled key is expected back (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_unix_ms: Option<u64>,
    pub requests: u64,
    pub failures: u64,
    pub rate_limited: u64,
    pub tokens: u64,
    pub requests_this_minute: u64,
    pub tokens_this_minute: u64,
    pub in_flight: u32,
    /// The key's quota (`limits.requestsPerMinute`, `limits.tokensPerMinute`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_left_this_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_left_this_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_unix_ms: Option<u64>,
}

// === impl LiveView ===

impl LiveView {
    pub fn at(router: Arc<Router>, now: Instant) -> Self {
        Self { router, now }
    }

    /// The snapshot the router was compiled from.
    pub fn snapshot(&self) -> &model::Snapshot {
        &self.router.snapshot
    }

    pub fn pools(&self) -> impl Iterator<Item = PoolView<'_>> {
        let now = self.now;
        self.router
            .pools
            .iter()
            .map(move |p| PoolView { state: p, now })
    }

    pub fn key_pools(&self) -> impl Iterator<Item = KeyPoolView<'_>> {
        self.router.key_pools.iter().map(|kp| KeyPoolView {
            state: kp,
            queue_len: kp.engine.queue_len(),
            keys: kp.keys(),
        })
    }
}

// === impl PoolView ===

impl<'a> PoolView<'a> {
    pub fn model(&self) -> &'a model::Pool {
        &self.state.model
    }

    /// `namespace/name`.
    pub fn label(&self) -> &'a str {
        &self.state.label
    }

    /// Failover mode: the backend traffic goes to. Reading it runs the failover decision,
    /// which logs and counts a switch of the active role.
    pub fn active_backend(&self) -> Option<&'a str> {
        self.state.active_backend()
    }

    /// Backends that may take traffic.
    pub fn healthy_backends(&self) -> usize {
        self.state.healthy_count_at(self.now)
    }

    pub fn affinity(&self) -> Option<&'a AffinityStore> {
        self.state.affinity.as_deref()
    }

    /// Whether the `ApiKeyPool` the pool references is available.
    pub fn key_pool_available(&self) -> bool {
        self.state.keys.is_ok()
    }

    /// Failover mode: why the active role takes traffic (`primary_healthy`, `evacuated`,
    /// `primary_unhealthy`, ...); `balanced` in the other modes. Runs the failover decision
    /// like [`Self::active_backend`].
    pub fn active_reason(&self) -> &'static str {
        self.state.active_role_why(self.now).1
    }

    pub fn backends(&self) -> impl Iterator<Item = BackendView<'a>> + use<'a> {
        let now = self.now;
        let state = self.state;
        state
            .backends
            .iter()
            .enumerate()
            .map(move |(i, b)| BackendView::at(b, now, state.in_flight.get(i)))
    }
}

// === impl BackendView ===

impl<'a> BackendView<'a> {
    fn at(b: &'a BackendState, now: Instant, in_flight: u64) -> Self {
        Self {
            state: b,
            healthy: b.health.is_active_healthy(),
            ejected: b.health.is_ejected(now),
            available: b.model.weight > 0 && b.health.is_available(now, false),
            load: b.health.load(),
            requests: b.counters.requests.load(Ordering::Relaxed),
            failures: b.counters.failures.load(Ordering::Relaxed),
            rate_limited: b.counters.rate_limited.load(Ordering::Relaxed),
            in_flight,
            last_used_ms: b.counters.last_used_ms.load(Ordering::Relaxed),
            tokens_per_minute: b.counters.tokens.per_minute(now),
        }
    }

    pub fn model(&self) -> &'a model::Backend {
        &self.state.model
    }

    pub fn name(&self) -> &'a str {
        &self.state.model.name
    }

    /// Deep health, per model.
    pub fn models(&self) -> Vec<(String, ModelLoad)> {
        self.state.health.models()
    }
}

// === impl KeyPoolState ===

impl KeyPoolState {
    /// Every key's state and usage.
    pub fn keys(&self) -> Vec<KeyView> {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        self.engine
            .snapshot()
            .into_iter()
            .map(|k| {
                let (state, reason, until) = match &k.state {
                    keys::KeyState::Active => ("active", None, None),
                    keys::KeyState::Probation => (
                        "active",
                        Some("on probation after being disabled".to_string()),
                        None,
                    ),
                    keys::KeyState::Cooling { until } => (
                        "cooling",
                        Some("rate limited upstream (429)".to_string()),
                        Some(ms(*until)),
                    ),
                    keys::KeyState::Exhausted { until } => (
                        "exhausted",
                        Some("quota spent".to_string()),
                        Some(ms(*until)),
                    ),
                    keys::KeyState::Disabled { reason, until } => {
                        ("disabled", Some(reason.clone()), until.map(ms))
                    }
                };
                KeyView {
                    state,
                    reason,
                    until_unix_ms: until,
                    requests: k.requests,
                    failures: k.failures,
                    rate_limited: k.rate_limited,
                    tokens: k.tokens,
                    requests_this_minute: k.requests_in_window,
                    tokens_this_minute: k.tokens_in_window,
                    in_flight: k.in_flight,
                    requests_per_minute: k.limits.requests_per_minute,
                    tokens_per_minute: k.limits.tokens_per_minute,
                    requests_left_this_minute: k
                        .limits
                        .requests_per_minute
                        .map(|l| u64::from(l).saturating_sub(k.requests_in_window)),
                    tokens_left_this_minute: k
                        .limits
                        .tokens_per_minute
                        .map(|l| l.saturating_sub(k.tokens_in_window)),
                    last_used_unix_ms: k.last_used.map(ms),
                    id: k.id,
                }
            })
            .collect()
    }
}
