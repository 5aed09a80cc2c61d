//! Kubernetes in: reflectors for LoadBalancerPools, ApiKeyPools and Secrets, and the task that
//! resolves them into the [`Index`] whenever any of them changes.

use crate::index::{self, Index, KeyPoolInput, LastGood, PoolInput};
use crate::metrics::Metrics;
use crate::secret_probe::SecretProbe;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use keyway_api::model::ObjectId;
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPool, LoadBalancerPool};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The caches the index and the status writer read.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<LoadBalancerPool>,
    pub key_pools: Store<ApiKeyPool>,
    /// Only the Secrets labelled `keyway.dev/api-keys: "true"`.
    pub secrets: Store<Secret>,
    /// Which named Secrets exist without that label (metadata only, on demand).
    pub unlabelled: SecretProbe,
}

/// Starts the three reflectors and the probe of unlabelled Secrets. No `namespaces` watches
/// the whole cluster; several are watched each on its own and merged into one cache per kind.
pub fn start(
    client: Client,
    namespaces: &[String],
    changed: Arc<Notify>,
) -> (Stores, Vec<JoinHandle<()>>) {
    let all = || watcher::Config::default().any_semantic();
    let (pools, t1) = reflect_all::<LoadBalancerPool>(&client, namespaces, all(), changed.clone());
    let (key_pools, t2) = reflect_all::<ApiKeyPool>(&client, namespaces, all(), changed.clone());
    // A label selector on the watch itself: the API server sends only opted-in Secrets, so
    // no other Secret's value reaches this process and the cache does not grow with them.
    let opted_in = all().labels(keyway_api::secret::API_KEYS_SELECTOR);
    let (secrets, t3) = reflect_all::<Secret>(&client, namespaces, opted_in, changed.clone());
    let unlabelled = SecretProbe::new(client);
    let t4 = tokio::spawn(unlabelled.clone().run(changed));
    (
        Stores {
            pools,
            key_pools,
            secrets,
            unlabelled,
        },
        vec![t1, t2, t3, t4],
    )
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn reflect_all<K>(
    client: &Client,
    namespaces: &[String],
    config: watcher::Config,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    match namespaces {
        [] => reflect(api(client, None), config, changed),
        [ns] => reflect(api(client, Some(ns)), config, changed),
        _ => reflect_merged(
            namespaces.iter().map(|ns| api(client, Some(ns))).collect(),
            config,
            changed,
        ),
    }
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|obj: &mut K| {
            // Halves the cache's memory on large clusters (kube #1209).
            obj.meta_mut().managed_fields = None;
        })
        .reflect(writer);
    let kind = K::kind(&Default::default()).to_string();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                // The watcher retries with backoff by itself; say why it is retrying.
                Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying"),
            }
        }
        tracing::error!(%kind, "watch stream ended");
    });
    (store, task)
}

/// Like [`reflect`], for one watch per namespace feeding one store through [`Merge`].
fn reflect_merged<K>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    changed: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, mut writer) = reflector::store();
    let mut merge = Merge::new(apis.len());
    let streams = apis.into_iter().enumerate().map(|(i, api)| {
        watcher(api, config.clone())
            .default_backoff()
            .modify(|obj: &mut K| {
                obj.meta_mut().managed_fields = None;
            })
            .map(move |event| (i, event))
            .boxed()
    });
    let mut stream = futures::stream::select_all(streams);
    let kind = K::kind(&Default::default()).to_string();
    let task = tokio::spawn(async move {
        while let Some((i, event)) = stream.next().await {
            match event {
                Ok(event) => {
                    for out in merge.apply(i, event) {
                        writer.apply_watcher_event(&out);
                    }
                    changed.notify_one();
                }
                Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying"),
            }
        }
        tracing::error!(%kind, "watch stream ended");
    });
    (store, task)
}

/// Objects by namespace and name.
type Objects<K> = HashMap<(Option<String>, String), K>;

/// Folds the watch events of several streams (one per namespace) into the events of one
/// store. A store's own `Init`..`InitDone` replaces its whole content, which would drop the
/// other namespaces; so each stream's relist becomes plain `Apply`/`Delete` events, and the
/// store gets its one `Init`..`InitDone` (which makes it ready) once every stream has listed.
pub struct Merge<K> {
    /// Per stream: the objects it holds now.
    known: Vec<Objects<K>>,
    /// Per stream: the relist under way.
    relist: Vec<Option<Objects<K>>>,
    listed: Vec<bool>,
    ready: bool,
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(streams: usize) -> Self {
        Self {
            known: (0..streams).map(|_| HashMap::new()).collect(),
            relist: (0..streams).map(|_| None).collect(),
            listed: vec![false; streams],
            ready: false,
        }
    }

    /// The store events for `event` of stream `i`.
    pub fn apply(&mut self, i: usize, event: watcher::Event<K>) -> Vec<watcher::Event<K>> {
        let key = |o: &K| {
            (
                o.meta().namespace.clone(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(o) => {
                self.known[i].insert(key(&o), o.clone());
                if self.ready {
                    return vec![watcher::Event::Apply(o)];
                }
            }
            watcher::Event::Delete(o) => {
                self.known[i].remove(&key(&o));
                if self.ready {
                    return vec![watcher::Event::Delete(o)];
                }
            }
            watcher::Event::Init => self.relist[i] = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                self.relist[i]
                    .get_or_insert_with(HashMap::new)
                    .insert(key(&o), o);
            }
            watcher::Event::InitDone => {
                let now = self.relist[i].take().unwrap_or_default();
                let before = std::mem::replace(&mut self.known[i], now);
                self.listed[i] = true;
                if self.ready {
                    let gone = before
                        .into_iter()
                        .filter(|(k, _)| !self.known[i].contains_key(k))
                        .map(|(_, o)| watcher::Event::Delete(o));
                    let present = self.known[i].values().cloned().map(watcher::Event::Apply);
                    return gone.chain(present).collect();
                }
                if self.listed.iter().all(|l| *l) {
                    self.ready = true;
                    let all = self.known.iter().flat_map(|m| m.values().cloned());
                    return std::iter::once(watcher::Event::Init)
                        .chain(all.map(watcher::Event::InitApply))
                        .chain(std::iter::once(watcher::Event::InitDone))
                        .collect();
                }
            }
        }
        Vec::new()
    }
}

/// Rebuilds the index after every batch of changes and publishes it. Publishes nothing until
/// every store has completed its first list, so no proxy is ever sent a partial view.
pub async fn run_indexer(
    stores: Stores,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Index>>,
    ready: watch::Sender<bool>,
    metrics: Metrics,
) {
    if stores.pools.wait_until_ready().await.is_err()
        || stores.key_pools.wait_until_ready().await.is_err()
        || stores.secrets.wait_until_ready().await.is_err()
    {
        tracing::error!("a reflector stopped before its first list completed");
        return;
    }
    // The first index already tells unlabelled Secrets from missing ones: no pool flaps
    // through SecretNotFound (and its Event) on every start.
    let _ = build_index(&stores, &mut LastGood::default());
    stores.unlabelled.refresh().await;
    let _ = ready.send(true);
    tracing::info!("caches synced; serving snapshots");
    let mut last_good = LastGood::default();
    loop {
        let idx = build_index(&stores, &mut last_good);
        metrics.index_rebuilds.inc();
        tx.send_replace(Arc::new(idx));
        changed.notified().await;
        // Coalesce a burst of events (an apply of many objects) into one rebuild.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn build_index(stores: &Stores, last_good: &mut LastGood) -> Index {
    let pools: Vec<PoolInput> = stores
        .pools
        .state()
        .iter()
        .filter_map(|p| {
            Some(PoolInput {
                id: ObjectId::new(p.namespace()?, p.name_any()),
                generation: p.metadata.generation,
                spec: p.spec.clone(),
            })
        })
        .collect();
    let key_pools: Vec<KeyPoolInput> = stores
        .key_pools
        .state()
        .iter()
        .filter_map(|k| {
            Some(KeyPoolInput {
                id: ObjectId::new(k.namespace()?, k.name_any()),
                generation: k.metadata.generation,
                spec: k.spec.clone(),
            })
        })
        .collect();
    // Only Secrets an ApiKeyPool names are decoded; the rest of the cache is never read.
    let mut secrets = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for kp in &key_pools {
        let id = ObjectId::new(&kp.id.namespace, &kp.spec.secret_ref.name);
        if secrets.contains_key(&id) {
            continue;
        }
        let key = reflector::ObjectRef::<Secret>::new(&id.name).within(&id.namespace);
        match stores.secrets.get(&key) {
            // The watch's selector already holds; checked again so a cache fed otherwise
            // could never serve an unlabelled Secret.
            Some(secret) if keyway_api::secret::opted_in(secret.metadata.labels.as_ref()) => {
                secrets.insert(id, secret_entries(&secret));
            }
            _ => {
                missing.insert(id);
            }
        }
    }
    let unlabelled = stores.unlabelled.unlabelled(&missing);
    stores.unlabelled.want(missing);
    index::build_with_unlabelled(&pools, &key_pools, &secrets, &unlabelled, last_good)
}

fn secret_entries(secret: &Secret) -> BTreeMap<String, SecretValue> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        match std::str::from_utf8(&v.0) {
            Ok(s) => {
                out.insert(k.clone(), SecretValue::new(s));
            }
            Err(_) => {
                tracing::warn!(secret = %secret.name_any(), key_id = %k, "secret entry is not UTF-8; skipped");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
