//! Edits of a manifest file for the admin API's writes: the documents are parsed, one object
//! changed, the whole set validated with the proxy's own code, then written atomically (temp
//! file + rename in the same directory). Comments are not kept: the file is re-serialised.

use base64::Engine;
use keyway_api::manifest::{DEFAULT_NAMESPACE, Manifests};
use keyway_api::model::Snapshot;
use keyway_api::spec::BackendSpec;
use serde_json::{Value, json};
use std::path::Path;

/// Why an edit was not made. `status` is the HTTP status the admin API answers with.
#[derive(Debug)]
pub struct EditError {
    pub status: u16,
    pub message: String,
}

/// One change to the file.
#[derive(Debug)]
pub enum Edit {
    /// `requests_per_minute`: also set the key's quota (`spec.keys[]` of the ApiKeyPool).
    AddKey {
        id: String,
        value: String,
        requests_per_minute: Option<u32>,
    },
    RotateKey {
        id: String,
        value: String,
    },
    RemoveKey {
        id: String,
    },
    AddBackend(Box<BackendSpec>),
    RemoveBackend {
        name: String,
    },
    Evacuate(bool),
}

// === impl EditError ===

impl EditError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

// === impl Edit ===

impl Edit {
    /// A short name for logs (`key_added`, ...).
    pub fn action(&self) -> &'static str {
        match self {
            Edit::AddKey { .. } => "key_added",
            Edit::RotateKey { .. } => "key_rotated",
            Edit::RemoveKey { .. } => "key_removed",
            Edit::AddBackend(_) => "backend_added",
            Edit::RemoveBackend { .. } => "backend_removed",
            Edit::Evacuate(_) => "evacuation_set",
        }
    }
}

/// Applies `edit` to pool `namespace/pool` of the YAML text; returns the new text and the
/// snapshot it resolves to. Nothing is written.
pub fn apply(
    yaml: &str,
    namespace: &str,
    pool: &str,
    edit: &Edit,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Snapshot), EditError> {
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| {
        let e = keyway_api::manifest::yaml_error(&e);
        EditError::new(500, format!("the config file: {e}"))
    })?;
    docs.retain(|d| !d.is_null());
    let lbp = find(&docs, "LoadBalancerPool", namespace, pool).ok_or_else(|| {
        EditError::new(
            404,
            format!("no LoadBalancerPool {namespace}/{pool} in the config file"),
        )
    })?;
    match edit {
        Edit::AddKey { id, value, .. } | Edit::RotateKey { id, value } => {
            let secret = secret_of(&docs, lbp, namespace, pool)?;
            let exists = has_entry(&docs[secret], id);
            match (edit, exists) {
                (Edit::AddKey { .. }, true) => {
                    return Err(EditError::new(
                        409,
                        format!("key {id:?} already exists; PUT it to rotate"),
                    ));
                }
                (Edit::RotateKey { .. }, false) => {
                    return Err(EditError::new(
                        404,
                        format!("no key {id:?}; POST to add it"),
                    ));
                }
                _ => {}
            }
            let doc = &mut docs[secret];
            if let Some(sd) = doc.get_mut("stringData").and_then(Value::as_object_mut) {
                sd.remove(id);
            }
            let obj = doc
                .as_object_mut()
                .ok_or_else(|| EditError::new(500, "Secret is not an object"))?;
            // Base64 `data`, not `stringData`: a value written over the admin API is taken
            // as it is, never `${ENV}`-expanded (a caller could otherwise copy any of the
            // proxy's environment variables, the admin token included, into a key sent
            // upstream).
            let data = obj.entry("data").or_insert_with(|| json!({}));
            if let Some(data) = data.as_object_mut() {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
                data.insert(id.clone(), Value::String(encoded));
            }
            if let Edit::AddKey {
                requests_per_minute: Some(rpm),
                ..
            } = edit
            {
                let akp = akp_of(&docs, lbp, namespace, pool)?;
                let spec = spec_mut(&mut docs[akp])?;
                let keys = spec.entry("keys").or_insert_with(|| json!([]));
                let list = keys.as_array_mut().ok_or_else(|| {
                    EditError::new(500, "the ApiKeyPool's spec.keys is not a list")
                })?;
                list.retain(|k| k.get("id").and_then(Value::as_str) != Some(id));
                list.push(json!({"id": id, "requestsPerMinute": rpm}));
            }
        }
        Edit::RemoveKey { id } => {
            let secret = secret_of(&docs, lbp, namespace, pool)?;
            if !has_entry(&docs[secret], id) {
                return Err(EditError::new(404, format!("no key {id:?}")));
            }
            for field in ["data", "stringData"] {
                if let Some(m) = docs[secret].get_mut(field).and_then(Value::as_object_mut) {
                    m.remove(id);
                }
            }
        }
        Edit::AddBackend(b) => {
            let spec = spec_mut(&mut docs[lbp])?;
            let backends = spec.entry("backends").or_insert_with(|| json!([]));
            let list = backends
                .as_array_mut()
                .ok_or_else(|| EditError::new(500, "spec.backends is not a list"))?;
            if list
                .iter()
                .any(|x| x.get("name").and_then(Value::as_str) == Some(&b.name))
            {
                return Err(EditError::new(
                    409,
                    format!("backend {:?} already exists", b.name),
                ));
            }
            list.push(serde_json::to_value(b).map_err(|e| EditError::new(500, e.to_string()))?);
        }
        Edit::RemoveBackend { name } => {
            let spec = spec_mut(&mut docs[lbp])?;
            let list = spec
                .get_mut("backends")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| EditError::new(404, format!("no backend {name:?}")))?;
            let before = list.len();
            list.retain(|x| x.get("name").and_then(Value::as_str) != Some(name));
            if list.len() == before {
                return Err(EditError::new(404, format!("no backend {name:?}")));
            }
        }
        Edit::Evacuate(on) => {
            let spec = spec_mut(&mut docs[lbp])?;
            if *on {
                spec.insert("evacuatePrimary".into(), Value::Bool(true));
            } else {
                spec.remove("evacuatePrimary");
            }
        }
    }
    let text = serde_saphyr::to_string_multiple(&docs)
        .map_err(|e| EditError::new(500, format!("cannot serialise the config: {e}")))?;
    let snapshot = Manifests::parse(&text, env)
        .and_then(|m| m.resolve())
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            EditError::new(
                422,
                format!(
                    "the change would make the config invalid; nothing was written:\n{}",
                    lines.join("\n")
                ),
            )
        })?;
    Ok((text, snapshot))
}

/// Writes `text` to `path` atomically: a temp file in the same directory, then rename. The
/// temp file is created 0600 (the text holds key values: no other user may read it, not even
/// for the moment before the rename); the result keeps the file's permissions, or stays 0600
/// for a new file.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyway-{}.tmp", std::process::id()));
    // A temp file left by a crash is replaced, never written through (create_new: no
    // following a symlink planted under its name either).
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    drop(file);
    if let Ok(meta) = std::fs::metadata(path) {
        // Keep the file's permissions (it may hold keys and be 0600).
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The manifests with Secret values replaced by `<redacted>`; `${ENV}` references are kept
/// (they are names, not values).
pub fn redacted(yaml: &str) -> Result<String, String> {
    // Never the parser's own rendering: it quotes the lines around the error, values included.
    let mut docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| keyway_api::manifest::yaml_error(&e))?;
    docs.retain(|d| !d.is_null());
    for d in &mut docs {
        if d.get("kind").and_then(Value::as_str) != Some("Secret") {
            continue;
        }
        for field in ["data", "stringData"] {
            if let Some(m) = d.get_mut(field).and_then(Value::as_object_mut) {
                for v in m.values_mut() {
                    let keep = v.as_str().is_some_and(|s| {
                        field == "stringData"
                            && s.starts_with("${")
                            && s.ends_with('}')
                            && s.matches("${").count() == 1
                    });
                    if !keep {
                        *v = Value::String("<redacted>".into());
                    }
                }
            }
        }
    }
    serde_saphyr::to_string_multiple(&docs).map_err(|e| e.to_string())
}

fn find(docs: &[Value], kind: &str, namespace: &str, name: &str) -> Option<usize> {
    docs.iter().position(|d| {
        d.get("kind").and_then(Value::as_str) == Some(kind)
            && d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
            && d.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_NAMESPACE)
                == namespace
    })
}

/// The index of the Secret holding the keys of pool `lbp`.
fn secret_of(docs: &[Value], lbp: usize, namespace: &str, pool: &str) -> Result<usize, EditError> {
    let akp = akp_of(docs, lbp, namespace, pool)?;
    let secret_name = docs[akp]
        .pointer("/spec/secretRef/name")
        .and_then(Value::as_str)
        .ok_or_else(|| EditError::new(500, "the ApiKeyPool has no secretRef"))?;
    find(docs, "Secret", namespace, secret_name).ok_or_else(|| {
        EditError::new(
            404,
            format!("Secret {namespace}/{secret_name} is not in the file"),
        )
    })
}

/// The index of the ApiKeyPool of pool `lbp`.
fn akp_of(docs: &[Value], lbp: usize, namespace: &str, pool: &str) -> Result<usize, EditError> {
    let akp_name = docs[lbp]
        .pointer("/spec/apiKeyPoolRef/name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            EditError::new(
                409,
                format!("pool {namespace}/{pool} has no apiKeyPoolRef, so it has no keys"),
            )
        })?;
    find(docs, "ApiKeyPool", namespace, akp_name).ok_or_else(|| {
        EditError::new(
            404,
            format!("ApiKeyPool {namespace}/{akp_name} is not in the file"),
        )
    })
}

fn has_entry(secret: &Value, id: &str) -> bool {
    ["data", "stringData"]
        .iter()
        .any(|f| secret.get(*f).and_then(|m| m.get(id)).is_some())
}

fn spec_mut(doc: &mut Value) -> Result<&mut serde_json::Map<String, Value>, EditError> {
    doc.get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| EditError::new(500, "the LoadBalancerPool has no spec"))
}

#[cfg(test)]
mod tests;
