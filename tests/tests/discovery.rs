//! Controller ↔ proxy over the real gRPC stream, in-process: the controller's discovery
//! service is fed an index directly (no Kubernetes), the proxy runs in controller mode.

mod support;

use keyway_api::model::ObjectId;
use keyway_api::secret::SecretValue;
use keyway_api::spec::{ApiKeyPoolSpec, BackendSpec, LoadBalancerPoolSpec, LocalObjectRef};
use keyway_controller::grpc::DiscoveryService;
use keyway_controller::index::{self, Index, KeyPoolInput, LastGood, PoolInput};
use keyway_controller::proxies::Proxies;
use keyway_proto as pb;
use keyway_proxy::Source;
use keyway_proxy::discovery::DiscoverySettings;
use keyway_testkit::client::chat;
use keyway_testkit::{MockUpstream, eventually};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

fn index_for(ns: &str, endpoints: &[&str], key: &str) -> Index {
    index_with(ns, endpoints, key, |_| {})
}

/// Like `index_for`, with a hook to edit the pool spec (mode, evacuation, ...).
fn index_with(
    ns: &str,
    endpoints: &[&str],
    key: &str,
    edit: impl FnOnce(&mut LoadBalancerPoolSpec),
) -> Index {
    let mut pool = PoolInput {
        id: ObjectId::new(ns, "llm"),
        generation: Some(1),
        spec: LoadBalancerPoolSpec {
            backends: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| BackendSpec {
                    name: format!("b{i}"),
                    endpoint: e.to_string(),
                    ..Default::default()
                })
                .collect(),
            api_key_pool_ref: Some(LocalObjectRef {
                name: "keys".into(),
            }),
            ..Default::default()
        },
    };
    edit(&mut pool.spec);
    let kp = KeyPoolInput {
        id: ObjectId::new(ns, "keys"),
        generation: Some(1),
        spec: ApiKeyPoolSpec {
            secret_ref: LocalObjectRef { name: "s".into() },
            // The key owner consents to whatever the pool grants.
            allowed_proxy_namespaces: pool.spec.allowed_proxy_namespaces.clone(),
            ..Default::default()
        },
    };
    let mut secrets = BTreeMap::new();
    secrets.insert(
        ObjectId::new(ns, "s"),
        BTreeMap::from([("k1".to_string(), SecretValue::new(key))]),
    );
    index::build(&[pool], &[kp], &secrets, &mut LastGood::default())
}

struct Controller {
    addr: SocketAddr,
    index: watch::Sender<Arc<Index>>,
    proxies: Proxies,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    async fn start(addr: SocketAddr, index: Index) -> Self {
        Self::start_with(addr, index, Arc::new(keyway_controller::auth::NoAuth)).await
    }

    async fn start_with(
        addr: SocketAddr,
        index: Index,
        auth: Arc<dyn keyway_controller::auth::Authenticate>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Arc::new(index));
        let proxies = Proxies::default();
        let metrics =
            keyway_controller::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
        let (_drain_tx, drain_rx) = watch::channel(false);
        let svc =
            DiscoveryService::new(rx, proxies.clone(), metrics, drain_rx).with_authenticator(auth);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _keep = _drain_tx;
            tonic::transport::Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            index: tx,
            proxies,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn proxy_for(controller: SocketAddr, ns: &str) -> keyway_proxy::Running {
    proxy_for_url(&format!("http://{controller}"), ns).await
}

async fn proxy_for_url(controller_url: &str, ns: &str) -> keyway_proxy::Running {
    keyway_proxy::start(
        support::settings(Source::Controller(DiscoverySettings {
            controller_url: controller_url.to_string(),
            proxy_id: "test-proxy".into(),
            namespace: ns.into(),
            namespaces: vec![],
            pools: vec![],
            report_interval: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            token_file: None,
            controller_ca: None,
            controller_ca_pem: None,
            controller_server_name: None,
        })),
        prometheus::Registry::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn pushes_snapshots_and_updates_without_restart() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let ctl = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        index_for("team", &[&a.url()], "sk-one"),
    )
    .await;
    let proxy = proxy_for(ctl.addr, "team").await;
    let url = format!("http://{}", proxy.addr);

    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;
    assert_eq!(chat(&url, &[]).await.unwrap().status, 200);
    assert_eq!(a.received_keys(), ["sk-one"]);
    assert_eq!(ctl.proxies.count(), 1);
    eventually(Duration::from_secs(5), "ack recorded", || async {
        ctl.proxies.list().iter().all(|p| p.acked_version == 1)
    })
    .await;

    // A new backend and a rotated key arrive on the same stream.
    ctl.index
        .send_replace(Arc::new(index_for("team", &[&b.url()], "sk-two")));
    eventually(Duration::from_secs(5), "new snapshot served", || async {
        chat(&url, &[]).await.unwrap();
        b.received_keys().contains(&"sk-two".to_string())
    })
    .await;
    eventually(Duration::from_secs(5), "second ack", || async {
        ctl.proxies.list().iter().all(|p| p.acked_version == 2)
    })
    .await;

    drop(proxy);
    eventually(Duration::from_secs(5), "proxy deregistered", || async {
        ctl.proxies.count() == 0
    })
    .await;
    ctl.stop().await;
}

#[tokio::test]
async fn a_proxy_only_receives_its_own_namespace() {
    let a = MockUpstream::start("a").await.unwrap();
    let ctl = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        index_for("team-a", &[&a.url()], "sk-a"),
    )
    .await;
    let proxy = proxy_for(ctl.addr, "team-b").await;
    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;
    let router = proxy.dataplane.router();
    assert!(router.pools.is_empty());
    assert!(router.key_pools.is_empty());
    let r = chat(&format!("http://{}", proxy.addr), &[]).await.unwrap();
    assert_eq!(r.status, 404);
    ctl.stop().await;
}

#[tokio::test]
async fn keeps_serving_while_the_controller_is_away_and_resyncs() {
    let a = MockUpstream::start("a").await.unwrap();
    let b = MockUpstream::start("b").await.unwrap();
    let ctl = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        index_for("team", &[&a.url()], "sk-one"),
    )
    .await;
    let addr = ctl.addr;
    let proxy = proxy_for(addr, "team").await;
    let url = format!("http://{}", proxy.addr);
    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;

    ctl.stop().await;
    for _ in 0..10 {
        assert_eq!(
            chat(&url, &[]).await.unwrap().status,
            200,
            "serves the last snapshot"
        );
    }
    assert_eq!(a.request_count(), 10);

    // The controller comes back with a changed config: the proxy redials and applies it.
    let ctl = Controller::start(addr, index_for("team", &[&b.url()], "sk-two")).await;
    eventually(
        Duration::from_secs(10),
        "resynced after reconnect",
        || async {
            chat(&url, &[]).await.unwrap();
            b.request_count() > 0
        },
    )
    .await;
    ctl.stop().await;
}

/// A controller that sends one good snapshot, then an invalid one.
#[tokio::test]
async fn an_invalid_snapshot_is_nacked_and_the_last_good_one_keeps_serving() {
    struct Scripted {
        good: pb::Snapshot,
        replies: mpsc::Sender<pb::ProxyMessage>,
    }
    #[tonic::async_trait]
    impl pb::discovery_server::Discovery for Scripted {
        type StreamStream = ReceiverStream<Result<pb::ControllerMessage, tonic::Status>>;
        async fn stream(
            &self,
            req: tonic::Request<tonic::Streaming<pb::ProxyMessage>>,
        ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(4);
            let mut bad = self.good.clone();
            bad.version = 2;
            bad.pools[0].backends[0].endpoint = "gopher://x".into();
            let msgs = [self.good.clone(), bad];
            let replies = self.replies.clone();
            tokio::spawn(async move {
                let _hello = inbound.message().await;
                for snapshot in msgs {
                    let m = pb::ControllerMessage {
                        message: Some(pb::controller_message::Message::Snapshot(snapshot)),
                    };
                    tx.send(Ok(m)).await.unwrap();
                    loop {
                        let Ok(Some(reply)) = inbound.message().await else {
                            return;
                        };
                        if !matches!(reply.message, Some(pb::proxy_message::Message::Report(_))) {
                            replies.send(reply).await.unwrap();
                            break;
                        }
                    }
                }
                // Keep the stream open.
                std::future::pending::<()>().await;
                drop(tx);
            });
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        }
    }

    let a = MockUpstream::start("a").await.unwrap();
    let good = pb::Snapshot::from_model(
        1,
        &index_for("team", &[&a.url()], "sk-one").snapshot_for("team", &[]),
    );
    let (replies_tx, mut replies) = mpsc::channel(4);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::discovery_server::DiscoveryServer::new(Scripted {
                good,
                replies: replies_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let proxy = proxy_for(addr, "team").await;

    let first = replies.recv().await.unwrap();
    assert!(matches!(
        first.message,
        Some(pb::proxy_message::Message::Ack(pb::Ack { version: 1 }))
    ));
    let second = replies.recv().await.unwrap();
    match second.message {
        Some(pb::proxy_message::Message::Nack(n)) => {
            assert_eq!(n.version, 2);
            assert!(
                n.error.contains("pools[0].backends[0].endpoint"),
                "{}",
                n.error
            );
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    let r = chat(&format!("http://{}", proxy.addr), &[]).await.unwrap();
    assert_eq!(r.status, 200, "the last good snapshot keeps serving");
    assert_eq!(a.received_keys(), ["sk-one"]);
    server.abort();
}

#[tokio::test]
async fn evacuate_primary_toggles_through_the_controller() {
    use keyway_api::spec::{Mode, Role};
    let primary = MockUpstream::start("primary").await.unwrap();
    let secondary = MockUpstream::start("secondary").await.unwrap();
    let failover = |evacuate: bool| {
        move |spec: &mut LoadBalancerPoolSpec| {
            spec.mode = Mode::Failover;
            spec.evacuate_primary = evacuate;
            spec.backends[0].role = Some(Role::Primary);
            spec.backends[1].role = Some(Role::Secondary);
        }
    };
    let urls = [primary.url(), secondary.url()];
    let eps: Vec<&str> = urls.iter().map(String::as_str).collect();
    let ctl = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        index_with("team", &eps, "sk", failover(false)),
    )
    .await;
    let proxy = proxy_for(ctl.addr, "team").await;
    let url = format!("http://{}", proxy.addr);
    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;
    let served =
        |r: keyway_testkit::client::Reply| r.header("x-mock-upstream").unwrap_or("").to_string();
    assert_eq!(served(chat(&url, &[]).await.unwrap()), "primary");

    ctl.index
        .send_replace(Arc::new(index_with("team", &eps, "sk", failover(true))));
    eventually(Duration::from_secs(5), "evacuated", || async {
        served(chat(&url, &[]).await.unwrap()) == "secondary"
    })
    .await;
    ctl.index
        .send_replace(Arc::new(index_with("team", &eps, "sk", failover(false))));
    eventually(Duration::from_secs(5), "back on the primary", || async {
        served(chat(&url, &[]).await.unwrap()) == "primary"
    })
    .await;
    ctl.stop().await;
}

/// Tokens → namespaces, as a TokenReview would answer.
struct FakeTokens;

impl keyway_controller::auth::Authenticate for FakeTokens {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<keyway_controller::auth::Identity, tonic::Status>>
    {
        Box::pin(async move {
            match token {
                Some(t) if t.starts_with("token-of-") => Ok(keyway_controller::auth::Identity {
                    namespace: Some(t.trim_start_matches("token-of-").to_owned()),
                    user: format!("system:serviceaccount:{t}:proxy"),
                }),
                _ => Err(tonic::Status::unauthenticated("no valid token")),
            }
        })
    }
}

/// A raw client's Hello, with `token` (if any) as its bearer; returns the stream's status code.
async fn hello_as(addr: SocketAddr, token: Option<&str>, namespace: &str) -> tonic::Code {
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(pb::Hello {
            proxy_id: "raw".into(),
            namespace: namespace.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match client.stream(req).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn tokens_decide_the_namespace_and_grants_decide_what_else_is_sent() {
    let c_upstream = MockUpstream::start("c").await.unwrap();
    // team-a keeps its pool to itself; team-c grants its pool to team-b.
    let mut a = index_for("team-a", &[&c_upstream.url()], "sk-a-private");
    let c = index_with("team-c", &[&c_upstream.url()], "sk-c-shared", |spec| {
        spec.allowed_proxy_namespaces = vec!["team-b".into()];
    });
    a.namespaces.extend(c.namespaces);
    a.grants.extend(c.grants);
    let ctl = Controller::start_with("127.0.0.1:0".parse().unwrap(), a, Arc::new(FakeTokens)).await;

    assert_eq!(
        hello_as(ctl.addr, None, "team-b").await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        hello_as(ctl.addr, Some("bogus"), "team-b").await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        hello_as(ctl.addr, Some("token-of-team-a"), "team-b").await,
        tonic::Code::PermissionDenied,
        "a proxy of team-a cannot claim team-b"
    );
    assert_eq!(ctl.proxies.count(), 0);

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-of-team-b\n").unwrap();
    let proxy = keyway_proxy::start(
        support::settings(Source::Controller(DiscoverySettings {
            controller_url: format!("http://{}", ctl.addr),
            proxy_id: "b-proxy".into(),
            namespace: "team-b".into(),
            namespaces: vec!["team-a".into(), "team-c".into()],
            // Granted pools are served only when named.
            pools: vec!["team-a/llm".into(), "team-c/llm".into()],
            report_interval: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            token_file: Some(token),
            controller_ca: None,
            controller_ca_pem: None,
            controller_server_name: None,
        })),
        prometheus::Registry::new(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;
    let router = proxy.dataplane.router();
    let pools: Vec<String> = router
        .pools
        .iter()
        .map(|p| p.model.id.to_string())
        .collect();
    assert_eq!(pools, ["team-c/llm"], "team-a asked for but not granted");
    assert_eq!(
        chat(&format!("http://{}", proxy.addr), &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(c_upstream.received_keys(), ["sk-c-shared"]);
    ctl.stop().await;
}

#[tokio::test]
async fn a_proxy_moves_to_the_next_listed_controller_when_one_is_down() {
    let a = MockUpstream::start("a").await.unwrap();
    let ctl = Controller::start(
        "127.0.0.1:0".parse().unwrap(),
        index_for("team", &[&a.url()], "sk-one"),
    )
    .await;
    let dead = format!("http://127.0.0.1:{}", keyway_testkit::free_port());
    let proxy = proxy_for_url(&format!("{dead},http://{}", ctl.addr), "team").await;
    eventually(
        Duration::from_secs(5),
        "loaded from the second controller",
        || async { proxy.dataplane.is_loaded() },
    )
    .await;
    assert_eq!(
        chat(&format!("http://{}", proxy.addr), &[])
            .await
            .unwrap()
            .status,
        200
    );
    ctl.stop().await;
}

/// Accepts any `tok-*` bearer for namespace `team` and records every token presented.
#[derive(Clone, Default)]
struct RecordingTokens(Arc<std::sync::Mutex<Vec<String>>>);

impl RecordingTokens {
    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl keyway_controller::auth::Authenticate for RecordingTokens {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<keyway_controller::auth::Identity, tonic::Status>>
    {
        Box::pin(async move {
            self.0
                .lock()
                .unwrap()
                .push(token.unwrap_or("<none>").to_owned());
            match token {
                Some(t) if t.starts_with("tok-") => Ok(keyway_controller::auth::Identity {
                    namespace: Some("team".to_owned()),
                    user: "system:serviceaccount:team:proxy".to_owned(),
                }),
                _ => Err(tonic::Status::unauthenticated("no valid token")),
            }
        })
    }
}

/// Projected ServiceAccount tokens rotate on disk: the proxy re-reads its token file for every
/// connection, so a reconnect presents the token written last, not the one read at start.
#[tokio::test]
async fn the_token_file_is_read_again_on_every_reconnect() {
    let a = MockUpstream::start("a").await.unwrap();
    let tokens = RecordingTokens::default();
    let ctl = Controller::start_with(
        "127.0.0.1:0".parse().unwrap(),
        index_for("team", &[&a.url()], "sk-one"),
        Arc::new(tokens.clone()),
    )
    .await;
    let addr = ctl.addr;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-first\n").unwrap();
    let proxy = keyway_proxy::start(
        support::settings(Source::Controller(DiscoverySettings {
            controller_url: format!("http://{addr}"),
            proxy_id: "rotating".into(),
            namespace: "team".into(),
            namespaces: vec![],
            pools: vec![],
            report_interval: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            token_file: Some(token.clone()),
            controller_ca: None,
            controller_ca_pem: None,
            controller_server_name: None,
        })),
        prometheus::Registry::new(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "proxy loaded", || async {
        proxy.dataplane.is_loaded()
    })
    .await;
    assert_eq!(tokens.seen(), ["tok-first"]);

    // The kubelet rotates the token (a new file renamed over the old one), then the stream
    // ends (the controller restarts on the same address, with another config).
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, "tok-second\n").unwrap();
    std::fs::rename(&tmp, &token).unwrap();
    ctl.stop().await;
    let b = MockUpstream::start("b").await.unwrap();
    let ctl = Controller::start_with(
        addr,
        index_for("team", &[&b.url()], "sk-two"),
        Arc::new(tokens.clone()),
    )
    .await;
    let url = format!("http://{}", proxy.addr);
    eventually(
        Duration::from_secs(10),
        "resynced after reconnect",
        || async { chat(&url, &[]).await.is_ok_and(|r| r.status == 200) && b.request_count() > 0 },
    )
    .await;
    let seen = tokens.seen();
    assert_eq!(seen.first().map(String::as_str), Some("tok-first"));
    assert!(
        seen[1..].iter().all(|t| t == "tok-second") && seen.len() >= 2,
        "every connection after the rotation presents the new token: {seen:?}"
    );
    ctl.stop().await;
}
