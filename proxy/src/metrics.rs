//! The proxy's Prometheus metrics. One [`Registry`] is built in `main` and handed down; label
//! values are bounded (pool, backend, key id, status class, error kind), never key values.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Every metric the proxy exports. Names are documented in the README's metrics section.
#[derive(Clone)]
pub struct Metrics {
    /// Requests answered, by pool, backend, HTTP status code.
    pub requests: IntCounterVec,
    /// Total request duration, by pool.
    pub request_duration: HistogramVec,
    /// Time spent in Keyway itself (routing, key choice, header rewriting), excluding upstream.
    pub overhead: Histogram,
    /// Requests the proxy answered itself, by reason (`no_route`, `no_keys`, `upstream_connect`, ...).
    pub rejected: IntCounterVec,
    /// Requests using each key, by pool (ApiKeyPool) and key id.
    pub key_requests: IntCounterVec,
    /// Requests in flight.
    pub in_flight: IntGauge,
    /// Config snapshots applied and rejected, by result (`applied`, `rejected`).
    pub config_updates: IntCounterVec,
    /// 1 while connected to the controller (controller mode only).
    pub controller_connected: IntGauge,
    /// Backends configured, by pool.
    pub backends: IntGaugeVec,
    /// Backends that may take traffic now (healthy and not ejected), by pool.
    pub healthy_backends: IntGaugeVec,
    /// Time from request sent upstream to response headers received, by pool.
    pub upstream_ttfb: HistogramVec,
    /// Retries on another backend, by pool and reason.
    pub retries: IntCounterVec,
    /// Failover-mode switches of the active role, by pool and destination (`primary`,
    /// `secondary`).
    pub failovers: IntCounterVec,
    /// Response bodies that ended with an error (upstream reset, idle timeout), by pool.
    pub stream_errors: IntCounterVec,
    /// Active health checks and passive ejections.
    pub health: crate::health::HealthMetrics,
    /// Tokens reported by upstreams, by key pool and key id.
    pub key_tokens: IntCounterVec,
    /// Time requests waited for an eligible key, by key pool.
    pub key_wait: HistogramVec,
    /// Requests answered 429 because no key could take them, by key pool and reason.
    pub key_unavailable: IntCounterVec,
    /// Keys by state (refreshed at scrape time), by key pool, key id and state.
    pub key_state: IntGaugeVec,
    /// Requests waiting for a key now (refreshed at scrape time), by key pool.
    pub key_queue: IntGaugeVec,
    /// Multi-cluster routing and affinity.
    pub clusters: ClusterMetrics,
}

/// Multi-cluster and affinity metrics. Gauges are refreshed at scrape time.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// 1 while the cluster is healthy and not ejected, by pool and cluster.
    pub healthy: IntGaugeVec,
    /// Tokens served in the last minute, by pool and cluster.
    pub tokens_per_minute: GaugeVec,
    /// Tokens served, by pool and cluster.
    pub tokens: IntCounterVec,
    /// Capacity and consumption summed over the cluster's models (deep health).
    pub capacity: GaugeVec,
    pub consumption: GaugeVec,
    /// Users moved to another cluster, by pool and reason (`tpm_imbalance`,
    /// `cluster_unhealthy`, `overloaded`).
    pub rebalances: IntCounterVec,
    /// Stored user assignments that changed, by pool.
    pub assignment_changes: IntCounterVec,
    /// Requests served elsewhere than placed, by pool and reason (`retry`,
    /// `session_key_unavailable`).
    pub deviations: IntCounterVec,
    /// Affinity lookups, by pool, store and result (`hit`, `miss`).
    pub lookups: IntCounterVec,
    /// Lookups and writes the memory store answered because Redis was unreachable, by pool.
    pub fallbacks: IntCounterVec,
    /// Sessions pinned to their backend from an upstream's response header, by pool.
    pub sessions_learned: IntCounterVec,
    /// Entries in the proxy's local affinity store, by pool.
    pub entries: IntGaugeVec,
}

/// One affinity store's lookup and fallback counters, labelled by pool and store.
#[derive(Clone)]
pub struct StoreMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub fallbacks: IntCounter,
}

/// One pool's handles on [`ClusterMetrics`].
#[derive(Clone)]
pub struct PoolClusterMetrics {
    pool: String,
    rebalances: IntCounterVec,
    pub assignment_changes: IntCounter,
    deviations: IntCounterVec,
    pub sessions_learned: IntCounter,
}

impl PoolClusterMetrics {
    pub fn rebalance(&self, reason: &str) {
        self.rebalances
            .with_label_values(&[self.pool.as_str(), reason])
            .inc();
    }

    pub fn deviation(&self, reason: &str) {
        self.deviations
            .with_label_values(&[self.pool.as_str(), reason])
            .inc();
    }
}

impl ClusterMetrics {
    fn new() -> prometheus::Result<Self> {
        let pc = ["pool", "cluster"];
        Ok(Self {
            healthy: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_cluster_healthy",
                    "1 while the cluster may take traffic (healthy, not ejected), by pool and cluster.",
                ),
                &pc,
            )?,
            tokens_per_minute: GaugeVec::new(
                Opts::new(
                    "keyway_proxy_cluster_tokens_per_minute",
                    "Tokens the cluster served in the last minute, by pool and cluster.",
                ),
                &pc,
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_cluster_tokens_total",
                    "Tokens the cluster served (from responses), by pool and cluster.",
                ),
                &pc,
            )?,
            capacity: GaugeVec::new(
                Opts::new(
                    "keyway_proxy_cluster_capacity",
                    "Capacity summed over the cluster's models (deep health), by pool and cluster.",
                ),
                &pc,
            )?,
            consumption: GaugeVec::new(
                Opts::new(
                    "keyway_proxy_cluster_consumption",
                    "Consumption summed over the cluster's models (deep health), by pool and cluster.",
                ),
                &pc,
            )?,
            rebalances: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_cluster_rebalances_total",
                    "Users moved to another cluster, by pool and reason.",
                ),
                &["pool", "reason"],
            )?,
            assignment_changes: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_affinity_assignment_changes_total",
                    "Stored user-to-cluster assignments that changed, by pool.",
                ),
                &["pool"],
            )?,
            deviations: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_cluster_routing_deviations_total",
                    "Requests served elsewhere than placed, by pool and reason.",
                ),
                &["pool", "reason"],
            )?,
            lookups: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_affinity_lookups_total",
                    "Affinity store lookups, by pool, store and result (hit, miss).",
                ),
                &["pool", "store", "result"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_affinity_store_fallbacks_total",
                    "Affinity lookups and writes served by the memory store while Redis was unreachable, by pool.",
                ),
                &["pool"],
            )?,
            sessions_learned: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_affinity_sessions_learned_total",
                    "Sessions pinned to a backend and key from an upstream response header, by pool.",
                ),
                &["pool"],
            )?,
            entries: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_affinity_entries",
                    "Entries in the proxy's local affinity store, by pool.",
                ),
                &["pool"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.healthy.clone()))?;
        registry.register(Box::new(self.tokens_per_minute.clone()))?;
        registry.register(Box::new(self.tokens.clone()))?;
        registry.register(Box::new(self.capacity.clone()))?;
        registry.register(Box::new(self.consumption.clone()))?;
        registry.register(Box::new(self.rebalances.clone()))?;
        registry.register(Box::new(self.assignment_changes.clone()))?;
        registry.register(Box::new(self.deviations.clone()))?;
        registry.register(Box::new(self.lookups.clone()))?;
        registry.register(Box::new(self.fallbacks.clone()))?;
        registry.register(Box::new(self.sessions_learned.clone()))?;
        registry.register(Box::new(self.entries.clone()))?;
        Ok(())
    }

    /// The handles of one pool.
    pub fn for_pool(&self, pool: &str) -> PoolClusterMetrics {
        PoolClusterMetrics {
            pool: pool.to_string(),
            rebalances: self.rebalances.clone(),
            assignment_changes: self.assignment_changes.with_label_values(&[pool]),
            deviations: self.deviations.clone(),
            sessions_learned: self.sessions_learned.with_label_values(&[pool]),
        }
    }

    /// The lookup counters of one pool's store.
    pub fn store(&self, pool: &str, store: &str) -> StoreMetrics {
        StoreMetrics {
            hits: self.lookups.with_label_values(&[pool, store, "hit"]),
            misses: self.lookups.with_label_values(&[pool, store, "miss"]),
            fallbacks: self.fallbacks.with_label_values(&[pool]),
        }
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_requests_total",
                    "Requests answered, by pool, backend and status code.",
                ),
                &["pool", "backend", "code"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "keyway_proxy_request_duration_seconds",
                    "Time from request received to response headers sent, by pool.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0,
                ]),
                &["pool"],
            )?,
            overhead: Histogram::with_opts(
                HistogramOpts::new(
                    "keyway_proxy_overhead_seconds",
                    "Time spent inside Keyway per request, excluding the upstream.",
                )
                .buckets(vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                ]),
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_rejected_requests_total",
                    "Requests answered by Keyway itself instead of an upstream, by reason.",
                ),
                &["reason"],
            )?,
            key_requests: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_key_requests_total",
                    "Requests sent with each key, by key pool and key id.",
                ),
                &["key_pool", "key_id"],
            )?,
            in_flight: IntGauge::new(
                "keyway_proxy_requests_in_flight",
                "Requests being served now.",
            )?,
            config_updates: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_config_updates_total",
                    "Config snapshots received, by result.",
                ),
                &["result"],
            )?,
            controller_connected: IntGauge::new(
                "keyway_proxy_controller_connected",
                "1 while the proxy has a stream open to the controller.",
            )?,
            backends: IntGaugeVec::new(
                Opts::new("keyway_proxy_backends", "Backends configured, by pool."),
                &["pool"],
            )?,
            healthy_backends: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_healthy_backends",
                    "Backends that may take traffic now (healthy, not ejected), by pool.",
                ),
                &["pool"],
            )?,
            upstream_ttfb: HistogramVec::new(
                HistogramOpts::new(
                    "keyway_proxy_upstream_ttfb_seconds",
                    "Request sent upstream to response headers received, by pool.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0,
                ]),
                &["pool"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_retries_total",
                    "Retries on another backend, by pool and reason.",
                ),
                &["pool", "reason"],
            )?,
            failovers: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_failovers_total",
                    "Failover-mode switches of the role taking traffic, by pool and destination.",
                ),
                &["pool", "to"],
            )?,
            stream_errors: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_stream_errors_total",
                    "Response bodies that ended with an error (reset, idle timeout), by pool.",
                ),
                &["pool"],
            )?,
            health: crate::health::HealthMetrics::register(registry)?,
            key_tokens: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_key_tokens_total",
                    "Tokens reported by upstreams, by key pool and key id.",
                ),
                &["key_pool", "key_id"],
            )?,
            key_wait: HistogramVec::new(
                HistogramOpts::new(
                    "keyway_proxy_key_wait_seconds",
                    "Time requests waited for an eligible key, by key pool.",
                )
                .buckets(vec![
                    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["key_pool"],
            )?,
            key_unavailable: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_key_unavailable_total",
                    "Requests answered 429 because no key could take them, by key pool and reason.",
                ),
                &["key_pool", "reason"],
            )?,
            key_state: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_key_state",
                    "1 for each key's current state, by key pool, key id and state.",
                ),
                &["key_pool", "key_id", "state"],
            )?,
            key_queue: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_key_queue_length",
                    "Requests waiting for a key now, by key pool.",
                ),
                &["key_pool"],
            )?,
            clusters: ClusterMetrics::new()?,
        };
        m.clusters.register(registry)?;
        registry.register(Box::new(m.key_tokens.clone()))?;
        registry.register(Box::new(m.key_wait.clone()))?;
        registry.register(Box::new(m.key_unavailable.clone()))?;
        registry.register(Box::new(m.key_state.clone()))?;
        registry.register(Box::new(m.key_queue.clone()))?;
        registry.register(Box::new(m.healthy_backends.clone()))?;
        registry.register(Box::new(m.upstream_ttfb.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.failovers.clone()))?;
        registry.register(Box::new(m.stream_errors.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.overhead.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.key_requests.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.config_updates.clone()))?;
        registry.register(Box::new(m.controller_connected.clone()))?;
        registry.register(Box::new(m.backends.clone()))?;
        Ok(m)
    }
}

/// A series of a labelled family, resolved on first use and kept: the request path reads it
/// without hashing labels (`with_label_values`) again. Built with the compiled snapshot, so a
/// series appears when it is first used, as before.
pub struct Lazy<T> {
    cell: std::sync::OnceLock<T>,
}

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Self {
            cell: std::sync::OnceLock::new(),
        }
    }
}

impl<T: Clone> Lazy<T> {
    /// The series, resolved by `resolve` the first time.
    pub fn get(&self, resolve: impl FnOnce() -> T) -> &T {
        self.cell.get_or_init(resolve)
    }
}

/// A pool's per-request series.
#[derive(Default)]
pub struct PoolSeries {
    pub ttfb: Lazy<Histogram>,
    pub duration: Lazy<Histogram>,
    pub stream_errors: Lazy<IntCounter>,
}

/// A backend's per-request series: requests answered 200 (the common status; others are
/// looked up).
#[derive(Default)]
pub struct BackendSeries {
    pub ok: Lazy<IntCounter>,
}

/// A key pool's per-request series: the wait for a key, and each key's requests and tokens.
#[derive(Default)]
pub struct KeyPoolSeries {
    pub wait: Lazy<Histogram>,
    pub keys: std::collections::HashMap<std::sync::Arc<str>, KeySeries>,
}

#[derive(Default)]
pub struct KeySeries {
    pub requests: Lazy<IntCounter>,
    pub tokens: Lazy<IntCounter>,
}
