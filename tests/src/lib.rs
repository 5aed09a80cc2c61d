//! Test support for Keyway.
//!
//! * [`mock::MockUpstream`]: a real HTTP/1.1 + h2c server that looks like an
//!   OpenAI-compatible LLM API, records every request (including the API key it
//!   received) and can be told at runtime to fail, stall or hang.
//! * [`eventually`]: poll an async predicate until it holds or a deadline passes.
//! * [`free_port`]: pick a currently free TCP port on 127.0.0.1.
//! * [`redis::RedisServer`]: a real `redis-server` on loopback.
//! * [`browser::Browser`]: headless Chromium through chromedriver (the status page tests).
//! * [`logs::assert_no_panic`]: fail a test whose child process logged a panic.
//! * [`tls::TestPki`]: a private CA and a serving certificate for HTTPS mock upstreams.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod browser;
pub mod client;
pub mod logs;
pub mod metrics;
pub mod mock;
pub mod redis;
pub mod stats;
pub mod tls;

use std::future::Future;
use std::time::Duration;

pub use mock::{Behavior, MockUpstream, RawReply, RawUpstream, RecordedRequest};

/// Interval between two evaluations of the predicate in [`eventually`].
pub const EVENTUALLY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls the async predicate `f` every [`EVENTUALLY_POLL_INTERVAL`] until it
/// returns `true`.
///
/// A single evaluation of `f` is also bounded by the deadline, so a predicate
/// that hangs (e.g. an HTTP request to a stuck server) cannot stall the test.
///
/// # Panics
///
/// Panics with a message containing `what` if `f` has not returned `true`
/// within `timeout`. Meant for tests only.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(true) = tokio::time::timeout(remaining, f()).await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(EVENTUALLY_POLL_INTERVAL).await;
    }
}

/// Returns a TCP port on 127.0.0.1 that was free at the time of the call
/// (binds port 0 and releases it). Another process may grab it before the
/// caller binds it, so prefer binding port 0 directly where possible.
///
/// # Panics
///
/// Panics if no socket can be bound on 127.0.0.1 (test helper).
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("free_port: cannot bind 127.0.0.1:0: {e}"),
    }
}
