use super::*;

fn injector() -> Injector {
    Injector {
        image: "registry.example/keyway:1.2.3".into(),
        controller_url: "http://keyway-controller.keyway.svc:8443".into(),
        controller_ca_pem: None,
        token_audience: Some("keyway".into()),
        version: "0.1.0".into(),
        native_sidecar: false,
    }
}

fn pod(annotations: Option<Value>, spec: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": spec,
    });
    if let Some(a) = annotations {
        pod["metadata"]["annotations"] = a;
    }
    pod
}

fn app_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "app:1"}]})
}

fn ops(decision: Decision) -> Vec<Value> {
    match decision {
        Decision::Patch(ops) => ops,
        other => panic!("expected a patch, got {other:?}"),
    }
}

fn review(pod: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    }))
    .expect("json")
}

/// Applies `ops` (only `add`, as the webhook emits) the way the API server would.
fn apply(mut doc: Value, ops: &[Value]) -> Value {
    for op in ops {
        assert_eq!(op["op"], "add");
        let path = op["path"].as_str().expect("path");
        let (parent, last) = path.rsplit_once('/').expect("a parent");
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent} exists"));
        match target {
            Value::Array(a) if last == "-" => a.push(op["value"].clone()),
            // RFC 6902: `add` at an index inserts before the element there.
            Value::Array(a) if last.parse::<usize>().is_ok_and(|i| i <= a.len()) => {
                a.insert(last.parse().unwrap_or_default(), op["value"].clone());
            }
            Value::Object(o) => {
                o.insert(last, op["value"].clone());
            }
            other => panic!("cannot add at {path} into {other}"),
        }
    }
    doc
}

#[test]
fn pods_without_the_annotation_are_left_alone() {
    let i = injector();
    assert_eq!(i.decide(&pod(None, app_spec())), Decision::Skip);
    for value in ["false", "yes", "", "True "] {
        let annotated = pod(Some(json!({INJECT: value})), app_spec());
        let expect = if value.trim() == "true" {
            "patch"
        } else {
            "skip"
        };
        let got = match i.decide(&annotated) {
            Decision::Skip => "skip",
            Decision::Patch(_) => "patch",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, expect, "value {value:?}");
    }
    // Through the review: allowed, no patch.
    let Admitted {
        review: out,
        outcome,
        ..
    } = i
        .admit(&review(&pod(None, app_spec()), "CREATE"))
        .expect("ok");
    assert_eq!(outcome, Outcome::Skipped);
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(
        out["response"]["uid"],
        "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4"
    );
    assert!(out["response"].get("patch").is_none());
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
}

#[test]
fn injects_into_a_pod_without_volumes() {
    let i = injector();
    let before = pod(
        Some(json!({INJECT: "true", POOLS: "llm, other-ns/chat ", EXTRA_NAMESPACES: "other-ns"})),
        app_spec(),
    );
    let ops = ops(i.decide(&before));
    let paths: Vec<&str> = ops
        .iter()
        .map(|o| o["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/keyway.dev~1injected",
            "/spec/containers/-",
            "/spec/volumes",
        ]
    );
    let after = apply(before, &ops);
    assert_eq!(after["metadata"]["annotations"][INJECTED], "0.1.0");
    assert_eq!(after["metadata"]["annotations"][INJECT], "true", "kept");
    let containers = after["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "app", "the app stays first");
    let proxy = &containers[1];
    assert_eq!(proxy["name"], CONTAINER);
    assert_eq!(proxy["image"], "registry.example/keyway:1.2.3");
    let env: std::collections::BTreeMap<&str, &Value> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or(""), e))
        .collect();
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env["KEYWAY_PROXY_ID"]["value"], "$(POD_NAME)");
    assert_eq!(
        env["KEYWAY_CONTROLLER"]["value"],
        "http://keyway-controller.keyway.svc:8443"
    );
    assert_eq!(
        env["KEYWAY_TOKEN_FILE"]["value"],
        "/var/run/secrets/keyway.dev/serviceaccount/token"
    );
    assert_eq!(env["KEYWAY_LISTEN"]["value"], "127.0.0.1:8080");
    assert_eq!(env["KEYWAY_ADMIN_LISTEN"]["value"], "0.0.0.0:9901");
    assert_eq!(env["KEYWAY_POOLS"]["value"], "llm,other-ns/chat");
    assert_eq!(env["KEYWAY_EXTRA_NAMESPACES"]["value"], "other-ns");
    // POD_NAME is defined before the variable that refers to it.
    let names: Vec<&str> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or(""))
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).expect(n);
    assert!(pos("POD_NAME") < pos("KEYWAY_PROXY_ID"));
    assert_eq!(proxy["ports"][0]["name"], "keyway-metrics");
    assert_eq!(proxy["ports"][0]["containerPort"], 9901);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 9901);
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "10m");
    assert_eq!(proxy["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(proxy["resources"]["limits"]["memory"], "256Mi");
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        proxy["volumeMounts"],
        json!([{"name": "keyway-token", "mountPath": TOKEN_DIR, "readOnly": true}])
    );
    let volumes = after["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1);
    let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(volumes[0]["name"], TOKEN_VOLUME);
    assert_eq!(token["path"], "token");
    assert_eq!(token["expirationSeconds"], 3600);
    assert_eq!(token["audience"], "keyway");
}

#[test]
fn injects_next_to_existing_volumes_and_annotations() {
    let i = Injector {
        controller_ca_pem: None,
        token_audience: None,
        ..injector()
    };
    let before = pod(
        Some(json!({INJECT: "true", "example.com/other": "x", PORT: "9000"})),
        json!({
            "containers": [{"name": "app", "image": "app:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }),
    );
    let ops = ops(i.decide(&before));
    assert_eq!(ops[2]["path"], "/spec/volumes/-");
    let after = apply(before, &ops);
    let volumes = after["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 2);
    assert_eq!(volumes[0]["name"], "data");
    assert_eq!(volumes[1]["name"], TOKEN_VOLUME);
    assert!(
        volumes[1]["projected"]["sources"][0]["serviceAccountToken"]
            .get("audience")
            .is_none(),
        "no audience configured: the API server's default"
    );
    assert_eq!(after["metadata"]["annotations"]["example.com/other"], "x");
    let proxy = &after["spec"]["containers"][1];
    let listen = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "KEYWAY_LISTEN")
        .expect("KEYWAY_LISTEN");
    assert_eq!(listen["value"], "127.0.0.1:9000");
    // No pools annotation: no KEYWAY_POOLS (all pools of the namespace).
    assert!(
        !proxy["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "KEYWAY_POOLS")
    );
}

#[test]
fn a_missing_annotations_map_is_added_whole() {
    let i = injector();
    // A real Pod asking for injection has the map (the request is in it), so the whole-map
    // form is for completeness: `add` cannot create a missing parent.
    assert_eq!(
        i.mark(false),
        json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: "0.1.0"}})
    );
    assert_eq!(
        i.mark(true),
        json!({"op": "add", "path": "/metadata/annotations/keyway.dev~1injected", "value": "0.1.0"})
    );
    let bare = json!({"metadata": {}, "spec": {}});
    let marked = apply(bare, &[i.mark(false)]);
    assert_eq!(marked["metadata"]["annotations"][INJECTED], "0.1.0");
    // An empty map is no request.
    let p = pod(Some(json!({})), app_spec());
    assert_eq!(i.decide(&p), Decision::Skip);
    // A Pod without a containers array (invalid, but the patch stays well-formed).
    let bare = json!({"metadata": {"annotations": {INJECT: "true"}}, "spec": {}});
    let ops = ops(i.decide(&bare));
    let after = apply(bare, &ops);
    assert_eq!(after["spec"]["containers"][0]["name"], CONTAINER);
    assert_eq!(after["spec"]["volumes"][0]["name"], TOKEN_VOLUME);
}

#[test]
fn injection_is_idempotent() {
    let i = injector();
    let before = pod(Some(json!({INJECT: "true"})), app_spec());
    let patch = ops(i.decide(&before));
    let after = apply(before, &patch);
    assert_eq!(i.decide(&after), Decision::AlreadyInjected);
    // The container alone (annotation stripped) is enough.
    let mut stripped = after.clone();
    stripped["metadata"]["annotations"]
        .as_object_mut()
        .expect("map")
        .remove(INJECTED);
    assert_eq!(i.decide(&stripped), Decision::AlreadyInjected);
    // So is the annotation alone.
    let marked = pod(Some(json!({INJECT: "true", INJECTED: "0.0.9"})), app_spec());
    assert_eq!(i.decide(&marked), Decision::AlreadyInjected);
    // And a keyway-proxy among the init containers (a native sidecar someone wrote by hand).
    let native = pod(
        Some(json!({INJECT: "true"})),
        json!({
            "containers": [{"name": "app"}],
            "initContainers": [{"name": CONTAINER, "restartPolicy": "Always"}],
        }),
    );
    assert_eq!(i.decide(&native), Decision::AlreadyInjected);
    let Admitted {
        review: out,
        outcome,
        ..
    } = i.admit(&review(&after, "CREATE")).expect("ok");
    assert_eq!(outcome, Outcome::AlreadyInjected);
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
}

#[test]
fn invalid_annotations_deny_with_the_annotation_named() {
    let i = injector();
    let cases = [
        (json!({INJECT: "true", PORT: "http"}), PORT),
        (json!({INJECT: "true", PORT: "0"}), PORT),
        (json!({INJECT: "true", PORT: "70000"}), PORT),
        (json!({INJECT: "true", PORT: "9901"}), PORT),
        (json!({INJECT: "true", POOLS: "Bad_Name"}), POOLS),
        (json!({INJECT: "true", POOLS: "a/b/c"}), POOLS),
        (
            json!({INJECT: "true", EXTRA_NAMESPACES: "ok,Not OK"}),
            EXTRA_NAMESPACES,
        ),
    ];
    for (annotations, named) in cases {
        match i.decide(&pod(Some(annotations.clone()), app_spec())) {
            Decision::Deny(message) => {
                assert!(message.contains(named), "{annotations}: {message}");
            }
            other => panic!("{annotations}: expected a denial, got {other:?}"),
        }
    }
    let Admitted {
        review: out,
        outcome,
        ..
    } = i
        .admit(&review(
            &pod(Some(json!({INJECT: "true", PORT: "http"})), app_spec()),
            "CREATE",
        ))
        .expect("ok");
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["code"], 400);
    let message = out["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("keyway.dev/port"), "{message}");
    // An empty port annotation means the default.
    assert!(matches!(
        i.decide(&pod(Some(json!({INJECT: "true", PORT: ""})), app_spec())),
        Decision::Patch(_)
    ));
}

#[test]
fn a_conflicting_volume_name_is_denied() {
    let i = injector();
    let p = pod(
        Some(json!({INJECT: "true"})),
        json!({"containers": [{"name": "app"}], "volumes": [{"name": TOKEN_VOLUME, "emptyDir": {}}]}),
    );
    assert!(matches!(i.decide(&p), Decision::Deny(m) if m.contains(TOKEN_VOLUME)));
}

#[test]
fn the_patch_travels_as_base64_json_patch() {
    let i = injector();
    let p = pod(Some(json!({INJECT: "true"})), app_spec());
    let Admitted {
        review: out,
        outcome,
        ..
    } = i.admit(&review(&p, "CREATE")).expect("ok");
    assert_eq!(outcome, Outcome::Injected);
    let response = &out["response"];
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64");
    let ops: Vec<Value> = serde_json::from_slice(&raw).expect("json patch");
    assert_eq!(ops, super::tests::ops(i.decide(&p)));
}

#[test]
fn only_pod_creations_are_mutated() {
    let i = injector();
    let p = pod(Some(json!({INJECT: "true"})), app_spec());
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let Admitted { outcome, .. } = i.admit(&review(&p, op)).expect("ok");
        assert_eq!(outcome, Outcome::Skipped, "{op}");
    }
    // Another kind.
    let mut body: Value = serde_json::from_slice(&review(&p, "CREATE")).expect("json");
    body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let Admitted { outcome, .. } = i
        .admit(&serde_json::to_vec(&body).expect("json"))
        .expect("ok");
    assert_eq!(outcome, Outcome::Skipped);
    // A subresource (e.g. pods/ephemeralcontainers).
    body["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    body["request"]["subResource"] = json!("ephemeralcontainers");
    let Admitted { outcome, .. } = i
        .admit(&serde_json::to_vec(&body).expect("json"))
        .expect("ok");
    assert_eq!(outcome, Outcome::Skipped);
}

#[test]
fn the_answer_names_the_pod_for_logs() {
    let p = pod(Some(json!({INJECT: "true"})), app_spec());
    let mut body: Value = serde_json::from_slice(&review(&p, "CREATE")).expect("json");
    body["request"]["name"] = json!("app");
    let admitted = injector()
        .admit(&serde_json::to_vec(&body).expect("json"))
        .expect("ok");
    assert_eq!(
        (admitted.namespace.as_str(), admitted.name.as_str()),
        ("team-a", "app")
    );
}

#[test]
fn malformed_requests_are_errors() {
    let i = injector();
    assert!(i.admit(b"not json").is_err());
    assert!(i.admit(br#"{"kind":"AdmissionReview"}"#).is_err());
}

#[test]
fn pointer_tokens_are_escaped() {
    assert_eq!(escape("keyway.dev/injected"), "keyway.dev~1injected");
    assert_eq!(escape("a~b/c"), "a~0b~1c");
}

#[test]
fn the_controller_ca_travels_to_the_proxy_only_when_configured() {
    let env = |i: &Injector| -> Vec<String> {
        i.container(DEFAULT_PORT, &[], &[])["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(!env(&injector()).contains(&"KEYWAY_CONTROLLER_CA_PEM".to_owned()));
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let with_ca = Injector {
        controller_ca_pem: Some(pem.into()),
        ..injector()
    };
    let c = with_ca.container(DEFAULT_PORT, &[], &[]);
    let ca = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "KEYWAY_CONTROLLER_CA_PEM")
        .expect("the CA env var");
    assert_eq!(ca["value"], pem);
}

fn native() -> Injector {
    Injector {
        native_sidecar: true,
        ..injector()
    }
}

#[test]
fn native_sidecar_is_the_first_init_container_that_keeps_running() {
    let before = pod(Some(json!({INJECT: "true"})), app_spec());
    let ops = ops(native().decide(&before));
    let paths: Vec<&str> = ops
        .iter()
        .map(|o| o["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/keyway.dev~1injected",
            "/spec/initContainers",
            "/spec/volumes",
        ]
    );
    let after = apply(before, &ops);
    let containers = after["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the app's containers are untouched");
    let proxy = &after["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], CONTAINER);
    assert_eq!(proxy["restartPolicy"], "Always");
    // The app starts once the proxy serves: the startup probe is the readiness endpoint.
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], ADMIN_PORT);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Everything else is the regular container's.
    let mut regular = injector().container(DEFAULT_PORT, &[], &[]);
    regular["restartPolicy"] = proxy["restartPolicy"].clone();
    regular["startupProbe"] = proxy["startupProbe"].clone();
    assert_eq!(proxy, &regular);
}

#[test]
fn native_sidecar_goes_before_existing_init_containers() {
    let before = pod(
        Some(json!({INJECT: "true"})),
        json!({"initContainers": [{"name": "migrate", "image": "m:1"}], "containers": [{"name": "app"}]}),
    );
    let after = apply(before.clone(), &ops(native().decide(&before)));
    let names: Vec<&str> = after["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [CONTAINER, "migrate"],
        "the others can use the proxy too"
    );
}

#[test]
fn the_sidecar_mode_annotation_overrides_the_cluster_default() {
    let container_form = pod(
        Some(json!({INJECT: "true", SIDECAR_MODE: "container"})),
        app_spec(),
    );
    let after = apply(
        container_form.clone(),
        &ops(native().decide(&container_form)),
    );
    assert!(after["spec"].get("initContainers").is_none());
    assert_eq!(after["spec"]["containers"][1]["name"], CONTAINER);
    assert!(
        after["spec"]["containers"][1]
            .get("restartPolicy")
            .is_none()
    );

    let native_form = pod(
        Some(json!({INJECT: "true", SIDECAR_MODE: "native"})),
        app_spec(),
    );
    let after = apply(native_form.clone(), &ops(injector().decide(&native_form)));
    assert_eq!(
        after["spec"]["initContainers"][0]["restartPolicy"],
        "Always"
    );

    let bad = pod(
        Some(json!({INJECT: "true", SIDECAR_MODE: "sidecar"})),
        app_spec(),
    );
    match native().decide(&bad) {
        Decision::Deny(m) => assert!(m.contains(SIDECAR_MODE) && m.contains("sidecar"), "{m}"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn native_sidecars_from_kubernetes_1_29() {
    assert!(supports_native_sidecars("1", "29"));
    assert!(supports_native_sidecars("1", "33"));
    assert!(supports_native_sidecars("1", "30+"), "provider suffixes");
    assert!(supports_native_sidecars("2", "0"));
    assert!(!supports_native_sidecars("1", "28"));
    assert!(!supports_native_sidecars("1", ""));
    assert!(!supports_native_sidecars("", "29"));
}
