//! Shared setup for the in-process tests: a proxy started from a manifest file.
#![allow(dead_code)]

use keyway_proxy::http::ForwarderSettings;
use keyway_proxy::{Running, Settings, Source};
use std::path::PathBuf;
use std::time::Duration;

pub struct FileProxy {
    pub proxy: Running,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileProxy {
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, |_| {}).await
    }

    /// Like [`FileProxy::start`], with the settings adjusted by `tweak` first.
    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut s = settings(Source::File {
            path: path.clone(),
            reload_interval: Duration::from_millis(50),
        });
        tweak(&mut s);
        let proxy = keyway_proxy::start(s, prometheus::Registry::new())
            .await
            .unwrap();
        Self {
            proxy,
            path,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin_addr)
    }

    /// Rewrites the manifest file the way an editor does: new file, then rename.
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

pub fn settings(source: Source) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        source,
        forwarder: ForwarderSettings {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            expose_headers: true,
            overhead_header: false,
            upstream_ca: None,
        },
        drain_timeout: Duration::from_secs(1),
        tls: None,
        traffic_threads: 0,
        access: Default::default(),
    }
}

/// A pool of two backends and two keys, with `{auth}` spliced into the pool spec.
pub fn two_backend_pool(a: &str, b: &str, keys: &[(&str, &str)], auth: &str) -> String {
    let entries: String = keys
        .iter()
        .map(|(k, v)| format!("  {k}: \"{v}\"\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: llm-keys}}
stringData:
{entries}---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {{name: keys}}
spec:
  secretRef: {{name: llm-keys}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm}}
spec:
  apiKeyPoolRef: {{name: keys}}
  {auth}
  backends:
    - {{name: a, endpoint: "{a}"}}
    - {{name: b, endpoint: "{b}"}}
"#
    )
}
