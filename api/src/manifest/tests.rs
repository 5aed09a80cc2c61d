use super::*;

const GOOD: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData:
  key-a: "${TEST_KEY_A}"
  key-b: literal-b
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: openai-keys}
spec:
  secretRef: {name: keys}
---
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: openai}
spec:
  apiKeyPoolRef: {name: openai-keys}
  backends:
    - {name: a, endpoint: "http://127.0.0.1:9001"}
    - {name: b, endpoint: "http://127.0.0.1:9002/base/", weight: 2}
"#;

fn env(name: &str) -> Option<String> {
    (name == "TEST_KEY_A").then(|| "from-env".to_string())
}

#[test]
fn no_error_repeats_a_key_value() {
    let value = "sk-live-Zq8pW3";
    // YAML syntax errors right at, before and after a value.
    let broken = [
        format!("kind: Secret\nstringData:\n  k: \"{value}\n  j: x\n"),
        format!("kind: Secret\nstringData:\n  k: {value}: x: y\n"),
        format!("kind: Secret\nstringData:\n  k: '{value}\n"),
        format!("kind: Secret\nstringData:\n  k: {value}\n bad: [\n"),
        format!("kind: Secret\nstringData:\n  - {value}\n  k: v\n"),
        format!("kind: Secret\nstringData:\n  k: !!binary {value}\n"),
        format!("kind: Secret\nstringData:\n  k: {value}\n\t- x\n"),
        // Valid YAML, wrong shape: serde quotes the value it did not expect.
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: \"{value}\"\n"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: \"{value}\"\n"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {{k: \"{value}\"}}\n"),
    ];
    for yaml in &broken {
        let errors = Manifests::check(yaml, &env);
        assert!(!errors.is_empty(), "{yaml:?} was accepted");
        for e in &errors {
            let text = format!("{e} {e:?} {}", e.hint().unwrap_or_default());
            assert!(
                !text.contains(value),
                "{yaml:?}: the error repeats the value: {text}"
            );
            assert!(
                !text.contains("Zq8p"),
                "{yaml:?}: the error repeats part of the value: {text}"
            );
        }
    }
    let syntax = Manifests::check(&broken[0], &env);
    assert!(
        syntax[0].message.contains("line ") && syntax[0].message.contains("column "),
        "{}",
        syntax[0].message
    );
}

#[test]
fn redacts_quoted_fragments_only() {
    assert_eq!(
        redact_quoted(r#"invalid type: string "sk-1\"x", expected a map"#),
        "invalid type: string <redacted>, expected a map"
    );
    assert_eq!(
        redact_quoted("can't find 'x' here"),
        "can't find <redacted> here"
    );
    assert_eq!(
        redact_quoted("unterminated `sk-"),
        "unterminated <redacted>"
    );
}

#[test]
fn parses_and_resolves_a_file() {
    let snap = Manifests::parse(GOOD, &env).unwrap().resolve().unwrap();
    assert_eq!(snap.pools.len(), 1);
    let pool = &snap.pools[0];
    assert_eq!(pool.id.to_string(), "default/openai");
    assert_eq!(pool.backends[1].endpoint.path_prefix, "/base");
    assert_eq!(pool.backends[1].weight, 2);
    let keys = &snap.key_pools[0].keys;
    assert_eq!(keys[0].id, "key-a");
    assert_eq!(keys[0].value.expose(), "from-env");
    assert_eq!(keys[1].value.expose(), "literal-b");
}

#[test]
fn names_the_field_of_a_type_error() {
    let bad = GOOD.replace("weight: 2", "weight: lots");
    let errs = Manifests::parse(&bad, &env).unwrap_err();
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    assert!(
        msg.starts_with("LoadBalancerPool default/openai: spec.backends[1].weight:"),
        "{msg}"
    );
}

#[test]
fn rejects_unknown_fields() {
    let bad = GOOD.replace(
        "secretRef: {name: keys}",
        "secretRef: {name: keys}\n  colour: red",
    );
    let errs = Manifests::parse(&bad, &env).unwrap_err();
    let msg = errs[0].to_string();
    assert!(msg.contains("ApiKeyPool default/openai-keys"), "{msg}");
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn missing_env_var_is_named() {
    let errs = Manifests::parse(GOOD, &|_| None).unwrap_err();
    let msg = errs[0].to_string();
    assert!(msg.contains("stringData.key-a"), "{msg}");
    assert!(msg.contains("TEST_KEY_A is not set"), "{msg}");
}

#[test]
fn missing_key_pool_is_named() {
    let bad = GOOD.replace(
        "apiKeyPoolRef: {name: openai-keys}",
        "apiKeyPoolRef: {name: nope}",
    );
    let errs = Manifests::parse(&bad, &env).unwrap().resolve().unwrap_err();
    assert_eq!(errs[0].field, "spec.apiKeyPoolRef.name");
    assert_eq!(errs[0].reason, Reason::KeyPoolNotFound);
}

#[test]
fn check_reports_every_problem_of_a_file() {
    let bad = GOOD
        .replace("weight: 2", "weight: lots")
        .replace(
            "secretRef: {name: keys}",
            "secretRef: {name: keys}\n  colour: red",
        )
        .replace("kind: Secret\n", "kind: Secret\nspec: {}\n");
    let errs = Manifests::check(&bad, &env);
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{text:#?}");
    assert!(text[0].contains("Secret default/keys: spec"), "{text:#?}");
    assert!(text[1].contains("colour"), "{text:#?}");
    assert!(text[2].contains("spec.backends[1].weight"), "{text:#?}");
}

#[test]
fn unknown_top_level_fields_are_errors() {
    let bad = GOOD.replacen("kind: Secret\n", "kind: Secret\nsepc: {}\n", 1);
    let errs = Manifests::parse(&bad, &env).unwrap_err();
    assert!(errs[0].to_string().contains("sepc"), "{}", errs[0]);
}

#[test]
fn unsupported_kind_is_an_error() {
    let errs = Manifests::parse(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        &env,
    )
    .unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("\"ConfigMap\" is not supported")
    );
}
