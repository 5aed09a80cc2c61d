//! Alyx's `config.yaml`: primary/secondary failover with `evacuatePrimary`, or
//! `multiClusterMode` (deep health, user affinity, Redis Sentinel).

use super::{Doc, Imported};
use serde_json::{Value, json};

const NAME: &str = "alyx";

fn string<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn url_field(v: &Value, pointer: &str, field: &str) -> Result<String, String> {
    let u = string(v, pointer)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{field}: required"))?;
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        return Err(format!("{field}: {u:?} is not an http(s) URL"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// `host:port` or `:port` → the proxy's `--listen` form.
fn listen(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

pub(super) fn import(text: &str) -> Result<Imported, String> {
    let cfg: Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("the Alyx config: {}", keyway_api::manifest::yaml_error(&e)))?;
    if !cfg.is_object() {
        return Err("the Alyx config must be a YAML mapping (primary, secondary, ...)".into());
    }
    let mut header = vec![
        "Alyx holds no API keys: clients' own credentials pass through (the pool has no apiKeyPoolRef), \
         so there is no Secret or ApiKeyPool."
            .to_string(),
    ];
    let interval = cfg
        .get("healthCheckIntervalSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(5);
    let threshold = cfg
        .get("healthCheckFailThreshold")
        .and_then(Value::as_u64)
        .unwrap_or(3);
    let listen_addr = string(&cfg, "/listenAddress").unwrap_or(":8080");
    header.push(format!(
        "listenAddress {listen_addr:?} -> keyway-proxy --listen {}. Alyx had no client authentication: \
         beyond loopback Keyway wants --client-tokens-file FILE, or --allow-anonymous-clients when \
         something in front authenticates callers.",
        listen(listen_addr)
    ));
    let metrics_addr = string(&cfg, "/metricsListenAddress").unwrap_or(":9090");
    header.push(format!(
        "metricsListenAddress {metrics_addr:?} -> --admin-listen {} (Prometheus text at /metrics; \
         beyond loopback /status and /config need the admin token). Metric names are keyway_proxy_*; \
         the recording rules in charts/keyway/files/alyx-compat.rules.yaml record Alyx's alyx_lb_* \
         series from them (README, \"Coming from Alyx\").",
        listen(metrics_addr)
    ));
    if let Some(level) = string(&cfg, "/logLevel") {
        header.push(format!(
            "logLevel {level:?} -> KEYWAY_LOG=warn,keyway_proxy={level} (JSON lines with Cloud \
             Logging's severity, as Alyx wrote them)"
        ));
    }
    header.push(
        "Dynamic reload: the file is re-read every second (--reload-interval); an invalid change is \
         logged and the last good config keeps serving. In a cluster: kubectl patch lbp alyx --type merge \
         -p '{\"spec\":{\"evacuatePrimary\":true}}' instead of editing a ConfigMap."
            .into(),
    );

    let multi = cfg
        .pointer("/multiClusterMode/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut notes = Vec::new();
    let check = |url: String, deep: bool| {
        let mut c = json!({"url": url, "intervalSeconds": interval, "failThreshold": threshold});
        if deep {
            c["deep"] = json!(true);
        }
        c
    };
    let spec = if multi {
        let m = &cfg["multiClusterMode"];
        let clusters = m
            .get("clusters")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or("multiClusterMode.clusters: at least one cluster is required")?;
        let mut backends = Vec::new();
        for (i, c) in clusters.iter().enumerate() {
            let f = |x: &str| format!("multiClusterMode.clusters[{i}].{x}");
            let name = string(c, "/name").ok_or_else(|| format!("{}: required", f("name")))?;
            let endpoint = url_field(c, "/endpoint", &f("endpoint"))?;
            let mut b = json!({"name": name, "endpoint": endpoint});
            if let Some(h) = string(c, "/hostHeader") {
                b["hostHeader"] = json!(h);
            }
            if string(c, "/healthCheck").is_some() {
                b["healthCheck"] = check(url_field(c, "/healthCheck", &f("healthCheck"))?, true);
            }
            backends.push(b);
        }
        let mut spec = json!({"mode": "multiCluster", "backends": backends});
        let header_name = string(m, "/userIDHeader").unwrap_or("user-id");
        let ttl = m
            .pointer("/redis/userClusterMappingTTLMinutes")
            .and_then(Value::as_u64)
            .unwrap_or(15);
        let mut affinity = json!({"header": header_name, "ttlMinutes": ttl});
        if m.pointer("/redis/enabled").and_then(Value::as_bool) == Some(true) {
            let mut redis = json!({});
            if let Some(s) = m
                .pointer("/redis/sentinelAddresses")
                .and_then(Value::as_array)
            {
                redis["sentinels"] = json!(s);
            }
            if let Some(n) = string(m, "/redis/masterName") {
                redis["masterName"] = json!(n);
            }
            if let Some(db) = m.pointer("/redis/db").and_then(Value::as_u64) {
                redis["db"] = json!(db);
            }
            affinity["store"] = json!("redis");
            affinity["redis"] = redis;
            notes.push(
                "redis -> affinity.store: redis (Sentinel). Keys are keyway:affinity:<namespace>/<pool>:<user>, \
                 not Alyx's: existing assignments are not carried over. When Redis is unreachable the \
                 proxy's memory store answers and the fallback is counted."
                    .to_string(),
            );
        } else {
            notes.push(
                "affinity.store: memory: each proxy keeps its own assignments; replicas agree on \
                 first choices by rendezvous hashing of the user id."
                    .into(),
            );
        }
        spec["affinity"] = affinity;
        let mut balance = json!({"tokenRebalance": {"imbalanceRatio": 1.5, "maxFraction": 0.2}});
        for field in ["overloadedCapacityRatio", "clusterWeightSmoothingFactor"] {
            if let Some(v) = m.pointer(&format!("/balanceAlgorithm/{field}")) {
                balance[field] = v.clone();
            }
        }
        spec["balanceAlgorithm"] = balance;
        notes.push(
            "clusters -> backends with a deep health check (models[].payload healthy/capacity/consumption); \
             a cluster is eligible for a model when healthy, listing the model as healthy and not over \
             overloadedCapacityRatio; new users go by weighted rendezvous hashing with Alyx's weight \
             (capacity + capacity*s) / (consumption + capacity*s), s = clusterWeightSmoothingFactor (0.05 by default)."
                .into(),
        );
        if let Some(t) = m.get("tpmUpdateIntervalSeconds").and_then(Value::as_u64) {
            notes.push(format!(
                "tpmUpdateIntervalSeconds {t}: no equivalent needed. Keyway counts tokens per cluster \
                 from every response over a sliding minute (no polling), and deep health is read every \
                 healthCheckIntervalSeconds ({interval} s). tokenRebalance moves up to maxFraction of \
                 new users from the busiest cluster when its tokens per minute per unit of capacity \
                 exceed the least busy one's by imbalanceRatio (Alyx's thresholds are not documented; \
                 these are Keyway's defaults)."
            ));
        } else {
            notes.push(
                "tokenRebalance: Keyway's defaults for Alyx's TPM-based rebalancing (tokens counted \
                 from responses over a sliding minute)."
                    .into(),
            );
        }
        notes.push(
            "Alyx's \"logging current cluster state\" line is written every 30 s per pool, \
             with the clusters' models nested as {CLUSTER: {modelState: {MODEL: {capacity, consumption, healthy}}}}."
                .into(),
        );
        if cfg.get("primary").is_some() || cfg.get("secondary").is_some() {
            notes.push(
                "primary/secondary: only kept by Alyx for backwards compatibility in multi-cluster \
                 mode; not imported."
                    .into(),
            );
        }
        if cfg.get("evacuatePrimary").and_then(Value::as_bool) == Some(true) {
            notes.push("evacuatePrimary: applies to failover mode only; not imported.".into());
        }
        spec
    } else {
        let mut backends = Vec::new();
        for role in ["primary", "secondary"] {
            let b = cfg
                .get(role)
                .ok_or_else(|| format!("{role}: required (or multiClusterMode.enabled: true)"))?;
            let endpoint = url_field(b, "/endpoint", &format!("{role}.endpoint"))?;
            let mut backend = json!({"name": role, "endpoint": endpoint, "role": role});
            if let Some(h) = string(b, "/hostHeader") {
                backend["hostHeader"] = json!(h);
            }
            if string(b, "/healthCheck").is_some() {
                backend["healthCheck"] = check(
                    url_field(b, "/healthCheck", &format!("{role}.healthCheck"))?,
                    false,
                );
            }
            backends.push(backend);
        }
        let mut spec = json!({"mode": "failover", "backends": backends});
        if cfg.get("evacuatePrimary").and_then(Value::as_bool) == Some(true) {
            spec["evacuatePrimary"] = json!(true);
        }
        notes.push(format!(
            "primary/secondary -> mode: failover. After healthCheckFailThreshold ({threshold}) failed \
             probes {interval} s apart the secondary takes traffic; the primary takes it back after \
             successThreshold (2) passing probes. evacuatePrimary sends traffic to the secondary while \
             it is healthy, as in Alyx."
        ));
        if cfg.get("multiClusterMode").is_some() {
            notes.push("multiClusterMode: disabled; not imported.".into());
        }
        spec
    };
    notes.push(
        "healthCheck: any 2xx is healthy (Alyx: 200 only); GET, without credentials. hostHeader is \
         sent upstream as Host, as in Alyx."
            .into(),
    );
    Ok(Imported {
        header,
        docs: vec![Doc {
            comments: notes,
            value: json!({
                "apiVersion": "keyway.dev/v1alpha1",
                "kind": "LoadBalancerPool",
                "metadata": {"name": NAME},
                "spec": spec,
            }),
        }],
    })
}
