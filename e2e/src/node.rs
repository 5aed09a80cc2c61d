//! A real single-node Kubernetes cluster, for the tests that run Pods: etcd and kube-apiserver
//! (as [`Cluster`], but reachable from Pods and with the admission plugins a node needs),
//! kube-controller-manager, kube-scheduler, containerd with runc and the CNI plugins, the
//! kubelet, kube-proxy, and CoreDNS as a Deployment behind the `kube-dns` Service. Every image
//! the node runs is built on this machine ([`images`]) and imported into containerd, so no
//! registry is needed.
//!
//! The node's parts are machine-wide (the CNI bridge, iptables, sysctls, cgroups): a
//! [`guard`] process holds a lock so two test runs on one machine take turns, and removes
//! everything after this process exits, however it ends (`e2e/node/cleanup.sh`).
//!
//! [`node`] starts it once per test process; the tests that use it live in their own test
//! binary (`e2e/tests/node.rs`), so the lock is held only while they run.

mod cgroups;
mod config;
mod guard;
pub mod images;
pub mod network;
mod pki;

pub use config::NODE_NAME;

use crate::cluster::{ApiServerOptions, Cluster};
use crate::{paths, random_hex};
use anyhow::{Context, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long the node may take from its API server being ready to a Ready node with DNS.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The running node cluster. Obtain the shared one with [`node`].
#[derive(Debug)]
pub struct Node {
    cluster: Cluster,
    run: PathBuf,
    logs: PathBuf,
    images: images::Images,
    startup: Duration,
    _guard: guard::Guard,
    /// Never dropped (the node lives in a static); the guard kills them at process exit.
    daemons: Mutex<Vec<(String, Child)>>,
}

static NODE: OnceCell<Result<Node, String>> = OnceCell::const_new();

/// The node cluster shared by every test of this process, started on first use.
///
/// # Panics
///
/// If it cannot be started (every test of the process then fails with the same message).
pub async fn node() -> &'static Node {
    let result = NODE
        .get_or_init(|| async {
            Node::start()
                .await
                .map_err(|e| format!("cannot start the e2e node: {e:#}"))
        })
        .await;
    match result {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    }
}

/// Times of the start, as the closing note of the node issue asks for them.
#[derive(Debug, Default)]
struct Phases {
    marks: Vec<(&'static str, Duration)>,
    last: Option<Instant>,
}

impl Phases {
    fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        let since = now - self.last.unwrap_or(now);
        self.last = Some(now);
        self.marks.push((what, since));
    }
}

impl Node {
    async fn start() -> anyhow::Result<Node> {
        let t0 = Instant::now();
        let mut phases = Phases {
            last: Some(t0),
            ..Phases::default()
        };
        let bin = tokio::task::spawn_blocking(paths::node_tools).await?;
        phases.mark("node tools checked");

        // Machine-wide state, under the lock; per-process files (logs, configs, certs) in the
        // reaper's run directory.
        let state = paths::cache_dir().join("node");
        let run = state.join("run");
        let logs = crate::reaper::run_dir().join("node");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(&logs)?;
        let node_dir = paths::e2e_dir().join("node");
        let guard = {
            let (script, lock, state, log) = (
                node_dir.join("guard.sh"),
                paths::cache_dir().join("node.lock"),
                state.clone(),
                logs.join("guard.log"),
            );
            tokio::task::spawn_blocking(move || guard::Guard::acquire(&script, &lock, &state, &log))
                .await??
        };
        phases.mark("node lock taken, leftovers cleaned");
        for dir in [
            "containerd",
            "containerd-state",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
        ] {
            std::fs::create_dir_all(run.join(dir))?;
        }

        // Images: built while the control plane starts.
        let image_build = {
            let (out, profile, tools) = (
                logs.join("images"),
                paths::target_profile_dir(),
                bin.clone(),
            );
            tokio::task::spawn_blocking(move || images::build(&out, &profile, &tools))
        };

        let pki = pki::create(
            &logs.join("pki"),
            &[network::NODE_IP, network::API_SERVICE_IP, "127.0.0.1"],
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        network::setup(&state)?;
        cgroups::create_root(config::CGROUP_ROOT.trim_start_matches('/'))?;
        phases.mark("certificates, bridge, sysctls, egress guard, cgroups");

        let mut daemons = Vec::new();
        std::fs::write(logs.join("containerd.toml"), config::containerd(&run))?;
        std::fs::write(run.join("cni/net.d/10-keyway.conflist"), config::cni(&run))?;
        daemons.push(spawn(
            &guard,
            &logs,
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(logs.join("containerd.toml")),
        )?);

        // Component identities: static tokens; the kubelet is a real node identity (Node
        // authorizer, NodeRestriction), kube-proxy and the scheduler use their bootstrap roles.
        let token = |_: &str| random_hex(32);
        let (kubelet_t, proxy_t, sched_t, kcm_t) = (
            token("kubelet"),
            token("proxy"),
            token("sched"),
            token("kcm"),
        );
        let node_ip: std::net::Ipv4Addr = network::NODE_IP.parse()?;
        let d = |p: &Path| p.display().to_string();
        let options = ApiServerOptions {
            bind: Some(node_ip),
            skip_crds: true,
            tokens: vec![
                format!("{kubelet_t},system:node:{NODE_NAME},kubelet,system:nodes"),
                format!("{proxy_t},system:kube-proxy,kube-proxy"),
                format!("{sched_t},system:kube-scheduler,kube-scheduler"),
                format!("{kcm_t},system:kube-controller-manager,kcm,system:masters"),
            ],
            flags: vec![
                "--authorization-mode=Node,RBAC".to_owned(),
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                format!("--service-cluster-ip-range={}", network::SERVICE_CIDR),
                format!("--tls-cert-file={}", d(&pki.apiserver_cert)),
                format!("--tls-private-key-file={}", d(&pki.apiserver_key)),
                format!("--client-ca-file={}", d(&pki.ca_cert)),
                format!(
                    "--kubelet-client-certificate={}",
                    d(&pki.kubelet_client_cert)
                ),
                format!("--kubelet-client-key={}", d(&pki.kubelet_client_key)),
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                "--allow-privileged=true".to_owned(),
            ],
        };
        let cluster = Cluster::start_with("node-cluster", options).await?;
        phases.mark("etcd + kube-apiserver ready");

        let server = cluster.server().to_owned();
        let kc = |name: &str, token: &str| -> anyhow::Result<PathBuf> {
            let path = logs.join(format!("{name}.kubeconfig"));
            std::fs::write(&path, config::kubeconfig(&server, &pki.ca_cert, token))?;
            Ok(path)
        };
        let kcm_kc = kc("kube-controller-manager", &kcm_t)?;
        daemons.push(spawn(
            &guard,
            &logs,
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", d(&kcm_kc)))
                .arg(format!("--root-ca-file={}", d(&pki.ca_cert)))
                .arg(format!(
                    "--service-account-private-key-file={}",
                    d(&cluster.dir().join("sa.key"))
                ))
                .arg(format!(
                    "--service-cluster-ip-range={}",
                    network::SERVICE_CIDR
                ))
                .args([
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--cluster-name=keyway-e2e",
                ]),
        )?);
        let sched_kc = kc("kube-scheduler", &sched_t)?;
        daemons.push(spawn(
            &guard,
            &logs,
            "kube-scheduler",
            Command::new(bin.join("kube-scheduler"))
                .arg(format!("--kubeconfig={}", d(&sched_kc)))
                .args(["--leader-elect=false", "--secure-port=0"]),
        )?);
        let proxy_kc = kc("kube-proxy", &proxy_t)?;
        std::fs::write(
            logs.join("kube-proxy.yaml"),
            config::kube_proxy(&proxy_kc, crate::free_port(), crate::free_port()),
        )?;
        daemons.push(spawn(
            &guard,
            &logs,
            "kube-proxy",
            Command::new(bin.join("kube-proxy"))
                .arg(format!("--config={}", d(&logs.join("kube-proxy.yaml")))),
        )?);

        wait_containerd(&run, &logs, &mut daemons).await?;
        phases.mark("containerd answering");
        let images = image_build.await??;
        phases.mark("images built");
        images.import(&config::containerd_socket(&run))?;
        phases.mark("images imported into containerd");

        // An empty resolv.conf: Pods get the cluster DNS and nothing of this machine's.
        std::fs::write(logs.join("resolv.conf"), "")?;
        let kubelet_kc = kc("kubelet", &kubelet_t)?;
        let kubelet = config::Kubelet {
            run: &run,
            ca_cert: &pki.ca_cert,
            resolv_conf: &logs.join("resolv.conf"),
            port: crate::free_port(),
            healthz_port: crate::free_port(),
        };
        std::fs::write(logs.join("kubelet.yaml"), kubelet.config())?;
        daemons.push(spawn(
            &guard,
            &logs,
            "kubelet",
            Command::new(bin.join("kubelet"))
                .arg(format!("--config={}", d(&logs.join("kubelet.yaml"))))
                .arg(format!("--kubeconfig={}", d(&kubelet_kc)))
                .arg(format!("--root-dir={}", d(&run.join("kubelet"))))
                .arg(format!("--cert-dir={}", d(&run.join("kubelet-pki"))))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--node-ip={}", network::NODE_IP)),
        )?);

        let node = Node {
            cluster,
            run,
            logs,
            images,
            startup: Duration::ZERO,
            _guard: guard,
            daemons: Mutex::new(daemons),
        };
        node.wait_ready().await?;
        phases.mark("node Ready");
        node.cluster
            .apply_yaml("kube-system", &config::coredns())
            .await;
        node.rollout("kube-system", "deployment/coredns").await?;
        phases.mark("CoreDNS ready");
        let mut node = node;
        node.startup = t0.elapsed();
        let marks: Vec<String> = phases
            .marks
            .iter()
            .map(|(what, took)| format!("{what} +{:.1}s", took.as_secs_f64()))
            .collect();
        eprintln!(
            "[e2e timing] node: cluster up in {:.1}s ({}; logs in {})",
            node.startup.as_secs_f64(),
            marks.join(", "),
            node.logs.display()
        );
        Ok(node)
    }

    /// The node's API server, with `kubectl`, clients and per-test namespaces.
    pub fn cluster(&'static self) -> &'static Cluster {
        &self.cluster
    }

    /// The images imported into the node's containerd.
    pub fn images(&self) -> &images::Images {
        &self.images
    }

    /// How long starting the node took (tools check to CoreDNS ready).
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The directory with the node components' logs and configuration.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The end of every node component's log (for failure messages).
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in [
            "kubelet",
            "containerd",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
        ] {
            out.push_str(&tail(&self.logs.join(format!("{name}.log")), 25));
        }
        out
    }

    /// `kubectl rollout status` with the node's deadline.
    pub async fn rollout(&self, namespace: &str, what: &str) -> anyhow::Result<()> {
        let timeout = format!("--timeout={}s", NODE_READY_TIMEOUT.as_secs());
        let out = self
            .cluster
            .kubectl(&["-n", namespace, "rollout", "status", what, &timeout])
            .await;
        if !out.status.success() {
            let pods = self
                .cluster
                .kubectl(&["-n", namespace, "get", "pods", "-o", "wide"])
                .await;
            let events = self
                .cluster
                .kubectl(&["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"])
                .await;
            bail!(
                "{what} in {namespace} did not roll out: {}\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&events.stdout),
                self.log_tails()
            );
        }
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        let jsonpath = r#"-o=jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}"#;
        loop {
            self.check_daemons()?;
            let out = self
                .cluster
                .kubectl(&["get", "node", NODE_NAME, jsonpath])
                .await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.starts_with("True") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {NODE_NAME} not Ready within {NODE_READY_TIMEOUT:?} (last: {text}{})\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Fails if a node component has exited.
    pub fn check_daemons(&self) -> anyhow::Result<()> {
        let mut daemons = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
        check_daemons(&mut daemons, &self.logs)
    }

    /// The directory of the node's machine-wide state (containerd, kubelet, CNI).
    pub fn run_dir(&self) -> &Path {
        &self.run
    }
}

fn check_daemons(daemons: &mut [(String, Child)], logs: &Path) -> anyhow::Result<()> {
    for (name, child) in daemons.iter_mut() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status})\n{}",
                tail(&logs.join(format!("{name}.log")), 40)
            );
        }
    }
    Ok(())
}

async fn wait_containerd(
    run: &Path,
    logs: &Path,
    daemons: &mut [(String, Child)],
) -> anyhow::Result<()> {
    let sock = config::containerd_socket(run);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        check_daemons(daemons, logs)?;
        let ok = Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "containerd did not answer on {}\n{}",
                sock.display(),
                tail(&logs.join("containerd.log"), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a node daemon in the guard's process group, its output in `<logs>/<name>.log`.
fn spawn(
    guard: &guard::Guard,
    logs: &Path,
    name: &str,
    cmd: &mut Command,
) -> anyhow::Result<(String, Child)> {
    let log = File::create(logs.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    guard.adopt(cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
    Ok((name.to_owned(), child))
}

/// The last `lines` lines of a log file, headed by its path.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = format!("----- {} -----\n", path.display());
    for l in &all[from..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}
