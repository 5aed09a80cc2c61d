//! Where a request goes before any balancing: the cluster its user is assigned to
//! (`mode: multiCluster`), or the backend and key of the protocol session it belongs to
//! (any pool with `spec.affinity`, e.g. MCP's `Mcp-Session-Id`).
//!
//! The affinity store (see [`crate::affinity`]) holds one small string per user or session:
//! `c\t<backend>` for a user's cluster, `s\t<backend>\t<key id>` for a session.

use super::PoolState;
use crate::multicluster::{self, Candidate, Ineligible, Load};
use http::HeaderMap;
use keyway_api::model::Mode;
use std::sync::Arc;
use std::time::Instant;

/// The outcome of placement for one request.
#[derive(Debug, Default)]
pub struct Placement {
    /// The backend to try first.
    pub backend: Option<usize>,
    /// A session: always this backend, never re-routed (the upstream owns the session).
    pub pinned: bool,
    /// A session's key id.
    pub key_id: Option<Arc<str>>,
    /// The affinity header's value on the request, if any.
    pub affinity_value: Option<String>,
    /// The model the cluster was chosen for (multiCluster retries choose for it again).
    pub model: Option<String>,
}

/// Why no backend can be placed.
#[derive(Debug)]
pub enum PlaceError {
    /// multiCluster: no cluster is eligible for the model.
    NoCluster { model: Option<String> },
    /// The session's backend left the config.
    SessionGone { backend: String },
}

enum Stored<'a> {
    Cluster(&'a str),
    Session { backend: &'a str, key: &'a str },
}

fn parse(v: &str) -> Option<Stored<'_>> {
    let (kind, rest) = v.split_once('\t')?;
    match kind {
        "c" => Some(Stored::Cluster(rest)),
        "s" => {
            let (backend, key) = rest.rsplit_once('\t')?;
            Some(Stored::Session { backend, key })
        }
        _ => None,
    }
}

impl PoolState {
    /// Places one request: a learned session pins backend and key; in multiCluster mode the
    /// user's cluster (kept while eligible, else reassigned) or a weighted random cluster.
    pub async fn place(
        &self,
        headers: &HeaderMap,
        body_model: Option<&str>,
    ) -> Result<Placement, PlaceError> {
        let multi = self.model.mode == Mode::MultiCluster;
        let mut placement = Placement::default();
        if multi {
            placement.model = self
                .model_header
                .as_ref()
                .and_then(|h| headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| body_model.map(str::to_string));
        }
        let Some(store) = &self.affinity else {
            return Ok(placement);
        };
        placement.affinity_value = headers
            .get(store.settings.header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let stored = match &placement.affinity_value {
            Some(v) => store.get(v).await,
            None => None,
        };
        if let Some(Stored::Session { backend, key }) = stored.as_deref().and_then(parse) {
            let Some(idx) = self.backend_index(backend) else {
                return Err(PlaceError::SessionGone {
                    backend: backend.to_string(),
                });
            };
            placement.backend = Some(idx);
            placement.pinned = true;
            placement.key_id = (!key.is_empty()).then(|| Arc::from(key));
            return Ok(placement);
        }
        if !multi {
            return Ok(placement);
        }

        let weights = self.cluster_weights(placement.model.as_deref());
        let Some(user) = placement.affinity_value.clone() else {
            placement.backend = self.random_cluster(&weights, &[]);
            return match placement.backend {
                Some(_) => Ok(placement),
                None => Err(PlaceError::NoCluster {
                    model: placement.model,
                }),
            };
        };
        let assigned = match stored.as_deref().and_then(parse) {
            Some(Stored::Cluster(name)) => Some(match self.backend_index(name) {
                Some(i) => (i, weights[i]),
                None => (usize::MAX, Err(Ineligible::Unhealthy)),
            }),
            _ => None,
        };
        let chosen = match assigned {
            // Sticky while the cluster and the model are healthy and not overloaded (the
            // lookup refreshed the TTL).
            Some((i, Ok(_))) => i,
            Some((_, Err(why))) => {
                let reason = match why {
                    Ineligible::Unhealthy => "cluster_unhealthy",
                    Ineligible::Overloaded => "overloaded",
                };
                let Some(i) = self.first_cluster(&user, &weights) else {
                    return Err(PlaceError::NoCluster {
                        model: placement.model,
                    });
                };
                self.cluster_metrics.rebalance(reason);
                self.cluster_metrics.assignment_changes.inc();
                store.put(&user, self.cluster_value(i), false).await;
                i
            }
            None => {
                let Some(i) = self.first_cluster(&user, &weights) else {
                    return Err(PlaceError::NoCluster {
                        model: placement.model,
                    });
                };
                // Another replica may have assigned the user meanwhile: its choice wins.
                let winner = store.put(&user, self.cluster_value(i), true).await;
                match parse(&winner) {
                    Some(Stored::Cluster(name)) => self
                        .backend_index(name)
                        .filter(|&w| weights[w].is_ok())
                        .unwrap_or(i),
                    _ => i,
                }
            }
        };
        placement.backend = Some(chosen);
        Ok(placement)
    }

    /// multiCluster retry after a failed attempt: a weighted random eligible cluster not yet
    /// tried.
    pub fn retry_cluster(&self, model: Option<&str>, tried: &[usize]) -> Option<usize> {
        let weights = self.cluster_weights(model);
        self.random_cluster(&weights, tried)
    }

    /// Remembers the session an upstream opened (its response carried the affinity header
    /// with a value the request did not send), so the session's later requests come back to
    /// this backend with this key.
    pub async fn learn_session(
        &self,
        request_value: Option<&str>,
        response: &HeaderMap,
        backend: usize,
        key_id: Option<&str>,
    ) {
        let Some(store) = &self.affinity else {
            return;
        };
        let Some(value) = response
            .get(store.settings.header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        else {
            return;
        };
        if request_value == Some(value) {
            return;
        }
        let Some(b) = self.backends.get(backend) else {
            return;
        };
        let entry: Arc<str> = format!("s\t{}\t{}", b.model.name, key_id.unwrap_or_default()).into();
        store.put(value, entry, false).await;
        self.cluster_metrics.sessions_learned.inc();
        tracing::debug!(pool = %self.label, backend = %b.model.name, "session pinned to its backend");
    }

    /// Each backend's eligibility and weight for new users of `model`.
    pub fn cluster_weights(&self, model: Option<&str>) -> Vec<Result<f64, Ineligible>> {
        let now = Instant::now();
        let balance = &self.model.cluster_balance;
        let (ratio, s) = (balance.overloaded_ratio(), balance.smoothing());
        self.backends
            .iter()
            .map(|b| {
                let c = Candidate {
                    available: b.model.weight > 0 && b.health.is_available(now, false),
                    load: cluster_load(&b.health, model),
                };
                multicluster::eligibility(&c, ratio, s)
            })
            .collect()
    }

    fn first_cluster(&self, user: &str, weights: &[Result<f64, Ineligible>]) -> Option<usize> {
        let eligible = || {
            self.backends
                .iter()
                .enumerate()
                .filter_map(|(i, b)| Some((i, b.model.name.as_str(), *weights[i].as_ref().ok()?)))
        };
        let chosen = multicluster::rendezvous(user, eligible())?;
        let Some(t) = &self.model.cluster_balance.token_rebalance else {
            return Some(chosen);
        };
        let now = Instant::now();
        let rates = eligible().filter_map(|(i, _, _)| {
            let b = &self.backends[i];
            let cap = b.health.load().map(|(cap, _)| cap)?;
            Some((i, b.counters.tokens.per_minute(now), cap))
        });
        let ratio = f64::from(t.imbalance_ratio_ppm) / 1e6;
        let fraction = f64::from(t.max_fraction_ppm) / 1e6;
        match multicluster::token_imbalance(rates, ratio) {
            Some((busiest, idlest)) if busiest == chosen && rand::random::<f64>() < fraction => {
                self.cluster_metrics.rebalance("tpm_imbalance");
                Some(idlest)
            }
            _ => Some(chosen),
        }
    }

    fn random_cluster(
        &self,
        weights: &[Result<f64, Ineligible>],
        exclude: &[usize],
    ) -> Option<usize> {
        let eligible = weights
            .iter()
            .enumerate()
            .filter(|(i, _)| !exclude.contains(i))
            .filter_map(|(i, w)| Some((i, *w.as_ref().ok()?)));
        multicluster::weighted_pick(eligible, rand::random::<f64>())
    }

    fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.model.name == name)
    }

    fn cluster_value(&self, i: usize) -> Arc<str> {
        format!("c\t{}", self.backends[i].model.name).into()
    }
}

/// The deep-health view of a cluster for a model (all its models when none is named).
fn cluster_load(health: &crate::health::BackendHealth, model: Option<&str>) -> Load {
    let snap = health.deep_snapshot();
    if snap.updated().is_none() {
        return Load::Unknown;
    }
    match model {
        Some(m) => match snap.model(m) {
            None => Load::Absent,
            Some(l) if l.healthy == Some(false) => Load::Unhealthy,
            Some(l) => Load::Reported {
                capacity: l.capacity,
                consumption: l.consumption,
            },
        },
        None => match snap.load() {
            Some((capacity, consumption)) => Load::Reported {
                capacity: Some(capacity),
                consumption: Some(consumption),
            },
            None => Load::Reported {
                capacity: None,
                consumption: None,
            },
        },
    }
}
