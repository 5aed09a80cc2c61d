//! Spec → model. The one place that validates a pool, used by the controller (status
//! conditions), the proxy's standalone mode and `keyway-proxy check`. Every error names the
//! object and the field path, so a user can find the line to fix.

use crate::model::{Auth, Backend, Endpoint, Key, KeyPool, ObjectId, Pool, Route, Scheme};
use crate::secret::SecretValue;
use crate::spec::{ApiKeyPoolSpec, AuthKind, LoadBalancerPoolSpec};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// `LoadBalancerPool default/openai`.
    pub object: String,
    /// `spec.backends[1].endpoint`.
    pub field: String,
    pub message: String,
    /// A bounded CamelCase reason for status conditions and metrics.
    pub reason: Reason,
}

/// Why a resource could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidSpec,
    SecretNotFound,
    NoKeys,
    KeyPoolNotFound,
    InvalidManifest,
}

// === impl ConfigError ===

impl ConfigError {
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            object: object.into(),
            field: field.into(),
            message: message.into(),
            reason,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

// === impl Reason ===

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::NoKeys => "NoKeys",
            Reason::KeyPoolNotFound => "KeyPoolNotFound",
            Reason::InvalidManifest => "InvalidManifest",
        }
    }
}

/// Validates a `LoadBalancerPool` spec and turns it into a [`Pool`].
pub fn pool(id: &ObjectId, spec: &LoadBalancerPoolSpec) -> Result<Pool, ConfigError> {
    let object = format!("LoadBalancerPool {id}");
    let invalid =
        |field: String, msg: String| ConfigError::new(&object, field, Reason::InvalidSpec, msg);

    if spec.backends.is_empty() {
        return Err(invalid(
            "spec.backends".into(),
            "at least one backend is required".into(),
        ));
    }
    let mut names = HashSet::new();
    let mut backends = Vec::with_capacity(spec.backends.len());
    for (i, b) in spec.backends.iter().enumerate() {
        let field = |f: &str| format!("spec.backends[{i}].{f}");
        if b.name.is_empty() {
            return Err(invalid(field("name"), "must not be empty".into()));
        }
        if !names.insert(b.name.as_str()) {
            return Err(invalid(
                field("name"),
                format!("duplicate backend name {:?}", b.name),
            ));
        }
        let endpoint = endpoint(&b.endpoint).map_err(|msg| invalid(field("endpoint"), msg))?;
        if let Some(h) = &b.host_header
            && (h.is_empty() || http_value_invalid(h))
        {
            return Err(invalid(
                field("hostHeader"),
                "must be a non-empty host without control characters".into(),
            ));
        }
        let weight = match b.weight {
            None => 1,
            Some(w) if (0..=10_000).contains(&w) => w as u32,
            Some(w) => {
                return Err(invalid(
                    field("weight"),
                    format!("must be between 0 and 10000, got {w}"),
                ));
            }
        };
        backends.push(Backend {
            name: b.name.clone(),
            endpoint,
            host_header: b.host_header.clone(),
            weight,
        });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(invalid(
            "spec.backends".into(),
            "at least one backend needs a weight above 0".into(),
        ));
    }

    let auth = auth(spec).map_err(|(f, m)| invalid(f, m))?;

    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, r) in spec.routes.iter().enumerate() {
        if let Some(p) = &r.path_prefix
            && !p.starts_with('/')
        {
            return Err(invalid(
                format!("spec.routes[{i}].pathPrefix"),
                format!("must start with '/', got {p:?}"),
            ));
        }
        let mut headers = Vec::with_capacity(r.headers.len());
        for (j, h) in r.headers.iter().enumerate() {
            if !is_header_name(&h.name) {
                return Err(invalid(
                    format!("spec.routes[{i}].headers[{j}].name"),
                    format!("{:?} is not a valid header name", h.name),
                ));
            }
            headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
        if r.path_prefix.is_none() && headers.is_empty() {
            return Err(invalid(
                format!("spec.routes[{i}]"),
                "a route needs a pathPrefix or at least one header".into(),
            ));
        }
        routes.push(Route {
            path_prefix: r.path_prefix.clone(),
            headers,
        });
    }

    if let Some(r) = &spec.api_key_pool_ref
        && r.name.is_empty()
    {
        return Err(invalid(
            "spec.apiKeyPoolRef.name".into(),
            "must not be empty".into(),
        ));
    }

    Ok(Pool {
        id: id.clone(),
        backends,
        strategy: spec.strategy,
        key_pool: spec.api_key_pool_ref.as_ref().map(|r| r.name.clone()),
        auth,
        routes,
    })
}

/// Validates an `ApiKeyPool` against its Secret's entries (`None`: the Secret does not exist).
pub fn key_pool(
    id: &ObjectId,
    spec: &ApiKeyPoolSpec,
    secret: Option<&BTreeMap<String, SecretValue>>,
) -> Result<KeyPool, ConfigError> {
    let object = format!("ApiKeyPool {id}");
    let secret_name = &spec.secret_ref.name;
    if secret_name.is_empty() {
        return Err(ConfigError::new(
            object,
            "spec.secretRef.name",
            Reason::InvalidSpec,
            "must not be empty",
        ));
    }
    let Some(entries) = secret else {
        return Err(ConfigError::new(
            object,
            "spec.secretRef.name",
            Reason::SecretNotFound,
            format!(
                "Secret {}/{secret_name} not found; create it with one data entry per key",
                id.namespace
            ),
        ));
    };
    let keys: Vec<Key> = entries
        .iter()
        .filter(|(_, v)| !v.expose().trim().is_empty())
        .map(|(k, v)| Key {
            id: k.clone(),
            value: SecretValue::new(v.expose().trim()),
        })
        .collect();
    if keys.is_empty() {
        return Err(ConfigError::new(
            object,
            "spec.secretRef.name",
            Reason::NoKeys,
            format!(
                "Secret {}/{secret_name} has no non-empty data entries; each entry is one key",
                id.namespace
            ),
        ));
    }
    if let Some(k) = keys.iter().find(|k| http_value_invalid(k.value.expose())) {
        // The id is safe to name; the value is not.
        return Err(ConfigError::new(
            object,
            format!("secret {secret_name} entry {:?}", k.id),
            Reason::InvalidSpec,
            "key value contains control characters",
        ));
    }
    Ok(KeyPool {
        id: id.clone(),
        selection: spec.selection,
        keys,
    })
}

fn auth(spec: &LoadBalancerPoolSpec) -> Result<Auth, (String, String)> {
    let default = Default::default();
    let a = spec.auth.as_ref().unwrap_or(&default);
    match a.kind {
        AuthKind::Header => {
            if a.query_param.is_some() {
                return Err((
                    "spec.auth.queryParam".into(),
                    "only valid with type: query".into(),
                ));
            }
            let name = a.header.as_deref().unwrap_or("Authorization");
            if !is_header_name(name) {
                return Err((
                    "spec.auth.header".into(),
                    format!("{name:?} is not a valid header name"),
                ));
            }
            let name = name.to_ascii_lowercase();
            let prefix = match &a.prefix {
                Some(p) => p.clone(),
                None if name == "authorization" => "Bearer ".to_string(),
                None => String::new(),
            };
            if http_value_invalid(&prefix) {
                return Err((
                    "spec.auth.prefix".into(),
                    "must not contain control characters".into(),
                ));
            }
            Ok(Auth::Header { name, prefix })
        }
        AuthKind::Query => {
            if a.header.is_some() || a.prefix.is_some() {
                return Err((
                    "spec.auth.header".into(),
                    "header and prefix are only valid with type: header".into(),
                ));
            }
            match a.query_param.as_deref() {
                Some(p) if !p.is_empty() && p.bytes().all(is_query_name_byte) => {
                    Ok(Auth::Query { param: p.into() })
                }
                Some(p) => Err((
                    "spec.auth.queryParam".into(),
                    format!("{p:?} is not a valid query parameter name"),
                )),
                None => Err((
                    "spec.auth.queryParam".into(),
                    "required with type: query".into(),
                )),
            }
        }
    }
}

/// Parses `http(s)://host[:port][/path]`: no query, fragment or credentials.
pub fn endpoint(raw: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        s => return Err(format!("scheme must be http or https, got {s:?}")),
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{raw:?} has no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; put keys in an ApiKeyPool".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?} must not have a query or fragment"));
    }
    let port = url.port_or_known_default().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    let path_prefix = url.path().trim_end_matches('/').to_string();
    Ok(Endpoint {
        scheme,
        authority: format!("{host}:{port}"),
        path_prefix,
    })
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_query_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn http_value_invalid(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

#[cfg(test)]
mod tests;
