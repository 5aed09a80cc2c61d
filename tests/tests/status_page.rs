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

use base64::Engine;
use http::Method;
use keyway_api::secret::SecretValue;
use keyway_testkit::client::{chat, get, send};
use keyway_testkit::{Behavior, MockUpstream, eventually};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

fn path_of(var: &str, default: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        p.exists(),
        "{} is missing: the status page test needs Debian's chromium and chromium-driver; run `make tools` \
         (or `e2e/tools/install.sh chromium`), or set {var}",
        p.display()
    );
    p
}

/// Where screenshots go: `<target>/<profile>/status-page/`.
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/status_page-<hash>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let chromium = path_of("KEYWAY_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = path_of("KEYWAY_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        eventually(T, "chromedriver answers", || async {
            get(&format!("{base}/status"))
                .await
                .is_ok_and(|r| r.json()["value"]["ready"] == true)
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--window-size=1500,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r = send(
            Method::POST,
            &format!("{base}/session"),
            &[("content-type", "application/json")],
            caps.to_string(),
        )
        .await
        .expect("new WebDriver session");
        let v = r.json();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {}", r.text()))
            .to_owned();
        Self {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let body = if method == Method::GET {
            String::new()
        } else {
            body.to_string()
        };
        let r = send(method, &url, &[("content-type", "application/json")], body)
            .await
            .expect("WebDriver call");
        assert!(r.status.is_success(), "WebDriver {path}: {}", r.text());
        r.json()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn js(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn source(&self) -> String {
        let v = self.call(Method::GET, "/source", Value::Null).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(Method::GET, "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = out_dir().join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Polls a script until it returns `true`.
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let v = self.js(script).await;
            if v == true {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what} (last: {v})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asserts no key value appears in the DOM or the visible text.
    async fn assert_no_key_values(&self) {
        let source = self.source().await;
        let text = self
            .js("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(source.contains("key-a"), "the page shows key ids");
        for v in [KEY_A, KEY_B, "sk-page"] {
            assert!(!source.contains(v), "a key value in the page source");
            assert!(!text.contains(v), "a key value in the page text");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; then the driver (our own child, by its handle).
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    send(Method::DELETE, &url, &[], ""),
                )
                .await;
            });
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
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
    let row = browser
        .js("return document.querySelector('[data-key=\"default/openai-keys/key-a\"]').innerText")
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains("429"), "the reason names the 429: {row}");
    assert!(
        row.contains("m ") || row.contains('s'),
        "the time until it returns: {row}"
    );

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
    browser.assert_no_key_values().await;
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
    browser.assert_no_key_values().await;
}
