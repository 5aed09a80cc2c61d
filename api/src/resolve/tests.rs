use super::*;
use crate::model::{HealthTarget, Mode, Retry, Role, Strategy};
use crate::spec::{
    AuthSpec, BackendSpec, HealthCheckSpec, LocalObjectRef, RetrySpec, RouteSpec, Selection,
    TimeoutsSpec,
};

fn id() -> ObjectId {
    ObjectId::new("ns", "p")
}

fn spec(endpoints: &[&str]) -> LoadBalancerPoolSpec {
    LoadBalancerPoolSpec {
        backends: endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| BackendSpec {
                name: format!("b{i}"),
                endpoint: e.to_string(),
                host_header: None,
                weight: None,
                role: None,
                protocol: None,
                health_check: None,
            })
            .collect(),
        strategy: Strategy::RoundRobin,
        api_key_pool_ref: None,
        auth: None,
        routes: vec![],
        mode: Mode::Balanced,
        consistent_hash: None,
        evacuate_primary: false,
        health_check: None,
        outlier_detection: None,
        retry: None,
        timeouts: None,
        sse_keep_alive: None,
        allowed_proxy_namespaces: vec![],
        provider: None,
        allowed_sources: vec![],
        affinity: None,
        balance_algorithm: None,
    }
}

#[test]
fn endpoint_defaults_port_and_trims_path() {
    let e = endpoint("https://api.openai.com/").unwrap();
    assert_eq!(e.authority, "api.openai.com:443");
    assert_eq!(e.path_prefix, "");
    let e = endpoint("http://127.0.0.1:8080/v1/").unwrap();
    assert_eq!(e.authority, "127.0.0.1:8080");
    assert_eq!(e.path_prefix, "/v1");
    assert_eq!(e.to_string(), "http://127.0.0.1:8080/v1");
}

#[test]
fn endpoint_rejects_what_cannot_be_proxied() {
    assert!(endpoint("ftp://x").unwrap_err().contains("scheme"));
    assert!(endpoint("not a url").is_err());
    assert!(
        endpoint("http://u:p@x/")
            .unwrap_err()
            .contains("credentials")
    );
    assert!(endpoint("http://x/?a=b").unwrap_err().contains("query"));
}

#[test]
fn errors_name_the_field() {
    let err = pool(&id(), &spec(&["http://a", "gopher://b"])).unwrap_err();
    assert_eq!(err.field, "spec.backends[1].endpoint");
    assert_eq!(err.object, "LoadBalancerPool ns/p");

    let mut s = spec(&["http://a", "http://b"]);
    s.backends[1].name = "b0".into();
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.backends[1].name");

    let mut s = spec(&["http://a"]);
    s.backends[0].weight = Some(0);
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.backends");

    let mut s = spec(&["http://a"]);
    s.routes = vec![RouteSpec::default()];
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.routes[0]");
}

#[test]
fn auth_defaults_to_bearer() {
    let p = pool(&id(), &spec(&["http://a"])).unwrap();
    assert_eq!(
        p.auth,
        Auth::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into()
        }
    );
    let mut s = spec(&["http://a"]);
    s.auth = Some(AuthSpec {
        header: Some("X-Api-Key".into()),
        ..Default::default()
    });
    assert_eq!(
        pool(&id(), &s).unwrap().auth,
        Auth::Header {
            name: "x-api-key".into(),
            prefix: String::new()
        }
    );
    s.auth = Some(AuthSpec {
        kind: AuthKind::Query,
        ..Default::default()
    });
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.auth.queryParam");
}

#[test]
fn key_pool_reports_missing_and_empty_secrets() {
    let spec = ApiKeyPoolSpec {
        secret_ref: LocalObjectRef { name: "s".into() },
        selection: Selection::RoundRobin,
        ..Default::default()
    };
    let err = key_pool(&id(), &spec, None).unwrap_err();
    assert_eq!(err.reason, Reason::SecretNotFound);
    assert!(err.to_string().contains("Secret ns/s not found"));

    let mut entries = BTreeMap::new();
    entries.insert("empty".to_string(), SecretValue::new("  "));
    assert_eq!(
        key_pool(&id(), &spec, Some(&entries)).unwrap_err().reason,
        Reason::NoKeys
    );

    entries.insert("k1".to_string(), SecretValue::new("sk-1\n"));
    let kp = key_pool(&id(), &spec, Some(&entries)).unwrap();
    assert_eq!(kp.keys.len(), 1);
    assert_eq!(
        kp.keys[0].value.expose(),
        "sk-1",
        "trailing newline trimmed"
    );

    entries.insert("bad".to_string(), SecretValue::new("sk\r\nx: y"));
    let err = key_pool(&id(), &spec, Some(&entries)).unwrap_err();
    assert!(!err.to_string().contains("sk\r\n"));
}

#[test]
fn failover_needs_one_primary_and_a_secondary() {
    let mut s = spec(&["http://a", "http://b"]);
    s.mode = Mode::Failover;
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.backends[0].role");
    s.backends[0].role = Some(Role::Primary);
    s.backends[1].role = Some(Role::Primary);
    let err = pool(&id(), &s).unwrap_err();
    assert_eq!(err.field, "spec.backends");
    assert!(
        err.message.contains("exactly one primary"),
        "{}",
        err.message
    );
    s.backends[1].role = Some(Role::Secondary);
    s.evacuate_primary = true;
    let p = pool(&id(), &s).unwrap();
    assert!(p.evacuate_primary);
    assert_eq!(p.backends[1].role, Some(Role::Secondary));

    let mut b = spec(&["http://a"]);
    b.evacuate_primary = true;
    assert_eq!(pool(&id(), &b).unwrap_err().field, "spec.evacuatePrimary");
}

#[test]
fn health_checks_inherit_and_validate() {
    let mut s = spec(&["http://a", "http://b"]);
    s.health_check = Some(HealthCheckSpec {
        path: Some("/healthz".into()),
        fail_threshold: Some(2),
        ..Default::default()
    });
    s.backends[1].health_check = Some(HealthCheckSpec {
        url: Some("http://probe:9/ready?x=1".into()),
        ..Default::default()
    });
    let p = pool(&id(), &s).unwrap();
    let h0 = p.backends[0].health_check.as_ref().unwrap();
    assert_eq!(h0.target, HealthTarget::Path("/healthz".into()));
    assert_eq!(h0.fail_threshold, 2);
    assert_eq!(h0.interval, Duration::from_secs(10));
    let h1 = p.backends[1].health_check.as_ref().unwrap();
    assert_eq!(
        h1.target,
        HealthTarget::Url("http://probe:9/ready?x=1".into())
    );

    s.backends[1].health_check = Some(HealthCheckSpec {
        path: Some("healthz".into()),
        ..Default::default()
    });
    assert_eq!(
        pool(&id(), &s).unwrap_err().field,
        "spec.backends[1].healthCheck.path"
    );
    s.backends[1].health_check = None;
    s.health_check.as_mut().unwrap().timeout_seconds = Some(0);
    assert_eq!(
        pool(&id(), &s).unwrap_err().field,
        "spec.healthCheck.timeoutSeconds"
    );
}

#[test]
fn retry_and_timeouts() {
    let mut s = spec(&["http://a"]);
    s.retry = Some(RetrySpec {
        max_retries: Some(9),
        buffer_bytes: None,
    });
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.retry.maxRetries");
    s.retry = None;
    s.timeouts = Some(TimeoutsSpec {
        connect: Some("250ms".into()),
        response_headers: Some("2m".into()),
        idle_stream: Some("ten".into()),
    });
    assert_eq!(
        pool(&id(), &s).unwrap_err().field,
        "spec.timeouts.idleStream"
    );
    s.timeouts.as_mut().unwrap().idle_stream = None;
    let p = pool(&id(), &s).unwrap();
    assert_eq!(p.timeouts.connect, Some(Duration::from_millis(250)));
    assert_eq!(p.timeouts.response_headers, Some(Duration::from_secs(120)));
    assert_eq!(p.retry, Retry::default());
}

#[test]
fn key_limits_merge_defaults_and_overrides() {
    use crate::spec::{KeyLimitsSpec, KeyOverrideSpec};
    let spec = ApiKeyPoolSpec {
        secret_ref: LocalObjectRef { name: "s".into() },
        defaults: Some(KeyLimitsSpec {
            requests_per_minute: Some(10),
            ..Default::default()
        }),
        keys: vec![
            KeyOverrideSpec {
                id: "b".into(),
                weight: Some(3),
                max_concurrent: Some(2),
                ..Default::default()
            },
            KeyOverrideSpec {
                id: "gone".into(),
                weight: Some(9),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut entries = BTreeMap::new();
    entries.insert("a".to_string(), SecretValue::new("va"));
    entries.insert("b".to_string(), SecretValue::new("vb"));
    let kp = key_pool(&id(), &spec, Some(&entries)).unwrap();
    assert_eq!(kp.keys[0].limits.requests_per_minute, Some(10));
    assert_eq!(kp.keys[0].limits.weight, 1);
    assert_eq!(
        kp.keys[1].limits.requests_per_minute,
        Some(10),
        "inherits the default"
    );
    assert_eq!(kp.keys[1].limits.weight, 3);
    assert_eq!(kp.keys[1].limits.max_concurrent, Some(2));
    assert_eq!(kp.queue_max_len, 100);
    assert_eq!(kp.default_cooldown, Duration::from_secs(60));

    let mut bad = spec.clone();
    bad.keys[0].requests_per_minute = Some(0);
    assert_eq!(
        key_pool(&id(), &bad, Some(&entries)).unwrap_err().field,
        "spec.keys[0].requestsPerMinute"
    );
}

#[test]
fn multi_cluster_defaults() {
    let mut s = spec(&["http://a:1", "http://b:2"]);
    s.mode = Mode::MultiCluster;
    let p = pool(&id(), &s).unwrap();
    let a = p
        .affinity
        .clone()
        .expect("multiCluster always has affinity");
    assert_eq!(a.header, "user-id");
    assert_eq!(a.ttl, Duration::from_secs(15 * 60));
    assert_eq!(a.max_entries, 100_000);
    assert_eq!(a.store, crate::model::AffinityStore::Memory);
    assert_eq!(p.cluster_balance.overloaded_ratio_ppm, 950_000);
    assert_eq!(p.cluster_balance.smoothing_ppm, 50_000);
    assert!(p.backends.iter().all(|b| b.role.is_none()));
    assert!(p.needs_model());

    // Other modes have no affinity unless asked for (e.g. MCP sessions).
    s.mode = Mode::Balanced;
    assert!(pool(&id(), &s).unwrap().affinity.is_none());
    s.affinity = Some(crate::spec::AffinitySpec {
        header: Some("Mcp-Session-Id".into()),
        ..Default::default()
    });
    assert_eq!(
        pool(&id(), &s).unwrap().affinity.unwrap().header,
        "mcp-session-id"
    );
}

#[test]
fn multi_cluster_errors_name_the_field() {
    use crate::spec::{AffinitySpec, AffinityStoreKind, BalanceAlgorithmSpec, RedisSpec};
    let base = {
        let mut s = spec(&["http://a:1"]);
        s.mode = Mode::MultiCluster;
        s
    };
    let field = |s: &LoadBalancerPoolSpec| pool(&id(), s).unwrap_err().field;

    let mut s = base.clone();
    s.affinity = Some(AffinitySpec {
        store: Some(AffinityStoreKind::Redis),
        ..Default::default()
    });
    assert_eq!(field(&s), "spec.affinity.redis");

    s.affinity.as_mut().unwrap().redis = Some(RedisSpec {
        address: Some("redis".into()),
        ..Default::default()
    });
    assert_eq!(field(&s), "spec.affinity.redis.address");

    s.affinity.as_mut().unwrap().redis = Some(RedisSpec {
        sentinels: vec!["s1:26379".into()],
        ..Default::default()
    });
    assert_eq!(field(&s), "spec.affinity.redis.masterName");

    s.affinity.as_mut().unwrap().redis = Some(RedisSpec {
        sentinels: vec!["s1:26379".into()],
        master_name: Some("mymaster".into()),
        timeout: Some("20ms".into()),
        ..Default::default()
    });
    let p = pool(&id(), &s).unwrap();
    match p.affinity.unwrap().store {
        crate::model::AffinityStore::Redis(r) => {
            assert_eq!(r.timeout, Duration::from_millis(20));
            assert_eq!(r.key_prefix, "keyway:affinity:");
        }
        other => panic!("{other:?}"),
    }

    // passwordEnv names only variables meant for Redis, never e.g. the admin token.
    for (name, ok) in [
        ("KEYWAY_ADMIN_TOKEN", false),
        ("AWS_SECRET_ACCESS_KEY", false),
        ("KEYWAY_REDIS_", false),
        ("KEYWAY_REDIS_PASSWORD", true),
    ] {
        s.affinity
            .as_mut()
            .unwrap()
            .redis
            .as_mut()
            .unwrap()
            .password_env = Some(name.into());
        match pool(&id(), &s) {
            Ok(_) => assert!(ok, "{name} was accepted"),
            Err(e) => {
                assert!(!ok, "{name}: {e}");
                assert_eq!(e.field, "spec.affinity.redis.passwordEnv");
                assert!(e.message.contains("KEYWAY_REDIS_"), "{e}");
            }
        }
    }

    // passwordSecretRef: read from the pool's namespace; a missing Secret or entry names the
    // field and never a value.
    s.affinity
        .as_mut()
        .unwrap()
        .redis
        .as_mut()
        .unwrap()
        .password_secret_ref = Some(crate::spec::SecretKeyRef {
        name: "redis-auth".into(),
        key: "password".into(),
    });
    let entries: BTreeMap<String, SecretValue> =
        [("password".to_string(), SecretValue::new("pw-value-123"))].into();
    let found = |name: &str| (name == "redis-auth").then_some(&entries);
    match pool_with_secrets(&id(), &s, &found)
        .unwrap()
        .affinity
        .unwrap()
        .store
    {
        crate::model::AffinityStore::Redis(r) => {
            assert_eq!(
                r.password.as_ref().map(|p| p.expose()),
                Some("pw-value-123")
            );
            assert!(!r.tls);
        }
        other => panic!("{other:?}"),
    }
    let e = pool(&id(), &s).unwrap_err();
    assert_eq!(e.field, "spec.affinity.redis.passwordSecretRef");
    assert!(e.message.contains("redis-auth"), "{e}");
    let wrong_key = |name: &str| (name == "redis-auth").then_some(&entries);
    s.affinity
        .as_mut()
        .unwrap()
        .redis
        .as_mut()
        .unwrap()
        .password_secret_ref
        .as_mut()
        .unwrap()
        .key = "pass".into();
    let e = pool_with_secrets(&id(), &s, &wrong_key).unwrap_err();
    assert_eq!(e.field, "spec.affinity.redis.passwordSecretRef");
    assert!(!e.message.contains("pw-value-123"), "{e}");

    let mut s = base.clone();
    s.affinity = Some(AffinitySpec {
        header: Some("bad header".into()),
        ..Default::default()
    });
    assert_eq!(field(&s), "spec.affinity.header");

    let mut s = base.clone();
    s.balance_algorithm = Some(BalanceAlgorithmSpec {
        overloaded_capacity_ratio: Some(0.0),
        ..Default::default()
    });
    assert_eq!(field(&s), "spec.balanceAlgorithm.overloadedCapacityRatio");

    let mut s = base.clone();
    s.mode = Mode::Balanced;
    s.balance_algorithm = Some(BalanceAlgorithmSpec::default());
    assert_eq!(field(&s), "spec.balanceAlgorithm");
}

#[test]
fn provider_fills_backends_auth_routes_and_headers() {
    let mut s = spec(&[]);
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.backends");
    s.provider = Some(crate::spec::Provider::Anthropic);
    let p = pool(&id(), &s).unwrap();
    assert_eq!(
        p.backends[0].endpoint.to_string(),
        "https://api.anthropic.com:443"
    );
    assert_eq!(
        p.auth,
        Auth::Header {
            name: "x-api-key".into(),
            prefix: String::new()
        }
    );
    assert_eq!(p.routes[0].path_prefix.as_deref(), Some("/v1/messages"));
    assert_eq!(
        p.default_headers,
        vec![("anthropic-version".to_string(), "2023-06-01".to_string())]
    );
    s.provider = Some(crate::spec::Provider::OpenaiCompatible);
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.backends");
}

#[test]
fn allowed_sources_are_parsed_and_named_on_error() {
    let mut s = spec(&["http://a"]);
    s.allowed_sources = vec!["10.0.0.0/8".into(), "bad".into()];
    assert_eq!(pool(&id(), &s).unwrap_err().field, "spec.allowedSources[1]");
    s.allowed_sources.pop();
    assert_eq!(pool(&id(), &s).unwrap().allowed_sources.len(), 1);
}

#[test]
fn key_pool_refuses_more_keys_than_the_maximum_with_a_field_error() {
    let spec = ApiKeyPoolSpec {
        secret_ref: LocalObjectRef { name: "s".into() },
        ..Default::default()
    };
    let mut entries: BTreeMap<String, SecretValue> = (0..MAX_KEYS_PER_POOL)
        .map(|i| (format!("k{i}"), SecretValue::new(format!("sk-{i}"))))
        .collect();
    assert_eq!(
        key_pool(&id(), &spec, Some(&entries)).unwrap().keys.len(),
        MAX_KEYS_PER_POOL
    );
    entries.insert("one-more".into(), SecretValue::new("sk-x"));
    let err = key_pool(&id(), &spec, Some(&entries)).unwrap_err();
    assert_eq!(err.field, "spec.secretRef.name");
    assert_eq!(err.reason, Reason::InvalidSpec);
    let msg = err.to_string();
    assert!(
        msg.contains("10001 keys") && msg.contains("at most 10000"),
        "{msg}"
    );
    assert!(!msg.contains("sk-"), "no key value in the error: {msg}");
}
