//! The domain model: what a proxy serves. Built from specs by [`crate::resolve`], carried over
//! the control-plane stream, compared with `Eq` to decide whether anything changed.

use crate::secret::SecretValue;
pub use crate::spec::{Mode, Protocol, Role, Selection, Strategy};
use std::fmt;
use std::time::Duration;

/// Everything one proxy serves, sorted by id so equal configs compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub pools: Vec<Pool>,
    pub key_pools: Vec<KeyPool>,
}

/// `namespace/name` of a resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

/// A resolved `LoadBalancerPool`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    pub id: ObjectId,
    pub mode: Mode,
    pub backends: Vec<Backend>,
    pub strategy: Strategy,
    /// Consistent hashing: the header hashed and the bounded-load factor in percent (125 = 1.25).
    pub hash_header: String,
    pub hash_load_factor_pct: u32,
    pub evacuate_primary: bool,
    /// Name of the `ApiKeyPool` in the same namespace, if keys are injected.
    pub key_pool: Option<String>,
    pub auth: Auth,
    pub routes: Vec<Route>,
    pub outlier: Outlier,
    pub retry: Retry,
    pub timeouts: Timeouts,
    /// SSE keep-alive comment interval; `None` = off.
    pub sse_keep_alive: Option<Duration>,
    /// User → cluster assignments (multiCluster) and learned protocol sessions.
    pub affinity: Option<Affinity>,
    /// Cluster choice settings (used in multiCluster mode).
    pub cluster_balance: ClusterBalance,
    /// `(lowercase name, value)` set on upstream requests that lack that header (provider
    /// presets, e.g. `anthropic-version`).
    pub default_headers: Vec<(String, String)>,
    /// Client addresses allowed to use the pool; empty: any.
    pub allowed_sources: Vec<Cidr>,
}

/// An IP network such as `10.0.0.0/8`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

/// Request affinity (see `spec.affinity`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    /// Lowercase header name.
    pub header: String,
    pub ttl: Duration,
    pub max_entries: u32,
    pub store: AffinityStore,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AffinityStore {
    Memory,
    Redis(RedisStore),
}

/// A Redis server holding assignments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisStore {
    pub target: RedisTarget,
    pub db: u32,
    pub key_prefix: String,
    pub timeout: Duration,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// The password read from a Secret (`passwordSecretRef`); wins over `password_env`.
    pub password: Option<SecretValue>,
    /// Connect over TLS (sentinels too).
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RedisTarget {
    /// `host:port`.
    Direct(String),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// Cluster choice in multiCluster mode. Ratios are in parts per million so the model stays
/// `Eq` and `Hash`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterBalance {
    pub overloaded_ratio_ppm: u32,
    pub smoothing_ppm: u32,
    /// Lowercase header naming the model, read before the body.
    pub model_header: Option<String>,
    pub token_rebalance: Option<TokenRebalance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenRebalance {
    pub imbalance_ratio_ppm: u32,
    pub max_fraction_ppm: u32,
}

impl Default for ClusterBalance {
    fn default() -> Self {
        Self {
            overloaded_ratio_ppm: 950_000,
            smoothing_ppm: 50_000,
            model_header: None,
            token_rebalance: None,
        }
    }
}

impl ClusterBalance {
    pub fn overloaded_ratio(&self) -> f64 {
        f64::from(self.overloaded_ratio_ppm) / 1e6
    }

    pub fn smoothing(&self) -> f64 {
        f64::from(self.smoothing_ppm) / 1e6
    }
}

/// Passive outlier detection; `consecutive_failures == 0` disables it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Retry {
    pub max_retries: u32,
    pub buffer_bytes: u32,
}

/// Per-pool timeouts; `None` means the proxy's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub response_headers: Option<Duration>,
    pub idle_stream: Option<Duration>,
}

/// An active health check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// A path on the backend's endpoint or a full URL.
    pub target: HealthTarget,
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_threshold: u32,
    pub success_threshold: u32,
    pub deep: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthTarget {
    Path(String),
    Url(String),
}

/// One upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub name: String,
    pub endpoint: Endpoint,
    /// Host header to send; `None` means the endpoint's authority.
    pub host_header: Option<String>,
    pub weight: u32,
    /// Failover mode: the primary, or a secondary. `None` in balanced mode.
    pub role: Option<Role>,
    pub protocol: Protocol,
    pub health_check: Option<HealthCheck>,
}

/// A parsed, validated base URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host:port` (port always explicit).
    pub authority: String,
    /// Prefixed to every request path; empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// Where the key goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    /// `name: prefix + key`; `name` is lowercase.
    Header { name: String, prefix: String },
    /// `?param=key`.
    Query { param: String },
    /// A top-level field of a JSON body.
    BodyField { field: String },
}

/// A request belongs to a pool when every set condition of one of its routes holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Route {
    pub path_prefix: Option<String>,
    /// `(lowercase name, exact value)`.
    pub headers: Vec<(String, String)>,
    /// Glob on the JSON body's `model`.
    pub model: Option<String>,
}

/// A resolved `ApiKeyPool` with its key material.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPool {
    pub id: ObjectId,
    pub selection: Selection,
    /// `selection: timeWindow`.
    pub time_window: Duration,
    /// Sorted by id.
    pub keys: Vec<Key>,
    pub default_cooldown: Duration,
    /// Failure ratio that disables a key, in per mille (500 = 0.5).
    pub failure_ratio_permille: u32,
    pub min_requests: u32,
    pub disable_backoff: Duration,
    pub reprobe_interval: Duration,
    pub queue_max_len: u32,
    pub queue_max_wait: Duration,
    pub stickiness: Option<Stickiness>,
    pub request_stream_usage: bool,
}

/// Client → key stickiness.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stickiness {
    /// Lowercase header name.
    pub header: String,
    /// 0: requests without the header are not sticky.
    pub prompt_prefix_bytes: u32,
    /// In percent (125 = 1.25).
    pub load_factor_pct: u32,
}

/// One key: a stable id (safe to show), its value (never shown) and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub id: String,
    pub value: SecretValue,
    pub limits: KeyLimits,
}

/// Per-key quotas, per proxy (the controller divides each key's global quota between the
/// proxies that serve it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyLimits {
    pub weight: u32,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self {
            weight: 1,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
        }
    }
}

// === impl ObjectId ===

impl ObjectId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Endpoint ===

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.path_prefix)
    }
}

// === impl Cidr ===

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR such as 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Parses a comma-separated list; empty entries are skipped.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// True when the list is empty or some entry contains `ip`.
    pub fn allows(list: &[Cidr], ip: std::net::IpAddr) -> bool {
        list.is_empty() || list.iter().any(|c| c.contains(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl Outlier, Retry ===

impl Default for Outlier {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_retries: 1,
            buffer_bytes: 1 << 20,
        }
    }
}

// === impl Route ===

impl Route {
    pub fn needs_model(&self) -> bool {
        self.model.is_some()
    }
}

// === impl Pool ===

impl Pool {
    /// Whether routing this pool's requests uses the body's `model`.
    pub fn needs_model(&self) -> bool {
        self.mode == Mode::MultiCluster || self.routes.iter().any(Route::needs_model)
    }
}

/// `*`-wildcard match, e.g. `gpt-*` or `*-mini`. Linear time, no backtracking blow-up.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

// === impl Snapshot ===

impl Snapshot {
    /// Sorts pools and key pools by id, so that equal contents compare equal.
    pub fn normalized(mut self) -> Self {
        self.pools.sort_by(|a, b| a.id.cmp(&b.id));
        self.key_pools.sort_by(|a, b| a.id.cmp(&b.id));
        self
    }

    pub fn key_pool(&self, namespace: &str, name: &str) -> Option<&KeyPool> {
        self.key_pools
            .iter()
            .find(|k| k.id.namespace == namespace && k.id.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn cidrs() {
        use super::Cidr;
        let ip = |s: &str| s.parse().unwrap();
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert_eq!(Cidr::parse_list("1.2.3.4, ,::1/128").unwrap().len(), 2);
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(!glob_match("gpt-*", "claude-3"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
        assert!(glob_match("claude-*-sonnet*", "claude-3-5-sonnet-latest"));
        assert!(glob_match("*", ""));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("a*a", "a"));
    }
}
