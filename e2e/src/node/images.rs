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

#[cfg(test)]
mod tests {
    use crate::paths::{e2e_dir, repo_root};

    fn shell_value<'a>(script: &'a str, name: &str) -> &'a str {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}= in build.sh"))
    }

    /// The image the tests run and the one the Dockerfile builds for users have one layout:
    /// same paths, same user, same entrypoint, same binaries (only the base differs).
    #[test]
    fn the_local_image_has_the_dockerfiles_layout() {
        let script = std::fs::read_to_string(e2e_dir().join("image/build.sh")).expect("build.sh");
        let dockerfile =
            std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
        let runtime = dockerfile
            .rsplit_once("\nFROM ")
            .map(|(_, stage)| stage)
            .expect("a runtime stage");
        let bin_dir = shell_value(&script, "KEYWAY_BIN_DIR");
        let user = shell_value(&script, "KEYWAY_USER");
        let entrypoint = shell_value(&script, "KEYWAY_ENTRYPOINT");
        let binaries: Vec<&str> = shell_value(&script, "KEYWAY_BINARIES")
            .trim_matches(['(', ')'])
            .split_whitespace()
            .collect();
        assert!(runtime.contains(&format!("\nUSER {user}\n")), "USER {user}");
        assert!(
            runtime.contains(&format!("\nENTRYPOINT [\"{entrypoint}\"]")),
            "ENTRYPOINT {entrypoint}"
        );
        let copy = runtime
            .lines()
            .find(|l| l.starts_with("COPY --from=build"))
            .expect("the runtime stage copies the binaries");
        assert!(copy.ends_with(&format!(" {bin_dir}/")), "{copy}");
        for b in &binaries {
            assert!(copy.contains(&format!("/{b}")), "{b} in {copy}");
        }
        // And the chart runs the controller from there.
        let chart = std::fs::read_to_string(
            repo_root().join("charts/keyway/templates/controller-deployment.yaml"),
        )
        .expect("the chart's controller Deployment");
        assert!(chart.contains(&format!("command: [\"{bin_dir}/keyway-controller\"]")));
    }
}
