//! Controller mode: dial the controller, say hello, apply pushed snapshots, ACK or NACK each,
//! send usage reports. When the controller goes away the last good snapshot keeps serving and
//! the stream is re-dialled with exponential backoff and equal jitter ([`Backoff`]).
//!
//! The stream carries key values: an `https://` controller URL is verified against
//! `--controller-ca` (or the public roots), and the proxy presents its ServiceAccount token,
//! re-read from its file on every connect since projected tokens rotate.

use crate::config::SnapshotTx;
use crate::dataplane::Dataplane;
use anyhow::Context;
use keyway_api::model;
use keyway_proto as pb;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod quota;

/// Where Kubernetes mounts a pod's ServiceAccount token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the sidecar injector mounts the projected token with Keyway's audience; preferred
/// over [`DEFAULT_TOKEN_FILE`] when present.
pub const KEYWAY_TOKEN_FILE: &str = "/var/run/secrets/keyway.dev/serviceaccount/token";

/// How to reach the controller and who we are.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    pub controller_url: String,
    pub proxy_id: String,
    pub namespace: String,
    /// Other namespaces whose pools to ask for; each is sent only if it grants `namespace`.
    pub namespaces: Vec<String>,
    pub pools: Vec<String>,
    pub report_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The ServiceAccount token sent as `authorization: Bearer`, re-read on every connect.
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for an `https://` controller URL, instead of the public
    /// roots.
    pub controller_ca: Option<PathBuf>,
    /// The same as PEM text (e.g. from an environment variable set by the sidecar injector).
    pub controller_ca_pem: Option<String>,
    /// The name the controller's certificate must carry, when it differs from the URL's host
    /// (dialling an address, not the Service name).
    pub controller_server_name: Option<String>,
}

/// Runs forever, reconnecting as needed. `controller_url` may list several controller
/// replicas separated by commas: after a failed or closed stream the next one is tried, so a
/// proxy moves to a surviving replica when its controller dies.
pub async fn run(settings: DiscoverySettings, tx: SnapshotTx, dataplane: Arc<Dataplane>) {
    let urls: Vec<String> = settings
        .controller_url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let mut attempt = 0usize;
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    if !settings.controller_url.starts_with("https://") {
        tracing::warn!(controller = %settings.controller_url, "the controller URL is not https://: the pushed API key values (and this proxy's token) travel in clear");
    }
    if settings.token_file.is_none() {
        tracing::warn!(
            "no --token-file: connecting without a ServiceAccount token; a controller that authenticates proxies refuses the stream"
        );
    }
    // The config and quota leases outlive a stream: a lease runs out on its own schedule,
    // whether or not a controller is connected.
    let state = Arc::new(Mutex::new(State::default()));
    let expiry = tokio::spawn(expire_leases(state.clone(), tx.clone()));
    let _expiry = AbortOnDrop(expiry);
    loop {
        let mut settings = settings.clone();
        if let Some(url) = urls.get(attempt % urls.len().max(1)) {
            settings.controller_url = url.clone();
        }
        attempt = attempt.wrapping_add(1);
        let got_snapshot = match stream_once(&settings, &tx, &dataplane, &state).await {
            Ok(got) => {
                // Streams have a bounded lifetime: a close is routine, the reconnect presents
                // a fresh token.
                tracing::info!(controller = %settings.controller_url, "controller closed the stream");
                got
            }
            Err((got, error)) => {
                // Refusals are configuration problems (token, namespace, RBAC): say so loudly.
                // They are retried all the same, since they can be fixed without a restart.
                match error
                    .downcast_ref::<tonic::Status>()
                    .map(tonic::Status::code)
                {
                    Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                        tracing::error!(controller = %settings.controller_url, %error, "the controller refused this proxy");
                    }
                    _ => {
                        tracing::warn!(controller = %settings.controller_url, error = format!("{error:#}"), "controller stream failed");
                    }
                }
                got
            }
        };
        dataplane.metrics().controller_connected.set(0);
        dataplane.update_controller_sync(|s| s.connected = false);
        if got_snapshot {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::info!(?wait, "reconnecting to the controller");
        tokio::time::sleep(wait).await;
    }
}

/// The waits between reconnects: a step that doubles from `min` up to `max` (back to `min`
/// once a stream delivered a snapshot), each wait drawn uniformly from `[step / 2, step)`
/// ("equal jitter"): a fleet of proxies cut off together does not reconnect in lockstep,
/// and none retries sooner than half its step (full jitter, `[0, step)`, would let some retry
/// at once, again and again).
#[derive(Debug)]
struct Backoff {
    step: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            step: min,
            min,
            max: max.max(min),
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    /// The wait before the next attempt; the step doubles for the one after.
    fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(rand::random_range(0.5..1.0));
        self.step = (self.step * 2).min(self.max);
        wait
    }
}

/// What the controller sent, kept across streams.
#[derive(Default)]
struct State {
    /// The last snapshot applied, with the global quotas the controller sent, and its version
    /// on the current stream (0: none on this stream yet; deltas need it).
    base: Option<Arc<model::Snapshot>>,
    base_version: u64,
    /// The quota leases in force.
    grants: Option<quota::Grants>,
    /// The lease expiry has been applied (the fallbacks are in force).
    expiry_applied: bool,
    starved: quota::Starved,
}

impl State {
    /// Publishes the config with this proxy's quota grants in place of the global quotas.
    fn publish(&mut self, tx: &SnapshotTx) {
        let now = Instant::now();
        if let Some(base) = &self.base {
            let effective = quota::effective(base, self.grants.as_ref(), now);
            tx.send_replace(Some(Arc::new(effective)));
        }
        self.expiry_applied = self.grants.as_ref().is_some_and(|g| g.expired(now));
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies each key's fallback once its lease has run out without a renewal.
async fn expire_leases(state: Arc<Mutex<State>>, tx: SnapshotTx) {
    loop {
        let wake = {
            let mut st = lock(&state);
            match st.grants.as_ref().map(|g| g.expires) {
                Some(at) if !st.expiry_applied && Instant::now() >= at => {
                    tracing::warn!(
                        "the quota lease ran out without a renewal from a controller; serving each key's fallback share"
                    );
                    st.publish(&tx);
                    None
                }
                Some(at) if !st.expiry_applied => Some(at),
                _ => None,
            }
        };
        let sleep = wake.map_or(Duration::from_millis(500), |at| {
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500))
        });
        tokio::time::sleep(sleep.max(Duration::from_millis(10))).await;
    }
}

/// One stream's life. Returns whether any snapshot arrived (to reset the backoff).
async fn stream_once(
    settings: &DiscoverySettings,
    tx: &SnapshotTx,
    dataplane: &Dataplane,
    state: &Mutex<State>,
) -> Result<bool, (bool, anyhow::Error)> {
    // Deltas are relative to this stream's versions.
    lock(state).base_version = 0;
    let mut got_snapshot = false;
    let endpoint = endpoint(settings).map_err(|e| (false, e))?;
    // Read before dialling: a missing token is this proxy's problem, not the controller's.
    let token = match &settings.token_file {
        Some(path) => Some(read_token(path).map_err(|e| (false, e))?),
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .context("connecting to the controller")
        .map_err(|e| (false, e))?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel);

    let (out_tx, out_rx) = mpsc::channel::<pb::ProxyMessage>(16);
    let hello = pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(pb::Hello {
            proxy_id: settings.proxy_id.clone(),
            namespace: settings.namespace.clone(),
            namespaces: settings.namespaces.clone(),
            pools: settings.pools.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            accepts_deltas: true,
            accepts_quota_grants: true,
        })),
    };
    out_tx.send(hello).await.map_err(|e| (false, e.into()))?;
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if let Some(token) = token {
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}").parse().map_err(|_| {
                (
                    false,
                    anyhow::anyhow!("the token file holds characters a token cannot have"),
                )
            })?;
        // Kept out of HPACK tables and Debug output.
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .stream(request)
        .await
        .map_err(|e| (false, e.into()))?
        .into_inner();
    dataplane.metrics().controller_connected.set(1);
    dataplane.update_controller_sync(|s| s.connected = true);
    tracing::info!(controller = %settings.controller_url, proxy_id = %settings.proxy_id, "connected to the controller");

    // Reports go out every report interval, and sooner (at most every QUICK_REPORT) when
    // requests starve for quota or new grants were applied: demand and acknowledgements
    // then reach the quota allocator within about a second.
    const QUICK_REPORT: Duration = Duration::from_secs(1);
    let mut check = tokio::time::interval(QUICK_REPORT.min(settings.report_interval));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_report: Option<Instant> = None;
    let mut report_soon = false;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(got_snapshot),
                    Err(status) => return Err((got_snapshot, status.into())),
                };
                let reply = match msg.message {
                    Some(pb::controller_message::Message::Snapshot(snapshot)) => {
                        got_snapshot = true;
                        apply(snapshot, tx, dataplane, state)
                    }
                    Some(pb::controller_message::Message::Grants(grants)) => {
                        let version = grants.version;
                        let mut st = lock(state);
                        st.grants = Some(quota::Grants::new(grants, Instant::now()));
                        st.publish(tx);
                        tracing::debug!(version, "applied quota grants");
                        report_soon = true;
                        continue;
                    }
                    None => continue,
                };
                if out_tx.send(reply).await.is_err() {
                    return Ok(got_snapshot);
                }
            }
            _ = check.tick() => {
                let due = last_report.is_none_or(|at| at.elapsed() >= settings.report_interval);
                let quick = last_report.is_none_or(|at| at.elapsed() >= QUICK_REPORT);
                let starving = dataplane
                    .router()
                    .key_pools
                    .iter()
                    .any(|kp| kp.engine.quota_starved() > 0 && kp.engine.queue_len() > 0);
                if !(due || (quick && (report_soon || starving))) {
                    continue;
                }
                report_soon = false;
                last_report = Some(Instant::now());
                let report = {
                    let mut st = lock(state);
                    let version = st.grants.as_ref().map_or(0, |g| g.version);
                    usage_report(dataplane, &mut st.starved, version)
                };
                let msg = pb::ProxyMessage {
                    message: Some(pb::proxy_message::Message::Report(report)),
                };
                if out_tx.send(msg).await.is_err() {
                    return Ok(got_snapshot);
                }
            }
        }
    }
}

/// The controller endpoint: TLS for `https://`, trusting `controller_ca` or the public roots.
fn endpoint(settings: &DiscoverySettings) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(settings.controller_url.clone())
        .with_context(|| format!("invalid controller URL {:?}", settings.controller_url))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if settings.controller_url.starts_with("https://") {
        let tls = ClientTlsConfig::new().timeout(Duration::from_secs(10));
        let tls = match (&settings.controller_ca, &settings.controller_ca_pem) {
            (Some(path), _) => tls.ca_certificate(read_ca(path)?),
            (None, Some(pem)) => {
                tls.ca_certificate(ca_from_pem(pem.as_bytes(), "the controller CA PEM")?)
            }
            (None, None) => tls.with_webpki_roots(),
        };
        let tls = match &settings.controller_server_name {
            Some(name) => tls.domain_name(name.clone()),
            None => tls,
        };
        endpoint = endpoint
            .tls_config(tls)
            .context("the controller TLS settings are invalid")?;
    }
    Ok(endpoint)
}

/// A PEM CA file, checked to hold at least one certificate (tonic would only find out at
/// the handshake).
pub fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the controller CA {}", path.display()))?;
    ca_from_pem(&pem, &path.display().to_string())
}

/// PEM text checked to hold at least one certificate; `what` names its source in errors.
pub fn ca_from_pem(pem: &[u8], what: &str) -> anyhow::Result<Certificate> {
    anyhow::ensure!(
        String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----"),
        "{what} holds no PEM certificate"
    );
    Ok(Certificate::from_pem(pem))
}

/// The token, trimmed. Its content never appears in an error.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ServiceAccount token {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token.to_owned())
}

/// Validates and publishes a snapshot (whole, or a delta on the stream's previous one); the
/// answer is the ACK or NACK to send.
fn apply(
    snapshot: pb::Snapshot,
    tx: &SnapshotTx,
    dataplane: &Dataplane,
    state: &Mutex<State>,
) -> pb::ProxyMessage {
    let version = snapshot.version;
    let mut st = lock(state);
    let decoded = if snapshot.base_version == 0 {
        model::Snapshot::try_from(snapshot).map(Arc::new)
    } else {
        match st.base.take() {
            Some(mut base) if st.base_version == snapshot.base_version => {
                // In place: the base is not shared (the dataplane holds the effective copy).
                let applied = pb::apply_delta(Arc::make_mut(&mut base), snapshot);
                st.base = Some(base.clone());
                applied.map(|()| base)
            }
            other => {
                st.base = other;
                Err(pb::InvalidSnapshot {
                    path: "baseVersion".into(),
                    message: format!(
                        "a delta on version {} but this proxy holds version {}; send it whole",
                        snapshot.base_version, st.base_version
                    ),
                })
            }
        }
    };
    let message = match decoded {
        Ok(model) => {
            st.base = Some(model);
            st.base_version = version;
            st.publish(tx);
            dataplane
                .metrics()
                .config_updates
                .with_label_values(&["applied"])
                .inc();
            tracing::info!(version, "applied snapshot from the controller");
            dataplane.update_controller_sync(|s| {
                (s.version, s.acked, s.error) = (version, true, None);
            });
            pb::proxy_message::Message::Ack(pb::Ack { version })
        }
        Err(error) => {
            dataplane
                .metrics()
                .config_updates
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(version, %error, "rejected snapshot from the controller; still serving the previous one");
            dataplane.update_controller_sync(|s| {
                (s.version, s.acked, s.error) = (version, false, Some(error.to_string()));
            });
            pb::proxy_message::Message::Nack(pb::Nack {
                version,
                error: error.to_string(),
            })
        }
    };
    pb::ProxyMessage {
        message: Some(message),
    }
}

fn usage_report(dataplane: &Dataplane, starved: &mut quota::Starved, version: u64) -> pb::Report {
    let view = dataplane.view();
    let mut report = pb::Report {
        quota_version: version,
        ..Default::default()
    };
    for pool in view.pools() {
        let id = &pool.model().id;
        report.pools.push(pb::PoolReport {
            namespace: id.namespace.clone(),
            pool: id.name.clone(),
            active_backend: pool.active_backend().unwrap_or_default().to_string(),
        });
        for b in pool.backends() {
            report.backends.push(pb::BackendReport {
                namespace: id.namespace.clone(),
                pool: id.name.clone(),
                backend: b.name().to_string(),
                requests: b.requests,
                failures: b.failures,
                healthy: b.healthy,
                ejected: b.ejected,
                capacity: b.load.map(|(c, _)| c),
                consumption: b.load.map(|(_, c)| c),
            });
        }
    }
    for kp in view.key_pools() {
        let id = &kp.state.id;
        let starving = starved.grew(id, kp.state.engine.quota_starved());
        for k in kp.keys {
            report.keys.push(pb::KeyReport {
                namespace: id.namespace.clone(),
                key_pool: id.name.clone(),
                key_id: k.id,
                requests: k.requests,
                failures: k.failures,
                state: k.state.to_string(),
                reason: k.reason.unwrap_or_default(),
                until_unix_ms: k.until_unix_ms.unwrap_or(0),
                tokens: k.tokens,
                last_used_unix_ms: k.last_used_unix_ms.unwrap_or(0),
                window_requests: k.requests_this_minute,
                window_tokens: k.tokens_this_minute,
                wanted_requests: quota::wants(k.requests_this_minute, starving),
                wanted_tokens: quota::wants(k.tokens_this_minute, starving),
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_double_up_to_the_maximum_with_equal_jitter() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(10));
        let steps_ms = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        let mut waits: Vec<Vec<Duration>> = vec![Vec::new(); steps_ms.len()];
        for _ in 0..500 {
            let mut b = Backoff::new(min, max);
            for w in &mut waits {
                w.push(b.next_wait());
            }
        }
        for (step, waits) in steps_ms.iter().zip(&waits) {
            let step = Duration::from_millis(*step);
            let lo = *waits.iter().min().unwrap();
            let hi = *waits.iter().max().unwrap();
            // Every wait within [step / 2, step) ...
            assert!(lo >= step / 2 && hi < step, "{step:?}: {lo:?}..{hi:?}");
            // ... and spread over it (500 uniform draws: both ends come within 10% of the step).
            assert!(
                lo < step.mul_f64(0.6) && hi > step.mul_f64(0.9),
                "{step:?}: {lo:?}..{hi:?}"
            );
        }
        // A stream that delivered a snapshot starts the steps over.
        let mut b = Backoff::new(min, max);
        for _ in 0..10 {
            b.next_wait();
        }
        b.reset();
        assert!(b.next_wait() < min);
    }

    #[test]
    fn token_and_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "eyJhbGciOi.abc.def\n").unwrap();
        assert_eq!(read_token(&token).unwrap(), "eyJhbGciOi.abc.def");
        std::fs::write(&token, " \n").unwrap();
        assert!(read_token(&token).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());

        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = read_ca(&ca).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn https_urls_get_tls_and_bad_urls_are_named() {
        let mut s = DiscoverySettings {
            controller_url: "https://keyway-controller:8443".into(),
            proxy_id: "p".into(),
            namespace: "team".into(),
            namespaces: vec![],
            pools: vec![],
            report_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            token_file: None,
            controller_ca: None,
            controller_ca_pem: None,
            controller_server_name: None,
        };
        assert!(endpoint(&s).is_ok());
        s.controller_url = "not a url".into();
        let err = format!("{:#}", endpoint(&s).unwrap_err());
        assert!(err.contains("invalid controller URL"), "{err}");
    }
}
