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
use tokio::task::JoinHandle;

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
    /// The controller's self-managed certificates (Secret, names): needed by the webhook and
    /// by [`GrpcTls::SelfManaged`].
    pub certs: Option<crate::webhook::CertSettings>,
}

/// How the discovery stream is secured (`--grpc-tls-*`, `--grpc-plaintext`, `--proxy-auth`,
/// `--token-audience`) and bounded (`--stream-max-lifetime`, `--max-streams-per-identity`).
#[derive(Clone, Debug)]
pub struct GrpcSecurity {
    pub tls: GrpcTls,
    pub proxy_auth: crate::auth::ProxyAuth,
    pub limits: crate::grpc::StreamLimits,
}

/// Where the gRPC listener's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcTls {
    /// The controller's own CA and serving certificate (the default), as for the webhook.
    SelfManaged,
    /// Certificate chain and private key (PEM files).
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    /// `--grpc-plaintext`: keys travel in clear (development only; warned).
    Plaintext,
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
        GrpcTls::Files { cert, key } => Some(crate::grpc::server_tls(cert, key)?),
        GrpcTls::SelfManaged | GrpcTls::Plaintext => None,
    };
    let self_managed = settings.grpc_security.tls == GrpcTls::SelfManaged;
    let grpc_server = if self_managed {
        // TLS is done before tonic sees the connection (crate::grpc_tls).
        tonic::transport::Server::builder()
    } else {
        crate::grpc::server_builder(grpc_tls)?
    };
    if let crate::auth::ProxyAuth::TokenReview { audience: None } =
        &settings.grpc_security.proxy_auth
    {
        tracing::warn!(
            "proxy tokens of any audience are accepted (--token-audience is empty): any pod's \
             default ServiceAccount token, which every pod mounts and may send elsewhere, \
             authenticates as a proxy of its namespace; set --token-audience"
        );
    }
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
    // Every task here is critical: if one ends, the process exits non-zero (see
    // `supervise`), so the pod restarts instead of limping on without it.
    let mut critical: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    for (i, r) in reflectors.drain(..).enumerate() {
        critical.push((
            [
                "a watch (LoadBalancerPools) ended",
                "a watch (ApiKeyPools) ended",
                "a watch (Secrets) ended",
            ]
            .get(i)
            .copied()
            .unwrap_or("a watch ended"),
            r,
        ));
    }
    critical.push((
        "the indexer ended",
        tokio::spawn(crate::reflectors::run_indexer(
            stores.clone(),
            changed,
            index_tx,
            synced_tx,
            metrics.clone(),
        )),
    ));
    // What the other replicas publish about their proxies (none without leader election:
    // a single replica knows every proxy itself).
    let identity = settings
        .leader_election
        .as_ref()
        .map_or_else(|| "single".to_owned(), |l| l.identity.clone());
    let shared = crate::replicas::Shared::new(identity.clone());
    critical.push((
        "the status writer ended",
        tokio::spawn(crate::status::run(
            client.clone(),
            stores,
            index_rx.clone(),
            proxies.clone(),
            metrics.clone(),
            settings.status_counter_interval,
            leader_rx.clone(),
            shared.clone(),
        )),
    ));
    // Quota: the leader computes grants; every replica forwards the newest table it knows.
    let (own_table_tx, own_table_rx) = watch::channel(None);
    let (table_tx, table_rx) = watch::channel(None);
    critical.push((
        "the quota allocator ended",
        tokio::spawn(crate::allocator::run(
            identity.clone(),
            index_rx.clone(),
            proxies.clone(),
            shared.clone(),
            leader_rx.clone(),
            own_table_tx,
        )),
    ));
    critical.push((
        "the grant table follower ended",
        tokio::spawn(follow_tables(
            own_table_rx.clone(),
            shared.clone(),
            table_tx,
        )),
    ));
    if let Some(lease) = &settings.leader_election {
        critical.push((
            "the replica report watch ended",
            tokio::spawn(crate::replicas::watch_reports(
                client.clone(),
                lease.namespace.clone(),
                shared.clone(),
            )),
        ));
        critical.push((
            "the replica report writer ended",
            tokio::spawn(crate::replicas::publish(
                crate::replicas::Publisher {
                    client: client.clone(),
                    namespace: lease.namespace.clone(),
                    identity: identity.clone(),
                    proxies: proxies.clone(),
                    index: index_rx.clone(),
                    grants: own_table_rx,
                    shared: shared.clone(),
                    leader: leader_rx.clone(),
                    metrics: metrics.clone(),
                },
                drain_rx.clone(),
            )),
        ));
    }
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
    // Every replica keeps the certificates, and they need none of the caches: start now.
    let mut certs = if settings.webhook.is_some() || self_managed {
        let cert_settings = settings
            .certs
            .clone()
            .context("the webhook and self-managed gRPC TLS need certificate settings")?;
        Some(crate::webhook::start_certs(
            cert_settings,
            client.clone(),
            &registry,
            drain_rx.clone(),
        )?)
    } else {
        None
    };
    let mut webhook = match (settings.webhook.clone(), &certs) {
        (Some(w), Some(c)) => {
            let w = crate::webhook::start(w, c, &client, drain_rx.clone()).await?;
            tracing::info!(addr = %w.addr, "sidecar injection webhook listening");
            Some(w)
        }
        _ => None,
    };
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        registry,
        ready_rx,
        drain_rx.clone(),
        crate::admin::StatusSource {
            identity: identity.clone(),
            leader: leader_rx.clone(),
            leader_election: settings.leader_election.is_some(),
            namespaces: settings.namespaces.clone(),
            index: index_rx.clone(),
            proxies: proxies.clone(),
        },
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
    let limits = settings.grpc_security.limits.clone();
    let service = DiscoveryService::new(index_rx, proxies, metrics, drain_rx.clone())
        .with_authenticator(crate::auth::authenticator(
            &settings.grpc_security.proxy_auth,
            client.clone(),
            limits.max_lifetime,
        ))
        .with_limits(limits)
        .with_grants(table_rx);
    let mut grpc_drain = drain_rx.clone();
    let grpc_draining = drain_rx.clone();
    let router = grpc_server
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .tcp_nodelay(true)
        .add_service(service.into_server());
    let grpc_shutdown = async move {
        let _ = grpc_drain.wait_for(|d| *d).await.map(|_| ());
    };
    let log_failure = move |r: Result<(), tonic::transport::Error>| {
        if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server failed");
        }
        // Ending before the drain is a failure too: supervised below.
        if !*grpc_draining.borrow() {
            tracing::error!("the gRPC server stopped");
        }
    };
    let grpc = match certs.as_ref().filter(|_| self_managed) {
        Some(c) => {
            // Proxies are refused a handshake until the first certificate is loaded.
            while !c.serving.is_loaded() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let config = crate::grpc_tls::server_config(c.serving.clone())?;
            tracing::info!("the gRPC listener serves TLS with the controller's own certificate");
            tokio::spawn(
                router
                    .serve_with_incoming_shutdown(
                        crate::grpc_tls::incoming(grpc_listener, config),
                        grpc_shutdown,
                    )
                    .map(log_failure),
            )
        }
        None => tokio::spawn(
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    grpc_shutdown,
                )
                .map(log_failure),
        ),
    };
    critical.push(("the gRPC server ended", grpc));
    critical.push(("the admin server ended", admin));
    let _ = ready_tx.send(true);
    tracing::info!(%grpc_addr, admin = %settings.admin_listen, "keyway-controller ready");

    let tasks_ended = supervise(&mut critical);
    let lease_ended = async {
        match lease.as_mut() {
            Some(task) => drop(task.await),
            None => std::future::pending().await,
        }
    };
    let webhook_ended = async {
        match (webhook.as_mut(), certs.as_mut()) {
            (Some(w), Some(c)) => tokio::select! {
                _ = &mut w.server => "the webhook server ended",
                _ = &mut c.keeper => "the certificate keeper ended",
            },
            (None, Some(c)) => {
                let _ = (&mut c.keeper).await;
                "the certificate keeper ended"
            }
            _ => std::future::pending().await,
        }
    };
    let mut lease_done = false;
    let failure = tokio::select! {
        _ = shutdown => None,
        what = tasks_ended => Some(what),
        _ = lease_ended => {
            lease_done = true;
            Some("the leader election ended")
        }
        what = webhook_ended => Some(what),
    };
    if let Some(what) = failure {
        tracing::error!("{what}; not ready, draining and exiting");
    }
    let _ = ready_tx.send(false);
    let _ = drain_tx.send(true);
    // The servers stop at the drain; the other tasks are ended.
    for (what, task) in critical {
        if what == "the gRPC server ended" || what == "the admin server ended" {
            let _ = task.await;
        } else {
            task.abort();
        }
    }
    if let Some(w) = webhook {
        w.server.abort();
    }
    if let Some(c) = certs {
        c.keeper.abort();
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

/// Completes with the name of the first of `tasks` to end (return or panic). Each task is
/// critical: the caller stops being ready and exits.
pub async fn supervise(tasks: &mut [(&'static str, JoinHandle<()>)]) -> &'static str {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (_, i, _) = futures::future::select_all(tasks.iter_mut().map(|(_, t)| t)).await;
    tasks[i].0
}

/// Publishes on `out` the newest grant table known: this replica's own while it leads, else
/// the newest another replica published. A previous leader's table keeps being forwarded
/// (and renewed) until the new leader publishes its own.
async fn follow_tables(
    mut own: watch::Receiver<Option<Arc<crate::allocator::GrantTable>>>,
    shared: crate::replicas::Shared,
    out: watch::Sender<Option<Arc<crate::allocator::GrantTable>>>,
) {
    let mut others = shared.subscribe();
    loop {
        let mine = own.borrow_and_update().clone();
        let theirs = shared.newest_table();
        let newest = match (mine, theirs) {
            (Some(a), Some(b)) => Some(if a.version >= b.version { a } else { b }),
            (a, b) => a.or(b),
        };
        let differs = match (&*out.borrow(), &newest) {
            (Some(a), Some(b)) => a.version != b.version || a.entries != b.entries,
            (None, None) => false,
            _ => true,
        };
        if differs {
            out.send_replace(newest);
        }
        tokio::select! {
            r = own.changed() => if r.is_err() { return },
            r = others.changed() => if r.is_err() { return },
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_critical_task_to_end_or_panic_is_named() {
        let forever = || tokio::spawn(std::future::pending::<()>());
        let mut tasks = vec![
            ("the indexer ended", forever()),
            (
                "the gRPC server ended",
                tokio::spawn(async { tokio::time::sleep(Duration::from_millis(20)).await }),
            ),
            ("a watch ended", forever()),
        ];
        assert_eq!(supervise(&mut tasks).await, "the gRPC server ended");

        let mut tasks = vec![
            ("the indexer ended", forever()),
            (
                "a watch ended",
                tokio::spawn(async { panic!("a watch panicked") }),
            ),
        ];
        assert_eq!(supervise(&mut tasks).await, "a watch ended");
        for (_, t) in tasks {
            t.abort();
        }
    }
}
