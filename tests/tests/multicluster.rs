//! `mode: multiCluster` and session affinity, in-process, against real mock upstreams (each
//! one a "cluster" with a deep health endpoint) and, for the shared store, a real
//! `redis-server`.
//!
//! Deep health is probed every second; every wait is a poll with a deadline on the proxy's
//! own `/status`, never a fixed sleep.

mod support;

use http::Method;
use keyway_testkit::client::{Reply, get, send};
use keyway_testkit::redis::RedisServer;
use keyway_testkit::{MockUpstream, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use support::FileProxy;

const T: Duration = Duration::from_secs(15);
const MODEL: &str = "llama-70b";

/// A deep-health body for one model.
fn deep(healthy: bool, capacity: u64, consumption: u64) -> Value {
    json!({"models": [{"name": MODEL, "payload": {
        "healthy": healthy, "capacity": capacity, "consumption": consumption,
    }}]})
}

/// A multiCluster pool over `clusters` (name, url), `extra` spliced into the spec.
fn multi_cluster(clusters: &[(&str, String)], extra: &str) -> String {
    let backends: String = clusters
        .iter()
        .map(|(n, u)| format!("    - {{name: {n}, endpoint: \"{u}\"}}\n"))
        .collect();
    format!(
        r#"apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: models}}
spec:
  mode: multiCluster
  healthCheck: {{path: /health/deep, intervalSeconds: 1, deep: true}}
{extra}
  backends:
{backends}"#
    )
}

async fn ask(p: &FileProxy, user: Option<&str>, model: &str) -> Reply {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    let mut headers = vec![("content-type", "application/json")];
    if let Some(u) = user {
        headers.push(("user-id", u));
    }
    send(
        Method::POST,
        &format!("{}/v1/chat/completions", p.url()),
        &headers,
        body.to_string(),
    )
    .await
    .unwrap()
}

/// The cluster that answered a user's request.
async fn cluster_of(p: &FileProxy, user: &str) -> String {
    let r = ask(p, Some(user), MODEL).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-keyway-backend").unwrap().to_string()
}

/// Waits until the proxy's status shows `consumption` of the model on `cluster`.
async fn sees(p: &FileProxy, cluster: &str, healthy: bool, consumption: u64) {
    let url = format!("{}/status", p.admin());
    eventually(
        T,
        &format!("proxy sees {cluster} healthy={healthy} consumption={consumption}"),
        || async {
            let Ok(r) = get(&url).await else { return false };
            let s = r.json();
            s["pools"][0]["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["name"] == cluster)
                .flat_map(|b| b["models"].as_array().cloned().unwrap_or_default())
                .any(|m| {
                    m["name"] == MODEL
                        && m["healthy"] == healthy
                        && m["consumption"].as_f64() == Some(consumption as f64)
                })
        },
    )
    .await;
}

/// A counter or gauge from `/metrics`: the sum over series whose labels contain every one
/// of `labels` (`name="value"` fragments).
async fn metric(p: &FileProxy, name: &str, labels: &[&str]) -> f64 {
    let text = get(&format!("{}/metrics", p.admin())).await.unwrap().text();
    keyway_testkit::metrics::sum(&text, name, labels)
}

/// Two idle clusters serving the model, and a proxy over them that has seen both.
async fn east_and_west(extra: &str) -> (MockUpstream, MockUpstream, FileProxy) {
    let east = MockUpstream::start("east").await.unwrap();
    let west = MockUpstream::start("west").await.unwrap();
    for c in [&east, &west] {
        c.set_deep_health(deep(true, 1000, 0));
    }
    let p = FileProxy::start(&multi_cluster(
        &[("east", east.url()), ("west", west.url())],
        extra,
    ))
    .await;
    sees(&p, "east", true, 0).await;
    sees(&p, "west", true, 0).await;
    (east, west, p)
}

#[tokio::test]
async fn users_stick_to_a_cluster_and_move_only_when_it_turns_unhealthy_or_overloaded() {
    let (east, west, p) = east_and_west("").await;

    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut assigned = HashMap::new();
    for u in &users {
        assigned.insert(u.clone(), cluster_of(&p, u).await);
    }
    let on = |c: &str| assigned.values().filter(|v| *v == c).count();
    assert!(
        on("east") > 0 && on("west") > 0,
        "rendezvous spreads users: {assigned:?}"
    );
    // Sticky: every further request of a user lands on the same cluster.
    for u in &users {
        for _ in 0..3 {
            assert_eq!(cluster_of(&p, u).await, assigned[u], "{u} moved");
        }
    }

    // East's model becomes overloaded (99% > 95%): its users move to west, west's stay.
    east.set_deep_health(deep(true, 1000, 990));
    sees(&p, "east", true, 990).await;
    for u in &users {
        assert_eq!(
            cluster_of(&p, u).await,
            "west",
            "{u} on an overloaded cluster"
        );
    }
    let moved = on("east") as f64;
    assert_eq!(
        metric(
            &p,
            "keyway_proxy_cluster_rebalances_total",
            &[r#"reason="overloaded""#]
        )
        .await,
        moved
    );
    assert_eq!(
        metric(&p, "keyway_proxy_affinity_assignment_changes_total", &[]).await,
        moved
    );

    // East recovers, then west's model turns unhealthy: everyone goes to east, and stays
    // there when west comes back.
    east.set_deep_health(deep(true, 1000, 0));
    sees(&p, "east", true, 0).await;
    west.set_deep_health(deep(false, 1000, 0));
    sees(&p, "west", false, 0).await;
    for u in &users {
        assert_eq!(cluster_of(&p, u).await, "east");
    }
    assert_eq!(
        metric(
            &p,
            "keyway_proxy_cluster_rebalances_total",
            &[r#"reason="cluster_unhealthy""#]
        )
        .await,
        users.len() as f64
    );
    west.set_deep_health(deep(true, 1000, 0));
    sees(&p, "west", true, 0).await;
    for u in &users {
        assert_eq!(cluster_of(&p, u).await, "east", "assignments are sticky");
    }

    // A model no cluster serves: 503 naming the model.
    let r = ask(&p, Some("user-0"), "no-such-model").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "no_cluster");
    assert!(r.text().contains("no-such-model"), "{}", r.text());

    // Requests without a user id are spread by weight.
    let mut anonymous = HashMap::<String, usize>::new();
    for _ in 0..60 {
        let r = ask(&p, None, MODEL).await;
        assert_eq!(r.status, 200);
        *anonymous
            .entry(r.header("x-keyway-backend").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");

    // Per-cluster metrics: health, capacity, consumption and tokens served.
    assert_eq!(
        metric(&p, "keyway_proxy_cluster_healthy", &[r#"cluster="east""#]).await,
        1.0
    );
    assert_eq!(
        metric(&p, "keyway_proxy_cluster_capacity", &[r#"cluster="west""#]).await,
        1000.0
    );
    assert!(
        metric(
            &p,
            "keyway_proxy_cluster_tokens_total",
            &[r#"cluster="east""#]
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &p,
            "keyway_proxy_cluster_tokens_per_minute",
            &[r#"cluster="east""#]
        )
        .await
            > 0.0
    );
}

#[tokio::test]
async fn two_replicas_with_the_memory_store_agree_on_first_assignments() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let c = MockUpstream::start("c").await.unwrap();
    a.set_deep_health(deep(true, 2000, 100));
    b.set_deep_health(deep(true, 2000, 900));
    c.set_deep_health(deep(true, 1000, 10));
    let yaml = multi_cluster(&[("a", a.url()), ("b", b.url()), ("c", c.url())], "");
    let one = FileProxy::start(&yaml).await;
    let two = FileProxy::start(&yaml).await;
    for p in [&one, &two] {
        sees(p, "a", true, 100).await;
        sees(p, "b", true, 900).await;
        sees(p, "c", true, 10).await;
    }
    let mut agree = 0;
    let mut per_cluster = HashMap::<String, usize>::new();
    for i in 0..1_000 {
        let u = format!("u{i}");
        let (x, y) = (cluster_of(&one, &u).await, cluster_of(&two, &u).await);
        if x == y {
            agree += 1;
        }
        *per_cluster.entry(x).or_default() += 1;
    }
    assert_eq!(agree, 1_000, "replicas disagree without a shared store");
    // And the shares follow the weights: b (45% used) takes fewer users than a (5%).
    assert!(
        per_cluster["b"] < per_cluster["a"],
        "weights ignored: {per_cluster:?}"
    );
}

#[tokio::test]
async fn token_rate_rebalancing_moves_new_users_off_the_busy_cluster() {
    let (_east, _west, p) = east_and_west(
        "  balanceAlgorithm: {tokenRebalance: {imbalanceRatio: 1.5, maxFraction: 1.0}}",
    )
    .await;
    // One heavy user makes its cluster busy in tokens per minute.
    let busy = cluster_of(&p, "heavy").await;
    for _ in 0..60 {
        assert_eq!(cluster_of(&p, "heavy").await, busy);
    }
    let idle = if busy == "east" { "west" } else { "east" };
    // Every new user now goes to the idle cluster (maxFraction 1.0), as long as the busy
    // one stays busier per unit of capacity by more than 1.5 (10 users cannot catch up with
    // 60 requests).
    for i in 0..10 {
        let got = cluster_of(&p, &format!("new-{i}")).await;
        if got != idle {
            let status = get(&format!("{}/status", p.admin())).await.unwrap().text();
            panic!("new-{i} went to {got}, not {idle}; status: {status}");
        }
    }
    assert!(
        metric(
            &p,
            "keyway_proxy_cluster_rebalances_total",
            &[r#"reason="tpm_imbalance""#]
        )
        .await
            > 0.0,
        "moves are counted"
    );
}

fn redis_store(address: &str) -> String {
    format!("  affinity: {{store: redis, redis: {{address: \"{address}\", timeout: 200ms}}}}")
}

#[tokio::test]
async fn redis_store_shares_assignments_and_survives_redis_going_away() {
    let mut redis = RedisServer::start().await;
    let east = MockUpstream::start("east").await.unwrap();
    let west = MockUpstream::start("west").await.unwrap();
    east.set_deep_health(deep(true, 1000, 0));
    west.set_deep_health(deep(true, 1000, 990));
    let clusters = [("east", east.url()), ("west", west.url())];
    let shared = multi_cluster(&clusters, &redis_store(&redis.address()));
    let one = FileProxy::start(&shared).await;
    sees(&one, "west", true, 990).await;

    // West is overloaded: replica one assigns every user to east.
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    for u in &users {
        assert_eq!(cluster_of(&one, u).await, "east");
    }
    // West recovers. A second replica sharing Redis keeps the users on east...
    west.set_deep_health(deep(true, 1000, 0));
    let two = FileProxy::start(&shared).await;
    let local = FileProxy::start(&multi_cluster(&clusters, "")).await;
    for p in [&one, &two, &local] {
        sees(p, "west", true, 0).await;
        sees(p, "east", true, 0).await;
    }
    for u in &users {
        assert_eq!(cluster_of(&two, u).await, "east", "{u}: not shared");
    }
    assert!(
        metric(
            &two,
            "keyway_proxy_affinity_lookups_total",
            &[r#"store="redis""#, r#"result="hit""#]
        )
        .await
            >= users.len() as f64
    );
    // ...while a replica with only its memory store spreads them by rendezvous hashing.
    let mut spread = 0;
    for u in &users {
        if cluster_of(&local, u).await == "west" {
            spread += 1;
        }
    }
    assert!(
        spread > 0,
        "the control replica should send some users to west"
    );

    // Redis dies: no request fails, known users stay put, new users are served.
    redis.stop().await;
    for u in &users {
        assert_eq!(cluster_of(&two, u).await, "east", "{u} during the outage");
    }
    for i in 0..10 {
        let r = ask(&two, Some(&format!("outage-{i}")), MODEL).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let fallbacks = metric(&two, "keyway_proxy_affinity_store_fallbacks_total", &[]).await;
    assert!(fallbacks > 0.0, "fallbacks are counted");

    // Redis returns (empty): the replicas use it again and write new assignments to it.
    let _redis = RedisServer::start_on(redis.port()).await;
    eventually(T, "new assignments reach the restarted redis", || async {
        let r = ask(&two, Some("after-restart"), MODEL).await;
        if r.status != 200 {
            return false;
        }
        let client = keyway_proxy::affinity::resp::RedisClient::new(&redis_settings(&redis));
        let key = "keyway:affinity:default/models:after-restart";
        matches!(
            client.command(&[b"GET", key.as_bytes()]).await,
            Ok(keyway_proxy::affinity::resp::Reply::Bulk(Some(_)))
        )
    })
    .await;
    let before = metric(&two, "keyway_proxy_affinity_store_fallbacks_total", &[]).await;
    for u in &users {
        let r = ask(&two, Some(u), MODEL).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        metric(&two, "keyway_proxy_affinity_store_fallbacks_total", &[]).await,
        before,
        "no fallbacks once redis is back"
    );
}

#[tokio::test]
async fn redis_store_over_tls_with_a_password_from_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pki = keyway_testkit::tls::TestPki::new(&[]);
    let (ca, cert, key) = (
        dir.path().join("ca.crt"),
        dir.path().join("redis.crt"),
        dir.path().join("redis.key"),
    );
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let password = format!("redis-pw-{}", std::process::id());
    let redis = RedisServer::start_tls(&cert, &key, Some(&password)).await;
    let east = MockUpstream::start("east").await.unwrap();
    let west = MockUpstream::start("west").await.unwrap();
    east.set_deep_health(deep(true, 1000, 0));
    west.set_deep_health(deep(true, 1000, 0));
    let clusters = [("east", east.url()), ("west", west.url())];
    let store = format!(
        "  affinity: {{store: redis, redis: {{address: \"{}\", timeout: 500ms, tls: true, passwordSecretRef: {{name: redis-auth, key: password}}}}}}",
        redis.address()
    );
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: redis-auth}}\nstringData: {{password: \"{password}\"}}\n---\n{}",
        multi_cluster(&clusters, &store)
    );
    let trusted = |s: &mut keyway_proxy::Settings| s.forwarder.upstream_ca = Some(ca.clone());
    let one = FileProxy::start_with(&yaml, trusted).await;
    let two = FileProxy::start_with(&yaml, trusted).await;
    // Without the private CA the server is not trusted: every lookup falls back to memory.
    let untrusting = FileProxy::start(&yaml).await;
    for p in [&one, &two, &untrusting] {
        sees(p, "west", true, 0).await;
        sees(p, "east", true, 0).await;
    }
    let users: Vec<String> = (0..20).map(|i| format!("tls-user-{i}")).collect();
    let mut first = HashMap::new();
    for u in &users {
        first.insert(u.clone(), cluster_of(&one, u).await);
    }
    // Replica two reads replica one's assignments through the TLS Redis (AUTH passed).
    for u in &users {
        assert_eq!(
            cluster_of(&two, u).await,
            first[u],
            "{u}: not shared over TLS"
        );
    }
    let hits = metric(
        &two,
        "keyway_proxy_affinity_lookups_total",
        &[r#"store="redis""#, r#"result="hit""#],
    )
    .await;
    assert!(hits >= users.len() as f64, "hits {hits}");
    for p in [&one, &two] {
        assert_eq!(
            metric(p, "keyway_proxy_affinity_store_fallbacks_total", &[]).await,
            0.0,
            "a trusted proxy never falls back"
        );
    }
    let r = ask(&untrusting, Some("someone"), MODEL).await;
    assert_eq!(r.status, 200, "served from memory: {}", r.text());
    assert!(
        metric(
            &untrusting,
            "keyway_proxy_affinity_store_fallbacks_total",
            &[]
        )
        .await
            > 0.0,
        "an untrusted certificate is refused"
    );
    // The password is not shown by the admin API.
    let status = get(&format!("{}/status", one.admin()))
        .await
        .unwrap()
        .text();
    assert!(!status.contains(&password), "password in /status");
}

fn redis_settings(redis: &RedisServer) -> keyway_api::model::RedisStore {
    keyway_api::model::RedisStore {
        target: keyway_api::model::RedisTarget::Direct(redis.address()),
        db: 0,
        key_prefix: "keyway:affinity:".into(),
        timeout: Duration::from_secs(1),
        password_env: None,
        password: None,
        tls: false,
    }
}

const KEYS: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: mcp-keys, labels: {keyway.dev/api-keys: "true"}}
stringData: {k1: "sk-mcp-1111", k2: "sk-mcp-2222", k3: "sk-mcp-3333"}
---
apiVersion: keyway.dev/v1alpha1
kind: ApiKeyPool
metadata: {name: keys}
spec:
  secretRef: {name: mcp-keys}
---
"#;

fn mcp_pool(backends: &[(&str, String)]) -> String {
    let list: String = backends
        .iter()
        .map(|(n, u)| format!("    - {{name: {n}, endpoint: \"{u}\"}}\n"))
        .collect();
    format!(
        r#"{KEYS}apiVersion: keyway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {{name: mcp}}
spec:
  apiKeyPoolRef: {{name: keys}}
  affinity: {{header: Mcp-Session-Id}}
  backends:
{list}"#
    )
}

async fn mcp_call(p: &FileProxy, method: Method, session: Option<&str>, body: Value) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    let body = if method == Method::GET {
        String::new()
    } else {
        body.to_string()
    };
    send(method, &format!("{}/mcp", p.url()), &headers, body)
        .await
        .unwrap()
}

#[tokio::test]
async fn mcp_sessions_stay_on_the_backend_and_key_that_opened_them() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let p = FileProxy::start(&mcp_pool(&[("a", a.url()), ("b", b.url())])).await;

    let mut sessions = Vec::new();
    for i in 0..6 {
        let r = mcp_call(
            &p,
            Method::POST,
            None,
            json!({"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {}}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sid = r.header("mcp-session-id").unwrap().to_string();
        let backend = r.header("x-keyway-backend").unwrap().to_string();
        let key = r.header("x-keyway-key-id").unwrap().to_string();
        assert!(
            sid.starts_with(&format!("{backend}-")),
            "{sid} from {backend}"
        );
        sessions.push((sid, backend, key));
    }
    assert!(
        sessions.iter().any(|s| s.1 == "a") && sessions.iter().any(|s| s.1 == "b"),
        "round robin opens sessions on both backends"
    );

    // Follow-ups (POST calls and the GET event stream) go where the session lives, with the
    // same key, although the pool balances round robin over backends and keys.
    for (sid, backend, key) in &sessions {
        for i in 0..4 {
            let r = mcp_call(
                &p,
                Method::POST,
                Some(sid),
                json!({"jsonrpc": "2.0", "id": i, "method": "tools/list"}),
            )
            .await;
            assert_eq!(r.status, 200, "{sid}: {}", r.text());
            assert_eq!(r.header("x-keyway-backend"), Some(backend.as_str()));
            assert_eq!(r.header("x-keyway-key-id"), Some(key.as_str()));
        }
        let r = mcp_call(&p, Method::GET, Some(sid), Value::Null).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(sid.as_str()), "{}", r.text());
        assert_eq!(r.header("x-keyway-backend"), Some(backend.as_str()));
    }
    // The upstreams saw each session with one key only.
    for m in [&a, &b] {
        let mut keys_per_session = HashMap::<String, std::collections::HashSet<String>>::new();
        for req in m.requests() {
            if let (Some(s), Some(k)) = (req.header("mcp-session-id"), req.key.clone()) {
                keys_per_session.entry(s.to_string()).or_default().insert(k);
            }
        }
        assert!(!keys_per_session.is_empty());
        for (s, keys) in keys_per_session {
            assert_eq!(keys.len(), 1, "session {s} used keys {keys:?}");
        }
    }
    assert_eq!(
        metric(&p, "keyway_proxy_affinity_sessions_learned_total", &[]).await,
        6.0
    );

    // A session this proxy never saw is routed normally; the upstream's 404 passes through.
    let r = mcp_call(
        &p,
        Method::POST,
        Some("forged"),
        json!({"method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.header("x-keyway-backend").is_some(),
        "balanced to some backend"
    );

    // Backend b leaves the config: its sessions get a 404 (start a new session), never a
    // silent re-route to a backend that does not know them.
    p.rewrite(&mcp_pool(&[("a", a.url())]));
    let gone = sessions.iter().find(|s| s.1 == "b").unwrap();
    eventually(
        T,
        "b's session is refused once b left the config",
        || async {
            let r = mcp_call(&p, Method::POST, Some(&gone.0), json!({"method": "ping"})).await;
            r.status == 404 && r.json()["error"]["type"] == "session_not_found"
        },
    )
    .await;
    let kept = sessions.iter().find(|s| s.1 == "a").unwrap();
    let r = mcp_call(&p, Method::POST, Some(&kept.0), json!({"method": "ping"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-keyway-backend"), Some("a"));
}

#[tokio::test]
async fn redis_store_finds_the_master_through_sentinel() {
    let master = RedisServer::start().await;
    let sentinel = RedisServer::start_sentinel("keyway", &master).await;
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let store = format!(
        "  affinity: {{store: redis, redis: {{sentinels: [\"127.0.0.1:1\", \"{}\"], masterName: keyway, timeout: 500ms}}}}",
        sentinel.address()
    );
    a.set_deep_health(deep(true, 1000, 0));
    b.set_deep_health(deep(true, 1000, 0));
    let p = FileProxy::start(&multi_cluster(&[("a", a.url()), ("b", b.url())], &store)).await;
    sees(&p, "a", true, 0).await;
    sees(&p, "b", true, 0).await;
    let r = ask(&p, Some("through-sentinel"), MODEL).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The first sentinel is down; the second one named the master, which holds the user.
    let client = keyway_proxy::affinity::resp::RedisClient::new(&redis_settings(&master));
    let stored = client
        .command(&[b"GET", b"keyway:affinity:default/models:through-sentinel"])
        .await
        .unwrap();
    let cluster = r.header("x-keyway-backend").unwrap();
    assert_eq!(
        stored,
        keyway_proxy::affinity::resp::Reply::Bulk(Some(format!("c\t{cluster}").into_bytes()))
    );
    assert_eq!(
        metric(&p, "keyway_proxy_affinity_store_fallbacks_total", &[]).await,
        0.0
    );
}
