//! Affinity: which backend (and key) a user or a protocol session belongs to.
//!
//! One [`AffinityStore`] per pool with `spec.affinity`, kept across config snapshots while the
//! affinity settings stay the same. Values are small strings written by `dataplane::placement`:
//! a user's cluster, or a session's backend and key id.
//!
//! - `memory`: [`MemoryStore`], per proxy. Replicas still agree on users' first clusters
//!   because the first choice is a rendezvous hash (see [`crate::multicluster`]), not a coin flip.
//! - `redis`: every replica reads and writes the same assignments. The memory store mirrors
//!   them, and answers alone while Redis is unreachable (each such lookup counts as a
//!   fallback); Redis is retried after a short backoff, so a dead Redis costs no timeout per
//!   request.

mod memory;
pub mod resp;

pub use memory::MemoryStore;

use crate::metrics::{ClusterMetrics, StoreMetrics};
use keyway_api::model::{self, AffinityStore as StoreKind};
use resp::{RedisClient, Reply};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Affinity values (user ids, session ids: client headers of up to 64 KiB) longer than this
/// are stored as their SHA-256 instead, so memory and Redis keys are bounded by bytes, not
/// only by entries.
pub const MAX_KEY_BYTES: usize = 64;

/// Redis is retried this long after a failure (doubling up to [`MAX_DOWN`]).
const FIRST_DOWN: Duration = Duration::from_millis(500);
const MAX_DOWN: Duration = Duration::from_secs(5);

/// Where one pool's assignments live.
pub struct AffinityStore {
    pub settings: model::Affinity,
    memory: MemoryStore,
    redis: Option<RedisBacked>,
    metrics: StoreMetrics,
}

struct RedisBacked {
    client: RedisClient,
    prefix: String,
    timeout: Duration,
    ttl_ms: String,
    down: Mutex<Down>,
}

#[derive(Default)]
struct Down {
    until: Option<Instant>,
    backoff: Duration,
}

impl AffinityStore {
    /// `pool` namespaces the Redis keys (`<prefix><namespace>/<name>:<value>`) and labels the
    /// store's metrics.
    pub fn new(settings: model::Affinity, pool: &str, metrics: &ClusterMetrics) -> Self {
        let trust =
            crate::tls::upstream_config(None).expect("the webpki roots make a valid client config");
        Self::with_trust(settings, pool, metrics, Arc::new(trust))
    }

    /// [`AffinityStore::new`], verifying a TLS Redis with `trust` (the upstream trust).
    pub fn with_trust(
        settings: model::Affinity,
        pool: &str,
        metrics: &ClusterMetrics,
        trust: Arc<rustls::ClientConfig>,
    ) -> Self {
        let metrics = metrics.store(pool, kind(&settings.store));
        let memory = MemoryStore::new(settings.ttl, settings.max_entries as usize);
        let redis = match &settings.store {
            StoreKind::Memory => None,
            StoreKind::Redis(r) => Some(RedisBacked {
                client: RedisClient::with_trust(r, trust),
                prefix: format!("{}{pool}:", r.key_prefix),
                timeout: r.timeout,
                ttl_ms: settings.ttl.as_millis().max(1).to_string(),
                down: Mutex::default(),
            }),
        };
        Self {
            settings,
            memory,
            redis,
            metrics,
        }
    }

    /// `memory` or `redis` (the metrics label).
    pub fn kind(&self) -> &'static str {
        kind(&self.settings.store)
    }

    /// Entries in the local (memory) store.
    pub fn local_len(&self) -> usize {
        self.memory.len()
    }

    /// The assignment of `value`, refreshing its TTL.
    pub async fn get(&self, value: &str) -> Option<Arc<str>> {
        let value = &*bounded_key(value);
        let found = match &self.redis {
            Some(r) => match r.get(value).await {
                Ok(found) => {
                    let now = Instant::now();
                    match &found {
                        // Mirror, so a Redis outage keeps what this replica knew.
                        Some(v) => self.memory.put(value, v.clone(), now),
                        None => self.memory.remove(value),
                    }
                    found
                }
                Err(()) => {
                    self.metrics.fallbacks.inc();
                    self.memory.get(value, Instant::now())
                }
            },
            None => self.memory.get(value, Instant::now()),
        };
        match &found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        }
        found
    }

    /// Stores an assignment. With `only_if_absent`, an assignment another replica stored in
    /// the meantime wins and is returned instead.
    pub async fn put(&self, value: &str, assignment: Arc<str>, only_if_absent: bool) -> Arc<str> {
        let value = &*bounded_key(value);
        let stored = match &self.redis {
            Some(r) => match r.put(value, &assignment, only_if_absent).await {
                Ok(winner) => winner.unwrap_or(assignment),
                Err(()) => {
                    self.metrics.fallbacks.inc();
                    assignment
                }
            },
            None => assignment,
        };
        self.memory.put(value, stored.clone(), Instant::now());
        stored
    }
}

/// `value` itself when short, else `sha256:` and its digest in hex (71 bytes): a client
/// cannot make an entry as large as its header.
pub fn bounded_key(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_KEY_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(out)
}

fn kind(store: &StoreKind) -> &'static str {
    match store {
        StoreKind::Memory => "memory",
        StoreKind::Redis(_) => "redis",
    }
}

impl RedisBacked {
    fn key(&self, value: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + value.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(value.as_bytes());
        k
    }

    /// `Err(())`: Redis is down (or was, recently); use the memory store.
    async fn get(&self, value: &str) -> Result<Option<Arc<str>>, ()> {
        let key = self.key(value);
        let reply = self
            .run(&[b"GETEX", &key, b"PX", self.ttl_ms.as_bytes()])
            .await?;
        Ok(match reply {
            Reply::Bulk(Some(v)) => Some(String::from_utf8_lossy(&v).into()),
            _ => None,
        })
    }

    /// `Ok(Some(winner))` when `only_if_absent` lost to another replica's assignment.
    async fn put(
        &self,
        value: &str,
        assignment: &str,
        only_if_absent: bool,
    ) -> Result<Option<Arc<str>>, ()> {
        let key = self.key(value);
        let ttl = self.ttl_ms.as_bytes();
        if !only_if_absent {
            self.run(&[b"SET", &key, assignment.as_bytes(), b"PX", ttl])
                .await?;
            return Ok(None);
        }
        // SET NX GET (Redis 7): stores unless present, and returns what was there.
        match self
            .run(&[
                b"SET",
                &key,
                assignment.as_bytes(),
                b"PX",
                ttl,
                b"NX",
                b"GET",
            ])
            .await?
        {
            Reply::Bulk(Some(v)) => Ok(Some(String::from_utf8_lossy(&v).into())),
            _ => Ok(None),
        }
    }

    async fn run(&self, args: &[&[u8]]) -> Result<Reply, ()> {
        {
            let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            if down.until.is_some_and(|t| Instant::now() < t) {
                return Err(());
            }
        }
        let result = tokio::time::timeout(self.timeout, self.client.command(args)).await;
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(Ok(reply)) => {
                if down.until.take().is_some() {
                    tracing::info!("redis affinity store reachable again");
                }
                down.backoff = Duration::ZERO;
                Ok(reply)
            }
            Ok(Err(resp::RedisError::Server(msg))) => {
                // The server answered: it is up, the command is wrong (e.g. Redis < 7).
                tracing::warn!(error = %msg, "redis affinity store refused a command");
                Err(())
            }
            Ok(Err(error)) => {
                down.fail(&error.to_string());
                self.client.reset();
                Err(())
            }
            Err(_) => {
                down.fail("timed out");
                self.client.reset();
                Err(())
            }
        }
    }
}

impl Down {
    fn fail(&mut self, error: &str) {
        self.backoff = (self.backoff * 2).clamp(FIRST_DOWN, MAX_DOWN);
        if self.until.is_none() {
            tracing::warn!(%error, retry_in = ?self.backoff, "redis affinity store unreachable; using the memory store");
        }
        self.until = Some(Instant::now() + self.backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_by_bytes() {
        let short = "user-42";
        assert_eq!(bounded_key(short), short);
        let a = "a".repeat(64 * 1024);
        let mut b = a.clone();
        b.push('b');
        let (ka, kb) = (bounded_key(&a), bounded_key(&b));
        assert!(
            ka.len() <= 71 && kb.len() <= 71,
            "{} {}",
            ka.len(),
            kb.len()
        );
        assert_ne!(ka, kb, "different values keep different keys");
        assert_eq!(ka, bounded_key(&a), "stable");
    }

    #[tokio::test]
    async fn a_store_of_huge_user_ids_stays_small() {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::register(&registry).unwrap();
        let settings = model::Affinity {
            header: "user-id".into(),
            ttl: Duration::from_secs(60),
            max_entries: 100_000,
            store: StoreKind::Memory,
        };
        let store = AffinityStore::new(settings, "ns/pool", &metrics.clusters);
        for i in 0..200 {
            let user = format!("{i}-{}", "x".repeat(64 * 1024));
            store.put(&user, "cluster-a".into(), false).await;
            assert_eq!(store.get(&user).await.as_deref(), Some("cluster-a"));
        }
        // 200 users of 64 KiB each: 13 MiB as keys; a few KiB as digests.
        assert!(
            store.memory.key_bytes() <= 200 * 71,
            "{}",
            store.memory.key_bytes()
        );
    }
}
