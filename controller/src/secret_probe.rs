//! Which Secrets named by ApiKeyPools exist without the `keyway.dev/api-keys: "true"` label.
//!
//! The controller watches only labelled Secrets, so an unlabelled one is simply absent from its
//! cache. To tell the pool's author "label it" rather than "create it", the probe asks the API
//! server for the **metadata only** of each named Secret the cache lacks: no value of an
//! unlabelled Secret ever enters the controller's memory, nothing is cached for Secrets no
//! ApiKeyPool names, and the probes are paced (a burst of new pools costs at most
//! [`PROBES_PER_SECOND`] requests a second; a known answer is re-checked every
//! [`RECHECK_INTERVAL`]).

use k8s_openapi::api::core::v1::Secret;
use keyway_api::model::ObjectId;
use kube::Client;
use kube::api::Api;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How often a Secret's presence is checked again while an ApiKeyPool names it and it is not
/// in the labelled cache (it may have been created or deleted meanwhile).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Most metadata reads a second.
pub const PROBES_PER_SECOND: u32 = 20;

/// Shared between the indexer (which asks) and the probe task (which answers).
#[derive(Clone)]
pub struct SecretProbe {
    client: Client,
    /// Per Secret id: whether it exists (unlabelled) and when that was learnt.
    known: Arc<Mutex<HashMap<ObjectId, (bool, Instant)>>>,
    /// The Secrets named by ApiKeyPools but missing from the labelled cache.
    wanted: Arc<watch::Sender<BTreeSet<ObjectId>>>,
}

// === impl SecretProbe ===

impl SecretProbe {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            known: Arc::default(),
            wanted: Arc::new(watch::channel(BTreeSet::new()).0),
        }
    }

    /// Of `ids`, those known to exist without the label.
    pub fn unlabelled(&self, ids: &BTreeSet<ObjectId>) -> BTreeSet<ObjectId> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .filter(|id| known.get(*id).is_some_and(|(exists, _)| *exists))
            .cloned()
            .collect()
    }

    /// Tells the probe which Secrets are named but missing from the cache now.
    pub fn want(&self, missing: BTreeSet<ObjectId>) {
        self.wanted.send_if_modified(|w| {
            if *w == missing {
                false
            } else {
                *w = missing;
                true
            }
        });
    }

    /// Checks every wanted Secret not checked within [`RECHECK_INTERVAL`]; forgets the rest.
    /// Returns whether any answer changed.
    pub async fn refresh(&self) -> bool {
        let wanted = self.wanted.borrow().clone();
        let due: Vec<ObjectId> = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|id, _| wanted.contains(id));
            wanted
                .iter()
                .filter(|id| {
                    known
                        .get(*id)
                        .is_none_or(|(_, at)| at.elapsed() >= RECHECK_INTERVAL)
                })
                .cloned()
                .collect()
        };
        let pace = Duration::from_secs(1) / PROBES_PER_SECOND;
        let mut changed = false;
        for (i, id) in due.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pace).await;
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &id.namespace);
            let exists = match api.get_metadata_opt(&id.name).await {
                Ok(meta) => meta.is_some(),
                Err(error) => {
                    tracing::warn!(secret = %id, %error, "cannot check whether the Secret exists (RBAC: get secrets)");
                    false
                }
            };
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let before = known.insert(id, (exists, Instant::now()));
            changed |= before.map(|(e, _)| e) != Some(exists) && (exists || before.is_some());
        }
        changed
    }

    /// Answers the indexer until the process ends: probes on every change of the wanted set
    /// and every [`RECHECK_INTERVAL`], and wakes the indexer when an answer changed.
    pub async fn run(self, changed: Arc<Notify>) {
        let mut wanted = self.wanted.subscribe();
        loop {
            if self.refresh().await {
                changed.notify_one();
            }
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
            }
        }
    }
}
