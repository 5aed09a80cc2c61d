//! The resources as users write them: `LoadBalancerPool` (where traffic goes) and `ApiKeyPool`
//! (where keys come from). With the `crd` feature these derive `kube::CustomResource`; the
//! proxy uses the same spec types to read standalone manifests.
//!
//! Doc comments here become the CRD's OpenAPI descriptions, so they speak to users.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// === LoadBalancerPool ===

/// Where the traffic of one API goes: the backends, how they are balanced, which key pool
/// pays for the requests and how the key is injected.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "keyway.dev",
        version = "v1alpha1",
        kind = "LoadBalancerPool",
        plural = "loadbalancerpools",
        shortname = "lbp",
        category = "keyway",
        namespaced,
        status = "LoadBalancerPoolStatus",
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
        printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
        printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeBackend"}"#,
        printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthyBackends"}"#,
        printcolumn = r#"{"name":"Backends","type":"integer","jsonPath":".status.totalBackends"}"#,
        printcolumn = r#"{"name":"Proxies","type":"integer","jsonPath":".status.connectedProxies"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.backends) && size(self.backends) > 0) || (has(self.provider) && self.provider in ['openai', 'anthropic', 'gemini', 'tavily'])",
        "message": "backends required unless provider is openai, anthropic, gemini or tavily (which bring their public endpoint)",
        "fieldPath": ".backends"
    },
    {
        "rule": "!has(self.mode) || self.mode != 'failover' || (has(self.backends) && self.backends.filter(b, has(b.role) && b.role == 'primary').size() == 1 && self.backends.exists(b, has(b.role) && b.role == 'secondary'))",
        "message": "mode: failover needs exactly one backend with role: primary and at least one with role: secondary",
        "fieldPath": ".backends"
    },
    {
        "rule": "!has(self.backends) || size(self.backends) == 0 || self.backends.exists(b, !has(b.weight) || b.weight > 0)",
        "message": "at least one backend needs a weight above 0",
        "fieldPath": ".backends"
    },
    {
        "rule": "!has(self.evacuatePrimary) || !self.evacuatePrimary || (has(self.mode) && self.mode == 'failover')",
        "message": "evacuatePrimary is only valid with mode: failover",
        "fieldPath": ".evacuatePrimary"
    },
    {
        "rule": "!has(self.auth) || !has(self.auth.type) || self.auth.type != 'query' || has(self.auth.queryParam)",
        "message": "auth.type: query needs auth.queryParam",
        "fieldPath": ".auth"
    },
    {
        "rule": "!has(self.auth) || !has(self.auth.type) || self.auth.type != 'bodyField' || has(self.auth.field)",
        "message": "auth.type: bodyField needs auth.field",
        "fieldPath": ".auth"
    },
    {
        "rule": "!has(self.balanceAlgorithm) || (has(self.mode) && self.mode == 'multiCluster')",
        "message": "balanceAlgorithm is only valid with mode: multiCluster",
        "fieldPath": ".balanceAlgorithm"
    },
    {
        "rule": "!has(self.affinity) || !has(self.affinity.store) || self.affinity.store != 'redis' || has(self.affinity.redis)",
        "message": "affinity.store: redis needs affinity.redis (address, or sentinels with masterName)",
        "fieldPath": ".affinity"
    }
]))]
pub struct LoadBalancerPoolSpec {
    /// A known API whose defaults fill in what is not set here: its public endpoint (so
    /// `backends` may be omitted), how the key is injected, required headers and routes.
    /// `openai`, `anthropic`, `gemini`, `tavily` or `openaiCompatible` (Bearer key, no
    /// endpoint: give `backends`). Any field set explicitly overrides the preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,

    /// The upstream endpoints, names unique. Required unless `provider` brings a public
    /// endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub backends: Vec<BackendSpec>,

    /// `balanced` (every healthy backend takes traffic), `failover` (the `primary` backend
    /// takes traffic while healthy; the `secondary` ones when it is not, or when evacuated) or
    /// `multiCluster` (each backend is a cluster; users stick to one with capacity for their
    /// model).
    #[serde(default)]
    pub mode: Mode,

    /// How a backend is chosen for each request (among those the mode allows).
    #[serde(default)]
    pub strategy: Strategy,

    /// Settings of `strategy: consistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashSpec>,

    /// Failover mode: send traffic to the secondary while it is healthy, even if the primary
    /// is healthy too. If the secondary is unhealthy, traffic stays on the primary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evacuate_primary: bool,

    /// Active health checks for every backend (a backend's own `healthCheck` overrides it).
    /// Without one, backends count as healthy unless passive outlier detection ejects them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,

    /// Passive outlier detection: eject a backend after consecutive failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,

    /// Retries of failed requests on another backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// Upstream timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,

    /// For `text/event-stream` responses: when the upstream is silent this long between
    /// events (e.g. a reasoning model before its first token), send the client an SSE comment
    /// line (`: keep-alive`) so idle-timeout middleboxes keep the stream open. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub sse_keep_alive: Option<String>,

    /// The ApiKeyPool (same namespace) whose keys are injected into each request.
    /// Without it, requests are forwarded with the client's own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_pool_ref: Option<LocalObjectRef>,

    /// How the key is injected. Default: `Authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Which requests belong to this pool. Empty: every request that no other pool's route
    /// claims. A request matches a route when all of the route's conditions hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,

    /// Namespaces whose proxies may also serve this pool. By default only proxies of the
    /// pool's own namespace receive it. A proxy of a namespace listed here gets it only when
    /// (1) the pool's ApiKeyPool lists that namespace too in its own
    /// `spec.allowedProxyNamespaces` (the key owner consents; a pool without
    /// `apiKeyPoolRef` needs only this list) and (2) the proxy names the pool as
    /// `namespace/name` in its pool filter (`keyway-proxy --pools`, annotation
    /// `keyway.dev/pools`). On that proxy, its own namespace's pools win route ties over a
    /// granted one. Names only: there is no wildcard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_proxy_namespaces: Vec<String>,

    /// Client addresses (CIDRs such as `10.0.0.0/8` or single IPs) allowed to use this pool,
    /// checked after routing. Empty: any client the listener accepts. Others get 403
    /// `forbidden_source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_sources: Vec<String>,

    /// Request affinity. In `mode: multiCluster`, the header names the user whose requests
    /// stay on one cluster. In every mode, when an upstream answers with this header (as MCP
    /// servers do with `Mcp-Session-Id`), later requests carrying the same value go to the
    /// backend and key that created the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinitySpec>,

    /// `mode: multiCluster`: how a cluster is chosen from deep health (capacity and
    /// consumption per model) and the token rate each cluster serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_algorithm: Option<BalanceAlgorithmSpec>,
}

/// Which header ties requests together, for how long, and where the ties are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinitySpec {
    /// The request header naming the user (or session). Default `user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// How long an assignment lives after its last use. Default 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10080))]
    pub ttl_minutes: Option<i32>,
    /// Assignments kept in memory per proxy; the least recently used go first. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_entries: Option<i32>,
    /// `memory` (default: per proxy; replicas agree on first choices by rendezvous hashing)
    /// or `redis` (assignments shared by every replica; falls back to memory while Redis is
    /// unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<AffinityStoreKind>,
    /// The Redis server for `store: redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
}

/// Where assignments are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityStoreKind {
    #[default]
    Memory,
    Redis,
}

/// A Redis server, addressed directly or through Sentinel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSpec {
    /// `host:port` of the server. Either this or `sentinels` + `masterName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub address: Option<String>,
    /// `host:port` of Sentinel processes, asked in turn for the master's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 255)))]
    pub sentinels: Vec<String>,
    /// The Sentinel master name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// Database number. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub db: Option<i32>,
    /// Prefix of every key Keyway writes. Default `keyway:affinity:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub key_prefix: Option<String>,
    /// Longest wait for Redis on the request path before the memory store answers instead.
    /// Default `50ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub timeout: Option<String>,
    /// Name of an environment variable of the proxy holding the Redis password (`AUTH`). It
    /// must start with `KEYWAY_REDIS_`: a pool's author cannot name any other variable of the
    /// proxy (such as its admin token) and have it sent to a Redis of their choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 14, max = 128),
        regex(pattern = r"^KEYWAY_REDIS_[A-Za-z0-9_]+$")
    )]
    pub password_env: Option<String>,
    /// The Redis password (`AUTH`) from one entry of a Secret in the pool's namespace. The
    /// Secret opts in like a key Secret (label `keyway.dev/api-keys: "true"`); the value
    /// reaches only the proxies that serve this pool. Wins over `passwordEnv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Connect over TLS. The server's certificate is checked against the public roots and
    /// the proxy's `--upstream-ca`, for the host of `address` (or of the address a Sentinel
    /// names). Sentinels are asked over TLS too. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// One entry of a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The data entry holding the value.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Cluster choice in `mode: multiCluster`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalanceAlgorithmSpec {
    /// A model is overloaded on a cluster when consumption / capacity exceeds this; the
    /// cluster then takes no new users for that model. Default 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub overloaded_capacity_ratio: Option<f64>,
    /// `s` in a cluster's weight `(capacity + capacity*s) / (consumption + capacity*s)`:
    /// larger values make the choice less sensitive to small differences in consumption.
    /// Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub cluster_weight_smoothing_factor: Option<f64>,
    /// A request header naming the model, read before the JSON body's `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub model_header: Option<String>,
    /// Move new users toward clusters that serve fewer tokens per minute per unit of
    /// capacity. Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rebalance: Option<TokenRebalanceSpec>,
}

/// Token-rate rebalancing of new assignments.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRebalanceSpec {
    /// Rebalance when the busiest cluster's tokens per minute per unit of capacity exceed the
    /// least busy one's by this factor. Default 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub imbalance_ratio: Option<f64>,
    /// At most this fraction of new assignments is moved. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_fraction: Option<f64>,
}

/// One upstream endpoint.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    /// Unique within the pool; appears in metrics, logs, status and the `x-keyway-backend` header.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Base URL, `http://` or `https://`. A path here is prefixed to every request path.
    #[schemars(
        length(max = 2048),
        regex(pattern = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
    )]
    pub endpoint: String,

    /// The Host header (and TLS server name) sent upstream. Default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,

    /// Relative share of traffic for weighted strategies. Default 1; 0 takes no traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: Option<i32>,

    /// Failover mode: `primary` (exactly one) or `secondary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,

    /// `http1` (default; `https` endpoints still negotiate HTTP/2 by ALPN) or `http2`
    /// (HTTP/2 only; cleartext `http://` endpoints use h2c with prior knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// This backend's health check, replacing the pool's `healthCheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

/// A known upstream API (see `spec.provider`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    /// `https://api.openai.com`, `Authorization: Bearer`.
    Openai,
    /// `https://api.anthropic.com`, `x-api-key`, `anthropic-version` added when missing.
    Anthropic,
    /// `https://generativelanguage.googleapis.com`, `x-goog-api-key`.
    Gemini,
    /// `https://api.tavily.com`, `Authorization: Bearer`.
    Tavily,
    /// Any OpenAI-shaped API (vLLM, Ollama, Azure-style gateways): Bearer key, no endpoint.
    OpenaiCompatible,
}

/// How the pool uses its backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// All healthy backends share the traffic.
    #[default]
    Balanced,
    /// Primary while healthy, secondaries otherwise (or when `evacuatePrimary`).
    Failover,
    /// Each backend is a cluster serving models: users stick to a cluster (`affinity`), new
    /// users go to clusters with spare capacity for their model (`balanceAlgorithm`, deep
    /// health checks).
    MultiCluster,
}

/// The HTTP version spoken to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

/// A backend's role in failover mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Primary,
    Secondary,
}

/// `strategy: consistentHash` settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashSpec {
    /// Request header whose value is hashed. Default `user-id`. Requests without it are
    /// balanced round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Bounded load: no backend takes more than this factor times the average in-flight
    /// load; its users spill to the next backend on the ring. Default 1.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub load_factor: Option<f64>,
}

/// Active health check. GET only; any 2xx is healthy. Never sends credentials, so it never
/// costs tokens: point it at a free endpoint such as `/v1/models` or `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path on the backend's endpoint, e.g. `/healthz`. Default `/v1/models` unless `url` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A full URL to probe instead of a path on the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds between probes. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: Option<i32>,
    /// Seconds before a probe counts as failed. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failed probes before the backend is unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub fail_threshold: Option<i32>,
    /// Consecutive passed probes before it is healthy again. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Parse a JSON body `{models: [{name, payload: {healthy, capacity, consumption}}]}` and
    /// keep capacity and consumption per model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deep: bool,
}

/// Passive outlier detection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Consecutive connect errors or 5xx answers that eject a backend. Default 5; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<i32>,
    /// First ejection length; it doubles on each repeat. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub base_ejection_seconds: Option<i32>,
    /// Longest ejection. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_ejection_seconds: Option<i32>,
}

/// Retries on connect errors, 502/503/504 and refused HTTP/2 streams, each on a backend not
/// yet tried. A request is never retried once any response byte has reached the client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first attempt. Default 1; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub max_retries: Option<i32>,
    /// Request bodies up to this size are buffered so they can be replayed; larger bodies
    /// stream through and are not retried. Default 1048576 (1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16777216))]
    pub buffer_bytes: Option<i32>,
}

/// Upstream timeouts as durations such as `500ms`, `5s`, `2m`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// TCP + TLS connect. Default: the proxy's `--connect-timeout` (5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub connect: Option<String>,
    /// Request sent → response headers received. Default: `--response-timeout` (300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub response_headers: Option<String>,
    /// Longest silence between two chunks of a response body (streams). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub idle_stream: Option<String>,
}

/// How a backend is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Each backend in turn (weights other than 0 ignored).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: weights 1:2 interleave as b, a, b.
    WeightedRoundRobin,
    /// Power of two choices over requests in flight (per unit of weight).
    LeastRequest,
    /// Hash of a request header (see `consistentHash`) with bounded load.
    ConsistentHash,
    /// Lowest consumption/capacity from deep health checks.
    LeastLoaded,
}

/// A reference to an object in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Where the key goes in the upstream request. Whatever credential the client sent in that
/// place is removed first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    /// `header` (default) or `query`.
    #[serde(default, rename = "type")]
    pub kind: AuthKind,

    /// Header name for `type: header`. Default `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,

    /// Text before the key in the header, e.g. `"Bearer "`. Default `"Bearer "` when the
    /// header is `Authorization`, empty otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// Query parameter name for `type: query`, e.g. `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param: Option<String>,

    /// Top-level JSON body field for `type: bodyField`, e.g. `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Kinds of key injection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthKind {
    /// A request header, e.g. `Authorization: Bearer <key>` or `x-api-key: <key>`.
    #[default]
    Header,
    /// A query parameter, e.g. `?key=<key>`.
    Query,
    /// A top-level field of a JSON request body, e.g. `{"api_key": "<key>"}`.
    BodyField,
}

/// Conditions a request must meet to belong to the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The request path starts with this, e.g. `/v1/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,

    /// Request headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,

    /// Glob (`*` wildcards) on the JSON body's `model` field, e.g. `gpt-*`. The body is read
    /// (up to 1 MiB) only when some route needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A header that must carry a given value.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// What the controller observed about a LoadBalancerPool.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Proxies currently connected to the controller and serving this pool.
    #[serde(default)]
    pub connected_proxies: i32,
    /// Number of backends in the spec.
    #[serde(default)]
    pub total_backends: i32,
    /// Backends that every reporting proxy sees healthy.
    #[serde(default)]
    pub healthy_backends: i32,
    /// Failover mode: the backend the proxies send traffic to (the most common answer when
    /// proxies disagree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_backend: Option<String>,
    /// Per backend, as the connected proxies see it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendStatus>,
    /// `Ready`: the pool resolved (key pool and Secret found, spec valid) and is served.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

// === ApiKeyPool ===

/// A pool of API keys, read from a Secret: each data entry is one key, the entry's name is
/// the key's id (ids appear in status, metrics and logs; values never do).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "keyway.dev",
        version = "v1alpha1",
        kind = "ApiKeyPool",
        plural = "apikeypools",
        shortname = "akp",
        category = "keyway",
        namespaced,
        status = "ApiKeyPoolStatus",
        printcolumn = r#"{"name":"Selection","type":"string","jsonPath":".spec.selection"}"#,
        printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeKeys"}"#,
        printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.totalKeys"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyPoolSpec {
    /// The Secret (same namespace) holding the keys.
    pub secret_ref: LocalObjectRef,

    /// How a key is chosen for each request (among the eligible ones: active and within quota).
    #[serde(default)]
    pub selection: Selection,

    /// `selection: timeWindow`: prefer keys not used in this many seconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub time_window_seconds: Option<i32>,

    /// Limits for every key (each key's entry in `keys` overrides them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<KeyLimitsSpec>,

    /// Per-key overrides, by key id (the Secret entry name). Ids not in the Secret are ignored,
    /// so a Secret can be rotated before or after this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub keys: Vec<KeyOverrideSpec>,

    /// What happens when the upstream answers 429 for a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<CooldownSpec>,

    /// When a key is taken out of rotation (401/403, or too many failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<DisableSpec>,

    /// Requests wait here, first come first served, when no key is eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSpec>,

    /// Keep requests of one client on one key (provider prompt caches stay warm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<StickinessSpec>,

    /// For OpenAI-style streaming requests that did not ask for usage, ask the upstream for it
    /// (`stream_options.include_usage`) so tokens can be counted, and remove the extra usage
    /// chunk from the client's stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_stream_usage: bool,

    /// Namespaces whose proxies may receive these keys through a LoadBalancerPool that grants
    /// them (its `spec.allowedProxyNamespaces`). The key owner's consent: a pool's grant
    /// alone never sends keys to another namespace; both lists must name it. Default: none
    /// (the keys stay in this namespace's proxies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 100),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_proxy_namespaces: Vec<String>,
}

/// Quotas of a key. Requests and tokens are counted per proxy over a sliding minute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyLimitsSpec {
    /// Relative share for `selection: weighted`. Default 1; 0 takes no traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<i32>,
}

/// Limits of one key, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyOverrideSpec {
    /// The key id: the Secret entry name.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<i32>,
}

/// 429 handling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CooldownSpec {
    /// Cooldown when the upstream's 429 says nothing (no Retry-After or reset headers).
    /// Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub default_seconds: Option<i32>,
}

/// Disabling keys.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisableSpec {
    /// Disable a key whose failure ratio exceeds this (0, 1]. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub failure_ratio: Option<f64>,
    /// ... over at least this many requests. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<i32>,
    /// How long a key disabled for failures stays out (doubling on repeat, up to an hour).
    /// Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub backoff_seconds: Option<i32>,
    /// How often a key disabled by 401/403 is re-probed (a free `GET` with the key).
    /// Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub reprobe_seconds: Option<i32>,
}

/// The wait queue for when no key is eligible.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSpec {
    /// Requests that may wait at once; more get 429 at once. 0 disables waiting. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_length: Option<i32>,
    /// Longest wait before a 429. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 600))]
    pub max_wait_seconds: Option<i32>,
}

/// Client stickiness to keys.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickinessSpec {
    /// The client identity header, e.g. `user-id`. Default `user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Without the header, hash this many leading bytes of the request body (the prompt)
    /// instead. 0 (default): requests without the header are not sticky.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65536))]
    pub prompt_prefix_bytes: Option<i32>,
    /// A key carrying more than this factor of the average load passes new requests of its
    /// clients to their next key. Default 1.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub load_factor: Option<f64>,
}

/// How a key is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Selection {
    /// Each key in turn.
    #[default]
    RoundRobin,
    /// In proportion to each key's `weight`.
    Weighted,
    /// The key with the fewest requests in the current minute.
    LeastUsed,
    /// Prefer keys not used in the last `timeWindowSeconds`.
    TimeWindow,
}

/// What the controller observed about an ApiKeyPool.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Keys found in the Secret.
    #[serde(default)]
    pub total_keys: i32,
    /// Keys no reporting proxy has cooling, exhausted or disabled.
    #[serde(default)]
    pub active_keys: i32,
    /// Per key id (never values): state and usage summed over the connected proxies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// `Ready`: the Secret exists and holds at least one key.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One backend as the proxies see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub name: String,
    /// `healthy/reporting` proxies, e.g. `3/3`.
    pub healthy: String,
    /// Requests sent to it (sum over proxies since they started).
    #[serde(default)]
    pub requests: i64,
    #[serde(default)]
    pub failures: i64,
    /// Deep health checks: capacity summed over the backend's models, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    /// Deep health checks: consumption summed over the backend's models, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumption: Option<i64>,
}

/// One key (by id) as the proxies see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub id: String,
    /// The worst state any proxy reports: `disabled` > `exhausted` > `cooling` > `active`.
    pub state: String,
    /// Why, when not active (e.g. `upstream answered 401: likely revoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it is expected back (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Proxies reporting this state, e.g. `1/3`.
    #[serde(default)]
    pub proxies: String,
    #[serde(default)]
    pub requests: i64,
    #[serde(default)]
    pub failures: i64,
    #[serde(default)]
    pub tokens: i64,
    /// Last use by any proxy (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

// === Shared status types ===

/// A condition in the shape Kubernetes tools expect (`kubectl wait --for=condition=Ready`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Degraded`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word a machine can act on.
    pub reason: String,
    /// A sentence a human can act on.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
