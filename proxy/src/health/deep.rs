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
mod tests {
    use super::*;

    fn load(healthy: Option<bool>, capacity: Option<f64>, consumption: Option<f64>) -> ModelLoad {
        ModelLoad {
            healthy,
            capacity,
            consumption,
        }
    }

    #[test]
    fn documented_shape() {
        let body = br#"{"models":[
            {"name":"m1","payload":{"healthy":true,"capacity":2000,"consumption":15}},
            {"name":"m2","payload":{"healthy":false,"capacity":1.5,"consumption":0.25}}
        ]}"#;
        let models = parse_deep(body).unwrap();
        assert_eq!(
            models,
            vec![
                ("m1".into(), load(Some(true), Some(2000.0), Some(15.0))),
                ("m2".into(), load(Some(false), Some(1.5), Some(0.25))),
            ]
        );
        let snap = DeepSnapshot::new(models, Instant::now());
        assert_eq!(snap.load(), Some((2001.5, 15.25)));
        assert_eq!(snap.model("m1").and_then(|m| m.headroom()), Some(1985.0));
    }

    #[test]
    fn tolerant_fields() {
        let body = br#"{"version":3,"models":[
            {"name":"unknown-fields","extra":[1,2],"payload":{"healthy":true,"capacity":10,"consumption":1,"queue":7}},
            {"name":"no-payload"},
            {"name":"partial","payload":{"capacity":5}},
            {"name":"mistyped","payload":{"healthy":"yes","capacity":"12.5","consumption":-3}},
            {"name":"payload-not-object","payload":[1]},
            {"payload":{"capacity":1}},
            {"name":"","payload":{"capacity":1}},
            {"name":42},
            "not an object",
            null,
            {"name":"partial","payload":{"capacity":6,"consumption":2}}
        ]}"#;
        let models = parse_deep(body).unwrap();
        assert_eq!(
            models,
            vec![
                (
                    "unknown-fields".into(),
                    load(Some(true), Some(10.0), Some(1.0))
                ),
                ("no-payload".into(), ModelLoad::default()),
                ("partial".into(), load(None, Some(6.0), Some(2.0))),
                ("mistyped".into(), load(None, Some(12.5), None)),
                ("payload-not-object".into(), ModelLoad::default()),
            ]
        );
        let snap = DeepSnapshot::new(models, Instant::now());
        // Only the models with both numbers count.
        assert_eq!(snap.load(), Some((16.0, 3.0)));
        assert_eq!(
            snap.models()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            [
                "mistyped",
                "no-payload",
                "partial",
                "payload-not-object",
                "unknown-fields"
            ]
        );
    }

    #[test]
    fn empty_models_is_ok() {
        let models = parse_deep(br#"{"models":[]}"#).unwrap();
        assert!(models.is_empty());
        let snap = DeepSnapshot::new(models, Instant::now());
        assert_eq!(snap.load(), None);
        let snap = DeepSnapshot::new(
            vec![("a".into(), load(Some(true), Some(1.0), None))],
            Instant::now(),
        );
        assert_eq!(snap.load(), None);
    }

    #[test]
    fn malformed_bodies() {
        assert!(matches!(parse_deep(b""), Err(DeepError::Json(_))));
        assert!(matches!(parse_deep(b"{"), Err(DeepError::Json(_))));
        assert!(matches!(parse_deep(b"not json"), Err(DeepError::Json(_))));
        assert!(matches!(
            parse_deep(br#"{"models":[]} trailing"#),
            Err(DeepError::Json(_))
        ));
        assert!(matches!(parse_deep(&[0xff, 0xfe]), Err(DeepError::Json(_))));
        assert!(matches!(parse_deep(b"[]"), Err(DeepError::NotAnObject)));
        assert!(matches!(parse_deep(b"\"x\""), Err(DeepError::NotAnObject)));
        assert!(matches!(parse_deep(b"null"), Err(DeepError::NotAnObject)));
        assert!(matches!(parse_deep(b"{}"), Err(DeepError::NoModels)));
        assert!(matches!(
            parse_deep(br#"{"models":null}"#),
            Err(DeepError::NoModels)
        ));
        assert!(matches!(
            parse_deep(br#"{"models":{"name":"m"}}"#),
            Err(DeepError::NoModels)
        ));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        // serde_json's recursion limit turns this into an error instead of a stack overflow.
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse_deep(body.as_bytes()),
            Err(DeepError::Json(_))
        ));
        let nested = format!(
            r#"{{"models":[{{"name":"m","payload":{{"x":{}1{}}}}}]}}"#,
            "[".repeat(50),
            "]".repeat(50)
        );
        assert_eq!(parse_deep(nested.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A tiny deterministic fuzz loop (xorshift) over mutations of a valid body.
        let seed = br#"{"models":[{"name":"m1","payload":{"healthy":true,"capacity":2000,"consumption":15}}]}"#;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let mut body = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % body.len();
                body[i] = next() as u8;
            }
            let _ = parse_deep(&body);
        }
    }
}
