//! Admin writes: the pool edits of file mode (keys, backends, evacuation), applied to the
//! manifest file and published through the same channel as a reload; refused with the
//! `kubectl` command to use in controller mode. Also `POST /stats/reset` and
//! `PUT /log-level`.

use super::compat::Alias;
use super::{Admin, MAX_BODY, Mode, denied, error, json_response, text};
use crate::config::edit::{self, Edit};
use crate::http::ProxyBody;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// === impl Admin ===

impl Admin {
    pub(super) async fn write(
        &self,
        req: Request<Incoming>,
        segments: Vec<String>,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let alias = Alias::parse(&method, &segs).filter(|a| !a.is_read());
        let known = alias.is_some()
            || matches!(
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
        let edits_file = segs.first() == Some(&"pools") || alias.is_some_and(Alias::edits_file);
        if edits_file {
            match &self.mode {
                Mode::File(_) => {}
                Mode::Controller => {
                    let pool = match segs.first() {
                        Some(&"pools") => segs.get(1).copied().unwrap_or("NAME"),
                        _ => "NAME",
                    };
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
        let query = req.uri().query().unwrap_or("").to_string();
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
        if let Some(alias) = alias {
            return self.alias_write(alias, &body, &query, remote).await;
        }
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
    pub(super) async fn edit_file(
        &self,
        pool: &str,
        edit: Edit,
        remote: SocketAddr,
    ) -> Response<ProxyBody> {
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

    pub(super) fn reset_stats(&self) {
        let router = self.dataplane.router();
        for p in &router.pools {
            for b in &p.backends {
                b.counters.requests.store(0, Ordering::Relaxed);
                b.counters.failures.store(0, Ordering::Relaxed);
            }
        }
    }
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
            valid_key_id(&id)?;
            let requests_per_minute = match v.get("requestsPerMinute") {
                None | Some(Value::Null) => None,
                Some(n) => Some(
                    n.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or("\"requestsPerMinute\" must be a whole number")?,
                ),
            };
            Ok(Edit::AddKey {
                id,
                value: string(&v, "value")?,
                requests_per_minute,
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

/// A key id is a Secret entry name.
pub(super) fn valid_key_id(id: &str) -> Result<(), String> {
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Ok(())
    } else {
        Err("id may hold letters, digits, '-', '.' and '_' (it is a Secret entry name)".into())
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
