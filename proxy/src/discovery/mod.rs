//! Controller mode: dial the controller, say hello, apply pushed snapshots, ACK or NACK each,
//! send usage reports. When the controller goes away the last good snapshot keeps serving and
//! the stream is re-dialled with exponential backoff and jitter.

use crate::config::SnapshotTx;
use crate::dataplane::Dataplane;
use keyway_api::model;
use keyway_proto as pb;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How to reach the controller and who we are.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    pub controller_url: String,
    pub proxy_id: String,
    pub namespace: String,
    pub pools: Vec<String>,
    pub report_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Runs forever, reconnecting as needed.
pub async fn run(settings: DiscoverySettings, tx: SnapshotTx, dataplane: Arc<Dataplane>) {
    let mut backoff = settings.backoff_min;
    loop {
        let got_snapshot = match stream_once(&settings, &tx, &dataplane).await {
            Ok(got) => {
                tracing::warn!(controller = %settings.controller_url, "controller closed the stream");
                got
            }
            Err((got, error)) => {
                tracing::warn!(controller = %settings.controller_url, %error, "controller stream failed");
                got
            }
        };
        dataplane.metrics().controller_connected.set(0);
        if got_snapshot {
            backoff = settings.backoff_min;
        }
        // Full jitter: a fleet of proxies does not reconnect in lockstep.
        let wait = backoff.mul_f64(rand::random_range(0.5..1.0));
        tracing::info!(?wait, "reconnecting to the controller");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

/// One stream's life. Returns whether any snapshot arrived (to reset the backoff).
async fn stream_once(
    settings: &DiscoverySettings,
    tx: &SnapshotTx,
    dataplane: &Dataplane,
) -> Result<bool, (bool, anyhow::Error)> {
    let mut got_snapshot = false;
    let endpoint = tonic::transport::Endpoint::from_shared(settings.controller_url.clone())
        .map_err(|e| (false, e.into()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|e| (false, e.into()))?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel);

    let (out_tx, out_rx) = mpsc::channel::<pb::ProxyMessage>(16);
    let hello = pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Hello(pb::Hello {
            proxy_id: settings.proxy_id.clone(),
            namespace: settings.namespace.clone(),
            pools: settings.pools.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    };
    out_tx.send(hello).await.map_err(|e| (false, e.into()))?;
    let mut inbound = client
        .stream(ReceiverStream::new(out_rx))
        .await
        .map_err(|e| (false, e.into()))?
        .into_inner();
    dataplane.metrics().controller_connected.set(1);
    tracing::info!(controller = %settings.controller_url, proxy_id = %settings.proxy_id, "connected to the controller");

    let mut report = tokio::time::interval(settings.report_interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(got_snapshot),
                    Err(status) => return Err((got_snapshot, status.into())),
                };
                let Some(pb::controller_message::Message::Snapshot(snapshot)) = msg.message else {
                    continue;
                };
                got_snapshot = true;
                let reply = apply(snapshot, tx, dataplane);
                if out_tx.send(reply).await.is_err() {
                    return Ok(got_snapshot);
                }
            }
            _ = report.tick() => {
                let msg = pb::ProxyMessage {
                    message: Some(pb::proxy_message::Message::Report(usage_report(dataplane))),
                };
                if out_tx.send(msg).await.is_err() {
                    return Ok(got_snapshot);
                }
            }
        }
    }
}

/// Validates and publishes a snapshot; the answer is the ACK or NACK to send.
fn apply(snapshot: pb::Snapshot, tx: &SnapshotTx, dataplane: &Dataplane) -> pb::ProxyMessage {
    let version = snapshot.version;
    let message = match model::Snapshot::try_from(snapshot) {
        Ok(model) => {
            tx.send_replace(Some(Arc::new(model)));
            dataplane
                .metrics()
                .config_updates
                .with_label_values(&["applied"])
                .inc();
            tracing::info!(version, "applied snapshot from the controller");
            pb::proxy_message::Message::Ack(pb::Ack { version })
        }
        Err(error) => {
            dataplane
                .metrics()
                .config_updates
                .with_label_values(&["rejected"])
                .inc();
            tracing::error!(version, %error, "rejected snapshot from the controller; still serving the previous one");
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

fn usage_report(dataplane: &Dataplane) -> pb::Report {
    let router = dataplane.router();
    let mut report = pb::Report::default();
    let now = std::time::Instant::now();
    for pool in &router.pools {
        report.pools.push(pb::PoolReport {
            namespace: pool.model.id.namespace.clone(),
            pool: pool.model.id.name.clone(),
            active_backend: pool.active_backend().unwrap_or_default().to_string(),
        });
        for b in &pool.backends {
            report.backends.push(pb::BackendReport {
                namespace: pool.model.id.namespace.clone(),
                pool: pool.model.id.name.clone(),
                backend: b.model.name.clone(),
                requests: b.counters.requests.load(Ordering::Relaxed),
                failures: b.counters.failures.load(Ordering::Relaxed),
                healthy: b.health.is_active_healthy(),
                ejected: b.health.is_ejected(now),
            });
        }
    }
    for kp in &router.key_pools {
        for k in kp.keys() {
            report.keys.push(pb::KeyReport {
                namespace: kp.id.namespace.clone(),
                key_pool: kp.id.name.clone(),
                key_id: k.id,
                requests: k.requests,
                failures: k.failures,
                state: k.state.to_string(),
                reason: k.reason.unwrap_or_default(),
                until_unix_ms: k.until_unix_ms.unwrap_or(0),
                tokens: k.tokens,
                last_used_unix_ms: k.last_used_unix_ms.unwrap_or(0),
            });
        }
    }
    report
}
