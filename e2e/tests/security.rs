//! Secure by default (issue #15), control plane, each against the real API server:
//!
//! 1. Secrets opt in with the `keyway.dev/api-keys: "true"` label.
//! 2. Grants belong to the key owner.
//! 3. (the chart's default install: see `chart.rs`)
//! 4. Streams do not outlive their credentials.
//! 5. Per-identity limits.

use keyway_api::spec::ApiKeyPool;
use keyway_e2e::discovery::{self, Dial, hello};
use keyway_e2e::http::{HttpClient, chat_request};
use keyway_e2e::manifests::Manifests;
use keyway_e2e::process::DEFAULT_AUDIENCE;
use keyway_e2e::{Controller, MockUpstream, Proxy, Timings, cluster, random_hex, wait_for};
use keyway_proto as pb;
use kube::Api;
use std::time::Duration;

/// Long enough for a loaded 2-core machine; a broken implementation never gets there.
const DEADLINE: Duration = Duration::from_secs(30);

/// A Secret `name` holding `key-1: value`, labelled as a key Secret when `labelled`.
fn secret(name: &str, value: &str, labelled: bool) -> String {
    let keys = [("key-1", value)];
    if labelled {
        Manifests::new().secret(name, &keys).yaml()
    } else {
        Manifests::new().unlabelled_secret(name, &keys).yaml()
    }
}

/// An ApiKeyPool `keys` on Secret `secret` and a LoadBalancerPool `llm` using it.
fn pools(secret: &str, upstream: &str) -> String {
    Manifests::new()
        .key_pool("keys", secret)
        .pool("llm", "keys")
        .backend("up", upstream)
        .yaml()
}

/// The `Ready` condition's (status, reason, message) of ApiKeyPool `name`.
async fn key_pool_ready(
    api: &Api<ApiKeyPool>,
    name: &str,
) -> Result<(String, String, String), String> {
    let kp = api.get(name).await.map_err(|e| e.to_string())?;
    let st = kp.status.unwrap_or_default();
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .ok_or_else(|| format!("no Ready condition yet: {st:?}"))?;
    Ok((c.status.clone(), c.reason.clone(), c.message.clone()))
}

// === 1. Secrets opt in ===

/// A user who may create ApiKeyPools but not read Secrets points one at `db-credentials`: it
/// is reported `SecretNotLabelled`, naming the label, and not one byte of it reaches a proxy.
/// Labelling the Secret is what makes it a key Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlabelled_secret_is_never_served() {
    let mut t = Timings::new("unlabelled_secret");
    let cluster = cluster().await;
    let ns = cluster.namespace("sec-label").await;
    let upstream = MockUpstream::start("up").await.expect("mock upstream");
    let value = format!("db-password-{}", random_hex(24));
    ns.apply(&secret("db-credentials", &value, false)).await;
    ns.apply(&pools("db-credentials", &upstream.url())).await;
    let mut controller = Controller::start(cluster, Some(ns.name())).await;
    let proxy = Proxy::start(&controller, ns.name(), &[]).await;
    t.phase("namespace, unlabelled Secret, controller, proxy");

    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    let message = wait_for(
        DEADLINE,
        "ApiKeyPool keys: Ready=False SecretNotLabelled",
        || async {
            match key_pool_ready(&key_pools, "keys").await? {
                (s, r, m) if s == "False" && r == "SecretNotLabelled" => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        message.contains("keyway.dev/api-keys") && message.contains("db-credentials"),
        "the message names the Secret and the label to add: {message}"
    );
    let events = ns
        .kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
        .await;
    t.phase("status SecretNotLabelled");

    // Nothing of it reached the proxy: its pool has no keys, and the upstream saw none.
    let http = HttpClient::new();
    let r = http
        .post_json(
            &format!("{}/v1/chat/completions", proxy.url),
            &chat_request("m", "hi"),
        )
        .await
        .expect("request through the proxy");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("key_pool_unavailable"), "{}", r.text());
    assert!(upstream.received_keys().is_empty());
    let config = http
        .get(&format!("{}/config", proxy.admin_url))
        .await
        .expect("GET /config")
        .text();
    assert!(
        !config.contains("key-1"),
        "the proxy holds no key of it: {config}"
    );
    t.phase("no key served");

    // Opting in serves it.
    ns.kubectl_ok(&[
        "label",
        "secret",
        "db-credentials",
        "keyway.dev/api-keys=true",
    ])
    .await;
    wait_for(
        DEADLINE,
        "ApiKeyPool keys Ready after the label",
        || async {
            match key_pool_ready(&key_pools, "keys").await? {
                (s, _, _) if s == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    wait_for(DEADLINE, "the labelled key is served", || async {
        let r = http
            .post_json(
                &format!("{}/v1/chat/completions", proxy.url),
                &chat_request("m", "hi"),
            )
            .await
            .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await;
    assert_eq!(upstream.received_keys(), vec![value.clone()]);
    t.phase("labelled: served");

    for (what, text) in [
        ("controller log", controller.process.logs()),
        ("proxy log", proxy.process.logs()),
        ("events", events),
    ] {
        assert!(!text.contains(&value), "the value appears in the {what}");
    }
    assert!(controller.process.exited().is_none());
    t.total();
}

// === 2. Grants belong to the key owner ===

/// The `namespace/name` of every pool and key pool a proxy serves (`GET /config`).
async fn served(http: &HttpClient, proxy: &Proxy) -> Result<(Vec<String>, Vec<String>), String> {
    let config = http
        .get(&format!("{}/config", proxy.admin_url))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .map_err(|e| e.to_string())?;
    let ids = |list: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        v.sort();
        v
    };
    Ok((ids(&config["pools"]), ids(&config["keyPools"])))
}

/// Namespace c's pool author grants c's pool (and so its keys) to namespace b, with a
/// `pathPrefix: /` route that would take over b's traffic. b gets nothing until the key owner
/// (c's ApiKeyPool) consents too and b's proxy names `c/shared`; even then b's own pool keeps
/// b's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_need_the_key_owner_and_a_named_pool() {
    let mut t = Timings::new("grants_key_owner");
    let cluster = cluster().await;
    let (b, c) = tokio::join!(
        cluster.namespace("sec-grant-b"),
        cluster.namespace("sec-grant-c")
    );
    let (up_b, up_c) = (
        MockUpstream::start("b").await.expect("mock b"),
        MockUpstream::start("c").await.expect("mock c"),
    );
    let (key_b, key_c) = (
        format!("sk-b-{}", random_hex(20)),
        format!("sk-c-{}", random_hex(20)),
    );
    b.apply(&format!(
        "{}---\n{}",
        secret("keys-b", &key_b, true),
        pools("keys-b", &up_b.url())
    ))
    .await;
    let c_pool = Manifests::new()
        .key_pool("shared-keys", "keys-c")
        .pool("shared", "shared-keys")
        .spec(&format!(
            "allowedProxyNamespaces: [{}]\nroutes: [{{pathPrefix: /}}]",
            b.name()
        ))
        .backend("up", &up_c.url())
        .yaml();
    c.apply(&format!("{}---\n{c_pool}", secret("keys-c", &key_c, true)))
        .await;
    let watched = format!("{},{}", b.name(), c.name());
    let controller = Controller::start_with(cluster, None, &["--watch-namespace", &watched]).await;
    let named = format!("{}/shared", c.name());
    // One proxy asks for c's namespace without naming the pool, one names it.
    let asks = Proxy::start(&controller, b.name(), &["--extra-namespaces", c.name()]).await;
    let names = Proxy::start(&controller, b.name(), &["--pools", &named]).await;
    t.phase("namespaces, pools, controller, two proxies");

    let http = HttpClient::new();
    let own = (
        vec![format!("{}/llm", b.name())],
        vec![format!("{}/keys", b.name())],
    );
    // The grant has no key owner's consent: neither proxy gets c's pool.
    for proxy in [&asks, &names] {
        assert_eq!(
            served(&http, proxy).await.expect("config"),
            own,
            "{}",
            proxy.id
        );
    }
    t.phase("no consent: nothing of c");

    // The key owner consents.
    c.kubectl_ok(&[
        "patch",
        "akp",
        "shared-keys",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"spec":{{"allowedProxyNamespaces":["{}"]}}}}"#,
            b.name()
        ),
    ])
    .await;
    let both = (
        vec![format!("{}/llm", b.name()), named.clone()],
        vec![
            format!("{}/keys", b.name()),
            format!("{}/shared-keys", c.name()),
        ],
    );
    wait_for(DEADLINE, "the proxy naming c/shared gets it", || async {
        let got = served(&http, &names).await?;
        if got == both {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    // Not named, not sent.
    assert_eq!(served(&http, &asks).await.expect("config"), own);
    t.phase("consent + named: served");

    // b's own catch-all pool wins the tie against the granted `pathPrefix: /`.
    let r = http
        .post_json(
            &format!("{}/v1/chat/completions", names.url),
            &chat_request("m", "hi"),
        )
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up_b.received_keys(), vec![key_b.clone()]);
    assert!(up_c.received_keys().is_empty(), "c's pool took b's traffic");
    t.total();
}

// === 4. Streams do not outlive their credentials ===

/// A proxy whose ServiceAccount is deleted is refused at its next reconnect, which comes within
/// the stream's bounded lifetime: a key rotated afterwards never reaches it, while a proxy
/// with a live ServiceAccount gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_account_stops_receiving_keys() {
    let mut t = Timings::new("deleted_service_account");
    let cluster = cluster().await;
    let ns = cluster.namespace("sec-lifetime").await;
    let upstream = MockUpstream::start("up").await.expect("mock upstream");
    let (v1, v2) = (
        format!("sk-v1-{}", random_hex(20)),
        format!("sk-v2-{}", random_hex(20)),
    );
    ns.apply(&format!(
        "{}---\n{}",
        secret("keys", &v1, true),
        pools("keys", &upstream.url())
    ))
    .await;
    // Streams last 3.2-4 s here (600 s by default); reviews are then cached for 2 s.
    let controller = Controller::start_with(
        cluster,
        Some(ns.name()),
        &["--stream-max-lifetime-seconds", "4"],
    )
    .await;
    let token = cluster
        .service_account_token(ns.name(), "doomed", Some(DEFAULT_AUDIENCE))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("write token");
    let token_arg = token_file.to_string_lossy().into_owned();
    let doomed = Proxy::start(&controller, ns.name(), &["--token-file", &token_arg]).await;
    let witness = Proxy::start(&controller, ns.name(), &[]).await;
    t.phase("controller (4 s streams), a doomed proxy and a witness");

    let http = HttpClient::new();
    let send = |proxy: &Proxy| {
        let url = format!("{}/v1/chat/completions", proxy.url);
        let http = &http;
        async move {
            let r = http
                .post_json(&url, &chat_request("m", "hi"))
                .await
                .map_err(|e| e.to_string())?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        }
    };
    send(&doomed)
        .await
        .expect("the doomed proxy serves while its account lives");
    // Streams end and reconnect while the account lives: reconnects are routine.
    wait_for(DEADLINE, "a routine reconnect", || async {
        let logs = doomed.process.logs();
        if logs.matches("connected to the controller").count() >= 2 {
            Ok(())
        } else {
            Err("one stream so far".to_owned())
        }
    })
    .await;
    t.phase("served; streams reconnect");

    ns.kubectl_ok(&["delete", "serviceaccount", "doomed"]).await;
    let deleted = std::time::Instant::now();
    wait_for(DEADLINE, "the doomed proxy is refused", || async {
        if doomed
            .process
            .logs()
            .contains("the controller refused this proxy")
        {
            Ok(())
        } else {
            Err("still connected or reconnecting".to_owned())
        }
    })
    .await;
    let refused_after = deleted.elapsed();
    eprintln!(
        "[e2e] a deleted ServiceAccount was refused {refused_after:?} after its deletion (bound: 4 s lifetime + 2 s review cache)"
    );
    t.phase("refused after the deletion");

    ns.kubectl_ok(&[
        "patch",
        "secret",
        "keys",
        "--type=merge",
        "-p",
        &format!(r#"{{"stringData":{{"key-1":"{v2}"}}}}"#),
    ])
    .await;
    wait_for(DEADLINE, "the witness serves the rotated key", || async {
        send(&witness).await?;
        if upstream.received_keys().last() == Some(&v2) {
            Ok(())
        } else {
            Err("old key".to_owned())
        }
    })
    .await;
    // The rotation was indexed and pushed; the doomed proxy still has only what it had.
    send(&doomed)
        .await
        .expect("the doomed proxy keeps its last snapshot");
    assert_eq!(
        upstream.received_keys().last(),
        Some(&v1),
        "the rotated key reached a deleted ServiceAccount"
    );
    t.total();
}

// === 5. Per-identity limits ===

/// The first snapshot of a stream.
async fn first_snapshot(inbound: &mut tonic::Streaming<pb::ControllerMessage>) -> pb::Snapshot {
    discovery::next_snapshot(inbound, DEADLINE)
        .await
        .expect("a snapshot")
}

/// One identity cannot grow the controller without bound: oversized Hellos are refused, its
/// streams are counted, and its reports can only speak of the keys and backends it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_is_bounded() {
    let mut t = Timings::new("per_identity_limits");
    let cluster = cluster().await;
    let (ns, other) = tokio::join!(
        cluster.namespace("sec-limits"),
        cluster.namespace("sec-limits-o")
    );
    let upstream = MockUpstream::start("up").await.expect("mock upstream");
    for n in [&ns, &other] {
        n.apply(&format!(
            "{}---\n{}",
            secret("keys", &format!("sk-{}", random_hex(20)), true),
            pools("keys", &upstream.url())
        ))
        .await;
    }
    let watched = format!("{},{}", ns.name(), other.name());
    let controller = Controller::start_with(
        cluster,
        None,
        &[
            "--watch-namespace",
            &watched,
            "--max-streams-per-identity",
            "2",
        ],
    )
    .await;
    let token = cluster
        .service_account_token(ns.name(), "keyway-proxy", Some(DEFAULT_AUDIENCE))
        .await;
    let dial = Dial {
        url: controller.grpc_url.clone(),
        ..Dial::default()
    };
    let open = |h| discovery::open(&dial, Some(&token), h);
    t.phase("two namespaces, controller (2 streams per identity)");

    // Oversized Hello fields are refused, naming the field.
    let mut big_id = hello(ns.name());
    big_id.proxy_id = "x".repeat(100_000);
    let mut many_pools = hello(ns.name());
    many_pools.pools = (0..10_000).map(|i| format!("pool-{i}")).collect();
    for (what, h, field) in [
        ("a 100 kB proxy id", big_id, "proxy_id"),
        ("10,000 pools", many_pools, "pools"),
    ] {
        match open(h).await {
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
                assert!(s.message().contains(field), "{what}: {}", s.message());
            }
            Ok(_) => panic!("{what} was accepted"),
        }
    }
    t.phase("oversized Hellos refused");

    // Two streams per identity; the third is refused until one ends.
    let (tx1, mut in1) = open(hello(ns.name())).await.expect("stream 1");
    let snapshot = first_snapshot(&mut in1).await;
    let (tx2, mut in2) = open(hello(ns.name())).await.expect("stream 2");
    first_snapshot(&mut in2).await;
    let third = open(hello(ns.name())).await.map(|_| ());
    assert_eq!(
        third.map_err(|s| s.code()),
        Err(tonic::Code::ResourceExhausted)
    );
    drop((tx2, in2));
    wait_for(DEADLINE, "a slot is free again", || async {
        open(hello(ns.name()))
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
    })
    .await;
    t.phase("streams per identity");

    // A report about a key that was sent, one made up, and one of the other namespace.
    let kp = &snapshot.key_pools[0];
    let key = |namespace: &str, id: &str, reason: &str| pb::KeyReport {
        namespace: namespace.to_owned(),
        key_pool: "keys".into(),
        key_id: id.to_owned(),
        state: "disabled".into(),
        reason: reason.to_owned(),
        requests: 1,
        ..Default::default()
    };
    let report = pb::Report {
        keys: vec![
            key(&kp.namespace, &kp.keys[0].id, "upstream answered 401"),
            key(&kp.namespace, "made-up-key", &"x".repeat(100_000)),
            key(other.name(), "key-1", "not yours"),
        ],
        backends: vec![pb::BackendReport {
            namespace: kp.namespace.clone(),
            pool: "llm".into(),
            backend: "made-up-backend".into(),
            healthy: false,
            ..Default::default()
        }],
        ..Default::default()
    };
    tx1.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Report(report)),
    })
    .await
    .expect("send the report");
    let key_pools: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, ns.name());
    let status = wait_for(DEADLINE, "the sent key shows disabled", || async {
        let st = key_pools
            .get("keys")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if st
            .keys
            .iter()
            .any(|k| k.id == "key-1" && k.state == "disabled")
        {
            Ok(st)
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    assert!(
        status.keys.iter().all(|k| k.id != "made-up-key"),
        "a made-up key id reached the status: {status:?}"
    );
    let other_kp: Api<ApiKeyPool> = Api::namespaced(cluster.client().await, other.name());
    let other_st = other_kp
        .get("keys")
        .await
        .expect("get")
        .status
        .unwrap_or_default();
    assert!(
        other_st.keys.iter().all(|k| k.state != "disabled"),
        "another namespace's key was written: {other_st:?}"
    );
    let events = ns
        .kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].message}"])
        .await;
    assert!(
        !events.contains("made-up"),
        "an Event names a made-up key: {events}"
    );
    let lbp = ns
        .kubectl_ok(&["get", "lbp", "llm", "-o", "jsonpath={.status.backends}"])
        .await;
    assert!(
        !lbp.contains("made-up-backend"),
        "a made-up backend reached the status: {lbp}"
    );
    drop((tx1, in1));
    t.total();
}
