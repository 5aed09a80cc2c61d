//! Recent history for the status page: every few seconds the sampler walks [`LiveView`] and
//! keeps, per key and per backend, how many requests, 429s and errors the interval saw. The
//! rings are bounded ([`POINTS`] per series), and a series whose key or backend left the
//! config is dropped at the next sample, so memory follows the config's size.
//!
//! Served as `/status/history`; ids only, never a key value.

use super::{Dataplane, LiveView};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the sampler runs.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Points kept per series: 72 × 5 s = the last 6 minutes.
pub const POINTS: usize = 72;

/// One interval of one key or backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// End of the interval, unix milliseconds.
    pub t: u64,
    pub requests: u64,
    /// Answers with status 429.
    pub rate_limited: u64,
    /// Failed attempts (connect errors, timeouts, 5xx).
    pub errors: u64,
}

/// Cumulative counters as last read, and the ring of deltas.
#[derive(Default)]
struct Series {
    last: Point,
    points: VecDeque<Point>,
}

impl Series {
    fn push(&mut self, now: Point, cap: usize) {
        // A counter that went backwards (a reset, a key re-added) starts a new baseline.
        let delta = |now: u64, last: u64| now.checked_sub(last).unwrap_or(now);
        let first = self.last.t == 0;
        let point = Point {
            t: now.t,
            requests: delta(now.requests, self.last.requests),
            rate_limited: delta(now.rate_limited, self.last.rate_limited),
            errors: delta(now.errors, self.last.errors),
        };
        self.last = now;
        if first {
            return;
        }
        if self.points.len() == cap {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }
}

/// The rings of every key (by key pool and id) and backend (by pool and name).
pub struct History {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (`namespace/keypool`, key id)
    keys: BTreeMap<(String, String), Series>,
    /// (`namespace/pool`, backend name)
    backends: BTreeMap<(String, String), Series>,
}

/// One series as `/status/history` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesView {
    /// `namespace/name` of the key pool or pool.
    pub owner: String,
    /// Key id or backend name.
    pub id: String,
    pub points: Vec<Point>,
}

/// What `/status/history` answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    pub interval_seconds: u64,
    pub keys: Vec<SeriesView>,
    pub backends: Vec<SeriesView>,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(POINTS)
    }
}

// === impl History ===

impl History {
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    /// Records one interval from the live view.
    pub fn sample(&self, view: &LiveView, now: SystemTime) {
        let t = now
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
            .max(1);
        let mut keys = BTreeMap::new();
        for kp in view.key_pools() {
            for k in &kp.keys {
                keys.insert(
                    (kp.state.label.clone(), k.id.clone()),
                    Point {
                        t,
                        requests: k.requests,
                        rate_limited: k.rate_limited,
                        errors: k.failures,
                    },
                );
            }
        }
        let mut backends = BTreeMap::new();
        for p in view.pools() {
            for b in p.backends() {
                backends.insert(
                    (p.label().to_owned(), b.name().to_owned()),
                    Point {
                        t,
                        requests: b.requests,
                        rate_limited: b.rate_limited,
                        errors: b.failures,
                    },
                );
            }
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        merge(&mut inner.keys, keys, self.cap);
        merge(&mut inner.backends, backends, self.cap);
    }

    pub fn view(&self) -> HistoryView {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let list = |m: &BTreeMap<(String, String), Series>| {
            m.iter()
                .map(|((owner, id), s)| SeriesView {
                    owner: owner.clone(),
                    id: id.clone(),
                    points: s.points.iter().copied().collect(),
                })
                .collect()
        };
        HistoryView {
            interval_seconds: INTERVAL.as_secs(),
            keys: list(&inner.keys),
            backends: list(&inner.backends),
        }
    }
}

/// Adds this sample's counters; series not in the sample (removed from the config) go.
fn merge(
    series: &mut BTreeMap<(String, String), Series>,
    now: BTreeMap<(String, String), Point>,
    cap: usize,
) {
    series.retain(|k, _| now.contains_key(k));
    for (k, p) in now {
        series.entry(k).or_default().push(p, cap);
    }
}

/// Samples the data plane every [`INTERVAL`], forever.
pub async fn run(dataplane: Arc<Dataplane>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if dataplane.is_loaded() {
            dataplane
                .history()
                .sample(&dataplane.view(), SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: u64, requests: u64, rate_limited: u64, errors: u64) -> Point {
        Point {
            t,
            requests,
            rate_limited,
            errors,
        }
    }

    #[test]
    fn a_series_keeps_deltas_bounded_and_restarts_after_a_reset() {
        let mut s = Series::default();
        s.push(p(1, 10, 1, 0), 3);
        assert!(s.points.is_empty(), "the first read is only a baseline");
        s.push(p(2, 15, 3, 1), 3);
        s.push(p(3, 15, 3, 1), 3);
        s.push(p(4, 2, 0, 0), 3); // counters reset
        s.push(p(5, 7, 1, 0), 3);
        let got: Vec<_> = s.points.iter().copied().collect();
        assert_eq!(
            got,
            vec![p(3, 0, 0, 0), p(4, 2, 0, 0), p(5, 5, 1, 0)],
            "three points kept, oldest first"
        );
    }

    #[test]
    fn series_of_removed_keys_are_dropped() {
        let mut m = BTreeMap::new();
        let k = |id: &str| ("ns/kp".to_string(), id.to_string());
        merge(
            &mut m,
            BTreeMap::from([(k("a"), p(1, 1, 0, 0)), (k("b"), p(1, 1, 0, 0))]),
            4,
        );
        merge(&mut m, BTreeMap::from([(k("a"), p(2, 3, 0, 0))]), 4);
        assert_eq!(m.len(), 1);
        assert_eq!(m[&k("a")].points.back().map(|p| p.requests), Some(2));
    }
}
