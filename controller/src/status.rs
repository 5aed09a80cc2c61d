//! Status out: computes each object's status from the index and the connected proxies, and
//! writes it with server-side apply only when it changed. The controller's own writes wake its
//! watches, but an unchanged status is never written again, so there is no write loop.

use crate::aggregate::{self, KeyPoolView, PoolView};
use crate::events::{self, Events};
use crate::index::{Index, Resolution};
use crate::metrics::Metrics;
use crate::proxies::Proxies;
use crate::reflectors::Stores;
use keyway_api::model::ObjectId;
use keyway_api::spec::{
    ApiKeyPool, ApiKeyPoolStatus, Condition, LoadBalancerPool, LoadBalancerPoolStatus,
};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The SSA field manager of every status write.
pub const FIELD_MANAGER: &str = "keyway-controller";

/// Writes status for every pool until the index channel closes.
///
/// Counters (requests, tokens, last use) change with every report; a status whose only change
/// is its counters is written at most once per `counter_interval` per object.
///
/// Only while `leader` is true (this replica holds the Lease) is anything written: status or
/// events. On becoming leader the caches of what was written are dropped and a round runs at
/// once, so the new leader compares against the API's status, not against its own old writes.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    stores: Stores,
    mut index: watch::Receiver<Arc<Index>>,
    proxies: Proxies,
    metrics: Metrics,
    counter_interval: Duration,
    mut leader: watch::Receiver<bool>,
    shared: crate::replicas::Shared,
) {
    let mut proxies_changed = proxies.subscribe();
    let mut others_changed = shared.subscribe();
    let events = Events::new(client.clone());
    // NACKs already turned into events, by (proxy, error).
    let mut nacks_seen: HashSet<(String, String)> = HashSet::new();
    let mut pools: Written<LoadBalancerPoolStatus> = HashMap::new();
    let mut key_pools: Written<ApiKeyPoolStatus> = HashMap::new();
    loop {
        tokio::select! {
            r = index.changed() => if r.is_err() { return },
            r = proxies_changed.changed() => if r.is_err() { return },
            r = others_changed.changed() => if r.is_err() { return },
            r = leader.changed() => {
                if r.is_err() { return }
                // Leader election: a new leader forgets what it wrote in an earlier term.
                if *leader.borrow_and_update() {
                    pools.clear();
                    key_pools.clear();
                }
            }
        }
        // Coalesce: many proxies connecting at once produce one round of patches.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Leader election: only the Lease holder writes status and events.
        if !*leader.borrow() {
            continue;
        }
        let idx = index.borrow_and_update().clone();
        proxies_changed.borrow_and_update();
        others_changed.borrow_and_update();
        // Every replica's proxies: this one's as they are now, the others' as published.
        let others = shared.fresh();
        metrics.replicas_seen.set(others.len() as i64);
        let mut folded = aggregate::fold(&proxies.list());
        for r in &others {
            folded.merge(&r.aggregate);
        }
        let views = folded.views(unix_ms_rfc3339);
        let connected = all_proxies(&proxies, &others);
        let served_by = |p: &crate::replicas::ProxyEntry| -> Vec<ObjectId> {
            idx.namespaces
                .values()
                .flat_map(|n| &n.pools)
                .filter(|m| idx.selects(m, &p.namespace, &p.namespaces, &p.pools))
                .map(|m| m.id.clone())
                .collect()
        };
        let mut serving: HashMap<ObjectId, usize> = HashMap::new();
        let mut nacks: HashMap<ObjectId, (String, String)> = HashMap::new();
        for p in &connected {
            for id in served_by(p) {
                *serving.entry(id.clone()).or_default() += 1;
                if let Some(err) = &p.nack {
                    nacks
                        .entry(id)
                        .or_insert_with(|| (p.id.clone(), err.clone()));
                }
            }
        }
        nacks_seen.retain(|(id, err)| {
            connected
                .iter()
                .any(|p| &p.id == id && p.nack.as_ref() == Some(err))
        });
        for p in &connected {
            let Some(err) = &p.nack else { continue };
            if !nacks_seen.insert((p.id.clone(), err.clone())) {
                continue;
            }
            for id in &served_by(p) {
                let uid = stores
                    .pools
                    .get(&ObjectRef::new(&id.name).within(&id.namespace))
                    .and_then(|o| o.metadata.uid.clone());
                let notice = events::config_rejected(&p.id, err);
                events
                    .publish("LoadBalancerPool", id, uid, vec![notice])
                    .await;
            }
        }

        pools.retain(|id, _| idx.pools.contains_key(id));
        for (id, res) in &idx.pools {
            let object = stores
                .pools
                .get(&ObjectRef::new(&id.name).within(&id.namespace));
            let uid = object.as_ref().and_then(|o| o.metadata.uid.clone());
            let current = object.and_then(|p| p.status.clone());
            let previous = pools.get(id).map(|(s, _)| s).or(current.as_ref());
            let model = idx
                .namespaces
                .get(&id.namespace)
                .and_then(|n| n.pools.iter().find(|p| &p.id == id));
            let health = Health {
                model,
                view: views.pools.get(id),
                keys: model
                    .and_then(|m| m.key_pool.as_ref())
                    .and_then(|k| views.key_pools.get(&ObjectId::new(&id.namespace, k))),
                nack: nacks.get(id).map(|(p, e)| (p.as_str(), e.as_str())),
            };
            let connected = serving.get(id).copied().unwrap_or(0);
            let mut desired = pool_status(res, connected, views.pools.get(id), previous);
            let (st, reason, message) = degraded(&health);
            desired.conditions.push(condition(
                "Degraded",
                st,
                reason.to_string(),
                message,
                res.generation,
                previous.map(|p| p.conditions.as_slice()),
            ));
            let notices = events::pool_transitions(previous, &desired);
            let api: Api<LoadBalancerPool> = Api::namespaced(client.clone(), &id.namespace);
            let written = write_if_changed(
                &api,
                "LoadBalancerPool",
                id,
                desired,
                current,
                &mut pools,
                counter_interval,
                &metrics,
            )
            .await;
            if written {
                events.publish("LoadBalancerPool", id, uid, notices).await;
            }
        }

        key_pools.retain(|id, _| idx.key_pools.contains_key(id));
        for (id, res) in &idx.key_pools {
            let object = stores
                .key_pools
                .get(&ObjectRef::new(&id.name).within(&id.namespace));
            let uid = object.as_ref().and_then(|o| o.metadata.uid.clone());
            let current = object.and_then(|p| p.status.clone());
            let previous = key_pools.get(id).map(|(s, _)| s).or(current.as_ref());
            let desired = key_pool_status(res, views.key_pools.get(id), previous);
            let notices = events::key_pool_transitions(previous, &desired);
            let api: Api<ApiKeyPool> = Api::namespaced(client.clone(), &id.namespace);
            let written = write_if_changed(
                &api,
                "ApiKeyPool",
                id,
                desired,
                current,
                &mut key_pools,
                counter_interval,
                &metrics,
            )
            .await;
            if written {
                events.publish("ApiKeyPool", id, uid, notices).await;
            }
        }
    }
}

/// Every replica's connected proxies, each counted once: this replica's own and the fresh
/// reports of the others. A proxy that just moved to another replica can be in two reports
/// for up to [`crate::replicas::FRESH_FOR`]; it is the same (identity, id), so it counts once.
fn all_proxies(
    proxies: &Proxies,
    others: &[Arc<crate::replicas::ReplicaReport>],
) -> Vec<crate::replicas::ProxyEntry> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let own = crate::replicas::own_proxies(proxies);
    for p in own
        .into_iter()
        .chain(others.iter().flat_map(|r| r.proxies.iter().cloned()))
    {
        if seen.insert((p.identity.clone(), p.id.clone())) {
            out.push(p);
        }
    }
    out
}

/// The last status written per object, and when.
type Written<S> = HashMap<ObjectId, (S, Instant)>;

/// Status types whose usage counters can be masked, to tell a real change from a counter tick.
pub trait Counters: Clone + PartialEq {
    fn without_counters(&self) -> Self;
}

impl Counters for LoadBalancerPoolStatus {
    fn without_counters(&self) -> Self {
        let mut s = self.clone();
        for b in &mut s.backends {
            b.requests = 0;
            b.failures = 0;
        }
        s
    }
}

impl Counters for ApiKeyPoolStatus {
    fn without_counters(&self) -> Self {
        let mut s = self.clone();
        for k in &mut s.keys {
            k.requests = 0;
            k.failures = 0;
            k.tokens = 0;
            k.last_used = None;
        }
        s
    }
}

/// What to do with a desired status, given the last one written (and when) and the API's.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Nothing changed.
    Unchanged,
    /// Only usage counters changed, and the last write is younger than the counter interval.
    CountersTooSoon,
    Write,
}

fn due<S: Counters>(
    last: Option<&(S, Instant)>,
    current: Option<&S>,
    desired: &S,
    counter_interval: Duration,
    now: Instant,
) -> Due {
    if last.map(|(s, _)| s) == Some(desired) || current == Some(desired) {
        return Due::Unchanged;
    }
    match last {
        Some((s, at))
            if s.without_counters() == desired.without_counters()
                && now.saturating_duration_since(*at) < counter_interval =>
        {
            Due::CountersTooSoon
        }
        _ => Due::Write,
    }
}

/// Patches the status unless it is unchanged, or only its counters changed and they were
/// written less than `counter_interval` ago. True when a new status was written.
#[allow(clippy::too_many_arguments)]
async fn write_if_changed<K, S>(
    api: &Api<K>,
    kind: &'static str,
    id: &ObjectId,
    desired: S,
    current: Option<S>,
    written: &mut Written<S>,
    counter_interval: Duration,
    metrics: &Metrics,
) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Counters + serde::Serialize,
{
    let last = written.get(id);
    match due(
        last,
        current.as_ref(),
        &desired,
        counter_interval,
        Instant::now(),
    ) {
        Due::Unchanged => {
            let at = last.map_or_else(Instant::now, |(_, at)| *at);
            written.insert(id.clone(), (desired, at));
            return false;
        }
        Due::CountersTooSoon => return false,
        Due::Write => {}
    }
    if patch(api, kind, id, &desired, metrics).await {
        written.insert(id.clone(), (desired, Instant::now()));
        return true;
    }
    false
}

fn unix_ms_rfc3339(ms: u64) -> Option<String> {
    let t = k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64).ok()?;
    Some(t.round(k8s_openapi::jiff::Unit::Second).ok()?.to_string())
}

async fn patch<K, S>(
    api: &Api<K>,
    kind: &'static str,
    id: &ObjectId,
    status: &S,
    metrics: &Metrics,
) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let body = json!({
        "apiVersion": format!("{}/{}", keyway_api::GROUP, keyway_api::VERSION),
        "kind": kind,
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&id.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => {
            metrics
                .status_patches
                .with_label_values(&[kind, "ok"])
                .inc();
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 => false, // deleted meanwhile
        Err(error) => {
            metrics
                .status_patches
                .with_label_values(&[kind, "error"])
                .inc();
            tracing::warn!(%kind, object = %id, %error, "status patch failed; will retry on the next change");
            false
        }
    }
}

/// The status a `LoadBalancerPool` should have.
pub fn pool_status(
    res: &Resolution,
    connected: usize,
    view: Option<&PoolView>,
    previous: Option<&LoadBalancerPoolStatus>,
) -> LoadBalancerPoolStatus {
    let (status, reason, message) = match &res.result {
        Ok(n) => (
            "True",
            "Resolved".to_string(),
            format!("{n} backends; served by {connected} connected proxies"),
        ),
        Err(e) if res.serving_last_good => (
            "False",
            e.reason.as_str().to_string(),
            format!("{e}; proxies keep serving the last valid version"),
        ),
        Err(e) => ("False", e.reason.as_str().to_string(), e.to_string()),
    };
    let total_backends = match &res.result {
        Ok(n) => *n as i32,
        Err(_) => previous.map_or(0, |p| p.total_backends),
    };
    let view = view.cloned().unwrap_or_default();
    LoadBalancerPoolStatus {
        observed_generation: res.generation,
        connected_proxies: connected as i32,
        total_backends,
        healthy_backends: view.healthy,
        active_backend: view.active,
        backends: view.backends,
        conditions: vec![ready(
            status,
            reason,
            message,
            res.generation,
            previous.map(|p| p.conditions.as_slice()),
        )],
    }
}

/// The status an `ApiKeyPool` should have.
pub fn key_pool_status(
    res: &Resolution,
    view: Option<&KeyPoolView>,
    previous: Option<&ApiKeyPoolStatus>,
) -> ApiKeyPoolStatus {
    let (status, reason, message, total) = match &res.result {
        Ok(n) => (
            "True",
            "Resolved".to_string(),
            format!("{n} keys loaded"),
            *n as i32,
        ),
        Err(e) => ("False", e.reason.as_str().to_string(), e.to_string(), 0),
    };
    let view = view.cloned().unwrap_or_default();
    let count = |state: &str| view.keys.iter().filter(|k| k.state == state).count() as i32;
    ApiKeyPoolStatus {
        observed_generation: res.generation,
        total_keys: total,
        cooling_keys: count("cooling"),
        exhausted_keys: count("exhausted"),
        disabled_keys: count("disabled"),
        // Before any proxy reports, every loaded key counts as active.
        active_keys: if view.keys.is_empty() {
            total
        } else {
            view.active
        },
        keys: view.keys,
        conditions: vec![ready(
            status,
            reason,
            message,
            res.generation,
            previous.map(|p| p.conditions.as_slice()),
        )],
    }
}

/// What the `Degraded` condition of a pool is computed from.
pub struct Health<'a> {
    pub model: Option<&'a keyway_api::model::Pool>,
    /// What the proxies report about the pool (`None`: nothing yet).
    pub view: Option<&'a PoolView>,
    /// What the proxies report about its key pool.
    pub keys: Option<&'a KeyPoolView>,
    /// A proxy serving the pool that rejected the latest snapshot, and why.
    pub nack: Option<(&'a str, &'a str)>,
}

/// `Degraded`: `True` when the pool is served but not as configured or not fully, with the
/// most urgent reason first.
pub fn degraded(h: &Health<'_>) -> (&'static str, &'static str, String) {
    use keyway_api::model::{Mode, Role};
    if let Some((proxy, error)) = h.nack {
        return (
            "True",
            "ProxiesNotAcknowledged",
            format!(
                "proxy {proxy} rejected the latest config and keeps serving its previous version: {error}"
            ),
        );
    }
    let Some(view) = h.view.filter(|v| !v.backends.is_empty()) else {
        return (
            "Unknown",
            "NoReports",
            "no connected proxy has reported on this pool yet".into(),
        );
    };
    if view.healthy == 0 {
        return (
            "True",
            "NoHealthyBackends",
            "no backend is healthy on every reporting proxy".into(),
        );
    }
    if let Some(keys) = h.keys.filter(|k| !k.keys.is_empty() && k.active == 0) {
        let states: Vec<String> = keys
            .keys
            .iter()
            .map(|k| format!("{} {}", k.id, k.state))
            .collect();
        return (
            "True",
            "KeysExhausted",
            format!("no key is active: {}", states.join(", ")),
        );
    }
    if let (Some(model), Some(active)) = (h.model, view.active.as_deref())
        && model.mode == Mode::Failover
    {
        let role = model
            .backends
            .iter()
            .find(|b| b.name == active)
            .and_then(|b| b.role);
        match (model.evacuate_primary, role) {
            (true, Some(Role::Secondary)) => {
                return (
                    "True",
                    "Evacuated",
                    format!("evacuatePrimary is set: traffic is on {active}"),
                );
            }
            (true, _) => {
                return (
                    "True",
                    "EvacuationBlocked",
                    format!(
                        "evacuatePrimary is set but no secondary is healthy: traffic stays on {active}"
                    ),
                );
            }
            (false, Some(Role::Secondary)) => {
                return (
                    "True",
                    "FailedOver",
                    format!("the primary is unhealthy: traffic is on {active}"),
                );
            }
            _ => {}
        }
    }
    ("False", "AsExpected", String::new())
}

/// A `Ready` condition; `lastTransitionTime` moves only when `status` changes.
fn ready(
    status: &str,
    reason: String,
    message: String,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
) -> Condition {
    condition("Ready", status, reason, message, generation, previous)
}

/// A condition of `type_`; `lastTransitionTime` moves only when `status` changes.
fn condition(
    type_: &str,
    status: &str,
    reason: String,
    message: String,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
) -> Condition {
    let prev = previous.into_iter().flatten().find(|c| c.type_ == type_);
    let last_transition_time = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now_rfc3339()),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn now_rfc3339() -> String {
    // Second precision, as Kubernetes' metav1.Time serialises.
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
