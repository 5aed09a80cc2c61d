//! Standalone mode: a YAML file of LoadBalancerPool / ApiKeyPool / Secret manifests, re-read
//! when its contents change.

use super::SnapshotTx;
use crate::metrics::Metrics;
use keyway_api::manifest::Manifests;
use keyway_api::model::Snapshot;
use keyway_api::resolve::ConfigError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A file could not be turned into a config. `Display` lists every problem, one per line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Parses and resolves a manifest string; `${NAME}` in Secret values reads the environment.
pub fn parse(yaml: &str) -> Result<Snapshot, LoadError> {
    let env = |name: &str| std::env::var(name).ok();
    Manifests::parse(yaml, &env)
        .and_then(|m| m.resolve())
        .map_err(LoadError::Invalid)
}

/// Reads, parses and resolves the file.
pub fn load(path: &Path) -> Result<(Snapshot, Vec<u8>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    Ok((parse(&text)?, bytes))
}

/// Re-reads `path` every `interval`; publishes a new snapshot when the contents change and are
/// valid, logs each problem (and keeps serving the old config) when they are not.
pub async fn watch(
    path: PathBuf,
    mut last: Vec<u8>,
    interval: Duration,
    tx: SnapshotTx,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(error) => {
                // Editors replace files by rename; a brief absence is not a config change.
                tracing::debug!(path = %path.display(), %error, "config file not readable");
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        last = bytes;
        match parse(&String::from_utf8_lossy(&last)) {
            Ok(snapshot) => {
                let changed = tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&snapshot) {
                        return false;
                    }
                    *cur = Some(Arc::new(snapshot));
                    true
                });
                metrics.config_updates.with_label_values(&["applied"]).inc();
                tracing::info!(path = %path.display(), changed, "config file reloaded");
            }
            Err(error) => {
                metrics
                    .config_updates
                    .with_label_values(&["rejected"])
                    .inc();
                for line in error.to_string().lines() {
                    tracing::error!(path = %path.display(), problem = %line, "config file rejected; still serving the previous config");
                }
            }
        }
    }
}
