//! Kubernetes in: reflectors for LoadBalancerPools, ApiKeyPools and Secrets, and the task that
//! resolves them into the [`Index`] whenever any of them changes.

use crate::index::{self, Index, KeyPoolInput, LastGood, PoolInput};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use keyway_api::model::ObjectId;
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPool, LoadBalancerPool};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The caches the index and the status writer read.
#[derive(Clone)]
pub struct Stores {
    pub pools: Store<LoadBalancerPool>,
    pub key_pools: Store<ApiKeyPool>,
    pub secrets: Store<Secret>,
}

/// Starts the three reflectors. `namespace: None` watches the whole cluster.
pub fn start(
    client: Client,
    namespace: Option<&str>,
    changed: Arc<Notify>,
) -> (Stores, Vec<JoinHandle<()>>) {
    let (pools, t1) = reflect::<LoadBalancerPool>(api(&client, namespace), changed.clone());
    let (key_pools, t2) = reflect::<ApiKeyPool>(api(&client, namespace), changed.clone());
    let (secrets, t3) = reflect::<Secret>(api(&client, namespace), changed);
    (
        Stores {
            pools,
            key_pools,
            secrets,
        },
        vec![t1, t2, t3],
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

fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
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
    for kp in &key_pools {
        let id = ObjectId::new(&kp.id.namespace, &kp.spec.secret_ref.name);
        if secrets.contains_key(&id) {
            continue;
        }
        let key = reflector::ObjectRef::<Secret>::new(&id.name).within(&id.namespace);
        if let Some(secret) = stores.secrets.get(&key) {
            secrets.insert(id, secret_entries(&secret));
        }
    }
    index::build(&pools, &key_pools, &secrets, last_good)
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
