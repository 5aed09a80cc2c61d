//! The real `helm` (built by `e2e/tools/install.sh`) against the shared cluster, and parsing
//! of what it renders.

use crate::cluster::Cluster;
use crate::{paths, reaper};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Instant;
use tempfile::TempDir;

/// A `helm` with its own cache, config and data directories (so tests neither read nor write
/// the developer's), talking to the cluster of `kubeconfig` if given.
#[derive(Debug)]
pub struct Helm {
    bin: PathBuf,
    home: TempDir,
    kubeconfig: Option<PathBuf>,
}

/// The repository's chart, `charts/keyway`.
pub fn chart_dir() -> PathBuf {
    paths::repo_root().join("charts").join("keyway")
}

impl Helm {
    /// A helm that talks to `cluster` as admin.
    pub fn new(cluster: &Cluster) -> Helm {
        Self::with_kubeconfig(Some(cluster.kubeconfig()))
    }

    /// A helm for `lint` and `template` only.
    pub fn offline() -> Helm {
        Self::with_kubeconfig(None)
    }

    fn with_kubeconfig(kubeconfig: Option<&Path>) -> Helm {
        let bin = paths::tool("helm");
        let home = tempfile::Builder::new()
            .prefix("keyway-e2e-helm-")
            .tempdir()
            .expect("create a helm home");
        Helm {
            bin,
            home,
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        }
    }

    /// Runs `helm ARGS`; returns its output whatever the exit status.
    pub async fn run(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let mut cmd = tokio::process::Command::new(&self.bin);
        let home = self.home.path();
        cmd.args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            // Nothing to talk to: a kubeconfig that does not exist.
            None => cmd.env("KUBECONFIG", home.join("no-kubeconfig")),
        };
        reaper::adopt(&mut cmd);
        let out = cmd
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        eprintln!(
            "[e2e timing] helm {} ({:.3}s, {})",
            args.first().copied().unwrap_or_default(),
            start.elapsed().as_secs_f64(),
            out.status
        );
        out
    }

    /// Runs `helm ARGS` and returns its stdout.
    ///
    /// # Panics
    ///
    /// If it fails (with its stderr).
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The objects of a multi-document YAML stream (`helm template` output), empty documents
/// skipped.
///
/// # Panics
///
/// If the text is not YAML.
pub fn parse_manifests(yaml: &str) -> Vec<serde_json::Value> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("rendered manifests are not valid YAML: {e}\n{yaml}"));
    docs.into_iter()
        .filter(|d| d.is_object() && d.get("kind").is_some())
        .collect()
}

/// The objects of `kind`, in rendering order.
pub fn of_kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

/// The object of `kind` named `name`.
///
/// # Panics
///
/// If there is none.
pub fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}
