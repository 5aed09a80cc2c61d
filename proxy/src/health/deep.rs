//! Deep health: per-model capacity and consumption reported by the backend.
//!
//! The body has the shape
//!
//! ```json
//! {"models":[{"name":"m1","payload":{"healthy":true,"capacity":2000,"consumption":15}}]}
//! ```
//!
//! Parsing is tolerant: unknown fields anywhere are ignored; a missing or mistyped `payload`
//! field is "unknown" (`None`); entries that are not objects or have no non-empty string
//! `name` are skipped; a later entry with the same name replaces an earlier one. Only a body
//! that is not JSON, not an object, or has no `models` array is an error (the probe then counts
//! as failed).

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;

/// Largest deep-health body the checker reads; a larger body fails the probe.
pub const MAX_DEEP_BODY: usize = 1024 * 1024;

/// What a backend reports about one model. `None` = not reported (unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ModelLoad {
    pub healthy: Option<bool>,
    /// Finite and non-negative when known.
    pub capacity: Option<f64>,
    /// Finite and non-negative when known.
    pub consumption: Option<f64>,
}

impl ModelLoad {
    /// `capacity - consumption` when both are known (may be negative when overloaded).
    pub fn headroom(&self) -> Option<f64> {
        Some(self.capacity? - self.consumption?)
    }
}

/// Why a deep-health body was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DeepError {
    #[error("deep health body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("deep health body is not a JSON object")]
    NotAnObject,
    #[error("deep health body has no \"models\" array")]
    NoModels,
}

/// Parses a deep-health body (see the module docs). Pure; never panics.
pub fn parse_deep(body: &[u8]) -> Result<Vec<(String, ModelLoad)>, DeepError> {
    let value: Value = serde_json::from_slice(body)?;
    let Value::Object(root) = value else {
        return Err(DeepError::NotAnObject);
    };
    let Some(Value::Array(entries)) = root.get("models") else {
        return Err(DeepError::NoModels);
    };
    let mut out: Vec<(String, ModelLoad)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(name) = entry
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let payload = entry.get("payload");
        let field = |key: &str| payload.and_then(|p| p.get(key));
        let load = ModelLoad {
            healthy: field("healthy").and_then(Value::as_bool),
            capacity: field("capacity").and_then(number),
            consumption: field("consumption").and_then(number),
        };
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = load,
            None => out.push((name.to_owned(), load)),
        }
    }
    Ok(out)
}

/// A non-negative finite number, given as a JSON number or a numeric string.
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n)
}

/// The models of the last successful deep probe (immutable; replaced as a whole).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeepSnapshot {
    models: BTreeMap<String, ModelLoad>,
    load: Option<(f64, f64)>,
    updated: Option<Instant>,
}

impl DeepSnapshot {
    pub(crate) fn new(models: Vec<(String, ModelLoad)>, now: Instant) -> Self {
        let models: BTreeMap<_, _> = models.into_iter().collect();
        let load = models
            .values()
            .filter_map(|m| Some((m.capacity?, m.consumption?)))
            .fold(None, |acc: Option<(f64, f64)>, (cap, used)| {
                let (c, u) = acc.unwrap_or((0.0, 0.0));
                Some((c + cap, u + used))
            });
        Self {
            models,
            load,
            updated: Some(now),
        }
    }

    /// The load of `name`, if reported.
    pub fn model(&self, name: &str) -> Option<ModelLoad> {
        self.models.get(name).copied()
    }

    /// All reported models, sorted by name.
    pub fn models(&self) -> Vec<(String, ModelLoad)> {
        self.models.iter().map(|(n, m)| (n.clone(), *m)).collect()
    }

    /// `(capacity sum, consumption sum)` over the models that report both (whatever their
    /// `healthy` flag); `None` when no model does.
    pub fn load(&self) -> Option<(f64, f64)> {
        self.load
    }

    /// When the models were last replaced; `None` if no deep probe ever succeeded.
    pub fn updated(&self) -> Option<Instant> {
        self.updated
    }
}

#[cfg(test)]
mod tests;
