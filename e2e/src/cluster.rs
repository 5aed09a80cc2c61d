//! The shared control plane: one etcd + one kube-apiserver per test process, with the Keyway
//! CRDs installed, plus `kubectl` and `kube::Client` access and per-test namespaces.

use crate::{paths, random_hex, reaper};
use anyhow::{Context, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long etcd + kube-apiserver may take to become ready.
pub const API_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running etcd + kube-apiserver. Obtain the shared one with [`cluster`].
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    startup: Duration,
    // Never dropped (the cluster lives in a static); the reaper kills them at process exit.
    _etcd: Child,
    /// Behind a lock so a test can stop and restart it (see [`Cluster::stop_apiserver`]).
    apiserver: std::sync::Mutex<Child>,
    apiserver_cmd: (PathBuf, Vec<String>),
}

static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// How an API server differs from the shared one, which serves no node: the real node
/// ([`crate::node`]) needs one that Pods can reach, with the ServiceAccount admission plugin,
/// the `kubernetes` Service's endpoints and credentials for the node's components.
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiServerOptions {
    /// The address to bind and advertise (default 127.0.0.1).
    pub bind: Option<std::net::Ipv4Addr>,
    /// Replaces the shared cluster's node-less flags (no ServiceAccount admission, no
    /// endpoint reconciler) and its service range.
    pub flags: Vec<String>,
    /// More `token,user,uid,groups` lines for `tokens.csv`.
    pub tokens: Vec<String>,
    /// Leave the Keyway CRDs to the test (the node's tests install them with the chart).
    pub skip_crds: bool,
}

/// The cluster shared by every test of this process, started on first use.
///
/// # Panics
///
/// If the cluster cannot be started (every test of the process then fails with the same
/// message, without retrying).
pub async fn cluster() -> &'static Cluster {
    let result = CLUSTER
        .get_or_init(|| async {
            Cluster::start("cluster")
                .await
                .map_err(|e| format!("cannot start the e2e cluster: {e:#}"))
        })
        .await;
    match result {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

impl Cluster {
    /// Starts a cluster of this test process's own, in `name` under the run directory. Tests
    /// that disturb the API server (stop it, restart it) use their own instead of [`cluster`].
    /// It is leaked: like the shared one, it lives until the process ends.
    pub async fn start_private(name: &str) -> anyhow::Result<&'static Cluster> {
        Ok(Box::leak(Box::new(Cluster::start(name).await?)))
    }

    async fn start(name: &str) -> anyhow::Result<Cluster> {
        Self::start_with(name, ApiServerOptions::default()).await
    }

    pub(crate) async fn start_with(
        name: &str,
        options: ApiServerOptions,
    ) -> anyhow::Result<Cluster> {
        let t0 = Instant::now();
        // May build the tools (minutes, on a fresh machine): off the async threads.
        let (etcd_bin, apiserver_bin) =
            tokio::task::spawn_blocking(|| (paths::tool("etcd"), paths::tool("kube-apiserver")))
                .await?;
        let dir = reaper::run_dir().join(name);
        std::fs::create_dir_all(dir.join("certs"))?;

        // ServiceAccount token signing key and the static admin token.
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048"))?;
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(dir.join("sa.key"))
            .arg("-out")
            .arg(dir.join("sa.pub")))?;
        let token = random_hex(40);
        let mut tokens = format!("{token},admin,admin,system:masters\n");
        for line in &options.tokens {
            tokens.push_str(line);
            tokens.push('\n');
        }
        std::fs::write(dir.join("tokens.csv"), tokens)?;

        let etcd_client = crate::free_port();
        let etcd_peer = crate::free_port();
        let mut etcd = spawn_logged(
            &dir,
            "etcd",
            Command::new(&etcd_bin)
                .arg("--name=e2e")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
                ))
                .arg(format!(
                    "--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}"
                ))
                .arg("--log-level=warn")
                // Throwaway data: skip fsync, which dominates write latency on slow disks.
                .arg("--unsafe-no-fsync"),
        )?;

        let port = crate::free_port();
        let bind = options.bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let d = |name: &str| dir.join(name).display().to_string();
        let mut apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={bind}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d("certs")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            // Less start-up work and CPU on small machines; not under test.
            "--enable-priority-and-fairness=false".to_owned(),
            "--profiling=false".to_owned(),
        ];
        if options.flags.is_empty() {
            apiserver_args.extend([
                "--authorization-mode=RBAC".to_owned(),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--endpoint-reconciler-type=none".to_owned(),
                // No controller-manager runs: without this, Pods could not be created (the
                // ServiceAccount admission plugin waits for the default ServiceAccount).
                "--disable-admission-plugins=ServiceAccount".to_owned(),
            ]);
        }
        apiserver_args.extend(options.flags);
        let mut apiserver = spawn_logged(
            &dir,
            "kube-apiserver",
            Command::new(&apiserver_bin).args(&apiserver_args),
        )?;

        let server = format!("https://{bind}:{port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &token))?;
        std::fs::create_dir_all(dir.join("kubectl-cache"))?;

        let cluster_dir = dir.clone();
        let kubeconfig_path = kubeconfig.clone();
        let ready = wait_ready(&kubeconfig, &mut etcd, &mut apiserver, &cluster_dir).await;
        if let Err(e) = ready {
            let _ = etcd.kill();
            let _ = apiserver.kill();
            return Err(e);
        }
        let api_ready = t0.elapsed();

        let mut cluster = Cluster {
            dir,
            kubeconfig: kubeconfig_path,
            server,
            startup: Duration::ZERO,
            _etcd: etcd,
            apiserver: std::sync::Mutex::new(apiserver),
            apiserver_cmd: (apiserver_bin, apiserver_args),
        };
        if !options.skip_crds {
            cluster.install_crds().await?;
        }
        cluster.startup = t0.elapsed();
        eprintln!(
            "[e2e timing] cluster: etcd + kube-apiserver ready in {:.3}s, CRDs established and \
             warmed up after {:.3}s more ({}; logs in {})",
            api_ready.as_secs_f64(),
            (cluster.startup - api_ready).as_secs_f64(),
            cluster.server,
            cluster.dir.display()
        );
        Ok(cluster)
    }

    /// Kills the API server (etcd keeps its data).
    pub async fn stop_apiserver(&self) {
        let mut child = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the API server again with the same flags and port, and waits until it is ready.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        let (bin, args) = &self.apiserver_cmd;
        let child = spawn_logged(
            &self.dir,
            "kube-apiserver-restarted",
            Command::new(bin).args(args),
        )?;
        *self.apiserver.lock().unwrap_or_else(|e| e.into_inner()) = child;
        let client = client_for(&self.kubeconfig).await?;
        let deadline = Instant::now() + API_SERVER_READY_TIMEOUT;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(Ok(body)) =
                tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the restarted kube-apiserver did not become ready\n{}",
                    log_tails(&self.dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn install_crds(&self) -> anyhow::Result<()> {
        let crds = paths::crds_dir();
        let crds = crds.to_string_lossy();
        let out = self
            .kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crds])
            .await;
        check(&out, "kubectl apply CRDs")?;
        let out = self
            .kubectl(&[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                "-f",
                &crds,
            ])
            .await;
        check(&out, "kubectl wait for the CRDs")?;
        // Refresh kubectl's discovery cache once now that the CRDs exist, rather than in
        // every test's first kubectl call (a cache miss costs a full re-discovery).
        let out = self
            .kubectl(&["get", "loadbalancerpools,apikeypools", "-A"])
            .await;
        check(&out, "kubectl get the Keyway resources")?;
        // The API server builds a CRD's request handler on the first write of that kind, which
        // takes ~2 s here; pay it once now (a server-side dry run is enough) rather than inside
        // the first test step that creates a pool.
        let warm = "apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: e2e-warm-up, namespace: default}
spec: {secretRef: {name: e2e-warm-up}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: e2e-warm-up, namespace: default}
spec: {backends: [{name: a, endpoint: 'http://127.0.0.1:1'}]}
";
        let out = self
            .kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], warm)
            .await;
        check(&out, "kubectl create --dry-run=server (CRD warm-up)")?;
        Ok(())
    }

    /// The kubeconfig file (server, admin token, insecure-skip-tls-verify).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory with the cluster's files and the etcd / kube-apiserver logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long starting the cluster (tools check, etcd, kube-apiserver, CRDs) took.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// A new `kube::Client` for the cluster (admin). Build one per test: a client belongs to
    /// the tokio runtime it was created on, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("kube client for {}: {e:#}", self.kubeconfig.display()))
    }

    fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        reaper::adopt(&mut cmd);
        cmd
    }

    /// Runs the machine's `kubectl` against the cluster; returns its output whatever the exit
    /// status.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = self
            .kubectl_command(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run kubectl (is it installed?): {e}"));
        report_slow_kubectl(args, start);
        out
    }

    /// Runs `kubectl` with `input` on stdin.
    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use tokio::io::AsyncWriteExt;
        let start = Instant::now();
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl (is it installed?): {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write kubectl stdin");
        }
        let out = child.wait_with_output().await.expect("wait for kubectl");
        report_slow_kubectl(args, start);
        out
    }

    /// Runs `kubectl` and returns its stdout.
    ///
    /// # Panics
    ///
    /// If it fails (with its stderr).
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        check(&out, &format!("kubectl {}", args.join(" "))).unwrap_or_else(|e| panic!("{e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -n namespace -f -` with `yaml`; returns kubectl's stdout.
    ///
    /// # Panics
    ///
    /// If kubectl fails.
    pub async fn apply_yaml(&self, namespace: &str, yaml: &str) -> String {
        let out = self
            .kubectl_stdin(&["apply", "-n", namespace, "-f", "-"], yaml)
            .await;
        check(&out, "kubectl apply").unwrap_or_else(|e| panic!("{e:#}\n--- input ---\n{yaml}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A token of ServiceAccount `name` in `namespace` (created if missing), as a pod would
    /// have mounted: `kubectl create token`, served by the API server itself (no
    /// controller-manager needed). `audience` defaults to the API server's.
    ///
    /// # Panics
    ///
    /// If kubectl fails.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audience: Option<&str>,
    ) -> String {
        // Created if missing. Several tokens of one account are often asked for at once, and
        // two concurrent creates of a new object race: "already exists" means it is there.
        let out = self
            .kubectl(&["create", "serviceaccount", name, "-n", namespace])
            .await;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("already exists")
        {
            check(&out, "kubectl create serviceaccount").unwrap_or_else(|e| panic!("{e:#}"));
        }
        let mut args = vec!["create", "token", name, "-n", namespace, "--duration=2h"];
        if let Some(aud) = audience {
            args.extend(["--audience", aud]);
        }
        self.kubectl_ok(&args).await.trim().to_owned()
    }

    /// Creates a namespace for one test, named `kw-<test>-<random>`; it is deleted (without
    /// waiting) when the returned guard drops.
    pub async fn namespace(&'static self, test: &str) -> TestNamespace {
        let mut label: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        label.truncate(40);
        let name = format!("kw-{}-{}", label.trim_matches('-'), random_hex(6));
        self.kubectl_ok(&["create", "namespace", &name]).await;
        TestNamespace {
            name,
            cluster: self,
        }
    }
}

/// A namespace owned by one test; deleted (best-effort, not awaited) on drop. No namespace
/// controller runs, so it stays `Terminating`, which is harmless.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    cluster: &'static Cluster,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `kubectl apply -n <this namespace> -f -`.
    pub async fn apply(&self, yaml: &str) -> String {
        self.cluster.apply_yaml(&self.name, yaml).await
    }

    /// `kubectl -n <this namespace> ARGS`, panicking on failure; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let base = |cmd: &mut Command| {
            cmd.arg("--kubeconfig")
                .arg(&self.cluster.kubeconfig)
                .arg("--cache-dir")
                .arg(self.cluster.dir.join("kubectl-cache"))
                .arg("--request-timeout=10s")
                .stdin(Stdio::null());
        };
        if std::thread::panicking() {
            // The Keyway objects of the failed test, with their status (not the Secrets).
            let mut cmd = Command::new("kubectl");
            base(&mut cmd);
            cmd.args(["get", "loadbalancerpools,apikeypools", "-o", "yaml", "-n"])
                .arg(&self.name);
            if let Ok(out) = cmd.output() {
                eprintln!(
                    "----- keyway objects in namespace {} -----\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut cmd = Command::new("kubectl");
        base(&mut cmd);
        cmd.args(["delete", "namespace", "--wait=false", "--ignore-not-found"])
            .arg(&self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        reaper::adopt_std(&mut cmd);
        let _ = cmd.spawn();
    }
}

/// A kubectl call is a process start plus a few requests; say so when one takes long.
fn report_slow_kubectl(args: &[&str], start: Instant) {
    let took = start.elapsed();
    if took > Duration::from_secs(1) {
        eprintln!(
            "[e2e timing] slow kubectl ({:.3}s): kubectl {}",
            took.as_secs_f64(),
            args.join(" ")
        );
    }
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Polls `/readyz` until it answers, failing early if etcd or the API server exits.
async fn wait_ready(
    kubeconfig: &Path,
    etcd: &mut Child,
    apiserver: &mut Child,
    dir: &Path,
) -> anyhow::Result<()> {
    let client = client_for(kubeconfig).await?;
    let deadline = Instant::now() + API_SERVER_READY_TIMEOUT;
    let mut last;
    loop {
        for (name, child) in [("etcd", &mut *etcd), ("kube-apiserver", &mut *apiserver)] {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}) during start-up\n{}",
                    log_tails(dir)
                );
            }
        }
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => last = body,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "request timed out".to_owned(),
        }
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver not ready within {API_SERVER_READY_TIMEOUT:?} (last: {last})\n{}",
                log_tails(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["etcd", "kube-apiserver"] {
        let path = dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        out.push_str(&format!("----- {} -----\n", path.display()));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Starts a cluster component with stdout+stderr in `<dir>/<name>.log`, in the reaper's group.
pub(crate) fn spawn_logged(dir: &Path, name: &str, cmd: &mut Command) -> anyhow::Result<Child> {
    let log = File::create(dir.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    reaper::adopt_std(cmd);
    cmd.spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))
}

/// Runs a short command to completion; fails with its stderr if it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    check(&out, &format!("{:?}", cmd.get_program()))
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
    namespace: default
current-context: e2e
"
    )
}
