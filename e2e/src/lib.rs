//! End-to-end test harness for Keyway.
//!
//! The tests run the real `keyway-controller` and `keyway-proxy` binaries (built with
//! `cargo build --workspace --bins`) against a real etcd + kube-apiserver (built by
//! `e2e/tools/install.sh`), and drive them with the machine's real `kubectl`.
//!
//! * [`cluster`]: the one etcd + kube-apiserver shared by every test of the process, with the
//!   Keyway CRDs installed; [`Cluster::namespace`] gives each test its own namespace.
//! * [`Process`]: a child process whose output is captured to files and which is killed on drop;
//!   [`Controller`] and [`Proxy`] start the product binaries on free loopback ports.
//! * [`helm`]: the real `helm` with its own home, and parsing of rendered manifests;
//!   [`prometheus`]: a real Prometheus on loopback and its query API.
//! * [`node`]: a real single-node cluster (kubelet, containerd, kube-proxy, CoreDNS, ...) for
//!   the tests that run Pods, with images built on this machine.
//! * [`http`]: a tiny HTTP/1.1 client for talking to the proxy and the admin endpoints.
//! * [`wait_for`] / [`eventually`]: poll with a deadline instead of sleeping.
//!
//! All e2e tests live in the single integration-test binary `tests/e2e.rs` so they share one
//! API server (one per test process).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cluster;
pub mod discovery;
pub mod helm;
pub mod http;
pub mod manifests;
pub mod node;
pub mod paths;
pub mod process;
pub mod prometheus;
mod reaper;

pub use cluster::{Cluster, TestNamespace, cluster};
pub use keyway_testkit::{MockUpstream, eventually, free_port};
pub use process::{Controller, Process, Proxy};

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` until it returns `Ok(value)`, then returns the value.
///
/// `f` returns `Err(observation)` while the condition does not hold yet; the last observation
/// is part of the panic message if the deadline passes, which says *why* it timed out. A single
/// call of `f` is bounded by the deadline too.
///
/// # Panics
///
/// If `f` has not returned `Ok` within `timeout` (the message names the caller's line).
#[track_caller]
pub fn wait_for<T, E, F, Fut>(
    timeout: Duration,
    what: &str,
    mut f: F,
) -> impl Future<Output = T> + use<'_, T, E, F, Fut>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("(not evaluated)");
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, f()).await {
                Ok(Ok(value)) => return value,
                Ok(Err(observed)) => last = observed.to_string(),
                Err(_) => last = format!("{last} (then a check hung until the deadline)"),
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{caller}: timed out after {timeout:?} waiting for: {what}; last observed: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A random lowercase hex string of `len` characters (for names and fake key values).
pub fn random_hex(len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    s.truncate(len);
    s
}

/// Prints how long the phases of a test took, as they end (`eprintln`, visible with
/// `--nocapture`).
#[derive(Debug)]
pub struct Timings {
    test: String,
    start: Instant,
    phase_start: Instant,
}

impl Timings {
    /// Starts the clock for `test`.
    pub fn new(test: &str) -> Timings {
        let now = Instant::now();
        Timings {
            test: test.to_owned(),
            start: now,
            phase_start: now,
        }
    }

    /// Ends the current phase, named `phase`, and prints its duration; the next phase starts now.
    pub fn phase(&mut self, phase: &str) -> Duration {
        let now = Instant::now();
        let took = now - self.phase_start;
        self.phase_start = now;
        eprintln!(
            "[e2e timing] {}: {phase}: {:.3}s",
            self.test,
            took.as_secs_f64()
        );
        took
    }

    /// Prints the total duration of the test so far.
    pub fn total(&self) -> Duration {
        let took = self.start.elapsed();
        eprintln!(
            "[e2e timing] {}: total: {:.3}s",
            self.test,
            took.as_secs_f64()
        );
        took
    }
}
