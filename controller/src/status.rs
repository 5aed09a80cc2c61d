//! Status out: computes each object's status from the index and the connected proxies, and
//! writes it with server-side apply only when it changed. The controller's own writes wake its
//! watches, but an unchanged status is never written again, so there is no write loop.

use crate::index::{Index, Resolution};
use crate::metrics::Metrics;
use crate::proxies::Proxies;
use crate::watch::Stores;
use keyway_api::model::ObjectId;
use keyway_api::spec::{
    ApiKeyPool, ApiKeyPoolStatus, Condition, LoadBalancerPool, LoadBalancerPoolStatus,
};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The SSA field manager of every status write.
pub const FIELD_MANAGER: &str = "keyway-controller";

/// Writes status for every pool until the index channel closes.
pub async fn run(
    client: Client,
    stores: Stores,
    mut index: watch::Receiver<Arc<Index>>,
    proxies: Proxies,
    metrics: Metrics,
) {
    let mut proxies_changed = proxies.subscribe();
    let mut written_pools: HashMap<ObjectId, LoadBalancerPoolStatus> = HashMap::new();
    let mut written_key_pools: HashMap<ObjectId, ApiKeyPoolStatus> = HashMap::new();
    loop {
        tokio::select! {
            r = index.changed() => if r.is_err() { return },
            r = proxies_changed.changed() => if r.is_err() { return },
        }
        // Coalesce: many proxies connecting at once produce one round of patches.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let idx = index.borrow_and_update().clone();
        proxies_changed.borrow_and_update();

        written_pools.retain(|id, _| idx.pools.contains_key(id));
        for (id, res) in &idx.pools {
            let current = stores
                .pools
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .and_then(|p| p.status.clone());
            let previous = written_pools.get(id).or(current.as_ref());
            let desired = pool_status(res, proxies.serving(id), previous);
            if written_pools.get(id) == Some(&desired) || current.as_ref() == Some(&desired) {
                written_pools.insert(id.clone(), desired);
                continue;
            }
            let api: Api<LoadBalancerPool> = Api::namespaced(client.clone(), &id.namespace);
            if patch(&api, "LoadBalancerPool", id, &desired, &metrics).await {
                written_pools.insert(id.clone(), desired);
            }
        }

        written_key_pools.retain(|id, _| idx.key_pools.contains_key(id));
        for (id, res) in &idx.key_pools {
            let current = stores
                .key_pools
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .and_then(|p| p.status.clone());
            let previous = written_key_pools.get(id).or(current.as_ref());
            let desired = key_pool_status(res, previous);
            if written_key_pools.get(id) == Some(&desired) || current.as_ref() == Some(&desired) {
                written_key_pools.insert(id.clone(), desired);
                continue;
            }
            let api: Api<ApiKeyPool> = Api::namespaced(client.clone(), &id.namespace);
            if patch(&api, "ApiKeyPool", id, &desired, &metrics).await {
                written_key_pools.insert(id.clone(), desired);
            }
        }
    }
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
    LoadBalancerPoolStatus {
        observed_generation: res.generation,
        connected_proxies: connected as i32,
        total_backends,
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
pub fn key_pool_status(res: &Resolution, previous: Option<&ApiKeyPoolStatus>) -> ApiKeyPoolStatus {
    let (status, reason, message, total) = match &res.result {
        Ok(n) => (
            "True",
            "Resolved".to_string(),
            format!("{n} keys loaded"),
            *n as i32,
        ),
        Err(e) => ("False", e.reason.as_str().to_string(), e.to_string(), 0),
    };
    ApiKeyPoolStatus {
        observed_generation: res.generation,
        total_keys: total,
        conditions: vec![ready(
            status,
            reason,
            message,
            res.generation,
            previous.map(|p| p.conditions.as_slice()),
        )],
    }
}

/// A `Ready` condition; `lastTransitionTime` moves only when `status` changes.
fn ready(
    status: &str,
    reason: String,
    message: String,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
) -> Condition {
    let prev = previous.into_iter().flatten().find(|c| c.type_ == "Ready");
    let last_transition_time = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now_rfc3339()),
    };
    Condition {
        type_: "Ready".into(),
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
mod tests {
    use super::*;
    use keyway_api::resolve::{ConfigError, Reason};

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let ok = Resolution {
            generation: Some(2),
            result: Ok(2),
            serving_last_good: false,
        };
        let mut first = pool_status(&ok, 1, None);
        first.conditions[0].last_transition_time = Some("2026-01-01T00:00:00Z".into());
        let again = pool_status(&ok, 3, Some(&first));
        assert_eq!(
            again.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert_eq!(again.connected_proxies, 3);

        let bad = Resolution {
            generation: Some(3),
            result: Err(ConfigError::new("o", "spec.x", Reason::InvalidSpec, "nope")),
            serving_last_good: true,
        };
        let failed = pool_status(&bad, 3, Some(&again));
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, "InvalidSpec");
        assert!(failed.conditions[0].message.contains("last valid version"));
        assert_ne!(
            failed.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert_eq!(failed.total_backends, 2, "keeps describing what is served");
    }
}
