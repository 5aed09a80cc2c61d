//! Spec → model. The one place that validates a pool, used by the controller (status
//! conditions), the proxy's standalone mode and `keyway-proxy check`. Every error names the
//! object and the field path, so a user can find the line to fix.

use crate::model::{
    Affinity, AffinityStore, Auth, Backend, ClusterBalance, Endpoint, HealthCheck, HealthTarget,
    Key, KeyLimits, KeyPool, Mode, ObjectId, Outlier, Pool, RedisStore, RedisTarget, Retry, Role,
    Route, Scheme, Stickiness, Timeouts, TokenRebalance,
};
use crate::secret::SecretValue;
use crate::spec::{
    AffinitySpec, AffinityStoreKind, ApiKeyPoolSpec, AuthKind, HealthCheckSpec,
    LoadBalancerPoolSpec, RedisSpec,
};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

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
    /// The Secret exists but lacks the opt-in label ([`crate::secret::API_KEYS_LABEL`]).
    SecretNotLabelled,
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

impl ConfigError {
    /// What to do about it, when there is a common answer.
    pub fn hint(&self) -> Option<&'static str> {
        let m = self.message.as_str();
        let f = self.field.as_str();
        Some(if m.contains("unknown field") {
            "remove the field or fix its spelling (fields are camelCase; see the README's resource reference)"
        } else if m.contains("unknown variant") {
            "use one of the values listed in the message"
        } else if m.contains("is not set") {
            "export the environment variable before starting keyway-proxy, or write the value in the Secret"
        } else if self.reason == Reason::SecretNotFound {
            "add a document `apiVersion: v1, kind: Secret` with that name and one stringData entry per key"
        } else if self.reason == Reason::SecretNotLabelled {
            "label the Secret: kubectl label secret NAME keyway.dev/api-keys=true (only labelled Secrets are read)"
        } else if self.reason == Reason::KeyPoolNotFound {
            "add an ApiKeyPool document with that name, or fix spec.apiKeyPoolRef.name"
        } else if self.reason == Reason::NoKeys {
            "each Secret entry is one key: `stringData: {key-1: \"${MY_KEY}\"}`"
        } else if f.ends_with("endpoint") {
            "an endpoint is a base URL such as https://api.openai.com or http://10.0.0.5:8000/v1"
        } else if f == "spec.backends" && m.contains("required") {
            "add `backends: [{name: a, endpoint: https://...}]`, or set `provider: openai` (or anthropic, gemini, tavily)"
        } else if f == "kind" {
            "a file holds LoadBalancerPool, ApiKeyPool and Secret documents separated by ---"
        } else if f == "apiVersion" {
            "keyway.dev/v1alpha1 for LoadBalancerPool and ApiKeyPool, v1 for Secret"
        } else if f == "metadata.name" {
            "every document needs metadata.name, unique per kind"
        } else if m.contains("invalid type") {
            "the value has the wrong type: check quoting and whether a list or an object is expected"
        } else if m.contains("not valid YAML") {
            "check indentation; `keyway-proxy export-config` prints a valid example"
        } else {
            return None;
        })
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
            Reason::SecretNotLabelled => "SecretNotLabelled",
            Reason::NoKeys => "NoKeys",
            Reason::KeyPoolNotFound => "KeyPoolNotFound",
            Reason::InvalidManifest => "InvalidManifest",
        }
    }
}

/// The prefix every `spec.affinity.redis.passwordEnv` must have.
pub const REDIS_PASSWORD_ENV_PREFIX: &str = "KEYWAY_REDIS_";

/// The error of an ApiKeyPool whose Secret exists but has not opted in with the
/// `keyway.dev/api-keys: "true"` label: none of its values is read or sent anywhere.
pub fn secret_not_labelled(id: &ObjectId, spec: &ApiKeyPoolSpec) -> ConfigError {
    let secret = &spec.secret_ref.name;
    ConfigError::new(
        format!("ApiKeyPool {id}"),
        "spec.secretRef.name",
        Reason::SecretNotLabelled,
        format!(
            "Secret {ns}/{secret} is not labelled {label}: \"{value}\"; Keyway reads only Secrets \
             that opt in (kubectl -n {ns} label secret {secret} {label}={value})",
            ns = id.namespace,
            label = crate::secret::API_KEYS_LABEL,
            value = crate::secret::API_KEYS_LABEL_VALUE,
        ),
    )
}

/// Entries of the (opted-in) Secret of a name in the object's namespace, if there is one.
pub type SecretLookup<'a> = &'a dyn Fn(&str) -> Option<&'a BTreeMap<String, SecretValue>>;

/// A lookup that finds no Secret (for pools that name none).
pub fn no_secrets(_: &str) -> Option<&'static BTreeMap<String, SecretValue>> {
    None
}

/// Validates a `LoadBalancerPool` spec that names no Secret and turns it into a [`Pool`].
pub fn pool(id: &ObjectId, spec: &LoadBalancerPoolSpec) -> Result<Pool, ConfigError> {
    pool_with_secrets(id, spec, &no_secrets)
}

/// Validates a `LoadBalancerPool` spec and turns it into a [`Pool`]. `secrets` finds the
/// Secrets it names in its namespace (`spec.affinity.redis.passwordSecretRef`).
pub fn pool_with_secrets(
    id: &ObjectId,
    spec: &LoadBalancerPoolSpec,
    secrets: SecretLookup<'_>,
) -> Result<Pool, ConfigError> {
    let object = format!("LoadBalancerPool {id}");
    let invalid =
        |field: String, msg: String| ConfigError::new(&object, field, Reason::InvalidSpec, msg);

    // Provider defaults fill what the spec leaves unset; errors still name the user's fields.
    let spec = &crate::presets::apply(spec);
    if spec.backends.is_empty() {
        return Err(invalid(
            "spec.backends".into(),
            "at least one backend is required (or a provider with a public endpoint: openai, anthropic, gemini, tavily)".into(),
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
        let health = b.health_check.as_ref().or(spec.health_check.as_ref());
        let health_field = if b.health_check.is_some() {
            field("healthCheck")
        } else {
            "spec.healthCheck".to_string()
        };
        let health_check = health
            .map(|h| health_check(h).map_err(|(f, m)| invalid(format!("{health_field}{f}"), m)))
            .transpose()?;
        let role = match spec.mode {
            Mode::Balanced | Mode::MultiCluster => None,
            Mode::Failover => Some(b.role.ok_or_else(|| {
                invalid(
                    field("role"),
                    "required in failover mode: primary or secondary".into(),
                )
            })?),
        };
        backends.push(Backend {
            name: b.name.clone(),
            endpoint,
            host_header: b.host_header.clone(),
            weight,
            role,
            protocol: b.protocol.unwrap_or_default(),
            health_check,
        });
    }
    if spec.mode == Mode::Failover {
        let primaries = backends
            .iter()
            .filter(|b| b.role == Some(Role::Primary))
            .count();
        let secondaries = backends
            .iter()
            .filter(|b| b.role == Some(Role::Secondary))
            .count();
        if primaries != 1 || secondaries == 0 {
            return Err(invalid(
                "spec.backends".into(),
                format!(
                    "failover mode needs exactly one primary and at least one secondary, got {primaries} primary and {secondaries} secondary"
                ),
            ));
        }
    } else if spec.evacuate_primary {
        return Err(invalid(
            "spec.evacuatePrimary".into(),
            "only valid with mode: failover".into(),
        ));
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
        if let Some(m) = &r.model
            && (m.is_empty() || m.chars().any(char::is_control))
        {
            return Err(invalid(
                format!("spec.routes[{i}].model"),
                "must be a non-empty glob such as gpt-*".into(),
            ));
        }
        if r.path_prefix.is_none() && headers.is_empty() && r.model.is_none() {
            return Err(invalid(
                format!("spec.routes[{i}]"),
                "a route needs a pathPrefix, a model or at least one header".into(),
            ));
        }
        routes.push(Route {
            path_prefix: r.path_prefix.clone(),
            headers,
            model: r.model.clone(),
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

    let hash = spec.consistent_hash.clone().unwrap_or_default();
    let hash_header = hash.header.unwrap_or_else(|| "user-id".to_string());
    if !is_header_name(&hash_header) {
        return Err(invalid(
            "spec.consistentHash.header".into(),
            format!("{hash_header:?} is not a valid header name"),
        ));
    }
    let load_factor = hash.load_factor.unwrap_or(1.25);
    if !(1.0..=10.0).contains(&load_factor) {
        return Err(invalid(
            "spec.consistentHash.loadFactor".into(),
            format!("must be between 1.0 and 10.0, got {load_factor}"),
        ));
    }

    let defaults = Outlier::default();
    let outlier = match &spec.outlier_detection {
        None => defaults,
        Some(o) => {
            let base = secs(o.base_ejection_seconds, 10, 1..=3600)
                .map_err(|m| invalid("spec.outlierDetection.baseEjectionSeconds".into(), m))?;
            let max = secs(o.max_ejection_seconds, 300, 1..=86400)
                .map_err(|m| invalid("spec.outlierDetection.maxEjectionSeconds".into(), m))?;
            if max < base {
                return Err(invalid(
                    "spec.outlierDetection.maxEjectionSeconds".into(),
                    "must be at least baseEjectionSeconds".into(),
                ));
            }
            Outlier {
                consecutive_failures: count(o.consecutive_failures, 5, 0..=1000)
                    .map_err(|m| invalid("spec.outlierDetection.consecutiveFailures".into(), m))?,
                base_ejection: base,
                max_ejection: max,
            }
        }
    };
    let retry = match &spec.retry {
        None => Retry::default(),
        Some(r) => Retry {
            max_retries: count(r.max_retries, 1, 0..=5)
                .map_err(|m| invalid("spec.retry.maxRetries".into(), m))?,
            buffer_bytes: count(r.buffer_bytes, 1 << 20, 0..=16 << 20)
                .map_err(|m| invalid("spec.retry.bufferBytes".into(), m))?,
        },
    };
    let timeouts = match &spec.timeouts {
        None => Timeouts::default(),
        Some(t) => {
            let parse = |v: &Option<String>, f: &str| {
                v.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|m| invalid(format!("spec.timeouts.{f}"), m))
            };
            Timeouts {
                connect: parse(&t.connect, "connect")?,
                response_headers: parse(&t.response_headers, "responseHeaders")?,
                idle_stream: parse(&t.idle_stream, "idleStream")?,
            }
        }
    };

    let sse_keep_alive = spec
        .sse_keep_alive
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| invalid("spec.sseKeepAlive".into(), m))?;

    let affinity = affinity(spec, &id.namespace, secrets).map_err(|(f, m)| invalid(f, m))?;
    let cluster_balance = cluster_balance(spec).map_err(|(f, m)| invalid(f, m))?;
    let mut allowed_sources = Vec::with_capacity(spec.allowed_sources.len());
    for (i, s) in spec.allowed_sources.iter().enumerate() {
        allowed_sources.push(
            crate::model::Cidr::parse(s)
                .map_err(|m| invalid(format!("spec.allowedSources[{i}]"), m))?,
        );
    }

    Ok(Pool {
        id: id.clone(),
        default_headers: crate::presets::default_headers(spec.provider),
        allowed_sources,
        sse_keep_alive,
        affinity,
        cluster_balance,
        mode: spec.mode,
        backends,
        strategy: spec.strategy,
        hash_header: hash_header.to_ascii_lowercase(),
        hash_load_factor_pct: (load_factor * 100.0).round() as u32,
        evacuate_primary: spec.evacuate_primary,
        key_pool: spec.api_key_pool_ref.as_ref().map(|r| r.name.clone()),
        auth,
        routes,
        outlier,
        retry,
        timeouts,
    })
}

/// `spec.affinity`: always on in multiCluster mode (defaults), otherwise only when set.
fn affinity(
    spec: &LoadBalancerPoolSpec,
    namespace: &str,
    secrets: SecretLookup<'_>,
) -> Result<Option<Affinity>, (String, String)> {
    let a = match (&spec.affinity, spec.mode) {
        (Some(a), _) => a.clone(),
        (None, Mode::MultiCluster) => AffinitySpec::default(),
        (None, _) => return Ok(None),
    };
    let f = |name: &str| format!("spec.affinity.{name}");
    let header = a.header.unwrap_or_else(|| "user-id".to_string());
    if !is_header_name(&header) {
        return Err((
            f("header"),
            format!("{header:?} is not a valid header name"),
        ));
    }
    let ttl_minutes = count(a.ttl_minutes, 15, 1..=10_080).map_err(|m| (f("ttlMinutes"), m))?;
    let max_entries =
        count(a.max_entries, 100_000, 1..=10_000_000).map_err(|m| (f("maxEntries"), m))?;
    let store = match (a.store.unwrap_or_default(), a.redis) {
        (AffinityStoreKind::Memory, None) => AffinityStore::Memory,
        (AffinityStoreKind::Memory, Some(_)) => {
            return Err((
                f("redis"),
                "only used with store: redis; set store: redis or remove it".into(),
            ));
        }
        (AffinityStoreKind::Redis, None) => {
            return Err((
                f("redis"),
                "store: redis needs redis.address or redis.sentinels".into(),
            ));
        }
        (AffinityStoreKind::Redis, Some(r)) => AffinityStore::Redis(redis(&r, namespace, secrets)?),
    };
    Ok(Some(Affinity {
        header: header.to_ascii_lowercase(),
        ttl: Duration::from_secs(u64::from(ttl_minutes) * 60),
        max_entries,
        store,
    }))
}

fn redis(
    r: &RedisSpec,
    namespace: &str,
    secrets: SecretLookup<'_>,
) -> Result<RedisStore, (String, String)> {
    let f = |name: &str| format!("spec.affinity.redis.{name}");
    let host_port = |v: &str, field: String| -> Result<String, (String, String)> {
        match v.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0) =>
            {
                Ok(v.to_string())
            }
            _ => Err((field, format!("must be host:port, got {v:?}"))),
        }
    };
    let target = match (&r.address, r.sentinels.is_empty(), &r.master_name) {
        (Some(a), true, None) => RedisTarget::Direct(host_port(a, f("address"))?),
        (None, false, Some(m)) if !m.is_empty() => RedisTarget::Sentinel {
            sentinels: r
                .sentinels
                .iter()
                .enumerate()
                .map(|(i, s)| host_port(s, format!("spec.affinity.redis.sentinels[{i}]")))
                .collect::<Result<_, _>>()?,
            master: m.clone(),
        },
        (None, false, _) => {
            return Err((f("masterName"), "required with sentinels".into()));
        }
        (Some(_), false, _) | (Some(_), _, Some(_)) => {
            return Err((
                f("address"),
                "set either address, or sentinels with masterName, not both".into(),
            ));
        }
        (None, true, _) => {
            return Err((f("address"), "set address (host:port) or sentinels".into()));
        }
    };
    let timeout = r
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| (f("timeout"), m))?
        .unwrap_or(Duration::from_millis(50));
    if timeout.is_zero() {
        return Err((f("timeout"), "must be above 0".into()));
    }
    if let Some(e) = &r.password_env
        && (e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err((
            f("passwordEnv"),
            format!("{e:?} is not an environment variable name"),
        ));
    }
    // Whoever may write a pool must not be able to name any variable of the proxy's
    // environment (KEYWAY_ADMIN_TOKEN, cloud credentials) and have it sent to a Redis address
    // of their choosing.
    if let Some(e) = &r.password_env
        && !(e.starts_with(REDIS_PASSWORD_ENV_PREFIX) && e.len() > REDIS_PASSWORD_ENV_PREFIX.len())
    {
        return Err((
            f("passwordEnv"),
            format!(
                "{e:?} must start with {REDIS_PASSWORD_ENV_PREFIX} (only variables meant for Redis may be named)"
            ),
        ));
    }
    let password = match &r.password_secret_ref {
        None => None,
        Some(sel) => {
            let field = f("passwordSecretRef");
            let entries = secrets(&sel.name).ok_or_else(|| {
                (
                    field.clone(),
                    format!(
                        "Secret {namespace}/{} not found among the Secrets Keyway reads (they are labelled {}: \"{}\")",
                        sel.name,
                        crate::secret::API_KEYS_LABEL,
                        crate::secret::API_KEYS_LABEL_VALUE
                    ),
                )
            })?;
            let value = entries.get(&sel.key).ok_or_else(|| {
                (
                    field.clone(),
                    format!("Secret {namespace}/{} has no entry {:?}", sel.name, sel.key),
                )
            })?;
            if value.expose().is_empty() {
                return Err((
                    field,
                    format!(
                        "Secret {namespace}/{} entry {:?} is empty",
                        sel.name, sel.key
                    ),
                ));
            }
            Some(value.clone())
        }
    };
    Ok(RedisStore {
        target,
        db: count(r.db, 0, 0..=1000).map_err(|m| (f("db"), m))?,
        key_prefix: r
            .key_prefix
            .clone()
            .unwrap_or_else(|| "keyway:affinity:".to_string()),
        timeout,
        password_env: r.password_env.clone(),
        password,
        tls: r.tls.unwrap_or(false),
    })
}

/// `spec.balanceAlgorithm`: only meaningful in multiCluster mode.
fn cluster_balance(spec: &LoadBalancerPoolSpec) -> Result<ClusterBalance, (String, String)> {
    let Some(b) = &spec.balance_algorithm else {
        return Ok(ClusterBalance::default());
    };
    if spec.mode != Mode::MultiCluster {
        return Err((
            "spec.balanceAlgorithm".into(),
            "only valid with mode: multiCluster".into(),
        ));
    }
    let f = |name: &str| format!("spec.balanceAlgorithm.{name}");
    let ppm = |v: Option<f64>, default: f64, min: f64, max: f64, field: String| {
        let v = v.unwrap_or(default);
        if v.is_finite() && (min..=max).contains(&v) {
            Ok((v * 1e6).round() as u32)
        } else {
            Err((field, format!("must be between {min} and {max}, got {v}")))
        }
    };
    let model_header = match &b.model_header {
        Some(h) if !is_header_name(h) => {
            return Err((
                f("modelHeader"),
                format!("{h:?} is not a valid header name"),
            ));
        }
        h => h.as_ref().map(|h| h.to_ascii_lowercase()),
    };
    let token_rebalance = match &b.token_rebalance {
        None => None,
        Some(t) => Some(TokenRebalance {
            imbalance_ratio_ppm: ppm(
                t.imbalance_ratio,
                1.5,
                1.0,
                100.0,
                f("tokenRebalance.imbalanceRatio"),
            )?,
            max_fraction_ppm: ppm(
                t.max_fraction,
                0.2,
                0.0,
                1.0,
                f("tokenRebalance.maxFraction"),
            )?,
        }),
    };
    Ok(ClusterBalance {
        overloaded_ratio_ppm: ppm(
            b.overloaded_capacity_ratio,
            0.95,
            0.01,
            100.0,
            f("overloadedCapacityRatio"),
        )?,
        smoothing_ppm: ppm(
            b.cluster_weight_smoothing_factor,
            0.05,
            0.0,
            100.0,
            f("clusterWeightSmoothingFactor"),
        )?,
        model_header,
        token_rebalance,
    })
}

/// Validates a health check; errors carry the sub-path (`.path`) and a message.
fn health_check(h: &HealthCheckSpec) -> Result<HealthCheck, (String, String)> {
    let target = match (&h.path, &h.url) {
        (Some(_), Some(_)) => {
            return Err((".url".into(), "set either path or url, not both".into()));
        }
        (Some(p), None) if !p.starts_with('/') => {
            return Err((".path".into(), format!("must start with '/', got {p:?}")));
        }
        (Some(p), None) => HealthTarget::Path(p.clone()),
        (None, Some(u)) => {
            endpoint_with_query(u).map_err(|m| (".url".to_string(), m))?;
            HealthTarget::Url(u.clone())
        }
        (None, None) => HealthTarget::Path("/v1/models".into()),
    };
    let interval =
        secs(h.interval_seconds, 10, 1..=3600).map_err(|m| (".intervalSeconds".to_string(), m))?;
    let timeout =
        secs(h.timeout_seconds, 2, 1..=300).map_err(|m| (".timeoutSeconds".to_string(), m))?;
    Ok(HealthCheck {
        target,
        interval,
        timeout,
        fail_threshold: count(h.fail_threshold, 3, 1..=100)
            .map_err(|m| (".failThreshold".to_string(), m))?,
        success_threshold: count(h.success_threshold, 2, 1..=100)
            .map_err(|m| (".successThreshold".to_string(), m))?,
        deep: h.deep,
    })
}

fn count(
    v: Option<i32>,
    default: u32,
    range: std::ops::RangeInclusive<i64>,
) -> Result<u32, String> {
    match v {
        None => Ok(default),
        Some(n) if range.contains(&(n as i64)) => Ok(n as u32),
        Some(n) => Err(format!(
            "must be between {} and {}, got {n}",
            range.start(),
            range.end()
        )),
    }
}

fn secs(
    v: Option<i32>,
    default: u64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Duration, String> {
    count(v, default as u32, range).map(|n| Duration::from_secs(n as u64))
}

/// `500ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 5s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be above zero"));
    }
    Ok(d)
}

/// Like [`endpoint`] but a query is allowed (health check URLs).
fn endpoint_with_query(raw: &str) -> Result<(), String> {
    let without_query = raw.split('?').next().unwrap_or(raw);
    endpoint(without_query).map(|_| ())
}

/// Validates an `ApiKeyPool` against its Secret's entries (`None`: the Secret does not exist).
/// Keys one ApiKeyPool may hold: per-key scheduler state, `status.keys[]` and the
/// per-key-id metric series all grow with it.
pub const MAX_KEYS_PER_POOL: usize = 10_000;

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
            limits: KeyLimits::default(),
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
    if keys.len() > MAX_KEYS_PER_POOL {
        // Bounded so that per-key state, status and metrics stay bounded too.
        return Err(ConfigError::new(
            object,
            "spec.secretRef.name",
            Reason::InvalidSpec,
            format!(
                "Secret {}/{secret_name} has {} keys; an ApiKeyPool holds at most {MAX_KEYS_PER_POOL} (split it into several pools)",
                id.namespace,
                keys.len()
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
    let invalid = |field: String, msg: String| {
        ConfigError::new(format!("ApiKeyPool {id}"), field, Reason::InvalidSpec, msg)
    };
    let defaults = spec.defaults.clone().unwrap_or_default();
    let base = limits(
        defaults.weight,
        defaults.requests_per_minute,
        defaults.tokens_per_minute,
        defaults.max_concurrent,
        &KeyLimits::default(),
    )
    .map_err(|(f, m)| invalid(format!("spec.defaults.{f}"), m))?;
    let mut keys = keys;
    let mut seen = HashSet::new();
    for k in &mut keys {
        k.limits = base;
    }
    for (i, o) in spec.keys.iter().enumerate() {
        if !seen.insert(o.id.as_str()) {
            return Err(invalid(
                format!("spec.keys[{i}].id"),
                format!("duplicate key id {:?}", o.id),
            ));
        }
        if let Some(k) = keys.iter_mut().find(|k| k.id == o.id) {
            k.limits = limits(
                o.weight,
                o.requests_per_minute,
                o.tokens_per_minute,
                o.max_concurrent,
                &base,
            )
            .map_err(|(f, m)| invalid(format!("spec.keys[{i}].{f}"), m))?;
        }
    }
    if spec.selection == crate::spec::Selection::Weighted
        && keys.iter().all(|k| k.limits.weight == 0)
    {
        return Err(invalid(
            "spec.defaults.weight".into(),
            "with selection: weighted at least one key needs a weight above 0".into(),
        ));
    }
    let cooldown = spec.cooldown.clone().unwrap_or_default();
    let disable = spec.disable.clone().unwrap_or_default();
    let failure_ratio = disable.failure_ratio.unwrap_or(0.5);
    if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
        return Err(invalid(
            "spec.disable.failureRatio".into(),
            format!("must be in (0, 1], got {failure_ratio}"),
        ));
    }
    let queue = spec.queue.clone().unwrap_or_default();
    let stickiness = match &spec.stickiness {
        None => None,
        Some(st) => {
            let header = st.header.clone().unwrap_or_else(|| "user-id".into());
            if !is_header_name(&header) {
                return Err(invalid(
                    "spec.stickiness.header".into(),
                    format!("{header:?} is not a valid header name"),
                ));
            }
            let load_factor = st.load_factor.unwrap_or(1.25);
            if !(1.0..=10.0).contains(&load_factor) {
                return Err(invalid(
                    "spec.stickiness.loadFactor".into(),
                    format!("must be between 1.0 and 10.0, got {load_factor}"),
                ));
            }
            Some(Stickiness {
                header: header.to_ascii_lowercase(),
                prompt_prefix_bytes: count(st.prompt_prefix_bytes, 0, 0..=65536)
                    .map_err(|m| invalid("spec.stickiness.promptPrefixBytes".into(), m))?,
                load_factor_pct: (load_factor * 100.0).round() as u32,
            })
        }
    };
    Ok(KeyPool {
        id: id.clone(),
        selection: spec.selection,
        time_window: secs(spec.time_window_seconds, 60, 1..=86400)
            .map_err(|m| invalid("spec.timeWindowSeconds".into(), m))?,
        keys,
        default_cooldown: secs(cooldown.default_seconds, 60, 1..=3600)
            .map_err(|m| invalid("spec.cooldown.defaultSeconds".into(), m))?,
        failure_ratio_permille: (failure_ratio * 1000.0).round() as u32,
        min_requests: count(disable.min_requests, 10, 1..=i32::MAX as i64)
            .map_err(|m| invalid("spec.disable.minRequests".into(), m))?,
        disable_backoff: secs(disable.backoff_seconds, 60, 1..=3600)
            .map_err(|m| invalid("spec.disable.backoffSeconds".into(), m))?,
        reprobe_interval: secs(disable.reprobe_seconds, 300, 10..=86400)
            .map_err(|m| invalid("spec.disable.reprobeSeconds".into(), m))?,
        queue_max_len: count(queue.max_length, 100, 0..=100_000)
            .map_err(|m| invalid("spec.queue.maxLength".into(), m))?,
        queue_max_wait: Duration::from_secs(
            count(queue.max_wait_seconds, 30, 0..=600)
                .map_err(|m| invalid("spec.queue.maxWaitSeconds".into(), m))? as u64,
        ),
        stickiness,
        request_stream_usage: spec.request_stream_usage,
    })
}

/// Key limits from optional fields over `base`; errors name the sub-field.
fn limits(
    weight: Option<i32>,
    rpm: Option<i32>,
    tpm: Option<i64>,
    concurrent: Option<i32>,
    base: &KeyLimits,
) -> Result<KeyLimits, (String, String)> {
    let positive = |v: i64, f: &str| {
        if v >= 1 {
            Ok(v)
        } else {
            Err((f.to_string(), format!("must be at least 1, got {v}")))
        }
    };
    Ok(KeyLimits {
        weight: match weight {
            None => base.weight,
            Some(w) if (0..=10_000).contains(&w) => w as u32,
            Some(w) => {
                return Err((
                    "weight".into(),
                    format!("must be between 0 and 10000, got {w}"),
                ));
            }
        },
        requests_per_minute: match rpm {
            None => base.requests_per_minute,
            Some(v) => Some(positive(v as i64, "requestsPerMinute")? as u32),
        },
        tokens_per_minute: match tpm {
            None => base.tokens_per_minute,
            Some(v) => Some(positive(v, "tokensPerMinute")? as u64),
        },
        max_concurrent: match concurrent {
            None => base.max_concurrent,
            Some(v) => Some(positive(v as i64, "maxConcurrent")? as u32),
        },
    })
}

fn auth(spec: &LoadBalancerPoolSpec) -> Result<Auth, (String, String)> {
    let default = Default::default();
    let a = spec.auth.as_ref().unwrap_or(&default);
    match a.kind {
        AuthKind::Header => {
            if a.query_param.is_some() || a.field.is_some() {
                return Err((
                    "spec.auth.type".into(),
                    "queryParam needs type: query, field needs type: bodyField".into(),
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
        AuthKind::BodyField => {
            if a.header.is_some() || a.prefix.is_some() || a.query_param.is_some() {
                return Err((
                    "spec.auth.field".into(),
                    "with type: bodyField only `field` is used".into(),
                ));
            }
            match a.field.as_deref() {
                Some(f) if !f.is_empty() && !f.chars().any(char::is_control) => {
                    Ok(Auth::BodyField { field: f.into() })
                }
                Some(f) => Err((
                    "spec.auth.field".into(),
                    format!("{f:?} is not a valid field name"),
                )),
                None => Err((
                    "spec.auth.field".into(),
                    "required with type: bodyField".into(),
                )),
            }
        }
        AuthKind::Query => {
            if a.header.is_some() || a.prefix.is_some() || a.field.is_some() {
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
