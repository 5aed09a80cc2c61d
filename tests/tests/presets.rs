//! Provider presets (`spec.provider`) against the mock upstream: where the key arrives, the
//! headers a provider needs, routes, and model-prefix routing across two providers.

mod support;

use http::Method;
use keyway_testkit::MockUpstream;
use keyway_testkit::client::{get, send};
use support::FileProxy;

/// One provider pool pointed at the mock (an explicit backend overrides the public endpoint),
/// with `extra` spliced into its spec.
fn provider_pool(name: &str, provider: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: {name}-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData:
  {name}-1: "sk-{name}-value-1"
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: {name}}}
spec:
  secretRef: {{name: {name}-keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: {name}}}
spec:
  provider: {provider}
  apiKeyPoolRef: {{name: {name}}}
  backends: [{{name: mock, endpoint: "{upstream}"}}]
{extra}"#
    )
}

async fn post(url: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = send(Method::POST, &format!("{url}{path}"), &h, body.to_string())
        .await
        .unwrap();
    (r.status.as_u16(), r.text())
}

#[tokio::test]
async fn openai_preset_uses_bearer_and_its_routes() {
    let up = MockUpstream::start("openai").await.unwrap();
    let p = FileProxy::start(&provider_pool("openai", "openai", &up.url(), "")).await;
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, text) = post(&p.url(), "/v1/chat/completions", &[], body).await;
    assert_eq!(status, 200, "{text}");
    let req = up.requests().pop().unwrap();
    assert_eq!(
        req.header("authorization"),
        Some("Bearer sk-openai-value-1")
    );
    for path in ["/v1/embeddings", "/v1/responses"] {
        assert_eq!(post(&p.url(), path, &[], "{}").await.0, 200, "{path}");
    }
    // Not a preset route: nobody claims it.
    assert_eq!(
        get(&format!("{}/other", p.url())).await.unwrap().status,
        404
    );
}

#[tokio::test]
async fn anthropic_preset_uses_x_api_key_and_adds_the_version_header() {
    let up = MockUpstream::start("anthropic").await.unwrap();
    let p = FileProxy::start(&provider_pool("claude", "anthropic", &up.url(), "")).await;
    let body = r#"{"model":"claude-sonnet-4","max_tokens":5,"messages":[{"role":"user","content":"hi there"}]}"#;
    let (status, text) = post(
        &p.url(),
        "/v1/messages",
        &[("x-api-key", "client-own")],
        body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let req = up.requests().pop().unwrap();
    assert_eq!(req.header("x-api-key"), Some("sk-claude-value-1"));
    assert!(req.header("authorization").is_none());
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));

    // The client's own version is kept.
    let (status, _) = post(
        &p.url(),
        "/v1/messages",
        &[("anthropic-version", "2024-01-01")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let req = up.requests().pop().unwrap();
    assert_eq!(req.header("anthropic-version"), Some("2024-01-01"));

    // Anthropic's usage shape and rate-limit headers are read: tokens count, quota is known.
    let status: serde_json::Value =
        serde_json::from_str(&get(&format!("{}/status", p.admin())).await.unwrap().text()).unwrap();
    let key = &status["keyPools"][0]["keys"][0];
    assert_eq!(key["id"], "claude-1");
    assert!(key["tokens"].as_u64().unwrap() > 0, "{key}");
    assert!(!status.to_string().contains("sk-claude-value-1"));
}

#[tokio::test]
async fn gemini_preset_uses_x_goog_api_key() {
    let up = MockUpstream::start("gemini").await.unwrap();
    let p = FileProxy::start(&provider_pool("gemini", "gemini", &up.url(), "")).await;
    let (status, text) = post(
        &p.url(),
        "/v1beta/models/gemini-2.0-flash:generateContent",
        &[],
        r#"{"contents":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let req = up.requests().pop().unwrap();
    assert_eq!(req.header("x-goog-api-key"), Some("sk-gemini-value-1"));
    assert!(req.header("authorization").is_none());
}

#[tokio::test]
async fn tavily_preset_uses_bearer_on_search_extract_and_mcp() {
    let up = MockUpstream::start("tavily").await.unwrap();
    let p = FileProxy::start(&provider_pool("tavily", "tavily", &up.url(), "")).await;
    for path in ["/search", "/extract"] {
        let (status, text) = post(&p.url(), path, &[], r#"{"query":"x"}"#).await;
        assert_eq!(status, 200, "{path}: {text}");
        let req = up.requests().pop().unwrap();
        assert_eq!(
            req.header("authorization"),
            Some("Bearer sk-tavily-value-1")
        );
    }
}

#[tokio::test]
async fn explicit_auth_overrides_the_preset() {
    let up = MockUpstream::start("tavily").await.unwrap();
    let extra = "  auth: {type: bodyField, field: api_key}\n";
    let p = FileProxy::start(&provider_pool("tavily", "tavily", &up.url(), extra)).await;
    let (status, text) = post(&p.url(), "/search", &[], r#"{"query":"x"}"#).await;
    assert_eq!(status, 200, "{text}");
    let req = up.requests().pop().unwrap();
    assert!(req.header("authorization").is_none());
    assert_eq!(
        req.json().unwrap()["api_key"],
        serde_json::json!("sk-tavily-value-1")
    );
}

#[tokio::test]
async fn model_prefix_routes_across_two_provider_pools() {
    let openai = MockUpstream::start("openai").await.unwrap();
    let anthropic = MockUpstream::start("anthropic").await.unwrap();
    let yaml = format!(
        "{}\n---\n{}",
        provider_pool(
            "openai",
            "openai",
            &openai.url(),
            "  routes: [{model: \"gpt-*\"}]\n"
        ),
        provider_pool(
            "claude",
            "openaiCompatible",
            &anthropic.url(),
            "  routes: [{model: \"claude-*\"}]\n"
        ),
    );
    let p = FileProxy::start(&yaml).await;
    for (model, want) in [("gpt-4o", "openai"), ("claude-3-5-sonnet", "claude")] {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let r = send(
            Method::POST,
            &format!("{}/v1/chat/completions", p.url()),
            &[("content-type", "application/json")],
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-keyway-pool"),
            Some(format!("default/{want}").as_str())
        );
    }
    assert_eq!(openai.request_count(), 1);
    assert_eq!(anthropic.request_count(), 1);
    assert_eq!(
        openai.requests()[0].header("authorization"),
        Some("Bearer sk-openai-value-1")
    );
}
