//! The active checker: one task per backend that probes [`HealthSettings::target`] and feeds
//! [`BackendHealth::record_check`].

use super::deep::{MAX_DEEP_BODY, parse_deep};
use super::metrics::{CheckLabel, HealthMetrics};
use super::state::{BackendHealth, Transition};
use crate::http::client::{self, ClientOptions};
use bytes::Bytes;
use http::uri::InvalidUri;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Default [`HealthSettings::interval`].
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`HealthSettings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`HealthSettings::fail_threshold`].
pub const DEFAULT_FAIL_THRESHOLD: u32 = 3;
/// Default [`HealthSettings::success_threshold`].
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 2;

/// Shortest pause between two probes, whatever the configured interval.
const MIN_PAUSE: Duration = Duration::from_millis(1);
/// Connect timeout of the probe clients (the probe's own timeout bounds it too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Sent with every probe.
const USER_AGENT: &str = concat!("keyway-proxy-health/", env!("CARGO_PKG_VERSION"));

/// The HTTP client the checkers share (HTTP/1.1 and HTTP/2, http and https).
pub type HealthClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How one backend is actively checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Full URL probed with `GET` (see [`join_target`]). Any `user:pass@` is stripped.
    pub target: Uri,
    /// Pause between the end of a probe and the start of the next (±10 % jitter).
    /// Default 10 s.
    pub interval: Duration,
    /// Per-probe limit, covering connect, response head and body. Default 2 s.
    pub timeout: Duration,
    /// Consecutive failed probes that make a healthy backend unhealthy. Default 3.
    pub fail_threshold: u32,
    /// Consecutive successful probes that make an unhealthy backend healthy. Default 2.
    pub success_threshold: u32,
    /// Parse the 2xx body as deep health (see [`super::deep`]); an unparsable body fails the
    /// probe. Default `false`.
    pub deep: bool,
    /// The `Host` header to send (the backend's `hostHeader`); `None`: the target's
    /// authority. Default `None`.
    pub host: Option<HeaderValue>,
}

impl HealthSettings {
    /// Probes `target` with the defaults: every 10 s, 2 s timeout, unhealthy after 3 failures,
    /// healthy again after 2 successes, no deep health.
    pub fn new(target: Uri) -> Self {
        Self {
            target,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            fail_threshold: DEFAULT_FAIL_THRESHOLD,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            deep: false,
            host: None,
        }
    }

    /// [`HealthSettings::new`] with `target = join_target(endpoint, path)`.
    pub fn for_backend(endpoint: &str, path: &str) -> Result<Self, InvalidUri> {
        Ok(Self::new(join_target(endpoint, path)?))
    }
}

/// The probe URL of a backend: `path` if it is a full URL (`scheme://...`); else, if it starts
/// with `/`, `path` on the endpoint's scheme and authority (the endpoint's own path is
/// replaced); else `path` appended to the endpoint's path. The endpoint's query is dropped.
///
/// `("https://h/v1", "/healthz")` → `https://h/healthz`;
/// `("https://h/v1", "models")` → `https://h/v1/models`.
pub fn join_target(endpoint: &str, path: &str) -> Result<Uri, InvalidUri> {
    if path.contains("://") {
        return path.parse();
    }
    let base: Uri = endpoint.parse()?;
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    let joined = if path.starts_with('/') {
        format!("{scheme}://{authority}{path}")
    } else {
        let prefix = base.path().trim_end_matches('/');
        format!("{scheme}://{authority}{prefix}/{path}")
    };
    joined.parse()
}

/// Builds a checkers' client that trusts the webpki roots only: http and https, HTTP/1.1 and
/// HTTP/2 by ALPN, idle connections kept for reuse between probes. The proxy itself uses
/// [`HealthClients`], which trusts `--upstream-ca` too.
pub fn build_client() -> Result<HealthClient, rustls::Error> {
    let tls =
        crate::tls::upstream_config(None).map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok(HealthClients::new(tls).shared().clone())
}

/// The probe clients of active checks and key re-probes, from the same TLS config as the
/// requests (`crate::tls::upstream_config`): one shared client, and a backend's own when its
/// `hostHeader` names the TLS server or it speaks HTTP/2 only.
#[derive(Clone)]
pub struct HealthClients {
    tls: rustls::ClientConfig,
    shared: HealthClient,
}

impl HealthClients {
    pub fn new(tls: rustls::ClientConfig) -> Self {
        let shared = Self::build(tls.clone(), None, false);
        Self { tls, shared }
    }

    /// The client for backends that need nothing of their own.
    pub fn shared(&self) -> &HealthClient {
        &self.shared
    }

    /// The client for probes of a backend with this TLS server name and protocol.
    pub fn for_backend(
        &self,
        server_name: Option<ServerName<'static>>,
        http2_only: bool,
    ) -> HealthClient {
        if server_name.is_none() && !http2_only {
            return self.shared.clone();
        }
        Self::build(self.tls.clone(), server_name, http2_only)
    }

    fn build(
        tls: rustls::ClientConfig,
        server_name: Option<ServerName<'static>>,
        http2_only: bool,
    ) -> HealthClient {
        client::build_with(
            tls,
            &ClientOptions {
                http2_only,
                server_name,
                max_idle_per_host: Some(1),
                ..ClientOptions::new(CONNECT_TIMEOUT)
            },
        )
    }
}

/// Starts the checker of one backend. It runs until aborted: the first probe immediately,
/// then one every `interval` (±10 % jitter) after the previous one ended. A 2xx answer read
/// within `timeout` (and, with `deep`, a parsable body of at most 1 MiB) is a success;
/// anything else is a failure. Probes are plain `GET`s with no credentials.
///
/// Each result is counted, fed to [`BackendHealth::record_check`], and every transition is
/// logged (`pool`, `backend`, `from`, `to`, `reason`; warn for unhealthy, info for healthy)
/// and counted. `health` should be built from the same thresholds
/// ([`BackendHealth::from_settings`]); `health`'s own thresholds are the ones applied.
pub fn spawn_checker(
    label: CheckLabel,
    settings: HealthSettings,
    health: Arc<BackendHealth>,
    client: HealthClient,
    metrics: HealthMetrics,
) -> JoinHandle<()> {
    tokio::spawn(run(label, settings, health, client, metrics))
}

/// The result of one probe.
#[derive(Debug)]
enum Outcome {
    Success,
    Failure(String),
    Timeout,
}

impl Outcome {
    fn result_label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Timeout => "timeout",
        }
    }
}

async fn run(
    label: CheckLabel,
    settings: HealthSettings,
    health: Arc<BackendHealth>,
    client: HealthClient,
    metrics: HealthMetrics,
) {
    let target = without_userinfo(&settings.target);
    let (fail, success) = health.thresholds();
    if (fail, success)
        != (
            settings.fail_threshold.max(1),
            settings.success_threshold.max(1),
        )
    {
        tracing::warn!(
            pool = %label.pool, backend = %label.backend, fail, success,
            "health settings thresholds differ from the backend's; using the backend's"
        );
    }
    let (pool, backend) = (label.pool.as_str(), label.backend.as_str());
    let checks = [
        metrics
            .checks
            .with_label_values(&[pool, backend, "success"]),
        metrics
            .checks
            .with_label_values(&[pool, backend, "failure"]),
        metrics
            .checks
            .with_label_values(&[pool, backend, "timeout"]),
    ];
    let duration = metrics.check_duration.with_label_values(&[pool]);
    metrics.set_healthy(&label, health.is_active_healthy());
    tracing::debug!(pool, backend, %target, interval = ?settings.interval, deep = settings.deep, "health checker started");

    loop {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            settings.timeout,
            probe(
                &client,
                &target,
                settings.host.as_ref(),
                settings.deep,
                &health,
            ),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout,
        };
        duration.observe(started.elapsed().as_secs_f64());
        let counter = match outcome {
            Outcome::Success => &checks[0],
            Outcome::Failure(_) => &checks[1],
            Outcome::Timeout => &checks[2],
        };
        counter.inc();
        let ok = matches!(outcome, Outcome::Success);
        let reason = match &outcome {
            Outcome::Success => format!("{success} consecutive successful probes"),
            Outcome::Failure(why) => format!("{why} ({fail} consecutive failed probes)"),
            Outcome::Timeout => format!(
                "probe timed out after {:?} ({fail} consecutive failed probes)",
                settings.timeout
            ),
        };
        match health.record_check(ok) {
            Some(t) => {
                metrics.transition(&label, t);
                metrics.set_healthy(&label, t == Transition::Healthy);
                match t {
                    Transition::Unhealthy => tracing::warn!(
                        pool,
                        backend,
                        from = t.previous(),
                        to = t.as_str(),
                        reason,
                        "backend health changed"
                    ),
                    Transition::Healthy => tracing::info!(
                        pool,
                        backend,
                        from = t.previous(),
                        to = t.as_str(),
                        reason,
                        "backend health changed"
                    ),
                }
            }
            None if !ok => tracing::debug!(
                pool,
                backend,
                result = outcome.result_label(),
                ?outcome,
                "health probe failed"
            ),
            None => {}
        }
        tokio::time::sleep(jittered(settings.interval)).await;
    }
}

/// One probe, without the timeout (the caller applies it). Stores deep-health models on
/// success.
async fn probe(
    client: &HealthClient,
    target: &Uri,
    host: Option<&HeaderValue>,
    deep: bool,
    health: &BackendHealth,
) -> Outcome {
    let mut request = Request::get(target.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "application/json, */*");
    if let Some(host) = host {
        request = request.header(header::HOST, host.clone());
    }
    let request = match request.body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("invalid probe request: {e}")),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("request failed: {}", error_chain(&e))),
    };
    let status = response.status();
    if !status.is_success() {
        return Outcome::Failure(format!("status {}", status.as_u16()));
    }
    // Read the body in both modes so the connection can be reused.
    let body = match Limited::new(response.into_body(), MAX_DEEP_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Failure(format!("reading body: {e}")),
    };
    if deep {
        match parse_deep(&body) {
            Ok(models) => health.set_models(models, Instant::now()),
            Err(e) => return Outcome::Failure(e.to_string()),
        }
    }
    Outcome::Success
}

/// `interval` scaled by a random factor in [0.9, 1.1], at least [`MIN_PAUSE`].
fn jittered(interval: Duration) -> Duration {
    let factor: f64 = rand::random_range(0.9..=1.1);
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor)
        .unwrap_or(interval)
        .max(MIN_PAUSE)
}

/// `uri` without a `user:pass@` part (HTTP/2 would send it in `:authority`).
fn without_userinfo(uri: &Uri) -> Uri {
    let Some((_, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return uri.clone();
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = host.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| {
        tracing::warn!("health check target has unusable credentials in its authority; probing /");
        Uri::from_static("/")
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = HealthSettings::new(Uri::from_static("http://h/healthz"));
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!((s.fail_threshold, s.success_threshold), (3, 2));
        assert!(!s.deep);
        let h = BackendHealth::from_settings(&s, Default::default());
        assert_eq!(h.thresholds(), (3, 2));
    }

    #[test]
    fn join() {
        let j = |e, p| join_target(e, p).unwrap().to_string();
        assert_eq!(j("https://h/v1", "/healthz"), "https://h/healthz");
        assert_eq!(j("https://h/v1/", "models"), "https://h/v1/models");
        assert_eq!(j("https://h", "models"), "https://h/models");
        assert_eq!(
            j("http://h:8080/v1?x=1", "models"),
            "http://h:8080/v1/models"
        );
        assert_eq!(j("https://h/v1", "http://other:9/x"), "http://other:9/x");
        assert!(join_target("https://h/v1", "http://bad host/").is_err());
        let s = HealthSettings::for_backend("https://h/v1", "models").unwrap();
        assert_eq!(s.target, Uri::from_static("https://h/v1/models"));
    }

    #[test]
    fn userinfo_is_stripped() {
        let u = without_userinfo(&Uri::from_static("https://user:pw@h:8443/x?y=1"));
        assert_eq!(u, Uri::from_static("https://h:8443/x?y=1"));
        let u = Uri::from_static("http://h/x");
        assert_eq!(without_userinfo(&u), u);
    }

    #[test]
    fn jitter_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
        assert_eq!(jittered(Duration::ZERO), MIN_PAUSE);
        assert!(jittered(Duration::MAX) > Duration::ZERO);
    }

    #[test]
    fn client_builds() {
        build_client().unwrap();
    }
}
