//! The domain model: what a proxy serves. Built from specs by [`crate::resolve`], carried over
//! the control-plane stream, compared with `Eq` to decide whether anything changed.

use crate::secret::SecretValue;
pub use crate::spec::{Selection, Strategy};
use std::fmt;

/// Everything one proxy serves, sorted by id so equal configs compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub pools: Vec<Pool>,
    pub key_pools: Vec<KeyPool>,
}

/// `namespace/name` of a resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

/// A resolved `LoadBalancerPool`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    pub id: ObjectId,
    pub backends: Vec<Backend>,
    pub strategy: Strategy,
    /// Name of the `ApiKeyPool` in the same namespace, if keys are injected.
    pub key_pool: Option<String>,
    pub auth: Auth,
    pub routes: Vec<Route>,
}

/// One upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub name: String,
    pub endpoint: Endpoint,
    /// Host header to send; `None` means the endpoint's authority.
    pub host_header: Option<String>,
    pub weight: u32,
}

/// A parsed, validated base URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host:port` (port always explicit).
    pub authority: String,
    /// Prefixed to every request path; empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// Where the key goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    /// `name: prefix + key`; `name` is lowercase.
    Header { name: String, prefix: String },
    /// `?param=key`.
    Query { param: String },
}

/// A request belongs to a pool when every set condition of one of its routes holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Route {
    pub path_prefix: Option<String>,
    /// `(lowercase name, exact value)`.
    pub headers: Vec<(String, String)>,
}

/// A resolved `ApiKeyPool` with its key material.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPool {
    pub id: ObjectId,
    pub selection: Selection,
    /// Sorted by id.
    pub keys: Vec<Key>,
}

/// One key: a stable id (safe to show) and its value (never shown).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub id: String,
    pub value: SecretValue,
}

// === impl ObjectId ===

impl ObjectId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Endpoint ===

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.path_prefix)
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Sorts pools and key pools by id, so that equal contents compare equal.
    pub fn normalized(mut self) -> Self {
        self.pools.sort_by(|a, b| a.id.cmp(&b.id));
        self.key_pools.sort_by(|a, b| a.id.cmp(&b.id));
        self
    }

    pub fn key_pool(&self, namespace: &str, name: &str) -> Option<&KeyPool> {
        self.key_pools
            .iter()
            .find(|k| k.id.namespace == namespace && k.id.name == name)
    }
}
