//! Headless Chromium for the status page tests, driven through chromedriver's WebDriver HTTP
//! API with the testkit's own HTTP client (no browser-automation crate).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; `make tools` installs them). `KEYWAY_CHROMIUM` and
//! `KEYWAY_CHROMEDRIVER` override the paths. A missing browser fails the test, naming the fix.

use crate::client::{get, send};
use crate::eventually;
use base64::Engine;
use http::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The deadline of each wait.
const T: Duration = Duration::from_secs(30);

fn path_of(var: &str, default: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        p.exists(),
        "{} is missing: the status page tests need Debian's chromium and chromium-driver; run `make tools` \
         (or `e2e/tools/install.sh chromium`), or set {var}",
        p.display()
    );
    p
}

/// Where screenshots go: `<target>/<profile>/status-page/`.
pub fn out_dir() -> PathBuf {
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
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Self {
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

    pub async fn call(&self, method: Method, path: &str, body: Value) -> Value {
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

    pub async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn js(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    pub async fn source(&self) -> String {
        let v = self.call(Method::GET, "/source", Value::Null).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
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
    pub async fn wait_for(&self, what: &str, script: &str) {
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

    /// Asserts none of `secrets` appears in the page source or its visible text.
    pub async fn assert_absent(&self, secrets: &[&str]) {
        let source = self.source().await;
        let text = self
            .js("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for v in secrets {
            assert!(!source.contains(v), "a secret in the page source");
            assert!(!text.contains(v), "a secret in the page text");
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
