//! Where things are: the product binaries under test, the control-plane tools, the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `e2e/` crate directory.
pub fn e2e_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    e2e_dir()
        .parent()
        .map_or_else(|| e2e_dir().join(".."), Path::to_path_buf)
}

/// The directory holding the CRD manifests (`crds/*.yaml`).
pub fn crds_dir() -> PathBuf {
    repo_root().join("crds")
}

/// The cargo profile directory the test binary was built into (e.g. `target/debug`): the test
/// binary is `target/debug/deps/e2e-HASH`, so it is the parent of the executable's directory.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
        .to_path_buf()
}

/// The path of a workspace binary (`keyway-controller`, `keyway-proxy`, ...), next to the
/// test binary's profile directory.
///
/// # Panics
///
/// If it has not been built, with the command that builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: the e2e tests run the real binaries; build them first with \
             `cargo build --workspace --bins` (same profile and CARGO_TARGET_DIR as the tests)",
            path.display()
        );
    }
    path
}

/// `${KEYWAY_CACHE:-~/.cache/keyway}`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYWAY_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set (or set KEYWAY_CACHE)");
    PathBuf::from(home).join(".cache").join("keyway")
}

/// The control-plane tools the tests need from `e2e/tools/install.sh`.
const TOOLS: [(&str, &str); 3] = [
    ("kube-apiserver", "KUBERNETES_VERSION"),
    ("etcd", "ETCD_VERSION"),
    ("helm", "HELM_VERSION"),
];

/// The path of a control-plane tool (`kube-apiserver`, `etcd`, `helm`), building the tools
/// first with `e2e/tools/install.sh` if any is missing or stale (once per process).
pub fn tool(name: &str) -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(ensure_tools);
    cache_dir().join("bin").join(name)
}

/// The real node's components from `e2e/tools/install.sh`: built ones (with the
/// `versions.env` variable of their version) ...
const NODE_TOOLS: [(&str, &str); 6] = [
    ("kubelet", "KUBERNETES_VERSION"),
    ("kube-scheduler", "KUBERNETES_VERSION"),
    ("kube-controller-manager", "KUBERNETES_VERSION"),
    ("kube-proxy", "KUBERNETES_VERSION"),
    ("coredns", "COREDNS_VERSION"),
    ("pause", "KUBERNETES_VERSION"),
];

/// ... and Debian packages, by `install.sh` name and a file they install.
const NODE_PACKAGES: [(&str, &str); 5] = [
    ("containerd", "/usr/bin/containerd"),
    ("runc", "/usr/sbin/runc"),
    ("cni-plugins", "/usr/lib/cni/portmap"),
    ("iptables", "/usr/sbin/iptables"),
    ("conntrack", "/usr/sbin/conntrack"),
];

/// The directory of the real node's tools (kubelet, ...), installing what is missing or
/// stale first with `install.sh` (minutes on a fresh machine; once per process).
pub fn node_tools() -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let mut missing = stale_tools(&NODE_TOOLS);
        missing.extend(
            NODE_PACKAGES
                .iter()
                .filter(|(_, file)| !Path::new(file).exists())
                .map(|(name, _)| *name),
        );
        if !missing.is_empty() {
            run_install(&missing);
        }
    });
    cache_dir().join("bin")
}

/// Runs `install.sh` unless every tool's stamp already says it was built for the version in
/// `versions.env` by the script's current recipe (the script's own up-to-date check, done here
/// without needing Go). The script is idempotent, so a wrong guess only costs time.
fn ensure_tools() {
    let stale = stale_tools(&TOOLS);
    if stale.is_empty() {
        return;
    }
    let bin = cache_dir().join("bin");
    let script = e2e_dir().join("tools").join("install.sh");
    eprintln!(
        "[e2e] {} missing or stale in {}: running {} (output follows)",
        stale.join(", "),
        bin.display(),
        script.display()
    );
    // Inherited stdout/stderr: the (long) build streams its progress to the test output.
    let status = Command::new("bash")
        .arg(&script)
        .args(&stale)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} failed ({status}); see its output above",
        script.display()
    );
}

/// The tools of `tools` whose binary or stamp is missing, or whose stamp is not the one
/// `install.sh` writes for the version `versions.env` names.
fn stale_tools<'a>(tools: &[(&'a str, &str)]) -> Vec<&'a str> {
    let tools_dir = e2e_dir().join("tools");
    let bin = cache_dir().join("bin");
    let versions = std::fs::read_to_string(tools_dir.join("versions.env")).unwrap_or_default();
    let script = tools_dir.join("install.sh");
    let recipe = std::fs::read_to_string(&script)
        .ok()
        .and_then(|s| shell_var(&s, "RECIPE"));
    tools
        .iter()
        .filter(|(name, version_var)| {
            let expected = match (shell_var(&versions, version_var), &recipe) {
                (Some(v), Some(r)) => format!("v{} recipe={r}", v.trim_start_matches('v')),
                _ => return true,
            };
            let stamp = std::fs::read_to_string(bin.join(format!(".{name}.stamp")));
            !bin.join(name).is_file() || stamp.map(|s| s.trim() != expected).unwrap_or(true)
        })
        .map(|(name, _)| *name)
        .collect()
}

/// The directory holding the ServiceMonitor and PrometheusRule CRDs
/// (`monitoring.coreos.com_*.yaml`), fetched by `install.sh monitoring-crds` if missing.
pub fn monitoring_crds_dir() -> PathBuf {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let dir = cache_dir().join("crds");
    INSTALLED.get_or_init(|| {
        let have = [
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ]
        .iter()
        .all(|f| dir.join(f).is_file());
        if !have {
            run_install(&["monitoring-crds"]);
        }
    });
    dir
}

/// The path of a binary from a Debian package (`prometheus`, `promtool`, `redis-server`) in
/// `/usr/bin`, installed by `install.sh` if missing (it needs root for that).
pub fn system_binary(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    if !path.is_file() {
        let tool = match name {
            "promtool" => "prometheus",
            other => other,
        };
        run_install(&[tool]);
    }
    path
}

/// Runs `install.sh` with `args`, streaming its output.
fn run_install(args: &[&str]) {
    let script = e2e_dir().join("tools").join("install.sh");
    eprintln!("[e2e] running {} {}", script.display(), args.join(" "));
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} {} failed ({status}); see its output above",
        script.display(),
        args.join(" ")
    );
}

/// The value of `NAME=value` in a shell-sourceable file (no expansion, quotes stripped).
fn shell_var(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(name)?.strip_prefix('=')?;
        let value = value.split('#').next().unwrap_or("").trim();
        Some(value.trim_matches(['"', '\'']).to_owned()).filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::shell_var;

    #[test]
    fn reads_shell_vars() {
        let text = "# c\nKUBERNETES_VERSION=1.33.13\nRECIPE=1 # bump\nX=\"v2\"\n";
        assert_eq!(
            shell_var(text, "KUBERNETES_VERSION").as_deref(),
            Some("1.33.13")
        );
        assert_eq!(shell_var(text, "RECIPE").as_deref(), Some("1"));
        assert_eq!(shell_var(text, "X").as_deref(), Some("v2"));
        assert_eq!(shell_var(text, "Y"), None);
    }
}
