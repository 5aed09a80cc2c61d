//! What replicas share about their proxies. Each replica writes one ConfigMap,
//! `keyway-replica-<identity>` in the Lease namespace (label `keyway.dev/replica-report`),
//! and watches everyone's (as istiod's instances each write their distribution report and
//! the leader aggregates). The report is compact: the connected proxies (ids and what they
//! asked for, not what they were sent), their reports folded per pool and key
//! ([`Aggregate`]), their quota wants and holdings per key, and, from the leader, the
//! [`GrantTable`]. It is rewritten at most once per [`MIN_WRITE_INTERVAL`], and every
//! [`HEARTBEAT`] even without change; a report unchanged for [`FRESH_FOR`] (judged on the
//! reader's monotonic clock, so node clocks do not matter) belongs to a dead replica and no
//! longer counts, except for quota its proxies may still hold.
//!
//! Why a ConfigMap: every cluster has it, it holds up to 1 MiB of text, RBAC can confine
//! it to the controller's namespace, and `kubectl get cm -l keyway.dev/replica-report -o yaml`
//! shows an operator what each replica knows. A Lease has no room for data and a CRD of our
//! own would add a schema to install for a private detail.

use crate::aggregate::{self, Aggregate};
use crate::allocator::{GrantTable, quota_key};
use crate::proxies::Proxies;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The label every replica report carries.
pub const LABEL: &str = "keyway.dev/replica-report";
const DATA_KEY: &str = "report.json";
/// Rewrite the report at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A report unchanged for this long is a dead replica's.
pub const FRESH_FOR: Duration = Duration::from_secs(7);
/// Least time between two writes of one replica's report.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// A dead replica's report is deleted by the leader after this long.
const DELETE_AFTER: Duration = Duration::from_secs(300);
/// Far under the API server's 1.5 MiB object limit (and ConfigMaps' 1 MiB of data).
const MAX_BYTES: usize = 900 * 1024;

/// One replica's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    pub replica: String,
    /// Bumped on every write, so a heartbeat is a change.
    pub seq: u64,
    #[serde(default)]
    pub proxies: Vec<ProxyEntry>,
    #[serde(default)]
    pub aggregate: Aggregate,
    #[serde(default)]
    pub quota: Vec<QuotaEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<GrantTable>,
    /// Parts were left out to stay under the size limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A connected proxy: who it is and what it asked for (its pools follow from the index).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyEntry {
    pub id: String,
    pub identity: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Its latest NACK, while it has not ACKed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
    /// It ACKed the latest snapshot it was sent.
    #[serde(default)]
    pub synced: bool,
}

/// One proxy's demand and holding for one quota key (per minute; `[requests, tokens]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaEntry {
    #[serde(rename = "p")]
    pub proxy: String,
    #[serde(rename = "i")]
    pub identity: String,
    #[serde(rename = "k")]
    pub key: String,
    #[serde(rename = "w")]
    pub wants: [u64; 2],
    #[serde(rename = "h")]
    pub held: [u64; 2],
    /// Used in its sliding minute.
    #[serde(rename = "u", default)]
    pub used: [u64; 2],
    /// The newest grant version forwarded to it.
    #[serde(rename = "v")]
    pub version: u64,
    /// Connected (false: departed, still holding).
    #[serde(rename = "l")]
    pub live: bool,
}

/// The other replicas' reports, as last seen.
#[derive(Clone)]
pub struct Shared {
    own: String,
    inner: Arc<Mutex<HashMap<String, Seen>>>,
    changed: watch::Sender<u64>,
}

struct Seen {
    report: Arc<ReplicaReport>,
    /// When its content last changed, on this replica's clock.
    changed_at: Instant,
}

// === impl Shared ===

impl Shared {
    /// The view of replica `own` (its own report is never read back).
    pub fn new(own: impl Into<String>) -> Self {
        Self {
            own: own.into(),
            inner: Default::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a report read from the API (or a test).
    pub fn observe(&self, name: String, report: ReplicaReport) {
        if report.replica == self.own {
            return;
        }
        let mut m = self.lock();
        if m.get(&name).is_some_and(|s| *s.report == report) {
            return;
        }
        m.insert(
            name,
            Seen {
                report: Arc::new(report),
                changed_at: Instant::now(),
            },
        );
        drop(m);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn forget(&self, name: &str) {
        if self.lock().remove(name).is_some() {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Live replicas' reports.
    pub fn fresh(&self) -> Vec<Arc<ReplicaReport>> {
        self.lock()
            .values()
            .filter(|s| s.changed_at.elapsed() < FRESH_FOR)
            .map(|s| s.report.clone())
            .collect()
    }

    /// Reports whose quota may still count (fresh or within the hold time), with whether the
    /// replica is alive.
    pub fn others_with_freshness(&self) -> Vec<(Arc<ReplicaReport>, bool)> {
        let hold = crate::allocator::HOLD_AFTER_DEPARTURE + FRESH_FOR;
        self.lock()
            .values()
            .filter(|s| s.changed_at.elapsed() < hold)
            .map(|s| (s.report.clone(), s.changed_at.elapsed() < FRESH_FOR))
            .collect()
    }

    /// The newest grant table any other replica published (the leader's).
    pub fn newest_table(&self) -> Option<Arc<GrantTable>> {
        self.lock()
            .values()
            .filter_map(|s| s.report.grants.as_ref())
            .max_by_key(|t| t.version)
            .cloned()
            .map(Arc::new)
    }

    /// Names of reports unchanged for so long that their replica is certainly gone.
    fn dead(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.changed_at.elapsed() > DELETE_AFTER)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// The quota entries of this replica's proxies, connected and departed.
pub fn own_quota_entries(
    proxies: &Proxies,
    quotas: &BTreeMap<String, (Option<u64>, Option<u64>)>,
) -> Vec<QuotaEntry> {
    let mut out = Vec::new();
    let live = proxies.with_each(|p| {
        let mut entries = Vec::new();
        let held = p.held();
        let version = p.grants.latest().map_or(0, |(v, _)| *v);
        let reported: HashMap<String, &keyway_proto::KeyReport> = p
            .report
            .iter()
            .flat_map(|r| &r.keys)
            .map(|k| (quota_key(&k.namespace, &k.key_pool, &k.key_id), k))
            .collect();
        for kp in p.key_pools.iter() {
            let prefix = format!("{}/{}/", kp.namespace, kp.name);
            for (key, _) in quotas.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                let r = reported.get(key);
                let h = held.get(key).copied().unwrap_or_default();
                entries.push(QuotaEntry {
                    proxy: p.proxy_id.clone(),
                    identity: p.identity.clone(),
                    key: key.clone(),
                    wants: [
                        r.map_or(0, |k| k.wanted_requests),
                        r.map_or(0, |k| k.wanted_tokens),
                    ],
                    held: [h.0, h.1],
                    used: [
                        r.map_or(0, |k| k.window_requests),
                        r.map_or(0, |k| k.window_tokens),
                    ],
                    version,
                    live: true,
                });
            }
        }
        entries
    });
    out.extend(live.into_iter().flatten());
    for d in proxies.departed() {
        for (key, (rpm, tpm)) in d.held {
            out.push(QuotaEntry {
                proxy: d.proxy_id.clone(),
                identity: d.identity.clone(),
                key,
                wants: [0, 0],
                held: [rpm, tpm],
                used: [rpm, tpm],
                version: 0,
                live: false,
            });
        }
    }
    out
}

/// This replica's connected proxies.
pub fn own_proxies(proxies: &Proxies) -> Vec<ProxyEntry> {
    proxies.with_each(|p| ProxyEntry {
        id: p.proxy_id.clone(),
        identity: p.identity.clone(),
        namespace: p.namespace.clone(),
        namespaces: p.namespaces.clone(),
        pools: p.pools.clone(),
        nack: p.last_nack.clone(),
        synced: p.sent_version > 0 && p.acked_version == p.sent_version,
    })
}

/// The report this replica publishes now.
pub fn own_report(
    replica: &str,
    seq: u64,
    proxies: &Proxies,
    index: &crate::index::Index,
    grants: Option<Arc<GrantTable>>,
) -> ReplicaReport {
    let quotas = crate::allocator::quotas(index);
    ReplicaReport {
        replica: replica.to_owned(),
        seq,
        proxies: own_proxies(proxies),
        aggregate: aggregate::fold(&proxies.list()),
        quota: own_quota_entries(proxies, &quotas),
        grants: grants.map(|g| (*g).clone()),
        truncated: false,
    }
}

/// Serialises `report`, leaving out the fold, then quota entries, past [`MAX_BYTES`].
pub fn encode(mut report: ReplicaReport) -> String {
    let mut text = serde_json::to_string(&report).unwrap_or_default();
    if text.len() > MAX_BYTES {
        report.truncated = true;
        report.aggregate = Aggregate::default();
        text = serde_json::to_string(&report).unwrap_or_default();
    }
    while text.len() > MAX_BYTES && !report.quota.is_empty() {
        let keep = report.quota.len() / 2;
        report.quota.truncate(keep);
        text = serde_json::to_string(&report).unwrap_or_default();
    }
    text
}

/// The report's object name for replica `identity`: a DNS label-ish name.
pub fn object_name(identity: &str) -> String {
    let clean: String = identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let mut name = format!("keyway-replica-{clean}");
    name.truncate(253);
    name.trim_end_matches('-').to_owned()
}

/// Watches every replica's report into `shared`, until the stream ends.
pub async fn watch_reports(client: Client, namespace: String, shared: Shared) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    let mut stream = std::pin::pin!(stream);
    // Deletions: a relist drops vanished objects from the cache, which `applied_objects`
    // does not show; dead reports also stop counting through FRESH_FOR, so that is enough.
    while let Some(event) = stream.next().await {
        match event {
            Ok(cm) => {
                let name = cm.metadata.name.clone().unwrap_or_default();
                let report = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(DATA_KEY))
                    .and_then(|t| serde_json::from_str::<ReplicaReport>(t).ok());
                match report {
                    Some(r) => shared.observe(name, r),
                    None => {
                        tracing::warn!(configmap = %name, "unreadable replica report; ignored");
                        shared.forget(&name);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "replica report watch failed; retrying"),
        }
    }
    tracing::error!("replica report watch ended");
}

/// What the publisher reads.
pub struct Publisher {
    pub client: Client,
    pub namespace: String,
    pub identity: String,
    pub proxies: Proxies,
    pub index: watch::Receiver<Arc<crate::index::Index>>,
    pub grants: watch::Receiver<Option<Arc<GrantTable>>>,
    pub shared: Shared,
    pub leader: watch::Receiver<bool>,
    pub metrics: crate::metrics::Metrics,
}

/// Writes this replica's report on changes (coalesced) and every heartbeat, until `stop`.
pub async fn publish(mut p: Publisher, mut stop: watch::Receiver<bool>) {
    let api: Api<ConfigMap> = Api::namespaced(p.client.clone(), &p.namespace);
    let name = object_name(&p.identity);
    let params = PatchParams::apply(crate::status::FIELD_MANAGER).force();
    let mut local = p.proxies.subscribe();
    let mut seq = 0u64;
    let mut last_written: Option<String> = None;
    loop {
        let started = Instant::now();
        seq += 1;
        let index = p.index.borrow_and_update().clone();
        let grants = p.grants.borrow_and_update().clone();
        let report = own_report(&p.identity, seq, &p.proxies, &index, grants);
        let text = encode(report);
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "labels": { LABEL: "true", "app.kubernetes.io/managed-by": "keyway-controller" },
            },
            "data": { DATA_KEY: text },
        });
        match api.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                p.metrics
                    .replica_report_writes
                    .with_label_values(&["ok"])
                    .inc();
                p.metrics.replica_report_bytes.set(text.len() as i64);
                last_written = Some(text);
            }
            Err(error) => {
                p.metrics
                    .replica_report_writes
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(%error, configmap = %name, "cannot write this replica's report; retrying");
            }
        }
        let _ = &last_written;
        if *p.leader.borrow() {
            for dead in p.shared.dead() {
                tracing::info!(configmap = %dead, "deleting the report of a replica gone for long");
                let _ = api.delete(&dead, &Default::default()).await;
                p.shared.forget(&dead);
            }
        }
        // At most one write per MIN_WRITE_INTERVAL; otherwise wait for a change or the
        // heartbeat.
        let earliest = started + MIN_WRITE_INTERVAL;
        let heartbeat = started + HEARTBEAT;
        tokio::select! {
            _ = tokio::time::sleep_until(heartbeat.into()) => {}
            _ = async {
                let _ = futures::future::select(
                    Box::pin(local.changed()),
                    Box::pin(p.grants.changed()),
                ).await;
                tokio::time::sleep_until(earliest.into()).await;
            } => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_stays_under_the_size_limit() {
        let mut r = ReplicaReport {
            replica: "r".into(),
            ..Default::default()
        };
        for i in 0..40_000 {
            r.quota.push(QuotaEntry {
                proxy: format!("proxy-{i}"),
                identity: "system:serviceaccount:team:app".into(),
                key: format!("team/keys/key-{i}"),
                ..Default::default()
            });
        }
        let text = encode(r);
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let back: ReplicaReport = serde_json::from_str(&text).unwrap();
        assert!(back.truncated);
        assert!(!back.quota.is_empty());
    }

    #[test]
    fn reports_are_fresh_until_they_stop_changing() {
        let shared = Shared::new("me");
        let report = |replica: &str, seq| ReplicaReport {
            replica: replica.into(),
            seq,
            ..Default::default()
        };
        shared.observe("mine".into(), report("me", 1));
        shared.observe("other".into(), report("other", 1));
        assert_eq!(shared.fresh().len(), 1, "its own report is never read back");
        assert_eq!(shared.others_with_freshness().len(), 1);
        assert!(shared.others_with_freshness()[0].1);
    }

    #[test]
    fn object_names_are_dns_safe() {
        assert_eq!(
            object_name("keyway-controller-7d9f_ABC.x"),
            "keyway-replica-keyway-controller-7d9f-abc-x"
        );
    }
}
