//! Pure: the watched objects in, what every proxy should serve and what every object's status
//! should say out. No Kubernetes client here, so it is unit-tested with plain values.

use keyway_api::model::{self, ObjectId};
use keyway_api::resolve::{self, ConfigError, Reason};
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPoolSpec, LoadBalancerPoolSpec};
use std::collections::{BTreeMap, HashMap};

/// One watched `LoadBalancerPool`, as the index needs it.
#[derive(Clone, Debug)]
pub struct PoolInput {
    pub id: ObjectId,
    pub generation: Option<i64>,
    pub spec: LoadBalancerPoolSpec,
}

/// One watched `ApiKeyPool`.
#[derive(Clone, Debug)]
pub struct KeyPoolInput {
    pub id: ObjectId,
    pub generation: Option<i64>,
    pub spec: ApiKeyPoolSpec,
}

/// The result of resolving the cluster's objects.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// What each namespace's proxies serve.
    pub namespaces: BTreeMap<String, model::Snapshot>,
    /// Per `LoadBalancerPool`: its generation and `Ok` or the problem.
    pub pools: BTreeMap<ObjectId, Resolution>,
    /// Per `ApiKeyPool`: its generation and the key count or the problem.
    pub key_pools: BTreeMap<ObjectId, Resolution>,
}

/// How one object resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub generation: Option<i64>,
    /// `Ok(n)`: resolved; n is the backend or key count.
    pub result: Result<usize, ConfigError>,
    /// True when an invalid spec is being replaced by the last good version.
    pub serving_last_good: bool,
}

/// Remembers the last valid version of each pool, so a bad edit never takes a pool away from
/// the proxies that serve it.
#[derive(Debug, Default)]
pub struct LastGood {
    pools: HashMap<ObjectId, model::Pool>,
}

/// Builds the index. `secrets` maps each Secret to its entries.
pub fn build(
    pools: &[PoolInput],
    key_pools: &[KeyPoolInput],
    secrets: &BTreeMap<ObjectId, BTreeMap<String, SecretValue>>,
    last_good: &mut LastGood,
) -> Index {
    let mut index = Index::default();

    for kp in key_pools {
        let secret_id = ObjectId::new(&kp.id.namespace, &kp.spec.secret_ref.name);
        let result = resolve::key_pool(&kp.id, &kp.spec, secrets.get(&secret_id));
        let result = match result {
            Ok(resolved) => {
                let n = resolved.keys.len();
                index
                    .namespaces
                    .entry(kp.id.namespace.clone())
                    .or_default()
                    .key_pools
                    .push(resolved);
                Ok(n)
            }
            Err(e) => Err(e),
        };
        index.key_pools.insert(
            kp.id.clone(),
            Resolution {
                generation: kp.generation,
                result,
                serving_last_good: false,
            },
        );
    }

    last_good
        .pools
        .retain(|id, _| pools.iter().any(|p| &p.id == id));
    for p in pools {
        let (served, result, serving_last_good) = match resolve::pool(&p.id, &p.spec) {
            Ok(resolved) => {
                last_good.pools.insert(p.id.clone(), resolved.clone());
                let n = resolved.backends.len();
                let result = key_pool_problem(&p.id, &resolved, &index).map_or(Ok(n), Err);
                (Some(resolved), result, false)
            }
            Err(e) => match last_good.pools.get(&p.id) {
                Some(prev) => (Some(prev.clone()), Err(e), true),
                None => (None, Err(e), false),
            },
        };
        if let Some(pool) = served {
            index
                .namespaces
                .entry(p.id.namespace.clone())
                .or_default()
                .pools
                .push(pool);
        }
        index.pools.insert(
            p.id.clone(),
            Resolution {
                generation: p.generation,
                result,
                serving_last_good,
            },
        );
    }

    for snap in index.namespaces.values_mut() {
        *snap = std::mem::take(snap).normalized();
    }
    index
}

/// A pool whose key pool is missing or unresolved is still served (its requests get a clear
/// 503), but its status says why.
fn key_pool_problem(id: &ObjectId, pool: &model::Pool, index: &Index) -> Option<ConfigError> {
    let name = pool.key_pool.as_ref()?;
    let kp_id = ObjectId::new(&id.namespace, name);
    let object = format!("LoadBalancerPool {id}");
    match index.key_pools.get(&kp_id) {
        None => Some(ConfigError::new(
            object,
            "spec.apiKeyPoolRef.name",
            Reason::KeyPoolNotFound,
            format!("ApiKeyPool {kp_id} not found"),
        )),
        Some(Resolution { result: Err(e), .. }) => Some(ConfigError::new(
            object,
            "spec.apiKeyPoolRef.name",
            e.reason,
            format!("ApiKeyPool {kp_id} is not ready: {}", e.message),
        )),
        Some(_) => None,
    }
}

// === impl Index ===

impl Index {
    /// What a proxy in `namespace` asking for `pools` (empty: all) should be sent.
    pub fn snapshot_for(&self, namespace: &str, pools: &[String]) -> model::Snapshot {
        let Some(ns) = self.namespaces.get(namespace) else {
            return model::Snapshot::default();
        };
        if pools.is_empty() {
            return ns.clone();
        }
        let selected: Vec<model::Pool> = ns
            .pools
            .iter()
            .filter(|p| pools.contains(&p.id.name))
            .cloned()
            .collect();
        // Only the key pools the selected pools use travel to the proxy.
        let key_pools = ns
            .key_pools
            .iter()
            .filter(|k| {
                selected
                    .iter()
                    .any(|p| p.key_pool.as_ref() == Some(&k.id.name))
            })
            .cloned()
            .collect();
        model::Snapshot {
            pools: selected,
            key_pools,
        }
    }
}

#[cfg(test)]
mod tests;
