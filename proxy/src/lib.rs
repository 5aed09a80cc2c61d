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
mod traffic_threads;
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
    /// Traffic threads, each with its own event loop, listener (`SO_REUSEPORT`) and upstream
    /// connection pool, like nginx workers: a request never changes threads. 0 serves traffic
    /// on the caller's runtime (tests, embedding).
    pub traffic_threads: usize,
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
    let admin_listener = bind(settings.admin_listen).await?;
    let admin_addr = admin_listener.local_addr().map_err(anyhow::Error::from)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let acceptor = match &settings.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let (addr, traffic_task) = if settings.traffic_threads == 0 {
        let traffic = bind(settings.listen).await?;
        let addr = traffic.local_addr().map_err(anyhow::Error::from)?;
        let forwarder = Arc::new(Forwarder::new(
            dataplane.clone(),
            settings.forwarder.clone(),
        )?);
        let task = tokio::spawn(serve_traffic(
            traffic,
            acceptor,
            forwarder,
            shutdown_rx.clone(),
            settings.drain_timeout,
        ));
        (addr, task)
    } else {
        traffic_threads::start(&settings, &dataplane, acceptor, shutdown_rx.clone()).await?
    };
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
        shutdown_rx,
        Duration::from_secs(1),
    ));
    tracing::info!(%addr, %admin_addr, source = source_name, "keyway-proxy serving");
    Ok(Running {
        addr,
        admin_addr,
        dataplane,
        shutdown,
        servers: vec![traffic_task, admin_task],
        background,
    })
}

/// The traffic port's accept loop on the current runtime, with one forwarder.
async fn serve_traffic(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    forwarder: Arc<Forwarder>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let is_tls = acceptor.is_some();
    http::server::serve(
        listener,
        acceptor,
        move |req, remote| {
            let f = forwarder.clone();
            async move { f.serve(req, remote, is_tls).await }
        },
        shutdown,
        drain,
    )
    .await
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
    /// Stops accepting and lets in-flight requests finish (up to the drain timeout).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Serves until `signal` completes, then drains and returns. A background task (config
    /// source) that ends on its own is a bug: it stops the proxy with an error, so the process
    /// exits non-zero and gets restarted instead of serving a config that no longer updates.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let servers = futures::future::join_all(std::mem::take(&mut self.servers));
        let background = futures::future::select_all(std::mem::take(&mut self.background));
        let failure = tokio::select! {
            _ = signal => None,
            (result, index, _) = background => Some(match result {
                Ok(()) => anyhow::anyhow!("background task {index} ended unexpectedly"),
                Err(e) => anyhow::anyhow!("background task {index} failed: {e}"),
            }),
        };
        self.begin_shutdown();
        for r in servers.await {
            r?;
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
