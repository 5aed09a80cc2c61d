//! keyway-proxy: the data plane.
//!
//! - [`http`]: the traffic port; `http::forward` is where a request is routed, a backend and a
//!   key are chosen, and the request is rewritten and sent upstream.
//! - [`dataplane`]: the compiled config the request path reads (routing, cursors, counters).
//! - [`config`]: the standalone file source; [`discovery`]: the controller source.
//! - [`admin`]: health, readiness, metrics, status.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod affinity;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod health;
pub mod http;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod placement;
pub mod reprobe;
pub mod tls;
pub mod usage;

use crate::config::{SnapshotRx, SnapshotTx};
use crate::dataplane::Dataplane;
use crate::http::{Forwarder, ForwarderSettings};
use keyway_api::model::Snapshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A manifest file, re-read every `reload_interval`.
    File {
        path: PathBuf,
        reload_interval: Duration,
    },
    /// The controller's discovery stream.
    Controller(discovery::DiscoverySettings),
    /// A fixed snapshot (demos and tests).
    Static(Snapshot),
}

/// Everything `start` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub source: Source,
    pub forwarder: ForwarderSettings,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// Serve the traffic port over TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds on the traffic port (connections, header size and time, body size).
    pub limits: http::server::Limits,
    /// After a shutdown signal, how long `/readyz` fails while the traffic port still accepts,
    /// so load balancers stop routing here before the listener closes.
    pub shutdown_delay: Duration,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is invalid (exit code 64).
    #[error("invalid config:\n{0}")]
    InvalidConfig(#[from] config::file::LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A started proxy: its bound addresses and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dataplane: Arc<Dataplane>,
    shutdown: watch::Sender<bool>,
    /// The admin port closes only after the traffic port drained, so `/readyz` can say
    /// "shutting down" meanwhile.
    admin_shutdown: watch::Sender<bool>,
    shutdown_delay: Duration,
    /// Traffic server first, then admin.
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// Binds both ports, loads the first config (file mode fails fast on an invalid file) and
/// starts serving.
pub async fn start(
    settings: Settings,
    registry: prometheus::Registry,
) -> Result<Running, StartError> {
    let metrics = metrics::Metrics::register(&registry).map_err(anyhow::Error::from)?;
    let dataplane = Arc::new(Dataplane::new(metrics.clone()));
    let (tx, rx): (SnapshotTx, SnapshotRx) = watch::channel(None);
    let mut background = Vec::new();

    let source_name = match &settings.source {
        Source::File {
            path,
            reload_interval,
        } => {
            let (snapshot, bytes) = config::file::load(path)?;
            tx.send_replace(Some(Arc::new(snapshot)));
            background.push(tokio::spawn(config::file::watch(
                path.clone(),
                bytes,
                *reload_interval,
                tx.clone(),
                metrics.clone(),
            )));
            "file"
        }
        Source::Static(snapshot) => {
            tx.send_replace(Some(Arc::new(snapshot.clone())));
            "static"
        }
        Source::Controller(d) => {
            background.push(tokio::spawn(discovery::run(
                d.clone(),
                tx.clone(),
                dataplane.clone(),
            )));
            "controller"
        }
    };
    background.push(tokio::spawn(apply_snapshots(rx, dataplane.clone())));
    background.push(tokio::spawn(reprobe::run(dataplane.clone())));
    // Apply the first snapshot before serving, so file mode is ready immediately.
    if let Some(s) = tx.borrow().clone() {
        dataplane.apply(s);
    }

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let traffic = bind(settings.listen).await?;
    let admin_listener = bind(settings.admin_listen).await?;
    let addr = traffic.local_addr().map_err(anyhow::Error::from)?;
    let admin_addr = admin_listener.local_addr().map_err(anyhow::Error::from)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
    let limit_metrics = limit_metrics(&registry)?;
    let forwarder = Arc::new(Forwarder::new(
        dataplane.clone(),
        settings.forwarder.clone(),
    )?);
    let acceptor = match &settings.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let is_tls = acceptor.is_some();
    let traffic_task = tokio::spawn(http::server::serve(
        traffic,
        acceptor,
        move |req, remote| {
            let f = forwarder.clone();
            async move { f.serve(req, remote, is_tls).await }
        },
        shutdown_rx,
        settings.drain_timeout,
        settings.limits.clone(),
        limit_metrics,
    ));
    let admin = admin::Admin {
        dataplane: dataplane.clone(),
        registry,
        source: source_name,
    };
    let admin_task = tokio::spawn(http::server::serve(
        admin_listener,
        None,
        move |req, _remote| {
            let a = admin.clone();
            async move { a.handle(req).await }
        },
        admin_shutdown_rx,
        Duration::from_secs(1),
        http::server::Limits::admin(),
        http::server::LimitMetrics::default(),
    ));
    tracing::info!(%addr, %admin_addr, source = source_name, "keyway-proxy serving");
    Ok(Running {
        addr,
        admin_addr,
        dataplane,
        shutdown,
        admin_shutdown,
        shutdown_delay: settings.shutdown_delay,
        servers: vec![traffic_task, admin_task],
        background,
    })
}

fn limit_metrics(registry: &prometheus::Registry) -> anyhow::Result<http::server::LimitMetrics> {
    let rejected = prometheus::IntCounter::new(
        "keyway_proxy_connections_rejected_total",
        "Client connections refused because --max-connections were open",
    )?;
    let open = prometheus::IntGauge::new(
        "keyway_proxy_open_connections",
        "Client connections open on the traffic port",
    )?;
    registry.register(Box::new(rejected.clone()))?;
    registry.register(Box::new(open.clone()))?;
    Ok(http::server::LimitMetrics {
        connections_rejected: Some(rejected),
        open_connections: Some(open),
    })
}

async fn apply_snapshots(mut rx: SnapshotRx, dataplane: Arc<Dataplane>) {
    while rx.changed().await.is_ok() {
        let snapshot = rx.borrow_and_update().clone();
        if let Some(s) = snapshot {
            dataplane.apply(s);
        }
    }
}

// === impl Running ===

impl Running {
    /// Stops accepting and lets in-flight requests finish (up to the drain timeout); the admin
    /// port closes too.
    pub fn begin_shutdown(&self) {
        self.dataplane.set_draining();
        let _ = self.shutdown.send(true);
        let _ = self.admin_shutdown.send(true);
    }

    /// Serves until `signal` completes, then drains and returns. A background task (config
    /// source) that ends on its own is a bug: it stops the proxy with an error, so the process
    /// exits non-zero and gets restarted instead of serving a config that no longer updates.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut servers = std::mem::take(&mut self.servers).into_iter();
        let (traffic, admin) = (servers.next(), servers.next());
        let background = futures::future::select_all(std::mem::take(&mut self.background));
        let failure = tokio::select! {
            _ = signal => None,
            (result, index, _) = background => Some(match result {
                Ok(()) => anyhow::anyhow!("background task {index} ended unexpectedly"),
                Err(e) => anyhow::anyhow!("background task {index} failed: {e}"),
            }),
        };
        // Shutdown order: /readyz fails first; after the shutdown delay the traffic listener
        // closes and in-flight requests (streams included) drain; then the admin port closes.
        self.dataplane.set_draining();
        tracing::info!(delay = ?self.shutdown_delay, "shutting down: /readyz now fails");
        if failure.is_none() && !self.shutdown_delay.is_zero() {
            tokio::time::sleep(self.shutdown_delay).await;
        }
        let _ = self.shutdown.send(true);
        if let Some(t) = traffic {
            t.await?;
        }
        tracing::info!("traffic drained; stopping");
        let _ = self.admin_shutdown.send(true);
        if let Some(a) = admin {
            a.await?;
        }
        failure.map_or(Ok(()), Err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.background.iter().chain(self.servers.iter()) {
            t.abort();
        }
    }
}
