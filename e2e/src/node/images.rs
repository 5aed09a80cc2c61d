//! The images the node runs, built on this machine by `e2e/image/build.sh` (no registry, no
//! container engine) and imported into the node's containerd, where `imagePullPolicy: Never`
//! (or `IfNotPresent`) finds them.

use crate::paths;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Keyway image's repository and tag, as the chart is installed with
/// (`--set image.repository=keyway --set image.tag=dev`): containerd knows it as
/// `docker.io/library/keyway:dev`.
pub const KEYWAY_REPOSITORY: &str = "keyway";
pub const KEYWAY_TAG: &str = "dev";
/// The mock LLM upstream (`keyway-mock-upstream`).
pub const MOCK_UPSTREAM: &str = "keyway.local/mock-upstream:dev";
/// The app that calls its LLM through its sidecar (`keyway-app-client`).
pub const APP_CLIENT: &str = "keyway.local/app-client:dev";

/// Image archives ready to import.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

/// Runs `build.sh` on the binaries of `profile` (the test's cargo profile directory) and the
/// node tools in `tools`.
pub(crate) fn build(out: &Path, profile: &Path, tools: &Path) -> anyhow::Result<Images> {
    let script = paths::e2e_dir().join("image").join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(out)
        .arg(profile)
        .arg(tools)
        .env("KEYWAY_IMAGE_TAG", KEYWAY_TAG)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let files = ["pause", "coredns", "keyway", "mock-upstream", "app-client"]
        .iter()
        .map(|name| out.join(format!("{name}.tar")))
        .collect();
    Ok(Images {
        dir: out.to_path_buf(),
        files,
    })
}

impl Images {
    /// `ctr -n k8s.io images import` of every archive (the namespace the CRI plugin serves).
    pub(crate) fn import(&self, socket: &Path) -> anyhow::Result<()> {
        for file in &self.files {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(file)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "ctr images import {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Where the archives are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
