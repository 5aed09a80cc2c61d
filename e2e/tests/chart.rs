//! The Helm chart (`charts/keyway`), with the real `helm` against the real API server:
//!
//! * it lints and renders, with default values and with every optional feature on, and every
//!   rendered object passes a server-side dry run (the ServiceMonitor and PrometheusRule CRDs
//!   installed from the tools cache);
//! * its PrometheusRule passes `promtool check rules`, and the alerts and the dashboard use
//!   only metric names the binaries export;
//! * `values.schema.json` rejects wrong values with a message that names the field;
//! * installed, its controller ServiceAccount's RBAC is enough to run the real controller with
//!   the chart's own flags (ready, leader, status and Events written, a proxy served) and no
//!   more (Secrets outside the watched namespaces are Forbidden);
//! * a real Prometheus, scraping the way the rendered ServiceMonitors say, finds the
//!   controller's and a proxy's series;
//! * `helm upgrade` applies changed values and `helm uninstall` leaves nothing but the CRDs.
//!
//! The controller runs with the chart's webhook flags too (its webhook port moved to a free
//! loopback port): with the chart's RBAC it creates the webhook's TLS Secret and patches the
//! `caBundle` of the chart's MutatingWebhookConfiguration.

use base64::Engine;
use keyway_api::spec::{ApiKeyPool, Condition, LoadBalancerPool};
use keyway_e2e::discovery::{self, Dial, hello};
use keyway_e2e::helm::{Helm, chart_dir, find, of_kind, parse_manifests};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::prometheus::Prometheus;
use keyway_e2e::{
    Cluster, Controller, MockUpstream, Proxy, Timings, cluster, paths, random_hex, wait_for,
};
use kube::Api;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How soon status, Events and scrapes must show up.
const DEADLINE: Duration = Duration::from_secs(30);

/// The `--set` values that turn every optional feature on.
fn all_features(watch: &[&str]) -> Vec<String> {
    vec![
        "--set".to_owned(),
        "gateway.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,\
         grafanaDashboard.enabled=true,injector.enabled=true,\
         gateway.clientTokensSecret=gateway-client-tokens"
            .to_owned(),
        "--set".to_owned(),
        format!("watchNamespaces={{{}}}", watch.join(",")),
        "--set".to_owned(),
        "serviceMonitor.labels.release=prometheus".to_owned(),
    ]
}

fn args<'a>(fixed: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut all = fixed.to_vec();
    all.extend(extra.iter().map(String::as_str));
    all
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Installs the ServiceMonitor and PrometheusRule CRDs into the shared cluster, once.
async fn install_monitoring_crds(cluster: &Cluster) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let dir = tokio::task::spawn_blocking(paths::monitoring_crds_dir)
            .await
            .expect("monitoring CRDs");
        let files: Vec<String> = [
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ]
        .iter()
        .map(|f| dir.join(f).to_string_lossy().into_owned())
        .collect();
        let mut apply = vec!["apply", "--server-side", "--force-conflicts"];
        let mut wait = vec!["wait", "--for=condition=established", "--timeout=60s"];
        for f in &files {
            apply.extend(["-f", f.as_str()]);
            wait.extend(["-f", f.as_str()]);
        }
        cluster.kubectl_ok(&apply).await;
        cluster.kubectl_ok(&wait).await;
        // Refresh kubectl's discovery cache with the new kinds.
        cluster
            .kubectl_ok(&["get", "servicemonitors,prometheusrules", "-A"])
            .await;
    })
    .await;
}

fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

// === 1. lint, render, server-side dry run ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_render_and_server_dry_run() {
    let mut t = Timings::new("chart_render");
    let cluster = cluster().await;
    let helm = Helm::offline();
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let rel_ns = cluster.namespace("chart-render").await;
    let w1 = cluster.namespace("chart-render-w1").await;
    let w2 = cluster.namespace("chart-render-w2").await;
    let all = all_features(&[w1.name(), w2.name()]);
    t.phase("cluster + namespaces");

    helm.ok(&["lint", "--strict", chart]).await;
    helm.ok(&args(&["lint", "--strict", chart], &all)).await;
    t.phase("helm lint (defaults, all features)");

    let release = "kw-render";
    let defaults = helm
        .ok(&["template", release, chart, "-n", rel_ns.name()])
        .await;
    let everything = helm
        .ok(&args(
            &["template", release, chart, "-n", rel_ns.name()],
            &all,
        ))
        .await;
    t.phase("helm template (defaults, all features)");

    // --- defaults: what a plain `helm install` creates ---
    let objs = parse_manifests(&defaults);
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, BTreeSet::from(expected), "kinds rendered by default");
    let ctl = "kw-render-keyway-controller";
    let deploy = find(&objs, "Deployment", ctl);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let a = container_args(deploy);
    for flag in [
        "--grpc-listen=0.0.0.0:8443",
        "--admin-listen=0.0.0.0:9902",
        "--leader-election=true",
        "--lease-name=kw-render-keyway-controller",
        "--webhook-listen=0.0.0.0:9443",
        "--webhook-config-name=kw-render-keyway-sidecar-injector",
        "--tls-secret-name=kw-render-keyway-webhook-tls",
        // Secure by default: TLS (self-managed, so no --grpc-tls-* and no opt-out), a
        // Keyway-specific token audience, bounded streams.
        "--sidecar-controller-url=https://kw-render-keyway-controller.{ns}.svc:8443",
        "--token-audience=keyway.dev",
        "--stream-max-lifetime-seconds=600",
    ] {
        let flag = flag.replace("{ns}", rel_ns.name());
        assert!(a.contains(&flag), "controller args lack {flag}: {a:?}");
    }
    assert!(
        !a.iter()
            .any(|f| f.starts_with("--grpc-plaintext") || f.starts_with("--grpc-tls")),
        "{a:?}"
    );
    let dns = format!(
        "--tls-dns-names={ctl}.{ns}.svc,{ctl}.{ns}.svc.cluster.local",
        ns = rel_ns.name()
    );
    assert!(a.contains(&dns), "controller args lack {dns}: {a:?}");
    assert!(
        !a.iter().any(|f| f.starts_with("--watch-namespace")),
        "watches all namespaces by default"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert!(
        env.contains(&("POD_NAMESPACE", "metadata.namespace")),
        "{env:?}"
    );
    assert!(env.contains(&("POD_NAME", "metadata.name")), "{env:?}");
    let svc = find(&objs, "Service", ctl);
    let ports: BTreeSet<(String, i64, String)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or_default(),
                p["targetPort"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([
            ("grpc".to_owned(), 8443, "grpc".to_owned()),
            ("metrics".to_owned(), 9902, "metrics".to_owned()),
            ("webhook".to_owned(), 443, "webhook".to_owned()),
        ])
    );
    let pdb = find(&objs, "PodDisruptionBudget", ctl);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let hook = &find(
        &objs,
        "MutatingWebhookConfiguration",
        "kw-render-keyway-sidecar-injector",
    )["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "Never");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(hook["clientConfig"]["service"]["port"], 443);
    assert!(hook["clientConfig"].get("caBundle").is_none());
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
    assert_eq!(excluded, &serde_json::json!(["kube-system", rel_ns.name()]));
    let cel = hook["matchConditions"][0]["expression"]
        .as_str()
        .expect("a matchConditions expression");
    assert!(
        cel.contains("'keyway.dev/inject'") && cel.contains("== 'true'"),
        "{cel}"
    );
    // Default RBAC: one ClusterRole for the watched kinds; the Lease and the webhook Secret
    // only in the release namespace, by name.
    let cr = find(&objs, "ClusterRole", ctl);
    let cr_text = cr["rules"].to_string();
    assert!(cr_text.contains("tokenreviews") && cr_text.contains("secrets"));
    assert!(
        !cr_text.contains("leases"),
        "leases are namespaced: {cr_text}"
    );
    let local = find(&objs, "Role", "kw-render-keyway-controller-local");
    assert_eq!(local["metadata"]["namespace"], rel_ns.name());
    let named: Vec<&Value> = local["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r.get("resourceNames").is_some())
        .collect();
    assert_eq!(
        named.len(),
        2,
        "get/update leases and the TLS Secret by name"
    );

    // --- everything on ---
    let objs = parse_manifests(&everything);
    for (kind, name) in [
        ("Deployment", "kw-render-keyway-gateway"),
        ("Service", "kw-render-keyway-gateway"),
        ("ServiceAccount", "kw-render-keyway-gateway"),
        ("ServiceMonitor", "kw-render-keyway-controller"),
        ("ServiceMonitor", "kw-render-keyway-gateway"),
        ("PrometheusRule", "kw-render-keyway"),
        ("ConfigMap", "kw-render-keyway-dashboard"),
    ] {
        find(&objs, kind, name);
    }
    let a = container_args(find(&objs, "Deployment", ctl));
    let watch = format!("--watch-namespace={},{}", w1.name(), w2.name());
    assert!(a.contains(&watch), "{a:?}");
    // Namespaced rules moved out of the ClusterRole into a Role per watched namespace.
    let cr_text = find(&objs, "ClusterRole", ctl)["rules"].to_string();
    assert!(!cr_text.contains("secrets") && !cr_text.contains("loadbalancerpools"));
    assert!(cr_text.contains("mutatingwebhookconfigurations") && cr_text.contains("resourceNames"));
    let role_ns: BTreeSet<&str> = of_kind(&objs, "Role")
        .iter()
        .filter(|r| r["metadata"]["name"] == ctl)
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(role_ns, BTreeSet::from([w1.name(), w2.name()]));
    let gw = find(&objs, "Deployment", "kw-render-keyway-gateway");
    let ga = container_args(gw);
    assert!(
        ga.contains(&format!(
            "--controller=https://{ctl}.{}.svc:8443",
            rel_ns.name()
        )),
        "{ga:?}"
    );
    assert!(ga.contains(&"--token-file=/var/run/secrets/keyway/token/token".to_owned()));
    // The gateway trusts the controller's own CA (only ca.crt of its Secret) and sends a
    // token with Keyway's audience.
    assert!(ga.contains(&"--controller-ca=/etc/keyway/controller-ca/ca.crt".to_owned()));
    // Not an open relay: clients need one of the tokens of the named Secret.
    assert!(ga.contains(&"--client-tokens-file=/etc/keyway/client-tokens/tokens".to_owned()));
    let volumes = gw["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(r#""secretName":"gateway-client-tokens""#),
        "{volumes}"
    );
    assert!(
        volumes.contains("kw-render-keyway-webhook-tls")
            && volumes.contains(r#""items":[{"key":"ca.crt","path":"ca.crt"}]"#)
            && volumes.contains(r#""audience":"keyway.dev""#),
        "{volumes}"
    );
    let dash = find(&objs, "ConfigMap", "kw-render-keyway-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let board: Value = serde_json::from_str(dash["data"]["keyway.json"].as_str().expect("json"))
        .expect("the dashboard is JSON");
    assert!(board["panels"].as_array().is_some_and(|p| p.len() > 10));
    t.phase("rendered objects checked");

    // --- the API server accepts every object (schemas, CEL of matchConditions, RBAC) ---
    install_monitoring_crds(cluster).await;
    t.phase("ServiceMonitor/PrometheusRule CRDs installed");
    for (what, yaml, count) in [
        ("defaults", &defaults, parse_manifests(&defaults).len()),
        ("all features", &everything, objs.len()),
    ] {
        let out = cluster
            .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], yaml)
            .await;
        assert!(
            out.status.success(),
            "server-side dry run of the chart ({what}) failed:\n{}",
            stderr(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let accepted = stdout
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(accepted, count, "every object accepted ({what}):\n{stdout}");
    }
    t.phase("kubectl apply --dry-run=server (defaults, all features)");
    t.total();
}

// === 1b. alerts and dashboard: valid PromQL, real metric names ===

/// Every `keyway_*` metric name the binaries register (string literals in their sources).
fn exported_metric_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("keyway_")
                        && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        out.insert(piece.to_owned());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for krate in ["proxy", "controller"] {
        walk(&paths::repo_root().join(krate).join("src"), &mut names);
    }
    names
}

/// The `keyway_*` identifiers used in PromQL text, histogram suffixes removed.
fn used_metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.match_indices("keyway_")
        .filter(|(i, _)| *i == 0 || !ident(bytes[i - 1]))
        .map(|(i, _)| {
            let len = bytes[i..].iter().take_while(|b| ident(**b)).count();
            let name = &text[i..i + len];
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_rules_pass_promtool_and_use_real_metrics() {
    let mut t = Timings::new("chart_promtool");
    let helm = Helm::offline();
    let chart = chart_dir();
    let rendered = helm
        .ok(&[
            "template",
            "kw-rules",
            chart.to_str().expect("utf-8 path"),
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ])
        .await;
    let objs = parse_manifests(&rendered);
    let rule = find(&objs, "PrometheusRule", "kw-rules-keyway");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keyway-rules.yaml");
    // A rules file is the PrometheusRule's spec (JSON is YAML).
    std::fs::write(&file, rule["spec"].to_string()).expect("write rules");
    let promtool = tokio::task::spawn_blocking(|| paths::system_binary("promtool"))
        .await
        .expect("promtool");
    let out = tokio::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .await
        .expect("run promtool");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{report}"
    );
    let alerts: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{report}"
    );
    for needed in [
        "KeywayNoHealthyBackend",
        "KeywayPoolFailedOver",
        "KeywayKeysUnavailable",
        "KeywayNoKeyAvailable",
        "KeywayProxyConfigRejected",
        "KeywayProxyConfigNotAcknowledged",
        "KeywayHighUpstreamErrorRatio",
    ] {
        assert!(
            alerts.iter().any(|a| a == needed),
            "no alert {needed} in {alerts:?}"
        );
    }
    for r in rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
    {
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "alert {} has no {key}",
                r["alert"]
            );
        }
    }
    t.phase("promtool check rules");

    let exported = exported_metric_names();
    assert!(
        exported.len() > 20,
        "found only {exported:?} in the sources"
    );
    let dash = find(&objs, "ConfigMap", "kw-rules-keyway-dashboard");
    for (what, text) in [
        ("PrometheusRule", rule["spec"].to_string()),
        (
            "dashboard",
            dash["data"]["keyway.json"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    ] {
        let used = used_metric_names(&text);
        assert!(used.len() >= 5, "{what} uses only {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "the {what} uses metrics no binary exports: {unknown:?}"
        );
    }
    t.phase("metric names");
    t.total();
}

// === 2. values.schema.json ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rejects_wrong_values_naming_the_field() {
    let mut t = Timings::new("chart_schema");
    let cluster = cluster().await;
    let helm = Helm::new(cluster);
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let ns = cluster.namespace("chart-schema").await;
    let release = format!("kws-{}", random_hex(6));

    // The very command a user types: nothing gets installed.
    let out = helm
        .run(&[
            "install",
            &release,
            chart,
            "-n",
            ns.name(),
            "--skip-crds",
            "--set",
            "replicas=two",
        ])
        .await;
    let err = stderr(&out);
    assert!(!out.status.success(), "replicas=two was accepted");
    assert!(
        err.contains("/replicas") && err.contains("integer"),
        "the error does not name the field and the expected type:\n{err}"
    );
    let listed = helm.ok(&["list", "-q", "-n", ns.name()]).await;
    assert!(listed.trim().is_empty(), "a release exists: {listed}");

    for (set, field, words) in [
        ("replicsa=2", "replicsa", "additional properties"),
        (
            "injector.failurePolicy=Sometimes",
            "/injector/failurePolicy",
            "Ignore",
        ),
        (
            "gateway.service.port=70000",
            "/gateway/service/port",
            "maximum",
        ),
        ("controller.logFormat=xml", "/controller/logFormat", "json"),
        // A gateway is never an open relay by default.
        (
            "gateway.enabled=true",
            "gateway.clientTokensSecret",
            "allowAnonymousClients",
        ),
        (
            "serviceMonitor.interval=often",
            "/serviceMonitor/interval",
            "pattern",
        ),
        ("watchNamespaces=Not_A_Namespace", "/watchNamespaces", ""),
    ] {
        let out = helm.run(&["template", "kw", chart, "--set", set]).await;
        let err = stderr(&out);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains(field) && err.contains(words),
            "--set {set}: the error does not name {field}:\n{err}"
        );
    }
    t.phase("wrong values rejected");
    t.total();
}

// === 3. installed: the chart's RBAC runs the real controller, and no more ===

/// A kubeconfig whose user is a bearer token (not the admin).
fn token_kubeconfig(server: &str, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: sa
  user:
    token: {token}
contexts:
- name: sa
  context:
    cluster: e2e
    user: sa
    namespace: {namespace}
current-context: sa
"
    )
}

/// `kubectl` with another kubeconfig than the admin's.
async fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl")
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

fn pool_manifests(upstream: &str, key: &str, with_secret: bool) -> String {
    let m = if with_secret {
        Manifests::new().secret("llm-keys", &[("key-a", key)])
    } else {
        Manifests::new()
    };
    m.key_pool("keys", "llm-keys")
        .pool("llm", "keys")
        .backend("a", upstream)
        .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_runs_the_controller_with_the_charts_rbac() {
    let mut t = Timings::new("chart_install");
    let cluster = cluster().await;
    let helm = Helm::new(cluster);
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let rel_ns = cluster.namespace("chart-install").await;
    let watched = cluster.namespace("chart-install-w").await;
    let outside = cluster.namespace("chart-install-o").await;
    outside
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: not-yours}\nstringData: {k: v}\n")
        .await;
    let release = format!("kwi-{}", random_hex(6));
    let fullname = format!("{release}-keyway");
    let ctl = format!("{fullname}-controller");
    t.phase("cluster + namespaces");

    // The CRDs are already installed by the harness (crds/, identical to the chart's).
    let installed = helm
        .ok(&[
            "install",
            &release,
            chart,
            "-n",
            rel_ns.name(),
            "--skip-crds",
            "--set",
            &format!("watchNamespaces={{{}}}", watched.name()),
        ])
        .await;
    // NOTES.txt: what to do next, with this release's names.
    let notes = installed
        .split_once("NOTES:")
        .map(|(_, n)| n)
        .unwrap_or_else(|| panic!("no NOTES in the install output:\n{installed}"));
    eprintln!("helm install NOTES:{notes}");
    for needed in [
        format!("deployment/{release}-keyway-controller"),
        "kind: LoadBalancerPool".to_owned(),
        "kind: ApiKeyPool".to_owned(),
        format!("kubectl -n {} get lbp", watched.name()),
    ] {
        assert!(
            notes.contains(&needed),
            "the NOTES lack {needed:?}:\n{notes}"
        );
    }
    t.phase("helm install");

    // The controller's command line exactly as the chart renders it, listeners aside.
    let manifest = helm
        .ok(&["get", "manifest", &release, "-n", rel_ns.name()])
        .await;
    let objs = parse_manifests(&manifest);
    let deploy = find(&objs, "Deployment", &ctl);
    let all_args = container_args(deploy);
    assert!(
        all_args
            .iter()
            .any(|a| a == &format!("--webhook-config-name={fullname}-sidecar-injector")),
        "{all_args:?}"
    );
    let webhook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let webhook_listen = format!("--webhook-listen=127.0.0.1:{webhook_port}");
    let chart_args: Vec<&str> = all_args
        .iter()
        .map(String::as_str)
        .filter(|a| {
            !a.starts_with("--grpc-listen")
                && !a.starts_with("--admin-listen")
                && !a.starts_with("--webhook-listen")
        })
        .chain(std::iter::once(webhook_listen.as_str()))
        .collect();
    let lease_name = chart_args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .expect("a --lease-name flag")
        .to_owned();

    // The chart's ServiceAccount, its token, a kubeconfig with only that identity.
    let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let token = cluster
        .kubectl_ok(&["create", "token", sa, "-n", rel_ns.name(), "--duration=2h"])
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("sa-kubeconfig");
    std::fs::write(
        &kubeconfig,
        token_kubeconfig(cluster.server(), token.trim(), rel_ns.name()),
    )
    .expect("write kubeconfig");
    let pod_name = format!("{ctl}-e2e-0");
    let controller = Controller::start_as(
        &kubeconfig,
        &chart_args,
        &[("POD_NAMESPACE", rel_ns.name()), ("POD_NAME", &pod_name)],
    )
    .await;
    t.phase("controller ready as the chart's ServiceAccount");

    // Leader: the Lease (named by the chart, in the release namespace) is held by this pod.
    let http = HttpClient::new();
    wait_for(DEADLINE, "the controller holds the Lease", || async {
        let holder = rel_ns
            .kubectl_ok(&[
                "get",
                "lease",
                &lease_name,
                "-o",
                "jsonpath={.spec.holderIdentity}",
                "--ignore-not-found",
            ])
            .await;
        let metrics = http
            .get(&format!("{}/metrics", controller.admin_url))
            .await
            .map_err(|e| e.to_string())?
            .text();
        if holder == pod_name && metrics.lines().any(|l| l == "keyway_controller_leader 1") {
            Ok(())
        } else {
            Err(format!("holder {holder:?}"))
        }
    })
    .await;
    t.phase("leader (Lease get/create/update)");

    // The webhook's certificate: the Secret in the release namespace, the caBundle patched.
    wait_for(
        DEADLINE,
        "the controller manages the webhook certificate",
        || async {
            let bundle = cluster
                .kubectl_ok(&[
                    "get",
                    "mutatingwebhookconfiguration",
                    &format!("{fullname}-sidecar-injector"),
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ])
                .await;
            let secret = rel_ns
                .kubectl_ok(&[
                    "get",
                    "secret",
                    &format!("{fullname}-webhook-tls"),
                    "--ignore-not-found",
                    "-o",
                    "name",
                ])
                .await;
            if !bundle.trim().is_empty() && !secret.trim().is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "caBundle {} bytes, secret {secret:?}",
                    bundle.len()
                ))
            }
        },
    )
    .await;
    t.phase("webhook certificate (Secret create, caBundle patch)");

    // A pool whose Secret is missing: status and an Event say so.
    let upstream = MockUpstream::start("a").await.expect("mock upstream");
    let key = format!("sk-test-chart{}", random_hex(20));
    watched
        .apply(&pool_manifests(&upstream.url(), &key, false))
        .await;
    let client = cluster.client().await;
    let key_pools: Api<ApiKeyPool> = Api::namespaced(client.clone(), watched.name());
    let pools: Api<LoadBalancerPool> = Api::namespaced(client.clone(), watched.name());
    wait_for(
        DEADLINE,
        "ApiKeyPool keys: Ready=False SecretNotFound",
        || async {
            let st = key_pools
                .get("keys")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match ready(&st.conditions) {
                Some(c) if c.status == "False" && c.reason == "SecretNotFound" => Ok(()),
                _ => Err(format!("{st:?}")),
            }
        },
    )
    .await;
    wait_for(DEADLINE, "a SecretNotFound Event", || async {
        let reasons = watched
            .kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
            .await;
        if reasons.split_whitespace().any(|r| r == "SecretNotFound") {
            Ok(())
        } else {
            Err(reasons)
        }
    })
    .await;
    t.phase("status + Event for a missing Secret");

    watched
        .apply(&pool_manifests(&upstream.url(), &key, true))
        .await;
    wait_for(
        DEADLINE,
        "both pools Ready, observedGeneration current",
        || async {
            let kp = key_pools.get("keys").await.map_err(|e| e.to_string())?;
            let p = pools.get("llm").await.map_err(|e| e.to_string())?;
            let (kst, st) = (
                kp.status.clone().unwrap_or_default(),
                p.status.clone().unwrap_or_default(),
            );
            let ok = ready(&kst.conditions).is_some_and(|c| c.status == "True")
                && kst.observed_generation == kp.metadata.generation
                && kst.total_keys == 1
                && ready(&st.conditions).is_some_and(|c| c.status == "True")
                && st.observed_generation.is_some()
                && st.observed_generation == p.metadata.generation;
            if ok {
                Ok(())
            } else {
                Err(format!("ApiKeyPool {kst:?}; LoadBalancerPool {st:?}"))
            }
        },
    )
    .await;
    t.phase("reconciled: Ready, observedGeneration");

    // The default install is TLS with the controller's own certificate, and tokens need
    // Keyway's audience. A proxy trusts the CA in the controller's Secret (as the injector
    // and the gateway hand it over) and dials the Service name the certificate carries.
    let audience = chart_args
        .iter()
        .find_map(|a| a.strip_prefix("--token-audience="))
        .expect("a --token-audience flag")
        .to_owned();
    assert_eq!(audience, "keyway.dev");
    assert!(controller.grpc_url.starts_with("https://"));
    let ca_pem = rel_ns
        .kubectl_ok(&[
            "get",
            "secret",
            &format!("{fullname}-webhook-tls"),
            "-o",
            r"jsonpath={.data.ca\.crt}",
        ])
        .await;
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ca_pem.trim())
            .expect("base64 ca.crt"),
    )
    .expect("PEM");
    let server_name = format!("{ctl}.{}.svc", rel_ns.name());
    let tls = Dial {
        url: controller.grpc_url.clone(),
        ca_pem: Some(ca_pem.clone()),
        server_name: Some(server_name.clone()),
    };
    let plain = Dial {
        url: controller.grpc_url.replacen("https://", "http://", 1),
        ..Dial::default()
    };
    // One after the other: both create the ServiceAccount, and two concurrent applies of a
    // new object race (one gets AlreadyExists).
    let with_audience = cluster
        .service_account_token(watched.name(), "keyway-proxy", Some(&audience))
        .await;
    let default_audience = cluster
        .service_account_token(watched.name(), "keyway-proxy", None)
        .await;
    let watched_ns = watched.name();
    let attempt = |dial: Dial, token: String| async move {
        let (_tx, mut inbound) = discovery::open(&dial, Some(&token), hello(watched_ns))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        discovery::next_snapshot(&mut inbound, DEADLINE)
            .await
            .map(|_| ())
    };
    attempt(tls.clone(), with_audience.clone())
        .await
        .expect("TLS with the controller's CA and a keyway.dev token is served");
    let refused = attempt(plain, with_audience.clone()).await;
    assert!(refused.is_err(), "a plaintext client was served");
    let refused = attempt(tls.clone(), default_audience).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("Unauthenticated")),
        "a pod's default token (the API server's audience) must be refused: {refused:?}"
    );
    let untrusted = attempt(
        Dial {
            ca_pem: None,
            ..tls.clone()
        },
        with_audience,
    )
    .await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the CA was served"
    );
    t.phase("default install: TLS with the controller's own CA, keyway.dev audience");

    // A proxy is authenticated (TokenReview with the chart's RBAC) and served.
    let proxy = Proxy::start(
        &controller,
        watched.name(),
        &[
            "--controller-ca-pem",
            &ca_pem,
            "--controller-server-name",
            &server_name,
        ],
    )
    .await;
    let r = http
        .post_json(
            &format!("{}/v1/chat/completions", proxy.url),
            &chat_request("gpt-4o-mini", "hello"),
        )
        .await
        .expect("request through the proxy");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.received_keys(), vec![key.clone()]);
    wait_for(DEADLINE, "connectedProxies=1", || async {
        let st = pools
            .get("llm")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if st.connected_proxies == 1 {
            Ok(())
        } else {
            Err(format!("connectedProxies {}", st.connected_proxies))
        }
    })
    .await;
    t.phase("proxy served over gRPC");

    // --- and no more than that ---
    let out = kubectl_as(&kubeconfig, &["get", "secrets", "-n", outside.name()]).await;
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("Forbidden") && err.contains("secrets"),
        "reading Secrets outside the watched namespaces must be Forbidden; got {} {err}",
        out.status
    );
    let lease_res = format!("leases.coordination.k8s.io/{lease_name}");
    let other_lease = "leases.coordination.k8s.io/someone-elses-lease".to_owned();
    let injector_ref = format!(
        "mutatingwebhookconfigurations.admissionregistration.k8s.io/{fullname}-sidecar-injector"
    );
    for (verb, resource, ns, allowed) in [
        ("list", "secrets", watched.name(), true),
        (
            "watch",
            "loadbalancerpools.keyway.dev",
            watched.name(),
            true,
        ),
        (
            "patch",
            "apikeypools.keyway.dev --subresource=status",
            watched.name(),
            true,
        ),
        ("patch", "apikeypools.keyway.dev", watched.name(), false),
        ("create", "events.events.k8s.io", watched.name(), true),
        ("update", lease_res.as_str(), rel_ns.name(), true),
        (
            "create",
            "tokenreviews.authentication.k8s.io",
            rel_ns.name(),
            true,
        ),
        ("get", "secrets", outside.name(), false),
        (
            "list",
            "loadbalancerpools.keyway.dev",
            outside.name(),
            false,
        ),
        ("create", "secrets", watched.name(), false),
        ("delete", "secrets", watched.name(), false),
        (
            "update",
            "loadbalancerpools.keyway.dev",
            watched.name(),
            false,
        ),
        ("update", other_lease.as_str(), rel_ns.name(), false),
        // Replica reports: ConfigMaps of the release namespace only.
        ("patch", "configmaps", rel_ns.name(), true),
        ("watch", "configmaps", rel_ns.name(), true),
        ("patch", "configmaps", watched.name(), false),
        ("list", "pods", rel_ns.name(), false),
        // The webhook configuration: only the chart's own, by name.
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "default",
            false,
        ),
        ("patch", &injector_ref, "default", true),
    ] {
        let mut can_i = vec!["auth", "can-i", verb];
        can_i.extend(resource.split_whitespace());
        can_i.extend(["-n", ns]);
        let out = kubectl_as(&kubeconfig, &can_i).await;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let expected = if allowed { "yes" } else { "no" };
        assert_eq!(
            answer,
            expected,
            "can the controller {verb} {resource} in {ns}? ({})",
            stderr(&out)
        );
    }
    let out = kubectl_as(&kubeconfig, &["auth", "can-i", "list", "secrets", "-A"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no",
        "cluster-wide Secrets"
    );
    t.phase("least privilege (Forbidden outside, can-i matrix)");

    // Everything the controller did, it was allowed to do.
    let logs = controller.process.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the controller hit a Forbidden with the chart's RBAC (see {}):\n{}",
        controller.process.log_dir().display(),
        controller.process.tail()
    );
    helm.ok(&["uninstall", &release, "-n", rel_ns.name()]).await;
    t.total();
}

// === 4. Prometheus scrapes as the ServiceMonitors say ===

/// One scrape job per ServiceMonitor endpoint, as prometheus-operator would generate it, but
/// with static loopback targets: the Service's port named by the endpoint is resolved (so the
/// name must exist), and the process that would back it listens on `targets[component]`.
fn scrape_config(objs: &[Value], targets: &[(&str, &str)]) -> String {
    let mut jobs = Vec::new();
    for sm in of_kind(objs, "ServiceMonitor") {
        let ns = sm["metadata"]["namespace"].as_str().expect("namespace");
        let sm_name = sm["metadata"]["name"].as_str().expect("name");
        let selector = sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        let services: Vec<&Value> = of_kind(objs, "Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| s["metadata"]["labels"][k] == *v)
            })
            .collect();
        assert_eq!(
            services.len(),
            1,
            "ServiceMonitor {sm_name} must select one Service"
        );
        let svc = services[0];
        let svc_name = svc["metadata"]["name"].as_str().expect("name");
        let component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .expect("component label");
        for (i, ep) in sm["spec"]["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .enumerate()
        {
            let port_name = ep["port"].as_str().expect("endpoint port");
            let port = svc["spec"]["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| p["name"] == port_name)
                .unwrap_or_else(|| panic!("Service {svc_name} has no port {port_name}"));
            let target = targets
                .iter()
                .find(|(c, _)| *c == component)
                .map(|(_, t)| *t)
                .unwrap_or_else(|| panic!("no local process for {component}"));
            jobs.push(format!(
                "  # Service {svc_name} port {port_name} ({}) -> this process\n  \
                 - job_name: serviceMonitor/{ns}/{sm_name}/{i}\n    \
                 scrape_interval: {}\n    scrape_timeout: {}\n    metrics_path: {}\n    \
                 scheme: {}\n    static_configs:\n    - targets: ['{target}']\n      \
                 labels: {{job: {svc_name}, namespace: {ns}, service: {svc_name}, endpoint: {port_name}}}\n",
                port["port"],
                ep["interval"].as_str().expect("interval"),
                ep["scrapeTimeout"].as_str().expect("scrapeTimeout"),
                ep["path"].as_str().expect("path"),
                ep["scheme"].as_str().unwrap_or("http"),
            ));
        }
    }
    format!(
        "global:\n  evaluation_interval: 1s\nrule_files: [keyway-rules.yaml]\nscrape_configs:\n{}",
        jobs.concat()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_like_the_servicemonitors() {
    let mut t = Timings::new("chart_prometheus");
    let cluster = cluster().await;
    let ns = cluster.namespace("chart-prometheus").await;
    let helm = Helm::offline();
    let chart = chart_dir();
    let release = "kwp";
    // A short interval so the test is quick; the test reads it from the rendered object.
    let rendered = helm
        .ok(&[
            "template",
            release,
            chart.to_str().expect("utf-8 path"),
            "-n",
            ns.name(),
            "--set",
            "serviceMonitor.enabled=true,gateway.enabled=true,injector.enabled=false,\
             prometheusRule.enabled=true,gateway.allowAnonymousClients=true",
            "--set",
            "serviceMonitor.interval=1s,serviceMonitor.scrapeTimeout=1s",
        ])
        .await;
    let objs = parse_manifests(&rendered);
    assert_eq!(of_kind(&objs, "ServiceMonitor").len(), 2);

    let upstream_a = MockUpstream::start("a").await.expect("mock a");
    let upstream_b = MockUpstream::start("b").await.expect("mock b");
    ns.apply(&format!(
        r#"{}---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: llm2}}
spec:
  backends:
  - {{name: a, endpoint: "{}"}}
  - {{name: b, endpoint: "{}"}}
"#,
        pool_manifests(&upstream_a.url(), "sk-test-prom", true),
        upstream_a.url(),
        upstream_b.url()
    ))
    .await;
    let controller = Controller::start(cluster, Some(ns.name())).await;
    let proxy = Proxy::start(&controller, ns.name(), &[]).await;
    t.phase("controller + proxy");

    let strip = |u: &str| u.trim_start_matches("http://").to_owned();
    let (ctl_addr, gw_addr) = (strip(&controller.admin_url), strip(&proxy.admin_url));
    let config = scrape_config(
        &objs,
        &[
            ("controller", ctl_addr.as_str()),
            ("gateway", gw_addr.as_str()),
        ],
    );
    eprintln!("prometheus.yml:\n{config}");
    // The chart's alerts too, so they are evaluated against real Keyway series.
    let rules = find(&objs, "PrometheusRule", &format!("{release}-keyway"))["spec"].to_string();
    let prometheus =
        Prometheus::start_with_files(&config, &[("keyway-rules.yaml", rules.as_str())]).await;
    t.phase("prometheus ready");

    let ctl_job = format!("{release}-keyway-controller");
    let gw_job = format!("{release}-keyway-gateway");
    let pool = format!("{}/llm2", ns.name());
    let series = |q: String| {
        let prometheus = &prometheus;
        async move {
            let result = prometheus
                .query(&q)
                .await
                .map_err(|e| format!("{q}: {e:#}"))?;
            if result.is_empty() {
                let targets = prometheus.targets().await.unwrap_or_default();
                let health: Vec<String> = targets
                    .iter()
                    .map(|t| format!("{} {} {}", t["labels"]["job"], t["health"], t["lastError"]))
                    .collect();
                Err(format!("{q}: no series yet; targets {health:?}"))
            } else {
                Ok(result)
            }
        }
    };
    wait_for(DEADLINE, "both targets up (2 series)", || async {
        let r = series(format!("up{{job=~\"{ctl_job}|{gw_job}\"}} == 1")).await?;
        if r.len() == 2 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    let ctl_series = wait_for(DEADLINE, "a controller series", || {
        series(format!(
            "keyway_controller_connected_proxies{{job=\"{ctl_job}\",namespace=\"{}\"}} == 1",
            ns.name()
        ))
    })
    .await;
    assert_eq!(ctl_series[0]["metric"]["service"], ctl_job.as_str());
    assert_eq!(ctl_series[0]["metric"]["endpoint"], "metrics");
    let proxy_series = wait_for(DEADLINE, "a proxy series with the pool label", || {
        series(format!(
            "keyway_proxy_backends{{job=\"{gw_job}\",pool=\"{pool}\"}} == 2"
        ))
    })
    .await;
    assert_eq!(proxy_series[0]["metric"]["namespace"], ns.name());
    t.phase("series found through /api/v1/query");

    // Every alert of the chart loads and evaluates without error on these series.
    wait_for(DEADLINE, "every alert evaluated, health ok", || async {
        let rules = prometheus.rules().await.map_err(|e| format!("{e:#}"))?;
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if rules.len() >= 7 && bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{} rules; not ok: {bad:?}", rules.len()))
        }
    })
    .await;
    t.phase("alerts evaluated by Prometheus");
    let mut prometheus = prometheus;
    prometheus.process.kill().await;
    t.total();
}

// === 5. upgrade, uninstall ===

/// Every kind the chart can create.
const KINDS: &str = "deployments.apps,services,serviceaccounts,roles.rbac.authorization.k8s.io,\
rolebindings.rbac.authorization.k8s.io,poddisruptionbudgets.policy,configmaps,\
servicemonitors.monitoring.coreos.com,prometheusrules.monitoring.coreos.com,\
clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io,\
mutatingwebhookconfigurations.admissionregistration.k8s.io";

async fn release_objects(cluster: &Cluster, release: &str) -> BTreeSet<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    cluster
        .kubectl_ok(&["get", KINDS, "-A", "-l", &selector, "-o", "name"])
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_then_uninstall_leaves_only_the_crds() {
    let mut t = Timings::new("chart_upgrade");
    let cluster = cluster().await;
    install_monitoring_crds(cluster).await;
    let helm = Helm::new(cluster);
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let ns = cluster.namespace("chart-upgrade").await;
    let watched = cluster.namespace("chart-upgrade-w").await;
    let release = format!("kwu-{}", random_hex(6));
    let ctl = format!("{release}-keyway-controller");
    t.phase("cluster + monitoring CRDs");

    // Defaults (injector on: the objects only, no controller runs in this test), except
    // failurePolicy=Fail, for the webhook check below.
    helm.ok(&[
        "install",
        &release,
        chart,
        "-n",
        ns.name(),
        "--skip-crds",
        "--set",
        "injector.failurePolicy=Fail",
    ])
    .await;
    let before = release_objects(cluster, &release).await;
    assert!(
        before.contains(&format!("deployment.apps/{ctl}"))
            && before.contains(&format!(
                "mutatingwebhookconfiguration.admissionregistration.k8s.io/{release}-keyway-sidecar-injector"
            ))
            && before.contains(&format!("clusterrole.rbac.authorization.k8s.io/{ctl}")),
        "{before:?}"
    );
    t.phase("helm install");

    // Which Pods the API server sends to the sidecar injector. Nothing serves the webhook here
    // and failurePolicy is Fail, so exactly the Pods that reach it are refused: those annotated
    // keyway.dev/inject: "true" outside the excluded namespaces. The others are never blocked.
    for (namespace, annotation, reaches_webhook) in [
        (watched.name(), None, false),
        (watched.name(), Some("false"), false),
        (watched.name(), Some("true"), true),
        (ns.name(), Some("true"), false), // the release namespace is excluded
    ] {
        let name = format!("pod-{}", random_hex(6));
        let annotations = annotation.map_or(String::new(), |v| {
            format!("\n  annotations: {{keyway.dev/inject: \"{v}\", keyway.dev/pools: llm}}")
        });
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}{annotations}\n\
             spec:\n  containers: [{{name: app, image: example.invalid/app:1}}]\n"
        );
        let out = cluster
            .kubectl_stdin(&["create", "-n", namespace, "-f", "-"], &pod)
            .await;
        let err = stderr(&out);
        if reaches_webhook {
            assert!(
                !out.status.success() && err.contains("inject.keyway.dev"),
                "an annotated Pod in {namespace} must reach the webhook (and fail here): {err}"
            );
        } else {
            assert!(
                out.status.success(),
                "a Pod with annotation {annotation:?} in {namespace} must not reach the webhook: {err}"
            );
        }
    }
    t.phase("webhook matchConditions: only annotated Pods reach it");

    let upgrade = all_features(&[watched.name()]);
    let mut up_args = vec!["upgrade", &release, chart, "-n", ns.name(), "--skip-crds"];
    up_args.extend(["--set", "replicas=3"]);
    up_args.extend(upgrade.iter().map(String::as_str));
    helm.ok(&up_args).await;
    let replicas = ns
        .kubectl_ok(&["get", "deployment", &ctl, "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(replicas, "3");
    let after = release_objects(cluster, &release).await;
    for expected in [
        format!("deployment.apps/{release}-keyway-gateway"),
        format!("service/{release}-keyway-gateway"),
        format!("servicemonitor.monitoring.coreos.com/{ctl}"),
        format!("servicemonitor.monitoring.coreos.com/{release}-keyway-gateway"),
        format!("prometheusrule.monitoring.coreos.com/{release}-keyway"),
        format!("configmap/{release}-keyway-dashboard"),
        format!("role.rbac.authorization.k8s.io/{ctl}"),
    ] {
        assert!(
            after.contains(&expected),
            "no {expected} after the upgrade: {after:?}"
        );
    }
    let role_ns = watched
        .kubectl_ok(&["get", "role", &ctl, "-o", "jsonpath={.metadata.namespace}"])
        .await;
    assert_eq!(
        role_ns,
        watched.name(),
        "the Role is in the watched namespace"
    );
    let revision = helm
        .ok(&["status", &release, "-n", ns.name(), "-o", "json"])
        .await;
    let status: Value = serde_json::from_str(&revision).expect("helm status json");
    assert_eq!(status["version"], 2);
    assert_eq!(status["info"]["status"], "deployed");
    t.phase("helm upgrade (replicas 3, gateway, monitoring, watchNamespaces)");

    helm.ok(&["uninstall", &release, "-n", ns.name()]).await;
    wait_for(DEADLINE, "no object of the release is left", || async {
        let left = release_objects(cluster, &release).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    let listed = helm.ok(&["list", "-q", "-n", ns.name()]).await;
    assert!(listed.trim().is_empty(), "release still listed: {listed}");
    cluster
        .kubectl_ok(&[
            "get",
            "crd",
            "loadbalancerpools.keyway.dev",
            "apikeypools.keyway.dev",
        ])
        .await;
    t.phase("helm uninstall: nothing left, CRDs stay");
    t.total();
}
