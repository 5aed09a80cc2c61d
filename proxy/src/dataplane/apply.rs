//! Applying a config: each snapshot a source publishes is compiled into a [`Router`] (routing
//! table, balancers, per-backend state) and swapped in. State that must outlive a snapshot is
//! kept in a [`Registry`] and handed to the new router: backend counters, backend health with
//! its checker task, key engines (key state and usage survive rotations) and affinity stores.

use super::pool::{BackendState, KeyPoolState, PoolState};
use super::route::Router;
use super::{Changes, Counters, Dataplane};
use crate::affinity::AffinityStore;
use crate::balance::{Balancer, InFlight};
use crate::config::SnapshotRx;
use crate::health::{self, BackendHealth, CheckLabel, HealthSettings, OutlierSettings};
use crate::keys;
use crate::metrics::KeyPoolSeries;
use crate::metrics::Metrics;
use keyway_api::model::{self, ObjectId, Snapshot};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::task::JoinHandle;

/// Bodies read ahead for model routes are capped at this size.
const MODEL_PEEK_BYTES: usize = 1 << 20;

/// Applies every snapshot published on `rx`, in order, skipping the one applied last (`last`,
/// applied before serving began).
pub(crate) async fn apply_snapshots(
    mut rx: SnapshotRx,
    dataplane: Arc<Dataplane>,
    mut last: Option<Arc<Snapshot>>,
    source: &'static str,
) {
    while rx.changed().await.is_ok() {
        let snapshot = rx.borrow_and_update().clone();
        if let Some(s) = snapshot {
            if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &s)) {
                continue;
            }
            apply_logged(&dataplane, last.as_deref(), s.clone(), source);
            last = Some(s);
        }
    }
}

/// Applies a snapshot, bumps the config version and logs what changed (ids only).
pub(crate) fn apply_logged(
    dataplane: &Dataplane,
    old: Option<&Snapshot>,
    new: Arc<Snapshot>,
    source: &'static str,
) {
    let changes = Changes::between(old, &new);
    dataplane.apply(new);
    let v = dataplane.version.fetch_add(1, Ordering::AcqRel) + 1;
    changes.log(v, source);
}

/// What outlives a snapshot, by pool and backend (or key pool) id.
#[derive(Default)]
pub(super) struct Registry {
    backends: HashMap<(ObjectId, String), Arc<Counters>>,
    key_engines: HashMap<ObjectId, Arc<keys::KeyPool>>,
    health: HashMap<(ObjectId, String), HealthEntry>,
    affinity: HashMap<ObjectId, Arc<AffinityStore>>,
}

/// A backend's health and the task probing it; replaced when its check settings change.
struct HealthEntry {
    check: Option<model::HealthCheck>,
    endpoint: model::Endpoint,
    /// The probe's Host and TLS server name, and its protocol, follow these.
    host_header: Option<String>,
    protocol: model::Protocol,
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

// === impl Registry ===

impl Registry {
    pub(super) fn compile(
        &mut self,
        snapshot: Arc<model::Snapshot>,
        metrics: &Metrics,
        health_client: Option<&health::HealthClients>,
        upstream_trust: &Arc<rustls::ClientConfig>,
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
                let series = KeyPoolSeries {
                    keys: configs
                        .iter()
                        .map(|c| (Arc::from(c.id.as_str()), Default::default()))
                        .collect(),
                    ..Default::default()
                };
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
                    series,
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
                        target: super::pool::upstream_target(b),
                        series: Default::default(),
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
                            Arc::new(AffinityStore::with_trust(
                                a.clone(),
                                &label,
                                &metrics.clusters,
                                upstream_trust.clone(),
                            ))
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
                    series: Default::default(),
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
            home_namespace: None,
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
        client: Option<&health::HealthClients>,
    ) -> Arc<BackendHealth> {
        let key = (pool.id.clone(), backend.name.clone());
        if let Some(e) = self.health.get(&key)
            && e.check == backend.health_check
            && e.endpoint == backend.endpoint
            && e.host_header == backend.host_header
            && e.protocol == backend.protocol
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
        // The previous checker's series go before the new checker registers its own: on a
        // multi-threaded runtime the new task may start at once, and forgetting after the
        // spawn would remove the series it just created (it keeps counting into orphans).
        metrics.health.forget(&check_label);
        let (health, checker) = match (&backend.health_check, client) {
            (Some(check), Some(client)) => {
                let target = match &check.target {
                    model::HealthTarget::Path(p) => format!(
                        "{}{}",
                        backend.endpoint,
                        crate::http::forward::without_repeated_segment(
                            &backend.endpoint.path_prefix,
                            p
                        )
                    ),
                    model::HealthTarget::Url(u) => u.clone(),
                };
                match target.parse::<http::Uri>() {
                    Ok(target) => {
                        // The backend's hostHeader names the probed service (and its TLS
                        // server) when the probe goes to the backend's own host.
                        let own_host = target.authority().map(|a| a.as_str())
                            == Some(backend.endpoint.authority.as_str())
                            || matches!(check.target, model::HealthTarget::Path(_));
                        let host = backend
                            .host_header
                            .as_deref()
                            .filter(|_| own_host)
                            .and_then(|h| http::HeaderValue::from_str(h).ok());
                        let server_name = if own_host {
                            super::pool::tls_server_name(backend)
                        } else {
                            None
                        };
                        let http2 = backend.protocol == model::Protocol::Http2;
                        let settings = HealthSettings {
                            target,
                            interval: check.interval,
                            timeout: check.timeout,
                            fail_threshold: check.fail_threshold,
                            success_threshold: check.success_threshold,
                            deep: check.deep,
                            host,
                        };
                        let health = Arc::new(BackendHealth::from_settings(&settings, outlier));
                        let task = health::spawn_checker(
                            check_label,
                            settings,
                            health.clone(),
                            client.for_backend(server_name, http2),
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
        self.health.insert(
            key,
            HealthEntry {
                check: backend.health_check.clone(),
                endpoint: backend.endpoint.clone(),
                host_header: backend.host_header.clone(),
                protocol: backend.protocol,
                outlier: pool.outlier.clone(),
                health: health.clone(),
                checker,
            },
        );
        health
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
