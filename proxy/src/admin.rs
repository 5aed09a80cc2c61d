//! The admin port, separate from traffic.
//!
//! Reads: `/healthz`, `/readyz`, `/metrics`, `/status`, `/pools/{pool}`, `/config`,
//! `/log-level`. Writes (bearer token from `--admin-token-file` / `KEYWAY_ADMIN_TOKEN`):
//! `POST /pools/{pool}/keys`, `PUT|DELETE /pools/{pool}/keys/{id}`, `POST /pools/{pool}/backends`,
//! `DELETE /pools/{pool}/backends/{name}`, `PUT /pools/{pool}/evacuate`, `POST /stats/reset`,
//! `PUT /log-level`. In file mode, pool writes edit the manifest file (atomically) and take
//! effect through the same channel as a reload; in controller mode they are refused with the
//! `kubectl` command to use. Key values are never shown: only ids.

use crate::access::ct_eq;
use crate::config::SnapshotTx;
use crate::config::edit::{self, Edit};
use crate::dataplane::{Dataplane, LiveView};
use crate::http::ProxyBody;
use crate::http::error::{Rejection, error_response};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use keyway_api::model::{self, Cidr, Snapshot};
use keyway_api::secret::SecretValue;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Request bodies of the admin API are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

/// Where the config comes from, as far as writes are concerned.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Writes edit this file.
    File(PathBuf),
    /// Writes are refused: the cluster is the source of truth.
    Controller,
    /// Writes are refused: there is no file (`export-config` makes one).
    QuickStart,
    /// Tests and demos: writes are refused.
    Static,
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct Admin {
    pub dataplane: Arc<Dataplane>,
    pub registry: Registry,
    /// `file`, `controller`, `env` or `static`.
    pub source: &'static str,
    pub mode: Mode,
    /// Reads other than health and metrics need the token too.
    pub protect_reads: bool,
    pub token: Option<Arc<SecretValue>>,
    pub allowed_sources: Vec<Cidr>,
    /// File mode: where edited configs are published, as the file watcher does.
    pub tx: SnapshotTx,
    /// One file edit at a time.
    pub edits: Arc<tokio::sync::Mutex<()>>,
}

/// Why a request may not proceed.
enum Denied {
    Disabled,
    Unauthorized,
}

// === impl Admin ===

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
        if !Cidr::allows(&self.allowed_sources, remote.ip()) {
            let rejection = Rejection::ForbiddenSource;
            self.dataplane
                .metrics()
                .rejected
                .with_label_values(&[rejection.as_str()])
                .inc();
            return rejection.response(&format!(
                "source {} is not allowed (--admin-allowed-sources)",
                remote.ip()
            ));
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        let read = method == Method::GET || method == Method::HEAD;
        match (read, segs.as_slice()) {
            (true, ["healthz"] | ["livez"]) => return text(StatusCode::OK, "ok\n"),
            (true, ["readyz"]) => {
                return if self.dataplane.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.dataplane.is_loaded() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no configuration loaded yet\n",
                    )
                };
            }
            (true, ["metrics"]) => return self.metrics(),
            _ => {}
        }
        if read {
            if self.protect_reads
                && self.token.is_some()
                && let Err(d) = self.authorize(&req)
            {
                return denied(d);
            }
            let query = req.uri().query().unwrap_or("");
            return match segs.as_slice() {
                ["status"] => self.status(),
                ["pools"] => self.status(),
                ["pools", pool] => self.pool(pool, namespace_param(query)),
                ["config"] => self.config(query),
                ["log-level"] => match crate::logging::current_filter() {
                    Some(f) => text(StatusCode::OK, &format!("{f}\n")),
                    None => text(StatusCode::OK, "logging is not initialised by keyway\n"),
                },
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found; try /healthz, /readyz, /metrics, /status, /pools/{pool}, /config, /log-level\n",
                ),
            };
        }
        self.write(req, segments, remote).await
    }

    /// Checks the bearer token of a request.
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Denied> {
        let Some(token) = &self.token else {
            return Err(Denied::Disabled);
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::access::strip_bearer)
            .unwrap_or("");
        if ct_eq(presented.as_bytes(), token.expose().as_bytes()) {
            Ok(())
        } else {
            Err(Denied::Unauthorized)
        }
    }

    async fn write(
        &self,
        req: Request<Incoming>,
        segments: Vec<String>,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let known = matches!(
            (&method, segs.as_slice()),
            (&Method::POST, ["pools", _, "keys"])
                | (&Method::PUT | &Method::DELETE, ["pools", _, "keys", _])
                | (&Method::POST, ["pools", _, "backends"])
                | (&Method::DELETE, ["pools", _, "backends", _])
                | (&Method::PUT, ["pools", _, "evacuate"])
                | (&Method::POST, ["stats", "reset"])
                | (&Method::PUT, ["log-level"])
        );
        if !known {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!(
                    "{method} {} is not an admin API call; see the README's admin API reference",
                    segments.join("/")
                ),
            );
        }
        let edits_file = segs.first() == Some(&"pools");
        if edits_file {
            match &self.mode {
                Mode::File(_) => {}
                Mode::Controller => {
                    let pool = segs.get(1).copied().unwrap_or("NAME");
                    return error(
                        StatusCode::CONFLICT,
                        "read_only",
                        &format!(
                            "this proxy takes its config from the controller; change the resources instead, e.g. {}",
                            kubectl_hint(&segs, pool)
                        ),
                    );
                }
                Mode::QuickStart => {
                    return error(
                        StatusCode::CONFLICT,
                        "read_only",
                        "this proxy runs from KEYWAY_*_KEYS environment variables, so there is no file to edit: run `keyway-proxy export-config > keyway.yaml`, then `keyway-proxy --config keyway.yaml`",
                    );
                }
                Mode::Static => {
                    return error(
                        StatusCode::CONFLICT,
                        "read_only",
                        "this proxy's config is fixed",
                    );
                }
            }
        }
        if let Err(d) = self.authorize(&req) {
            tracing::warn!(remote = %remote.ip(), method = %method, path = %segments.join("/"), "admin write refused: no valid token");
            return denied(d);
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body could not be read (at most 64 KiB)",
                );
            }
        };
        match (&method, segs.as_slice()) {
            (&Method::POST, ["stats", "reset"]) => {
                self.reset_stats();
                tracing::info!(admin = true, who = "admin-token", remote = %remote.ip(), action = "stats_reset", "admin: statistics reset");
                json_response(StatusCode::OK, &json!({"reset": true}))
            }
            (&Method::PUT, ["log-level"]) => {
                let wanted = String::from_utf8_lossy(&body)
                    .trim()
                    .trim_matches('"')
                    .to_string();
                match crate::logging::set_filter(&wanted) {
                    Ok(now) => {
                        tracing::info!(admin = true, who = "admin-token", remote = %remote.ip(), action = "log_level_set", filter = %now, "admin: log level changed");
                        text(StatusCode::OK, &format!("{now}\n"))
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e),
                }
            }
            (_, ["pools", pool, rest @ ..]) => {
                let edit = match parse_edit(&method, rest, &body) {
                    Ok(e) => e,
                    Err(msg) => return error(StatusCode::BAD_REQUEST, "bad_request", &msg),
                };
                self.edit_file(pool, edit, remote).await
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin call"),
        }
    }

    /// Applies an edit to the manifest file, publishes the result and waits until it serves.
    async fn edit_file(&self, pool: &str, edit: Edit, remote: SocketAddr) -> Response<ProxyBody> {
        let Mode::File(path) = &self.mode else {
            return error(StatusCode::CONFLICT, "read_only", "no config file");
        };
        let _guard = self.edits.lock().await;
        let namespace = match self.namespace_of(pool) {
            Ok(ns) => ns,
            Err(resp) => return resp,
        };
        let current = match tokio::fs::read_to_string(path).await {
            Ok(t) => t,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &format!("cannot read {}: {e}", path.display()),
                );
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        let (text, snapshot) = match edit::apply(&current, &namespace, pool, &edit, &env) {
            Ok(r) => r,
            Err(e) => {
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
                return error(status, "rejected", &e.message);
            }
        };
        let write_path = path.clone();
        let written =
            tokio::task::spawn_blocking(move || edit::write_atomic(&write_path, &text)).await;
        if let Err(e) = written
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("cannot write {}: {e}", path.display()),
            );
        }
        let target = match &edit {
            Edit::AddKey { id, .. } | Edit::RotateKey { id, .. } | Edit::RemoveKey { id } => {
                id.clone()
            }
            Edit::AddBackend(b) => b.name.clone(),
            Edit::RemoveBackend { name } => name.clone(),
            Edit::Evacuate(on) => on.to_string(),
        };
        tracing::info!(admin = true, who = "admin-token", remote = %remote.ip(), action = edit.action(), pool = %format!("{namespace}/{pool}"), target = %target, path = %path.display(), "admin: config file edited");
        let snapshot = Arc::new(snapshot);
        self.tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&*snapshot) {
                return false;
            }
            *cur = Some(snapshot.clone());
            true
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while *self.dataplane.router().snapshot != *snapshot {
            if Instant::now() > deadline {
                return json_response(
                    StatusCode::ACCEPTED,
                    &json!({"applied": false, "message": "written; not applied yet"}),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        json_response(
            StatusCode::OK,
            &json!({
                "applied": true,
                "action": edit.action(),
                "pool": format!("{namespace}/{pool}"),
                "target": target,
                "version": self.dataplane.version(),
            }),
        )
    }

    /// The namespace of a pool named without one: unique across namespaces, or `default`.
    #[allow(clippy::result_large_err)]
    fn namespace_of(&self, pool: &str) -> Result<String, Response<ProxyBody>> {
        let router = self.dataplane.router();
        let matches: Vec<&str> = router
            .snapshot
            .pools
            .iter()
            .filter(|p| p.id.name == pool)
            .map(|p| p.id.namespace.as_str())
            .collect();
        match matches.as_slice() {
            [ns] => Ok((*ns).to_string()),
            [] => Err(error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no pool {pool:?}"),
            )),
            _ => Err(error(
                StatusCode::CONFLICT,
                "ambiguous",
                &format!(
                    "pool {pool:?} exists in several namespaces; use ?namespace= on reads, or distinct names"
                ),
            )),
        }
    }

    fn reset_stats(&self) {
        let router = self.dataplane.router();
        for p in &router.pools {
            for b in &p.backends {
                b.counters.requests.store(0, Ordering::Relaxed);
                b.counters.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    fn pool(&self, name: &str, namespace: Option<String>) -> Response<ProxyBody> {
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

    fn config(&self, query: &str) -> Response<ProxyBody> {
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

    fn metrics(&self) -> Response<ProxyBody> {
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

    fn status(&self) -> Response<ProxyBody> {
        json_response(StatusCode::OK, &self.status_json())
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
                        "models": b.models().into_iter().map(|(name, m)| json!({
                            "name": name,
                            "healthy": m.healthy,
                            "capacity": m.capacity,
                            "consumption": m.consumption,
                        })).collect::<Vec<_>>(),
                        "usage": {
                            "requests": b.requests,
                            "failures": b.failures,
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
        json!({
            "source": self.source,
            "loaded": self.dataplane.is_loaded(),
            "configVersion": self.dataplane.version(),
            "pools": pools,
            "keyPools": key_pools,
        })
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

fn parse_edit(method: &Method, rest: &[&str], body: &Bytes) -> Result<Edit, String> {
    let parse = |what: &str| -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("the body must be JSON {what}: {e}"))
    };
    let string = |v: &Value, f: &str| -> Result<String, String> {
        v.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("the body needs a non-empty string field {f:?}"))
    };
    match (method, rest) {
        (&Method::POST, ["keys"]) => {
            let v = parse("{\"id\": \"...\", \"value\": \"...\"}")?;
            let id = string(&v, "id")?;
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(
                    "id may hold letters, digits, '-', '.' and '_' (it is a Secret entry name)"
                        .into(),
                );
            }
            Ok(Edit::AddKey {
                id,
                value: string(&v, "value")?,
            })
        }
        (&Method::PUT, ["keys", id]) => {
            let v = parse("{\"value\": \"...\"}")?;
            Ok(Edit::RotateKey {
                id: (*id).to_string(),
                value: string(&v, "value")?,
            })
        }
        (&Method::DELETE, ["keys", id]) => Ok(Edit::RemoveKey {
            id: (*id).to_string(),
        }),
        (&Method::POST, ["backends"]) => {
            let b: keyway_api::spec::BackendSpec = serde_json::from_slice(body).map_err(|e| {
                format!("the body must be a backend such as {{\"name\": \"b\", \"endpoint\": \"https://...\"}}: {e}")
            })?;
            Ok(Edit::AddBackend(Box::new(b)))
        }
        (&Method::DELETE, ["backends", name]) => Ok(Edit::RemoveBackend {
            name: (*name).to_string(),
        }),
        (&Method::PUT, ["evacuate"]) => {
            let v = parse("{\"enabled\": true}")?;
            let on = v
                .get("enabled")
                .and_then(Value::as_bool)
                .ok_or("the body needs a boolean field \"enabled\"")?;
            Ok(Edit::Evacuate(on))
        }
        _ => Err("no such pool call".into()),
    }
}

/// The `kubectl` command that does in a cluster what a refused write asked for.
fn kubectl_hint(segs: &[&str], pool: &str) -> String {
    match segs.get(2) {
        Some(&"evacuate") => format!(
            "kubectl patch lbp {pool} --type merge -p '{{\"spec\":{{\"evacuatePrimary\":true}}}}'"
        ),
        Some(&"backends") => format!("kubectl edit lbp {pool} (spec.backends)"),
        Some(&"keys") => format!(
            "kubectl get lbp {pool} -o jsonpath='{{.spec.apiKeyPoolRef.name}}', then edit that ApiKeyPool's Secret: kubectl patch secret SECRET --type merge -p '{{\"stringData\":{{\"KEY_ID\":\"...\"}}}}'"
        ),
        _ => format!("kubectl edit lbp {pool}"),
    }
}

fn namespace_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("namespace="))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .unwrap_or_default()
}

fn denied(d: Denied) -> Response<ProxyBody> {
    match d {
        Denied::Disabled => error(
            StatusCode::FORBIDDEN,
            "admin_writes_disabled",
            "admin writes are disabled: start keyway-proxy with --admin-token-file FILE or KEYWAY_ADMIN_TOKEN, then send Authorization: Bearer <token>",
        ),
        Denied::Unauthorized => Rejection::Unauthorized
            .response("send the admin token as Authorization: Bearer <token>"),
    }
}

/// An admin API error, in the same JSON shape as the traffic port's.
fn error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    error_response(status, kind, message)
}

fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    typed(status, "application/json", v.to_string())
}

fn typed(status: StatusCode, content_type: &'static str, s: String) -> Response<ProxyBody> {
    let mut resp = body(status, Bytes::from(s));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, s: &str) -> Response<ProxyBody> {
    body(status, Bytes::copy_from_slice(s.as_bytes()))
}

fn body(status: StatusCode, b: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(b).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}
