//! What the webhook answers, with no I/O: an `AdmissionReview` (v1) in, an `AdmissionReview`
//! out, with a JSONPatch that adds the `keyway-proxy` container when the Pod asks for it.
//!
//! A Pod without `keyway.dev/inject: "true"` is always allowed unchanged: the webhook must
//! never stand in the way of Pods that did not ask for it. A Pod that asked for injection but
//! carries an invalid Keyway annotation is denied, with a message naming the annotation:
//! starting it without its proxy would only fail later and less clearly.

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

/// The annotation that asks for injection (value `"true"`).
pub const INJECT: &str = "keyway.dev/inject";
/// Set on injected Pods, with the controller's version.
pub const INJECTED: &str = "keyway.dev/injected";
/// Pools the proxy serves: `name` or `namespace/name`, comma-separated.
pub const POOLS: &str = "keyway.dev/pools";
/// The proxy's traffic port on 127.0.0.1 (default [`DEFAULT_PORT`]).
pub const PORT: &str = "keyway.dev/port";
/// Other namespaces whose granted pools the proxy serves, comma-separated.
pub const EXTRA_NAMESPACES: &str = "keyway.dev/extra-namespaces";
/// `native` or `container`: the form of the injected proxy for this Pod, overriding what the
/// controller chose for the cluster ([`Injector::native_sidecar`]).
pub const SIDECAR_MODE: &str = "keyway.dev/sidecar-mode";

/// The injected container's name.
pub const CONTAINER: &str = "keyway-proxy";
/// The projected ServiceAccount token volume's name.
pub const TOKEN_VOLUME: &str = "keyway-token";
/// Where the token volume is mounted in the proxy container.
pub const TOKEN_DIR: &str = "/var/run/secrets/keyway.dev/serviceaccount";
/// The proxy's traffic port unless `keyway.dev/port` says otherwise.
pub const DEFAULT_PORT: u16 = 8080;
/// The proxy's admin port (/healthz, /readyz, /metrics), on all interfaces for probes and
/// scraping.
pub const ADMIN_PORT: u16 = 9901;
/// Lifetime of the projected token; the kubelet refreshes it well before.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// A native sidecar's startup probe: the app starts once the proxy has its configuration,
/// checked every second for up to two minutes (then the kubelet restarts the proxy and waits
/// again; the app cannot do anything useful without its keys anyway).
const STARTUP_PERIOD_SECONDS: i64 = 1;
const STARTUP_FAILURE_THRESHOLD: i64 = 120;

/// How injected proxies are configured (`--sidecar-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injector {
    /// The proxy image.
    pub image: String,
    /// What the injected proxy dials (`KEYWAY_CONTROLLER`).
    pub controller_url: String,
    /// Audience of the projected token (`None`: the API server's default).
    pub token_audience: Option<String>,
    /// CA certificates (PEM) the injected proxy trusts for an `https://` controller
    /// (`KEYWAY_CONTROLLER_CA_PEM`); `None`: the public roots.
    pub controller_ca_pem: Option<String>,
    /// Written to `keyway.dev/injected`.
    pub version: String,
    /// Inject a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// 1.29+) rather than a regular container; a Pod's [`SIDECAR_MODE`] annotation overrides.
    pub native_sidecar: bool,
}

/// What the webhook did with one request; [`Outcome::label`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Not a Pod creation that asked for injection.
    Skipped,
    AlreadyInjected,
    Denied,
}

/// The answer to one request, with what logs may say about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    /// The `AdmissionReview` to send back.
    pub review: Value,
    pub outcome: Outcome,
    /// The Pod's namespace and name (empty when the request did not say, e.g. `generateName`).
    pub namespace: String,
    pub name: String,
}

/// The decision for one Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Skip,
    AlreadyInjected,
    Deny(String),
    /// JSONPatch operations.
    Patch(Vec<Value>),
}

#[derive(Deserialize)]
struct Review {
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    #[serde(default)]
    kind: Option<Gvk>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

// === impl Injector ===

impl Injector {
    /// Answers one `AdmissionReview` request body. `Err` is a malformed request (HTTP 400).
    pub fn admit(&self, body: &[u8]) -> Result<Admitted, String> {
        let review: Review =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        let request = review
            .request
            .ok_or_else(|| "the AdmissionReview has no request".to_owned())?;
        let is_pod_create = request
            .kind
            .as_ref()
            .is_some_and(|k| k.group.is_empty() && k.kind == "Pod")
            && request.operation.as_deref() == Some("CREATE")
            && request.sub_resource.as_deref().unwrap_or("").is_empty();
        let decision = match (&request.object, is_pod_create) {
            (Some(pod), true) => self.decide(pod),
            _ => Decision::Skip,
        };
        let mut response = json!({"uid": request.uid, "allowed": true});
        let outcome = match decision {
            Decision::Skip => Outcome::Skipped,
            Decision::AlreadyInjected => Outcome::AlreadyInjected,
            Decision::Deny(message) => {
                response["allowed"] = json!(false);
                response["status"] = json!({
                    "status": "Failure",
                    "code": 400,
                    "reason": "BadRequest",
                    "message": message,
                });
                Outcome::Denied
            }
            Decision::Patch(ops) => {
                let patch = serde_json::to_vec(&ops).map_err(|e| e.to_string())?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                Outcome::Injected
            }
        };
        Ok(Admitted {
            review: json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": response,
            }),
            outcome,
            namespace: request.namespace.unwrap_or_default(),
            name: request.name.unwrap_or_default(),
        })
    }

    /// What to do with `pod` (its JSON as the API server sent it).
    pub fn decide(&self, pod: &Value) -> Decision {
        let annotations = pod
            .pointer("/metadata/annotations")
            .and_then(Value::as_object);
        let annotation = |k: &str| {
            annotations
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
        };
        if annotation(INJECT) != Some("true") {
            return Decision::Skip;
        }
        let has_container = |field: &str| {
            pod.pointer(&format!("/spec/{field}"))
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == CONTAINER))
        };
        if annotation(INJECTED).is_some()
            || has_container("containers")
            || has_container("initContainers")
        {
            return Decision::AlreadyInjected;
        }
        let port = match annotation(PORT) {
            None | Some("") => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Decision::Deny(format!(
                        "annotation {PORT}: {p:?} is not a port number (1-65535)"
                    ));
                }
                Ok(ADMIN_PORT) => {
                    return Decision::Deny(format!(
                        "annotation {PORT}: {ADMIN_PORT} is the proxy's admin port; choose another"
                    ));
                }
                Ok(p) => p,
            },
        };
        let pools = match list(annotation(POOLS), POOLS, valid_pool) {
            Ok(p) => p,
            Err(e) => return Decision::Deny(e),
        };
        let extra = match list(annotation(EXTRA_NAMESPACES), EXTRA_NAMESPACES, |n| {
            dns_label(n).then_some(()).ok_or("not a namespace name")
        }) {
            Ok(p) => p,
            Err(e) => return Decision::Deny(e),
        };
        let native = match annotation(SIDECAR_MODE) {
            None | Some("") => self.native_sidecar,
            Some("native") => true,
            Some("container") => false,
            Some(other) => {
                return Decision::Deny(format!(
                    "annotation {SIDECAR_MODE}: {other:?} is not \"native\" or \"container\""
                ));
            }
        };
        let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
        if volumes.is_some_and(|vs| vs.iter().any(|v| v["name"] == TOKEN_VOLUME)) {
            return Decision::Deny(format!(
                "the Pod already has a volume named {TOKEN_VOLUME}, which {INJECT} needs"
            ));
        }

        let mut ops = vec![self.mark(annotations.is_some())];
        let mut container = self.container(port, &pools, &extra);
        if native {
            // First of the init containers, so that the other init containers can use it too;
            // the kubelet starts the next one only after its startup probe passed.
            native_sidecar(&mut container);
            match pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
            {
                Some(_) => ops.push(add("/spec/initContainers/0", container)),
                None => ops.push(add("/spec/initContainers", json!([container]))),
            }
        } else {
            match pod.pointer("/spec/containers").and_then(Value::as_array) {
                Some(_) => ops.push(add("/spec/containers/-", container)),
                None => ops.push(add("/spec/containers", json!([container]))),
            }
        }
        let volume = self.token_volume();
        match volumes {
            Some(_) => ops.push(add("/spec/volumes/-", volume)),
            None => ops.push(add("/spec/volumes", json!([volume]))),
        }
        Decision::Patch(ops)
    }

    /// The `keyway.dev/injected` annotation: into the map, or the whole map when the Pod has
    /// none (a JSONPatch `add` cannot create the parents of its path).
    pub fn mark(&self, has_annotations: bool) -> Value {
        if has_annotations {
            add(
                &format!("/metadata/annotations/{}", escape(INJECTED)),
                json!(self.version),
            )
        } else {
            add("/metadata/annotations", json!({ INJECTED: self.version }))
        }
    }

    /// The proxy container.
    pub fn container(&self, port: u16, pools: &[String], extra_namespaces: &[String]) -> Value {
        let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
        let mut env = vec![
            json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
            json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
            json!({"name": "KEYWAY_PROXY_ID", "value": "$(POD_NAME)"}),
            json!({"name": "KEYWAY_CONTROLLER", "value": self.controller_url}),
            json!({"name": "KEYWAY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
            json!({"name": "KEYWAY_LISTEN", "value": format!("127.0.0.1:{port}")}),
            json!({"name": "KEYWAY_ADMIN_LISTEN", "value": format!("0.0.0.0:{ADMIN_PORT}")}),
        ];
        if !pools.is_empty() {
            env.push(json!({"name": "KEYWAY_POOLS", "value": pools.join(",")}));
        }
        if let Some(pem) = &self.controller_ca_pem {
            env.push(json!({"name": "KEYWAY_CONTROLLER_CA_PEM", "value": pem}));
        }
        if !extra_namespaces.is_empty() {
            env.push(
                json!({"name": "KEYWAY_EXTRA_NAMESPACES", "value": extra_namespaces.join(",")}),
            );
        }
        let probe = |path: &str, period: i64| {
            json!({
                "httpGet": {"path": path, "port": ADMIN_PORT},
                "periodSeconds": period,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            })
        };
        json!({
            "name": CONTAINER,
            "image": self.image,
            "env": env,
            "ports": [{"name": "keyway-metrics", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
            "readinessProbe": probe("/readyz", 5),
            "livenessProbe": probe("/healthz", 10),
            "resources": {
                "requests": {"cpu": "10m", "memory": "32Mi"},
                "limits": {"memory": "256Mi"},
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        })
    }

    /// The projected ServiceAccount token the proxy presents to the controller.
    pub fn token_volume(&self) -> Value {
        let mut token = json!({"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS});
        if let Some(aud) = &self.token_audience {
            token["audience"] = json!(aud);
        }
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"defaultMode": 0o444, "sources": [{"serviceAccountToken": token}]},
        })
    }
}

// === impl Outcome ===

impl Outcome {
    /// A bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::Denied => "denied",
        }
    }
}

/// Makes the proxy container a native sidecar: it keeps running beside the app (and stops
/// after it, so a Job completes), and its startup probe holds the app back until the proxy
/// serves.
fn native_sidecar(container: &mut Value) {
    container["restartPolicy"] = json!("Always");
    container["startupProbe"] = json!({
        "httpGet": {"path": "/readyz", "port": ADMIN_PORT},
        "periodSeconds": STARTUP_PERIOD_SECONDS,
        "timeoutSeconds": 2,
        "failureThreshold": STARTUP_FAILURE_THRESHOLD,
    });
}

/// Whether an API server of this version runs native sidecars: `SidecarContainers` is on by
/// default from Kubernetes 1.29. `minor` may carry a suffix (`"29+"` on some providers).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let number = |s: &str| -> Option<u32> {
        s.trim()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// One JSON Pointer reference token (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A comma-separated annotation, each entry trimmed and checked; empty entries are dropped.
fn list(
    value: Option<&str>,
    annotation: &str,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in value.unwrap_or("").split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        check(entry).map_err(|why| format!("annotation {annotation}: {entry:?} is {why}"))?;
        out.push(entry.to_owned());
    }
    Ok(out)
}

/// `name` or `namespace/name`.
fn valid_pool(entry: &str) -> Result<(), &'static str> {
    let ok = match entry.split_once('/') {
        Some((ns, name)) => dns_label(ns) && dns_subdomain(name),
        None => dns_subdomain(entry),
    };
    ok.then_some(())
        .ok_or("not a pool reference (`name` or `namespace/name`)")
}

/// A DNS-1123 label: what namespaces are named.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what most objects are named.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests;
