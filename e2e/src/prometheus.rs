//! A real Prometheus (the Debian package's `/usr/bin/prometheus`) on a free loopback port,
//! with its storage in a temporary directory, and its HTTP query API.

use crate::http::HttpClient;
use crate::paths;
use crate::process::{Process, start_ready};
use anyhow::{Context, bail};
use tempfile::TempDir;

/// A running Prometheus; killed (and its storage deleted) on drop.
#[derive(Debug)]
pub struct Prometheus {
    pub process: Process,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml contents) and waits until `/-/ready`.
    pub async fn start(config: &str) -> Prometheus {
        Self::start_with_files(config, &[]).await
    }

    /// Like [`Prometheus::start`], with more files (name, contents) beside prometheus.yml, such
    /// as rule files (`rule_files` paths are relative to the config file).
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let binary = paths::system_binary("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("keyway-e2e-prometheus-")
            .tempdir()
            .expect("create a Prometheus directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write a Prometheus file");
        }
        let storage = dir.path().join("data");
        let (process, url) = start_ready("prometheus", || {
            let listen = format!("127.0.0.1:{}", crate::free_port());
            let args = vec![
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", storage.display()),
                format!("--web.listen-address={listen}"),
                "--log.level=info".to_owned(),
            ];
            let process = Process::spawn("prometheus", &binary, &args, &[]);
            let url = format!("http://{listen}");
            (process, format!("{url}/-/ready"), url)
        })
        .await;
        Prometheus {
            process,
            url,
            _dir: dir,
        }
    }

    /// `GET /api/v1/query?query=PROMQL`: the result vector's elements (`{metric, value}`).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let url = format!("{}/api/v1/query?query={}", self.url, url_encode(promql));
        let resp = HttpClient::new().get(&url).await?;
        if resp.status != 200 {
            bail!("HTTP {}: {}", resp.status, resp.text());
        }
        let body = resp.json()?;
        if body["status"] != "success" {
            bail!("query failed: {body}");
        }
        body["data"]["result"]
            .as_array()
            .cloned()
            .context("no data.result array")
    }

    /// `GET /api/v1/targets`: the active targets (`{labels, health, lastError, ...}`).
    pub async fn targets(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.get_json("/api/v1/targets").await?;
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .context("no data.activeTargets array")
    }

    /// `GET /api/v1/rules`: every rule of every group (`{name, health, lastError, state, ...}`).
    pub async fn rules(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.get_json("/api/v1/rules").await?;
        Ok(body["data"]["groups"]
            .as_array()
            .context("no data.groups array")?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let resp = HttpClient::new()
            .get(&format!("{}{path}", self.url))
            .await?;
        if resp.status != 200 {
            bail!("GET {path}: HTTP {}: {}", resp.status, resp.text());
        }
        resp.json()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
