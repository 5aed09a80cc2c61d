//! The Tavily/MCP balancer's YAML: `servers`, `api_keys`, `strategy`, `health`, `logging`,
//! `metrics`, `security`.

use super::{Doc, Imported, ms_to_secs};
use serde_json::{Map, Value, json};

const NAME: &str = "tavily";

pub(super) fn import(text: &str) -> Result<Imported, String> {
    let root: Value = serde_saphyr::from_str(text).map_err(|e| {
        format!(
            "the Tavily config: {}",
            keyway_api::manifest::yaml_error(&e)
        )
    })?;
    let Some(cfg) = root.as_object() else {
        return Err("the Tavily config must be a YAML mapping (servers, api_keys, ...)".into());
    };
    let mut header = Vec::new();
    let mut pool_notes = Vec::new();
    let mut key_notes = Vec::new();
    for field in cfg.keys() {
        if ![
            "servers", "api_keys", "strategy", "health", "logging", "metrics", "security",
        ]
        .contains(&field.as_str())
        {
            header.push(format!("{field}: not a setting Keyway knows; not imported"));
        }
    }

    // Keys.
    let keys = cfg
        .get("api_keys")
        .and_then(Value::as_array)
        .ok_or("api_keys: a list of {id, value, quota_per_minute} is required")?;
    let mut string_data = Map::new();
    let mut overrides = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let id = k
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("api_keys[{i}].id: required"))?;
        let value = k
            .get("value")
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("api_keys[{i}].value: required"))?;
        let mut o = json!({"id": id});
        if let Some(q) = k.get("quota_per_minute") {
            let q = q
                .as_u64()
                .ok_or_else(|| format!("api_keys[{i}].quota_per_minute: a whole number"))?;
            o["requestsPerMinute"] = json!(q);
        }
        for extra in k.as_object().into_iter().flat_map(Map::keys) {
            if !["id", "value", "quota_per_minute"].contains(&extra.as_str()) {
                key_notes.push(format!("api_keys[{i}].{extra}: not imported"));
            }
        }
        string_data.insert(id.to_string(), Value::String(value.to_string()));
        if o.get("requestsPerMinute").is_some() {
            overrides.push(o);
        }
    }
    if string_data.is_empty() {
        return Err("api_keys: at least one key is required".into());
    }
    key_notes.push(
        "quota_per_minute -> requestsPerMinute: a sliding minute per key. A key at its quota is \
         skipped and the next eligible key serves; when none is eligible the request waits up to \
         spec.queue.maxWaitSeconds (30 s), then gets 429 with Retry-After."
            .into(),
    );

    // Servers.
    let servers = cfg
        .get("servers")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or("servers: a list of {name, host, port, weight} is required")?;
    let tls = root
        .pointer("/security/tls/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut backends = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let name = s
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("servers[{i}].name: required"))?;
        let host = s
            .get("host")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("servers[{i}].host: required"))?;
        let port = s.get("port").and_then(Value::as_u64).unwrap_or(443);
        let scheme = if port == 443 { "https" } else { "http" };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let mut b = json!({"name": name, "endpoint": format!("{scheme}://{host}:{port}")});
        if let Some(w) = s.get("weight") {
            b["weight"] = w.clone();
        }
        for extra in s.as_object().into_iter().flat_map(Map::keys) {
            if !["name", "host", "port", "weight"].contains(&extra.as_str()) {
                pool_notes.push(format!(
                    "servers[{i}].{extra}: not imported (backend credentials are not sent; \
                     the pool's keys are injected instead)"
                ));
            }
        }
        backends.push(b);
    }
    pool_notes.push(
        "servers -> backends: https:// for port 443, http:// otherwise (edit the scheme if a \
         server on another port speaks TLS)."
            .into(),
    );

    let mut spec = json!({
        "provider": "tavily",
        "apiKeyPoolRef": {"name": NAME},
        "backends": backends,
        // The Tavily balancer forwards every path.
        "routes": [{"pathPrefix": "/"}],
        "affinity": {"header": "Mcp-Session-Id"},
    });
    pool_notes.push(
        "provider: tavily puts each key in Authorization: Bearer <key>. For servers that read the \
         older body field instead, set auth: {type: bodyField, field: api_key}."
            .into(),
    );
    pool_notes.push(
        "routes: every path, as the Tavily balancer forwarded everything. affinity: an MCP \
         session (Mcp-Session-Id) stays on the backend and key that opened it."
            .into(),
    );

    // Strategy.
    match cfg.get("strategy").and_then(Value::as_str) {
        None | Some("round_robin") => spec["strategy"] = json!("roundRobin"),
        Some("weighted_round_robin") => {
            spec["strategy"] = json!("weightedRoundRobin");
            pool_notes.push(
                "weighted_round_robin -> weightedRoundRobin: smooth (weights 1:2 interleave b a b)."
                    .into(),
            );
        }
        Some("sticky_by_key") => {
            spec["strategy"] = json!("roundRobin");
            pool_notes.push(
                "sticky_by_key: no exact equivalent (Keyway picks the key per request). MCP \
                 sessions stick to their backend and key (affinity above); for other clients, \
                 ApiKeyPool spec.stickiness keeps a client (by header) on one key, and \
                 strategy: consistentHash keeps it on one backend."
                    .into(),
            );
        }
        Some(other) => {
            return Err(format!(
                "strategy: {other:?} is not round_robin, weighted_round_robin or sticky_by_key"
            ));
        }
    }

    // Health.
    if let Some(h) = cfg.get("health").and_then(Value::as_object) {
        let mut check = json!({});
        if let Some(p) = h.get("http_path").and_then(Value::as_str) {
            check["path"] = json!(p);
        } else {
            check["path"] = json!("/health");
        }
        for (field, target, default_ms) in [
            ("interval_ms", "intervalSeconds", 10_000),
            ("timeout_ms", "timeoutSeconds", 2_000),
        ] {
            let ms = h.get(field).and_then(Value::as_u64).unwrap_or(default_ms);
            let (secs, exact) = ms_to_secs(ms);
            check[target] = json!(secs);
            if !exact {
                pool_notes.push(format!(
                    "health.{field}: {ms} ms -> {target}: {secs} (whole seconds)"
                ));
            }
        }
        if let Some(t) = h.get("unhealthy_threshold").and_then(Value::as_u64) {
            check["failThreshold"] = json!(t);
        }
        pool_notes.push(
            "health -> healthCheck: any 2xx is healthy; after failThreshold failures the backend \
             leaves rotation and returns after successThreshold (2) passing probes. Passive \
             outlier detection also ejects a backend after 5 consecutive errors."
                .into(),
        );
        spec["healthCheck"] = check;
    }

    // Security.
    if let Some(sources) = root
        .pointer("/security/allowed_sources")
        .and_then(Value::as_array)
    {
        let list: Vec<&str> = sources
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| *s != "0.0.0.0/0" && *s != "::/0")
            .collect();
        if !list.is_empty() {
            spec["allowedSources"] = json!(list);
        }
    }
    if tls {
        header.push(
            "security.tls.enabled: serve the traffic port over TLS with --tls-cert FILE --tls-key FILE; \
             upstream TLS is the https:// endpoints"
                .into(),
        );
    }

    // Process settings.
    if let Some(l) = cfg.get("logging").and_then(Value::as_object) {
        if let Some(level) = l.get("level").and_then(Value::as_str) {
            header.push(format!(
                "logging.level: {level} -> KEYWAY_LOG=warn,keyway_proxy={level}"
            ));
        }
        if let Some(format) = l.get("format").and_then(Value::as_str) {
            header.push(format!("logging.format: {format} -> KEYWAY_LOG_FORMAT={format} (JSON by default when stderr is not a terminal)"));
        }
    }
    if let Some(m) = cfg.get("metrics").and_then(Value::as_object) {
        let port = m.get("port").and_then(Value::as_u64).unwrap_or(9100);
        header.push(format!(
            "metrics: Prometheus text at /metrics on the admin port, always on; --admin-listen 127.0.0.1:{port} keeps the port. \
             Metric names differ: active_backends/healthy_backends -> keyway_proxy_healthy_backends, \
             key_usage -> keyway_proxy_key_requests_total, latency_ms -> keyway_proxy_request_duration_seconds, \
             request_rate -> rate(keyway_proxy_requests_total), dropped_requests -> keyway_proxy_rejected_requests_total."
        ));
        header.push(format!(
            "The admin API (/status, /health, /pool, /api-keys/add, /api-keys/rotate, /servers/add, /servers/remove) answers on the same admin port, \
             writes with Authorization: Bearer <--admin-token-file / KEYWAY_ADMIN_TOKEN>; curl http://localhost:{port}/status keeps working."
        ));
    }

    let mut akp = json!({"secretRef": {"name": format!("{NAME}-keys")}});
    if !overrides.is_empty() {
        akp["keys"] = Value::Array(overrides);
    }
    Ok(Imported {
        header,
        docs: vec![
            Doc {
                comments: vec![
                    "api_keys -> one entry per key; the entry name is the key id.".into(),
                ],
                value: json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": format!("{NAME}-keys"),
                        "labels": {keyway_api::secret::API_KEYS_LABEL: keyway_api::secret::API_KEYS_LABEL_VALUE},
                    },
                    "stringData": string_data,
                }),
            },
            Doc {
                comments: key_notes,
                value: json!({
                    "apiVersion": "keyway.dev/v1alpha1",
                    "kind": "ApiKeyPool",
                    "metadata": {"name": NAME},
                    "spec": akp,
                }),
            },
            Doc {
                comments: pool_notes,
                value: json!({
                    "apiVersion": "keyway.dev/v1alpha1",
                    "kind": "LoadBalancerPool",
                    "metadata": {"name": NAME},
                    "spec": spec,
                }),
            },
        ],
    })
}
