//! Routing: the compiled snapshot ([`Router`]) and which pool a request belongs to.

use super::pool::{KeyPoolState, PoolState};
use keyway_api::model;
use std::sync::Arc;

/// One compiled snapshot.
#[derive(Default)]
pub struct Router {
    pub snapshot: Arc<model::Snapshot>,
    pub pools: Vec<Arc<PoolState>>,
    pub key_pools: Vec<Arc<KeyPoolState>>,
    /// Bytes of request body to read ahead (model routes, replayable retries).
    pub(super) read_ahead: usize,
    /// Some pool routes or places requests by the body's `model`.
    pub(super) needs_model: bool,
    /// See [`super::Dataplane::set_home_namespace`].
    pub(super) home_namespace: Option<String>,
}

// === impl Router ===

impl Router {
    /// The pool a request belongs to: the most specific matching route wins (longest path
    /// prefix, then most headers); a pool without routes catches what no route claims. On a
    /// tie, a pool of the proxy's own namespace wins over one granted by another namespace
    /// (`pathPrefix: /` matches everything, so it ties with a catch-all).
    pub fn route(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        model: Option<&str>,
    ) -> Option<&Arc<PoolState>> {
        self.route_with(path, headers, model).map(|(pool, _)| pool)
    }

    /// [`Router::route`], with the winning route's `stripPrefix` (what to remove from the
    /// path before it goes upstream).
    pub fn route_with(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        model: Option<&str>,
    ) -> Option<(&Arc<PoolState>, Option<&str>)> {
        // (path prefix length, conditions, own namespace, has route): larger wins.
        type Score = (usize, usize, bool, bool);
        let mut best: Option<(&Arc<PoolState>, Score, Option<&str>)> = None;
        for pool in &self.pools {
            let own = self
                .home_namespace
                .as_deref()
                .is_none_or(|home| pool.model.id.namespace == home);
            let score = if pool.model.routes.is_empty() {
                Some(((0, 0, own, false), None))
            } else {
                pool.model
                    .routes
                    .iter()
                    .filter(|r| route_matches(r, path, headers, model))
                    .map(|r| {
                        // "/" says no more than no prefix at all.
                        let prefix = r
                            .path_prefix
                            .as_ref()
                            .map_or(0, |p| if p == "/" { 0 } else { p.len() });
                        let conditions = r.headers.len() + usize::from(r.model.is_some());
                        ((prefix, conditions, own, true), r.strip_prefix.as_deref())
                    })
                    .max_by_key(|(score, _)| *score)
            };
            if let Some((score, strip)) = score
                && best.as_ref().is_none_or(|(_, s, _)| score > *s)
            {
                best = Some((pool, score, strip));
            }
        }
        best.map(|(p, _, strip)| (p, strip))
    }

    /// How much of a request body to read before routing.
    pub fn read_ahead_bytes(&self) -> usize {
        self.read_ahead
    }

    /// Whether routing or placement reads the JSON body's `model`.
    pub fn needs_model(&self) -> bool {
        self.needs_model
    }
}

fn route_matches(
    route: &model::Route,
    path: &str,
    headers: &http::HeaderMap,
    body_model: Option<&str>,
) -> bool {
    if let Some(prefix) = &route.path_prefix
        && !path.starts_with(prefix.as_str())
    {
        return false;
    }
    if let Some(glob) = &route.model {
        match body_model {
            Some(m) if model::glob_match(glob, m) => {}
            _ => return false,
        }
    }
    route.headers.iter().all(|(name, value)| {
        headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    })
}
