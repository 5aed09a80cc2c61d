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
    /// Watch one namespace instead of the whole cluster.
    pub namespace: Option<String>,
    /// Least time between two status writes that only change usage counters.
    pub status_counter_interval: std::time::Duration,
}

/// Runs until `shutdown` completes (then drains) or a critical task fails.
pub async fn run(
    settings: Settings,
    client: Client,
    registry: prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    check_crds(&client, settings.namespace.as_deref()).await?;
    let metrics = Metrics::register(&registry)?;
    let changed = Arc::new(Notify::new());
    let (stores, mut reflectors) = crate::watch::start(
        client.clone(),
        settings.namespace.as_deref(),
        changed.clone(),
    );
    let (index_tx, index_rx) = watch::channel(Arc::new(Index::default()));
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let proxies = Proxies::default();

    let indexer = tokio::spawn(crate::watch::run_indexer(
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
    ));

    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", settings.admin_listen))?;
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
    let service = DiscoveryService::new(index_rx, proxies, metrics, drain_rx.clone());
    let mut grpc_drain = drain_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
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
    let failure = tokio::select! {
        _ = shutdown => None,
        _ = reflector_ended => Some("a watch ended"),
        _ = indexer => Some("the indexer ended"),
        _ = status => Some("the status writer ended"),
    };
    let _ = ready_tx.send(false);
    let _ = drain_tx.send(true);
    let _ = grpc.await;
    let _ = admin.await;
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
