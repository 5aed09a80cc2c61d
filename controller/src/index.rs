//! Pure: the watched objects in, what every proxy should serve and what every object's status
//! should say out. No Kubernetes client here, so it is unit-tested with plain values.

use keyway_api::model::{self, ObjectId};
use keyway_api::resolve::{self, ConfigError, Reason};
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPoolSpec, LoadBalancerPoolSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// Per served `LoadBalancerPool`: the other namespaces whose proxies may receive it
    /// (`spec.allowedProxyNamespaces`). Empty for most pools.
    pub grants: BTreeMap<ObjectId, BTreeSet<String>>,
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

/// Builds the index. `secrets` maps each opted-in Secret to its entries.
pub fn build(
    pools: &[PoolInput],
    key_pools: &[KeyPoolInput],
    secrets: &BTreeMap<ObjectId, BTreeMap<String, SecretValue>>,
    last_good: &mut LastGood,
) -> Index {
    build_with_unlabelled(pools, key_pools, secrets, &BTreeSet::new(), last_good)
}

/// [`build`], knowing which named Secrets exist without the opt-in label: their ApiKeyPools
/// are `SecretNotLabelled` rather than `SecretNotFound` (and nothing of them is served either
/// way).
pub fn build_with_unlabelled(
    pools: &[PoolInput],
    key_pools: &[KeyPoolInput],
    secrets: &BTreeMap<ObjectId, BTreeMap<String, SecretValue>>,
    unlabelled: &BTreeSet<ObjectId>,
    last_good: &mut LastGood,
) -> Index {
    let mut index = Index::default();

    for kp in key_pools {
        let secret_id = ObjectId::new(&kp.id.namespace, &kp.spec.secret_ref.name);
        let result = match secrets.get(&secret_id) {
            None if unlabelled.contains(&secret_id) => {
                Err(resolve::secret_not_labelled(&kp.id, &kp.spec))
            }
            secret => resolve::key_pool(&kp.id, &kp.spec, secret),
        };
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

    // A set, so forgetting deleted pools is linear, not pools × pools.
    let present: std::collections::HashSet<&ObjectId> = pools.iter().map(|p| &p.id).collect();
    last_good.pools.retain(|id, _| present.contains(id));
    for p in pools {
        let lookup = |name: &str| secrets.get(&ObjectId::new(&p.id.namespace, name));
        let (served, result, serving_last_good) =
            match resolve::pool_with_secrets(&p.id, &p.spec, &lookup) {
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
            // The grant is read from the current specs even when an invalid edit leaves the
            // last good version serving: granting or revoking access always takes effect.
            let granted = grant(p, &pool, key_pools);
            if !granted.is_empty() {
                index.grants.insert(p.id.clone(), granted);
            }
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

/// The other namespaces whose proxies may receive pool `p` (serving `pool`): those its
/// `spec.allowedProxyNamespaces` lists and, when it injects keys, that its ApiKeyPool's
/// `spec.allowedProxyNamespaces` lists too. The key owner consents, not only the pool's author:
/// anyone who may write a LoadBalancerPool in a namespace could otherwise hand its keys to
/// another namespace.
fn grant(p: &PoolInput, pool: &model::Pool, key_pools: &[KeyPoolInput]) -> BTreeSet<String> {
    let home = &p.id.namespace;
    let consented: Option<&Vec<String>> = match &pool.key_pool {
        None => None,
        Some(name) => Some(
            key_pools
                .iter()
                .find(|k| k.id.namespace == *home && k.id.name == *name)
                .map_or(&EMPTY, |k| &k.spec.allowed_proxy_namespaces),
        ),
    };
    p.spec
        .allowed_proxy_namespaces
        .iter()
        .filter(|ns| *ns != home)
        .filter(|ns| consented.is_none_or(|c| c.contains(ns)))
        .cloned()
        .collect()
}

static EMPTY: Vec<String> = Vec::new();

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
        self.snapshot_for_proxy(namespace, &[], pools)
    }

    /// What a proxy in `namespace` should be sent when it asks for `pools` (empty: all; each
    /// `name` or `namespace/name`) of its own namespace and of `extra_namespaces`.
    ///
    /// Its own namespace's pools are always its to take. A pool of another namespace is sent
    /// only if that pool grants `namespace` (`spec.allowedProxyNamespaces`, with its
    /// ApiKeyPool's consent) **and** the proxy names it as `namespace/name` in `pools`; a key
    /// pool of another namespace only along with a granted pool that uses it. Asking for a
    /// namespace is never enough to receive its keys, and a grant alone never adds a pool to
    /// a proxy that did not ask for it by name. A namespace named in `pools`
    /// (`other/name`) counts as asked for, as if it were in `extra_namespaces`.
    pub fn snapshot_for_proxy(
        &self,
        namespace: &str,
        extra_namespaces: &[String],
        pools: &[String],
    ) -> model::Snapshot {
        let mut out = model::Snapshot::default();
        let asked: BTreeSet<&str> = std::iter::once(namespace)
            .chain(extra_namespaces.iter().map(String::as_str))
            .chain(
                pools
                    .iter()
                    .filter_map(|p| p.split_once('/').map(|(ns, _)| ns)),
            )
            .collect();
        for ns_name in asked {
            let Some(ns) = self.namespaces.get(ns_name) else {
                continue;
            };
            let own_filter = pools
                .iter()
                .any(|want| want.split_once('/').is_none_or(|(ns, _)| ns == namespace));
            if ns_name == namespace && !own_filter {
                out.pools.extend(ns.pools.iter().cloned());
                out.key_pools.extend(ns.key_pools.iter().cloned());
                continue;
            }
            let selected: Vec<&model::Pool> = ns
                .pools
                .iter()
                .filter(|p| self.selects(p, namespace, extra_namespaces, pools))
                .collect();
            // Only the key pools the selected pools use travel to the proxy.
            let key_pools = ns.key_pools.iter().filter(|k| {
                selected
                    .iter()
                    .any(|p| p.key_pool.as_ref() == Some(&k.id.name))
            });
            out.key_pools.extend(key_pools.cloned());
            out.pools.extend(selected.into_iter().cloned());
        }
        out.normalized()
    }

    /// Whether `pool` goes to a proxy of `namespace` that asks for `extra_namespaces` and
    /// `pools` (see [`Index::snapshot_for_proxy`]).
    pub fn selects(
        &self,
        pool: &model::Pool,
        namespace: &str,
        extra_namespaces: &[String],
        pools: &[String],
    ) -> bool {
        let _ = extra_namespaces; // implied by a `namespace/name` entry of `pools`
        let home = pool.id.namespace.as_str();
        if home == namespace {
            // Entries naming only other namespaces' pools add to the own ones, not replace
            // them: `--pools shared/chat` is "mine and shared/chat".
            let own_filter = pools
                .iter()
                .any(|want| want.split_once('/').is_none_or(|(ns, _)| ns == namespace));
            return !own_filter || pools.iter().any(|want| names(want, &pool.id));
        }
        // A foreign pool: granted (by the pool and its key owner) and named explicitly.
        self.grants
            .get(&pool.id)
            .is_some_and(|g| g.contains(namespace))
            && pools.iter().any(|want| names_qualified(want, &pool.id))
    }
}

/// Whether a pool filter entry names `id` as `namespace/name`.
fn names_qualified(want: &str, id: &ObjectId) -> bool {
    want.split_once('/')
        .is_some_and(|(ns, name)| ns == id.namespace && name == id.name)
}

/// Whether a proxy's pool filter entry (`name` or `namespace/name`) names `id`.
fn names(want: &str, id: &ObjectId) -> bool {
    match want.split_once('/') {
        Some((ns, name)) => ns == id.namespace && name == id.name,
        None => want == id.name,
    }
}

#[cfg(test)]
mod tests;
