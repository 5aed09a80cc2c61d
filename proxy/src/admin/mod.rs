//! The admin port, separate from traffic.
//!
//! Reads: `/` (the status page), `/healthz`, `/readyz`, `/metrics`, `/status`,
//! `/status/history`, `/pools/{pool}`, `/config`, `/log-level`. Writes (bearer token from `--admin-token-file` / `KEYWAY_ADMIN_TOKEN`):
//! `POST /pools/{pool}/keys`, `PUT|DELETE /pools/{pool}/keys/{id}`, `POST /pools/{pool}/backends`,
//! `DELETE /pools/{pool}/backends/{name}`, `PUT /pools/{pool}/evacuate`, `POST /stats/reset`,
//! `PUT /log-level`, and the other tools' aliases of these (`compat`). In file mode, pool
//! writes edit the manifest file (atomically) and take effect through the same channel as a
//! reload; in controller mode they are refused with the `kubectl` command to use. Key values
//! are never shown: only ids.
//!
//! Here: routing, tokens and the response helpers; `status`: the reads of live state
//! (`/status`, `/status/history`, `/pools/{pool}`, `/config`, `/metrics`); `page`: the status
//! page, a static document that reads `/status`; `edit`: the writes; `compat`: the
//! admin calls of the tools Keyway replaces (`/health`, `/stats`, `/pool`, `/api-keys/*`,
//! `/servers/*`, `.../load-balancer/*`, `/reset`), mapped onto the same reads and writes.

mod compat;
mod edit;
mod page;
mod status;

pub use status::effective_config;

use crate::access::ct_eq;
use crate::config::SnapshotTx;
use crate::dataplane::Dataplane;
use crate::http::ProxyBody;
use crate::http::error::{Rejection, error_response};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use keyway_api::model::Cidr;
use keyway_api::secret::SecretValue;
use prometheus::Registry;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// A read beyond health and metrics on a non-loopback admin port without a token.
    ReadsNeedAToken,
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
            // The page holds no state of its own (it reads `/status` with the token the
            // operator gives it), so it is open like the health checks.
            (true, []) => return self.page(),
            _ => {}
        }
        if read {
            // Beyond loopback (an injected sidecar's admin port is scraped on the pod's
            // address; a gateway's is on the network), the config and status are not open
            // to the cluster: they need the token, and without one they are off.
            if self.protect_reads
                && let Err(d) = self.authorize(&req)
            {
                return denied(match d {
                    Denied::Disabled => Denied::ReadsNeedAToken,
                    other => other,
                });
            }
            let query = req.uri().query().unwrap_or("");
            if let Some(alias) = compat::Alias::parse(&method, &segs) {
                return self.alias_read(alias, query);
            }
            return match segs.as_slice() {
                ["status"] => self.status(),
                ["status", "history"] => self.history(),
                ["pools"] => self.status(),
                ["pools", pool] => self.pool(pool, namespace_param(query)),
                ["config"] => self.config(query),
                ["log-level"] => match crate::logging::current_filter() {
                    Some(f) => text(StatusCode::OK, &format!("{f}\n")),
                    None => text(StatusCode::OK, "logging is not initialised by keyway\n"),
                },
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found; try /, /healthz, /readyz, /metrics, /status, /status/history, /pools/{pool}, /config, /log-level\n",
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
        Denied::ReadsNeedAToken => error(
            StatusCode::FORBIDDEN,
            "admin_reads_disabled",
            "this admin port listens beyond loopback, so /status, /pools, /config and /log-level need a token: start keyway-proxy with --admin-token-file FILE or KEYWAY_ADMIN_TOKEN (or --admin-listen 127.0.0.1:PORT); /healthz, /readyz and /metrics stay open",
        ),
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
