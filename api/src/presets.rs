//! Provider presets: the defaults a user would otherwise look up (endpoint, key header,
//! required headers, routes), applied by the resolver so the controller and the standalone
//! proxy behave the same. Any field set in the spec wins over the preset.
//!
//! Health checks: none of the public APIs has a probe that works without a key (OpenAI's
//! `GET /v1/models` answers 401 without one, and health checks never send credentials), so
//! presets set no active check. Failing backends are ejected by passive outlier detection,
//! which is on by default. Usage and rate-limit headers need nothing per provider: the proxy
//! reads OpenAI, Anthropic and Gemini usage and both `x-ratelimit-*` and
//! `anthropic-ratelimit-*` headers whatever the pool.

use crate::spec::{AuthKind, AuthSpec, BackendSpec, LoadBalancerPoolSpec, Provider, RouteSpec};

/// What a provider brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub provider: Provider,
    /// The spelling in `spec.provider`.
    pub name: &'static str,
    /// The public endpoint; `None` for `openaiCompatible`.
    pub endpoint: Option<&'static str>,
    /// Header carrying the key, and the text before it.
    pub auth_header: &'static str,
    pub auth_prefix: &'static str,
    /// Headers set on upstream requests when the client sent none of that name.
    pub default_headers: &'static [(&'static str, &'static str)],
    /// Path prefixes routed to the pool when it has no `routes`.
    pub routes: &'static [&'static str],
}

pub const OPENAI: Preset = Preset {
    provider: Provider::Openai,
    name: "openai",
    endpoint: Some("https://api.openai.com"),
    auth_header: "Authorization",
    auth_prefix: "Bearer ",
    default_headers: &[],
    routes: &["/v1/chat/completions", "/v1/responses", "/v1/embeddings"],
};

pub const ANTHROPIC: Preset = Preset {
    provider: Provider::Anthropic,
    name: "anthropic",
    endpoint: Some("https://api.anthropic.com"),
    auth_header: "x-api-key",
    auth_prefix: "",
    default_headers: &[("anthropic-version", "2023-06-01")],
    routes: &["/v1/messages"],
};

pub const GEMINI: Preset = Preset {
    provider: Provider::Gemini,
    name: "gemini",
    endpoint: Some("https://generativelanguage.googleapis.com"),
    auth_header: "x-goog-api-key",
    auth_prefix: "",
    default_headers: &[],
    routes: &["/v1beta/models/"],
};

/// Tavily accepts `Authorization: Bearer` (its current API); the older body field `api_key`
/// works with `auth: {type: bodyField, field: api_key}`. Its MCP server lives on another host
/// (`https://mcp.tavily.com`), so `/mcp` only reaches it with that backend set explicitly.
pub const TAVILY: Preset = Preset {
    provider: Provider::Tavily,
    name: "tavily",
    endpoint: Some("https://api.tavily.com"),
    auth_header: "Authorization",
    auth_prefix: "Bearer ",
    default_headers: &[],
    routes: &["/search", "/extract", "/crawl", "/map", "/mcp"],
};

pub const OPENAI_COMPATIBLE: Preset = Preset {
    provider: Provider::OpenaiCompatible,
    name: "openaiCompatible",
    endpoint: None,
    auth_header: "Authorization",
    auth_prefix: "Bearer ",
    default_headers: &[],
    routes: &[],
};

/// Every preset, for docs, the quick start and tests.
pub const ALL: [Preset; 5] = [OPENAI, ANTHROPIC, GEMINI, TAVILY, OPENAI_COMPATIBLE];

/// The preset of a provider.
pub fn preset(p: Provider) -> Preset {
    match p {
        Provider::Openai => OPENAI,
        Provider::Anthropic => ANTHROPIC,
        Provider::Gemini => GEMINI,
        Provider::Tavily => TAVILY,
        Provider::OpenaiCompatible => OPENAI_COMPATIBLE,
    }
}

/// The spec with the provider's defaults filled into every field left unset. Without a
/// provider, the spec unchanged.
pub fn apply(spec: &LoadBalancerPoolSpec) -> LoadBalancerPoolSpec {
    let mut out = spec.clone();
    let Some(provider) = spec.provider else {
        return out;
    };
    let p = preset(provider);
    if out.backends.is_empty()
        && let Some(endpoint) = p.endpoint
    {
        out.backends.push(BackendSpec {
            name: p.name.to_ascii_lowercase(),
            endpoint: endpoint.to_string(),
            ..Default::default()
        });
    }
    if out.auth.is_none() {
        out.auth = Some(AuthSpec {
            kind: AuthKind::Header,
            header: Some(p.auth_header.to_string()),
            prefix: Some(p.auth_prefix.to_string()),
            ..Default::default()
        });
    }
    if out.routes.is_empty() {
        out.routes = p
            .routes
            .iter()
            .map(|r| RouteSpec {
                path_prefix: Some((*r).to_string()),
                ..Default::default()
            })
            .collect();
    }
    out
}

/// Headers to add when missing, for a provider (empty without one).
pub fn default_headers(provider: Option<Provider>) -> Vec<(String, String)> {
    provider
        .map(|p| {
            preset(p)
                .default_headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LocalObjectRef;

    #[test]
    fn fills_only_what_is_unset() {
        let spec = LoadBalancerPoolSpec {
            provider: Some(Provider::Anthropic),
            api_key_pool_ref: Some(LocalObjectRef { name: "k".into() }),
            ..Default::default()
        };
        let out = apply(&spec);
        assert_eq!(out.backends[0].endpoint, "https://api.anthropic.com");
        assert_eq!(
            out.auth.as_ref().unwrap().header.as_deref(),
            Some("x-api-key")
        );
        assert_eq!(out.routes[0].path_prefix.as_deref(), Some("/v1/messages"));

        let explicit = LoadBalancerPoolSpec {
            routes: vec![RouteSpec {
                model: Some("claude-*".into()),
                ..Default::default()
            }],
            backends: vec![BackendSpec {
                name: "mine".into(),
                endpoint: "http://127.0.0.1:1".into(),
                ..Default::default()
            }],
            ..spec
        };
        let out = apply(&explicit);
        assert_eq!(out.backends.len(), 1);
        assert_eq!(out.backends[0].name, "mine");
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.routes[0].model.as_deref(), Some("claude-*"));
    }

    #[test]
    fn openai_compatible_brings_no_endpoint() {
        let out = apply(&LoadBalancerPoolSpec {
            provider: Some(Provider::OpenaiCompatible),
            ..Default::default()
        });
        assert!(out.backends.is_empty());
        assert!(out.routes.is_empty());
    }
}
