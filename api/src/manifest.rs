//! Standalone config: the same YAML manifests a user would `kubectl apply` (LoadBalancerPool,
//! ApiKeyPool, Secret), several documents in one file. Secret values may reference the
//! environment as `${NAME}` so key values need not live in the file.

use crate::model::{ObjectId, Snapshot};
use crate::resolve::{self, ConfigError, Reason};
use crate::secret::SecretValue;
use crate::spec::{ApiKeyPoolSpec, LoadBalancerPoolSpec};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The namespace of manifests that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The documents of one file, parsed but not yet resolved.
#[derive(Debug, Default)]
pub struct Manifests {
    pub pools: Vec<(ObjectId, LoadBalancerPoolSpec)>,
    pub key_pools: Vec<(ObjectId, ApiKeyPoolSpec)>,
    pub secrets: BTreeMap<ObjectId, BTreeMap<String, SecretValue>>,
    /// Objects whose document was invalid (`kind`, id): references to them are not reported
    /// again as missing.
    pub failed: Vec<(String, ObjectId)>,
    /// Secrets without the `keyway.dev/api-keys: "true"` label. The standalone proxy reads
    /// them anyway (a user's own file is not a trust boundary), but a cluster's controller
    /// would not: [`Manifests::warnings`] says so.
    pub unlabelled_secrets: Vec<ObjectId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    string_data: Option<BTreeMap<String, String>>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    _type: Option<String>,
    #[serde(default)]
    _immutable: Option<bool>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    // annotations etc. are accepted and ignored, as kubectl would keep them.
}

// === impl Manifests ===

impl Manifests {
    /// Parses a multi-document YAML string. `env` resolves `${NAME}` in Secret values.
    pub fn parse(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<ConfigError>> {
        let (out, errors) = Self::parse_lenient(yaml, env);
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Every problem of a file: documents that do not parse, then what does not resolve
    /// among the ones that do (`keyway-proxy check`).
    pub fn check(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<ConfigError> {
        let (manifests, mut errors) = Self::parse_lenient(yaml, env);
        if let Err(more) = manifests.resolve() {
            errors.extend(more);
        }
        errors
    }

    /// What is valid here but would not behave the same when the file is applied to a
    /// cluster: one line each, for `keyway-proxy check`.
    pub fn warnings(&self) -> Vec<String> {
        let referenced = |id: &ObjectId| {
            self.key_pools
                .iter()
                .any(|(k, spec)| k.namespace == id.namespace && spec.secret_ref.name == id.name)
        };
        let mut out: Vec<String> = self
            .pools
            .iter()
            .filter_map(|(id, spec)| {
                let key_pool = spec.api_key_pool_ref.as_ref()?;
                let consented = self
                    .key_pools
                    .iter()
                    .find(|(k, _)| k.namespace == id.namespace && k.name == key_pool.name)
                    .map(|(_, k)| k.allowed_proxy_namespaces.as_slice())
                    .unwrap_or_default();
                let refused: Vec<&str> = spec
                    .allowed_proxy_namespaces
                    .iter()
                    .filter(|ns| **ns != id.namespace && !consented.contains(ns))
                    .map(String::as_str)
                    .collect();
                (!refused.is_empty()).then(|| {
                    format!(
                        "LoadBalancerPool {id}: spec.allowedProxyNamespaces: {refused:?} not granted: \
                         the key owner must consent too, so ApiKeyPool {ns}/{kp}'s \
                         spec.allowedProxyNamespaces must list them (and those proxies must name the \
                         pool as {ns}/{name} in --pools)",
                        ns = id.namespace,
                        kp = key_pool.name,
                        name = id.name,
                    )
                })
            })
            .collect();
        out.extend(self.unlabelled_secrets
            .iter()
            .filter(|id| referenced(id))
            .map(|id| {
                format!(
                    "Secret {id}: metadata.labels: no {label}: \"{value}\"; this proxy reads it \
                     from the file, but in a cluster the controller reads only labelled Secrets \
                     and its ApiKeyPool would be SecretNotLabelled (add `labels: {{{label}: \"{value}\"}}`)",
                    label = crate::secret::API_KEYS_LABEL,
                    value = crate::secret::API_KEYS_LABEL_VALUE,
                )
            }));
        out
    }

    /// Parses what it can; the documents that fail are reported, the rest kept.
    pub fn parse_lenient(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Self, Vec<ConfigError>) {
        let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(yaml) {
            Ok(d) => d,
            Err(e) => {
                let err = ConfigError::new("manifest", "", Reason::InvalidManifest, yaml_error(&e));
                return (Manifests::default(), vec![err]);
            }
        };
        let mut out = Manifests::default();
        let mut errors = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue; // an empty document, e.g. a trailing `---`
            }
            let ident = identity(&doc);
            if let Err(e) = out.add(i, doc, env) {
                out.failed.extend(ident);
                errors.push(e);
            }
        }
        (out, errors)
    }

    fn add(
        &mut self,
        index: usize,
        doc: serde_json::Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let doc_name = format!("document {}", index + 1);
        let bad = |object: &str, field: &str, msg: String| {
            ConfigError::new(object, field, Reason::InvalidManifest, msg)
        };
        let env_doc: Envelope = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            bad(
                &doc_name,
                &field,
                // serde quotes the offending value ("invalid type: string \"sk-...\""): it
                // may be a key, so it is never repeated.
                format!(
                    "not a Kubernetes object: {}",
                    redact_quoted(&e.into_inner().to_string())
                ),
            )
        })?;
        let kind = env_doc
            .kind
            .ok_or_else(|| bad(&doc_name, "kind", "required".into()))?;
        let api_version = env_doc
            .api_version
            .ok_or_else(|| bad(&doc_name, "apiVersion", "required".into()))?;
        let name = env_doc
            .metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(&doc_name, "metadata.name", "required".into()))?;
        let namespace = env_doc
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let id = ObjectId::new(namespace, name);
        let object = format!("{kind} {id}");
        let keyway_version = format!("{}/{}", crate::GROUP, crate::VERSION);
        if env_doc.status.is_some() {
            // Status is output; accepting it silently would suggest it does something.
            return Err(bad(
                &object,
                "status",
                "is written by Keyway, not read".into(),
            ));
        }

        match kind.as_str() {
            "LoadBalancerPool" | "ApiKeyPool" => {
                if api_version != keyway_version {
                    return Err(bad(
                        &object,
                        "apiVersion",
                        format!("expected {keyway_version}, got {api_version}"),
                    ));
                }
                if env_doc.data.is_some() || env_doc.string_data.is_some() {
                    return Err(bad(
                        &object,
                        "data",
                        "only a Secret has data; key values go in a Secret named by the ApiKeyPool's secretRef".into(),
                    ));
                }
                let spec = env_doc
                    .spec
                    .ok_or_else(|| bad(&object, "spec", "required".into()))?;
                if kind == "LoadBalancerPool" {
                    let spec = typed_spec(&object, spec)?;
                    self.pools.push((id, spec));
                } else {
                    let spec = typed_spec(&object, spec)?;
                    self.key_pools.push((id, spec));
                }
            }
            "Secret" => {
                if env_doc.spec.is_some() {
                    return Err(bad(
                        &object,
                        "spec",
                        "a Secret has no spec; put keys under stringData (or base64 data)".into(),
                    ));
                }
                if api_version != "v1" {
                    return Err(bad(
                        &object,
                        "apiVersion",
                        format!("expected v1, got {api_version}"),
                    ));
                }
                let mut entries = BTreeMap::new();
                for (k, v) in env_doc.data.unwrap_or_default() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .map_err(|_| bad(&object, &format!("data.{k}"), "not base64".into()))?;
                    let s = String::from_utf8(bytes)
                        .map_err(|_| bad(&object, &format!("data.{k}"), "not UTF-8".into()))?;
                    entries.insert(k, SecretValue::new(s));
                }
                for (k, v) in env_doc.string_data.unwrap_or_default() {
                    let v = expand_env(&v, env)
                        .map_err(|msg| bad(&object, &format!("stringData.{k}"), msg))?;
                    entries.insert(k, SecretValue::new(v));
                }
                if !crate::secret::opted_in(env_doc.metadata.labels.as_ref()) {
                    self.unlabelled_secrets.push(id.clone());
                }
                if self.secrets.insert(id, entries).is_some() {
                    return Err(bad(&object, "metadata.name", "defined twice".into()));
                }
            }
            other => {
                return Err(bad(
                    &doc_name,
                    "kind",
                    format!(
                        "{other:?} is not supported; expected LoadBalancerPool, ApiKeyPool or Secret"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Resolves every object; any error rejects the whole set, so a half-valid file never
    /// replaces a good config.
    pub fn resolve(&self) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut pools = Vec::new();
        let mut key_pools = Vec::new();
        for (id, spec) in &self.key_pools {
            let secret_id = ObjectId::new(&id.namespace, &spec.secret_ref.name);
            match resolve::key_pool(id, spec, self.secrets.get(&secret_id)) {
                Ok(k) => key_pools.push(k),
                Err(e)
                    if e.reason == Reason::SecretNotFound
                        && self.is_failed("Secret", &secret_id) => {}
                Err(e) => errors.push(e),
            }
        }
        for (id, spec) in &self.pools {
            let secrets = |name: &str| self.secrets.get(&ObjectId::new(&id.namespace, name));
            match resolve::pool_with_secrets(id, spec, &secrets) {
                Ok(p) => {
                    if let Some(k) = &p.key_pool {
                        let known = self
                            .key_pools
                            .iter()
                            .any(|(kid, _)| kid.namespace == id.namespace && &kid.name == k);
                        let kid = ObjectId::new(&id.namespace, k);
                        if !known && !self.is_failed("ApiKeyPool", &kid) {
                            errors.push(ConfigError::new(
                                format!("LoadBalancerPool {id}"),
                                "spec.apiKeyPoolRef.name",
                                Reason::KeyPoolNotFound,
                                format!(
                                    "ApiKeyPool {}/{k} is not defined in this file",
                                    id.namespace
                                ),
                            ));
                        }
                    }
                    pools.push(p)
                }
                Err(e) => errors.push(e),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &pools {
            if !seen.insert(p.id.clone()) {
                errors.push(ConfigError::new(
                    format!("LoadBalancerPool {}", p.id),
                    "metadata.name",
                    Reason::InvalidManifest,
                    "defined twice",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Snapshot { pools, key_pools }.normalized())
    }
}

// === impl Manifests (failed objects) ===

impl Manifests {
    fn is_failed(&self, kind: &str, id: &ObjectId) -> bool {
        self.failed.iter().any(|(k, i)| k == kind && i == id)
    }
}

/// A YAML syntax error as line, column and what is wrong, never the text around it: the
/// parser's own rendering quotes the offending lines, which may be a Secret's values (in the
/// reload log, `keyway-proxy check`, `GET /config?format=manifests`).
pub fn yaml_error(e: &serde_saphyr::Error) -> String {
    let inner = e.without_snippet();
    let what = redact_quoted(&inner.to_string());
    // The message repeats the location; keep only its first line, without a trailing one.
    let what = what.lines().next().unwrap_or_default().trim();
    match inner.location() {
        Some(l) if l.line() > 0 => format!(
            "not valid YAML at line {}, column {}: {what} (the text there is not shown: it may be a key value)",
            l.line(),
            l.column()
        ),
        _ => format!("not valid YAML: {what}"),
    }
}

/// `msg` with every quoted fragment (`"..."`, `'...'`, `` `...` ``) replaced by `<redacted>`.
/// Parser and serde messages quote the input they choke on; a fragment left unterminated is
/// cut at the end of the message.
pub fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            // An apostrophe inside a word ("can't") is not a quote.
            if c == '\'' && out.chars().last().is_some_and(char::is_alphanumeric) {
                out.push(c);
                continue;
            }
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
            out.push_str("<redacted>");
        } else {
            out.push(c);
        }
    }
    out
}

/// `(kind, namespace/name)` of a raw document, when it names them.
fn identity(doc: &serde_json::Value) -> Option<(String, ObjectId)> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or(DEFAULT_NAMESPACE);
    Some((kind.to_string(), ObjectId::new(ns, name)))
}

/// Deserializes a spec, naming the exact field path on error (`spec.backends[0].weight`).
fn typed_spec<T: serde::de::DeserializeOwned>(
    object: &str,
    spec: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        ConfigError::new(
            object,
            field,
            Reason::InvalidSpec,
            e.into_inner().to_string(),
        )
    })
}

/// Replaces each `${NAME}` with the environment variable's value.
fn expand_env(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed ${ in value".to_string())?;
        let name = &after[..end];
        let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
