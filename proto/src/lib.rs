//! The control-plane contract and its conversion to and from the domain model.
//!
//! Proto stays at the edge: the proxy converts an incoming [`Snapshot`] into
//! [`keyway_api::model::Snapshot`] with [`TryFrom`], which validates it again and names the
//! offending field, so a bad push is NACKed instead of served.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use keyway_api::model::{self, ObjectId};
use keyway_api::resolve;
use keyway_api::secret::SecretValue;
use std::fmt;

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("keyway.v1");
}

pub use generated::*;

/// Why a pushed snapshot was rejected. `Display` names the field; never a key value.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidSnapshot {
    pub path: String,
    pub message: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .finish()
    }
}

// === model -> proto ===

impl Snapshot {
    pub fn from_model(version: u64, snap: &model::Snapshot) -> Self {
        Snapshot {
            version,
            pools: snap.pools.iter().map(Pool::from).collect(),
            key_pools: snap.key_pools.iter().map(KeyPool::from).collect(),
        }
    }
}

impl From<&model::Pool> for Pool {
    fn from(p: &model::Pool) -> Self {
        Pool {
            namespace: p.id.namespace.clone(),
            name: p.id.name.clone(),
            backends: p
                .backends
                .iter()
                .map(|b| Backend {
                    name: b.name.clone(),
                    endpoint: b.endpoint.to_string(),
                    host_header: b.host_header.clone().unwrap_or_default(),
                    weight: b.weight,
                })
                .collect(),
            strategy: match p.strategy {
                model::Strategy::RoundRobin => Strategy::RoundRobin as i32,
            },
            key_pool: p.key_pool.clone().unwrap_or_default(),
            auth: Some(Auth {
                kind: Some(match &p.auth {
                    model::Auth::Header { name, prefix } => auth::Kind::Header(HeaderAuth {
                        name: name.clone(),
                        prefix: prefix.clone(),
                    }),
                    model::Auth::Query { param } => auth::Kind::Query(QueryAuth {
                        param: param.clone(),
                    }),
                }),
            }),
            routes: p
                .routes
                .iter()
                .map(|r| Route {
                    path_prefix: r.path_prefix.clone().unwrap_or_default(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(name, value)| HeaderMatch {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&model::KeyPool> for KeyPool {
    fn from(k: &model::KeyPool) -> Self {
        KeyPool {
            namespace: k.id.namespace.clone(),
            name: k.id.name.clone(),
            selection: match k.selection {
                model::Selection::RoundRobin => Selection::RoundRobin as i32,
            },
            keys: k
                .keys
                .iter()
                .map(|key| Key {
                    id: key.id.clone(),
                    value: key.value.expose().to_string(),
                })
                .collect(),
        }
    }
}

// === proto -> model ===

impl TryFrom<Snapshot> for model::Snapshot {
    type Error = InvalidSnapshot;

    fn try_from(s: Snapshot) -> Result<Self, Self::Error> {
        let mut pools = Vec::with_capacity(s.pools.len());
        for (i, p) in s.pools.into_iter().enumerate() {
            pools.push(pool(p).map_err(|(f, m)| invalid(format!("pools[{i}].{f}"), m))?);
        }
        let mut key_pools = Vec::with_capacity(s.key_pools.len());
        for (i, k) in s.key_pools.into_iter().enumerate() {
            key_pools.push(key_pool(k).map_err(|(f, m)| invalid(format!("keyPools[{i}].{f}"), m))?);
        }
        Ok(model::Snapshot { pools, key_pools }.normalized())
    }
}

fn invalid(path: String, message: String) -> InvalidSnapshot {
    InvalidSnapshot { path, message }
}

type FieldResult<T> = Result<T, (String, String)>;

fn pool(p: Pool) -> FieldResult<model::Pool> {
    if p.name.is_empty() || p.namespace.is_empty() {
        return Err(("name".into(), "name and namespace are required".into()));
    }
    let strategy = match Strategy::try_from(p.strategy) {
        Ok(Strategy::RoundRobin) | Ok(Strategy::Unspecified) => model::Strategy::RoundRobin,
        Err(_) => return Err(("strategy".into(), format!("unknown value {}", p.strategy))),
    };
    if p.backends.is_empty() {
        return Err(("backends".into(), "at least one backend is required".into()));
    }
    let mut backends = Vec::with_capacity(p.backends.len());
    for (i, b) in p.backends.into_iter().enumerate() {
        let endpoint =
            resolve::endpoint(&b.endpoint).map_err(|m| (format!("backends[{i}].endpoint"), m))?;
        backends.push(model::Backend {
            name: b.name,
            endpoint,
            host_header: (!b.host_header.is_empty()).then_some(b.host_header),
            weight: b.weight,
        });
    }
    let auth = match p.auth.and_then(|a| a.kind) {
        Some(auth::Kind::Header(h)) => model::Auth::Header {
            name: h.name.to_ascii_lowercase(),
            prefix: h.prefix,
        },
        Some(auth::Kind::Query(q)) => model::Auth::Query { param: q.param },
        None => return Err(("auth".into(), "required".into())),
    };
    let routes = p
        .routes
        .into_iter()
        .map(|r| model::Route {
            path_prefix: (!r.path_prefix.is_empty()).then_some(r.path_prefix),
            headers: r
                .headers
                .into_iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value))
                .collect(),
        })
        .collect();
    Ok(model::Pool {
        id: ObjectId::new(p.namespace, p.name),
        backends,
        strategy,
        key_pool: (!p.key_pool.is_empty()).then_some(p.key_pool),
        auth,
        routes,
    })
}

fn key_pool(k: KeyPool) -> FieldResult<model::KeyPool> {
    if k.name.is_empty() || k.namespace.is_empty() {
        return Err(("name".into(), "name and namespace are required".into()));
    }
    let selection = match Selection::try_from(k.selection) {
        Ok(Selection::RoundRobin) | Ok(Selection::Unspecified) => model::Selection::RoundRobin,
        Err(_) => return Err(("selection".into(), format!("unknown value {}", k.selection))),
    };
    let mut keys = Vec::with_capacity(k.keys.len());
    for (i, key) in k.keys.into_iter().enumerate() {
        if key.id.is_empty() || key.value.is_empty() {
            return Err((format!("keys[{i}]"), "id and value are required".into()));
        }
        keys.push(model::Key {
            id: key.id,
            value: SecretValue::new(key.value),
        });
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(model::KeyPool {
        id: ObjectId::new(k.namespace, k.name),
        selection,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::manifest::Manifests;

    #[test]
    fn round_trips_the_model() {
        let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: team}
stringData: {k1: v1, k2: v2}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys, namespace: team}
spec: {secretRef: {name: s}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: p, namespace: team}
spec:
  apiKeyPoolRef: {name: keys}
  auth: {type: query, queryParam: key}
  routes: [{pathPrefix: /v1/, headers: [{name: X-Team, value: a}]}]
  backends:
    - {name: a, endpoint: "http://127.0.0.1:1/x", hostHeader: api.example.com, weight: 3}
"#;
        let model = Manifests::parse(yaml, &|_| None)
            .unwrap()
            .resolve()
            .unwrap();
        let wire = Snapshot::from_model(7, &model);
        assert_eq!(wire.version, 7);
        let back = model::Snapshot::try_from(wire).unwrap();
        assert_eq!(back, model);
    }

    #[test]
    fn rejects_a_bad_endpoint_naming_the_field() {
        let wire = Snapshot {
            version: 1,
            pools: vec![Pool {
                namespace: "n".into(),
                name: "p".into(),
                backends: vec![Backend {
                    name: "a".into(),
                    endpoint: "nope".into(),
                    ..Default::default()
                }],
                auth: Some(Auth {
                    kind: Some(auth::Kind::Query(QueryAuth { param: "k".into() })),
                }),
                ..Default::default()
            }],
            key_pools: vec![],
        };
        let err = model::Snapshot::try_from(wire).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pools[0].backends[0].endpoint:"),
            "{err}"
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = Key {
            id: "a".into(),
            value: "sk-secret".into(),
        };
        assert!(!format!("{k:?}").contains("sk-secret"));
    }
}
