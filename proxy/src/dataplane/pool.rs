//! A pool ready to serve: its backends with their counters and health, backend choice (the
//! balancer over what may take traffic now) and, in failover mode, the state machine that
//! decides which role takes traffic. Placement (`placement`) is the other half of
//! [`PoolState`]: where a request goes before balancing.

use crate::affinity::AffinityStore;
use crate::balance::{Balancer, Candidates, InFlight, OwnedInFlightGuard};
use crate::health::{BackendHealth, CheckLabel};
use crate::http::upstream::Target;
use crate::keys;
use crate::metrics::{BackendSeries, KeyPoolSeries, Metrics, PoolClusterMetrics, PoolSeries};
use crate::multicluster::TokenRate;
use keyway_api::model::{self, Mode, ObjectId, Role};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A pool ready to serve.
pub struct PoolState {
    pub model: model::Pool,
    /// `namespace/name`, the metrics label.
    pub label: String,
    pub backends: Vec<BackendState>,
    pub(super) balancer: Balancer,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) hash_header: http::HeaderName,
    /// Failover mode: the role that took traffic last (0 none yet, 1 primary, 2 secondary).
    pub(super) active_role: AtomicU8,
    /// `Ok(None)`: no key injection; `Err(name)`: the referenced key pool is missing.
    pub keys: Result<Option<Arc<KeyPoolState>>, String>,
    pub(super) metrics: Metrics,
    /// User assignments and sessions (`spec.affinity`); kept across snapshots.
    pub(crate) affinity: Option<Arc<AffinityStore>>,
    /// multiCluster: the header naming the model, read before the body.
    pub(crate) model_header: Option<http::HeaderName>,
    pub(crate) cluster_metrics: PoolClusterMetrics,
    /// This pool's request series, resolved once.
    pub(crate) series: PoolSeries,
}

pub struct BackendState {
    pub model: model::Backend,
    pub counters: Arc<Counters>,
    pub health: Arc<BackendHealth>,
    /// Where this backend's connections go (the upstream pool's key).
    pub target: Arc<Target>,
    /// This backend's request series, resolved once.
    pub(crate) series: BackendSeries,
}

// === impl BackendState ===

impl BackendState {
    /// The TLS server name of an `https` backend with a `hostHeader`: that host, so the
    /// certificate is checked for the name the requests are addressed to. `None` otherwise
    /// (the endpoint's host is used).
    pub fn tls_server_name(&self) -> Option<rustls::pki_types::ServerName<'static>> {
        tls_server_name(&self.model)
    }
}

/// The connection target of a backend: its endpoint, its TLS server name (`hostHeader`,
/// else the endpoint's host) and whether it speaks HTTP/2 by prior knowledge.
pub fn upstream_target(backend: &model::Backend) -> Arc<Target> {
    let https = backend.endpoint.scheme == model::Scheme::Https;
    let server_name = tls_server_name(backend)
        .or_else(|| crate::http::client::server_name(&backend.endpoint.authority));
    Arc::new(Target {
        https,
        authority: backend.endpoint.authority.clone(),
        server_name,
        http2: backend.protocol == model::Protocol::Http2,
    })
}

/// [`BackendState::tls_server_name`] of a backend's model.
pub fn tls_server_name(backend: &model::Backend) -> Option<rustls::pki_types::ServerName<'static>> {
    if backend.endpoint.scheme != model::Scheme::Https {
        return None;
    }
    crate::http::client::server_name(backend.host_header.as_deref()?)
}

/// What the failover decision sees and does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveRole {
    /// Balanced mode: every backend may take traffic.
    All,
    Primary,
    Secondary,
}

/// Keys of one `ApiKeyPool`: its settings and the selection engine (shared across snapshots,
/// so key state and usage survive config changes and rotations).
pub struct KeyPoolState {
    pub id: ObjectId,
    pub label: String,
    pub model: model::KeyPool,
    pub engine: Arc<keys::KeyPool>,
    /// This key pool's request series, resolved once per key.
    pub(crate) series: KeyPoolSeries,
}

// === impl KeyPoolState ===

impl KeyPoolState {
    /// Counts a request on key `id`.
    pub(crate) fn count_request(&self, metrics: &Metrics, id: &str) {
        match self.series.keys.get(id) {
            Some(k) => k
                .requests
                .get(|| {
                    metrics
                        .key_requests
                        .with_label_values(&[self.label.as_str(), id])
                })
                .inc(),
            None => metrics
                .key_requests
                .with_label_values(&[self.label.as_str(), id])
                .inc(),
        }
    }

    /// The tokens counter of key `id`.
    pub(crate) fn tokens_counter(&self, metrics: &Metrics, id: &str) -> prometheus::IntCounter {
        let resolve = || {
            metrics
                .key_tokens
                .with_label_values(&[self.label.as_str(), id])
        };
        match self.series.keys.get(id) {
            Some(k) => k.tokens.get(resolve).clone(),
            None => resolve(),
        }
    }
}

/// Monotonic usage counters.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Answers with status 429 (a key's business, never a backend failure; shown on the
    /// status page).
    pub rate_limited: AtomicU64,
    /// Unix milliseconds of the last use; 0 = never.
    pub last_used_ms: AtomicU64,
    /// Tokens served in the last minute (multiCluster rebalancing).
    pub tokens: TokenRate,
}

// === impl PoolState ===

impl PoolState {
    /// The affinity hash of a request (consistent hashing), from the configured header.
    pub fn affinity_hash(&self, headers: &http::HeaderMap) -> Option<u64> {
        if self.model.strategy != model::Strategy::ConsistentHash {
            return None;
        }
        headers
            .get(&self.hash_header)
            .map(|v| crate::hash::hash_key(v.as_bytes()))
    }

    /// Chooses a backend for one attempt, never one in `exclude` (already tried).
    pub fn pick(&self, hash: Option<u64>, exclude: &[usize]) -> Option<usize> {
        self.pick_at(Instant::now(), hash, exclude)
    }

    /// [`PoolState::pick`] at `now` (the request path reads the clock once per attempt).
    pub fn pick_at(&self, now: Instant, hash: Option<u64>, exclude: &[usize]) -> Option<usize> {
        let all_ejected = !self
            .backends
            .iter()
            .any(|b| b.model.weight > 0 && b.health.is_available(now, false));
        let role = self.active_role_at(now);
        let mut view = PoolNow {
            pool: self,
            now,
            role,
            ignore_ejection: all_ejected,
            role_available: false,
        };
        view.role_available = (0..self.backends.len())
            .any(|i| view.in_role(i) && self.backends[i].model.weight > 0 && view.available(i));
        self.balancer.pick_excluding(hash, &view, exclude)
    }

    /// Whether a backend not in `exclude` could take a retry now.
    pub fn can_retry(&self, exclude: &[usize]) -> bool {
        self.can_retry_at(Instant::now(), exclude)
    }

    /// Whether a backend not in `exclude` could take a retry at `now`.
    pub fn can_retry_at(&self, now: Instant, exclude: &[usize]) -> bool {
        let role = self.active_role_at(now);
        let view = PoolNow {
            pool: self,
            now,
            role,
            ignore_ejection: false,
            role_available: true,
        };
        (0..self.backends.len()).any(|i| {
            !exclude.contains(&i)
                && self.backends[i].model.weight > 0
                && view.in_role(i)
                && view.available(i)
        })
    }

    /// Counts a request on backend `idx` until the guard drops (least-request balancing).
    pub fn start_request(&self, idx: usize) -> OwnedInFlightGuard {
        self.in_flight.start_owned(idx)
    }

    /// Feeds passive outlier detection with one request's outcome.
    pub fn observe(&self, idx: usize, success: bool) {
        self.observe_at(idx, success, Instant::now());
    }

    /// Feeds passive outlier detection with one request's outcome, known at `now`.
    pub fn observe_at(&self, idx: usize, success: bool, now: Instant) {
        let Some(b) = self.backends.get(idx) else {
            return;
        };
        if let Some(ejection) = b.health.record_outcome(success, now) {
            tracing::warn!(pool = %self.label, backend = %b.model.name, duration = ?ejection.duration, level = ejection.level, "backend ejected after consecutive failures");
            self.metrics.health.on_ejection(
                &CheckLabel {
                    pool: self.label.clone(),
                    backend: b.model.name.clone(),
                },
                &ejection,
            );
        }
    }

    /// Failover mode: which role takes traffic now, logging and counting every switch.
    pub fn active_role(&self) -> ActiveRole {
        self.active_role_at(Instant::now())
    }

    fn active_role_at(&self, now: Instant) -> ActiveRole {
        self.active_role_why(now).0
    }

    /// Failover mode: which role takes traffic now and why (`primary_healthy`, `evacuated`,
    /// `secondary_unhealthy`, `primary_unhealthy`, `all_unhealthy`; `balanced` outside
    /// failover mode), logging and counting every switch.
    pub fn active_role_why(&self, now: Instant) -> (ActiveRole, &'static str) {
        if self.model.mode != Mode::Failover {
            return (ActiveRole::All, "balanced");
        }
        let up = |role: Role| {
            self.backends.iter().any(|b| {
                b.model.role == Some(role)
                    && b.model.weight > 0
                    && b.health.is_available(now, false)
            })
        };
        let (primary_up, secondary_up) = (up(Role::Primary), up(Role::Secondary));
        let (role, reason) = if self.model.evacuate_primary && secondary_up {
            (ActiveRole::Secondary, "evacuated")
        } else if primary_up {
            (
                ActiveRole::Primary,
                if self.model.evacuate_primary {
                    "secondary_unhealthy"
                } else {
                    "primary_healthy"
                },
            )
        } else if secondary_up {
            (ActiveRole::Secondary, "primary_unhealthy")
        } else {
            // Nothing is healthy: keep trying the primary rather than refusing everything.
            (ActiveRole::Primary, "all_unhealthy")
        };
        let code = match role {
            ActiveRole::Primary => 1,
            _ => 2,
        };
        let previous = self.active_role.swap(code, Ordering::Relaxed);
        if previous != code {
            let to = if code == 1 { "primary" } else { "secondary" };
            if previous != 0 {
                self.metrics
                    .failovers
                    .with_label_values(&[self.label.as_str(), to])
                    .inc();
                tracing::warn!(pool = %self.label, to, reason, "failover: traffic moved");
            } else {
                tracing::info!(pool = %self.label, to, reason, "failover: initial active role");
            }
        }
        (role, reason)
    }

    /// The name of the backend traffic goes to in failover mode (the first available of the
    /// active role), for status.
    pub fn active_backend(&self) -> Option<&str> {
        let role = match self.active_role() {
            ActiveRole::All => return None,
            ActiveRole::Primary => Role::Primary,
            ActiveRole::Secondary => Role::Secondary,
        };
        let now = Instant::now();
        self.backends
            .iter()
            .filter(|b| b.model.role == Some(role))
            .find(|b| b.health.is_available(now, false))
            .or_else(|| self.backends.iter().find(|b| b.model.role == Some(role)))
            .map(|b| b.model.name.as_str())
    }

    /// Backends that may take traffic now.
    pub fn healthy_count(&self) -> usize {
        self.healthy_count_at(Instant::now())
    }

    /// Backends that may take traffic at `now`.
    pub fn healthy_count_at(&self, now: Instant) -> usize {
        self.backends
            .iter()
            .filter(|b| b.model.weight > 0 && b.health.is_available(now, false))
            .count()
    }
}

/// The balancer's view of a pool at one instant.
struct PoolNow<'a> {
    pool: &'a PoolState,
    now: Instant,
    role: ActiveRole,
    ignore_ejection: bool,
    /// Some backend of the active role is available; if none is, the role's backends are
    /// tried anyway rather than refusing every request.
    role_available: bool,
}

impl Candidates for PoolNow<'_> {
    fn len(&self) -> usize {
        self.pool.backends.len()
    }

    fn eligible(&self, i: usize) -> bool {
        self.in_role(i) && (!self.role_available || self.available(i))
    }

    fn in_flight(&self, i: usize) -> u64 {
        self.pool.in_flight.get(i)
    }

    fn load(&self, i: usize) -> Option<(f64, f64)> {
        self.pool.backends[i].health.load()
    }

    fn in_flight_summary(&self) -> Option<(u64, usize)> {
        None
    }
}

impl PoolNow<'_> {
    fn in_role(&self, i: usize) -> bool {
        let role = self.pool.backends[i].model.role;
        match self.role {
            ActiveRole::All => true,
            ActiveRole::Primary => role == Some(Role::Primary),
            ActiveRole::Secondary => role == Some(Role::Secondary),
        }
    }

    fn available(&self, i: usize) -> bool {
        self.pool.backends[i]
            .health
            .is_available(self.now, self.ignore_ejection)
    }
}

// === impl Counters ===

impl Counters {
    pub fn record_use(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_used_ms.store(now, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
}
