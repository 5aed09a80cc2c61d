//! The control-plane contract and its conversion to and from the domain model.
//!
//! Proto stays at the edge: the proxy converts an incoming [`Snapshot`] into
//! [`keyway_api::model::Snapshot`] with [`TryFrom`], which validates it again and names the
//! offending field, so a bad push is NACKed instead of served.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use keyway_api::model::{self, ObjectId};
use keyway_api::resolve;
use keyway_api::secret::SecretValue;
use std::fmt;
use std::time::Duration;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("keyway.v1");
}

pub use generated::*;

/// Why a pushed snapshot was rejected. `Display` names the field; never a key value.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidSnapshot {
    pub path: String,
    pub message: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("password_env", &self.password_env)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("tls", &self.tls)
            .finish()
    }
}

// === model -> proto ===

impl Snapshot {
    pub fn from_model(version: u64, snap: &model::Snapshot) -> Self {
        Snapshot {
            version,
            pools: snap.pools.iter().map(Pool::from).collect(),
            key_pools: snap.key_pools.iter().map(KeyPool::from).collect(),
            ..Default::default()
        }
    }

    /// The delta from `base` (sent as version `base_version`) to `next`: the pools and key
    /// pools that are new or changed, and the ids of those that went. Both must be
    /// normalized (sorted by id). O(pools + key pools).
    pub fn delta(
        version: u64,
        base_version: u64,
        base: &model::Snapshot,
        next: &model::Snapshot,
    ) -> Self {
        let (pools, removed_pools) = diff(&base.pools, &next.pools, |p| &p.id);
        let (key_pools, removed_key_pools) = diff(&base.key_pools, &next.key_pools, |k| &k.id);
        Snapshot {
            version,
            base_version,
            pools: pools.into_iter().map(Pool::from).collect(),
            key_pools: key_pools.into_iter().map(KeyPool::from).collect(),
            removed_pools,
            removed_key_pools,
        }
    }
}

/// Items of `next` not equal in `base`, and ids of `base` missing from `next`; both sorted.
fn diff<'a, T: PartialEq>(
    base: &'a [T],
    next: &'a [T],
    id: impl Fn(&T) -> &ObjectId,
) -> (Vec<&'a T>, Vec<ObjectRef>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < base.len() || j < next.len() {
        let order = match (base.get(i), next.get(j)) {
            (Some(b), Some(n)) => id(b).cmp(id(n)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let gone = id(&base[i]);
                removed.push(ObjectRef {
                    namespace: gone.namespace.clone(),
                    name: gone.name.clone(),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                changed.push(&next[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if base[i] != next[j] {
                    changed.push(&next[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (changed, removed)
}

/// Applies a delta [`Snapshot`] (`base_version` > 0) to `base` in place, validating only what
/// it carries: O(what changed) plus a pass over the ids. Fails like [`TryFrom`] on an invalid
/// pool or key pool, and then leaves `base` as it was.
pub fn apply_delta(base: &mut model::Snapshot, delta: Snapshot) -> Result<(), InvalidSnapshot> {
    let changed = model::Snapshot::try_from(Snapshot {
        pools: delta.pools,
        key_pools: delta.key_pools,
        ..Default::default()
    })?;
    let gone = |refs: &[ObjectRef]| -> std::collections::HashSet<ObjectId> {
        refs.iter()
            .map(|r| ObjectId::new(&r.namespace, &r.name))
            .collect()
    };
    let mut drop_pools = gone(&delta.removed_pools);
    drop_pools.extend(changed.pools.iter().map(|p| p.id.clone()));
    let mut drop_keys = gone(&delta.removed_key_pools);
    drop_keys.extend(changed.key_pools.iter().map(|k| k.id.clone()));
    base.pools.retain(|p| !drop_pools.contains(&p.id));
    base.key_pools.retain(|k| !drop_keys.contains(&k.id));
    base.pools.extend(changed.pools);
    base.key_pools.extend(changed.key_pools);
    *base = std::mem::take(base).normalized();
    Ok(())
}

impl From<&model::Pool> for Pool {
    fn from(p: &model::Pool) -> Self {
        Pool {
            namespace: p.id.namespace.clone(),
            name: p.id.name.clone(),
            backends: p
                .backends
                .iter()
                .map(|b| Backend {
                    name: b.name.clone(),
                    endpoint: b.endpoint.to_string(),
                    host_header: b.host_header.clone().unwrap_or_default(),
                    weight: b.weight,
                    http2: b.protocol == model::Protocol::Http2,
                    role: match b.role {
                        None => Role::Unspecified,
                        Some(model::Role::Primary) => Role::Primary,
                        Some(model::Role::Secondary) => Role::Secondary,
                    } as i32,
                    health_check: b.health_check.as_ref().map(|h| {
                        let (path, url) = match &h.target {
                            model::HealthTarget::Path(p) => (p.clone(), String::new()),
                            model::HealthTarget::Url(u) => (String::new(), u.clone()),
                        };
                        HealthCheck {
                            path,
                            url,
                            interval_ms: ms(h.interval),
                            timeout_ms: ms(h.timeout),
                            fail_threshold: h.fail_threshold,
                            success_threshold: h.success_threshold,
                            deep: h.deep,
                        }
                    }),
                })
                .collect(),
            strategy: match p.strategy {
                model::Strategy::RoundRobin => Strategy::RoundRobin,
                model::Strategy::WeightedRoundRobin => Strategy::WeightedRoundRobin,
                model::Strategy::LeastRequest => Strategy::LeastRequest,
                model::Strategy::ConsistentHash => Strategy::ConsistentHash,
                model::Strategy::LeastLoaded => Strategy::LeastLoaded,
            } as i32,
            mode: match p.mode {
                model::Mode::Balanced => Mode::Balanced,
                model::Mode::Failover => Mode::Failover,
                model::Mode::MultiCluster => Mode::MultiCluster,
            } as i32,
            evacuate_primary: p.evacuate_primary,
            sse_keep_alive_ms: p.sse_keep_alive.map_or(0, ms),
            affinity: p.affinity.as_ref().map(|a| Affinity {
                header: a.header.clone(),
                ttl_ms: ms(a.ttl),
                max_entries: a.max_entries,
                redis: match &a.store {
                    model::AffinityStore::Memory => None,
                    model::AffinityStore::Redis(r) => {
                        let (address, sentinels, master_name) = match &r.target {
                            model::RedisTarget::Direct(a) => (a.clone(), Vec::new(), String::new()),
                            model::RedisTarget::Sentinel { sentinels, master } => {
                                (String::new(), sentinels.clone(), master.clone())
                            }
                        };
                        Some(RedisStore {
                            address,
                            sentinels,
                            master_name,
                            db: r.db,
                            key_prefix: r.key_prefix.clone(),
                            timeout_ms: ms(r.timeout),
                            password_env: r.password_env.clone().unwrap_or_default(),
                            password: r
                                .password
                                .as_ref()
                                .map(|p| p.expose().to_string())
                                .unwrap_or_default(),
                            tls: r.tls,
                        })
                    }
                },
            }),
            cluster_balance: Some(ClusterBalance {
                overloaded_ratio_ppm: p.cluster_balance.overloaded_ratio_ppm,
                smoothing_ppm: p.cluster_balance.smoothing_ppm,
                model_header: p.cluster_balance.model_header.clone().unwrap_or_default(),
                token_rebalance: p.cluster_balance.token_rebalance.is_some(),
                rebalance_imbalance_ratio_ppm: p
                    .cluster_balance
                    .token_rebalance
                    .as_ref()
                    .map_or(0, |t| t.imbalance_ratio_ppm),
                rebalance_max_fraction_ppm: p
                    .cluster_balance
                    .token_rebalance
                    .as_ref()
                    .map_or(0, |t| t.max_fraction_ppm),
            }),
            hash_header: p.hash_header.clone(),
            hash_load_factor_pct: p.hash_load_factor_pct,
            outlier: Some(Outlier {
                consecutive_failures: p.outlier.consecutive_failures,
                base_ejection_ms: ms(p.outlier.base_ejection),
                max_ejection_ms: ms(p.outlier.max_ejection),
            }),
            retry: Some(Retry {
                max_retries: p.retry.max_retries,
                buffer_bytes: p.retry.buffer_bytes,
            }),
            timeouts: Some(Timeouts {
                connect_ms: p.timeouts.connect.map_or(0, ms),
                response_headers_ms: p.timeouts.response_headers.map_or(0, ms),
                idle_stream_ms: p.timeouts.idle_stream.map_or(0, ms),
            }),
            key_pool: p.key_pool.clone().unwrap_or_default(),
            auth: Some(Auth {
                kind: Some(match &p.auth {
                    model::Auth::Header { name, prefix } => auth::Kind::Header(HeaderAuth {
                        name: name.clone(),
                        prefix: prefix.clone(),
                    }),
                    model::Auth::Query { param } => auth::Kind::Query(QueryAuth {
                        param: param.clone(),
                    }),
                    model::Auth::BodyField { field } => auth::Kind::BodyField(BodyFieldAuth {
                        field: field.clone(),
                    }),
                }),
            }),
            default_headers: p
                .default_headers
                .iter()
                .map(|(name, value)| HeaderMatch {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            allowed_sources: p.allowed_sources.iter().map(ToString::to_string).collect(),
            routes: p
                .routes
                .iter()
                .map(|r| Route {
                    model: r.model.clone().unwrap_or_default(),
                    path_prefix: r.path_prefix.clone().unwrap_or_default(),
                    strip_prefix: r.strip_prefix.clone().unwrap_or_default(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(name, value)| HeaderMatch {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&model::KeyPool> for KeyPool {
    fn from(k: &model::KeyPool) -> Self {
        KeyPool {
            namespace: k.id.namespace.clone(),
            name: k.id.name.clone(),
            selection: match k.selection {
                model::Selection::RoundRobin => Selection::RoundRobin,
                model::Selection::Weighted => Selection::Weighted,
                model::Selection::LeastUsed => Selection::LeastUsed,
                model::Selection::TimeWindow => Selection::TimeWindow,
            } as i32,
            keys: k
                .keys
                .iter()
                .map(|key| Key {
                    id: key.id.clone(),
                    value: key.value.expose().to_string(),
                    weight: key.limits.weight,
                    requests_per_minute: key.limits.requests_per_minute.unwrap_or(0),
                    tokens_per_minute: key.limits.tokens_per_minute.unwrap_or(0),
                    max_concurrent: key.limits.max_concurrent.unwrap_or(0),
                })
                .collect(),
            time_window_ms: ms(k.time_window),
            default_cooldown_ms: ms(k.default_cooldown),
            failure_ratio_permille: k.failure_ratio_permille,
            min_requests: k.min_requests,
            disable_backoff_ms: ms(k.disable_backoff),
            reprobe_interval_ms: ms(k.reprobe_interval),
            queue_max_len: k.queue_max_len,
            queue_max_wait_ms: ms(k.queue_max_wait),
            stickiness: k.stickiness.as_ref().map(|s| Stickiness {
                header: s.header.clone(),
                prompt_prefix_bytes: s.prompt_prefix_bytes,
                load_factor_pct: s.load_factor_pct,
            }),
            request_stream_usage: k.request_stream_usage,
        }
    }
}

// === proto -> model ===

impl TryFrom<Snapshot> for model::Snapshot {
    type Error = InvalidSnapshot;

    fn try_from(s: Snapshot) -> Result<Self, Self::Error> {
        let mut pools = Vec::with_capacity(s.pools.len());
        for (i, p) in s.pools.into_iter().enumerate() {
            pools.push(pool(p).map_err(|(f, m)| invalid(format!("pools[{i}].{f}"), m))?);
        }
        let mut key_pools = Vec::with_capacity(s.key_pools.len());
        for (i, k) in s.key_pools.into_iter().enumerate() {
            key_pools.push(key_pool(k).map_err(|(f, m)| invalid(format!("keyPools[{i}].{f}"), m))?);
        }
        Ok(model::Snapshot { pools, key_pools }.normalized())
    }
}

fn invalid(path: String, message: String) -> InvalidSnapshot {
    InvalidSnapshot { path, message }
}

type FieldResult<T> = Result<T, (String, String)>;

fn pool(p: Pool) -> FieldResult<model::Pool> {
    if p.name.is_empty() || p.namespace.is_empty() {
        return Err(("name".into(), "name and namespace are required".into()));
    }
    let strategy = match Strategy::try_from(p.strategy) {
        Ok(Strategy::RoundRobin) | Ok(Strategy::Unspecified) => model::Strategy::RoundRobin,
        Ok(Strategy::WeightedRoundRobin) => model::Strategy::WeightedRoundRobin,
        Ok(Strategy::LeastRequest) => model::Strategy::LeastRequest,
        Ok(Strategy::ConsistentHash) => model::Strategy::ConsistentHash,
        Ok(Strategy::LeastLoaded) => model::Strategy::LeastLoaded,
        Err(_) => return Err(("strategy".into(), format!("unknown value {}", p.strategy))),
    };
    let mode = match Mode::try_from(p.mode) {
        Ok(Mode::Balanced) | Ok(Mode::Unspecified) => model::Mode::Balanced,
        Ok(Mode::Failover) => model::Mode::Failover,
        Ok(Mode::MultiCluster) => model::Mode::MultiCluster,
        Err(_) => return Err(("mode".into(), format!("unknown value {}", p.mode))),
    };
    if p.backends.is_empty() {
        return Err(("backends".into(), "at least one backend is required".into()));
    }
    let mut backends = Vec::with_capacity(p.backends.len());
    for (i, b) in p.backends.into_iter().enumerate() {
        let endpoint =
            resolve::endpoint(&b.endpoint).map_err(|m| (format!("backends[{i}].endpoint"), m))?;
        let role = match Role::try_from(b.role) {
            Ok(Role::Unspecified) => None,
            Ok(Role::Primary) => Some(model::Role::Primary),
            Ok(Role::Secondary) => Some(model::Role::Secondary),
            Err(_) => {
                return Err((
                    format!("backends[{i}].role"),
                    format!("unknown value {}", b.role),
                ));
            }
        };
        if mode == model::Mode::Failover && role.is_none() {
            return Err((
                format!("backends[{i}].role"),
                "required in failover mode".into(),
            ));
        }
        let health_check = match b.health_check {
            None => None,
            Some(h) => Some(
                health_check(h).map_err(|(f, m)| (format!("backends[{i}].healthCheck.{f}"), m))?,
            ),
        };
        backends.push(model::Backend {
            name: b.name,
            endpoint,
            host_header: (!b.host_header.is_empty()).then_some(b.host_header),
            weight: b.weight,
            role,
            protocol: if b.http2 {
                model::Protocol::Http2
            } else {
                model::Protocol::Http1
            },
            health_check,
        });
    }
    let auth = match p.auth.and_then(|a| a.kind) {
        Some(auth::Kind::Header(h)) => model::Auth::Header {
            name: h.name.to_ascii_lowercase(),
            prefix: h.prefix,
        },
        Some(auth::Kind::Query(q)) => model::Auth::Query { param: q.param },
        Some(auth::Kind::BodyField(b)) if !b.field.is_empty() => {
            model::Auth::BodyField { field: b.field }
        }
        Some(auth::Kind::BodyField(_)) => {
            return Err(("auth.bodyField.field".into(), "required".into()));
        }
        None => return Err(("auth".into(), "required".into())),
    };
    let routes = p
        .routes
        .into_iter()
        .map(|r| model::Route {
            model: (!r.model.is_empty()).then_some(r.model),
            path_prefix: (!r.path_prefix.is_empty()).then_some(r.path_prefix),
            strip_prefix: (!r.strip_prefix.is_empty()).then_some(r.strip_prefix),
            headers: r
                .headers
                .into_iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value))
                .collect(),
        })
        .collect();
    let outlier = p
        .outlier
        .map_or_else(model::Outlier::default, |o| model::Outlier {
            consecutive_failures: o.consecutive_failures,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection: Duration::from_millis(o.max_ejection_ms),
        });
    let retry = p
        .retry
        .map_or_else(model::Retry::default, |r| model::Retry {
            max_retries: r.max_retries,
            buffer_bytes: r.buffer_bytes,
        });
    let opt = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let timeouts = p
        .timeouts
        .map_or_else(model::Timeouts::default, |t| model::Timeouts {
            connect: opt(t.connect_ms),
            response_headers: opt(t.response_headers_ms),
            idle_stream: opt(t.idle_stream_ms),
        });
    if p.hash_header.is_empty() {
        return Err(("hashHeader".into(), "required".into()));
    }
    let affinity = p.affinity.map(affinity).transpose()?;
    let cluster_balance = p
        .cluster_balance
        .map_or_else(model::ClusterBalance::default, |c| model::ClusterBalance {
            overloaded_ratio_ppm: c.overloaded_ratio_ppm,
            smoothing_ppm: c.smoothing_ppm,
            model_header: (!c.model_header.is_empty()).then(|| c.model_header.to_ascii_lowercase()),
            token_rebalance: c.token_rebalance.then_some(model::TokenRebalance {
                imbalance_ratio_ppm: c.rebalance_imbalance_ratio_ppm,
                max_fraction_ppm: c.rebalance_max_fraction_ppm,
            }),
        });
    if cluster_balance.overloaded_ratio_ppm == 0 {
        return Err((
            "clusterBalance.overloadedRatioPpm".into(),
            "must be above 0".into(),
        ));
    }
    let allowed_sources = p
        .allowed_sources
        .iter()
        .enumerate()
        .map(|(i, s)| model::Cidr::parse(s).map_err(|m| (format!("allowedSources[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let default_headers = p
        .default_headers
        .into_iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect();
    Ok(model::Pool {
        affinity,
        cluster_balance,
        default_headers,
        allowed_sources,
        id: ObjectId::new(p.namespace, p.name),
        mode,
        backends,
        strategy,
        hash_header: p.hash_header.to_ascii_lowercase(),
        hash_load_factor_pct: p.hash_load_factor_pct.max(100),
        evacuate_primary: p.evacuate_primary,
        sse_keep_alive: opt(p.sse_keep_alive_ms),
        key_pool: (!p.key_pool.is_empty()).then_some(p.key_pool),
        auth,
        routes,
        outlier,
        retry,
        timeouts,
    })
}

fn affinity(a: Affinity) -> FieldResult<model::Affinity> {
    if a.header.is_empty() {
        return Err(("affinity.header".into(), "required".into()));
    }
    if a.ttl_ms == 0 || a.max_entries == 0 {
        return Err((
            "affinity".into(),
            "ttl and maxEntries must be above 0".into(),
        ));
    }
    let store = match a.redis {
        None => model::AffinityStore::Memory,
        Some(r) => {
            let target = if !r.address.is_empty() {
                model::RedisTarget::Direct(r.address)
            } else if !r.sentinels.is_empty() && !r.master_name.is_empty() {
                model::RedisTarget::Sentinel {
                    sentinels: r.sentinels,
                    master: r.master_name,
                }
            } else {
                return Err((
                    "affinity.redis.address".into(),
                    "an address or sentinels with a master name are required".into(),
                ));
            };
            model::AffinityStore::Redis(model::RedisStore {
                target,
                db: r.db,
                key_prefix: r.key_prefix,
                timeout: Duration::from_millis(r.timeout_ms.max(1)),
                password_env: (!r.password_env.is_empty()).then_some(r.password_env),
                password: (!r.password.is_empty()).then(|| SecretValue::new(r.password)),
                tls: r.tls,
            })
        }
    };
    Ok(model::Affinity {
        header: a.header.to_ascii_lowercase(),
        ttl: Duration::from_millis(a.ttl_ms),
        max_entries: a.max_entries,
        store,
    })
}

fn health_check(h: HealthCheck) -> FieldResult<model::HealthCheck> {
    let target = match (h.path.is_empty(), h.url.is_empty()) {
        (false, true) => model::HealthTarget::Path(h.path),
        (true, false) => model::HealthTarget::Url(h.url),
        _ => {
            return Err((
                "path".into(),
                "exactly one of path and url is required".into(),
            ));
        }
    };
    if h.interval_ms == 0 || h.timeout_ms == 0 || h.fail_threshold == 0 || h.success_threshold == 0
    {
        return Err((
            "intervalMs".into(),
            "interval, timeout and thresholds must be above zero".into(),
        ));
    }
    Ok(model::HealthCheck {
        target,
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        fail_threshold: h.fail_threshold,
        success_threshold: h.success_threshold,
        deep: h.deep,
    })
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn key_pool(k: KeyPool) -> FieldResult<model::KeyPool> {
    if k.name.is_empty() || k.namespace.is_empty() {
        return Err(("name".into(), "name and namespace are required".into()));
    }
    let selection = match Selection::try_from(k.selection) {
        Ok(Selection::RoundRobin) | Ok(Selection::Unspecified) => model::Selection::RoundRobin,
        Ok(Selection::Weighted) => model::Selection::Weighted,
        Ok(Selection::LeastUsed) => model::Selection::LeastUsed,
        Ok(Selection::TimeWindow) => model::Selection::TimeWindow,
        Err(_) => return Err(("selection".into(), format!("unknown value {}", k.selection))),
    };
    let mut keys = Vec::with_capacity(k.keys.len());
    for (i, key) in k.keys.into_iter().enumerate() {
        if key.id.is_empty() || key.value.is_empty() {
            return Err((format!("keys[{i}]"), "id and value are required".into()));
        }
        let nonzero32 = |v: u32| (v > 0).then_some(v);
        keys.push(model::Key {
            id: key.id,
            value: SecretValue::new(key.value),
            limits: model::KeyLimits {
                weight: key.weight,
                requests_per_minute: nonzero32(key.requests_per_minute),
                tokens_per_minute: (key.tokens_per_minute > 0).then_some(key.tokens_per_minute),
                max_concurrent: nonzero32(key.max_concurrent),
            },
        });
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let positive = |v: u64, f: &str| {
        if v == 0 {
            Err((f.to_string(), "must be above zero".to_string()))
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    Ok(model::KeyPool {
        id: ObjectId::new(k.namespace, k.name),
        selection,
        time_window: positive(k.time_window_ms, "timeWindowMs")?,
        keys,
        default_cooldown: positive(k.default_cooldown_ms, "defaultCooldownMs")?,
        failure_ratio_permille: k.failure_ratio_permille.clamp(1, 1000),
        min_requests: k.min_requests.max(1),
        disable_backoff: positive(k.disable_backoff_ms, "disableBackoffMs")?,
        reprobe_interval: positive(k.reprobe_interval_ms, "reprobeIntervalMs")?,
        queue_max_len: k.queue_max_len,
        queue_max_wait: Duration::from_millis(k.queue_max_wait_ms),
        stickiness: k.stickiness.map(|s| model::Stickiness {
            header: s.header.to_ascii_lowercase(),
            prompt_prefix_bytes: s.prompt_prefix_bytes,
            load_factor_pct: s.load_factor_pct.max(100),
        }),
        request_stream_usage: k.request_stream_usage,
    })
}

#[cfg(test)]
mod tests;
