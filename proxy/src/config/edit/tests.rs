use super::*;

const FILE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: s, labels: {keyway.dev/api-keys: "true"}}
stringData: {k1: "${K1}", k2: literal-secret}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys}
spec: {secretRef: {name: s}}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: llm}
spec:
  apiKeyPoolRef: {name: keys}
  backends: [{name: a, endpoint: "http://127.0.0.1:1"}]
"#;

fn env(n: &str) -> Option<String> {
    (n == "K1").then(|| "from-env".into())
}

#[test]
fn adds_rotates_and_removes_keys_keeping_other_documents() {
    let add = Edit::AddKey {
        requests_per_minute: None,
        id: "k3".into(),
        value: "v3".into(),
    };
    let (text, snap) = apply(FILE, "default", "llm", &add, &env).unwrap();
    assert_eq!(snap.key_pools[0].keys.len(), 3);
    assert!(text.contains("${K1}"), "{text}");
    assert_eq!(
        apply(&text, "default", "llm", &add, &env)
            .unwrap_err()
            .status,
        409
    );
    let rot = Edit::RotateKey {
        id: "k2".into(),
        value: "v2b".into(),
    };
    let (text, snap) = apply(&text, "default", "llm", &rot, &env).unwrap();
    let k2 = snap.key_pools[0]
        .keys
        .iter()
        .find(|k| k.id == "k2")
        .unwrap();
    assert_eq!(k2.value.expose(), "v2b");
    let rm = Edit::RemoveKey { id: "k1".into() };
    let (_, snap) = apply(&text, "default", "llm", &rm, &env).unwrap();
    assert_eq!(snap.key_pools[0].keys.len(), 2);
}

#[test]
fn values_written_over_the_api_are_never_expanded() {
    let add = Edit::AddKey {
        requests_per_minute: None,
        id: "k3".into(),
        value: "${K1}".into(),
    };
    let (text, snap) = apply(FILE, "default", "llm", &add, &env).unwrap();
    let k3 = snap.key_pools[0]
        .keys
        .iter()
        .find(|k| k.id == "k3")
        .unwrap();
    assert_eq!(
        k3.value.expose(),
        "${K1}",
        "expanded to the environment's value"
    );
    // And after a reload of the written file, too.
    let reloaded = Manifests::parse(&text, &env).unwrap().resolve().unwrap();
    let k3 = reloaded.key_pools[0]
        .keys
        .iter()
        .find(|k| k.id == "k3")
        .unwrap();
    assert_eq!(k3.value.expose(), "${K1}");
    // The file's own references still expand.
    let k1 = reloaded.key_pools[0]
        .keys
        .iter()
        .find(|k| k.id == "k1")
        .unwrap();
    assert_eq!(k1.value.expose(), "from-env");
}

#[test]
fn backends_and_evacuation_are_validated() {
    let b: BackendSpec =
        serde_json::from_value(json!({"name": "b", "endpoint": "http://127.0.0.1:2"})).unwrap();
    let (text, snap) = apply(FILE, "default", "llm", &Edit::AddBackend(Box::new(b)), &env).unwrap();
    assert_eq!(snap.pools[0].backends.len(), 2);
    let rm = Edit::RemoveBackend { name: "a".into() };
    let (text, _) = apply(&text, "default", "llm", &rm, &env).unwrap();
    let rm = Edit::RemoveBackend { name: "b".into() };
    // The last backend cannot go: the config would be invalid.
    assert_eq!(
        apply(&text, "default", "llm", &rm, &env)
            .unwrap_err()
            .status,
        422
    );
    // evacuatePrimary needs failover mode.
    assert_eq!(
        apply(FILE, "default", "llm", &Edit::Evacuate(true), &env)
            .unwrap_err()
            .status,
        422
    );
    assert_eq!(
        apply(FILE, "default", "nope", &Edit::Evacuate(true), &env)
            .unwrap_err()
            .status,
        404
    );
}

#[test]
fn redaction_keeps_env_references_only() {
    let out = redacted(FILE).unwrap();
    assert!(out.contains("${K1}"));
    assert!(!out.contains("literal-secret"), "{out}");
    assert!(out.contains("<redacted>"));
}

#[test]
fn atomic_writes_never_widen_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A new file holds keys: 0600 whatever the umask.
    let fresh = dir.path().join("new.yaml");
    write_atomic(&fresh, "k: v").unwrap();
    assert_eq!(mode(&fresh), 0o600);
    // An existing file keeps its mode.
    let kept = dir.path().join("kept.yaml");
    std::fs::write(&kept, "old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&kept, "new").unwrap();
    assert_eq!(mode(&kept), 0o640);
    // A stale temp file (say a symlink planted under its name) is not written through.
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "untouched").unwrap();
    let tmp = dir
        .path()
        .join(format!(".kept.yaml.keyway-{}.tmp", std::process::id()));
    std::os::unix::fs::symlink(&target, &tmp).unwrap();
    write_atomic(&kept, "newer").unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "newer");
}

#[test]
fn atomic_write_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, "old").unwrap();
    write_atomic(&p, "new").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
