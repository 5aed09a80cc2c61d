use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[test]
fn builds_one_pool_per_provider_with_ids_and_weights() {
    let qs = QuickStart::from_env(&env(&[
        ("KEYWAY_OPENAI_KEYS", "sk-one, sk-two:3"),
        ("KEYWAY_ANTHROPIC_KEYS", "sk-ant"),
        (
            "KEYWAY_ENDPOINTS",
            r#"{"openai":["http://127.0.0.1:1","http://127.0.0.1:2"]}"#,
        ),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    assert_eq!(snap.pools.len(), 2);
    let openai = snap.pools.iter().find(|p| p.id.name == "openai").unwrap();
    assert_eq!(openai.backends.len(), 2);
    let keys = &snap.key_pool("default", "openai").unwrap().keys;
    assert_eq!(keys[0].id, "openai-1");
    assert_eq!(keys[1].limits.weight, 3);
    assert_eq!(keys[1].value.expose(), "sk-two");

    let exported = qs.manifests(false);
    assert!(
        !exported.contains("sk-one") && !exported.contains("sk-ant"),
        "{exported}"
    );
    assert!(exported.contains("${KEYWAY_OPENAI_KEY_2}"), "{exported}");
    // The export is a valid file for the standalone mode.
    let env = |n: &str| n.starts_with("KEYWAY_").then(|| format!("v-{n}"));
    let again = Manifests::parse(&exported, &env)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(again.pools.len(), 2);
    assert!(qs.manifests(true).contains("sk-one"));
}

#[test]
fn nothing_set_is_none_and_errors_never_echo_values() {
    assert!(QuickStart::from_env(&env(&[])).unwrap().is_none());
    let err = QuickStart::from_env(&env(&[("KEYWAY_GEMINI_KEYS", "good,sk bad")])).unwrap_err();
    assert!(!err.contains("sk bad"), "{err}");
    assert!(err.contains("KEYWAY_GEMINI_KEYS"), "{err}");
    let qs = QuickStart::from_env(&env(&[("OPENAI_API_KEYS", "a,b")]))
        .unwrap()
        .unwrap();
    assert_eq!(qs.summary()[0].2, vec!["openai-1", "openai-2"]);
}

fn key_values(snap: &Snapshot, pool: &str) -> Vec<String> {
    snap.key_pool("default", pool)
        .unwrap()
        .keys
        .iter()
        .map(|k| k.value.expose().to_string())
        .collect()
}

#[test]
fn reads_the_python_proxys_variables_and_drops_none() {
    // Both lists, as the Python proxy's README sets them: neither is dropped.
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "sk-key1,sk-key2,sk-key3"),
        ("ANTHROPIC_API_KEYS", "sk-ant-key1,sk-ant-key2"),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    assert_eq!(key_values(&snap, "openai").len(), 3);
    assert_eq!(
        key_values(&snap, "anthropic"),
        vec!["sk-ant-key1", "sk-ant-key2"]
    );

    // The single-key fallbacks ("Before (still works)").
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEY", "sk-single-key"),
        ("ANTHROPIC_API_KEY", "sk-ant-single-key"),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    assert_eq!(key_values(&snap, "openai"), vec!["sk-single-key"]);
    assert_eq!(key_values(&snap, "anthropic"), vec!["sk-ant-single-key"]);

    // A list and its fallback: the list wins, and the fallback is named, not dropped.
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "sk-a,sk-b"),
        ("OPENAI_API_KEY", "sk-single"),
        ("KEYWAY_ANTHROPIC_KEYS", "sk-ant-k"),
        ("ANTHROPIC_API_KEYS", "sk-ant-other"),
    ]))
    .unwrap()
    .unwrap();
    let notes = qs.notes().join("\n");
    assert!(
        notes.contains("OPENAI_API_KEY is set but not used: OPENAI_API_KEYS"),
        "{notes}"
    );
    assert!(
        notes.contains("ANTHROPIC_API_KEYS is set but not used: KEYWAY_ANTHROPIC_KEYS"),
        "{notes}"
    );
    assert!(!notes.contains("sk-"), "notes never carry values: {notes}");
    let summary = qs.summary();
    assert_eq!(summary[0].1, "OPENAI_API_KEYS");
    assert_eq!(summary[1].1, "KEYWAY_ANTHROPIC_KEYS");
}

#[test]
fn service_endpoints_and_model_prefix_routing() {
    let qs = QuickStart::from_env(&env(&[
            ("OPENAI_API_KEYS", "sk-key1"),
            ("ANTHROPIC_API_KEYS", "sk-ant-key1"),
            (
                "SERVICE_ENDPOINTS",
                r#"{"openai":["https://api.openai.com/v1","https://oai-proxy-1.example.com/v1"],"anthropic":["https://api.anthropic.com/v1"]}"#,
            ),
        ]))
        .unwrap()
        .unwrap();
    let snap = qs.snapshot().unwrap();
    let openai = snap.pools.iter().find(|p| p.id.name == "openai").unwrap();
    assert_eq!(openai.backends.len(), 2);
    assert_eq!(openai.backends[1].endpoint.path_prefix, "/v1");
    // gpt-* on Anthropic's path and claude-* on OpenAI's are routed by model.
    assert!(
        openai
            .routes
            .iter()
            .any(|r| r.path_prefix.as_deref() == Some("/v1/messages")
                && r.model.as_deref() == Some("gpt-*"))
    );
    let anthropic = snap
        .pools
        .iter()
        .find(|p| p.id.name == "anthropic")
        .unwrap();
    assert!(
        anthropic
            .routes
            .iter()
            .any(|r| r.path_prefix.as_deref() == Some("/v1/chat/completions")
                && r.model.as_deref() == Some("claude-*"))
    );
    assert!(
        qs.notes()
            .iter()
            .any(|n| n.contains("model-prefix routing"))
    );

    // Endpoints of a provider without keys are named, not dropped.
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "sk-key1"),
        (
            "SERVICE_ENDPOINTS",
            r#"{"anthropic":["https://a.example/v1"]}"#,
        ),
    ]))
    .unwrap()
    .unwrap();
    assert!(
        qs.notes()
            .iter()
            .any(|n| n.contains("endpoints for anthropic are set but not used")),
        "{:?}",
        qs.notes()
    );
    // One provider: its preset routes, nothing read from the body.
    let snap = qs.snapshot().unwrap();
    assert!(snap.pools[0].routes.iter().all(|r| r.model.is_none()));
    let err = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "sk-key1"),
        ("SERVICE_ENDPOINTS", "{not json"),
    ]))
    .unwrap_err();
    assert!(err.contains("SERVICE_ENDPOINTS"), "{err}");
}

#[test]
fn reads_the_workers_variables() {
    let qs = QuickStart::from_env(&env(&[
        ("LOAD_BALANCER_ENABLED", "true"),
        (
            "LOAD_BALANCER_API_KEYS",
            "sk-1234567890abcdef:1,sk-abcdef1234567890:2,sk-fedcba0987654321:1",
        ),
        ("LOAD_BALANCER_STRATEGY", "weighted"),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    let kp = snap.key_pool("default", "anthropic").unwrap();
    assert_eq!(kp.selection, keyway_api::model::Selection::Weighted);
    assert_eq!(kp.keys[1].limits.weight, 2);
    assert_eq!(qs.summary()[0].1, "LOAD_BALANCER_API_KEYS");
    assert!(qs.notes()[0].contains("anthropic pool"), "{:?}", qs.notes());

    let qs = QuickStart::from_env(&env(&[
        ("LOAD_BALANCER_API_KEYS", "AIzaOne,AIzaTwo"),
        ("LOAD_BALANCER_STRATEGY", "time-window"),
        ("LOAD_BALANCER_WINDOW_SIZE", "5"),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    let kp = snap.key_pool("default", "gemini").unwrap();
    assert_eq!(kp.selection, keyway_api::model::Selection::TimeWindow);
    assert_eq!(kp.time_window, std::time::Duration::from_secs(300));

    // Round robin with weights: the weights are named as unused.
    let qs = QuickStart::from_env(&env(&[
        ("LOAD_BALANCER_API_KEYS", "k1:1,k2:3"),
        ("LOAD_BALANCER_STRATEGY", "round-robin"),
        ("LOAD_BALANCER_WINDOW_SIZE", "5"),
    ]))
    .unwrap()
    .unwrap();
    let snap = qs.snapshot().unwrap();
    let kp = snap.key_pool("default", "anthropic").unwrap();
    assert_eq!(kp.selection, keyway_api::model::Selection::RoundRobin);
    let notes = qs.notes().join("\n");
    assert!(notes.contains("every key takes the same share"), "{notes}");
    assert!(
        notes.contains("LOAD_BALANCER_WINDOW_SIZE is set but not used"),
        "{notes}"
    );

    // Explicit provider; a strategy alone is named; disabled is named.
    let qs = QuickStart::from_env(&env(&[
        ("LOAD_BALANCER_API_KEYS", "k1"),
        ("KEYWAY_LOAD_BALANCER_PROVIDER", "openai"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(qs.summary()[0].0, "openai");
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "k1"),
        ("LOAD_BALANCER_STRATEGY", "weighted"),
        ("LOAD_BALANCER_ENABLED", "false"),
    ]))
    .unwrap()
    .unwrap();
    assert!(qs.notes()[0].contains("LOAD_BALANCER_STRATEGY is set but not used"));
    let qs = QuickStart::from_env(&env(&[
        ("OPENAI_API_KEYS", "k1"),
        ("LOAD_BALANCER_API_KEYS", "k2"),
        ("LOAD_BALANCER_ENABLED", "false"),
    ]))
    .unwrap()
    .unwrap();
    assert!(qs.notes()[0].contains("LOAD_BALANCER_ENABLED=false"));
    let err = QuickStart::from_env(&env(&[
        ("LOAD_BALANCER_API_KEYS", "k1"),
        ("LOAD_BALANCER_STRATEGY", "random"),
    ]))
    .unwrap_err();
    assert!(err.contains("LOAD_BALANCER_STRATEGY"), "{err}");
}
