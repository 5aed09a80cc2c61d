//! `keyway-proxy import --from TOOL FILE|--env`: the manifests (Secret, ApiKeyPool,
//! LoadBalancerPool) equivalent to the config of one of the tools Keyway replaces, as YAML
//! ready for `keyway-proxy --config` or `kubectl apply`. Every setting without an exact
//! equivalent gets a comment saying what Keyway does instead.
//!
//! - `tavily`: the Tavily/MCP balancer's YAML (`servers`, `api_keys`, `strategy`, `health`,
//!   `logging`, `metrics`, `security`);
//! - `alyx`: Alyx's `config.yaml` (primary/secondary or `multiClusterMode`);
//! - `workers`: the Workers balancer's `LOAD_BALANCER_*` variables;
//! - `lm-proxy`: the Python LM proxy's `OPENAI_API_KEYS`, `ANTHROPIC_API_KEYS`,
//!   `SERVICE_ENDPOINTS`, ... variables.
//!
//! The variables come from a `.env` file or the environment (`--env`); both tools' imports
//! are the environment quick start's own manifests ([`crate::quickstart`]), so `import` and
//! running from the variables behave the same.
//!
//! Key values from the source are written into the Secret as they are (the source holds them
//! in plain text too): keep the output as private as the source.

mod alyx;
mod envfile;
mod tavily;

use serde_json::Value;
use std::fmt::Write as _;

pub use envfile::parse as parse_env_file;

/// The tools `import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Tavily,
    Workers,
    LmProxy,
    Alyx,
}

/// Where the tool's settings come from.
pub enum Input<'a> {
    /// A config file's text (YAML for `tavily` and `alyx`, a `.env` file for the others).
    File(&'a str),
    /// The environment (`workers`, `lm-proxy`).
    Env(&'a dyn Fn(&str) -> Option<String>),
}

/// What `import` prints: header comments, then documents each with its comments.
#[derive(Debug, Default)]
pub struct Imported {
    pub header: Vec<String>,
    pub docs: Vec<Doc>,
}

/// One manifest and the comments above it.
#[derive(Debug)]
pub struct Doc {
    pub comments: Vec<String>,
    pub value: Value,
}

// === impl Tool ===

impl Tool {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "tavily" => Ok(Tool::Tavily),
            "workers" => Ok(Tool::Workers),
            "lm-proxy" => Ok(Tool::LmProxy),
            "alyx" => Ok(Tool::Alyx),
            other => Err(format!(
                "unknown tool {other:?}; expected tavily, workers, lm-proxy or alyx"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tool::Tavily => "tavily",
            Tool::Workers => "workers",
            Tool::LmProxy => "lm-proxy",
            Tool::Alyx => "alyx",
        }
    }
}

// === impl Imported ===

impl Imported {
    /// The documents as multi-document YAML with their comments.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            comment(&mut out, line);
        }
        for doc in &self.docs {
            out.push_str("---\n");
            for c in &doc.comments {
                comment(&mut out, c);
            }
            match serde_saphyr::to_string(&doc.value) {
                Ok(y) => out.push_str(&y),
                // JSON is YAML: still a valid document.
                Err(_) => {
                    out.push_str(&doc.value.to_string());
                    out.push('\n');
                }
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// The comments attached to the document of `kind` (tests, and for a reader's overview).
    pub fn comments_of(&self, kind: &str) -> Vec<&str> {
        self.docs
            .iter()
            .filter(|d| d.value.get("kind").and_then(Value::as_str) == Some(kind))
            .flat_map(|d| d.comments.iter().map(String::as_str))
            .collect()
    }
}

/// Appends `text` as `# ` comment lines of at most about 96 columns (words are not split).
fn comment(out: &mut String, text: &str) {
    const WIDTH: usize = 94;
    for para in text.lines() {
        let indent = para.len() - para.trim_start().len();
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > WIDTH {
                let _ = writeln!(out, "# {}{line}", " ".repeat(indent));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        let _ = writeln!(out, "# {}{line}", " ".repeat(indent));
    }
}

/// Imports one tool's settings. Errors name the field or variable, never a key value.
pub fn import(
    tool: Tool,
    input: Input<'_>,
    strip_prefix: Option<&str>,
) -> Result<Imported, String> {
    let mut imported = match (tool, input) {
        (Tool::Tavily, Input::File(text)) => tavily::import(text)?,
        (Tool::Alyx, Input::File(text)) => alyx::import(text)?,
        (Tool::Tavily | Tool::Alyx, Input::Env(_)) => {
            return Err(format!(
                "{} is configured by a YAML file: give its path instead of --env",
                tool.name()
            ));
        }
        (Tool::Workers | Tool::LmProxy, Input::File(text)) => {
            let vars = envfile::parse(text)?;
            let get = |name: &str| {
                vars.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let mut imported = envfile::import(tool, &get, strip_prefix.is_some())?;
            let others: Vec<&str> = vars
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !envfile::reads(tool, k))
                .collect();
            if !others.is_empty() {
                imported.header.push(format!(
                    "Not imported (not settings of the {} balancer that Keyway reads): {}",
                    tool.name(),
                    others.join(", ")
                ));
            }
            imported
        }
        (Tool::Workers | Tool::LmProxy, Input::Env(env)) => {
            envfile::import(tool, env, strip_prefix.is_some())?
        }
    };
    if let Some(prefix) = strip_prefix {
        strip(&mut imported, prefix)?;
    }
    let mut header = vec![
        format!(
            "Generated by `keyway-proxy import --from {}`. Run it with",
            tool.name()
        ),
        "  keyway-proxy --config FILE            (check it first: keyway-proxy check --config FILE)".into(),
        "or apply it to a cluster with `kubectl apply -f FILE`.".into(),
        "It holds the key values of the source: keep it as private as the source.".into(),
    ];
    header.append(&mut imported.header);
    imported.header = header;
    Ok(imported)
}

/// `--strip-prefix /UUID/lb`: every pool's routes are also served under the prefix, which is
/// removed before the request goes upstream (the Workers balancer's `/:uuid/lb/v1/messages`).
fn strip(imported: &mut Imported, prefix: &str) -> Result<(), String> {
    let prefix = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return Err(format!(
            "--strip-prefix must be a path such as /your-uuid/lb, got {prefix:?}"
        ));
    }
    for doc in &mut imported.docs {
        if doc.value.get("kind").and_then(Value::as_str) != Some("LoadBalancerPool") {
            continue;
        }
        let spec = &mut doc.value["spec"];
        let mut routes: Vec<Value> = match spec.get("routes").and_then(Value::as_array) {
            Some(r) => r.clone(),
            None => {
                let provider = spec.get("provider").and_then(Value::as_str).unwrap_or("");
                keyway_api::presets::ALL
                    .iter()
                    .find(|p| p.name == provider)
                    .map(|p| {
                        p.routes
                            .iter()
                            .map(|r| serde_json::json!({"pathPrefix": r}))
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        if routes.is_empty() {
            routes.push(serde_json::json!({"pathPrefix": "/"}));
        }
        let prefixed: Vec<Value> = routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let path = r.get("pathPrefix").and_then(Value::as_str).unwrap_or("/");
                r["pathPrefix"] = Value::String(format!("{prefix}{path}"));
                r["stripPrefix"] = Value::String(prefix.to_string());
                r
            })
            .collect();
        spec["routes"] = Value::Array(prefixed);
        doc.comments.push(format!(
            "routes: served under {prefix}/..., which is removed before the request goes upstream \
             (stripPrefix), so clients keep their URLs. A secret path is weak access control: \
             prefer client tokens (--client-tokens-file) and drop the prefix once clients moved."
        ));
    }
    Ok(())
}

/// `3000` → `3`, `2500` → `3` (rounded up, at least 1): milliseconds to whole seconds, and
/// whether that was exact.
fn ms_to_secs(ms: u64) -> (u64, bool) {
    (
        ms.div_ceil(1000).max(1),
        ms.is_multiple_of(1000) && ms >= 1000,
    )
}
