//! The e2e tests' one way to write a Secret + ApiKeyPool + LoadBalancerPool: a small builder
//! that prints the YAML `kubectl apply` takes, so a test states only what it is about (its
//! keys, limits, backends) and a change to the resources' shape is made here once.
//!
//! ```
//! use keyway_e2e::manifests::Manifests;
//! let yaml = Manifests::new()
//!     .secret("keys", &[("key-a", "sk-test-a")])
//!     .key_pool("keys", "keys")
//!     .pool("llm", "keys")
//!     .backend("a", "http://127.0.0.1:9000")
//!     .yaml();
//! assert!(yaml.contains("keyway.dev/api-keys: \"true\""));
//! ```

use std::fmt::Write as _;

/// Resources of one test, printed in the order they are declared.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    docs: Vec<Doc>,
}

#[derive(Clone, Debug)]
enum Doc {
    Secret {
        name: String,
        labelled: bool,
        entries: Vec<(String, String)>,
    },
    KeyPool {
        name: String,
        secret: String,
        extra: String,
    },
    Pool {
        name: String,
        key_pool: Option<String>,
        backends: Vec<Backend>,
        extra: String,
    },
}

#[derive(Clone, Debug)]
struct Backend {
    name: String,
    role: Option<String>,
    endpoint: String,
}

/// A YAML scalar that is always a string: JSON's quoting is valid YAML.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `extra` under `spec:`. A fragment whose first line is already indented (two spaces, as
/// written inline in a spec) is kept as it is; otherwise every line is indented by two.
fn spec_lines(extra: &str, out: &mut String) {
    let mut lines = extra.lines().filter(|l| !l.trim().is_empty()).peekable();
    let indent = match lines.peek() {
        Some(first) if first.starts_with("  ") => "",
        _ => "  ",
    };
    for line in lines {
        let _ = writeln!(out, "{indent}{line}");
    }
}

impl Manifests {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Secret labelled `keyway.dev/api-keys: "true"` (the controller reads no other) with
    /// one entry per key: the entry name is the key id.
    pub fn secret(self, name: &str, keys: &[(&str, &str)]) -> Self {
        self.push_secret(name, keys, true)
    }

    /// A Secret without the opt-in label (a pool naming it is `SecretNotLabelled`).
    pub fn unlabelled_secret(self, name: &str, keys: &[(&str, &str)]) -> Self {
        self.push_secret(name, keys, false)
    }

    fn push_secret(mut self, name: &str, keys: &[(&str, &str)], labelled: bool) -> Self {
        self.docs.push(Doc::Secret {
            name: name.to_owned(),
            labelled,
            entries: keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self
    }

    /// An ApiKeyPool reading Secret `secret`.
    pub fn key_pool(mut self, name: &str, secret: &str) -> Self {
        self.docs.push(Doc::KeyPool {
            name: name.to_owned(),
            secret: secret.to_owned(),
            extra: String::new(),
        });
        self
    }

    /// A LoadBalancerPool using ApiKeyPool `key_pool` (`""`: none); add backends next.
    pub fn pool(mut self, name: &str, key_pool: &str) -> Self {
        self.docs.push(Doc::Pool {
            name: name.to_owned(),
            key_pool: (!key_pool.is_empty()).then(|| key_pool.to_owned()),
            backends: Vec::new(),
            extra: String::new(),
        });
        self
    }

    /// More `spec` fields (YAML at the spec's level) of the last ApiKeyPool or pool declared.
    pub fn spec(mut self, extra: &str) -> Self {
        match self.docs.last_mut() {
            Some(Doc::KeyPool { extra: e, .. }) | Some(Doc::Pool { extra: e, .. }) => {
                e.push_str(extra);
                if !e.ends_with('\n') {
                    e.push('\n');
                }
            }
            _ => panic!("Manifests::spec: declare an ApiKeyPool or a pool first"),
        }
        self
    }

    /// A backend of the last pool declared.
    pub fn backend(self, name: &str, endpoint: &str) -> Self {
        self.push_backend(name, None, endpoint)
    }

    /// A backend with a failover role (`primary`, `secondary`) of the last pool declared.
    pub fn backend_with_role(self, name: &str, role: &str, endpoint: &str) -> Self {
        self.push_backend(name, Some(role), endpoint)
    }

    fn push_backend(mut self, name: &str, role: Option<&str>, endpoint: &str) -> Self {
        match self.docs.last_mut() {
            Some(Doc::Pool { backends, .. }) => backends.push(Backend {
                name: name.to_owned(),
                role: role.map(str::to_owned),
                endpoint: endpoint.to_owned(),
            }),
            _ => panic!("Manifests::backend: declare a pool first"),
        }
        self
    }

    /// The YAML stream, documents separated by `---`.
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        for (i, doc) in self.docs.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            match doc {
                Doc::Secret {
                    name,
                    labelled,
                    entries,
                } => {
                    let _ = writeln!(out, "apiVersion: v1\nkind: Secret\nmetadata:");
                    let _ = writeln!(out, "  name: {}", quoted(name));
                    if *labelled {
                        let _ = writeln!(out, "  labels: {{keyway.dev/api-keys: \"true\"}}");
                    }
                    let _ = writeln!(out, "type: Opaque\nstringData:");
                    for (k, v) in entries {
                        let _ = writeln!(out, "  {}: {}", quoted(k), quoted(v));
                    }
                }
                Doc::KeyPool {
                    name,
                    secret,
                    extra,
                } => {
                    let _ = writeln!(
                        out,
                        "apiVersion: keyway.dev/v1alpha1\nkind: ApiKeyPool\nmetadata:\n  name: {}\nspec:\n  secretRef:\n    name: {}",
                        quoted(name),
                        quoted(secret)
                    );
                    spec_lines(extra, &mut out);
                }
                Doc::Pool {
                    name,
                    key_pool,
                    backends,
                    extra,
                } => {
                    let _ = writeln!(
                        out,
                        "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata:\n  name: {}\nspec:",
                        quoted(name)
                    );
                    if let Some(kp) = key_pool {
                        let _ = writeln!(out, "  apiKeyPoolRef:\n    name: {}", quoted(kp));
                    }
                    spec_lines(extra, &mut out);
                    if !backends.is_empty() {
                        out.push_str("  backends:\n");
                    }
                    for b in backends {
                        let _ = writeln!(out, "    - name: {}", quoted(&b.name));
                        if let Some(role) = &b.role {
                            let _ = writeln!(out, "      role: {}", quoted(role));
                        }
                        let _ = writeln!(out, "      endpoint: {}", quoted(&b.endpoint));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyway_api::manifest::Manifests as Parsed;

    #[test]
    fn the_yaml_parses_resolves_and_says_what_was_built() {
        let yaml = Manifests::new()
            .secret("keys", &[("key-a", "sk-a"), ("key-b", "sk-\"b\"")])
            .key_pool("keys", "keys")
            .spec("defaults:\n  requestsPerMinute: 12\n")
            .pool("llm", "keys")
            .spec("strategy: roundRobin")
            .backend_with_role("primary", "primary", "http://127.0.0.1:1")
            .backend_with_role("secondary", "secondary", "http://127.0.0.1:2/secondary")
            .yaml();
        let parsed = Parsed::parse(&yaml, &|_| None).expect("parses");
        let snapshot = parsed.resolve().expect("resolves");
        let pool = &snapshot.pools[0];
        assert_eq!(pool.id.name, "llm");
        assert_eq!(pool.backends.len(), 2);
        let keys = &snapshot.key_pools[0];
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.keys[0].limits.requests_per_minute, Some(12));
        assert_eq!(keys.keys[1].value.expose(), "sk-\"b\"");
    }

    #[test]
    fn an_unlabelled_secret_has_no_label() {
        let yaml = Manifests::new()
            .unlabelled_secret("db", &[("password", "x")])
            .yaml();
        assert!(!yaml.contains("keyway.dev/api-keys"), "{yaml}");
    }
}
