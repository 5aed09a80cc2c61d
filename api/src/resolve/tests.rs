use super::*;
use crate::spec::{AuthSpec, BackendSpec, LocalObjectRef, RouteSpec, Selection, Strategy};

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
            })
            .collect(),
        strategy: Strategy::RoundRobin,
        api_key_pool_ref: None,
        auth: None,
        routes: vec![],
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
