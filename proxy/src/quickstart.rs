//! Quick start from environment variables: `KEYWAY_OPENAI_KEYS=k1,k2:3` (optional `:weight`),
//! `KEYWAY_ANTHROPIC_KEYS`, `KEYWAY_GEMINI_KEYS`, `KEYWAY_TAVILY_KEYS`, optional
//! `KEYWAY_ENDPOINTS='{"openai":["https://..."]}'`. Each provider becomes one Secret,
//! ApiKeyPool and LoadBalancerPool (key ids `openai-1`, `openai-2`, ...), the same manifests a
//! file would hold, so `keyway-proxy export-config` can print them for editing.
//!
//! The variables of the tools Keyway replaces are read too, after Keyway's own:
//!
//! - the Python LM proxy's `OPENAI_API_KEYS` / `ANTHROPIC_API_KEYS` (comma lists), their
//!   single-key fallbacks `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`, and `SERVICE_ENDPOINTS`
//!   (the same JSON as `KEYWAY_ENDPOINTS`; values ending in `/v1` are fine, the proxy does not
//!   double a path segment the endpoint already ends in);
//! - the Workers balancer's `LOAD_BALANCER_API_KEYS=key:weight,...` with
//!   `LOAD_BALANCER_STRATEGY` (`round-robin`, `weighted`, `time-window`),
//!   `LOAD_BALANCER_WINDOW_SIZE` (minutes) and `LOAD_BALANCER_ENABLED`. Those keys are Claude
//!   keys unless they all look like Gemini keys (`AIza...`) or `KEYWAY_LOAD_BALANCER_PROVIDER`
//!   names the provider.
//!
//! A recognised variable that is set but not used (a more specific one wins, or it makes no
//! sense alone) is never dropped silently: [`QuickStart::notes`] says why, and the proxy logs
//! each note. With two or more model providers, model-prefix routing is added as in the
//! Python proxy: `gpt-*` goes to OpenAI, `claude-*` to Anthropic, `gemini-*` to Gemini, on any
//! of the providers' paths.

use keyway_api::manifest::Manifests;
use keyway_api::model::Snapshot;
use keyway_api::presets::{self, Preset};
use keyway_api::resolve::ConfigError;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The env-var providers, in the order their pools are built.
const PROVIDERS: [(&str, Preset); 4] = [
    ("OPENAI", presets::OPENAI),
    ("ANTHROPIC", presets::ANTHROPIC),
    ("GEMINI", presets::GEMINI),
    ("TAVILY", presets::TAVILY),
];

/// Model globs per provider for model-prefix routing (the Python proxy's service detection).
fn model_globs(provider: &str) -> &'static [&'static str] {
    match provider {
        "openai" => &[
            "gpt-*",
            "chatgpt-*",
            "o1*",
            "o3*",
            "o4*",
            "text-embedding-*",
        ],
        "anthropic" => &["claude-*"],
        "gemini" => &["gemini-*"],
        _ => &[],
    }
}

/// The variables of one provider, most specific first, and whether each is a comma list
/// (`false`: one key, the whole value).
fn key_variables(stem: &str) -> Vec<(String, bool)> {
    let mut vars = vec![(format!("KEYWAY_{stem}_KEYS"), true)];
    match stem {
        "OPENAI" | "ANTHROPIC" => {
            vars.push((format!("{stem}_API_KEYS"), true));
            vars.push((format!("{stem}_API_KEY"), false));
        }
        _ => {}
    }
    vars
}

/// Every variable the quick start reads (tests clear them; `export-config` names them).
pub const VARIABLES: &[&str] = &[
    "KEYWAY_OPENAI_KEYS",
    "KEYWAY_ANTHROPIC_KEYS",
    "KEYWAY_GEMINI_KEYS",
    "KEYWAY_TAVILY_KEYS",
    "KEYWAY_ENDPOINTS",
    "OPENAI_API_KEYS",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEYS",
    "ANTHROPIC_API_KEY",
    "SERVICE_ENDPOINTS",
    "LOAD_BALANCER_ENABLED",
    "LOAD_BALANCER_API_KEYS",
    "LOAD_BALANCER_STRATEGY",
    "LOAD_BALANCER_WINDOW_SIZE",
    "KEYWAY_LOAD_BALANCER_PROVIDER",
];

/// What the environment asked for.
#[derive(Debug)]
pub struct QuickStart {
    providers: Vec<ProviderKeys>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct ProviderKeys {
    /// `OPENAI`: the environment-variable stem.
    stem: &'static str,
    preset: Preset,
    /// The variable the keys came from.
    source: String,
    /// `(weight, value)` in order; ids are `<provider>-<n>`.
    keys: Vec<(u32, keyway_api::secret::SecretValue)>,
    endpoints: Vec<String>,
    /// `spec.selection` when a variable chose it (`LOAD_BALANCER_STRATEGY`).
    selection: Option<&'static str>,
    time_window_seconds: Option<u64>,
    /// Routes replacing the preset's (model-prefix routing), empty: the preset's.
    routes: Vec<Value>,
}

/// The Workers balancer's settings, when `LOAD_BALANCER_API_KEYS` is used.
struct Workers {
    stem: &'static str,
    keys: Vec<(u32, keyway_api::secret::SecretValue)>,
    selection: &'static str,
    time_window_seconds: Option<u64>,
}

// === impl QuickStart ===

impl QuickStart {
    /// `Ok(None)` when no key variable is set. Errors name the variable, never a value.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut notes = Vec::new();
        let endpoints = endpoints(&get, &mut notes)?;
        let mut workers = workers(&get, &mut notes)?;
        let mut providers = Vec::new();
        for (stem, preset) in PROVIDERS {
            let mut found: Option<(String, Vec<(u32, keyway_api::secret::SecretValue)>)> = None;
            for (var, list) in key_variables(stem) {
                let Some(raw) = get(&var) else { continue };
                if let Some((used, _)) = &found {
                    notes.push(format!(
                        "{var} is set but not used: {used} gives the {} keys (it is read first)",
                        preset.name
                    ));
                    continue;
                }
                let keys = if list {
                    parse_keys(&raw).map_err(|m| format!("{var}: {m}"))?
                } else {
                    vec![(1, single_key(&raw).map_err(|m| format!("{var}: {m}"))?)]
                };
                found = Some((var, keys));
            }
            let mut selection = None;
            let mut time_window_seconds = None;
            if let Some(w) = workers.take_if(|w| w.stem == stem) {
                match &found {
                    Some((used, _)) => notes.push(format!(
                        "LOAD_BALANCER_API_KEYS is set but not used: {used} gives the {} keys (it is read first)",
                        preset.name
                    )),
                    None => {
                        notes.push(format!(
                            "LOAD_BALANCER_API_KEYS: {} keys for the {} pool (the Workers balancer's keys; KEYWAY_LOAD_BALANCER_PROVIDER=anthropic|gemini|openai|tavily names another provider), selection {}",
                            w.keys.len(),
                            preset.name,
                            w.selection
                        ));
                        found = Some(("LOAD_BALANCER_API_KEYS".into(), w.keys));
                        selection = Some(w.selection);
                        time_window_seconds = w.time_window_seconds;
                    }
                }
            }
            let Some((source, keys)) = found else {
                continue;
            };
            if selection == Some("roundRobin") && keys.iter().any(|(w, _)| *w != 1) {
                notes.push(
                    "LOAD_BALANCER_API_KEYS has weights, but LOAD_BALANCER_STRATEGY is round-robin: every key takes the same share (set LOAD_BALANCER_STRATEGY=weighted to use them)".into(),
                );
            }
            providers.push(ProviderKeys {
                stem,
                preset,
                source,
                keys,
                endpoints: endpoints.get(preset.name).cloned().unwrap_or_default(),
                selection,
                time_window_seconds,
                routes: Vec::new(),
            });
        }
        for name in endpoints.keys() {
            if !providers.iter().any(|p| p.preset.name == name) {
                notes.push(format!(
                    "endpoints for {name} are set but not used: no {name} keys are set (e.g. KEYWAY_{}_KEYS)",
                    name.to_ascii_uppercase()
                ));
            }
        }
        if providers.is_empty() {
            return Ok(None);
        }
        model_routes(&mut providers, &mut notes);
        Ok(Some(Self { providers, notes }))
    }

    /// What the proxy should log about the variables: which one gave which keys, and every
    /// recognised variable that is set but not used, with the reason. Never a key value.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    /// The manifests as YAML documents. Key values appear only with `include_secrets`;
    /// otherwise each is a `${KEYWAY_OPENAI_KEY_1}` placeholder that the standalone file mode
    /// fills from the environment.
    pub fn manifests(&self, include_secrets: bool) -> String {
        let docs = self.documents(include_secrets);
        let header = "# Generated by `keyway-proxy export-config`. Run it with\n\
                      #   keyway-proxy --config FILE\n\
                      # or apply it to a cluster with `kubectl apply -f FILE`.\n";
        match serde_saphyr::to_string_multiple(&docs) {
            Ok(y) => format!("{header}{y}"),
            // Plain JSON values always serialise; JSON is YAML, so this is still usable.
            Err(_) => docs
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n---\n"),
        }
    }

    /// The manifests as JSON values: per provider a Secret, an ApiKeyPool and a
    /// LoadBalancerPool (the documents [`QuickStart::manifests`] prints).
    pub fn documents(&self, include_secrets: bool) -> Vec<Value> {
        self.providers
            .iter()
            .flat_map(|p| p.documents(include_secrets))
            .collect()
    }

    /// The config to serve.
    pub fn snapshot(&self) -> Result<Snapshot, Vec<ConfigError>> {
        let yaml = self.manifests(true);
        Manifests::parse(&yaml, &|_| None)?.resolve()
    }

    /// One line per provider for the log: pool, the variable its keys came from, key ids
    /// (never values), endpoints.
    pub fn summary(&self) -> Vec<(String, String, Vec<String>, Vec<String>)> {
        self.providers
            .iter()
            .map(|p| {
                let endpoints = if p.endpoints.is_empty() {
                    p.preset.endpoint.into_iter().map(String::from).collect()
                } else {
                    p.endpoints.clone()
                };
                (
                    p.preset.name.to_string(),
                    p.source.clone(),
                    p.key_ids(),
                    endpoints,
                )
            })
            .collect()
    }
}

// === impl ProviderKeys ===

impl ProviderKeys {
    fn key_ids(&self) -> Vec<String> {
        (1..=self.keys.len())
            .map(|i| format!("{}-{i}", self.preset.name))
            .collect()
    }

    fn documents(&self, include_secrets: bool) -> Vec<Value> {
        let name = self.preset.name;
        let ids = self.key_ids();
        let mut string_data = serde_json::Map::new();
        for (i, (id, (_, value))) in ids.iter().zip(&self.keys).enumerate() {
            let v = if include_secrets {
                value.expose().to_string()
            } else {
                format!("${{KEYWAY_{}_KEY_{}}}", self.stem, i + 1)
            };
            string_data.insert(id.clone(), Value::String(v));
        }
        let weighted = self.keys.iter().any(|(w, _)| *w != 1);
        let mut key_pool = json!({"secretRef": {"name": format!("{name}-keys")}});
        match self.selection {
            Some(s) if s != "roundRobin" => key_pool["selection"] = json!(s),
            Some(_) => {}
            None if weighted => key_pool["selection"] = json!("weighted"),
            None => {}
        }
        if let Some(secs) = self.time_window_seconds {
            key_pool["timeWindowSeconds"] = json!(secs);
        }
        if weighted {
            key_pool["keys"] = Value::Array(
                ids.iter()
                    .zip(&self.keys)
                    .filter(|(_, (w, _))| *w != 1)
                    .map(|(id, (w, _))| json!({"id": id, "weight": w}))
                    .collect(),
            );
        }
        let mut pool = json!({
            "provider": name,
            "apiKeyPoolRef": {"name": name},
        });
        if !self.endpoints.is_empty() {
            pool["backends"] = Value::Array(
                self.endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| json!({"name": format!("{name}-{}", i + 1), "endpoint": e}))
                    .collect(),
            );
        }
        if !self.routes.is_empty() {
            pool["routes"] = Value::Array(self.routes.clone());
        }
        vec![
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                // Labelled, so the exported file works as it is with `kubectl apply` too.
                "metadata": {
                    "name": format!("{name}-keys"),
                    "labels": {keyway_api::secret::API_KEYS_LABEL: keyway_api::secret::API_KEYS_LABEL_VALUE},
                },
                "stringData": string_data,
            }),
            json!({
                "apiVersion": "keyway.dev/v1alpha1",
                "kind": "ApiKeyPool",
                "metadata": {"name": name},
                "spec": key_pool,
            }),
            json!({
                "apiVersion": "keyway.dev/v1alpha1",
                "kind": "LoadBalancerPool",
                "metadata": {"name": name},
                "spec": pool,
            }),
        ]
    }
}

/// `KEYWAY_ENDPOINTS`, else the Python proxy's `SERVICE_ENDPOINTS` (the same JSON).
fn endpoints(
    get: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let (var, raw) = match (get("KEYWAY_ENDPOINTS"), get("SERVICE_ENDPOINTS")) {
        (Some(raw), other) => {
            if other.is_some() {
                notes.push(
                    "SERVICE_ENDPOINTS is set but not used: KEYWAY_ENDPOINTS gives the endpoints (it is read first)".into(),
                );
            }
            ("KEYWAY_ENDPOINTS", raw)
        }
        (None, Some(raw)) => ("SERVICE_ENDPOINTS", raw),
        (None, None) => return Ok(BTreeMap::new()),
    };
    let endpoints: BTreeMap<String, Vec<String>> = serde_json::from_str(&raw).map_err(|e| {
        format!("{var} must be JSON such as {{\"openai\":[\"https://a\",\"https://b\"]}}: {e}")
    })?;
    for name in endpoints.keys() {
        if !PROVIDERS.iter().any(|(_, p)| p.name == name) {
            return Err(format!(
                "{var} names {name:?}; expected openai, anthropic, gemini or tavily"
            ));
        }
    }
    Ok(endpoints)
}

/// The Workers balancer's `LOAD_BALANCER_*` variables.
fn workers(
    get: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<Option<Workers>, String> {
    let strategy = get("LOAD_BALANCER_STRATEGY");
    let window = get("LOAD_BALANCER_WINDOW_SIZE");
    let Some(raw) = get("LOAD_BALANCER_API_KEYS") else {
        for (var, v) in [
            ("LOAD_BALANCER_STRATEGY", &strategy),
            ("LOAD_BALANCER_WINDOW_SIZE", &window),
            (
                "KEYWAY_LOAD_BALANCER_PROVIDER",
                &get("KEYWAY_LOAD_BALANCER_PROVIDER"),
            ),
        ] {
            if v.is_some() {
                notes.push(format!(
                    "{var} is set but not used: it applies to the keys of LOAD_BALANCER_API_KEYS, which is not set"
                ));
            }
        }
        return Ok(None);
    };
    if let Some(enabled) = get("LOAD_BALANCER_ENABLED")
        && enabled.trim().eq_ignore_ascii_case("false")
    {
        notes
            .push("LOAD_BALANCER_API_KEYS is set but not used: LOAD_BALANCER_ENABLED=false".into());
        return Ok(None);
    }
    let keys = parse_keys(&raw).map_err(|m| format!("LOAD_BALANCER_API_KEYS: {m}"))?;
    let stem = match get("KEYWAY_LOAD_BALANCER_PROVIDER") {
        Some(p) => PROVIDERS
            .iter()
            .find(|(_, preset)| preset.name.eq_ignore_ascii_case(p.trim()))
            .map(|(stem, _)| *stem)
            .ok_or_else(|| {
                format!(
                    "KEYWAY_LOAD_BALANCER_PROVIDER is {p:?}; expected anthropic, gemini, openai or tavily"
                )
            })?,
        // Gemini API keys start with "AIza"; the Workers balancer's other keys are Claude's.
        None if keys.iter().all(|(_, k)| k.expose().starts_with("AIza")) => "GEMINI",
        None => "ANTHROPIC",
    };
    let (selection, time_window_seconds) = match strategy.as_deref().map(str::trim) {
        None | Some("round-robin") => ("roundRobin", None),
        Some("weighted") => ("weighted", None),
        Some("time-window") => {
            let minutes = match &window {
                Some(w) => w
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|m| (1..=1440).contains(m))
                    .ok_or_else(|| {
                        format!(
                            "LOAD_BALANCER_WINDOW_SIZE is {w:?}; expected minutes from 1 to 1440"
                        )
                    })?,
                None => 5,
            };
            ("timeWindow", Some(minutes * 60))
        }
        Some(other) => {
            return Err(format!(
                "LOAD_BALANCER_STRATEGY is {other:?}; expected round-robin, weighted or time-window"
            ));
        }
    };
    if window.is_some() && selection != "timeWindow" {
        notes.push(
            "LOAD_BALANCER_WINDOW_SIZE is set but not used: it applies to LOAD_BALANCER_STRATEGY=time-window".into(),
        );
    }
    Ok(Some(Workers {
        stem,
        keys,
        selection,
        time_window_seconds,
    }))
}

/// With two or more model providers, each pool also takes the requests for its models on
/// every other provider's paths (`gpt-*` on `/v1/messages` goes to OpenAI), as the Python
/// proxy's model-prefix detection does. Requests without a known model go by path.
fn model_routes(providers: &mut [ProviderKeys], notes: &mut Vec<String>) {
    let with_models: Vec<usize> = (0..providers.len())
        .filter(|i| !model_globs(providers[*i].preset.name).is_empty())
        .collect();
    if with_models.len() < 2 {
        return;
    }
    let mut paths: Vec<&'static str> = Vec::new();
    for i in &with_models {
        for r in providers[*i].preset.routes {
            if !paths.contains(r) {
                paths.push(r);
            }
        }
    }
    let mut described = Vec::new();
    for i in with_models {
        let p = &mut providers[i];
        let globs = model_globs(p.preset.name);
        let mut routes: Vec<Value> = p
            .preset
            .routes
            .iter()
            .map(|r| json!({"pathPrefix": r}))
            .collect();
        for path in &paths {
            for glob in globs {
                routes.push(json!({"pathPrefix": path, "model": glob}));
            }
        }
        p.routes = routes;
        described.push(format!("{} -> {}", globs.join(", "), p.preset.name));
    }
    notes.push(format!(
        "model-prefix routing: {} (on {}); other requests go by path",
        described.join("; "),
        paths.join(", ")
    ));
}

/// One key, the whole value (the `*_API_KEY` single-key variables).
fn single_key(raw: &str) -> Result<keyway_api::secret::SecretValue, String> {
    let value = raw.trim();
    if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("not a valid key".into());
    }
    Ok(keyway_api::secret::SecretValue::new(value))
}

/// `k1,k2:3`: keys with optional weights (a trailing `:digits`).
fn parse_keys(raw: &str) -> Result<Vec<(u32, keyway_api::secret::SecretValue)>, String> {
    let mut out = Vec::new();
    for (i, part) in raw.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            continue;
        }
        let (value, weight) = match part.rsplit_once(':') {
            Some((v, w)) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => {
                let w = w
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w <= 10_000)
                    .ok_or_else(|| format!("entry {}: weight must be 0 to 10000", i + 1))?;
                (v, w)
            }
            _ => (part, 1),
        };
        if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            // Never echo the value: name the position only.
            return Err(format!("entry {} is not a valid key", i + 1));
        }
        out.push((weight, keyway_api::secret::SecretValue::new(value)));
    }
    if out.is_empty() {
        return Err("no keys; expected k1,k2 or k1:2,k2:1".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
