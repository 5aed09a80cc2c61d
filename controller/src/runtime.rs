//! Wires the controller together and supervises its tasks: if any critical task ends, the
//! process exits non-zero instead of limping on (linkerd2 #15507).

use crate::grpc::DiscoveryService;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::proxies::Proxies;
use anyhow::Context;
use futures::FutureExt;
use keyway_api::spec::LoadBalancerPool;
use kube::api::ListParams;
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// What `run` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Watch these namespaces instead of the whole cluster (empty: all).
    pub namespaces: Vec<String>,
    /// Least time between two status writes that only change usage counters.
    pub status_counter_interval: std::time::Duration,
    /// TLS and authentication of the discovery stream.
    pub grpc_security: GrpcSecurity,
    /// Leader election: only the Lease holder writes status and events. `None`: this replica
    /// always writes (a single replica).
    pub leader_election: Option<crate::leader::LeaseSettings>,
    /// The sidecar-injection webhook (`--webhook-listen`); `None`: off.
    pub webhook: Option<crate::webhook::WebhookSettings>,
}

/// How the discovery stream is secured (`--grpc-tls-*`, `--proxy-auth`, `--token-audience`).
#[derive(Clone, Debug)]
pub struct GrpcSecurity {
    /// Certificate chain and private key (PEM files); `None`: plaintext.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub proxy_auth: crate::auth::ProxyAuth,
}

/// Runs until `shutdown` completes (then drains) or a critical task fails.
pub async fn run(
    settings: Settings,
    client: Client,
    registry: prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Read the TLS files first: a bad path fails the start, not the first proxy.
    let grpc_tls = match &settings.grpc_security.tls {
        Some((cert, key)) => Some(crate::grpc::server_tls(cert, key)?),
        None => None,
    };
    let grpc_server = crate::grpc::server_builder(grpc_tls)?;
    if settings.grpc_security.proxy_auth == crate::auth::ProxyAuth::None {
        tracing::warn!(
            "--proxy-auth none: proxies are not authenticated; any client that reaches the gRPC \
             port is served the namespace it claims, keys included"
        );
    }
    if settings.namespaces.is_empty() {
        check_crds(&client, None).await?;
    }
    for ns in &settings.namespaces {
        check_crds(&client, Some(ns)).await?;
    }
    let metrics = Metrics::register(&registry)?;
    let changed = Arc::new(Notify::new());
    let (stores, mut reflectors) =
        crate::reflectors::start(client.clone(), &settings.namespaces, changed.clone());
    let (index_tx, index_rx) = watch::channel(Arc::new(Index::default()));
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(settings.leader_election.is_none());
    metrics
        .leader
        .set(i64::from(settings.leader_election.is_none()));
    let proxies = Proxies::default();

    let indexer = tokio::spawn(crate::reflectors::run_indexer(
        stores.clone(),
        changed,
        index_tx,
        synced_tx,
        metrics.clone(),
    ));
    let status = tokio::spawn(crate::status::run(
        client.clone(),
        stores,
        index_rx.clone(),
        proxies.clone(),
        metrics.clone(),
        settings.status_counter_interval,
        leader_rx,
    ));
    // Critical like the others: without it no replica would write status.
    let mut lease = settings.leader_election.clone().map(|lease| {
        let store = crate::leader::KubeLease::new(client.clone(), &lease);
        tokio::spawn(crate::leader::run(
            store,
            lease,
            leader_tx.clone(),
            metrics.clone(),
            drain_rx.clone(),
        ))
    });

    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", settings.admin_listen))?;
    // Any replica serves the webhook, and it needs none of the caches: start it now.
    let mut webhook = match settings.webhook.clone() {
        Some(w) => {
            let w = crate::webhook::start(w, client.clone(), &registry, drain_rx.clone()).await?;
            tracing::info!(addr = %w.addr, "sidecar injection webhook listening");
            Some(w)
        }
        None => None,
    };
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        registry,
        ready_rx,
        drain_rx.clone(),
    ));

    // Proxies are only served once every cache has synced.
    synced_rx
        .wait_for(|s| *s)
        .await
        .context("the indexer stopped before the caches synced")?;
    let grpc_listener = TcpListener::bind(settings.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC port {}", settings.grpc_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let service =
        DiscoveryService::new(index_rx, proxies, metrics, drain_rx.clone()).with_authenticator(
            crate::auth::authenticator(&settings.grpc_security.proxy_auth, client.clone()),
        );
    let mut grpc_drain = drain_rx.clone();
    let grpc = tokio::spawn(
        grpc_server
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
            .tcp_nodelay(true)
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                async move {
                    let _ = grpc_drain.wait_for(|d| *d).await.map(|_| ());
                },
            )
            .map(|r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }),
    );
    let _ = ready_tx.send(true);
    tracing::info!(%grpc_addr, admin = %settings.admin_listen, "keyway-controller ready");

    let reflector_ended = futures::future::select_all(reflectors.iter_mut());
    let lease_ended = async {
        match lease.as_mut() {
            Some(task) => drop(task.await),
            None => std::future::pending().await,
        }
    };
    let webhook_ended = async {
        match webhook.as_mut() {
            Some(w) => tokio::select! {
                _ = &mut w.server => "the webhook server ended",
                _ = &mut w.certs => "the webhook certificate keeper ended",
            },
            None => std::future::pending().await,
        }
    };
    let mut lease_done = false;
    let failure = tokio::select! {
        _ = shutdown => None,
        _ = reflector_ended => Some("a watch ended"),
        _ = indexer => Some("the indexer ended"),
        _ = status => Some("the status writer ended"),
        _ = lease_ended => {
            lease_done = true;
            Some("the leader election ended")
        }
        what = webhook_ended => Some(what),
    };
    let _ = ready_tx.send(false);
    let _ = drain_tx.send(true);
    let _ = grpc.await;
    let _ = admin.await;
    if let Some(w) = webhook {
        w.server.abort();
        w.certs.abort();
    }
    // The election sees the drain: it stops leading and releases the Lease (bounded).
    if !lease_done && let Some(task) = lease {
        let _ = task.await;
    }
    drop(leader_tx);
    match failure {
        None => Ok(()),
        Some(what) => anyhow::bail!("{what} unexpectedly; exiting so the pod restarts"),
    }
}

/// Fails with a clear hint when the CRDs are not installed or not readable.
async fn check_crds(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api: Api<LoadBalancerPool> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the keyway.dev CRDs are not installed: run `kubectl apply -f crds/` (or install the Helm chart)"
        ),
        Err(e) => Err(anyhow::Error::from(e)
            .context("listing LoadBalancerPools (is the API server reachable and RBAC granted?)")),
    }
}
