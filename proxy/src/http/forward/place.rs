//! Place: where placement puts a routed request (a learned session's backend and key, a
//! multiCluster user's cluster), and what its key needs prepared: the client's own
//! credential removed, a body that can take the key, the usage chunk asked for, the
//! stickiness hash.

use super::admit::{Prepared, Routed};
use crate::dataplane::{KeyPoolState, PlaceError, Placement, PoolState};
use crate::hash::hash_key;
use crate::http::body::RequestBody;
use crate::http::error::{Refusal, Rejection};
use crate::http::inject;
use crate::usage;
use bytes::Bytes;
use http::{HeaderValue, header};
use keyway_api::model::Auth;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request placed: everything its attempts and its response need.
pub(super) struct Exchange<'r> {
    pub pool: &'r Arc<PoolState>,
    pub key_pool: Option<&'r Arc<KeyPoolState>>,
    pub request_id: HeaderValue,
    pub prepared: Prepared,
    pub placement: Placement,
    pub keys: KeyPrep,
    /// The consistent-hash affinity of the request (backend choice).
    pub backend_hash: Option<u64>,
    /// When the request arrived.
    pub started: Instant,
    /// Time spent waiting on upstreams; everything else is Keyway's overhead.
    pub upstream_time: Duration,
}

/// What key injection prepared on the request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct KeyPrep {
    /// The proxy asked for the usage chunk of a stream on the client's behalf: strip it.
    pub strip_usage: bool,
    /// The key stickiness hash (configured header, else the prompt prefix).
    pub affinity: Option<u64>,
}

// === impl Routed ===

impl<'r> Routed<'r> {
    /// The request placed (`placed` is what [`PoolState::place`] answered) and prepared for
    /// its key. `read_ahead` is how much body the router buffers (named when a body is too
    /// large to take the key).
    pub fn placed(
        self,
        placed: Result<Placement, PlaceError>,
        started: Instant,
        read_ahead: usize,
    ) -> Result<Exchange<'r>, Refusal> {
        let Routed {
            pool,
            key_pool,
            request_id,
            mut prepared,
            ..
        } = self;
        let placement = placed.map_err(|e| place_refusal(pool, e))?;
        let keys = match key_pool {
            Some(kp) => prepare_keys(pool, kp, &mut prepared, read_ahead)?,
            None => KeyPrep::default(),
        };
        let backend_hash = pool.affinity_hash(&prepared.headers);
        Ok(Exchange {
            pool,
            key_pool,
            request_id,
            prepared,
            placement,
            keys,
            backend_hash,
            started,
            upstream_time: Duration::ZERO,
        })
    }
}

/// Why placement found no backend, for the client.
pub(super) fn place_refusal(pool: &PoolState, error: PlaceError) -> Refusal {
    match error {
        PlaceError::NoCluster { model } => {
            let msg = match model {
                Some(m) => format!(
                    "pool {}: no cluster can take model {m:?} now (each is unhealthy, lacks the model, or is overloaded)",
                    pool.label
                ),
                None => format!(
                    "pool {}: no cluster can take traffic now (each is unhealthy or overloaded)",
                    pool.label
                ),
            };
            Refusal::new(Rejection::NoCluster, msg)
        }
        PlaceError::SessionGone { backend } => Refusal::new(
            Rejection::SessionGone,
            format!(
                "session not found: its backend {backend} is no longer part of pool {}; start a new session",
                pool.label
            ),
        ),
    }
}

/// Prepares a request for a key of `kp`: the client's own credential goes, a body-field
/// key needs a buffered body, and a stream gets its usage chunk asked for when the key pool
/// counts tokens that way.
pub(super) fn prepare_keys(
    pool: &PoolState,
    kp: &KeyPoolState,
    prepared: &mut Prepared,
    read_ahead: usize,
) -> Result<KeyPrep, Refusal> {
    inject::strip_client_credential(&pool.model.auth, &mut prepared.headers);
    if matches!(pool.model.auth, Auth::BodyField { .. }) && !prepared.body.replayable() {
        return Err(Refusal::new(
            Rejection::BodyTooLarge,
            format!(
                "pool {} injects the key into the JSON body, which must be at most {read_ahead} bytes",
                pool.label
            ),
        ));
    }
    let mut strip_usage = false;
    if kp.model.request_stream_usage
        && let Some(rewritten) = prepared
            .body
            .bytes()
            .and_then(|b| usage::add_include_usage(b))
    {
        prepared.body = RequestBody::Buffered(Bytes::from(rewritten));
        prepared.headers.remove(header::CONTENT_LENGTH);
        strip_usage = true;
    }
    Ok(KeyPrep {
        strip_usage,
        affinity: key_affinity_hash(kp, prepared),
    })
}

/// The stickiness hash for key selection: the configured header, else the prompt prefix.
fn key_affinity_hash(kp: &KeyPoolState, prepared: &Prepared) -> Option<u64> {
    let st = kp.model.stickiness.as_ref()?;
    if let Some(v) = prepared.headers.get(st.header.as_str()) {
        return Some(hash_key(v.as_bytes()));
    }
    let n = st.prompt_prefix_bytes as usize;
    if n == 0 {
        return None;
    }
    let body = prepared.body.bytes()?;
    Some(hash_key(&body[..body.len().min(n)]))
}
