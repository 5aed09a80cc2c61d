//! Kubernetes Events on transitions a human should know about, derived by comparing the
//! status the controller is about to write with the one it wrote before: a pool becoming
//! unready (and why) or ready again, traffic moving to another backend (failover, failback,
//! evacuation), a key disabled or re-enabled, and a proxy rejecting a snapshot.
//! Events never carry key values: only ids and reasons.

use keyway_api::model::ObjectId;
use keyway_api::spec::{ApiKeyPoolStatus, Condition, LoadBalancerPoolStatus};
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Publishes notices on the objects they concern.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

// === impl Events ===

impl Events {
    pub fn new(client: Client) -> Self {
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok();
        let reporter = Reporter {
            controller: "keyway-controller".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes each notice on `kind` `id`; failures are logged, never fatal.
    pub async fn publish(
        &self,
        kind: &str,
        id: &ObjectId,
        uid: Option<String>,
        notices: Vec<Notice>,
    ) {
        if notices.is_empty() {
            return;
        }
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(format!("{}/{}", keyway_api::GROUP, keyway_api::VERSION)),
            kind: Some(kind.to_string()),
            name: Some(id.name.clone()),
            namespace: Some(id.namespace.clone()),
            uid,
            ..Default::default()
        };
        for n in notices {
            let event = Event {
                type_: if n.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: n.reason.clone(),
                note: Some(n.note.clone()),
                action: action(&n),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(%kind, object = %id, reason = %n.reason, %error, "cannot publish event");
            }
        }
    }
}

/// The event's `action`, which tells notices apart. kube's `Recorder` counts an event with
/// the same type, reason, action and object as a repeat of the first (`x2` in `kubectl
/// describe`, with the first one's note), so a failback (`ActiveBackendChanged`, "secondary
/// to primary") would read as a second failover. The action carries a digest of the note:
/// the same notice repeats as a series, a different one is its own event, in order.
fn action(n: &Notice) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.note.hash(&mut h);
    format!("Reconcile-{:016x}", h.finish())
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// Ready turning False (or changing reason) is a warning with the reason and message; turning
/// True again is normal.
fn ready_transition(prev: &[Condition], next: &[Condition]) -> Option<Notice> {
    let next = ready(next)?;
    let prev = ready(prev);
    let changed = prev.is_none_or(|p| p.status != next.status || p.reason != next.reason);
    if !changed {
        return None;
    }
    if next.status == "True" {
        prev.filter(|p| p.status == "False").map(|_| Notice {
            warning: false,
            reason: "Resolved".into(),
            note: next.message.clone(),
        })
    } else {
        Some(Notice {
            warning: true,
            reason: next.reason.clone(),
            note: next.message.clone(),
        })
    }
}

/// What changed for a `LoadBalancerPool`.
pub fn pool_transitions(
    prev: Option<&LoadBalancerPoolStatus>,
    next: &LoadBalancerPoolStatus,
) -> Vec<Notice> {
    let empty = LoadBalancerPoolStatus::default();
    let prev = prev.unwrap_or(&empty);
    let mut out: Vec<Notice> = ready_transition(&prev.conditions, &next.conditions)
        .into_iter()
        .collect();
    if let (Some(from), Some(to)) = (&prev.active_backend, &next.active_backend)
        && from != to
    {
        out.push(Notice {
            warning: false,
            reason: "ActiveBackendChanged".into(),
            note: format!("traffic moved from backend {from} to {to}"),
        });
    }
    out
}

/// What changed for an `ApiKeyPool`.
pub fn key_pool_transitions(
    prev: Option<&ApiKeyPoolStatus>,
    next: &ApiKeyPoolStatus,
) -> Vec<Notice> {
    let empty = ApiKeyPoolStatus::default();
    let prev = prev.unwrap_or(&empty);
    let mut out: Vec<Notice> = ready_transition(&prev.conditions, &next.conditions)
        .into_iter()
        .collect();
    for key in &next.keys {
        let before = prev
            .keys
            .iter()
            .find(|k| k.id == key.id)
            .map(|k| k.state.as_str());
        match (before, key.state.as_str()) {
            (b, "disabled") if b != Some("disabled") => out.push(Notice {
                warning: true,
                reason: "KeyDisabled".into(),
                note: format!(
                    "key {}: {}",
                    key.id,
                    key.reason.as_deref().unwrap_or("disabled")
                ),
            }),
            (Some("disabled"), s) if s != "disabled" => out.push(Notice {
                warning: false,
                reason: "KeyReenabled".into(),
                note: format!("key {} is {s} again", key.id),
            }),
            _ => {}
        }
    }
    out
}

/// A proxy rejected a snapshot that included this pool.
pub fn config_rejected(proxy_id: &str, error: &str) -> Notice {
    Notice {
        warning: true,
        reason: "ConfigRejected".into(),
        note: format!("proxy {proxy_id} rejected the pushed config: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::spec::KeyStatus;

    fn cond(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: None,
            observed_generation: None,
        }]
    }

    #[test]
    fn notices_with_different_notes_are_different_events() {
        let n = |note: &str| Notice {
            warning: false,
            reason: "ActiveBackendChanged".into(),
            note: note.into(),
        };
        let away = action(&n("traffic moved from backend primary to secondary"));
        let back = action(&n("traffic moved from backend secondary to primary"));
        assert_ne!(away, back, "a failback is not a repeat of the failover");
        assert_eq!(
            away,
            action(&n("traffic moved from backend primary to secondary")),
            "the same notice repeats as a series"
        );
        assert!(away.len() <= 128, "events.k8s.io limits action to 128");
    }

    #[test]
    fn ready_transitions_are_edges_not_levels() {
        let ok = LoadBalancerPoolStatus {
            conditions: cond("True", "Resolved"),
            ..Default::default()
        };
        let bad = LoadBalancerPoolStatus {
            conditions: cond("False", "SecretNotFound"),
            ..Default::default()
        };
        assert!(
            pool_transitions(None, &ok).is_empty(),
            "first Ready=True is not news"
        );
        let n = pool_transitions(Some(&ok), &bad);
        assert_eq!(n[0].reason, "SecretNotFound");
        assert!(n[0].warning);
        assert!(pool_transitions(Some(&bad), &bad).is_empty());
        assert_eq!(pool_transitions(Some(&bad), &ok)[0].reason, "Resolved");
    }

    #[test]
    fn failover_and_keys() {
        let a = LoadBalancerPoolStatus {
            active_backend: Some("primary".into()),
            ..Default::default()
        };
        let b = LoadBalancerPoolStatus {
            active_backend: Some("secondary".into()),
            ..Default::default()
        };
        assert_eq!(
            pool_transitions(Some(&a), &b)[0].note,
            "traffic moved from backend primary to secondary"
        );

        let key = |state: &str| KeyStatus {
            id: "k1".into(),
            state: state.into(),
            reason: Some("upstream answered 401: likely revoked".into()),
            ..Default::default()
        };
        let active = ApiKeyPoolStatus {
            keys: vec![key("active")],
            ..Default::default()
        };
        let disabled = ApiKeyPoolStatus {
            keys: vec![key("disabled")],
            ..Default::default()
        };
        let n = key_pool_transitions(Some(&active), &disabled);
        assert_eq!(n[0].reason, "KeyDisabled");
        assert!(n[0].note.contains("k1") && n[0].note.contains("401"));
        assert_eq!(
            key_pool_transitions(Some(&disabled), &active)[0].reason,
            "KeyReenabled"
        );
        assert!(key_pool_transitions(Some(&disabled), &disabled).is_empty());
    }
}
