use super::*;

fn hello(namespace: &str, namespaces: &[&str]) -> pb::Hello {
    pb::Hello {
        proxy_id: "p1".into(),
        namespace: namespace.into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sa(namespace: &str) -> Identity {
    Identity {
        namespace: Some(namespace.into()),
        user: format!("system:serviceaccount:{namespace}:keyway-proxy"),
    }
}

#[test]
fn an_authenticated_proxy_speaks_only_for_its_own_namespace() {
    assert!(check_hello(hello("b", &[]), &sa("b")).is_ok());
    let err = check_hello(hello("b", &[]), &sa("a")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("\"a\""), "{}", err.message());
    // Unauthenticated mode trusts the claim.
    let anyone = Identity {
        namespace: None,
        user: "anonymous".into(),
    };
    assert!(check_hello(hello("b", &[]), &anyone).is_ok());
    let empty = check_hello(hello("", &[]), &anyone).unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
}

#[test]
fn extra_namespaces_are_tidied() {
    let h = check_hello(hello("b", &["c", "", "b", "a", "c"]), &sa("b")).unwrap();
    assert_eq!(h.namespaces, vec!["a".to_string(), "c".to_string()]);
    let many: Vec<String> = (0..=MAX_EXTRA_NAMESPACES)
        .map(|i| format!("n{i}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let err = check_hello(hello("b", &many), &sa("b")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn reports_about_objects_not_sent_are_dropped() {
    let sent = model::Snapshot {
        pools: vec![model::Pool {
            id: ObjectId::new("b", "llm"),
            ..test_pool()
        }],
        key_pools: vec![],
    };
    let report = pb::Report {
        backends: vec![
            pb::BackendReport {
                namespace: "b".into(),
                pool: "llm".into(),
                backend: "x".into(),
                ..Default::default()
            },
            pb::BackendReport {
                namespace: "a".into(),
                pool: "llm".into(),
                backend: "x".into(),
                ..Default::default()
            },
        ],
        keys: vec![pb::KeyReport {
            namespace: "a".into(),
            key_pool: "keys".into(),
            key_id: "k".into(),
            state: "disabled".into(),
            ..Default::default()
        }],
        pools: vec![pb::PoolReport {
            namespace: "a".into(),
            pool: "llm".into(),
            active_backend: "x".into(),
        }],
        ..Default::default()
    };
    let kept = entitled_report(report.clone(), Some(&sent));
    assert_eq!(kept.backends.len(), 1);
    assert_eq!(kept.backends[0].namespace, "b");
    assert!(kept.keys.is_empty() && kept.pools.is_empty());
    assert_eq!(entitled_report(report, None), pb::Report::default());
}

fn test_pool() -> model::Pool {
    let yaml = r#"
apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: llm, namespace: b}
spec:
  backends: [{name: x, endpoint: "http://x"}]
"#;
    keyway_api::manifest::Manifests::parse(yaml, &|_| None)
        .unwrap()
        .resolve()
        .unwrap()
        .pools
        .remove(0)
}
