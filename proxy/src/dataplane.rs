//! The live data-plane state: the config snapshot compiled into routing tables, backend
//! cursors and key pools, swapped atomically on every new snapshot. Requests read it without
//! locks (`ArcSwap::load`); counters of backends and keys that survive a swap are kept.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use keyway_api::model::{self, ObjectId};
use keyway_api::secret::SecretValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Holds the current [`Router`] and the counters that outlive any one snapshot.
pub struct Dataplane {
    current: ArcSwap<Router>,
    loaded: std::sync::atomic::AtomicBool,
    counters: Mutex<CounterRegistry>,
    metrics: Metrics,
}

/// One compiled snapshot.
#[derive(Default)]
pub struct Router {
    pub snapshot: Arc<model::Snapshot>,
    pub pools: Vec<Arc<PoolState>>,
    pub key_pools: Vec<Arc<KeyPoolState>>,
}

/// A pool ready to serve.
pub struct PoolState {
    pub model: model::Pool,
    /// `namespace/name`, the metrics label.
    pub label: String,
    pub backends: Vec<BackendState>,
    /// Indexes into `backends` of those that take traffic (weight > 0).
    eligible: Vec<usize>,
    cursor: AtomicUsize,
    /// `Ok(None)`: no key injection; `Err(name)`: the referenced key pool is missing.
    pub keys: Result<Option<Arc<KeyPoolState>>, String>,
}

pub struct BackendState {
    pub model: model::Backend,
    pub counters: Arc<Counters>,
}

/// Keys of one `ApiKeyPool`.
pub struct KeyPoolState {
    pub id: ObjectId,
    pub label: String,
    pub selection: model::Selection,
    pub keys: Vec<KeyState>,
    cursor: AtomicUsize,
}

pub struct KeyState {
    pub id: String,
    pub value: SecretValue,
    pub counters: Arc<Counters>,
}

/// Monotonic usage counters.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Unix milliseconds of the last use; 0 = never.
    pub last_used_ms: AtomicU64,
}

#[derive(Default)]
struct CounterRegistry {
    backends: HashMap<(ObjectId, String), Arc<Counters>>,
    keys: HashMap<(ObjectId, String), Arc<Counters>>,
}

// === impl Dataplane ===

impl Dataplane {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            current: ArcSwap::from_pointee(Router::default()),
            loaded: Default::default(),
            counters: Default::default(),
            metrics,
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

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Compiles and swaps in a snapshot. In-flight requests keep the router they started with.
    pub fn apply(&self, snapshot: Arc<model::Snapshot>) {
        let router = {
            let mut reg = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            reg.compile(snapshot)
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

impl CounterRegistry {
    fn compile(&mut self, snapshot: Arc<model::Snapshot>) -> Router {
        // Forget counters of objects that left the config, keep the rest.
        self.backends.retain(|(pool, backend), _| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.id == pool && p.backends.iter().any(|b| &b.name == backend))
        });
        self.keys.retain(|(kp, key), _| {
            snapshot
                .key_pools
                .iter()
                .any(|k| &k.id == kp && k.keys.iter().any(|x| &x.id == key))
        });

        let key_pools: Vec<Arc<KeyPoolState>> = snapshot
            .key_pools
            .iter()
            .map(|kp| {
                Arc::new(KeyPoolState {
                    id: kp.id.clone(),
                    label: kp.id.to_string(),
                    selection: kp.selection,
                    keys: kp
                        .keys
                        .iter()
                        .map(|k| KeyState {
                            id: k.id.clone(),
                            value: k.value.clone(),
                            counters: self
                                .keys
                                .entry((kp.id.clone(), k.id.clone()))
                                .or_default()
                                .clone(),
                        })
                        .collect(),
                    cursor: AtomicUsize::new(0),
                })
            })
            .collect();

        let pools = snapshot
            .pools
            .iter()
            .map(|p| {
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
                    })
                    .collect();
                let eligible = (0..backends.len())
                    .filter(|&i| backends[i].model.weight > 0)
                    .collect();
                let keys = match &p.key_pool {
                    None => Ok(None),
                    Some(name) => key_pools
                        .iter()
                        .find(|k| k.id.namespace == p.id.namespace && &k.id.name == name)
                        .map(|k| Some(k.clone()))
                        .ok_or_else(|| format!("{}/{name}", p.id.namespace)),
                };
                Arc::new(PoolState {
                    label: p.id.to_string(),
                    model: p.clone(),
                    backends,
                    eligible,
                    cursor: AtomicUsize::new(0),
                    keys,
                })
            })
            .collect();

        Router {
            snapshot,
            pools,
            key_pools,
        }
    }
}

// === impl Router ===

impl Router {
    /// The pool a request belongs to: the most specific matching route wins (longest path
    /// prefix, then most headers); a pool without routes catches what no route claims.
    pub fn route(&self, path: &str, headers: &http::HeaderMap) -> Option<&Arc<PoolState>> {
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
                    .filter(|r| route_matches(r, path, headers))
                    .map(|r| {
                        let prefix = r.path_prefix.as_ref().map_or(0, |p| p.len());
                        (1, prefix, r.headers.len())
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
}

fn route_matches(route: &model::Route, path: &str, headers: &http::HeaderMap) -> bool {
    if let Some(prefix) = &route.path_prefix
        && !path.starts_with(prefix.as_str())
    {
        return false;
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
    /// The next backend in turn (round robin over backends with weight > 0).
    pub fn pick_backend(&self) -> Option<&BackendState> {
        if self.eligible.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        Some(&self.backends[self.eligible[n % self.eligible.len()]])
    }
}

// === impl KeyPoolState ===

impl KeyPoolState {
    /// The next key in turn.
    pub fn pick(&self) -> Option<&KeyState> {
        if self.keys.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        Some(&self.keys[n % self.keys.len()])
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
}

#[cfg(test)]
mod tests;
