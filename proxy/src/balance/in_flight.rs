//! Requests in flight per backend, for least-request balancing: counted while a guard lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests in flight per backend (and in total), for implementing
/// [`Candidates::in_flight`](super::Candidates::in_flight) and [`Candidates::in_flight_summary`](super::Candidates::in_flight_summary).
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
}

impl InFlight {
    /// Counters for `n` backends, all at 0.
    pub fn new(n: usize) -> Self {
        Self {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
        }
    }

    /// Number of backends tracked.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no backends are tracked.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Requests in flight on backend `i` (0 for an unknown index).
    pub fn get(&self, i: usize) -> u64 {
        self.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests in flight on all backends.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a request on backend `i` until the guard is dropped. An unknown index is not
    /// counted.
    pub fn start(&self, i: usize) -> InFlightGuard<'_> {
        let known = self.begin(i);
        InFlightGuard {
            counters: self,
            i,
            known,
        }
    }

    /// Like [`InFlight::start`], with a guard that owns a reference to the counters (for
    /// futures and tasks that must be `'static`).
    pub fn start_owned(self: &Arc<Self>, i: usize) -> OwnedInFlightGuard {
        let known = self.begin(i);
        OwnedInFlightGuard {
            counters: self.clone(),
            i,
            known,
        }
    }

    fn begin(&self, i: usize) -> bool {
        let Some(c) = self.counts.get(i) else {
            return false;
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn end(&self, i: usize) {
        if let Some(c) = self.counts.get(i) {
            c.fetch_sub(1, Ordering::Relaxed);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One request counted by [`InFlight::start`]; uncounted when dropped.
#[derive(Debug)]
#[must_use = "the request is uncounted as soon as the guard is dropped"]
pub struct InFlightGuard<'a> {
    counters: &'a InFlight,
    i: usize,
    known: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.known {
            self.counters.end(self.i);
        }
    }
}

/// One request counted by [`InFlight::start_owned`]; uncounted when dropped.
#[derive(Debug)]
#[must_use = "the request is uncounted as soon as the guard is dropped"]
pub struct OwnedInFlightGuard {
    counters: Arc<InFlight>,
    i: usize,
    known: bool,
}

impl Drop for OwnedInFlightGuard {
    fn drop(&mut self) {
        if self.known {
            self.counters.end(self.i);
        }
    }
}
