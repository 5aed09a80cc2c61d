//! The live data plane: where applying a config meets serving requests.
//!
//! A config change walks one way: a source publishes a snapshot (`crate::config`,
//! `crate::discovery`), `apply` compiles it into a [`Router`] and [`Dataplane`] swaps it in.
//! A request reads the current [`Router`] without locks: [`Router::route`] finds its pool,
//! [`PoolState::place`] and [`PoolState::pick`] its backend.
//!
//! - here: [`Dataplane`], the swap holder, with readiness and the applied config version;
//! - `apply`: compiling a snapshot (counters, health checkers, key engines and affinity stores
//!   that outlive snapshots are kept in a registry) and the loop applying each new one;
//! - `changes`: what changed between two snapshots, logged by id;
//! - `route`: the compiled [`Router`] and which pool a request belongs to;
//! - `pool`: a pool ready to serve ([`PoolState`]): backend choice and the failover state
//!   machine; `placement`: where a request goes before balancing (multiCluster users,
//!   protocol sessions), beside it;
//! - `view`: the one read-only walk of live state that `/status`, the metrics refresh and the
//!   controller reports read ([`LiveView`]);
//! - `history`: the status page's recent history, sampled from that walk every few seconds
//!   into bounded rings ([`History`]).

mod apply;
mod changes;
pub mod history;
mod placement;
mod pool;
mod route;
#[cfg(test)]
mod tests;
mod view;

pub(crate) use apply::{apply_logged, apply_snapshots};
pub use changes::Changes;
pub use history::History;
pub use placement::{PlaceError, Placement};
pub use pool::{ActiveRole, BackendState, Counters, KeyPoolState, PoolState};
pub use route::Router;
pub use view::{BackendView, KeyPoolView, KeyView, LiveView, PoolView};

use crate::health;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use keyway_api::model;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Holds the current [`Router`] and the state that outlives any one snapshot: counters, and
/// backend health with its checker tasks.
pub struct Dataplane {
    current: ArcSwap<Router>,
    loaded: AtomicBool,
    /// Shutdown has begun: `/readyz` fails so load balancers stop sending new traffic.
    draining: AtomicBool,
    /// Snapshots applied from a config source so far (the config version).
    version: AtomicU64,
    registry: Mutex<apply::Registry>,
    metrics: Metrics,
    /// The upstream TLS config (`--upstream-ca`), set before the first snapshot; the
    /// webpki roots alone when never set.
    upstream_tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Active checks' and key re-probes' clients, from `upstream_tls`.
    health_clients: OnceLock<Option<health::HealthClients>>,
    /// Controller mode: the proxy's own namespace, whose pools win route ties over pools
    /// other namespaces grant it.
    home_namespace: OnceLock<String>,
    /// Requests, 429s and errors per key and backend over the last minutes.
    history: History,
    /// Controller mode: the last snapshot the controller pushed and the answer to it.
    sync: Mutex<Option<ControllerSync>>,
}

/// Controller mode: where this proxy stands with the controller, for the status page.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSync {
    /// A discovery stream is open.
    pub connected: bool,
    /// The controller's version of the last snapshot received (0: none yet).
    pub version: u64,
    /// It was applied and ACKed (false: NACKed, the previous config keeps serving).
    pub acked: bool,
    /// Why it was NACKed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// === impl Dataplane ===

impl Dataplane {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            current: ArcSwap::from_pointee(Router::default()),
            loaded: Default::default(),
            draining: Default::default(),
            version: Default::default(),
            registry: Default::default(),
            metrics,
            upstream_tls: OnceLock::new(),
            health_clients: OnceLock::new(),
            home_namespace: OnceLock::new(),
            history: History::default(),
            sync: Mutex::default(),
        }
    }

    /// The recent history the status page draws.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Controller mode: where this proxy stands with the controller; `None` in other modes.
    pub fn controller_sync(&self) -> Option<ControllerSync> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Controller mode: records a change of the stream or of the last answer.
    pub fn update_controller_sync(&self, f: impl FnOnce(&mut ControllerSync)) {
        let mut sync = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        f(sync.get_or_insert_with(ControllerSync::default));
    }

    /// The upstream TLS config as a shared client config, for clients the dataplane builds
    /// itself (the Redis affinity store over TLS): the same trust as every upstream.
    /// Shared, not copied; the webpki roots alone when none was set.
    pub fn upstream_trust(&self) -> Arc<rustls::ClientConfig> {
        match self.upstream_tls.get() {
            Some(tls) => tls.clone(),
            None => Arc::new(
                crate::tls::upstream_config(None)
                    .expect("the webpki roots make a valid client config"),
            ),
        }
    }

    /// The proxy's own namespace (controller mode): its pools win route ties against pools
    /// granted by other namespaces, so a granted `pathPrefix: /` cannot take its traffic.
    pub fn set_home_namespace(&self, namespace: &str) {
        let _ = self.home_namespace.set(namespace.to_owned());
    }

    /// The TLS config every upstream connection uses: requests, active checks, key
    /// re-probes. Takes effect only before the first snapshot is applied; false after.
    pub fn set_upstream_tls(&self, tls: rustls::ClientConfig) -> bool {
        self.upstream_tls.set(Arc::new(tls)).is_ok() && self.health_clients.get().is_none()
    }

    /// The upstream TLS config ([`Dataplane::set_upstream_tls`]).
    pub fn upstream_tls(&self) -> Option<&rustls::ClientConfig> {
        self.upstream_tls.get().map(|tls| &**tls)
    }

    /// The clients of active checks and key re-probes (`None` if they could not be built).
    pub fn health_clients(&self) -> Option<&health::HealthClients> {
        self.health_clients
            .get_or_init(|| {
                let tls = match self.upstream_tls.get() {
                    Some(tls) => (**tls).clone(),
                    None => crate::tls::upstream_config(None)
                        .inspect_err(|error| tracing::error!(%error, "cannot build the health-check client; active checks and key re-probes are off"))
                        .ok()?,
                };
                Some(health::HealthClients::new(tls))
            })
            .as_ref()
    }

    /// The router to use for one request.
    pub fn router(&self) -> Arc<Router> {
        self.current.load_full()
    }

    /// True once a snapshot has been applied.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Ready for new traffic: a snapshot is loaded and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.is_loaded() && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the proxy as shutting down (`/readyz` answers 503 from now on).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Snapshots applied from the config source so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The live state, read now.
    pub fn view(&self) -> LiveView {
        LiveView::at(self.router(), Instant::now())
    }

    /// Compiles and swaps in a snapshot. In-flight requests keep the router they started with.
    pub fn apply(&self, snapshot: Arc<model::Snapshot>) {
        let health_clients = self.health_clients();
        let router = {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            let mut router = reg.compile(
                snapshot,
                &self.metrics,
                health_clients,
                &self.upstream_trust(),
            );
            router.home_namespace = self.home_namespace.get().cloned();
            router
        };
        for p in &router.pools {
            self.metrics
                .backends
                .with_label_values(&[p.label.as_str()])
                .set(p.backends.len() as i64);
        }
        self.current.store(Arc::new(router));
        self.loaded.store(true, Ordering::Release);
    }
}
