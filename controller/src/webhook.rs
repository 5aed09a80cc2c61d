//! The sidecar injector: a mutating admission webhook served by the controller over HTTPS.
//!
//! - [`inject`]: pure; an `AdmissionReview` in, an `AdmissionReview` with a JSONPatch out.
//! - [`certs`]: pure; the self-signed CA and serving certificate, when to renew them, the
//!   `caBundle`.
//! - [`reconcile`]: the Secret and the `MutatingWebhookConfiguration`, on every replica.
//! - here: the HTTPS server (`POST /inject`), its certificate store and its metrics.
//!
//! Any replica serves the webhook; certificate writes use optimistic concurrency, so they do
//! not need the leader.

use anyhow::Context;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod certs;
pub mod inject;
pub mod reconcile;

pub use inject::{Admitted, Injector};
pub use reconcile::CertSettings;

/// Largest admission request read (the API server's own limit for an object is 3 MiB).
const MAX_BODY: usize = 4 << 20;
/// A client that stalls its TLS handshake does not hold a connection for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--webhook-*` and `--sidecar-*` configure.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    /// `injector.native_sidecar` is set from `sidecar_mode` at start.
    pub injector: Injector,
    pub sidecar_mode: SidecarMode,
    /// Hand injected proxies the controller's own CA bundle (the gRPC listener uses the
    /// self-managed certificate) unless `injector.controller_ca_pem` is set.
    pub inject_own_ca: bool,
}

/// The form of the injected proxy (`--sidecar-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// Native where the API server runs them (Kubernetes 1.29+), else a regular container.
    Auto,
    /// An init container with `restartPolicy: Always` (needs Kubernetes 1.29+, or 1.28 with
    /// the `SidecarContainers` feature gate).
    Native,
    /// A regular container next to the app's.
    Container,
}

/// The serving certificate, swapped in place when the Secret changes: no restart, no dropped
/// connection. Shared by the webhook and (self-managed TLS) the gRPC listener.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    /// The CA bundle (PEM) clients must trust, as of the last pass.
    ca_bundle: ArcSwapOption<String>,
}

/// The webhook's metrics, on the controller's registry.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// Admission requests, by result (`injected`, `skipped`, `already_injected`, `denied`,
    /// `bad_request`).
    pub injections: IntCounterVec,
    /// Expiry of the certificates in use (unix seconds), by `cert` (`serving`, `ca`).
    pub cert_expiry: IntGaugeVec,
    /// `caBundle` patches of the webhook configuration, by result (`ok`, `error`).
    pub ca_bundle_patches: IntCounterVec,
    /// Certificates written to the Secret by this replica, by kind (`new_ca`, `rotate_ca`,
    /// `new_serving`, `drop_previous_ca`).
    pub cert_renewals: IntCounterVec,
}

// === impl ServingCert ===

impl ServingCert {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn set_ca_bundle(&self, pem: &str) {
        if self.ca_bundle.load().as_deref().map(String::as_str) != Some(pem) {
            self.ca_bundle.store(Some(Arc::new(pem.to_owned())));
        }
    }

    /// The CA bundle (PEM) clients must trust; `None` before the first pass.
    pub fn ca_bundle(&self) -> Option<Arc<String>> {
        self.ca_bundle.load_full()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

// === impl WebhookMetrics ===

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            injections: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_webhook_injections_total",
                    "Sidecar injection admission requests, by result.",
                ),
                &["result"],
            )?,
            cert_expiry: IntGaugeVec::new(
                Opts::new(
                    "keyway_controller_webhook_cert_expiry_timestamp_seconds",
                    "When the webhook certificate in use expires (unix seconds), by cert (serving, ca).",
                ),
                &["cert"],
            )?,
            ca_bundle_patches: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_webhook_ca_bundle_patches_total",
                    "caBundle patches of the MutatingWebhookConfiguration, by result.",
                ),
                &["result"],
            )?,
            cert_renewals: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_webhook_cert_renewals_total",
                    "Webhook certificates written to the Secret by this replica, by kind.",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.injections.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        registry.register(Box::new(m.ca_bundle_patches.clone()))?;
        registry.register(Box::new(m.cert_renewals.clone()))?;
        Ok(m)
    }
}

/// The running webhook server: critical (it ends only on drain).
pub struct Webhook {
    pub server: JoinHandle<()>,
    pub addr: SocketAddr,
}

/// The controller's self-managed certificates: the keeper task (critical) and what it keeps.
pub struct Certs {
    pub serving: Arc<ServingCert>,
    pub metrics: WebhookMetrics,
    pub keeper: JoinHandle<()>,
}

/// Spawns the certificate keeper of `settings` (on every replica).
pub fn start_certs(
    settings: CertSettings,
    client: kube::Client,
    registry: &Registry,
    drain: watch::Receiver<bool>,
) -> anyhow::Result<Certs> {
    let metrics = WebhookMetrics::register(registry)?;
    let serving = Arc::new(ServingCert::default());
    let keeper = reconcile::CertManager::new(client, settings, serving.clone(), metrics.clone());
    let keeper = tokio::spawn(keeper.run(drain));
    Ok(Certs {
        serving,
        metrics,
        keeper,
    })
}

/// Binds the listener (a bad address fails the start) and spawns the HTTPS server, serving
/// the certificate the keeper of `certs` loads. Handshakes fail until the first one is loaded.
pub async fn start(
    settings: WebhookSettings,
    certs: &Certs,
    client: &kube::Client,
    drain: watch::Receiver<bool>,
) -> anyhow::Result<Webhook> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the webhook port {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let tls = server_config(certs.serving.clone())?;
    let own_ca = settings.inject_own_ca.then(|| certs.serving.clone());
    let mut injector = settings.injector;
    injector.native_sidecar = match settings.sidecar_mode {
        SidecarMode::Native => true,
        SidecarMode::Container => false,
        SidecarMode::Auto => native_sidecars_supported(client).await,
    };
    tracing::info!(
        mode = ?settings.sidecar_mode,
        native = injector.native_sidecar,
        "injected proxies run as {}",
        if injector.native_sidecar { "native sidecars (init containers, restartPolicy: Always)" } else { "regular containers" }
    );
    let server = tokio::spawn(serve(
        listener,
        tls,
        Arc::new(injector),
        own_ca,
        certs.metrics.clone(),
        drain,
    ));
    Ok(Webhook { server, addr })
}

/// Asks the API server its version (a few tries: this runs at start, when the API server may
/// be busy); if it never answers, the regular-container form, which every version runs.
async fn native_sidecars_supported(client: &kube::Client) -> bool {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match client.apiserver_version().await {
            Ok(info) => {
                return inject::supports_native_sidecars(&info.major, &info.minor);
            }
            Err(e) => last = e.to_string(),
        }
    }
    tracing::warn!(
        error = %last,
        "cannot read the API server's version: injecting regular containers (set --sidecar-mode native to override)"
    );
    false
}

/// rustls with ring, TLS 1.2 and 1.3, h2 and http/1.1, certificate from `serving`.
pub fn server_config(serving: Arc<ServingCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `POST /inject` until `drain` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector>,
    own_ca: Option<Arc<ServingCert>>,
    metrics: WebhookMetrics,
    mut drain: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait_for(|d| *d) => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "webhook accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let injector = injector.clone();
        let own_ca = own_ca.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %remote, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "webhook TLS handshake timed out");
                        return;
                    }
                };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let injector = with_own_ca(&injector, own_ca.as_deref());
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(handle(req, &injector, &metrics).await) }
            });
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%error, %remote, "webhook connection ended with an error");
            }
        });
    }
}

/// The injector, handing proxies the controller's current CA bundle when it serves gRPC with
/// its self-managed certificate (and no other CA was configured).
fn with_own_ca(injector: &Arc<Injector>, own_ca: Option<&ServingCert>) -> Arc<Injector> {
    match own_ca.and_then(ServingCert::ca_bundle) {
        Some(pem) if injector.controller_ca_pem.is_none() => Arc::new(Injector {
            controller_ca_pem: Some(pem.as_ref().clone()),
            ..injector.as_ref().clone()
        }),
        _ => injector.clone(),
    }
}

async fn handle(
    req: Request<Incoming>,
    injector: &Injector,
    metrics: &WebhookMetrics,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/inject" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the webhook is POST /inject\n",
        );
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            metrics.injections.with_label_values(&["bad_request"]).inc();
            return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}\n"));
        }
    };
    match injector.admit(&body) {
        Ok(admitted) => {
            let (review, outcome) = (admitted.review, admitted.outcome);
            metrics
                .injections
                .with_label_values(&[outcome.label()])
                .inc();
            if outcome != inject::Outcome::Skipped {
                let response = &review["response"];
                tracing::info!(
                    result = outcome.label(),
                    namespace = %admitted.namespace,
                    pod = %admitted.name,
                    uid = response["uid"].as_str().unwrap_or_default(),
                    message = response["status"]["message"].as_str().unwrap_or_default(),
                    "sidecar injection"
                );
            }
            let mut r = Response::new(Full::new(Bytes::from(review.to_string())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            metrics.injections.with_label_values(&["bad_request"]).inc();
            tracing::info!(error = %e, "refused a malformed admission request");
            text(StatusCode::BAD_REQUEST, &format!("{e}\n"))
        }
    }
}

fn text(status: StatusCode, s: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(s.as_bytes())));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests;
