//! Backend health: active checks, passive outlier detection and deep health.
//!
//! - [`BackendHealth`] (in `state`): the shared per-backend state. The request path reads it
//!   lock-free ([`BackendHealth::is_available`]) and reports request outcomes
//!   ([`BackendHealth::record_outcome`], passive ejection with exponential back-off, see
//!   [`OutlierSettings`]); the checker reports probe results ([`BackendHealth::record_check`]).
//!   A backend starts healthy.
//! - [`spawn_checker`] (in `checker`): one task per backend probing [`HealthSettings::target`]
//!   with `GET` every `interval`.
//! - [`parse_deep`] (in `deep`): per-model capacity/consumption from a deep-health body.
//! - [`HealthMetrics`]: the Prometheus metrics.
//!
//! "Never eject the last healthy backend" is the pool's rule: see [`any_available`].
//!
//! Wiring, per backend:
//!
//! ```no_run
//! # async fn demo(registry: prometheus::Registry) -> anyhow::Result<()> {
//! use keyway_proxy::health::*;
//! use std::sync::Arc;
//! let metrics = HealthMetrics::register(&registry)?;
//! let client = build_client()?;
//! let settings = HealthSettings::for_backend("https://api.example.com/v1", "models")?;
//! let health = Arc::new(BackendHealth::from_settings(&settings, OutlierSettings::default()));
//! let label = CheckLabel { pool: "openai".into(), backend: "primary".into() };
//! let task = spawn_checker(label, settings, health.clone(), client, metrics);
//! // ... on config change: task.abort(); metrics.forget(&label);
//! # Ok(()) }
//! ```

mod checker;
pub mod deep;
mod metrics;
mod state;

pub use checker::{
    DEFAULT_FAIL_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_SUCCESS_THRESHOLD, DEFAULT_TIMEOUT,
    HealthClient, HealthClients, HealthSettings, build_client, join_target, spawn_checker,
};
pub use deep::{DeepError, DeepSnapshot, MAX_DEEP_BODY, ModelLoad, parse_deep};
pub use metrics::{CheckLabel, HealthMetrics};
pub use state::{
    BackendHealth, DEFAULT_BASE_EJECTION, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_EJECTION_DECAY,
    DEFAULT_MAX_EJECTION, Ejection, OutlierSettings, Transition, any_available,
};
