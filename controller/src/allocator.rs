//! The leader's quota allocator: gathers every proxy's wants and holdings (its own sessions
//! directly, the other replicas' from their published reports), runs [`crate::quota`] per key
//! and publishes the resulting [`GrantTable`]. Every replica forwards the table's entries to
//! its own proxies as leases ([`GRANT_TTL`]).
//!
//! Bound during re-allocation and leader changes: a proxy's holding counts every grant it may
//! not have replaced yet. A replica reports, per proxy, the newest grant version it forwarded;
//! the allocator adds to that proxy's holding every grant of a newer table it knows (its own
//! recent tables and the newest table any replica published, such as a previous leader's), so
//! a grant in flight is never handed out twice. A new leader waits [`SETTLE`] after taking
//! the Lease before its first table, so it has read every replica's latest report.

use crate::index::Index;
use crate::proxies::Proxies;
use crate::quota::{self, Client, Credits};
use crate::replicas::{QuotaEntry, Shared};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a grant holds without renewal.
pub const GRANT_TTL: Duration = Duration::from_secs(20);
/// How often sessions renew their proxy's lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a departed proxy's quota keeps counting: its lease, then its last sliding minute
/// (61 s, the proxy's window granularity).
pub const HOLD_AFTER_DEPARTURE: Duration = Duration::from_secs(20 + 61);
/// A new leader's wait before its first table.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Least time between two tables.
const ROUND: Duration = Duration::from_millis(500);

/// `namespace/keyPool/keyId`: how quota keys are named in reports and tables.
pub fn quota_key(namespace: &str, key_pool: &str, key_id: &str) -> String {
    format!("{namespace}/{key_pool}/{key_id}")
}

/// The grants the leader hands out, sorted by (identity, proxy, key).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantTable {
    pub version: u64,
    /// Who computed it.
    pub leader: String,
    pub entries: Vec<GrantEntry>,
}

/// One proxy's grant for one key (per minute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    #[serde(rename = "i")]
    pub identity: String,
    #[serde(rename = "p")]
    pub proxy: String,
    #[serde(rename = "k")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// After the lease: at most the floor.
    #[serde(rename = "frpm", default, skip_serializing_if = "Option::is_none")]
    pub fallback_rpm: Option<u64>,
    #[serde(rename = "ftpm", default, skip_serializing_if = "Option::is_none")]
    pub fallback_tpm: Option<u64>,
}

/// The quota of every key that has one: key → (requests, tokens) per minute.
pub fn quotas(index: &Index) -> BTreeMap<String, (Option<u64>, Option<u64>)> {
    let mut out = BTreeMap::new();
    for snap in index.namespaces.values() {
        for kp in &snap.key_pools {
            for k in &kp.keys {
                let (rpm, tpm) = (k.limits.requests_per_minute, k.limits.tokens_per_minute);
                if rpm.is_some() || tpm.is_some() {
                    out.insert(
                        quota_key(&kp.id.namespace, &kp.id.name, &k.id),
                        (rpm.map(u64::from), tpm),
                    );
                }
            }
        }
    }
    out
}

// === impl GrantTable ===

impl GrantTable {
    /// The entries of one proxy.
    pub fn for_proxy(&self, identity: &str, proxy: &str) -> &[GrantEntry] {
        let start = self
            .entries
            .partition_point(|e| (e.identity.as_str(), e.proxy.as_str()) < (identity, proxy));
        let len = self.entries[start..]
            .iter()
            .take_while(|e| e.identity == identity && e.proxy == proxy)
            .count();
        &self.entries[start..start + len]
    }

    fn grant(&self, identity: &str, proxy: &str, key: &str) -> Option<&GrantEntry> {
        self.for_proxy(identity, proxy)
            .iter()
            .find(|e| e.key == key)
    }
}

/// What the allocator knows about one (proxy, key) this round.
#[derive(Default)]
struct Seen {
    want: [u64; 2],
    held: [u64; 2],
    used: [u64; 2],
    /// Newest grant version forwarded to it.
    forwarded: u64,
    live: bool,
}

/// Gathers the inputs: own sessions, other replicas' reports (`fresh` ones live, stale ones
/// only for what their proxies may still hold), departed proxies.
fn gather(
    proxies: &Proxies,
    others: &[(Arc<crate::replicas::ReplicaReport>, bool)],
    quotas: &BTreeMap<String, (Option<u64>, Option<u64>)>,
) -> BTreeMap<String, BTreeMap<(String, String), Seen>> {
    let mut by_key: BTreeMap<String, BTreeMap<(String, String), Seen>> = BTreeMap::new();
    let mut add = |e: QuotaEntry| {
        if !quotas.contains_key(&e.key) {
            return;
        }
        let s = by_key
            .entry(e.key)
            .or_default()
            .entry((e.identity, e.proxy))
            .or_default();
        if e.live {
            s.live = true;
            s.want = [s.want[0].max(e.wants[0]), s.want[1].max(e.wants[1])];
        }
        s.held = [s.held[0].max(e.held[0]), s.held[1].max(e.held[1])];
        s.used = [s.used[0].max(e.used[0]), s.used[1].max(e.used[1])];
        s.forwarded = s.forwarded.max(e.version);
    };
    for e in crate::replicas::own_quota_entries(proxies, quotas) {
        add(e);
    }
    for (report, fresh) in others {
        for e in &report.quota {
            let mut e = e.clone();
            e.live &= *fresh;
            add(e);
        }
    }
    by_key
}

/// One round: the new table from the inputs, `previous` tables (newest last) and credits.
pub fn compute(
    leader: &str,
    version: u64,
    index: &Index,
    proxies: &Proxies,
    others: &[(Arc<crate::replicas::ReplicaReport>, bool)],
    previous: &VecDeque<Arc<GrantTable>>,
    credits: &mut HashMap<String, [Credits; 2]>,
) -> GrantTable {
    credits.retain(|k, _| quotas(index).contains_key(k));
    let quotas = quotas(index);
    let by_key = gather(proxies, others, &quotas);
    let current = previous.back();
    let mut entries = Vec::new();
    for (key, seen) in by_key {
        let (rpm, tpm) = quotas[&key];
        let mut live = Vec::new();
        let mut others_held = [0u64; 2];
        for ((identity, proxy), s) in &seen {
            // Grants in tables newer than what reached the proxy may still be in flight.
            let mut held = s.held;
            for t in previous.iter().filter(|t| t.version > s.forwarded) {
                if let Some(g) = t.grant(identity, proxy, &key) {
                    held[0] = held[0].max(g.rpm.unwrap_or(0));
                    held[1] = held[1].max(g.tpm.unwrap_or(0));
                }
            }
            if s.live {
                let cur = current.and_then(|t| t.grant(identity, proxy, &key));
                live.push((identity, proxy, s.want, held, s.used, cur.cloned()));
            } else {
                others_held[0] += held[0];
                others_held[1] += held[1];
            }
        }
        let mut dims: [Option<Vec<u64>>; 2] = [None, None];
        for (d, q) in [rpm, tpm].into_iter().enumerate() {
            let Some(q) = q else { continue };
            let clients: Vec<Client> = live
                .iter()
                .map(|(identity, proxy, want, held, used, cur)| Client {
                    identity: (*identity).clone(),
                    proxy: (*proxy).clone(),
                    want: want[d],
                    held: held[d],
                    used: used[d],
                    current: cur
                        .as_ref()
                        .and_then(|c| if d == 0 { c.rpm } else { c.tpm })
                        .unwrap_or(0),
                })
                .collect();
            let credits = &mut credits.entry(key.clone()).or_default()[d];
            dims[d] = Some(quota::allocate(q, &clients, others_held[d], credits));
        }
        let n = live.len();
        for (i, (identity, proxy, ..)) in live.into_iter().enumerate() {
            let rpm_g = dims[0].as_ref().map(|g| g[i]);
            let tpm_g = dims[1].as_ref().map(|g| g[i]);
            entries.push(GrantEntry {
                identity: identity.clone(),
                proxy: proxy.clone(),
                key: key.clone(),
                rpm: rpm_g,
                tpm: tpm_g,
                fallback_rpm: rpm_g.zip(rpm).map(|(g, q)| g.min(quota::floor(q, n))),
                fallback_tpm: tpm_g.zip(tpm).map(|(g, q)| g.min(quota::floor(q, n))),
            });
        }
    }
    entries.sort_by(|a, b| (&a.identity, &a.proxy, &a.key).cmp(&(&b.identity, &b.proxy, &b.key)));
    GrantTable {
        version,
        leader: leader.to_owned(),
        entries,
    }
}

/// Runs the allocator while this replica leads; publishes `None` while it does not.
pub async fn run(
    identity: String,
    mut index: watch::Receiver<Arc<Index>>,
    proxies: Proxies,
    shared: Shared,
    mut leader: watch::Receiver<bool>,
    out: watch::Sender<Option<Arc<GrantTable>>>,
) {
    let mut credits: HashMap<String, [Credits; 2]> = HashMap::new();
    loop {
        out.send_replace(None);
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!("leading: the quota allocator starts after {SETTLE:?}");
        tokio::time::sleep(SETTLE).await;
        let mut previous: VecDeque<Arc<GrantTable>> = VecDeque::new();
        // Continue from the newest table any replica published (a previous leader's).
        if let Some(t) = shared.newest_table() {
            previous.push_back(t);
        }
        while *leader.borrow() {
            let others = shared.others_with_freshness();
            let idx = index.borrow_and_update().clone();
            let version = next_version(previous.back().map_or(0, |t| t.version));
            let table = compute(
                &identity,
                version,
                &idx,
                &proxies,
                &others,
                &previous,
                &mut credits,
            );
            if previous.back().is_none_or(|p| p.entries != table.entries) {
                let table = Arc::new(table);
                previous.push_back(table.clone());
                // Tables older than a lease cannot be in force anywhere any more.
                let keep = (GRANT_TTL.as_millis() / ROUND.as_millis()) as usize + 1;
                while previous.len() > keep {
                    previous.pop_front();
                }
                out.send_replace(Some(table));
            } else if out.borrow().is_none() {
                out.send_replace(previous.back().cloned());
            }
            // Demand moves in about a second (reports, replica writes): a round every ROUND
            // is as fast as its inputs change.
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                r = leader.changed() => if r.is_err() { return },
            }
        }
        tracing::info!("no longer leading: the quota allocator stops");
    }
}

/// Versions are milliseconds since the epoch, strictly increasing: a new leader continues
/// above its predecessor's even with clock skew.
fn next_version(previous: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.max(previous + 1)
}
