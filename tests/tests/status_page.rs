//! The admin port's status page in a real browser: headless Chromium (Debian's `chromium`),
//! driven through chromedriver's WebDriver HTTP API, against an in-process proxy and mock
//! upstreams. The page must show pools, backends and keys, follow a key's cooldown and a
//! backend's failure without a reload, draw the recent history, work with the admin token,
//! and never show a key value. Screenshots go to `<target>/debug/status-page/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`make tools` installs them:
//! `e2e/tools/install.sh chromium`). `KEYWAY_CHROMIUM` and `KEYWAY_CHROMEDRIVER` override the
//! paths.

mod support;

use keyway_api::secret::SecretValue;
use keyway_testkit::browser::Browser;
use keyway_testkit::client::{chat, get};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use std::time::Duration;
use support::FileProxy;

const KEY_A: &str = "sk-page-aaaa-0123456789abcdef";
const KEY_B: &str = "sk-page-bbbb-fedcba9876543210";
const TOKEN: &str = "admin-token-for-the-page-test";
const T: Duration = Duration::from_secs(30);

fn yaml(primary: &str, secondary: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys, labels: {{keyway.dev/api-keys: "true"}}}}
stringData:
  key-a: "{KEY_A}"
  key-b: "{KEY_B}"
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: openai-keys}}
spec:
  secretRef: {{name: llm-keys}}
  selection: roundRobin
  defaults: {{requestsPerMinute: 600, tokensPerMinute: 100000}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: openai}}
spec:
  apiKeyPoolRef: {{name: openai-keys}}
  mode: failover
  healthCheck: {{path: /v1/models, intervalSeconds: 1, timeoutSeconds: 1, failThreshold: 2, successThreshold: 2}}
  backends:
    - {{name: primary, endpoint: "{primary}", role: primary}}
    - {{name: secondary, endpoint: "{secondary}", role: secondary}}
"#
    )
}

const KEY_A_STATE: &str = "const r = document.querySelector('[data-key=\"default/openai-keys/key-a\"]'); return r ? r.dataset.state : null;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_follows_a_cooldown_and_a_failover_live_and_shows_no_key_value() {
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let p = FileProxy::start(&yaml(&primary.url(), &secondary.url())).await;
    for _ in 0..4 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    let page = get(&format!("{}/", p.admin())).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", p.admin())).await;
    // 1. Pools, backends and keys are in the DOM.
    browser
        .wait_for(
            "the pool, its backends and keys",
            "return !!document.querySelector('[data-pool=\"default/openai\"]') \
             && !!document.querySelector('[data-backend=\"default/openai/primary\"][data-health=\"healthy\"]') \
             && !!document.querySelector('[data-backend=\"default/openai/secondary\"]') \
             && !!document.querySelector('[data-key=\"default/openai-keys/key-a\"][data-state=\"active\"]') \
             && !!document.querySelector('[data-key=\"default/openai-keys/key-b\"][data-state=\"active\"]');",
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('[data-active]').dataset.active")
            .await,
        "primary"
    );
    // A marker that a reload would wipe: every later change must arrive without one.
    browser
        .js("window.__keywayNoReload = 42; return null;")
        .await;
    browser.screenshot("1-healthy.png").await;

    // 2. key-a is rate limited upstream: the page shows it cooling, with its reason and
    //    the time until it returns (a `Retry-After` under a minute cools; longer exhausts).
    primary.set_key_behavior(KEY_A, Some(Behavior::rate_limited(55)));
    eventually(T, "key-a cools down", || async {
        let _ = chat(&p.url(), &[]).await;
        let s = get(&format!("{}/status", p.admin())).await.unwrap().json();
        s["keyPools"][0]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == "key-a" && k["state"] == "cooling")
    })
    .await;
    browser
        .wait_for(
            "key-a cooling",
            &format!("return (function(){{ {KEY_A_STATE} }})() === 'cooling';"),
        )
        .await;
    let cells = browser
        .js("return Array.from(document.querySelector('[data-key=\"default/openai-keys/key-a\"]').cells).map(c => c.innerText)")
        .await;
    let cells: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        cells[2].contains("429"),
        "the reason names the 429: {cells:?}"
    );
    // "back in": `Retry-After: 55` read a moment ago, so between 1 and 55 seconds.
    let back_in: u64 = cells[3]
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the time until key-a returns: {cells:?}"));
    assert!((1..=55).contains(&back_in), "{cells:?}");

    // 3. The primary fails its health checks: the page shows it unhealthy and the pool
    //    failed over to the secondary, with the reason.
    primary.set_behavior(Behavior::status(503));
    browser
        .wait_for(
            "the failover",
            "const a = document.querySelector('[data-active]'); \
             const b = document.querySelector('[data-backend=\"default/openai/primary\"]'); \
             return !!a && a.dataset.active === 'secondary' && a.dataset.reason === 'primary_unhealthy' \
               && !!b && b.dataset.health !== 'healthy';",
        )
        .await;
    // Traffic for the history chart: the secondary serves now.
    for _ in 0..4 {
        assert_eq!(chat(&p.url(), &[]).await.unwrap().status, 200);
    }
    // 4. The history: key-a's 429s become an orange bar of its chart (sampled every 5 s).
    browser
        .wait_for(
            "key-a's 429s in its chart",
            "const r = document.querySelector('[data-key=\"default/openai-keys/key-a\"]'); \
             return !!r && r.querySelectorAll('svg rect[fill=\"#e8890c\"]').length > 0;",
        )
        .await;
    let h = get(&format!("{}/status/history", p.admin()))
        .await
        .unwrap()
        .json();
    let key_a = h["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "key-a")
        .expect("key-a has a history");
    let limited: u64 = key_a["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rateLimited"].as_u64().unwrap())
        .sum();
    assert!(limited >= 1, "key-a's history counts its 429s: {key_a}");
    assert_eq!(
        browser.js("return window.__keywayNoReload === 42;").await,
        true,
        "the page changed without a reload"
    );
    browser.screenshot("2-cooling-and-failed-over.png").await;
    assert!(
        browser.source().await.contains("key-a"),
        "the page shows key ids"
    );
    browser.assert_absent(&[KEY_A, KEY_B, "sk-page"]).await;
    let status = get(&format!("{}/status", p.admin())).await.unwrap().text();
    let history = h.to_string();
    for v in [KEY_A, KEY_B] {
        assert!(!status.contains(v) && !history.contains(v));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_asks_for_the_admin_token_beyond_loopback_and_takes_it_from_the_fragment() {
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let p = FileProxy::start_with(&yaml(&primary.url(), &secondary.url()), |s| {
        s.access.admin_token = Some(SecretValue::new(TOKEN));
        s.admin_listen = "0.0.0.0:0".parse().unwrap();
    })
    .await;
    let base = format!("http://127.0.0.1:{}", p.proxy.admin_addr.port());
    assert_eq!(get(&format!("{base}/status")).await.unwrap().status, 401);

    let browser = Browser::start().await;
    // Without the token: the page loads, reads are refused, it asks for the token.
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_for(
            "the token prompt",
            "return getComputedStyle(document.getElementById('auth')).display !== 'none' \
             && !document.querySelector('[data-pool]');",
        )
        .await;
    // Typed into the prompt: the status appears.
    browser
        .js(&format!(
            "document.getElementById('token').value = '{TOKEN}'; \
             document.getElementById('auth-form').requestSubmit(); return null;"
        ))
        .await;
    browser
        .wait_for(
            "the pool after the token was typed",
            "return !!document.querySelector('[data-pool=\"default/openai\"]');",
        )
        .await;
    // From the fragment, in a fresh tab state: shown, and the token leaves the address bar.
    browser.js("sessionStorage.clear(); return null;").await;
    browser.goto("about:blank").await;
    browser.goto(&format!("{base}/#token={TOKEN}")).await;
    browser
        .wait_for(
            "the pool with the token from the fragment",
            "return !!document.querySelector('[data-pool=\"default/openai\"]') \
             && getComputedStyle(document.getElementById('auth')).display === 'none';",
        )
        .await;
    let url = browser.js("return location.href").await;
    assert!(
        !url.as_str().unwrap().contains(TOKEN),
        "the token is removed from the address bar: {url}"
    );
    assert!(!browser.source().await.contains(TOKEN));
    assert!(
        browser.source().await.contains("key-a"),
        "the page shows key ids"
    );
    browser.assert_absent(&[KEY_A, KEY_B, "sk-page"]).await;
}
