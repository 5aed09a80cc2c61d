//! Coming from the four tools Keyway replaces (`../shared/seeds/`): their variables, paths,
//! admin calls and config files, served against the mock upstream with the behaviour each
//! tool documents.

mod support;

use http::Method;
use keyway_proxy::Source;
use keyway_testkit::MockUpstream;
use keyway_testkit::client::send;

async fn post(url: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = send(Method::POST, &format!("{url}{path}"), &h, body.to_string())
        .await
        .unwrap();
    (r.status.as_u16(), r.text())
}

fn env(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

async fn start(source: Source) -> keyway_proxy::Running {
    keyway_proxy::start(support::settings(source), prometheus::Registry::new())
        .await
        .unwrap()
}

/// The Python LM proxy's `.env`, with its endpoints (ending in `/v1`) pointed at two mocks:
/// both key lists serve, no `/v1/v1`, keys and endpoints rotate, and the model picks the
/// provider.
#[tokio::test]
async fn the_python_proxys_environment_serves_both_providers_by_model() {
    let oai_a = MockUpstream::start("oai-a").await.unwrap();
    let oai_b = MockUpstream::start("oai-b").await.unwrap();
    let ant = MockUpstream::start("anthropic").await.unwrap();
    let endpoints = format!(
        r#"{{"openai":["{}/v1","{}/v1"],"anthropic":["{}/v1"]}}"#,
        oai_a.url(),
        oai_b.url(),
        ant.url()
    );
    let qs = keyway_proxy::quickstart::QuickStart::from_env(&env(vec![
        ("OPENAI_API_KEYS", "sk-key1,sk-key2,sk-key3".into()),
        ("ANTHROPIC_API_KEYS", "sk-ant-key1,sk-ant-key2".into()),
        ("SERVICE_ENDPOINTS", endpoints),
    ]))
    .unwrap()
    .unwrap();
    let p = start(Source::QuickStart(qs.snapshot().unwrap())).await;
    let url = format!("http://{}", p.addr);

    let gpt = r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..6 {
        let (status, text) = post(&url, "/v1/chat/completions", &[], gpt).await;
        assert_eq!(status, 200, "{text}");
    }
    let oai: Vec<_> = oai_a
        .requests()
        .into_iter()
        .chain(oai_b.requests())
        .collect();
    assert_eq!(oai.len(), 6);
    assert_eq!(oai_a.request_count(), 3, "endpoints rotate");
    for r in &oai {
        assert_eq!(
            r.path, "/v1/chat/completions",
            "the endpoint's /v1 is not doubled"
        );
    }
    let mut keys: Vec<_> = oai.iter().filter_map(|r| r.key.clone()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "sk-key1", "sk-key1", "sk-key2", "sk-key2", "sk-key3", "sk-key3"
        ],
        "keys rotate"
    );

    // Anthropic's keys are not dropped: /v1/messages serves with them.
    let claude = r#"{"model":"claude-3-sonnet-20240229","max_tokens":10,"messages":[{"role":"user","content":"Hello!"}]}"#;
    let (status, text) = post(&url, "/v1/messages", &[], claude).await;
    assert_eq!(status, 200, "{text}");
    // And claude-* on the OpenAI-style path goes to Anthropic too (model-prefix routing).
    let (status, text) = post(&url, "/v1/chat/completions", &[], claude).await;
    assert_eq!(status, 200, "{text}");
    let reqs = ant.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/messages");
    assert_eq!(reqs[1].path, "/v1/chat/completions");
    assert_eq!(reqs[0].key.as_deref(), Some("sk-ant-key1"));
    assert_eq!(reqs[1].key.as_deref(), Some("sk-ant-key2"));
    assert_eq!(oai_a.request_count() + oai_b.request_count(), 6);
}

/// The Workers balancer's variables: weighted keys (`key:weight`) in their proportions.
#[tokio::test]
async fn the_workers_variables_serve_weighted_keys() {
    let up = MockUpstream::start("claude").await.unwrap();
    let qs = keyway_proxy::quickstart::QuickStart::from_env(&env(vec![
        ("LOAD_BALANCER_ENABLED", "true".into()),
        (
            "LOAD_BALANCER_API_KEYS",
            "sk-1234567890abcdef:1,sk-abcdef1234567890:2,sk-fedcba0987654321:1".into(),
        ),
        ("LOAD_BALANCER_STRATEGY", "weighted".into()),
        (
            "KEYWAY_ENDPOINTS",
            format!(r#"{{"anthropic":["{}"]}}"#, up.url()),
        ),
    ]))
    .unwrap()
    .unwrap();
    let p = start(Source::QuickStart(qs.snapshot().unwrap())).await;
    let url = format!("http://{}", p.addr);
    let body = r#"{"model":"claude-3-sonnet","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":100}"#;
    for _ in 0..40 {
        let (status, text) = post(&url, "/v1/messages", &[], body).await;
        assert_eq!(status, 200, "{text}");
    }
    let keys = up.received_keys();
    let n = |k: &str| keys.iter().filter(|x| *x == k).count();
    assert_eq!(n("sk-abcdef1234567890"), 20, "{keys:?}");
    assert_eq!(n("sk-1234567890abcdef"), 10, "{keys:?}");
    assert_eq!(n("sk-fedcba0987654321"), 10, "{keys:?}");
}

/// The Workers balancer's URLs carry a secret path prefix (`/:uuid/lb/v1/messages`): a route
/// with `stripPrefix` serves them unchanged, and the upstream sees the provider's own path.
#[tokio::test]
async fn a_route_strips_the_workers_path_prefix() {
    let claude = MockUpstream::start("claude").await.unwrap();
    let gemini = MockUpstream::start("gemini").await.unwrap();
    let uuid = "6f1c2a9e-0d7b-4c55-9a1e-3b8f2d4c7e10";
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: k, labels: {{keyway.dev/api-keys: "true"}}}}
stringData: {{k1: sk-ant-strip-1, g1: AIza-strip-1}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: k}}
spec: {{secretRef: {{name: k}}}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: claude}}
spec:
  provider: anthropic
  apiKeyPoolRef: {{name: k}}
  backends: [{{name: mock, endpoint: "{claude}"}}]
  routes: [{{pathPrefix: /{uuid}/lb/v1/messages, stripPrefix: /{uuid}/lb}}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: gemini}}
spec:
  provider: gemini
  apiKeyPoolRef: {{name: k}}
  backends: [{{name: mock, endpoint: "{gemini}/v1beta"}}]
  routes: [{{pathPrefix: /{uuid}/lb/v1beta/, stripPrefix: /{uuid}/lb}}]
"#,
        claude = claude.url(),
        gemini = gemini.url(),
    );
    let p = support::FileProxy::start(&yaml).await;
    let body = r#"{"model":"claude-3-sonnet","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":100}"#;
    let (status, text) = post(&p.url(), &format!("/{uuid}/lb/v1/messages"), &[], body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(claude.requests()[0].path, "/v1/messages");
    let (status, text) = post(
        &p.url(),
        &format!("/{uuid}/lb/v1beta/models/gemini-pro:generateContent"),
        &[],
        r#"{"contents":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // The endpoint's /v1beta is not doubled either.
    assert_eq!(
        gemini.requests()[0].path,
        "/v1beta/models/gemini-pro:generateContent"
    );
    // Without the secret prefix nothing routes.
    let (status, _) = post(&p.url(), "/v1/messages", &[], body).await;
    assert_eq!(status, 404);
}
