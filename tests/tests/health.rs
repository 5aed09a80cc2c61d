//! Active health checks against the real mock upstream (`keyway_proxy::health`).
//!
//! Probes run every 50 ms in real time; every wait is a poll with a deadline
//! ([`eventually`]), never a fixed sleep. The tests of thresholds step through probes with
//! the mock's gate ([`MockUpstream::gate`]): each probe is answered only when the test
//! releases it, and the state is read once the next probe has arrived (the checker probes
//! again only after it recorded the last result), so the state after each probe is exact
//! however slow the machine is.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use keyway_proxy::health::{
    BackendHealth, CheckLabel, HealthMetrics, HealthSettings, ModelLoad, OutlierSettings,
    build_client, spawn_checker,
};
use keyway_testkit::mock::DEFAULT_MODEL;
use keyway_testkit::{Behavior, MockUpstream, eventually, free_port};
use serde_json::json;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(50);

/// A running checker; aborted on drop.
struct Checker {
    health: Arc<BackendHealth>,
    metrics: HealthMetrics,
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Checker {
    fn start(target: &str, configure: impl FnOnce(&mut HealthSettings)) -> Checker {
        let target: Uri = target.parse().expect("target uri");
        let mut settings = HealthSettings::new(target);
        settings.interval = INTERVAL;
        settings.timeout = Duration::from_secs(1);
        configure(&mut settings);
        let health = Arc::new(BackendHealth::from_settings(
            &settings,
            OutlierSettings::default(),
        ));
        let metrics = HealthMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let task = spawn_checker(
            CheckLabel {
                pool: "pool".into(),
                backend: "backend".into(),
            },
            settings,
            health.clone(),
            build_client().expect("client"),
            metrics.clone(),
        );
        Checker {
            health,
            metrics,
            task,
        }
    }

    fn checks(&self, result: &str) -> u64 {
        self.metrics
            .checks
            .with_label_values(&["pool", "backend", result])
            .get()
    }

    fn transitions(&self, to: &str) -> u64 {
        self.metrics
            .transitions
            .with_label_values(&["pool", "backend", to])
            .get()
    }

    fn gauge(&self) -> i64 {
        self.metrics
            .healthy
            .with_label_values(&["pool", "backend"])
            .get()
    }

    /// Waits until `is_healthy() == healthy` and returns the number of
    /// requests the mock had recorded when the flip was observed.
    async fn wait_for(&self, mock: &MockUpstream, healthy: bool) -> usize {
        let seen = Cell::new(None);
        let what = format!("backend healthy == {healthy}");
        eventually(T, &what, || {
            // Health first, then the count: the count includes every probe
            // that could have caused the flip.
            if self.health.is_healthy() == healthy {
                seen.set(Some(mock.request_count()));
            }
            std::future::ready(seen.get().is_some())
        })
        .await;
        seen.get().unwrap_or_default()
    }
}

/// The health state after each of the next `n` probes (the mock must be gated): releases one
/// probe at a time and reads the state once the checker has sent the probe after it.
async fn states(c: &Checker, mock: &MockUpstream, n: usize) -> Vec<bool> {
    // Between calls one probe waits at the gate: those before it were released.
    let mut released = mock.request_count().saturating_sub(1);
    let mut out = Vec::new();
    for _ in 0..n {
        eventually(T, &format!("probe {} sent", released + 1), || {
            std::future::ready(mock.request_count() > released)
        })
        .await;
        mock.release(1);
        released += 1;
        eventually(T, &format!("probe {} sent", released + 1), || {
            std::future::ready(mock.request_count() > released)
        })
        .await;
        out.push(c.health.is_healthy());
    }
    out
}

async fn mock() -> MockUpstream {
    MockUpstream::start("health-mock").await.expect("mock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_after_exactly_fail_threshold_then_recovers() {
    let mock = mock().await;
    mock.gate();
    // Probes 1-3 fail, 4 and 5 succeed.
    mock.fail_next(3, Behavior::status(503));
    let c = Checker::start(&format!("{}/v1/models", mock.url()), |s| {
        s.fail_threshold = 3;
        s.success_threshold = 2;
        s.timeout = Duration::from_secs(10);
    });
    assert!(c.health.is_healthy(), "a new backend starts healthy");
    // Unhealthy at the third failure exactly, healthy at the second success exactly.
    assert_eq!(states(&c, &mock, 5).await, [true, true, false, false, true]);
    assert_eq!(c.transitions("unhealthy"), 1);
    assert_eq!(c.transitions("healthy"), 1);
    assert_eq!(c.checks("failure"), 3);
    assert_eq!(c.checks("timeout"), 0);
    assert_eq!(c.checks("success"), 2);
    assert_eq!(c.gauge(), 1);
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.path == "/v1/models" && r.method == http::Method::GET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_success_resets_the_failure_streak() {
    let mock = mock().await;
    mock.gate();
    // F F S F F F: the success resets the streak, so the flip is at probe 6.
    mock.fail_next(2, Behavior::status(500));
    mock.fail_next(1, Behavior::Normal);
    mock.fail_next(3, Behavior::status(502));
    let c = Checker::start(&format!("{}/v1/models", mock.url()), |s| {
        s.fail_threshold = 3;
        s.timeout = Duration::from_secs(10);
    });
    assert_eq!(
        states(&c, &mock, 6).await,
        [true, true, true, true, true, false]
    );
    assert_eq!(c.transitions("unhealthy"), 1);
    assert_eq!(c.gauge(), 0);
    // Standing behaviour is Normal again: it recovers.
    mock.release(1000);
    c.wait_for(&mock, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standing_failure_behavior_and_recovery() {
    let mock = mock().await;
    mock.gate();
    mock.set_behavior(Behavior::status(500));
    let c = Checker::start(&format!("{}/v1/models", mock.url()), |s| {
        s.fail_threshold = 2;
        s.success_threshold = 3;
        s.timeout = Duration::from_secs(10);
    });
    assert_eq!(states(&c, &mock, 2).await, [true, false]);
    // The next probe (already waiting at the gate) and every later one succeed.
    mock.set_behavior(Behavior::Normal);
    let waiting = mock.request_count();
    assert_eq!(waiting, 3, "probe 3 waits at the gate");
    // Probe 3 chose its behaviour on arrival (a failure); from probe 4 on they succeed.
    assert_eq!(states(&c, &mock, 4).await, [false, false, false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_probe_is_a_timeout_failure() {
    let mock = mock().await;
    mock.fail_next(2, Behavior::Hang);
    let c = Checker::start(&format!("{}/v1/models", mock.url()), |s| {
        s.timeout = Duration::from_millis(200);
        s.fail_threshold = 2;
        s.success_threshold = 1;
    });
    // Only two probes time out (then the mock answers): a threshold above 2 never flips.
    c.wait_for(&mock, false).await;
    assert_eq!(c.checks("timeout"), 2);
    assert_eq!(c.checks("failure"), 0);
    c.wait_for(&mock, true).await;
    assert_eq!(c.checks("timeout"), 2);
    let durations = c
        .metrics
        .check_duration
        .with_label_values(&["pool"])
        .get_sample_count();
    assert!(durations >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_failure() {
    let target = format!("http://127.0.0.1:{}/v1/models", free_port());
    let c = Checker::start(&target, |s| s.fail_threshold = 3);
    eventually(T, "backend unhealthy", || {
        std::future::ready(!c.health.is_healthy())
    })
    .await;
    assert!(c.checks("failure") >= 3);
    assert_eq!(c.checks("success"), 0);
    assert_eq!(c.gauge(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_health_values_are_read() {
    let mock = mock().await;
    let c = Checker::start(&format!("{}/health/deep", mock.url()), |s| {
        s.deep = true;
        s.fail_threshold = 2;
        s.success_threshold = 1;
    });
    let expected = ModelLoad {
        healthy: Some(true),
        capacity: Some(100.0),
        consumption: Some(0.0),
    };
    eventually(T, "default deep health read", || {
        std::future::ready(c.health.model(DEFAULT_MODEL) == Some(expected))
    })
    .await;
    assert_eq!(c.health.load(), Some((100.0, 0.0)));

    mock.set_deep_health(json!({"version": 2, "models": [
        {"name": "m1", "payload": {"healthy": true, "capacity": 2000, "consumption": 15}},
        {"name": "m2", "payload": {"healthy": false, "extra": "ignored"}},
    ]}));
    eventually(T, "updated deep health read", || {
        std::future::ready(c.health.model("m1").and_then(|m| m.consumption) == Some(15.0))
    })
    .await;
    assert_eq!(c.health.model(DEFAULT_MODEL), None);
    assert_eq!(
        c.health.model("m2"),
        Some(ModelLoad {
            healthy: Some(false),
            capacity: None,
            consumption: None,
        })
    );
    assert_eq!(c.health.load(), Some((2000.0, 15.0)));
    assert_eq!(c.health.models().len(), 2);
    assert!(c.health.is_healthy());

    // A 200 whose body is not deep health fails the probe; the last good
    // models are kept.
    mock.set_deep_health(json!({"status": "ok"}));
    let before = c.checks("failure");
    let at = c.wait_for(&mock, false).await;
    assert!(at >= 2);
    assert!(c.checks("failure") >= before + 2);
    assert_eq!(c.health.load(), Some((2000.0, 15.0)));

    mock.set_deep_health(keyway_testkit::mock::default_deep_health());
    c.wait_for(&mock, true).await;
    eventually(T, "default deep health read again", || {
        std::future::ready(c.health.model(DEFAULT_MODEL) == Some(expected))
    })
    .await;
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.path == "/health/deep" && r.method == http::Method::GET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_carry_no_credentials() {
    let mock = mock().await;
    // Credentials in the target URL must not be sent either.
    let target = format!("http://user:s3cret@{}/v1/models?probe=1", mock.addr());
    let c = Checker::start(&target, |_| {});
    eventually(T, "three probes received", || {
        std::future::ready(mock.request_count() >= 3)
    })
    .await;
    for r in mock.requests() {
        assert_eq!(r.method, http::Method::GET);
        assert_eq!(r.uri, "/v1/models?probe=1");
        assert!(r.header("authorization").is_none(), "{r:?}");
        assert_eq!(r.key, None);
        assert!(r.body.is_empty());
        assert!(
            r.headers
                .iter()
                .all(|(_, v)| !String::from_utf8_lossy(v.as_bytes()).contains("s3cret")),
            "{r:?}"
        );
        assert!(
            r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("keyway-proxy-health/"))
        );
    }
    assert!(c.health.is_healthy());
    assert!(c.checks("success") >= 3);
}
