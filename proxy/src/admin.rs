//! The admin port, separate from traffic: `/healthz`, `/readyz`, `/metrics`, `/status`.
//! `/status` shows key ids and usage, never key values.

use crate::dataplane::{Counters, Dataplane};
use crate::http::ProxyBody;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the admin handlers read.
#[derive(Clone)]
pub struct Admin {
    pub dataplane: Arc<Dataplane>,
    pub registry: Registry,
    /// `file` or `controller`.
    pub source: &'static str,
}

// === impl Admin ===

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.dataplane.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.dataplane.is_loaded() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no configuration loaded yet\n",
                    )
                }
            }
            "/metrics" => self.metrics(),
            "/status" => self.status(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz, /metrics, /status\n",
            ),
        }
    }

    fn metrics(&self) -> Response<ProxyBody> {
        // Health and key state are read where they live; the gauges are refreshed at scrape
        // time.
        let router = self.dataplane.router();
        let metrics = self.dataplane.metrics();
        for p in &router.pools {
            metrics
                .healthy_backends
                .with_label_values(&[p.label.as_str()])
                .set(p.healthy_count() as i64);
        }
        let now = std::time::Instant::now();
        for p in &router.pools {
            if p.model.mode == keyway_api::model::Mode::MultiCluster {
                let c = &metrics.clusters;
                for b in &p.backends {
                    let labels = [p.label.as_str(), b.model.name.as_str()];
                    c.healthy.with_label_values(&labels).set(i64::from(
                        b.model.weight > 0 && b.health.is_available(now, false),
                    ));
                    c.tokens_per_minute
                        .with_label_values(&labels)
                        .set(b.counters.tokens.per_minute(now));
                    if let Some((capacity, consumption)) = b.health.load() {
                        c.capacity.with_label_values(&labels).set(capacity);
                        c.consumption.with_label_values(&labels).set(consumption);
                    }
                }
            }
            if let Some(store) = &p.affinity {
                metrics
                    .clusters
                    .entries
                    .with_label_values(&[p.label.as_str()])
                    .set(store.local_len() as i64);
            }
        }
        metrics.key_state.reset();
        for kp in &router.key_pools {
            metrics
                .key_queue
                .with_label_values(&[kp.label.as_str()])
                .set(kp.engine.queue_len() as i64);
            for k in kp.keys() {
                metrics
                    .key_state
                    .with_label_values(&[kp.label.as_str(), k.id.as_str(), k.state])
                    .set(1);
            }
        }
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

    fn status(&self) -> Response<ProxyBody> {
        let router = self.dataplane.router();
        let pools: Vec<_> = router
            .pools
            .iter()
            .map(|p| {
                let now = std::time::Instant::now();
                json!({
                    "namespace": p.model.id.namespace,
                    "name": p.model.id.name,
                    "mode": p.model.mode,
                    "strategy": p.model.strategy,
                    "evacuatePrimary": p.model.evacuate_primary,
                    "activeBackend": p.active_backend(),
                    "healthyBackends": p.healthy_count(),
                    "keyPool": p.model.key_pool,
                    "keyPoolAvailable": p.keys.is_ok(),
                    "affinity": p.affinity.as_ref().map(|a| json!({
                        "header": a.settings.header,
                        "store": a.kind(),
                        "ttlSeconds": a.settings.ttl.as_secs(),
                        "localEntries": a.local_len(),
                    })),
                    "backends": p.backends.iter().map(|b| json!({
                        "name": b.model.name,
                        "endpoint": b.model.endpoint.to_string(),
                        "weight": b.model.weight,
                        "role": b.model.role,
                        "healthy": b.health.is_active_healthy(),
                        "ejected": b.health.is_ejected(now),
                        "models": b.health.models().into_iter().map(|(name, m)| json!({
                            "name": name,
                            "healthy": m.healthy,
                            "capacity": m.capacity,
                            "consumption": m.consumption,
                        })).collect::<Vec<_>>(),
                        "usage": usage(&b.counters),
                        "tokensPerMinute": b.counters.tokens.per_minute(now),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let key_pools: Vec<_> = router
            .key_pools
            .iter()
            .map(|kp| {
                json!({
                    "namespace": kp.id.namespace,
                    "name": kp.id.name,
                    "selection": kp.model.selection,
                    "queueLength": kp.engine.queue_len(),
                    "keys": kp.keys(),
                })
            })
            .collect();
        let doc = json!({
            "source": self.source,
            "loaded": self.dataplane.is_loaded(),
            "pools": pools,
            "keyPools": key_pools,
        });
        let mut resp = body(StatusCode::OK, Bytes::from(doc.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn usage(c: &Counters) -> serde_json::Value {
    json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "failures": c.failures.load(Ordering::Relaxed),
        "lastUsedUnixMs": c.last_used_ms.load(Ordering::Relaxed),
    })
}

fn text(status: StatusCode, s: &str) -> Response<ProxyBody> {
    body(status, Bytes::copy_from_slice(s.as_bytes()))
}

fn body(status: StatusCode, b: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(b).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}
