//! Admin calls of the tools Keyway replaces, in their shapes, on the admin port, behind the
//! same token and file-mode rules as the native calls they map to:
//!
//! - the Tavily/MCP balancer: `GET /health`, `GET /pool`, `POST /api-keys/add`
//!   (`{"id","value","quota_per_minute"}`), `POST /api-keys/rotate` (`{"id","value"}`),
//!   `POST /servers/add` (`{"name","host","port","weight"}`), `POST /servers/remove`
//!   (`{"name"}`); its `GET /status` is Keyway's own `/status`;
//! - the Python LM proxy: `GET /health`, `GET /stats`;
//! - the Workers balancer: `GET .../load-balancer/status`, `GET .../load-balancer/config`,
//!   `POST .../load-balancer/reset` (any prefix, so `/:uuid/lb/v1/load-balancer/status`
//!   works unchanged), and `POST /reset`.
//!
//! They read the same live view as `/status` and write through the same file edits as
//! `/pools/{pool}/...`. Keys are shown by id, never by value (the Workers balancer keyed its
//! `apiKeyStats` by the key itself; Keyway keys them by id). With several pools, a call names
//! one with `?pool=NAME` (or `"pool"` in a write's body); with one, it is that one.

use super::{Admin, error, json_response};
use crate::config::edit::Edit;
use crate::dataplane::KeyView;
use crate::http::ProxyBody;
use http::{Method, Response, StatusCode};
use keyway_api::model::Selection;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// One alias call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alias {
    Health,
    Stats,
    Pool,
    WorkersStatus,
    WorkersConfig,
    Reset,
    AddKey,
    RotateKey,
    AddServer,
    RemoveServer,
}

// === impl Alias ===

impl Alias {
    pub(super) fn parse(method: &Method, segs: &[&str]) -> Option<Self> {
        let read = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let workers = match segs {
            [.., "load-balancer", last] => Some(*last),
            _ => None,
        };
        Some(match (segs, workers) {
            (_, Some("status")) if read => Alias::WorkersStatus,
            (_, Some("config")) if read => Alias::WorkersConfig,
            (_, Some("reset")) if post => Alias::Reset,
            (["health"], _) if read => Alias::Health,
            (["stats"], _) if read => Alias::Stats,
            (["pool"], _) if read => Alias::Pool,
            (["reset"], _) if post => Alias::Reset,
            (["api-keys", "add"], _) if post => Alias::AddKey,
            (["api-keys", "rotate"], _) if post => Alias::RotateKey,
            (["servers", "add"], _) if post => Alias::AddServer,
            (["servers", "remove"], _) if post => Alias::RemoveServer,
            _ => return None,
        })
    }

    pub(super) fn is_read(self) -> bool {
        matches!(
            self,
            Alias::Health
                | Alias::Stats
                | Alias::Pool
                | Alias::WorkersStatus
                | Alias::WorkersConfig
        )
    }

    /// Writes that edit the config file (refused outside file mode, as `/pools/...` are).
    pub(super) fn edits_file(self) -> bool {
        matches!(
            self,
            Alias::AddKey | Alias::RotateKey | Alias::AddServer | Alias::RemoveServer
        )
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn query_pool(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pool="))
        .map(super::percent_decode)
}

/// The Workers balancer's spelling of a key selection.
fn strategy(s: Selection) -> &'static str {
    match s {
        Selection::RoundRobin => "round-robin",
        Selection::Weighted => "weighted",
        Selection::TimeWindow => "time-window",
        Selection::LeastUsed => "least-used",
    }
}

// === impl Admin ===

impl Admin {
    /// The pool a call is about: the named one, else the only one (with keys, when `keys`).
    #[allow(clippy::result_large_err)]
    fn alias_pool(&self, named: Option<String>, keys: bool) -> Result<String, Response<ProxyBody>> {
        let router = self.dataplane.router();
        if let Some(name) = named {
            return Ok(name);
        }
        let candidates: Vec<&str> = router
            .snapshot
            .pools
            .iter()
            .filter(|p| !keys || p.key_pool.is_some())
            .map(|p| p.id.name.as_str())
            .collect();
        match candidates.as_slice() {
            [one] => Ok((*one).to_string()),
            [] => Err(error(
                StatusCode::NOT_FOUND,
                "not_found",
                if keys { "no pool has keys" } else { "no pools" },
            )),
            many => Err(error(
                StatusCode::CONFLICT,
                "ambiguous",
                &format!(
                    "several pools ({}): name one with ?pool=NAME (or \"pool\" in the body)",
                    many.join(", ")
                ),
            )),
        }
    }

    pub(super) fn alias_read(&self, alias: Alias, query: &str) -> Response<ProxyBody> {
        match alias {
            Alias::Health => self.health(),
            Alias::Stats => self.stats(),
            Alias::Pool => self.key_list(),
            Alias::WorkersStatus | Alias::WorkersConfig => {
                let named = query_pool(query);
                let pool = match self.alias_pool(named, true) {
                    Ok(p) => p,
                    Err(resp) => return resp,
                };
                self.workers(alias, &pool)
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin call"),
        }
    }

    /// `GET /health`: the Python proxy's shape (`status`, `timestamp`, `load_balancer` with
    /// `<pool>_keys_configured` and `endpoints`), and per pool whether it can serve. 503 with
    /// `"status": "unhealthy"` when some pool cannot (no available backend, or no key pool).
    fn health(&self) -> Response<ProxyBody> {
        let view = self.dataplane.view();
        let mut lb = serde_json::Map::new();
        let mut endpoints = serde_json::Map::new();
        let mut pools = Vec::new();
        let mut all_serve = self.dataplane.is_loaded();
        for p in view.pools() {
            let model = p.model();
            let name = &model.id.name;
            let backends: Vec<_> = p.backends().collect();
            let available = backends.iter().filter(|b| b.available).count();
            let serves = available > 0 && p.key_pool_available();
            all_serve &= serves;
            endpoints.insert(
                name.clone(),
                json!(
                    backends
                        .iter()
                        .map(|b| b.model().endpoint.to_string())
                        .collect::<Vec<_>>()
                ),
            );
            pools.push(json!({
                "pool": p.label(),
                "healthy": serves,
                "healthy_backends": p.healthy_backends(),
                "available_backends": available,
                "total_backends": backends.len(),
            }));
        }
        for kp in view.key_pools() {
            for p in view.snapshot().pools.iter().filter(|p| {
                p.id.namespace == kp.state.id.namespace
                    && p.key_pool.as_deref() == Some(kp.state.id.name.as_str())
            }) {
                lb.insert(
                    format!("{}_keys_configured", p.id.name),
                    json!(kp.keys.len()),
                );
            }
        }
        lb.insert("endpoints".into(), Value::Object(endpoints));
        let status = if all_serve { "healthy" } else { "unhealthy" };
        json_response(
            if all_serve {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            &json!({
                "status": status,
                "timestamp": now_secs(),
                "load_balancer": lb,
                "pools": pools,
            }),
        )
    }

    /// `GET /stats`: the Python proxy's `load_balancer_stats` per pool (`keys_count`,
    /// `endpoints`), with request and failure counts.
    fn stats(&self) -> Response<ProxyBody> {
        let view = self.dataplane.view();
        let key_counts: Vec<((String, String), usize)> = view
            .key_pools()
            .map(|kp| {
                (
                    (kp.state.id.namespace.clone(), kp.state.id.name.clone()),
                    kp.keys.len(),
                )
            })
            .collect();
        let mut out = serde_json::Map::new();
        for p in view.pools() {
            let model = p.model();
            let keys = model.key_pool.as_ref().map_or(0, |kp| {
                key_counts
                    .iter()
                    .find(|((ns, n), _)| *ns == model.id.namespace && n == kp)
                    .map_or(0, |(_, c)| *c)
            });
            let backends: Vec<_> = p.backends().collect();
            out.insert(
                model.id.name.clone(),
                json!({
                    "keys_count": keys,
                    "endpoints": backends.iter().map(|b| b.model().endpoint.to_string()).collect::<Vec<_>>(),
                    "requests": backends.iter().map(|b| b.requests).sum::<u64>(),
                    "failures": backends.iter().map(|b| b.failures).sum::<u64>(),
                }),
            );
        }
        json_response(StatusCode::OK, &json!({"load_balancer_stats": out}))
    }

    /// `GET /pool`: the Tavily balancer's key list, by id, with each key's quota.
    fn key_list(&self) -> Response<ProxyBody> {
        let view = self.dataplane.view();
        let mut keys = Vec::new();
        for kp in view.key_pools() {
            for k in &kp.keys {
                let limits = kp
                    .state
                    .model
                    .keys
                    .iter()
                    .find(|m| m.id == k.id)
                    .map(|m| m.limits)
                    .unwrap_or_default();
                keys.push(json!({
                    "id": k.id,
                    "key_pool": kp.state.label,
                    "quota_per_minute": limits.requests_per_minute,
                    "weight": limits.weight,
                    "state": k.state,
                    "requests": k.requests,
                    "failures": k.failures,
                    "requests_this_minute": k.requests_this_minute,
                    "requests_left_this_minute": k.requests_left_this_minute,
                }));
            }
        }
        json_response(
            StatusCode::OK,
            &json!({"total_keys": keys.len(), "api_keys": keys}),
        )
    }

    /// `.../load-balancer/status` and `.../load-balancer/config`: the Workers balancer's
    /// shapes for one pool's keys.
    fn workers(&self, alias: Alias, pool: &str) -> Response<ProxyBody> {
        let view = self.dataplane.view();
        let Some(model) = view.snapshot().pools.iter().find(|p| p.id.name == pool) else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no pool {pool:?}"),
            );
        };
        let Some(kp) = view.key_pools().find(|kp| {
            kp.state.id.namespace == model.id.namespace
                && model.key_pool.as_deref() == Some(kp.state.id.name.as_str())
        }) else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("pool {pool:?} has no keys"),
            );
        };
        let selection = kp.state.model.selection;
        if alias == Alias::WorkersConfig {
            let window_minutes = (selection == Selection::TimeWindow)
                .then(|| kp.state.model.time_window.as_secs().div_ceil(60));
            return json_response(
                StatusCode::OK,
                &json!({
                    "enabled": true,
                    "strategy": strategy(selection),
                    "windowSize": window_minutes,
                    "pool": pool,
                    "apiKeys": kp.state.model.keys.iter().map(|k| json!({"id": k.id, "weight": k.limits.weight})).collect::<Vec<_>>(),
                }),
            );
        }
        let keys: &[KeyView] = &kp.keys;
        let total: u64 = keys.iter().map(|k| k.requests).sum();
        let failed: u64 = keys.iter().map(|k| k.failures).sum();
        let last_used = keys.iter().filter_map(|k| k.last_used_unix_ms).max();
        let per_key: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| {
                (
                    k.id.clone(),
                    json!({"requests": k.requests, "failures": k.failures, "lastUsed": k.last_used_unix_ms, "state": k.state}),
                )
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "loadBalancer": {
                    "enabled": true,
                    "activeKeys": keys.iter().filter(|k| k.state == "active").count(),
                    "totalKeys": keys.len(),
                    "strategy": strategy(selection),
                    "stats": {
                        "totalRequests": total,
                        "successfulRequests": total.saturating_sub(failed),
                        "failedRequests": failed,
                        "lastUsed": last_used,
                        "apiKeyStats": per_key,
                    },
                },
            }),
        )
    }

    /// The writes, after the token check (and, for file edits, the file-mode check).
    pub(super) async fn alias_write(
        &self,
        alias: Alias,
        body: &[u8],
        query: &str,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
        if alias == Alias::Reset {
            self.reset_stats();
            tracing::info!(admin = true, who = "admin-token", remote = %remote.ip(), action = "stats_reset", "admin: statistics reset");
            return json_response(StatusCode::OK, &json!({"reset": true, "success": true}));
        }
        let v: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("the body must be a JSON object, e.g. {}", example(alias)),
                );
            }
        };
        let named = v
            .get("pool")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| query_pool(query));
        let keys = matches!(alias, Alias::AddKey | Alias::RotateKey);
        let pool = match self.alias_pool(named, keys) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let edit = match alias_edit(alias, &v) {
            Ok(e) => e,
            Err(msg) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("{msg}; e.g. {}", example(alias)),
                );
            }
        };
        self.edit_file(&pool, edit, remote).await
    }
}

fn example(alias: Alias) -> &'static str {
    match alias {
        Alias::AddKey => r#"{"id":"key-3","value":"NEW_KEY","quota_per_minute":100}"#,
        Alias::RotateKey => r#"{"id":"key-1","value":"NEW_VALUE"}"#,
        Alias::AddServer => r#"{"name":"backend-c","host":"10.0.1.22","port":443,"weight":1}"#,
        Alias::RemoveServer => r#"{"name":"backend-c"}"#,
        _ => "{}",
    }
}

/// The native edit an alias write stands for.
fn alias_edit(alias: Alias, v: &Value) -> Result<Edit, String> {
    let string = |f: &str| -> Result<String, String> {
        v.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("the body needs a non-empty string field {f:?}"))
    };
    let number = |f: &str, max: u64| -> Result<Option<u64>, String> {
        match v.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| format!("{f:?} must be a whole number from 0 to {max}")),
        }
    };
    match alias {
        Alias::AddKey => {
            let id = string("id")?;
            super::edit::valid_key_id(&id)?;
            let rpm = number("quota_per_minute", u64::from(u32::MAX))?;
            Ok(Edit::AddKey {
                id,
                value: string("value")?,
                requests_per_minute: rpm.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            })
        }
        Alias::RotateKey => {
            let id = string("id").map_err(|_| {
                "Keyway rotates keys on every request by itself; /api-keys/rotate replaces one key's value and needs \"id\" and \"value\"".to_string()
            })?;
            Ok(Edit::RotateKey {
                id,
                value: string("value")?,
            })
        }
        Alias::AddServer => {
            let name = string("name")?;
            let host = string("host")?;
            let port = number("port", 65_535)?.unwrap_or(443);
            let scheme = match v.get("scheme").and_then(Value::as_str) {
                Some(s @ ("http" | "https")) => s.to_string(),
                Some(other) => {
                    return Err(format!("\"scheme\" must be http or https, got {other:?}"));
                }
                // Tavily's servers are TLS on 443; anything else is taken as plain HTTP.
                None if port == 443 => "https".into(),
                None => "http".into(),
            };
            let weight = number("weight", 10_000)?;
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            Ok(Edit::AddBackend(Box::new(keyway_api::spec::BackendSpec {
                name,
                endpoint: format!("{scheme}://{host}:{port}"),
                weight: weight.map(|w| i32::try_from(w).unwrap_or(10_000)),
                ..Default::default()
            })))
        }
        Alias::RemoveServer => Ok(Edit::RemoveBackend {
            name: string("name")?,
        }),
        _ => Err("not a file edit".into()),
    }
}
