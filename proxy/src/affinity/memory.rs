//! The in-process assignment store: TTL'd entries, bounded in size (least recently used go
//! first), sharded so concurrent requests rarely contend on one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A bounded map from an affinity value (user id, session id) to an assignment.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    ttl: Duration,
    max_per_shard: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// Use counter: larger is more recent.
    tick: u64,
}

struct Entry {
    value: Arc<str>,
    expires: Instant,
    used: u64,
}

impl MemoryStore {
    /// `max_entries` is the bound over all shards (at least one entry per shard).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        let max_per_shard = max_entries.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ttl,
            max_per_shard,
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (crate::hash::hash_key(key.as_bytes()) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live value of `key`, refreshing its TTL; expired entries are removed.
    pub fn get(&self, key: &str, now: Instant) -> Option<Arc<str>> {
        let ttl = self.ttl;
        let mut shard = self.shard(key);
        shard.tick += 1;
        let tick = shard.tick;
        match shard.map.get_mut(key) {
            Some(e) if e.expires > now => {
                e.expires = now + ttl;
                e.used = tick;
                Some(e.value.clone())
            }
            Some(_) => {
                shard.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `key` with a fresh TTL, evicting when the shard is full.
    pub fn put(&self, key: &str, value: Arc<str>, now: Instant) {
        let expires = now + self.ttl;
        let max = self.max_per_shard;
        let mut shard = self.shard(key);
        shard.tick += 1;
        let used = shard.tick;
        if let Some(e) = shard.map.get_mut(key) {
            *e = Entry {
                value,
                expires,
                used,
            };
            return;
        }
        if shard.map.len() >= max {
            shard.evict(now, max);
        }
        shard.map.insert(
            key.into(),
            Entry {
                value,
                expires,
                used,
            },
        );
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &str) {
        self.shard(key).map.remove(key);
    }

    /// Entries held (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all keys held (what a client's header values cost here).
    pub fn key_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.map.keys().map(|k| k.len()).sum::<usize>()
            })
            .sum()
    }
}

impl Shard {
    /// Makes room: expired entries first, then the least recently used eighth. Amortised O(1)
    /// per insert.
    fn evict(&mut self, now: Instant, max: usize) {
        self.map.retain(|_, e| e.expires > now);
        if self.map.len() < max {
            return;
        }
        let drop = (max / 8).max(1);
        let mut ticks: Vec<u64> = self.map.values().map(|e| e.used).collect();
        let (_, &mut cutoff, _) = ticks.select_nth_unstable(drop - 1);
        self.map.retain(|_, e| e.used > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_expires_and_refreshes_on_use() {
        let s = MemoryStore::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        s.put("u", "a".into(), t0);
        // Used at 50 s: lives until 110 s.
        assert_eq!(
            s.get("u", t0 + Duration::from_secs(50)).as_deref(),
            Some("a")
        );
        assert_eq!(
            s.get("u", t0 + Duration::from_secs(100)).as_deref(),
            Some("a")
        );
        // Unused for a whole TTL: gone.
        assert_eq!(s.get("u", t0 + Duration::from_secs(161)), None);
        assert!(s.is_empty(), "expired entries are removed on lookup");
    }

    #[test]
    fn bounded_least_recently_used_go_first() {
        let s = MemoryStore::new(Duration::from_secs(600), 1_600);
        let now = Instant::now();
        // Half full (shards hold 100 each; the hash spreads 800 keys well below that).
        for i in 0..800 {
            s.put(&format!("old{i}"), "a".into(), now);
        }
        // Touch a tenth of them: they are now the most recently used.
        for i in 0..80 {
            assert!(s.get(&format!("old{i}"), now).is_some());
        }
        for i in 0..10_000 {
            s.put(&format!("new{i}"), "b".into(), now);
        }
        assert!(s.len() <= 1_600, "the bound holds: {}", s.len());
        let kept_new = (9_000..10_000)
            .filter(|i| s.get(&format!("new{i}"), now).is_some())
            .count();
        assert!(kept_new > 900, "the most recent entries stay: {kept_new}");
        let kept_old = (80..800)
            .filter(|i| s.get(&format!("old{i}"), now).is_some())
            .count();
        assert_eq!(kept_old, 0, "untouched old entries were evicted first");
    }

    #[test]
    fn put_replaces() {
        let s = MemoryStore::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        s.put("u", "a".into(), now);
        s.put("u", "b".into(), now);
        assert_eq!(s.get("u", now).as_deref(), Some("b"));
        assert_eq!(s.len(), 1);
        s.remove("u");
        assert_eq!(s.get("u", now), None);
    }
}
