//! Free probes of keys (a `GET` of the pool's health path, `/v1/models` by default, with
//! that key; a probe never costs tokens):
//! - a key refused (401/403) for one request is probed at once: refused again, it is disabled
//!   (the key is bad); accepted, the refusal was the request's doing and the key stays;
//! - keys disabled by refusals are re-probed on their pool's interval and re-enabled when the
//!   upstream accepts them.

use crate::dataplane::{Dataplane, PoolState};
use crate::health::HealthClients;
use crate::http::inject;
use crate::keys::{ProbeAnswer, ProbePurpose};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Empty;
use keyway_api::model::{Auth, HealthTarget, Protocol};
use keyway_api::secret::SecretValue;
use std::sync::Arc;
use std::time::Duration;

/// How often the pools are asked which keys are due (re-enabling: each pool's own interval
/// decides; verifying a refused key: at the next tick).
const TICK: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs forever.
pub async fn run(dataplane: Arc<Dataplane>) {
    // The same TLS config as requests and active checks (`--upstream-ca`).
    let Some(clients) = dataplane.health_clients().cloned() else {
        tracing::error!("no key probe client; disabled keys will not be re-probed");
        std::future::pending::<()>().await;
        return;
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let router = dataplane.router();
        for kp in &router.key_pools {
            let due = kp.engine.reprobe_due();
            if due.is_empty() {
                continue;
            }
            let pool = router
                .pools
                .iter()
                .find(|p| matches!(&p.keys, Ok(Some(k)) if Arc::ptr_eq(k, kp)));
            for (id, value, purpose) in due {
                let answer = match pool {
                    Some(p) => probe(&clients, p, &value, purpose).await,
                    None => ProbeAnswer::Unknown,
                };
                match purpose {
                    ProbePurpose::Reenable => {
                        tracing::info!(key_pool = %kp.label, key_id = %id, ?answer, "re-probed a disabled key");
                    }
                    ProbePurpose::Verify if answer == ProbeAnswer::Refused => {
                        tracing::warn!(key_pool = %kp.label, key_id = %id, "key refused by the upstream, also for a free probe; disabling it");
                    }
                    ProbePurpose::Verify => {
                        tracing::info!(key_pool = %kp.label, key_id = %id, ?answer, "verified a key after a refused request");
                    }
                }
                kp.engine.probe_result(&id, purpose, answer);
            }
        }
    }
}

/// One probe with `key`, sent as requests are: the backend's `hostHeader` as Host and TLS
/// server name, its protocol.
async fn probe(
    clients: &HealthClients,
    pool: &PoolState,
    key: &SecretValue,
    purpose: ProbePurpose,
) -> ProbeAnswer {
    let Some(backend) = pool.backends.iter().find(|b| b.model.weight > 0) else {
        return ProbeAnswer::Unknown;
    };
    if matches!(pool.model.auth, Auth::BodyField { .. }) {
        // A free GET cannot carry a body key. Re-enabling: let the next real request be the
        // trial. Verifying: no evidence, refusals of several requests decide.
        return match purpose {
            ProbePurpose::Reenable => ProbeAnswer::Accepted,
            ProbePurpose::Verify => ProbeAnswer::Unknown,
        };
    }
    let path = match backend.model.health_check.as_ref().map(|h| &h.target) {
        Some(HealthTarget::Path(p)) => p.clone(),
        _ => "/v1/models".to_string(),
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path, None),
    };
    let mut headers = HeaderMap::new();
    let query = inject::inject(&pool.model.auth, key, &mut headers, query.as_deref());
    let endpoint = &backend.model.endpoint;
    let path = crate::http::forward::without_repeated_segment(&endpoint.path_prefix, &path);
    let mut url = format!("{endpoint}{path}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return ProbeAnswer::Unknown;
    };
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    if let Some(h) = &backend.model.host_header
        && let Ok(v) = http::HeaderValue::from_str(h)
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    let client = clients.for_backend(
        backend.tls_server_name(),
        backend.model.protocol == Protocol::Http2,
    );
    match tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => ProbeAnswer::Accepted,
        Ok(Ok(resp)) if matches!(resp.status().as_u16(), 401 | 403) => ProbeAnswer::Refused,
        _ => ProbeAnswer::Unknown,
    }
}
