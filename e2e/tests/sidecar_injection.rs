//! Sidecar injection through the real API server: the controller serves the mutating webhook
//! over HTTPS with a CA it made itself, patches the `caBundle` of a
//! `MutatingWebhookConfiguration` the test created (as the Helm chart would), and the API
//! server calls it for annotated Pods only.
//!
//! The configuration uses `failurePolicy: Fail`, a `namespaceSelector` on this test's
//! namespace (so other tests' Pods are never sent to it) and the `matchConditions` the README
//! recommends, so Pods without the annotation never reach the webhook at all. No kubelet runs:
//! the Pods are only stored, which is all admission needs.

use base64::Engine;
use keyway_e2e::http::HttpClient;
use keyway_e2e::{Controller, TestNamespace, Timings, cluster, free_port, random_hex, wait_for};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// How soon the controller must have patched the caBundle (and the API server use it).
const PATCH_DEADLINE: Duration = Duration::from_secs(30);
const SECRET: &str = "keyway-webhook-tls";
const MATCH: &str = "has(object.metadata.annotations) && object.metadata.annotations.exists(k, k == 'keyway.dev/inject') && object.metadata.annotations['keyway.dev/inject'] == 'true'";

/// A `MutatingWebhookConfiguration` of one test, deleted when dropped (it is cluster-scoped,
/// so the namespace's deletion does not take it away).
struct WebhookConfig {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl Drop for WebhookConfig {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "--request-timeout=10s",
                "delete",
                "mutatingwebhookconfiguration",
                "--ignore-not-found",
                "--wait=false",
                &self.name,
            ])
            .output();
    }
}

/// Labels `ns` and creates a configuration calling `https://127.0.0.1:port/inject` for Pods of
/// that namespace only, trusting `ca_bundle` (PEM; empty as the chart creates it).
async fn webhook_config(ns: &TestNamespace, port: u16, ca_bundle: &str) -> WebhookConfig {
    let name = format!("keyway-e2e-inject-{}", random_hex(6));
    webhook_config_named(ns, port, ca_bundle, name).await
}

async fn webhook_config_named(
    ns: &TestNamespace,
    port: u16,
    ca_bundle: &str,
    name: String,
) -> WebhookConfig {
    let cluster = cluster().await;
    let selector = random_hex(8);
    cluster
        .kubectl_ok(&[
            "label",
            "namespace",
            ns.name(),
            &format!("keyway-e2e-webhook={selector}"),
        ])
        .await;
    let config = WebhookConfig {
        name: name.clone(),
        kubeconfig: cluster.kubeconfig().to_path_buf(),
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_bundle);
    let yaml = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
- name: inject.keyway.dev
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Fail
  reinvocationPolicy: Never
  timeoutSeconds: 10
  clientConfig:
    url: "https://127.0.0.1:{port}/inject"
    caBundle: "{bundle}"
  rules:
  - operations: ["CREATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["pods"]
    scope: Namespaced
  namespaceSelector:
    matchLabels:
      keyway-e2e-webhook: "{selector}"
  matchConditions:
  - name: keyway-inject-annotation
    expression: "{MATCH}"
"#
    );
    let out = cluster.kubectl_stdin(&["create", "-f", "-"], &yaml).await;
    assert!(
        out.status.success(),
        "create the MutatingWebhookConfiguration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    config
}

async fn start_controller(ns: &TestNamespace, config_name: &str, port: u16) -> Controller {
    let listen = format!("127.0.0.1:{port}");
    Controller::start_with(
        cluster().await,
        Some(ns.name()),
        &[
            "--webhook-listen",
            &listen,
            "--webhook-dns-names",
            "127.0.0.1,localhost",
            "--webhook-config-name",
            config_name,
            "--webhook-secret-name",
            SECRET,
            "--sidecar-image",
            "keyway:e2e",
            "--sidecar-token-audience",
            "keyway-e2e",
        ],
    )
    .await
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default()
}

/// The certificates of a PEM text, as their base64 bodies (whitespace removed).
fn pem_bodies(pem: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") {
            body = Some(String::new());
        } else if line.starts_with("-----END") {
            out.extend(body.take());
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// The caBundle of every webhook of the configuration, decoded.
async fn ca_bundles(name: &str) -> Vec<Vec<u8>> {
    let out = cluster()
        .await
        .kubectl(&["get", "mutatingwebhookconfiguration", name, "-o", "json"])
        .await;
    let config: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    config["webhooks"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| b64(w["clientConfig"]["caBundle"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default()
}

/// The Secret's data, decoded.
async fn secret(ns: &TestNamespace) -> Option<serde_json::Map<String, Value>> {
    let out = cluster()
        .await
        .kubectl(&["-n", ns.name(), "get", "secret", SECRET, "-o", "json"])
        .await;
    let s: Value = serde_json::from_slice(&out.stdout).ok()?;
    let data = s["data"].as_object()?;
    Some(
        data.iter()
            .map(|(k, v)| {
                let bytes = b64(v.as_str().unwrap_or(""));
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(&bytes).into()),
                )
            })
            .collect(),
    )
}

fn field<'a>(data: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    data.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Waits until every webhook of `config` trusts exactly the CA(s) of the Secret's `ca.crt`.
async fn wait_bundle_patched(ns: &TestNamespace, config: &WebhookConfig) {
    wait_for(
        PATCH_DEADLINE,
        "the caBundle patched with the Secret's CA",
        || async {
            let data = secret(ns).await.ok_or("no Secret yet")?;
            let ca = pem_bodies(field(&data, "ca.crt").as_bytes());
            let bundles = ca_bundles(&config.name).await;
            if bundles.is_empty() {
                return Err("no webhooks".to_owned());
            }
            for b in &bundles {
                if pem_bodies(b) != ca {
                    return Err(format!("caBundle {} bytes, not the Secret's CA", b.len()));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// `kubectl create -o json` of `pod` in `ns`: the stored Pod, or kubectl's error.
async fn create_pod(ns: &str, pod: &Value) -> Result<Value, String> {
    let out = cluster()
        .await
        .kubectl_stdin(
            &["-n", ns, "create", "-o", "json", "-f", "-"],
            &pod.to_string(),
        )
        .await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Creates `pod`, retrying while the API server has not picked up the new caBundle yet
/// (its webhook client reloads the configuration asynchronously).
async fn create_pod_eventually(ns: &TestNamespace, pod: &Value) -> Value {
    let name = pod["metadata"]["name"].as_str().unwrap_or("pod").to_owned();
    wait_for(PATCH_DEADLINE, &format!("Pod {name} admitted"), || async {
        create_pod(ns.name(), pod).await
    })
    .await
}

/// A Pod of one container. `serviceAccountName` is set by hand: the harness' API server runs
/// without the ServiceAccount admission plugin (no controller-manager creates `default`),
/// which in a real cluster fills it in before webhooks run; a projected token needs it.
fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "example.invalid/app:1"}],
        },
    })
}

/// The Pod's containers, then its native sidecars (init containers that keep running): the
/// proxy is last in either form.
fn containers(pod: &Value) -> Vec<&str> {
    let names = |field: &str, sidecars_only: bool| -> Vec<&str> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| !sidecars_only || c["restartPolicy"] == "Always")
                    .filter_map(|c| c["name"].as_str())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut all = names("containers", false);
    all.extend(names("initContainers", true));
    all
}

fn volumes(pod: &Value) -> Vec<&str> {
    pod["spec"]["volumes"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The sum of the samples of `metric` (lines containing `filter`) on the controller.
async fn metric(controller: &Controller, metric: &str, filter: &str) -> f64 {
    let r = HttpClient::new()
        .get(&format!("{}/metrics", controller.admin_url))
        .await
        .expect("GET /metrics");
    keyway_testkit::metrics::sum(&r.text(), metric, &[filter])
}

/// The private keys' PEM bodies must appear nowhere in the controller's output.
fn assert_no_key_in_logs(controller: &Controller, data: &serde_json::Map<String, Value>) {
    let logs = controller.process.logs();
    assert!(!logs.contains("PRIVATE KEY"), "a private key was logged");
    for key in ["ca.key", "tls.key"] {
        for body in pem_bodies(field(data, key).as_bytes()) {
            assert!(body.len() > 40, "{key} has a body");
            // Any 40-character slice of the key's base64 is too much.
            for chunk in body.as_bytes().chunks(40).filter(|c| c.len() == 40) {
                let chunk = String::from_utf8_lossy(chunk);
                assert!(
                    !logs.contains(chunk.as_ref()),
                    "{key} material is in the logs"
                );
            }
        }
    }
}

/// The serving certificate the webhook port presents (via `openssl s_client`).
fn served_certificate(port: u16) -> Vec<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    pem_bodies(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_injection() {
    let mut t = Timings::new("sidecar_injection");
    let cluster = cluster().await;
    t.phase("shared cluster (includes its start-up if this test came first)");
    let ns = cluster.namespace("sidecar-injection").await;
    let port = free_port();
    let config = webhook_config(&ns, port, "").await;
    let controller = start_controller(&ns, &config.name, port).await;
    t.phase("configuration created, controller ready");

    wait_bundle_patched(&ns, &config).await;
    let data = secret(&ns).await.expect("the Secret");
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(!field(&data, key).is_empty(), "the Secret has {key}");
    }
    assert_eq!(
        served_certificate(port),
        pem_bodies(field(&data, "tls.crt").as_bytes()),
        "the webhook serves the Secret's certificate"
    );
    t.phase("Secret created, caBundle patched");

    // Asked for: injected, through the real API server.
    let injected = create_pod_eventually(
        &ns,
        &pod(
            "with-proxy",
            json!({"keyway.dev/inject": "true", "keyway.dev/pools": "llm,other/chat"}),
        ),
    )
    .await;
    assert_eq!(containers(&injected), ["app", "keyway-proxy"]);
    assert_eq!(
        volumes(&injected),
        ["keyway-token"],
        "added whole: the Pod had none"
    );
    assert_eq!(
        injected["metadata"]["annotations"]["keyway.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    // This API server (1.33) runs native sidecars: the proxy is the first init container,
    // kept running, and the app starts once its startup probe passed.
    assert!(
        injected["spec"]["containers"]
            .as_array()
            .is_some_and(|cs| cs.len() == 1),
        "the app's containers are untouched: {}",
        injected["spec"]
    );
    let proxy = &injected["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], "keyway-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(proxy["image"], "keyway:e2e");
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("env {name} in {proxy}"))
    };
    assert_eq!(
        env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(env("KEYWAY_POOLS")["value"], "llm,other/chat");
    assert_eq!(env("KEYWAY_LISTEN")["value"], "127.0.0.1:8080");
    assert_eq!(
        env("KEYWAY_TOKEN_FILE")["value"],
        "/var/run/secrets/keyway.dev/serviceaccount/token"
    );
    let token = &injected["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "keyway-e2e");
    assert_eq!(token["expirationSeconds"], 3600);
    assert_eq!(
        proxy["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/keyway.dev/serviceaccount"
    );
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    t.phase("annotated Pod injected");

    // The regular-container form on request, for a Pod that needs it.
    let regular = create_pod(
        ns.name(),
        &pod(
            "regular-form",
            json!({"keyway.dev/inject": "true", "keyway.dev/sidecar-mode": "container"}),
        ),
    )
    .await
    .expect("the container form is admitted");
    assert_eq!(containers(&regular), ["app", "keyway-proxy"]);
    assert!(
        regular["spec"].get("initContainers").is_none(),
        "{}",
        regular["spec"]
    );

    // A Pod with init containers of its own passes server-side dry-run (the API server's
    // validation of the patched Pod): the proxy goes first, so they can use it too.
    let mut with_init = pod("with-init", json!({"keyway.dev/inject": "true"}));
    with_init["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "example.invalid/migrate:1"}]);
    let out = cluster
        .kubectl_stdin(
            &[
                "-n",
                ns.name(),
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            &with_init.to_string(),
        )
        .await;
    assert!(
        out.status.success(),
        "server-side dry-run of an injected Pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: Value = serde_json::from_slice(&out.stdout).expect("dry-run JSON");
    let init: Vec<&str> = dry["spec"]["initContainers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(init, ["keyway-proxy", "migrate"]);
    t.phase("container form by annotation; native form passes server-side dry-run");

    // Not asked for: created unchanged although failurePolicy is Fail.
    let plain = create_pod(ns.name(), &pod("without-proxy", json!({"team": "a"})))
        .await
        .expect("a Pod without the annotation is never blocked");
    assert_eq!(containers(&plain), ["app"]);
    assert!(volumes(&plain).is_empty());
    let off = create_pod(
        ns.name(),
        &pod("opted-out", json!({"keyway.dev/inject": "false"})),
    )
    .await
    .expect("inject=false is not blocked");
    assert_eq!(containers(&off), ["app"]);

    // An already-injected spec submitted again (annotation stripped: the container is
    // enough): nothing is added twice.
    let mut again = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "resubmitted", "annotations": {"keyway.dev/inject": "true"}},
        "spec": injected["spec"].clone(),
    });
    again["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("nodeName");
    let again = create_pod(ns.name(), &again).await.expect("resubmitted");
    assert_eq!(containers(&again), ["app", "keyway-proxy"]);
    assert_eq!(volumes(&again), ["keyway-token"]);

    // Asked for with a bad annotation: denied, with the annotation named.
    let denied = create_pod(
        ns.name(),
        &pod(
            "bad-port",
            json!({"keyway.dev/inject": "true", "keyway.dev/port": "http"}),
        ),
    )
    .await
    .expect_err("a bad keyway.dev/port is denied");
    assert!(
        denied.contains("keyway.dev/port") && denied.contains("denied the request"),
        "{denied}"
    );
    t.phase("plain, opted-out, resubmitted and invalid Pods");

    let m = |result: &'static str| {
        let c = &controller;
        async move {
            metric(
                c,
                "keyway_controller_webhook_injections_total",
                &format!("result=\"{result}\""),
            )
            .await
        }
    };
    assert!(m("injected").await >= 1.0);
    assert_eq!(m("already_injected").await, 1.0);
    assert_eq!(m("denied").await, 1.0);
    // matchConditions kept the other Pods away from the webhook entirely.
    assert_eq!(m("skipped").await, 0.0);
    assert!(
        metric(
            &controller,
            "keyway_controller_webhook_ca_bundle_patches_total",
            "ok"
        )
        .await
            >= 1.0
    );
    let expiry = metric(
        &controller,
        "keyway_controller_webhook_cert_expiry_timestamp_seconds",
        "serving",
    )
    .await;
    assert!(expiry > 0.0, "serving expiry gauge set");
    assert_no_key_in_logs(&controller, &data);
    t.phase("metrics and logs");
    t.total();
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A CA valid over `ca` and a serving certificate for 127.0.0.1 and localhost valid over
/// `serving` (unix seconds, from, to), signed by it: (ca.crt, ca.key, tls.crt, tls.key).
fn pki(ca: (i64, i64), serving: (i64, i64)) -> (String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).expect("time");
    let ca_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("keyway-e2e-ca-{}", random_hex(6)),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(ca.0);
    params.not_after = at(ca.1);
    let ca_cert = params.self_signed(&ca_key).expect("ca");
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("p");
    leaf.not_before = at(serving.0);
    leaf.not_after = at(serving.1);
    let cert = leaf.signed_by(&key, &issuer).expect("serving");
    (ca_cert.pem(), ca_key_pem, cert.pem(), key.serialize_pem())
}

/// The Secret as a previous controller (or a test) left it.
fn secret_manifest(ca_crt: &str, ca_key: &str, tls_crt: &str, tls_key: &str) -> String {
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "kubernetes.io/tls",
        "data": {
            "ca.crt": enc(ca_crt),
            "ca.key": enc(ca_key),
            "tls.crt": enc(tls_crt),
            "tls.key": enc(tls_key),
        },
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_injection_certificate_rotation() {
    let mut t = Timings::new("sidecar_injection_certificate_rotation");
    let cluster = cluster().await;
    let ns = cluster.namespace("sidecar-rotation").await;
    // A CA good for years; a serving certificate 2 hours into a life of 2 h 10 min: less
    // than a third left, due for renewal.
    let (ca_crt, ca_key, old_crt, old_key) = pki(
        (now() - 3600, now() + 4 * 365 * 86400),
        (now() - 7200, now() + 600),
    );
    ns.apply(&secret_manifest(&ca_crt, &ca_key, &old_crt, &old_key))
        .await;
    let port = free_port();
    let config = webhook_config(&ns, port, "").await;
    let controller = start_controller(&ns, &config.name, port).await;
    t.phase("Secret with a nearly expired certificate, configuration, controller");

    // The serving certificate is replaced; the CA, still good, is kept and trusted.
    let data = wait_for(
        PATCH_DEADLINE,
        "the serving certificate renewed",
        || async {
            let data = secret(&ns).await.ok_or("no Secret")?;
            if field(&data, "tls.crt") == old_crt {
                return Err("tls.crt unchanged".to_owned());
            }
            Ok(data)
        },
    )
    .await;
    assert_eq!(field(&data, "ca.crt"), ca_crt, "the CA is kept");
    assert_eq!(field(&data, "ca.key"), ca_key);
    assert_ne!(field(&data, "tls.key"), old_key, "a new key, too");
    wait_bundle_patched(&ns, &config).await;
    assert_eq!(
        ca_bundles(&config.name).await[0]
            .windows(ca_crt.trim().len())
            .filter(|w| *w == ca_crt.trim().as_bytes())
            .count(),
        1,
        "the caBundle is the test's CA"
    );
    let renewed = metric(
        &controller,
        "keyway_controller_webhook_cert_renewals_total",
        "new_serving",
    )
    .await;
    assert_eq!(renewed, 1.0);
    let expiry = metric(
        &controller,
        "keyway_controller_webhook_cert_expiry_timestamp_seconds",
        "serving",
    )
    .await;
    assert!(
        expiry > (now() + 300 * 24 * 3600) as f64,
        "the new serving certificate lasts about a year ({expiry})"
    );
    wait_for(PATCH_DEADLINE, "the renewed certificate served", || async {
        let served = served_certificate(port);
        if served == pem_bodies(field(&data, "tls.crt").as_bytes()) {
            Ok(())
        } else {
            Err(format!(
                "{} certificates served, not the renewed one",
                served.len()
            ))
        }
    })
    .await;
    t.phase("serving certificate renewed and served");

    // And the webhook works through the API server with it.
    let injected = create_pod_eventually(
        &ns,
        &pod("after-rotation", json!({"keyway.dev/inject": "true"})),
    )
    .await;
    assert_eq!(containers(&injected), ["app", "keyway-proxy"]);
    assert_no_key_in_logs(&controller, &data);
    t.phase("injection after rotation");
    t.total();
}

/// A CA rotation under load: the configuration already trusts the old CA (as a previous run of
/// the controller left it), the CA has less than a third of its life left. The controller adds
/// a new CA next to the old one, moves the serving certificate to it one pass later, and no
/// admission request fails meanwhile (`failurePolicy: Fail` would make any TLS failure a
/// refused Pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_injection_ca_rotation() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut t = Timings::new("sidecar_injection_ca_rotation");
    let cluster = cluster().await;
    let ns = cluster.namespace("sidecar-ca-rotation").await;
    // The CA: 2.5 h into a 3 h life. The serving certificate: fresh.
    let (old_ca, old_ca_key, old_crt, old_key) =
        pki((now() - 9000, now() + 1800), (now() - 300, now() + 1500));
    ns.apply(&secret_manifest(&old_ca, &old_ca_key, &old_crt, &old_key))
        .await;
    let port = free_port();
    let config = webhook_config(&ns, port, &old_ca).await;

    let controller = start_controller(&ns, &config.name, port).await;
    // The old serving certificate loaded: the old CA's, which the configuration trusts.
    wait_for(PATCH_DEADLINE, "the old certificate served", || async {
        if served_certificate(port) == pem_bodies(old_crt.as_bytes()) {
            Ok(())
        } else {
            Err("not served yet".to_owned())
        }
    })
    .await;
    // Pods are created back to back from now until the rotation is over; each gets one attempt.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let ns = ns.name().to_owned();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let p = pod(&format!("during-{n}"), json!({"keyway.dev/inject": "true"}));
                match create_pod(&ns, &p).await {
                    Ok(created) if containers(&created) == ["app", "keyway-proxy"] => ok += 1,
                    Ok(created) => failed.push(format!("during-{n}: {:?}", containers(&created))),
                    Err(e) => failed.push(format!("during-{n}: {e}")),
                }
            }
            (ok, failed)
        })
    };
    t.phase("old CA trusted, controller started, load running");

    let data = wait_for(
        Duration::from_secs(60),
        "a new CA, the old one kept as previous, the serving certificate moved",
        || async {
            let data = secret(&ns).await.ok_or("no Secret")?;
            let (ca, prev, tls) = (
                field(&data, "ca.crt"),
                field(&data, "ca-previous.crt"),
                field(&data, "tls.crt"),
            );
            if ca == old_ca {
                return Err("the CA is not rotated yet".to_owned());
            }
            if prev != old_ca {
                return Err("the old CA is not kept as ca-previous.crt".to_owned());
            }
            if tls == old_crt {
                return Err("the serving certificate is still the old CA's".to_owned());
            }
            Ok(data)
        },
    )
    .await;
    t.phase("CA rotated, serving certificate moved");
    let bundle = &ca_bundles(&config.name).await[0];
    let mut expected = pem_bodies(field(&data, "ca.crt").as_bytes());
    expected.extend(pem_bodies(old_ca.as_bytes()));
    assert_eq!(
        pem_bodies(bundle),
        expected,
        "both CAs trusted, the new one first"
    );
    wait_for(PATCH_DEADLINE, "the moved certificate served", || async {
        let served = served_certificate(port);
        if served == pem_bodies(field(&data, "tls.crt").as_bytes()) {
            Ok(())
        } else {
            Err("not served yet".to_owned())
        }
    })
    .await;
    // A few more Pods against the new certificate, then stop the load.
    let before = metric(
        &controller,
        "keyway_controller_webhook_injections_total",
        "injected",
    )
    .await;
    wait_for(PATCH_DEADLINE, "more injections after the move", || async {
        let now = metric(
            &controller,
            "keyway_controller_webhook_injections_total",
            "injected",
        )
        .await;
        if now >= before + 3.0 {
            Ok(())
        } else {
            Err(format!("{now} injections"))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.expect("load task");
    assert!(
        failed.is_empty(),
        "{} of {} Pods failed: {failed:#?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 5, "only {ok} Pods created during the rotation");
    for kind in ["rotate_ca", "new_serving"] {
        assert_eq!(
            metric(
                &controller,
                "keyway_controller_webhook_cert_renewals_total",
                kind
            )
            .await,
            1.0,
            "{kind}"
        );
    }
    assert_no_key_in_logs(&controller, &data);
    eprintln!("[e2e] sidecar_injection_ca_rotation: {ok} Pods injected during the rotation");
    t.phase("no admission failed");
    t.total();
}

/// The configuration does not exist yet when the controller starts (the chart applies it
/// later, or someone deleted it): the controller warns, stays up, and patches it once it
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_injection_waits_for_its_configuration() {
    let mut t = Timings::new("sidecar_injection_waits_for_its_configuration");
    let cluster = cluster().await;
    let ns = cluster.namespace("sidecar-late-config").await;
    let port = free_port();
    let name = format!("keyway-e2e-inject-{}", random_hex(6));
    let mut controller = start_controller(&ns, &name, port).await;
    wait_for(
        PATCH_DEADLINE,
        "a warning about the missing configuration",
        || async {
            let logs = controller.process.logs();
            if logs.contains("MutatingWebhookConfiguration not found") {
                Ok(())
            } else {
                Err("no warning yet".to_owned())
            }
        },
    )
    .await;
    // The Secret is made all the same.
    wait_for(PATCH_DEADLINE, "the Secret", || async {
        secret(&ns).await.map(|_| ()).ok_or("no Secret")
    })
    .await;
    t.phase("controller up without its configuration");

    // Now the configuration appears (same name): the controller finds and patches it.
    let config = webhook_config_named(&ns, port, "", name).await;
    wait_for(
        Duration::from_secs(45),
        "the late configuration patched",
        || async {
            let data = secret(&ns).await.ok_or("no Secret")?;
            let ca = pem_bodies(field(&data, "ca.crt").as_bytes());
            match ca_bundles(&config.name).await.first() {
                Some(b) if pem_bodies(b) == ca => Ok(()),
                _ => Err("caBundle not patched yet".to_owned()),
            }
        },
    )
    .await;
    assert!(
        controller.process.exited().is_none(),
        "the controller kept running"
    );
    let injected =
        create_pod_eventually(&ns, &pod("late", json!({"keyway.dev/inject": "true"}))).await;
    assert_eq!(containers(&injected), ["app", "keyway-proxy"]);
    t.phase("configuration created, patched, injecting");
    t.total();
}
