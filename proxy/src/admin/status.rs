//! Admin reads of live state: `/status` and `/pools/{pool}` (through the data plane's
//! [`LiveView`]), `/config` (the served config, key values redacted) and `/metrics` (the
//! gauges read from live state are refreshed at scrape time).

use super::{Admin, Mode, body, error, json_response, text, typed};
use crate::config::edit;
use crate::dataplane::LiveView;
use crate::http::ProxyBody;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use keyway_api::model::{self, Snapshot};
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

// === impl Admin ===

impl Admin {
    pub(super) fn pool(&self, name: &str, namespace: Option<String>) -> Response<ProxyBody> {
        let status = self.status_json();
        let found = status["pools"].as_array().and_then(|pools| {
            pools.iter().find(|p| {
                p["name"] == name
                    && namespace
                        .as_ref()
                        .is_none_or(|ns| p["namespace"] == ns.as_str())
            })
        });
        let Some(pool) = found else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no pool {name:?}"),
            );
        };
        let mut pool = pool.clone();
        let (ns, kp) = (pool["namespace"].clone(), pool["keyPool"].clone());
        let keys = status["keyPools"].as_array().and_then(|kps| {
            kps.iter()
                .find(|k| k["namespace"] == ns && k["name"] == kp)
                .map(|k| k["keys"].clone())
        });
        pool["keys"] = keys.unwrap_or(Value::Array(vec![]));
        json_response(StatusCode::OK, &pool)
    }

    pub(super) fn config(&self, query: &str) -> Response<ProxyBody> {
        let format = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("format="))
            .unwrap_or("json");
        if format == "manifests" {
            let Mode::File(path) = &self.mode else {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "format=manifests needs file mode",
                );
            };
            return match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| edit::redacted(&t))
            {
                Ok(y) => typed(StatusCode::OK, "application/yaml", y),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e),
            };
        }
        let router = self.dataplane.router();
        let doc = effective_config(&router.snapshot, self.source, self.dataplane.version());
        if format == "yaml" {
            match serde_saphyr::to_string(&doc) {
                Ok(y) => typed(StatusCode::OK, "application/yaml", y),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            }
        } else {
            json_response(StatusCode::OK, &doc)
        }
    }

    pub(super) fn metrics(&self) -> Response<ProxyBody> {
        // Health and key state are read where they live; the gauges are refreshed at scrape
        // time.
        refresh_gauges(self.dataplane.metrics(), &self.dataplane.view());
        let encoder = TextEncoder::new();
        let mut buf = Vec::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buf) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n"));
        }
        let mut resp = body(StatusCode::OK, Bytes::from(buf));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }

    pub(super) fn status(&self) -> Response<ProxyBody> {
        json_response(StatusCode::OK, &self.status_json())
    }

    /// `/status/history`: requests, 429s and errors per key and backend, per interval.
    pub(super) fn history(&self) -> Response<ProxyBody> {
        json_response(StatusCode::OK, &json!(self.dataplane.history().view()))
    }

    /// `/`: the status page. A static document; it reads `/status` and `/status/history`.
    pub(super) fn page(&self) -> Response<ProxyBody> {
        let mut resp = typed(
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::page::HTML.to_owned(),
        );
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(super::page::CSP),
        );
        resp
    }

    fn status_json(&self) -> Value {
        let view = self.dataplane.view();
        let pools: Vec<_> = view
            .pools()
            .map(|p| {
                let model = p.model();
                json!({
                    "namespace": model.id.namespace,
                    "name": model.id.name,
                    "mode": model.mode,
                    "strategy": model.strategy,
                    "evacuatePrimary": model.evacuate_primary,
                    "activeBackend": p.active_backend(),
                    "activeReason": p.active_reason(),
                    "healthyBackends": p.healthy_backends(),
                    "keyPool": model.key_pool,
                    "keyPoolAvailable": p.key_pool_available(),
                    "affinity": p.affinity().map(|a| json!({
                        "header": a.settings.header,
                        "store": a.kind(),
                        "ttlSeconds": a.settings.ttl.as_secs(),
                        "localEntries": a.local_len(),
                    })),
                    "backends": p.backends().map(|b| json!({
                        "name": b.name(),
                        "endpoint": b.model().endpoint.to_string(),
                        "weight": b.model().weight,
                        "role": b.model().role,
                        "healthy": b.healthy,
                        "ejected": b.ejected,
                        "available": b.available,
                        "inFlight": b.in_flight,
                        "models": b.models().into_iter().map(|(name, m)| json!({
                            "name": name,
                            "healthy": m.healthy,
                            "capacity": m.capacity,
                            "consumption": m.consumption,
                        })).collect::<Vec<_>>(),
                        "usage": {
                            "requests": b.requests,
                            "failures": b.failures,
                            "rateLimited": b.rate_limited,
                            "lastUsedUnixMs": b.last_used_ms,
                        },
                        "tokensPerMinute": b.tokens_per_minute,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let key_pools: Vec<_> = view
            .key_pools()
            .map(|kp| {
                json!({
                    "namespace": kp.state.id.namespace,
                    "name": kp.state.id.name,
                    "selection": kp.state.model.selection,
                    "queueLength": kp.queue_len,
                    "keys": kp.keys,
                })
            })
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut doc = json!({
            "source": self.source,
            "loaded": self.dataplane.is_loaded(),
            "configVersion": self.dataplane.version(),
            "nowUnixMs": now_ms,
            "pools": pools,
            "keyPools": key_pools,
        });
        if let Some(sync) = self.dataplane.controller_sync() {
            doc["controller"] = json!(sync);
        }
        doc
    }
}

/// Sets the gauges that are read from live state rather than counted as things happen.
fn refresh_gauges(metrics: &Metrics, view: &LiveView) {
    for p in view.pools() {
        metrics
            .healthy_backends
            .with_label_values(&[p.label()])
            .set(p.healthy_backends() as i64);
    }
    for p in view.pools() {
        if p.model().mode == model::Mode::MultiCluster {
            let c = &metrics.clusters;
            for b in p.backends() {
                let labels = [p.label(), b.name()];
                c.healthy
                    .with_label_values(&labels)
                    .set(i64::from(b.available));
                c.tokens_per_minute
                    .with_label_values(&labels)
                    .set(b.tokens_per_minute);
                if let Some((capacity, consumption)) = b.load {
                    c.capacity.with_label_values(&labels).set(capacity);
                    c.consumption.with_label_values(&labels).set(consumption);
                }
            }
        }
        if let Some(store) = p.affinity() {
            metrics
                .clusters
                .entries
                .with_label_values(&[p.label()])
                .set(store.local_len() as i64);
        }
    }
    metrics.key_state.reset();
    for kp in view.key_pools() {
        let label = kp.state.label.as_str();
        metrics
            .key_queue
            .with_label_values(&[label])
            .set(kp.queue_len as i64);
        for k in &kp.keys {
            metrics
                .key_state
                .with_label_values(&[label, k.id.as_str(), k.state])
                .set(1);
        }
    }
}

/// The served config as JSON: everything but key values (keys appear by id with limits).
pub fn effective_config(snap: &Snapshot, source: &str, version: u64) -> Value {
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            json!({
                "namespace": p.id.namespace,
                "name": p.id.name,
                "mode": p.mode,
                "strategy": p.strategy,
                "evacuatePrimary": p.evacuate_primary,
                "keyPool": p.key_pool,
                "auth": match &p.auth {
                    keyway_api::model::Auth::Header { name, prefix } => json!({"type": "header", "header": name, "prefix": prefix}),
                    keyway_api::model::Auth::Query { param } => json!({"type": "query", "queryParam": param}),
                    keyway_api::model::Auth::BodyField { field } => json!({"type": "bodyField", "field": field}),
                },
                "defaultHeaders": p.default_headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
                "allowedSources": p.allowed_sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "routes": p.routes.iter().map(|r| json!({
                    "pathPrefix": r.path_prefix,
                    "model": r.model,
                    "stripPrefix": r.strip_prefix,
                    "headers": r.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "backends": p.backends.iter().map(|b| json!({
                    "name": b.name,
                    "endpoint": b.endpoint.to_string(),
                    "weight": b.weight,
                    "role": b.role,
                    "healthCheck": b.health_check.is_some(),
                })).collect::<Vec<_>>(),
                "retry": {"maxRetries": p.retry.max_retries, "bufferBytes": p.retry.buffer_bytes},
            })
        })
        .collect();
    let key_pools: Vec<Value> = snap
        .key_pools
        .iter()
        .map(|k| {
            json!({
                "namespace": k.id.namespace,
                "name": k.id.name,
                "selection": k.selection,
                "keys": k.keys.iter().map(|key| json!({
                    "id": key.id,
                    "value": "<redacted>",
                    "weight": key.limits.weight,
                    "requestsPerMinute": key.limits.requests_per_minute,
                    "tokensPerMinute": key.limits.tokens_per_minute,
                    "maxConcurrent": key.limits.max_concurrent,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"source": source, "version": version, "pools": pools, "keyPools": key_pools})
}
