//! The periodic "logging current cluster state" line of Alyx, which its dashboards read: per
//! multiCluster pool, every cluster's models with their capacity, consumption and health from
//! deep health checks, nested as `{CLUSTER: {"modelState": {MODEL: {...}}}}` at the top level
//! of the JSON line (Loki's `json` stage flattens it to `CLUSTER_modelState_MODEL_capacity`).

use crate::dataplane::{Dataplane, LiveView};
use keyway_api::model::Mode;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How often the line is written (Alyx's default TPM interval).
pub const INTERVAL: Duration = Duration::from_secs(30);

/// The message of the line, as Alyx wrote it.
pub const MESSAGE: &str = "logging current cluster state";

/// Per multiCluster pool with deep-health data: its label and the nested state.
pub fn states(view: &LiveView) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for p in view.pools() {
        if p.model().mode != Mode::MultiCluster {
            continue;
        }
        let mut clusters = Map::new();
        for b in p.backends() {
            let models: Map<String, Value> = b
                .models()
                .into_iter()
                .map(|(name, m)| {
                    (
                        name,
                        json!({"capacity": m.capacity, "consumption": m.consumption, "healthy": m.healthy}),
                    )
                })
                .collect();
            if !models.is_empty() {
                clusters.insert(
                    b.name().to_string(),
                    json!({"modelState": models, "available": b.available}),
                );
            }
        }
        if !clusters.is_empty() {
            out.push((p.label().to_string(), Value::Object(clusters)));
        }
    }
    out
}

/// Writes the line for every multiCluster pool every [`INTERVAL`].
pub async fn run(dataplane: Arc<Dataplane>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (pool, state) in states(&dataplane.view()) {
            tracing::info!(
                pool = %pool,
                { keyway_api::logging::JSON_FIELDS } = %state,
                "{MESSAGE}"
            );
        }
    }
}
