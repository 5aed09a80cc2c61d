//! What changed between two applied snapshots, as log events: pools and key pools added or
//! removed, keys added, removed or rotated (compared by value in memory; only ids are
//! logged), backends added or removed, evacuation toggled. One summary line per version.

use keyway_api::model::{KeyPool, Pool, Snapshot};
use std::collections::BTreeSet;

/// The difference between two snapshots, by id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub key_pools_added: Vec<String>,
    pub key_pools_removed: Vec<String>,
    /// `(key pool, key id)`.
    pub keys_added: Vec<(String, String)>,
    pub keys_removed: Vec<(String, String)>,
    pub keys_rotated: Vec<(String, String)>,
    /// `(pool, backend)`.
    pub backends_added: Vec<(String, String)>,
    pub backends_removed: Vec<(String, String)>,
    /// `(pool, now evacuated)`.
    pub evacuation: Vec<(String, bool)>,
    /// Pools whose settings changed otherwise.
    pub pools_changed: Vec<String>,
}

// === impl Changes ===

impl Changes {
    pub fn between(old: Option<&Snapshot>, new: &Snapshot) -> Self {
        let empty = Snapshot::default();
        let old = old.unwrap_or(&empty);
        let mut c = Changes::default();
        for p in &new.pools {
            let label = p.id.to_string();
            match old.pools.iter().find(|o| o.id == p.id) {
                None => c.pools_added.push(label),
                Some(o) => c.pool(o, p, label),
            }
        }
        for o in &old.pools {
            if !new.pools.iter().any(|p| p.id == o.id) {
                c.pools_removed.push(o.id.to_string());
            }
        }
        for k in &new.key_pools {
            let label = k.id.to_string();
            match old.key_pools.iter().find(|o| o.id == k.id) {
                None => {
                    c.key_pools_added.push(label.clone());
                    for key in &k.keys {
                        c.keys_added.push((label.clone(), key.id.clone()));
                    }
                }
                Some(o) => c.keys(o, k, label),
            }
        }
        for o in &old.key_pools {
            if !new.key_pools.iter().any(|k| k.id == o.id) {
                c.key_pools_removed.push(o.id.to_string());
            }
        }
        c
    }

    fn pool(&mut self, old: &Pool, new: &Pool, label: String) {
        let names =
            |p: &Pool| -> BTreeSet<String> { p.backends.iter().map(|b| b.name.clone()).collect() };
        let (before, after) = (names(old), names(new));
        for b in after.difference(&before) {
            self.backends_added.push((label.clone(), b.clone()));
        }
        for b in before.difference(&after) {
            self.backends_removed.push((label.clone(), b.clone()));
        }
        if old.evacuate_primary != new.evacuate_primary {
            self.evacuation.push((label.clone(), new.evacuate_primary));
        }
        if old != new {
            self.pools_changed.push(label);
        }
    }

    fn keys(&mut self, old: &KeyPool, new: &KeyPool, label: String) {
        for k in &new.keys {
            match old.keys.iter().find(|o| o.id == k.id) {
                None => self.keys_added.push((label.clone(), k.id.clone())),
                Some(o) if o.value != k.value => {
                    self.keys_rotated.push((label.clone(), k.id.clone()))
                }
                Some(_) => {}
            }
        }
        for o in &old.keys {
            if !new.keys.iter().any(|k| k.id == o.id) {
                self.keys_removed.push((label.clone(), o.id.clone()));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// One event per change, then a summary naming the version.
    pub fn log(&self, version: u64, source: &str) {
        for p in &self.pools_added {
            tracing::info!(pool = %p, version, "pool added");
        }
        for p in &self.pools_removed {
            tracing::info!(pool = %p, version, "pool removed");
        }
        for k in &self.key_pools_added {
            tracing::info!(key_pool = %k, version, "key pool added");
        }
        for k in &self.key_pools_removed {
            tracing::info!(key_pool = %k, version, "key pool removed");
        }
        for (kp, id) in &self.keys_added {
            tracing::info!(key_pool = %kp, key_id = %id, version, "key added");
        }
        for (kp, id) in &self.keys_removed {
            tracing::info!(key_pool = %kp, key_id = %id, version, "key removed");
        }
        for (kp, id) in &self.keys_rotated {
            tracing::info!(key_pool = %kp, key_id = %id, version, "key rotated (new value)");
        }
        for (p, b) in &self.backends_added {
            tracing::info!(pool = %p, backend = %b, version, "backend added");
        }
        for (p, b) in &self.backends_removed {
            tracing::info!(pool = %p, backend = %b, version, "backend removed");
        }
        for (p, on) in &self.evacuation {
            tracing::warn!(pool = %p, evacuate_primary = on, version, "evacuation of the primary toggled");
        }
        if self.is_empty() {
            // No pool, backend or key came, went or changed value (e.g. new quota grants,
            // which move every few seconds): keep the info log for what an operator tracks.
            tracing::debug!(
                version,
                source,
                "config applied; no pool, backend or key changed"
            );
            return;
        }
        tracing::info!(
            version,
            source,
            pools_added = self.pools_added.len(),
            pools_removed = self.pools_removed.len(),
            pools_changed = self.pools_changed.len(),
            keys_added = self.keys_added.len(),
            keys_removed = self.keys_removed.len(),
            keys_rotated = self.keys_rotated.len(),
            "config applied"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::manifest::Manifests;

    fn snap(keys: &str, backends: &str) -> Snapshot {
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, labels: {{keyway.dev/api-keys: \"true\"}}}}\nstringData: {{{keys}}}\n---\n\
             apiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata: {{name: k}}\nspec: {{secretRef: {{name: s}}}}\n---\n\
             apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {{name: p}}\nspec: {{backends: [{backends}]}}\n"
        );
        Manifests::parse(&yaml, &|_| None)
            .unwrap()
            .resolve()
            .unwrap()
    }

    #[test]
    fn keys_added_removed_rotated_by_id() {
        let a = snap("k1: v1, k2: v2", "{name: a, endpoint: 'http://a'}");
        let b = snap(
            "k1: v1-new, k3: v3",
            "{name: a, endpoint: 'http://a'}, {name: b, endpoint: 'http://b'}",
        );
        let c = Changes::between(Some(&a), &b);
        let kp = "default/k".to_string();
        assert_eq!(c.keys_added, vec![(kp.clone(), "k3".into())]);
        assert_eq!(c.keys_removed, vec![(kp.clone(), "k2".into())]);
        assert_eq!(c.keys_rotated, vec![(kp, "k1".into())]);
        assert_eq!(c.backends_added, vec![("default/p".into(), "b".into())]);
        assert!(Changes::between(Some(&b), &b).is_empty());
        let first = Changes::between(None, &a);
        assert_eq!(first.pools_added, vec!["default/p".to_string()]);
        assert_eq!(first.keys_added.len(), 2);
    }
}
