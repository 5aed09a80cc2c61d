//! The live data-plane state: the config snapshot compiled into routing tables, backend
//! cursors and key pools, swapped atomically on every new snapshot. Requests read it without
//! locks (`ArcSwap::load`); counters of backends and keys that survive a swap are kept.

use crate::affinity::AffinityStore;
use crate::balance::{Balancer, Candidates, InFlight, OwnedInFlightGuard};
use crate::cluster::TokenRate;
use crate::health::{self, BackendHealth, CheckLabel, HealthSettings, OutlierSettings};
use crate::http::UpstreamClient;
use crate::keys;
use crate::metrics::{Metrics, PoolClusterMetrics};
use arc_swap::ArcSwap;
use keyway_api::model::{self, Mode, ObjectId, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Bodies read ahead for model routes are capped at this size.
const MODEL_PEEK_BYTES: usize = 1 << 20;

/// Holds the current [`Router`] and the state that outlives any one snapshot: counters, and
/// backend health with its checker tasks.
pub struct Dataplane {
    current: ArcSwap<Router>,
    loaded: std::sync::atomic::AtomicBool,
    /// Shutdown has begun: `/readyz` fails so load balancers stop sending new traffic.
    draining: std::sync::atomic::AtomicBool,
    registry: Mutex<Registry>,
    metrics: Metrics,
    health_client: OnceLock<Option<health::HealthClient>>,
}

/// One compiled snapshot.
#[derive(Default)]
pub struct Router {
    pub snapshot: Arc<model::Snapshot>,
    pub pools: Vec<Arc<PoolState>>,
    pub key_pools: Vec<Arc<KeyPoolState>>,
    /// Bytes of request body to read ahead (model routes, replayable retries).
    read_ahead: usize,
    /// Some pool routes or places requests by the body's `model`.
    needs_model: bool,
}

/// A pool ready to serve.
pub struct PoolState {
    pub model: model::Pool,
    /// `namespace/name`, the metrics label.
    pub label: String,
    pub backends: Vec<BackendState>,
    balancer: Balancer,
    in_flight: Arc<InFlight>,
    hash_header: http::HeaderName,
    /// Failover mode: the role that took traffic last (0 none yet, 1 primary, 2 secondary).
    active_role: AtomicU8,
    /// `Ok(None)`: no key injection; `Err(name)`: the referenced key pool is missing.
    pub keys: Result<Option<Arc<KeyPoolState>>, String>,
    metrics: Metrics,
    /// User assignments and sessions (`spec.affinity`); kept across snapshots.
    pub(crate) affinity: Option<Arc<AffinityStore>>,
    /// multiCluster: the header naming the model, read before the body.
    pub(crate) model_header: Option<http::HeaderName>,
    pub(crate) cluster_metrics: PoolClusterMetrics,
}

pub struct BackendState {
    pub model: model::Backend,
    pub counters: Arc<Counters>,
    pub health: Arc<BackendHealth>,
    /// A client for this backend when it needs its own (HTTP/2 only, or the pool's connect
    /// timeout), built on first use.
    pub client: OnceLock<UpstreamClient>,
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
}

/// Monotonic usage counters.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Unix milliseconds of the last use; 0 = never.
    pub last_used_ms: AtomicU64,
    /// Tokens served in the last minute (multiCluster rebalancing).
    pub tokens: TokenRate,
}

#[derive(Default)]
struct Registry {
    backends: HashMap<(ObjectId, String), Arc<Counters>>,
    key_engines: HashMap<ObjectId, Arc<keys::KeyPool>>,
    health: HashMap<(ObjectId, String), HealthEntry>,
    affinity: HashMap<ObjectId, Arc<AffinityStore>>,
}

/// A backend's health and the task probing it; replaced when its check settings change.
struct HealthEntry {
    check: Option<model::HealthCheck>,
    endpoint: model::Endpoint,
    outlier: model::Outlier,
    health: Arc<BackendHealth>,
    checker: Option<JoinHandle<()>>,
}

impl Drop for HealthEntry {
    fn drop(&mut self) {
        if let Some(t) = self.checker.take() {
            t.abort();
        }
    }
}

// === impl Dataplane ===

impl Dataplane {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            current: ArcSwap::from_pointee(Router::default()),
            loaded: Default::default(),
            draining: Default::default(),
            registry: Default::default(),
            metrics,
            health_client: OnceLock::new(),
        }
    }

    /// The router to use for one request.
    pub fn router(&self) -> Arc<Router> {
        self.current.load_full()
    }

    /// True once a snapshot has been applied.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Ready for new traffic: a snapshot is loaded and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.is_loaded() && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the proxy as shutting down (`/readyz` answers 503 from now on).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Compiles and swaps in a snapshot. In-flight requests keep the router they started with.
    pub fn apply(&self, snapshot: Arc<model::Snapshot>) {
        let health_client = self.health_client.get_or_init(|| match health::build_client() {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::error!(%error, "cannot build the health-check client; active checks are off");
                None
            }
        });
        let router = {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            reg.compile(snapshot, &self.metrics, health_client.as_ref())
        };
        for p in &router.pools {
            self.metrics
                .backends
                .with_label_values(&[p.label.as_str()])
                .set(p.backends.len() as i64);
        }
        self.current.store(Arc::new(router));
        self.loaded.store(true, Ordering::Release);
    }
}

// === impl CounterRegistry ===

impl Registry {
    fn compile(
        &mut self,
        snapshot: Arc<model::Snapshot>,
        metrics: &Metrics,
        health_client: Option<&health::HealthClient>,
    ) -> Router {
        // Forget counters of objects that left the config, keep the rest.
        self.backends.retain(|(pool, backend), _| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.id == pool && p.backends.iter().any(|b| &b.name == backend))
        });
        self.health.retain(|(pool, backend), _| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.id == pool && p.backends.iter().any(|b| &b.name == backend))
        });
        self.key_engines
            .retain(|id, _| snapshot.key_pools.iter().any(|k| &k.id == id));
        self.affinity.retain(|id, store| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.id == id && p.affinity.as_ref() == Some(&store.settings))
        });
        let key_pools: Vec<Arc<KeyPoolState>> = snapshot
            .key_pools
            .iter()
            .map(|kp| {
                let (settings, configs) = engine_config(kp);
                let engine = match self.key_engines.get(&kp.id) {
                    Some(e) => {
                        e.update(settings, configs);
                        e.clone()
                    }
                    None => {
                        let e = Arc::new(keys::KeyPool::new(settings, configs));
                        self.key_engines.insert(kp.id.clone(), e.clone());
                        e
                    }
                };
                Arc::new(KeyPoolState {
                    id: kp.id.clone(),
                    label: kp.id.to_string(),
                    model: kp.clone(),
                    engine,
                })
            })
            .collect();

        let pools = snapshot
            .pools
            .iter()
            .map(|p| {
                let label = p.id.to_string();
                let backends: Vec<BackendState> = p
                    .backends
                    .iter()
                    .map(|b| BackendState {
                        model: b.clone(),
                        counters: self
                            .backends
                            .entry((p.id.clone(), b.name.clone()))
                            .or_default()
                            .clone(),
                        health: self.health_for(p, b, &label, metrics, health_client),
                        client: OnceLock::new(),
                    })
                    .collect();
                let hash_header = http::HeaderName::from_bytes(p.hash_header.as_bytes())
                    .unwrap_or_else(|_| http::HeaderName::from_static("user-id"));
                let keys = match &p.key_pool {
                    None => Ok(None),
                    Some(name) => key_pools
                        .iter()
                        .find(|k| k.id.namespace == p.id.namespace && &k.id.name == name)
                        .map(|k| Some(k.clone()))
                        .ok_or_else(|| format!("{}/{name}", p.id.namespace)),
                };
                let affinity = p.affinity.as_ref().map(|a| {
                    self.affinity
                        .entry(p.id.clone())
                        .or_insert_with(|| {
                            Arc::new(AffinityStore::new(a.clone(), &label, &metrics.clusters))
                        })
                        .clone()
                });
                let model_header = p
                    .cluster_balance
                    .model_header
                    .as_ref()
                    .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
                Arc::new(PoolState {
                    cluster_metrics: metrics.clusters.for_pool(&label),
                    affinity,
                    model_header,
                    label,
                    balancer: Balancer::for_pool(p),
                    in_flight: Arc::new(InFlight::new(backends.len())),
                    model: p.clone(),
                    backends,
                    hash_header,
                    active_role: AtomicU8::new(0),
                    keys,
                    metrics: metrics.clone(),
                })
            })
            .collect::<Vec<_>>();

        let needs_model = snapshot.pools.iter().any(model::Pool::needs_model);
        let retry_buffer = snapshot
            .pools
            .iter()
            // Key refusals (429) are replayed with the next key even without backend retries.
            .filter(|p| p.retry.max_retries > 0 || p.key_pool.is_some())
            .map(|p| p.retry.buffer_bytes as usize)
            .max()
            .unwrap_or(0);
        let read_ahead = retry_buffer.max(if needs_model { MODEL_PEEK_BYTES } else { 0 });
        Router {
            snapshot,
            pools,
            key_pools,
            read_ahead,
            needs_model,
        }
    }

    /// The backend's health: kept across snapshots while its check, endpoint and outlier
    /// settings stay the same; otherwise a fresh state and a new checker task.
    fn health_for(
        &mut self,
        pool: &model::Pool,
        backend: &model::Backend,
        label: &str,
        metrics: &Metrics,
        client: Option<&health::HealthClient>,
    ) -> Arc<BackendHealth> {
        let key = (pool.id.clone(), backend.name.clone());
        if let Some(e) = self.health.get(&key)
            && e.check == backend.health_check
            && e.endpoint == backend.endpoint
            && e.outlier == pool.outlier
        {
            return e.health.clone();
        }
        let outlier = OutlierSettings {
            consecutive_failures: pool.outlier.consecutive_failures,
            base_ejection: pool.outlier.base_ejection,
            max_ejection: pool.outlier.max_ejection,
            ..OutlierSettings::default()
        };
        let check_label = CheckLabel {
            pool: label.to_string(),
            backend: backend.name.clone(),
        };
        let (health, checker) = match (&backend.health_check, client) {
            (Some(check), Some(client)) => {
                let target = match &check.target {
                    model::HealthTarget::Path(p) => format!("{}{p}", backend.endpoint),
                    model::HealthTarget::Url(u) => u.clone(),
                };
                match target.parse::<http::Uri>() {
                    Ok(target) => {
                        let settings = HealthSettings {
                            target,
                            interval: check.interval,
                            timeout: check.timeout,
                            fail_threshold: check.fail_threshold,
                            success_threshold: check.success_threshold,
                            deep: check.deep,
                        };
                        let health = Arc::new(BackendHealth::from_settings(&settings, outlier));
                        let task = health::spawn_checker(
                            check_label,
                            settings,
                            health.clone(),
                            client.clone(),
                            metrics.health.clone(),
                        );
                        (health, Some(task))
                    }
                    Err(error) => {
                        tracing::error!(pool = %label, backend = %backend.name, %error, "health check target is not a URI; not checking");
                        (Arc::new(BackendHealth::new(1, 1, outlier)), None)
                    }
                }
            }
            _ => (Arc::new(BackendHealth::new(1, 1, outlier)), None),
        };
        metrics.health.forget(&CheckLabel {
            pool: label.to_string(),
            backend: backend.name.clone(),
        });
        self.health.insert(
            key,
            HealthEntry {
                check: backend.health_check.clone(),
                endpoint: backend.endpoint.clone(),
                outlier: pool.outlier.clone(),
                health: health.clone(),
                checker,
            },
        );
        health
    }
}

// === impl Router ===

impl Router {
    /// The pool a request belongs to: the most specific matching route wins (longest path
    /// prefix, then most headers); a pool without routes catches what no route claims.
    pub fn route(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        model: Option<&str>,
    ) -> Option<&Arc<PoolState>> {
        // (has route, path prefix length, header count): larger is more specific.
        type Score = (usize, usize, usize);
        let mut best: Option<(&Arc<PoolState>, Score)> = None;
        for pool in &self.pools {
            let score = if pool.model.routes.is_empty() {
                Some((0, 0, 0))
            } else {
                pool.model
                    .routes
                    .iter()
                    .filter(|r| route_matches(r, path, headers, model))
                    .map(|r| {
                        let prefix = r.path_prefix.as_ref().map_or(0, |p| p.len());
                        (1, prefix, r.headers.len() + usize::from(r.model.is_some()))
                    })
                    .max()
            };
            if let Some(score) = score
                && best.as_ref().is_none_or(|(_, s)| score > *s)
            {
                best = Some((pool, score));
            }
        }
        best.map(|(p, _)| p)
    }

    /// How much of a request body to read before routing.
    pub fn read_ahead_bytes(&self) -> usize {
        self.read_ahead
    }

    /// Whether routing or placement reads the JSON body's `model`.
    pub fn needs_model(&self) -> bool {
        self.needs_model
    }
}

fn route_matches(
    route: &model::Route,
    path: &str,
    headers: &http::HeaderMap,
    body_model: Option<&str>,
) -> bool {
    if let Some(prefix) = &route.path_prefix
        && !path.starts_with(prefix.as_str())
    {
        return false;
    }
    if let Some(glob) = &route.model {
        match body_model {
            Some(m) if model::glob_match(glob, m) => {}
            _ => return false,
        }
    }
    route.headers.iter().all(|(name, value)| {
        headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    })
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
        let now = Instant::now();
        let all_ejected = !self
            .backends
            .iter()
            .any(|b| b.model.weight > 0 && b.health.is_available(now, false));
        let role = self.active_role_at(now);
        let mut view = View {
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
        let now = Instant::now();
        let role = self.active_role_at(now);
        let view = View {
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
        let Some(b) = self.backends.get(idx) else {
            return;
        };
        if let Some(ejection) = b.health.record_outcome(success, Instant::now()) {
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
        if self.model.mode != Mode::Failover {
            return ActiveRole::All;
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
        role
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
        let now = Instant::now();
        self.backends
            .iter()
            .filter(|b| b.model.weight > 0 && b.health.is_available(now, false))
            .count()
    }
}

/// The balancer's view of a pool at one instant.
struct View<'a> {
    pool: &'a PoolState,
    now: Instant,
    role: ActiveRole,
    ignore_ejection: bool,
    /// Some backend of the active role is available; if none is, the role's backends are
    /// tried anyway rather than refusing every request.
    role_available: bool,
}

impl Candidates for View<'_> {
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

impl View<'_> {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_left_this_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_left_this_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_unix_ms: Option<u64>,
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

/// The engine's view of a resolved key pool.
fn engine_config(kp: &model::KeyPool) -> (keys::PoolSettings, Vec<keys::KeyConfig>) {
    let settings = keys::PoolSettings {
        selection: match kp.selection {
            model::Selection::RoundRobin => keys::Selection::RoundRobin,
            model::Selection::Weighted => keys::Selection::Weighted,
            model::Selection::LeastUsed => keys::Selection::LeastUsed,
            model::Selection::TimeWindow => keys::Selection::TimeWindow {
                window: kp.time_window,
            },
        },
        default_cooldown: kp.default_cooldown,
        failure_ratio: f64::from(kp.failure_ratio_permille) / 1000.0,
        min_requests: kp.min_requests,
        disable_backoff: kp.disable_backoff,
        auth_reprobe_interval: kp.reprobe_interval,
        queue_max_len: kp.queue_max_len as usize,
        queue_max_wait: kp.queue_max_wait,
        stickiness: kp.stickiness.as_ref().map(|s| keys::Stickiness {
            load_factor: f64::from(s.load_factor_pct) / 100.0,
        }),
    };
    let configs = kp
        .keys
        .iter()
        .map(|k| keys::KeyConfig::new(k.id.clone(), k.value.clone()).with_limits(k.limits))
        .collect();
    (settings, configs)
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
}

#[cfg(test)]
mod tests;
