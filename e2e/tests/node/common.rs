//! What the node tests share: the one `helm install` (the README's "Install with Helm"), the
//! app namespace (two mock LLM upstreams behind Services, a key pool, a failover pool and an
//! annotated app Deployment), reading the numbers the app and the mocks keep, and a lock that
//! runs the tests one at a time.

use keyway_e2e::http::HttpClient;
use keyway_e2e::manifests::Manifests;
use keyway_e2e::node::{images, node};
use keyway_e2e::{Cluster, TestNamespace, random_hex, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// The release and its namespace, as in the README.
pub const RELEASE: &str = "keyway";
pub const RELEASE_NS: &str = "keyway";
/// Pod start, image already on the node, probes: a loaded 2-core machine needs tens of
/// seconds at worst.
pub const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// The node tests run one at a time: some of them restart the controller under the others.
pub async fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

/// The node's API server.
pub async fn cluster() -> &'static Cluster {
    node().await.cluster()
}

/// The `helm install` every node test shares, with how long it took to be Ready.
#[derive(Debug)]
pub struct Installed {
    pub install_to_ready: Duration,
}

/// The README's install commands, once per process: default values plus the image built on
/// this machine (`image.tag=dev`, `image.pullPolicy=Never`).
pub async fn installed() -> &'static Installed {
    static INSTALLED: OnceCell<Installed> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let node = node().await;
            let cluster = node.cluster();
            let helm = keyway_e2e::helm::Helm::new(cluster);
            let chart = keyway_e2e::helm::chart_dir();
            let start = Instant::now();
            let tag = format!("image.tag={}", images::KEYWAY_TAG);
            let out = helm
                .run(&[
                    "install",
                    RELEASE,
                    &chart.to_string_lossy(),
                    "-n",
                    RELEASE_NS,
                    "--create-namespace",
                    "--set",
                    &tag,
                    "--set",
                    "image.pullPolicy=Never",
                ])
                .await;
            assert!(
                out.status.success(),
                "helm install: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            node.rollout(RELEASE_NS, "deployment/keyway-controller")
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            let install_to_ready = start.elapsed();
            eprintln!(
                "[e2e timing] node: helm install -> both controller replicas Ready: {:.1}s",
                install_to_ready.as_secs_f64()
            );
            Installed { install_to_ready }
        })
        .await
}

/// The app namespace every traffic test shares.
#[derive(Debug)]
pub struct App {
    pub ns: TestNamespace,
    /// The two keys of the pool (fake values, only the mocks ever see them).
    pub keys: [String; 2],
    /// `kubectl apply` of the app Deployment -> both replicas answered through their sidecars.
    pub injection_to_first_request: Duration,
}

/// The app's pod label.
pub const APP_LABEL: &str = "app=llm-app";

/// Creates the app namespace once: mocks `mock-a` (primary) and `mock-b` (secondary) behind
/// Services, Secret + ApiKeyPool + LoadBalancerPool `llm` (failover, backends by Service DNS
/// name), and the annotated app Deployment with two replicas sending through their sidecars.
pub async fn app() -> &'static App {
    static APP: OnceCell<App> = OnceCell::const_new();
    APP.get_or_init(|| async {
        installed().await;
        let cluster = cluster().await;
        let ns = cluster.namespace("node-app").await;
        let keys = [
            format!("sk-node-a-{}", random_hex(16)),
            format!("sk-node-b-{}", random_hex(16)),
        ];
        let mut yaml = String::new();
        for name in ["mock-a", "mock-b"] {
            yaml.push_str(&mock_manifest(name));
        }
        yaml.push_str(&pool_manifest(ns.name(), &keys));
        ns.apply(&yaml).await;
        let node = node().await;
        for name in ["mock-a", "mock-b"] {
            node.rollout(ns.name(), &format!("deployment/{name}"))
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let start = Instant::now();
        ns.apply(&app_manifest("app", 2, &[])).await;
        node.rollout(ns.name(), "deployment/app")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        wait_for(
            POD_TIMEOUT,
            "both app replicas had a request answered through their sidecar",
            || async {
                let stats = app_stats(&ns).await?;
                let answered = stats
                    .iter()
                    .filter(|(_, s)| s["ok"].as_u64() > Some(0))
                    .count();
                if stats.len() == 2 && answered == 2 {
                    Ok(())
                } else {
                    Err(format!("{stats:?}"))
                }
            },
        )
        .await;
        let injection_to_first_request = start.elapsed();
        eprintln!(
            "[e2e timing] node: app Deployment applied -> both replicas' first request answered \
             through the injected sidecar: {:.1}s",
            injection_to_first_request.as_secs_f64()
        );
        App {
            ns,
            keys,
            injection_to_first_request,
        }
    })
    .await
}

/// A mock LLM upstream Deployment + Service named `name` (port 80 -> 8000), with its numbers
/// on port 9000.
pub fn mock_manifest(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: mock
        image: {image}
        imagePullPolicy: Never
        args: ["--listen", "0.0.0.0:8000", "--name", "{name}", "--stats-listen", "0.0.0.0:9000"]
        ports: [{{name: http, containerPort: 8000}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
        securityContext: {security}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
"#,
        image = images::MOCK_UPSTREAM,
        security = SECURITY,
    )
}

/// What every test container runs with: the restricted Pod Security profile.
const SECURITY: &str = "{runAsNonRoot: true, runAsUser: 65532, readOnlyRootFilesystem: true, \
     allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}";

/// The Secret (labelled for Keyway), the ApiKeyPool and the failover LoadBalancerPool `llm`
/// whose backends are the two mocks' Services, by DNS name.
pub fn pool_manifest(ns: &str, keys: &[String; 2]) -> String {
    Manifests::new()
        .secret("llm-keys", &[("key-a", &keys[0]), ("key-b", &keys[1])])
        .key_pool("llm", "llm-keys")
        .pool("llm", "llm")
        .spec("mode: failover\nauth: {header: Authorization, prefix: \"Bearer \"}")
        .backend_with_role("primary", "primary", &format!("http://mock-a.{ns}.svc"))
        .backend_with_role("secondary", "secondary", &format!("http://mock-b.{ns}.svc"))
        .yaml()
}

/// The app: `keyway-app-client` asking for injection, sending every 100 ms through
/// `http://127.0.0.1:8080` and serving its numbers on port 9000. `args` replace the default
/// arguments.
pub fn app_manifest(name: &str, replicas: u32, args: &[&str]) -> String {
    let args = if args.is_empty() {
        r#"["--interval-ms", "100", "--stats-listen", "0.0.0.0:9000"]"#.to_owned()
    } else {
        serde_json::to_string(args).unwrap_or_default()
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: llm-{name}}}}}
  template:
    metadata:
      labels: {{app: llm-{name}}}
      annotations: {{keyway.dev/inject: "true"}}
    spec:
      containers:
      - name: app
        image: {image}
        imagePullPolicy: Never
        args: {args}
        securityContext: {security}
"#,
        image = images::APP_CLIENT,
        security = SECURITY,
    )
}

/// `(pod name, pod IP)` of the Running Pods of `selector` in `ns`.
pub async fn pods(ns: &TestNamespace, selector: &str) -> Vec<(String, String)> {
    let out = ns
        .kubectl_ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "--field-selector=status.phase=Running",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.metadata.deletionTimestamp}{"\n"}{end}"#,
        ])
        .await;
    out.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, ip) = (parts.next()?, parts.next()?);
            // A Pod being deleted still runs for a while: not one of the replicas any more.
            parts
                .next()
                .is_none()
                .then(|| (name.to_owned(), ip.to_owned()))
        })
        .collect()
}

/// The numbers of every running app Pod (`keyway-app-client`'s stats), by Pod name.
pub async fn app_stats(ns: &TestNamespace) -> Result<Vec<(String, Value)>, String> {
    stats(ns, APP_LABEL).await
}

/// The numbers of the Pods of `selector`, read from their port 9000 (the node reaches Pod IPs).
pub async fn stats(ns: &TestNamespace, selector: &str) -> Result<Vec<(String, Value)>, String> {
    let http = HttpClient::new();
    let mut out = Vec::new();
    for (pod, ip) in pods(ns, selector).await {
        let reply = http
            .get(&format!("http://{ip}:9000/stats"))
            .await
            .map_err(|e| format!("{pod}: {e:#}"))?;
        out.push((pod, reply.json().map_err(|e| format!("{e:#}"))?));
    }
    Ok(out)
}

/// Sum of a counter over the app Pods' stats.
pub fn total(stats: &[(String, Value)], field: &str) -> u64 {
    stats.iter().filter_map(|(_, s)| s[field].as_u64()).sum()
}

/// Requests answered by the mock `upstream`, over the app Pods' stats.
pub fn by_upstream(stats: &[(String, Value)], upstream: &str) -> u64 {
    stats
        .iter()
        .filter_map(|(_, s)| s["upstreams"][upstream].as_u64())
        .sum()
}
