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

const TOKEN: &str = "admin-token-seeds-0123456789";

async fn admin_call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    let r = send(method, &format!("{base}{path}"), &h, body.to_string())
        .await
        .unwrap();
    let text = r.text();
    (
        r.status.as_u16(),
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The Tavily balancer's config, as Keyway manifests (what `import --from tavily` prints),
/// pointed at `a` and `b`.
fn tavily_like(a: &str, b: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: tavily-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData: {{key-1: tvly-secret-value-1, key-2: tvly-secret-value-2}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: tavily}}
spec:
  secretRef: {{name: tavily-keys}}
  keys: [{{id: key-1, requestsPerMinute: 60}}, {{id: key-2, requestsPerMinute: 60}}]
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: tavily}}
spec:
  provider: tavily
  apiKeyPoolRef: {{name: tavily}}
  strategy: weightedRoundRobin
  backends:
    - {{name: backend-a, endpoint: "{a}", weight: 1}}
    - {{name: backend-b, endpoint: "{b}", weight: 2}}
"#
    )
}

/// The Tavily and Python-proxy admin calls in their shapes, behind the admin token, editing
/// the file as the native calls do.
#[tokio::test]
async fn the_tavily_admin_calls_edit_the_file_behind_the_token() {
    let a = MockUpstream::start("backend-a").await.unwrap();
    let b = MockUpstream::start("backend-b").await.unwrap();
    let c = MockUpstream::start("backend-c").await.unwrap();
    let p = support::FileProxy::start_with(&tavily_like(&a.url(), &b.url()), |s| {
        s.access.admin_token = Some(keyway_api::secret::SecretValue::new(TOKEN));
    })
    .await;
    let admin = p.admin();

    let (status, health) = admin_call(&admin, Method::GET, "/health", None, "").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["load_balancer"]["tavily_keys_configured"], 2);
    assert_eq!(
        health["load_balancer"]["endpoints"]["tavily"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, stats) = admin_call(&admin, Method::GET, "/stats", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(stats["load_balancer_stats"]["tavily"]["keys_count"], 2);
    let (_, pool) = admin_call(&admin, Method::GET, "/pool", None, "").await;
    assert_eq!(pool["api_keys"][0]["id"], "key-1");
    assert_eq!(pool["api_keys"][0]["quota_per_minute"], 60);

    // Writes need the token.
    let add = r#"{"id":"key-3","value":"tvly-new-value-3","quota_per_minute":100}"#;
    let (status, _) = admin_call(&admin, Method::POST, "/api-keys/add", None, add).await;
    assert_eq!(status, 401);
    let (status, _) = admin_call(
        &admin,
        Method::POST,
        "/api-keys/add",
        Some("wrong-token-0123456"),
        add,
    )
    .await;
    assert_eq!(status, 401);
    let (status, r) = admin_call(&admin, Method::POST, "/api-keys/add", Some(TOKEN), add).await;
    assert_eq!(status, 200, "{r}");
    let (_, pool) = admin_call(&admin, Method::GET, "/pool", None, "").await;
    let k3 = pool["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "key-3")
        .cloned()
        .unwrap();
    assert_eq!(k3["quota_per_minute"], 100, "{pool}");
    let file = std::fs::read_to_string(&p.path).unwrap();
    assert!(file.contains("requestsPerMinute: 100"), "{file}");
    let (status, _) = admin_call(&admin, Method::POST, "/api-keys/add", Some(TOKEN), add).await;
    assert_eq!(status, 409, "the id exists");

    // Rotate one key's value: the new value goes upstream.
    let (status, r) = admin_call(
        &admin,
        Method::POST,
        "/api-keys/rotate",
        Some(TOKEN),
        r#"{"id":"key-1","value":"tvly-rotated-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = admin_call(&admin, Method::POST, "/api-keys/rotate", Some(TOKEN), "{}").await;
    assert_eq!(status, 400);
    assert!(r.to_string().contains("\\\"id\\\""), "{r}");

    // Add and remove a server in Tavily's shape.
    let port = c.addr().port();
    let (status, r) = admin_call(
        &admin,
        Method::POST,
        "/servers/add",
        Some(TOKEN),
        &format!(r#"{{"name":"backend-c","host":"127.0.0.1","port":{port},"weight":1}}"#),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    for _ in 0..8 {
        let (status, text) = post(&p.url(), "/search", &[], r#"{"query":"q"}"#).await;
        assert_eq!(status, 200, "{text}");
    }
    assert!(c.request_count() > 0, "the added server takes traffic");
    let mut keys: Vec<String> = [&a, &b, &c]
        .iter()
        .flat_map(|m| m.received_keys())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys,
        ["tvly-new-value-3", "tvly-rotated-1", "tvly-secret-value-2"],
        "keys rotate, with the new and the rotated value"
    );
    let (status, _) = admin_call(
        &admin,
        Method::POST,
        "/servers/remove",
        Some(TOKEN),
        r#"{"name":"backend-c"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let before = c.request_count();
    for _ in 0..4 {
        post(&p.url(), "/search", &[], r#"{"query":"q"}"#).await;
    }
    assert_eq!(c.request_count(), before, "the removed server takes none");

    // Nothing an alias answers carries a key value.
    for path in [
        "/health",
        "/stats",
        "/pool",
        "/load-balancer/status",
        "/load-balancer/config",
    ] {
        let (status, v) = admin_call(&admin, Method::GET, path, None, "").await;
        assert_eq!(status, 200, "{path}: {v}");
        let text = v.to_string();
        assert!(!text.contains("tvly-"), "{path}: {text}");
    }
}

/// The Workers balancer's status, config and reset, under its secret prefix.
#[tokio::test]
async fn the_workers_status_config_and_reset() {
    let up = MockUpstream::start("claude").await.unwrap();
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: k, labels: {{keyway.dev/api-keys: "true"}}}}
stringData: {{key-1: sk-ant-workers-1, key-2: sk-ant-workers-2}}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: claude}}
spec: {{secretRef: {{name: k}}, selection: timeWindow, timeWindowSeconds: 300}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: claude}}
spec:
  provider: anthropic
  apiKeyPoolRef: {{name: claude}}
  backends: [{{name: mock, endpoint: "{}"}}]
"#,
        up.url()
    );
    let p = support::FileProxy::start_with(&yaml, |s| {
        s.access.admin_token = Some(keyway_api::secret::SecretValue::new(TOKEN));
    })
    .await;
    let body =
        r#"{"model":"claude-3-sonnet","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    for _ in 0..3 {
        assert_eq!(post(&p.url(), "/v1/messages", &[], body).await.0, 200);
    }
    let base = p.admin();
    let path = "/6f1c2a9e/lb/v1/load-balancer/status";
    let (status, s) = admin_call(&base, Method::GET, path, None, "").await;
    assert_eq!(status, 200, "{s}");
    let lb = &s["loadBalancer"];
    assert_eq!(lb["enabled"], true);
    assert_eq!(lb["totalKeys"], 2);
    assert_eq!(lb["activeKeys"], 2);
    assert_eq!(lb["strategy"], "time-window");
    assert_eq!(lb["stats"]["totalRequests"], 3);
    assert_eq!(lb["stats"]["successfulRequests"], 3);
    assert!(lb["stats"]["lastUsed"].as_u64().unwrap() > 0);
    assert!(
        lb["stats"]["apiKeyStats"]["key-1"]["requests"]
            .as_u64()
            .is_some()
    );
    assert!(!s.to_string().contains("sk-ant-workers"), "{s}");
    let (_, c) = admin_call(
        &base,
        Method::GET,
        "/x/lb/v1/load-balancer/config",
        None,
        "",
    )
    .await;
    assert_eq!(c["strategy"], "time-window");
    assert_eq!(c["windowSize"], 5);

    // Reset: behind the token.
    let reset = "/6f1c2a9e/lb/v1/load-balancer/reset";
    assert_eq!(
        admin_call(&base, Method::POST, reset, None, "").await.0,
        401
    );
    let (status, r) = admin_call(&base, Method::POST, reset, Some(TOKEN), "").await;
    assert_eq!(status, 200, "{r}");
    let (status, _) = admin_call(&base, Method::POST, "/reset", Some(TOKEN), "").await;
    assert_eq!(status, 200);
}

/// In quick-start mode the alias writes are refused like the native ones (no file to edit),
/// and an admin port beyond loopback keeps its reads behind the token.
#[tokio::test]
async fn alias_writes_follow_the_native_mode_rules() {
    let qs = keyway_proxy::quickstart::QuickStart::from_env(&env(vec![(
        "KEYWAY_TAVILY_KEYS",
        "tvly-a".into(),
    )]))
    .unwrap()
    .unwrap();
    let mut s = support::settings(Source::QuickStart(qs.snapshot().unwrap()));
    s.access.admin_token = Some(keyway_api::secret::SecretValue::new(TOKEN));
    s.admin_listen = "0.0.0.0:0".parse().unwrap();
    let running = keyway_proxy::start(s, prometheus::Registry::new())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", running.admin_addr.port());
    let (status, r) = admin_call(
        &base,
        Method::POST,
        "/api-keys/add",
        Some(TOKEN),
        r#"{"id":"k","value":"v"}"#,
    )
    .await;
    assert_eq!(status, 409, "{r}");
    assert!(r.to_string().contains("export-config"), "{r}");
    for path in ["/health", "/stats", "/pool", "/load-balancer/status"] {
        let (status, _) = admin_call(&base, Method::GET, path, None, "").await;
        assert_eq!(status, 401, "{path} without the token beyond loopback");
        let (status, v) = admin_call(&base, Method::GET, path, Some(TOKEN), "").await;
        assert_eq!(status, 200, "{path}: {v}");
    }
}

// ---- keyway-proxy import: each tool's own config, imported, serving the mock upstream ----

/// Imports `input` (a config file's text) and checks the result as `keyway-proxy check` does.
fn import(tool: &str, input: &str, strip: Option<&str>) -> String {
    use keyway_proxy::import::{Input, Tool, import};
    let imported = import(Tool::parse(tool).unwrap(), Input::File(input), strip).unwrap();
    let yaml = imported.to_yaml();
    let errors = keyway_api::manifest::Manifests::check(&yaml, &|_| None);
    assert!(errors.is_empty(), "{errors:?}\n{yaml}");
    assert!(
        keyway_proxy::config::file::parse(&yaml).is_ok(),
        "the standalone proxy reads it: {yaml}"
    );
    yaml
}

async fn backend_of(reply: &keyway_testkit::client::Reply) -> String {
    reply
        .headers
        .get("x-keyway-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The Tavily balancer's README config (two servers weighted 1:2, two keys with quotas,
/// weighted round robin, health checks): weights honoured, keys rotated within their quotas,
/// an MCP session kept on its backend.
#[tokio::test]
async fn tavily_config_imported_serves_with_its_weights_quotas_and_sessions() {
    let a = MockUpstream::start("backend-a").await.unwrap();
    let b = MockUpstream::start("backend-b").await.unwrap();
    let config = format!(
        r#"servers:
  - name: backend-a
    host: 127.0.0.1
    port: {pa}
    weight: 1
  - name: backend-b
    host: 127.0.0.1
    port: {pb}
    weight: 2

api_keys:
  - id: key-1
    value: tvly-import-value-1
    quota_per_minute: 60
  - id: key-2
    value: tvly-import-value-2
    quota_per_minute: 3

strategy: weighted_round_robin
health:
  interval_ms: 1000
  timeout_ms: 2000
  unhealthy_threshold: 3
  http_path: /v1/models
logging:
  level: info
  format: json
metrics:
  enabled: true
  port: 9100
security:
  tls:
    enabled: false
  allowed_sources:
    - 0.0.0.0/0
"#,
        pa = a.addr().port(),
        pb = b.addr().port()
    );
    let yaml = import("tavily", &config, None);
    assert!(
        yaml.contains("# weighted_round_robin -> weightedRoundRobin"),
        "{yaml}"
    );
    assert!(yaml.contains("# logging.level: info"), "{yaml}");
    let p = support::FileProxy::start(&yaml).await;
    for _ in 0..12 {
        let (status, text) = post(&p.url(), "/search", &[], r#"{"query":"keyway"}"#).await;
        assert_eq!(status, 200, "{text}");
    }
    let searches = |m: &MockUpstream| m.requests().iter().filter(|r| r.path == "/search").count();
    assert_eq!((searches(&a), searches(&b)), (4, 8), "weights 1:2");
    let keys: Vec<String> = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .filter(|r| r.path == "/search")
        .filter_map(|r| r.key)
        .collect();
    let n = |k: &str| keys.iter().filter(|x| *x == k).count();
    assert_eq!(
        n("tvly-import-value-2"),
        3,
        "key-2 stops at its quota: {keys:?}"
    );
    assert_eq!(n("tvly-import-value-1"), 9, "{keys:?}");

    // An MCP session stays on the backend that opened it (the other would answer 404).
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    let r = send(
        Method::POST,
        &format!("{}/mcp", p.url()),
        &[("content-type", "application/json")],
        init.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let sid = r
        .headers
        .get("mcp-session-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let opened_on = backend_of(&r).await;
    for i in 2..6 {
        let call = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/list"}}"#);
        let r = send(
            Method::POST,
            &format!("{}/mcp", p.url()),
            &[
                ("content-type", "application/json"),
                ("mcp-session-id", &sid),
            ],
            call,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(backend_of(&r).await, opened_on);
    }
}

/// The Workers balancer's variables (a `.env` file) with its secret URL prefix: weighted keys,
/// a rate-limited key failed over to the next, its status endpoint under the same prefix.
#[tokio::test]
async fn workers_env_imported_serves_weighted_keys_under_the_secret_prefix() {
    let up = MockUpstream::start("claude").await.unwrap();
    let env_file = format!(
        "LOAD_BALANCER_ENABLED=true\n\
         LOAD_BALANCER_API_KEYS=sk-1234567890abcdef:1,sk-abcdef1234567890:2,sk-fedcba0987654321:1\n\
         LOAD_BALANCER_STRATEGY=weighted\n\
         KEYWAY_ENDPOINTS={{\"anthropic\":[\"{}\"]}}\n\
         CLOUDFLARE_ACCOUNT_ID=abc\n",
        up.url()
    );
    let uuid = "3d0c5e7a-1f2b-4a6c-9d8e-7f6a5b4c3d2e";
    let yaml = import("workers", &env_file, Some(&format!("/{uuid}/lb")));
    assert!(yaml.contains("Not imported"), "{yaml}");
    assert!(yaml.contains("CLOUDFLARE_ACCOUNT_ID"), "{yaml}");
    let p = support::FileProxy::start(&yaml).await;
    let body = r#"{"model":"claude-3-sonnet","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":100}"#;
    let path = format!("/{uuid}/lb/v1/messages");
    for _ in 0..40 {
        let (status, text) = post(&p.url(), &path, &[], body).await;
        assert_eq!(status, 200, "{text}");
    }
    assert!(up.requests().iter().all(|r| r.path == "/v1/messages"));
    let keys = up.received_keys();
    let n = |k: &str| keys.iter().filter(|x| *x == k).count();
    assert_eq!(
        (
            n("sk-1234567890abcdef"),
            n("sk-abcdef1234567890"),
            n("sk-fedcba0987654321")
        ),
        (10, 20, 10)
    );

    // The heaviest key is rate limited: requests fail over to the others, none is lost.
    up.set_key_behavior(
        "sk-abcdef1234567890",
        Some(keyway_testkit::Behavior::rate_limited(60)),
    );
    up.clear();
    for _ in 0..10 {
        let (status, text) = post(&p.url(), &path, &[], body).await;
        assert_eq!(status, 200, "{text}");
    }
    let served: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() != Some("sk-abcdef1234567890"))
        .collect();
    assert_eq!(served.len(), 10);

    let (status, s) = admin_call(
        &p.admin(),
        Method::GET,
        &format!("/{uuid}/lb/v1/load-balancer/status"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["loadBalancer"]["totalKeys"], 3);
    assert_eq!(s["loadBalancer"]["strategy"], "weighted");
    assert_eq!(
        s["loadBalancer"]["activeKeys"], 2,
        "the limited key cools: {s}"
    );
}

/// The Python LM proxy's `.env` from its README, endpoints pointed at mocks (ending in /v1).
#[tokio::test]
async fn lm_proxy_env_imported_serves_both_providers() {
    let oai = MockUpstream::start("openai").await.unwrap();
    let ant = MockUpstream::start("anthropic").await.unwrap();
    let env_file = format!(
        r#"# .env file
OPENAI_API_KEYS="sk-key1,sk-key2"
ANTHROPIC_API_KEYS="sk-ant-key1"

SERVICE_ENDPOINTS='{{
  "openai": [
    "{}/v1"
  ],
  "anthropic": [
    "{}/v1"
  ]
}}'
LOG_LEVEL=DEBUG
"#,
        oai.url(),
        ant.url()
    );
    let yaml = import("lm-proxy", &env_file, None);
    assert!(yaml.contains("KEYWAY_LOG=debug"), "{yaml}");
    let p = support::FileProxy::start(&yaml).await;
    let gpt = r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..4 {
        assert_eq!(
            post(&p.url(), "/v1/chat/completions", &[], gpt).await.0,
            200
        );
    }
    let claude = r#"{"model":"claude-3-sonnet-20240229","max_tokens":10,"messages":[{"role":"user","content":"Hello!"}]}"#;
    let (status, text) = post(&p.url(), "/v1/messages", &[], claude).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        oai.requests()
            .iter()
            .all(|r| r.path == "/v1/chat/completions")
    );
    assert_eq!(
        oai.received_keys(),
        ["sk-key1", "sk-key2", "sk-key1", "sk-key2"],
        "round robin"
    );
    let r = &ant.requests()[0];
    assert_eq!(
        (r.path.as_str(), r.key.as_deref()),
        ("/v1/messages", Some("sk-ant-key1"))
    );
}

fn alyx_failover(primary: &str, secondary: &str, evacuate: bool) -> String {
    format!(
        r#"# Disable multi-cluster mode (default)
multiClusterMode:
  enabled: false

primary:
  endpoint: "{primary}"
  healthCheck: "{primary}/v1/models"
  hostHeader: "model-zq8mmvyw.api.baseten.co"

secondary:
  endpoint: "{secondary}"
  healthCheck: "{secondary}/v1/models"
  hostHeader: "model-e3moo29q.api.baseten.co"

healthCheckIntervalSeconds: 1
healthCheckFailThreshold: 2
listenAddress: ":8080"
evacuatePrimary: {evacuate}
"#
    )
}

/// Alyx's primary/secondary config: the primary serves with its hostHeader; evacuatePrimary
/// moves traffic to the secondary; a primary failing its health checks fails over.
#[tokio::test]
async fn alyx_failover_config_imported_evacuates_and_fails_over() {
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let yaml = import(
        "alyx",
        &alyx_failover(&primary.url(), &secondary.url(), false),
        None,
    );
    assert!(yaml.contains("mode: failover"), "{yaml}");
    let p = support::FileProxy::start(&yaml).await;
    let served_by = || async {
        let r = keyway_testkit::client::chat(&p.url(), &[("authorization", "Bearer client-own")])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        backend_of(&r).await
    };
    assert_eq!(served_by().await, "primary");
    let req = primary.requests().pop().unwrap();
    assert_eq!(req.header("host"), Some("model-zq8mmvyw.api.baseten.co"));
    assert_eq!(
        req.key.as_deref(),
        Some("client-own"),
        "the client's credential passes"
    );

    // evacuatePrimary: true, as an Alyx user flips it in the ConfigMap.
    p.rewrite(&import(
        "alyx",
        &alyx_failover(&primary.url(), &secondary.url(), true),
        None,
    ));
    keyway_testkit::eventually(std::time::Duration::from_secs(10), "evacuated", || async {
        served_by().await == "secondary"
    })
    .await;
    p.rewrite(&import(
        "alyx",
        &alyx_failover(&primary.url(), &secondary.url(), false),
        None,
    ));
    keyway_testkit::eventually(
        std::time::Duration::from_secs(10),
        "back on primary",
        || async { served_by().await == "primary" },
    )
    .await;

    // The primary fails its health checks: the secondary takes traffic.
    // Until the health checks say so (2 probes 1 s apart), the primary's 503s pass through.
    primary.set_behavior(keyway_testkit::Behavior::status(503));
    keyway_testkit::eventually(
        std::time::Duration::from_secs(15),
        "failed over",
        || async {
            let r = keyway_testkit::client::chat(&p.url(), &[]).await.unwrap();
            r.status == 200 && backend_of(&r).await == "secondary"
        },
    )
    .await;
    assert_eq!(served_by().await, "secondary");
    let req = secondary.requests().pop().unwrap();
    assert_eq!(req.header("host"), Some("model-e3moo29q.api.baseten.co"));
}

/// Alyx's multi-cluster config: a user sticks to one cluster (KV-cache affinity), and moves
/// when the model becomes unhealthy there (deep health).
#[tokio::test]
async fn alyx_multi_cluster_config_imported_keeps_users_and_moves_them_off_unhealthy_clusters() {
    let c1 = MockUpstream::start("cluster1").await.unwrap();
    let c2 = MockUpstream::start("cluster2").await.unwrap();
    let config = format!(
        r#"multiClusterMode:
  enabled: true
  userIDHeader: "user-id"
  tpmUpdateIntervalSeconds: 30
  clusters:
    - name: "cluster1"
      endpoint: "{c1}"
      healthCheck: "{c1}/health/deep"
      hostHeader: "cluster1.example.com"
    - name: "cluster2"
      endpoint: "{c2}"
      healthCheck: "{c2}/health/deep"
      hostHeader: "cluster2.example.com"
  balanceAlgorithm:
    overloadedCapacityRatio: 0.95
  redis:
    enabled: false
healthCheckIntervalSeconds: 1
healthCheckFailThreshold: 3
listenAddress: ":8080"
metricsListenAddress: ":9090"
primary:
  endpoint: "https://primary.example.com"
  healthCheck: "https://primary.example.com/health"
secondary:
  endpoint: "https://secondary.example.com"
  healthCheck: "https://secondary.example.com/health"
"#,
        c1 = c1.url(),
        c2 = c2.url()
    );
    let yaml = import("alyx", &config, None);
    assert!(yaml.contains("tpmUpdateIntervalSeconds 30"), "{yaml}");
    let p = support::FileProxy::start(&yaml).await;
    let user = |u: &'static str| {
        let url = p.url();
        async move {
            let r = keyway_testkit::client::chat(&url, &[("user-id", u)])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            backend_of(&r).await
        }
    };
    // Wait for deep health to be read on both clusters.
    keyway_testkit::eventually(
        std::time::Duration::from_secs(10),
        "deep health read",
        || async {
            let (_, s) = admin_call(&p.admin(), Method::GET, "/status", None, "").await;
            s["pools"][0]["backends"].as_array().is_some_and(|b| {
                b.iter()
                    .all(|b| !b["models"].as_array().unwrap().is_empty())
            })
        },
    )
    .await;
    // Alyx's "logging current cluster state" line: clusters, then modelState per model.
    let states = keyway_proxy::cluster_state::states(&p.proxy.dataplane.view());
    assert_eq!(states.len(), 1);
    let (pool, state) = &states[0];
    assert_eq!(pool, "default/alyx");
    for c in ["cluster1", "cluster2"] {
        assert_eq!(
            state[c]["modelState"][keyway_testkit::mock::DEFAULT_MODEL]["capacity"],
            100.0,
            "{state}"
        );
    }
    let first = user("alice").await;
    for _ in 0..5 {
        assert_eq!(user("alice").await, first, "alice stays on her cluster");
    }
    let mut seen = std::collections::HashSet::new();
    for u in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"] {
        seen.insert(user(u).await);
    }
    assert_eq!(seen.len(), 2, "users spread over both clusters");

    // Her model turns unhealthy on her cluster: she moves, and stays on the new one.
    let (mine, other) = if first == "cluster1" {
        (&c1, "cluster2")
    } else {
        (&c2, "cluster1")
    };
    mine.set_deep_health(serde_json::json!({"models": [{
        "name": keyway_testkit::mock::DEFAULT_MODEL,
        "payload": {"healthy": false, "capacity": 100, "consumption": 0},
    }]}));
    keyway_testkit::eventually(
        std::time::Duration::from_secs(10),
        "alice moved",
        || async { user("alice").await == other },
    )
    .await;
    assert_eq!(user("alice").await, other);
}

// ---- Alyx's metric names: the recording rules, evaluated by a real Prometheus ----

/// A real Prometheus (Debian's `/usr/bin/prometheus`, installed by `e2e/tools/install.sh
/// prometheus`) scraping `target` every second with `rules` loaded; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str, rules: &str) -> Prometheus {
        let binary = std::path::Path::new("/usr/bin/prometheus");
        if !binary.is_file() {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/tools/install.sh");
            let ok = std::process::Command::new("bash")
                .args([script, "prometheus"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "/usr/bin/prometheus is missing and {script} prometheus failed"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yaml]\n\
                 scrape_configs:\n  - job_name: keyway\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", keyway_testkit::free_port());
        let child = std::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.url);
        keyway_testkit::eventually(
            std::time::Duration::from_secs(30),
            "prometheus ready",
            || {
                let ready = ready.clone();
                async move {
                    keyway_testkit::client::get(&ready)
                        .await
                        .is_ok_and(|r| r.status == 200)
                }
            },
        )
        .await;
        p
    }

    /// The instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let Ok(r) =
            keyway_testkit::client::get(&format!("{}/api/v1/query?query={q}", self.url)).await
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The chart's Alyx recording rules, loaded by a real Prometheus scraping a proxy that serves
/// an imported Alyx multi-cluster config: Alyx's series appear with Alyx's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alyx_metric_names_are_recorded_by_prometheus_with_alyx_labels() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/keyway/files/alyx-compat.rules.yaml"
    ))
    .unwrap();
    let c1 = MockUpstream::start("cluster1").await.unwrap();
    let c2 = MockUpstream::start("cluster2").await.unwrap();
    let config = format!(
        "multiClusterMode:\n  enabled: true\n  userIDHeader: user-id\n  clusters:\n\
         \x20   - {{name: cluster1, endpoint: \"{c1}\", healthCheck: \"{c1}/health/deep\"}}\n\
         \x20   - {{name: cluster2, endpoint: \"{c2}\", healthCheck: \"{c2}/health/deep\"}}\n\
         healthCheckIntervalSeconds: 1\nhealthCheckFailThreshold: 3\n",
        c1 = c1.url(),
        c2 = c2.url()
    );
    let p = support::FileProxy::start(&import("alyx", &config, None)).await;
    let prom = Prometheus::start(&p.proxy.admin_addr.to_string(), &rules).await;
    let users = ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for u in users {
            let r = keyway_testkit::client::chat(&p.url(), &[("user-id", u)])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let requests = prom
            .query(r#"alyx_lb_http_requests_total{code="200"}"#)
            .await;
        let targets: std::collections::BTreeSet<String> = requests
            .iter()
            .filter_map(|s| s["metric"]["target"].as_str().map(str::to_string))
            .collect();
        let healthy = prom
            .query(r#"alyx_lb_backend_healthy{target="cluster1"}"#)
            .await;
        let tpm = prom.query("alyx_lb_cluster_tpm_total").await;
        let tpm_names: std::collections::BTreeSet<String> = tpm
            .iter()
            .filter(|s| value(s) > 0.0)
            .filter_map(|s| s["metric"]["cluster_name"].as_str().map(str::to_string))
            .collect();
        let imbalance = prom.query("alyx_lb_tpm_imbalance_ratio").await;
        let checks = prom
            .query(r#"alyx_lb_health_checks_total{target="cluster2"}"#)
            .await;
        let duration = prom
            .query("alyx_lb_http_request_duration_seconds_count")
            .await;
        let seen = format!(
            "targets {targets:?}, healthy {healthy:?}, tpm {tpm:?}, imbalance {imbalance:?}, checks {checks:?}, duration {duration:?}"
        );
        let done = targets.contains("cluster1")
            && targets.contains("cluster2")
            && healthy.first().is_some_and(|s| value(s) == 1.0)
            && tpm_names.len() == 2
            && imbalance
                .first()
                .is_some_and(|s| (0.0..=1.0).contains(&value(s)))
            && !checks.is_empty()
            && duration.first().is_some_and(|s| value(s) > 0.0);
        if done {
            break;
        }
        if std::time::Instant::now() > deadline {
            let metrics = keyway_testkit::client::get(&format!("{}/metrics", p.admin()))
                .await
                .map(|r| r.text())
                .unwrap_or_default();
            let health: Vec<&str> = metrics.lines().filter(|l| l.contains("health")).collect();
            panic!("Alyx series incomplete: {seen}\nthe proxy's health series: {health:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Alyx's label names, not Keyway's.
    let requests = prom.query("alyx_lb_http_requests_total").await;
    for s in &requests {
        let m = &s["metric"];
        assert!(m.get("backend").is_none() && m.get("pool").is_none(), "{s}");
        assert!(m.get("code").is_some() && m.get("target").is_some(), "{s}");
    }
}
