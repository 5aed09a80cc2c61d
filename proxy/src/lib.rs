//! keyway-proxy: the data plane. One request walks [`http`]; one config change walks
//! [`dataplane`]; `docs/architecture.md` has the map and both walks.
//!
//! - [`http`]: the traffic port from accept to answer; `http::forward` is the request's
//!   pipeline of stages (admit, read/route, place, key, backend, inject, send, classify,
//!   respond).
//! - [`dataplane`]: where applying a config meets serving: the swap holder, compilation,
//!   routing, pools with backend choice and placement, the read-only view of live state.
//! - [`balance`], [`keys`], [`health`], [`multicluster`], [`affinity`], [`usage`], [`hash`]:
//!   what the two paths use.
//! - [`config`]: the standalone file source; [`discovery`]: the controller source.
//! - [`admin`]: health, readiness, metrics, status, file-mode writes.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access;
pub mod admin;
pub mod affinity;
pub mod balance;
pub mod clock;
pub mod cluster_state;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod hash;
pub mod health;
pub mod http;
pub mod import;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod multicluster;
pub mod quickstart;
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
// Built once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// The quick start's manifests built from `KEYWAY_*_KEYS` (no file to edit).
    QuickStart(Snapshot),
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
    /// Source CIDRs, client tokens, the admin token, access logging.
    pub access: access::AccessSettings,
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
    // One TLS config for requests, active checks and key re-probes (`--upstream-ca`).
    dataplane.set_upstream_tls(tls::upstream_config(
        settings.forwarder.upstream_ca.as_deref(),
    )?);
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
        Source::QuickStart(snapshot) => {
            tx.send_replace(Some(Arc::new(snapshot.clone())));
            "env"
        }
        Source::Controller(d) => {
            dataplane.set_home_namespace(&d.namespace);
            dataplane.update_controller_sync(|_| {});
            background.push(tokio::spawn(discovery::run(
                d.clone(),
                tx.clone(),
                dataplane.clone(),
            )));
            "controller"
        }
    };
    // Apply the first snapshot before serving, so file mode is ready immediately.
    let first = tx.borrow().clone();
    if let Some(s) = &first {
        dataplane::apply_logged(&dataplane, None, s.clone(), source_name);
    }
    background.push(tokio::spawn(dataplane::apply_snapshots(
        rx,
        dataplane.clone(),
        first,
        source_name,
    )));
    background.push(tokio::spawn(reprobe::run(dataplane.clone())));
    background.push(tokio::spawn(dataplane::history::run(dataplane.clone())));
    background.push(tokio::spawn(cluster_state::run(dataplane.clone())));
    let client_tokens = match &settings.access.client_tokens_file {
        Some(path) => {
            let tokens = access::ClientTokens::load(path)
                .map_err(|e| anyhow::anyhow!("--client-tokens-file: {e}"))?;
            background.push(tokio::spawn(tokens.clone().watch(Duration::from_secs(1))));
            Some(tokens)
        }
        None => None,
    };

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let admin_listener = bind(settings.admin_listen).await?;
    let admin_addr = admin_listener.local_addr().map_err(anyhow::Error::from)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
    let limit_state = http::server::LimitState::new(&settings.limits, Some(&registry))
        .map_err(anyhow::Error::from)?;
    let acceptor = match &settings.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert, key,
        )?)),
        None => None,
    };
    let gate = Arc::new(http::gate::TrafficGate {
        loopback_only: settings.listen.ip().is_loopback(),
        allowed: settings.access.allowed_sources.clone(),
        tokens: client_tokens,
        sample: settings.access.access_log_sample,
        dataplane: dataplane.clone(),
    });
    let (addr, traffic_task) = if settings.traffic_threads == 0 {
        let traffic = bind(settings.listen).await?;
        let addr = traffic.local_addr().map_err(anyhow::Error::from)?;
        let forwarder = Arc::new(Forwarder::new(
            dataplane.clone(),
            settings.forwarder.clone(),
        )?);
        let task = tokio::spawn(http::gate::serve_traffic(
            traffic,
            acceptor,
            forwarder,
            gate,
            shutdown_rx.clone(),
            settings.drain_timeout,
            limit_state,
        ));
        (addr, task)
    } else {
        traffic_threads::start(
            &settings,
            &dataplane,
            acceptor,
            gate,
            shutdown_rx.clone(),
            limit_state,
        )
        .await?
    };
    let mode = match &settings.source {
        Source::File { path, .. } => admin::Mode::File(path.clone()),
        Source::Controller(_) => admin::Mode::Controller,
        Source::QuickStart(_) => admin::Mode::QuickStart,
        Source::Static(_) => admin::Mode::Static,
    };
    let admin = admin::Admin {
        dataplane: dataplane.clone(),
        registry,
        source: source_name,
        mode,
        // An exposed admin port guards its reads too when a token is configured (they name
        // pools, backends and key ids).
        protect_reads: !admin_addr.ip().is_loopback(),
        token: settings.access.admin_token.clone().map(Arc::new),
        allowed_sources: settings.access.admin_allowed_sources.clone(),
        tx: tx.clone(),
        edits: Default::default(),
    };
    let admin_task = tokio::spawn(http::server::serve(
        admin_listener,
        None,
        move |req, remote| {
            let a = admin.clone();
            async move { a.handle(req, remote).await }
        },
        admin_shutdown_rx,
        Duration::from_secs(1),
        http::server::LimitState::new(&http::server::Limits::admin(), None)
            .map_err(anyhow::Error::from)?,
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
