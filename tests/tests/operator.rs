//! Operator experience, in-process against the mock upstream: the admin API (reads, writes
//! that edit the manifest file, refusals in other modes), source CIDRs and client tokens.
//! Every response and the file's exported views are checked for key values.

mod support;

use base64::Engine;
use http::Method;
use keyway_api::model::Cidr;
use keyway_api::secret::SecretValue;
use keyway_proxy::Source;
use keyway_proxy::access::AccessSettings;
use keyway_testkit::client::{Reply, chat, get, send};
use keyway_testkit::{MockUpstream, eventually};
use serde_json::Value;
use std::time::Duration;
use support::{FileProxy, two_backend_pool};

const KEYS: &[(&str, &str)] = &[("key-a", "sk-test-aaaa1111"), ("key-b", "sk-test-bbbb2222")];
const TOKEN: &str = "admin-token-0123456789";
const NEW_KEY: &str = "sk-test-new-cccc3333";
const ROTATED: &str = "sk-test-rotated-dddd4444";

fn with_token(s: &mut keyway_proxy::Settings) {
    s.access.admin_token = Some(SecretValue::new(TOKEN));
}

async fn admin(
    p: &FileProxy,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    send(
        method,
        &format!("{}{path}", p.admin()),
        &h,
        body.to_string(),
    )
    .await
    .unwrap()
}

fn assert_no_values(what: &str, text: &str) {
    for v in KEYS
        .iter()
        .map(|(_, v)| *v)
        .chain([NEW_KEY, ROTATED, TOKEN])
    {
        assert!(!text.contains(v), "{what} leaks a secret: {text}");
    }
}

#[tokio::test]
async fn admin_writes_edit_the_file_and_apply() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = two_backend_pool(&a.url(), &b.url(), KEYS, "");
    let p = FileProxy::start_with(&yaml, with_token).await;

    // Reads.
    let r = get(&format!("{}/pools/llm", p.admin())).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let pool: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(pool["backends"].as_array().unwrap().len(), 2);
    assert_eq!(pool["keys"][0]["id"], "key-a");
    assert_no_values("/pools/llm", &r.text());
    let r = get(&format!("{}/config", p.admin())).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<redacted>"));
    assert_no_values("/config", &r.text());
    let r = get(&format!("{}/config?format=manifests", p.admin()))
        .await
        .unwrap();
    assert!(r.text().contains("kind: LoadBalancerPool"), "{}", r.text());
    assert_no_values("/config?format=manifests", &r.text());
    assert_eq!(
        get(&format!("{}/pools/nope", p.admin()))
            .await
            .unwrap()
            .status,
        404
    );

    // Writes need the token.
    let body = format!(r#"{{"id":"key-c","value":"{NEW_KEY}"}}"#);
    let r = admin(&p, Method::POST, "/pools/llm/keys", None, &body).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = admin(
        &p,
        Method::POST,
        "/pools/llm/keys",
        Some("wrong-token-xxxxxxxx"),
        &body,
    )
    .await;
    assert_eq!(r.status, 401);

    // Add a key: the file holds it, the pool serves it, no response shows it.
    let r = admin(&p, Method::POST, "/pools/llm/keys", Some(TOKEN), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_values("POST keys", &r.text());
    let file = std::fs::read_to_string(&p.path).unwrap();
    // Written as base64 `data`, so it is never `${ENV}`-expanded.
    let encoded = base64::engine::general_purpose::STANDARD.encode(NEW_KEY);
    assert!(file.contains("key-c") && file.contains(&encoded), "{file}");
    let r = get(&format!("{}/pools/llm", p.admin())).await.unwrap();
    let pool: Value = serde_json::from_str(&r.text()).unwrap();
    let ids: Vec<&str> = pool["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["key-a", "key-b", "key-c"]);
    for _ in 0..6 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    let used: Vec<String> = a
        .received_keys()
        .into_iter()
        .chain(b.received_keys())
        .collect();
    assert!(used.iter().any(|k| k == NEW_KEY), "{used:?}");

    // Adding it twice conflicts; rotating and removing work.
    let r = admin(&p, Method::POST, "/pools/llm/keys", Some(TOKEN), &body).await;
    assert_eq!(r.status, 409);
    let r = admin(
        &p,
        Method::PUT,
        "/pools/llm/keys/key-c",
        Some(TOKEN),
        &format!(r#"{{"value":"{ROTATED}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(&p, Method::DELETE, "/pools/llm/keys/key-a", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let file = std::fs::read_to_string(&p.path).unwrap();
    let rotated = base64::engine::general_purpose::STANDARD.encode(ROTATED);
    assert!(!file.contains("key-a") && file.contains(&rotated), "{file}");

    // Backends.
    let c = MockUpstream::start("c").await.unwrap();
    let r = admin(
        &p,
        Method::POST,
        "/pools/llm/backends",
        Some(TOKEN),
        &format!(r#"{{"name":"c","endpoint":"{}"}}"#, c.url()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(&p, Method::DELETE, "/pools/llm/backends/a", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &p,
        Method::POST,
        "/pools/llm/backends",
        Some(TOKEN),
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "a backend without endpoint is refused");
    let status: Value =
        serde_json::from_str(&get(&format!("{}/status", p.admin())).await.unwrap().text()).unwrap();
    let names: Vec<&str> = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c"]);

    // An edit that would make the config invalid is refused and the file left alone.
    let before = std::fs::read_to_string(&p.path).unwrap();
    let r = admin(
        &p,
        Method::PUT,
        "/pools/llm/evacuate",
        Some(TOKEN),
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("failover"), "{}", r.text());
    assert_eq!(std::fs::read_to_string(&p.path).unwrap(), before);

    // Stats reset.
    let r = admin(&p, Method::POST, "/stats/reset", Some(TOKEN), "").await;
    assert_eq!(r.status, 200);
    let status: Value =
        serde_json::from_str(&get(&format!("{}/status", p.admin())).await.unwrap().text()).unwrap();
    assert_eq!(status["pools"][0]["backends"][0]["usage"]["requests"], 0);
    assert_no_values("/status", &status.to_string());
}

#[tokio::test]
async fn evacuate_toggles_a_failover_pool() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let yaml = format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: fo}}
spec:
  mode: failover
  backends:
    - {{name: primary, endpoint: "{}", role: primary}}
    - {{name: secondary, endpoint: "{}", role: secondary}}
"#,
        a.url(),
        b.url()
    );
    let p = FileProxy::start_with(&yaml, with_token).await;
    let r = admin(
        &p,
        Method::PUT,
        "/pools/fo/evacuate",
        Some(TOKEN),
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        std::fs::read_to_string(&p.path)
            .unwrap()
            .contains("evacuatePrimary: true")
    );
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.header("x-keyway-backend"), Some("secondary"));
    let r = admin(
        &p,
        Method::PUT,
        "/pools/fo/evacuate",
        Some(TOKEN),
        r#"{"enabled":false}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.header("x-keyway-backend"), Some("primary"));
}

#[tokio::test]
async fn writes_without_a_configured_token_are_disabled() {
    let a = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&two_backend_pool(&a.url(), &a.url(), KEYS, "")).await;
    let r = admin(
        &p,
        Method::POST,
        "/stats/reset",
        Some("anything-at-all-123"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("--admin-token-file"), "{}", r.text());
    let r = admin(&p, Method::PUT, "/log-level", None, "debug").await;
    assert_eq!(r.status, 403);
}

async fn start_source(
    source: Source,
    tweak: impl FnOnce(&mut keyway_proxy::Settings),
) -> keyway_proxy::Running {
    let mut s = support::settings(source);
    tweak(&mut s);
    keyway_proxy::start(s, prometheus::Registry::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn writes_are_refused_in_controller_and_quick_start_modes() {
    let controller = Source::Controller(keyway_proxy::discovery::DiscoverySettings {
        controller_url: format!("http://127.0.0.1:{}", keyway_testkit::free_port()),
        proxy_id: "test".into(),
        namespace: "default".into(),
        namespaces: vec![],
        pools: vec![],
        report_interval: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        token_file: None,
        controller_ca: None,
        controller_ca_pem: None,
        controller_server_name: None,
    });
    // An admin port on every interface: reads other than health and metrics need the token.
    let running = start_source(controller, |s| {
        with_token(s);
        s.admin_listen = "0.0.0.0:0".parse().unwrap();
    })
    .await;
    let base = format!("http://127.0.0.1:{}", running.admin_addr.port());
    let r = send(
        Method::PUT,
        &format!("{base}/pools/llm/evacuate"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        r#"{"enabled":true}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    assert!(
        r.text().contains(r#"kubectl patch lbp llm --type merge"#),
        "{}",
        r.text()
    );
    assert_eq!(get(&format!("{base}/status")).await.unwrap().status, 401);
    assert_eq!(get(&format!("{base}/config")).await.unwrap().status, 401);
    assert_eq!(get(&format!("{base}/healthz")).await.unwrap().status, 200);
    assert_eq!(get(&format!("{base}/metrics")).await.unwrap().status, 200);
    let r = send(
        Method::GET,
        &format!("{base}/status"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    // Without a token, such a port serves health and metrics only: the config and status
    // are not open to the whole cluster.
    let open = start_source(
        Source::Static(
            keyway_api::manifest::Manifests::parse(
                &two_backend_pool("http://127.0.0.1:1", "http://127.0.0.1:2", KEYS, ""),
                &|_| None,
            )
            .unwrap()
            .resolve()
            .unwrap(),
        ),
        |s| s.admin_listen = "0.0.0.0:0".parse().unwrap(),
    )
    .await;
    let base = format!("http://127.0.0.1:{}", open.admin_addr.port());
    for path in ["/status", "/config", "/pools/llm", "/log-level"] {
        let r = get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains("--admin-token-file"), "{}", r.text());
    }
    assert_eq!(get(&format!("{base}/readyz")).await.unwrap().status, 200);
    assert_eq!(get(&format!("{base}/metrics")).await.unwrap().status, 200);

    let env = |n: &str| (n == "KEYWAY_OPENAI_KEYS").then(|| "sk-test-env-1".to_string());
    let qs = keyway_proxy::quickstart::QuickStart::from_env(&env)
        .unwrap()
        .unwrap();
    let running = start_source(Source::QuickStart(qs.snapshot().unwrap()), with_token).await;
    let r = send(
        Method::POST,
        &format!("http://{}/pools/openai/keys", running.admin_addr),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        r#"{"id":"x","value":"y"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409);
    assert!(r.text().contains("export-config"), "{}", r.text());
    let r = get(&format!("http://{}/config", running.admin_addr))
        .await
        .unwrap();
    assert!(
        r.text().contains("openai-1") && !r.text().contains("sk-test-env-1"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn sources_outside_the_allowed_cidrs_get_403_and_are_counted() {
    let a = MockUpstream::start("a").await.unwrap();
    let yaml = two_backend_pool(&a.url(), &a.url(), KEYS, "");
    let p = FileProxy::start_with(&yaml, |s| {
        s.access.allowed_sources = Cidr::parse_list("10.0.0.0/8").unwrap();
        s.access.admin_allowed_sources = Cidr::parse_list("192.168.0.0/16").unwrap();
    })
    .await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 403);
    let body: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(body["error"]["type"], "forbidden_source");
    assert_eq!(a.request_count(), 0);
    assert_eq!(
        get(&format!("{}/status", p.admin())).await.unwrap().status,
        403
    );

    let p = FileProxy::start_with(&yaml, |s| {
        s.access.allowed_sources = Cidr::parse_list("127.0.0.0/8").unwrap();
    })
    .await;
    assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);

    // spec.allowedSources is checked after routing, per pool.
    let yaml = yaml.replace(
        "  backends:",
        "  allowedSources: [\"10.0.0.0/8\"]\n  backends:",
    );
    let p = FileProxy::start(&yaml).await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("forbidden_source"));
    let metrics = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    assert!(
        metrics.contains(r#"keyway_proxy_rejected_requests_total{reason="forbidden_source"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn client_tokens_are_required_reloaded_and_never_forwarded() {
    let a = MockUpstream::start("a").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "client-token-one\n").unwrap();
    let yaml = two_backend_pool(&a.url(), &a.url(), KEYS, "");
    let path = tokens.clone();
    let p = FileProxy::start_with(&yaml, move |s| {
        s.access = AccessSettings {
            client_tokens_file: Some(path),
            ..Default::default()
        };
    })
    .await;
    let r = chat(&p.url(), &[]).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(r.text().contains("unauthorized"));
    let r = chat(&p.url(), &[("authorization", "Bearer client-token-wrong")])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = chat(&p.url(), &[("authorization", "Bearer client-token-one")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat(&p.url(), &[("x-keyway-token", "client-token-one")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // The token sent twice: neither copy goes upstream.
    let r = chat(
        &p.url(),
        &[
            ("x-keyway-token", "client-token-one"),
            ("x-api-key", "client-token-one"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    for req in a.requests() {
        let all: Vec<String> = req
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        assert!(
            !all.iter().any(|h| h.contains("client-token-one")),
            "the client's token went upstream: {all:?}"
        );
    }
    // Reloaded on change.
    std::fs::write(&tokens, "client-token-two\n").unwrap();
    eventually(
        Duration::from_secs(5),
        "the new token is accepted",
        || async {
            chat(&p.url(), &[("authorization", "Bearer client-token-two")])
                .await
                .unwrap()
                .status
                == 200
        },
    )
    .await;
    let r = chat(&p.url(), &[("authorization", "Bearer client-token-one")])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// DNS rebinding: a web page whose domain resolves to 127.0.0.1 reaches a quick-start proxy
/// from the developer's browser, with its own domain as `Host`. The loopback listener serves
/// loopback names only; the documented `curl localhost:8080` and `127.0.0.1` keep working.
#[tokio::test]
async fn a_loopback_proxy_refuses_other_host_names() {
    let a = MockUpstream::start("a").await.unwrap();
    let p = FileProxy::start(&two_backend_pool(&a.url(), &a.url(), KEYS, "")).await;
    let port = p.proxy.addr.port();
    for (host, status) in [
        (format!("evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
    ] {
        let r = chat(&p.url(), &[("host", &host)]).await.unwrap();
        assert_eq!(r.status, status, "Host {host}: {}", r.text());
        if status == 403 {
            assert!(r.text().contains("forbidden_host"), "{}", r.text());
        }
    }
    assert_eq!(
        a.request_count(),
        2,
        "the refused request never went upstream"
    );
}
