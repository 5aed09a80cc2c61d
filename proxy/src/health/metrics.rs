//! Health-check metrics. Register once per registry and clone the handle into every checker.

use super::state::{Ejection, Transition};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Identifies a checked backend in logs and metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckLabel {
    pub pool: String,
    pub backend: String,
}

/// The health metrics (all labelled by pool, and by backend where it is bounded).
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    /// `keyway_proxy_health_checks_total{pool,backend,result}`, result = success|failure|timeout.
    pub checks: IntCounterVec,
    /// `keyway_proxy_health_check_duration_seconds{pool}`.
    pub check_duration: HistogramVec,
    /// `keyway_proxy_backend_healthy{pool,backend}`: the active-check state (1 healthy, 0 not).
    pub healthy: IntGaugeVec,
    /// `keyway_proxy_health_transitions_total{pool,backend,to}`, to = healthy|unhealthy.
    pub transitions: IntCounterVec,
    /// `keyway_proxy_ejections_total{pool,backend}`: passive outlier ejections.
    pub ejections: IntCounterVec,
}

impl HealthMetrics {
    /// Creates the metrics and registers them in `registry` (fails if already registered).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.checks.clone()))?;
        registry.register(Box::new(m.check_duration.clone()))?;
        registry.register(Box::new(m.healthy.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        Ok(m)
    }

    /// The metrics without a registry (tests, or when metrics are not exported).
    pub fn unregistered() -> prometheus::Result<Self> {
        Ok(Self {
            checks: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_health_checks_total",
                    "Active health probes, by pool, backend and result (success, failure, timeout).",
                ),
                &["pool", "backend", "result"],
            )?,
            check_duration: HistogramVec::new(
                HistogramOpts::new(
                    "keyway_proxy_health_check_duration_seconds",
                    "Duration of active health probes, by pool.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["pool"],
            )?,
            healthy: IntGaugeVec::new(
                Opts::new(
                    "keyway_proxy_backend_healthy",
                    "1 if the backend passes its active health checks, else 0.",
                ),
                &["pool", "backend"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_health_transitions_total",
                    "Active health state changes, by pool, backend and new state.",
                ),
                &["pool", "backend", "to"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "keyway_proxy_ejections_total",
                    "Passive outlier ejections, by pool and backend.",
                ),
                &["pool", "backend"],
            )?,
        })
    }

    /// Counts an ejection returned by `BackendHealth::record_outcome` and logs it (warn).
    /// The request path calls this; the checker never ejects.
    pub fn on_ejection(&self, label: &CheckLabel, ejection: &Ejection) {
        self.ejections
            .with_label_values(&[label.pool.as_str(), label.backend.as_str()])
            .inc();
        tracing::warn!(
            pool = %label.pool,
            backend = %label.backend,
            duration = ?ejection.duration,
            level = ejection.level,
            "backend ejected after consecutive request failures"
        );
    }

    /// Drops the label values of a backend that was removed from the config.
    pub fn forget(&self, label: &CheckLabel) {
        let (pool, backend) = (label.pool.as_str(), label.backend.as_str());
        let _ = self.healthy.remove_label_values(&[pool, backend]);
        let _ = self.ejections.remove_label_values(&[pool, backend]);
        for result in ["success", "failure", "timeout"] {
            let _ = self.checks.remove_label_values(&[pool, backend, result]);
        }
        for to in ["healthy", "unhealthy"] {
            let _ = self.transitions.remove_label_values(&[pool, backend, to]);
        }
    }

    pub(crate) fn set_healthy(&self, label: &CheckLabel, healthy: bool) {
        self.healthy
            .with_label_values(&[label.pool.as_str(), label.backend.as_str()])
            .set(i64::from(healthy));
    }

    pub(crate) fn transition(&self, label: &CheckLabel, t: Transition) {
        self.transitions
            .with_label_values(&[label.pool.as_str(), label.backend.as_str(), t.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn register_names_and_double_registration() {
        let registry = Registry::new();
        let m = HealthMetrics::register(&registry).unwrap();
        let label = CheckLabel {
            pool: "p".into(),
            backend: "b".into(),
        };
        m.checks.with_label_values(&["p", "b", "success"]).inc();
        m.check_duration.with_label_values(&["p"]).observe(0.01);
        m.set_healthy(&label, true);
        m.transition(&label, Transition::Unhealthy);
        m.on_ejection(
            &label,
            &Ejection {
                until: Instant::now(),
                duration: Duration::from_secs(10),
                level: 1,
            },
        );
        let mut names: Vec<_> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "keyway_proxy_backend_healthy",
                "keyway_proxy_ejections_total",
                "keyway_proxy_health_check_duration_seconds",
                "keyway_proxy_health_checks_total",
                "keyway_proxy_health_transitions_total",
            ]
        );
        assert!(HealthMetrics::register(&registry).is_err());
        m.forget(&label);
        assert_eq!(m.healthy.with_label_values(&["p", "b"]).get(), 0);
    }
}
