//! Leader election on a `coordination.k8s.io/v1` Lease, so several controller replicas can run:
//! every replica serves proxies from its own cache; only the Lease holder writes status and
//! Events (`status::run` is gated on the channel this task drives).
//!
//! The protocol is client-go's: read the Lease, then write it back with the `resourceVersion`
//! that was read (optimistic concurrency: a 409 means someone else wrote first)
//!
//! - to renew it while holding it, every `duration / 3`;
//! - to take it when it is free or expired. Expiry is judged on the local monotonic clock: a
//!   Lease whose record has not changed for its `leaseDurationSeconds` since this replica first
//!   saw that record is expired, so clock skew between nodes does not matter.
//!
//! A holder that has not renewed for `2/3` of the duration steps down (stops writing) before
//! anyone else may take over (a full duration without a renewal). On shutdown the holder
//! releases the Lease, so the next replica takes over within `duration / 3`.
//!
//! `kube-lease-manager` 0.13 was evaluated and not used: its watch loop keeps reporting
//! leadership while renewals fail (no step-down), and it clears an expired holder with a patch
//! that is not conditional on the `resourceVersion`, so a slow contender can clear the Lease a
//! faster one has just taken (two leaders until the next renewal).

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The field manager of the controller's Lease writes.
const FIELD_MANAGER: &str = "keyway-controller";

/// Which Lease to hold, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per replica (see [`identity`]).
    pub identity: String,
    /// How long a claim is valid without renewal (`leaseDurationSeconds`).
    pub duration: Duration,
}

/// Why a Lease read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer changed (or created) the Lease first.
    #[error("the Lease was changed concurrently")]
    Conflict,
    #[error("{0}")]
    Api(String),
}

impl From<kube::Error> for StoreError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
            e => StoreError::Api(e.to_string()),
        }
    }
}

/// The Lease calls the election makes: [`KubeLease`] in production, a fake in tests.
pub trait LeaseStore: Send + Sync + 'static {
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;
    /// Fails with [`StoreError::Conflict`] if it exists already.
    fn create(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Fails with [`StoreError::Conflict`] unless `lease`'s `resourceVersion` is current.
    fn replace(&self, lease: Lease) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One Lease in the API server (needs `get`, `create` and `update` on `leases`).
pub struct KubeLease {
    api: Api<Lease>,
    name: String,
}

impl KubeLease {
    pub fn new(client: Client, settings: &LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            name: settings.name.clone(),
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

impl LeaseStore for KubeLease {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    async fn create(&self, lease: Lease) -> Result<(), StoreError> {
        self.api.create(&post_params(), &lease).await?;
        Ok(())
    }

    async fn replace(&self, lease: Lease) -> Result<(), StoreError> {
        self.api.replace(&self.name, &post_params(), &lease).await?;
        Ok(())
    }
}

/// Runs the election until `stop` turns true (or its sender goes away), publishing on `leader`
/// whether this replica holds the Lease. On stop it publishes `false` first, then releases the
/// Lease if it held it.
pub async fn run<S: LeaseStore>(
    store: S,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let period = settings.duration / 3;
    let renew_deadline = settings.duration * 2 / 3;
    tracing::info!(
        identity = %settings.identity,
        lease = %format!("{}/{}", settings.namespace, settings.name),
        duration = ?settings.duration,
        "leader election started"
    );
    let mut observed = None;
    // Start of the last successful claim, while this replica holds the Lease.
    let mut renewed_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let limit = match renewed_at {
            Some(at) => (started + period).min(at + renew_deadline),
            None => started + period,
        };
        let round = tokio::select! {
            r = tokio::time::timeout_at(limit, claim_round(&store, &settings, &mut observed)) => r,
            _ = stopped(&mut stop) => return finish(&store, &settings, &leader, &metrics).await,
        };
        let failed = match round {
            Ok(Ok(held)) => {
                renewed_at = held.then_some(started);
                false
            }
            Ok(Err(StoreError::Conflict)) => {
                // Someone else wrote the Lease in between: it is not ours, at least for now.
                renewed_at = None;
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %settings.name, "cannot read or write the Lease");
                true
            }
            Err(_) => {
                tracing::warn!(lease = %settings.name, "the Lease call timed out");
                true
            }
        };
        if renewed_at.is_some_and(|at| at.elapsed() >= renew_deadline) {
            tracing::warn!(
                lease = %settings.name,
                "could not renew the Lease within {renew_deadline:?}; stepping down"
            );
            renewed_at = None;
        }
        publish(&leader, &metrics, &settings, renewed_at.is_some());
        // A holder whose renewal failed retries sooner, to renew before its deadline.
        let next = if failed && renewed_at.is_some() {
            started + period / 4
        } else {
            started + period
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stopped(&mut stop) => return finish(&store, &settings, &leader, &metrics).await,
        }
    }
}

/// Completes when `stop` turns true or its sender goes away.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// On stop: stops leading, then releases the Lease if this replica held it.
async fn finish<S: LeaseStore>(
    store: &S,
    settings: &LeaseSettings,
    leader: &watch::Sender<bool>,
    metrics: &Metrics,
) {
    let held = *leader.borrow();
    publish(leader, metrics, settings, false);
    if held {
        match tokio::time::timeout(settings.duration / 3, release(store, settings)).await {
            Ok(Ok(())) => tracing::info!(lease = %settings.name, "released the Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "cannot release the Lease"),
            Err(_) => tracing::warn!("releasing the Lease timed out"),
        }
    }
}

/// Sets the channel and the metrics when leadership changes.
fn publish(leader: &watch::Sender<bool>, metrics: &Metrics, settings: &LeaseSettings, now: bool) {
    let changed = leader.send_if_modified(|v| std::mem::replace(v, now) != now);
    if changed {
        metrics.leader.set(i64::from(now));
        metrics.leader_transitions.inc();
        if now {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader: writing status and events");
        } else {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "not the leader: status and events are left to the holder");
        }
    }
}

/// The Lease record last seen (by `resourceVersion`) and when this replica first saw it.
type Observed = Option<(Option<String>, Instant)>;

/// One round: reads the Lease and, if this replica holds it or may take it, writes it.
/// `Ok(true)` when this replica holds the Lease afterwards.
async fn claim_round<S: LeaseStore>(
    store: &S,
    settings: &LeaseSettings,
    observed: &mut Observed,
) -> Result<bool, StoreError> {
    let Some(mut lease) = store.get().await? else {
        let spec = LeaseSpec {
            lease_transitions: Some(0),
            ..claim(
                &LeaseSpec::default(),
                &settings.identity,
                true,
                settings.duration,
            )
            .unwrap_or_default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..Default::default()
            },
            spec: Some(spec),
        };
        return match store.create(lease).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let now = Instant::now();
    let version = lease.metadata.resource_version.clone();
    let seen_at = match observed {
        Some((v, at)) if *v == version => *at,
        _ => observed.insert((version, now)).1,
    };
    let spec = lease.spec.take().unwrap_or_default();
    let valid_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(settings.duration, Duration::from_secs);
    let expired = now.duration_since(seen_at) >= valid_for;
    let Some(next) = claim(&spec, &settings.identity, expired, settings.duration) else {
        return Ok(false);
    };
    lease.spec = Some(next);
    store.replace(lease).await?;
    Ok(true)
}

/// What this replica writes into the Lease: a renewal if it holds it, a takeover if it is free
/// or `expired`, or `None` while another holder's claim is valid.
pub fn claim(
    current: &LeaseSpec,
    identity: &str,
    expired: bool,
    duration: Duration,
) -> Option<LeaseSpec> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let seconds = Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
    let holder = current.holder_identity.as_deref().filter(|h| !h.is_empty());
    if holder == Some(identity) {
        return Some(LeaseSpec {
            renew_time: Some(now.clone()),
            acquire_time: current.acquire_time.clone().or(Some(now)),
            lease_duration_seconds: seconds,
            ..current.clone()
        });
    }
    if holder.is_some() && !expired {
        return None;
    }
    Some(LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_duration_seconds: seconds,
        lease_transitions: Some(current.lease_transitions.unwrap_or(0).saturating_add(1)),
        ..current.clone()
    })
}

/// Clears the holder if it is this replica, so a successor need not wait for expiry.
async fn release<S: LeaseStore>(store: &S, settings: &LeaseSettings) -> Result<(), StoreError> {
    let Some(mut lease) = store.get().await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    store.replace(lease).await
}

/// This replica's identity: the pod name when set (unique in its namespace; a restarted
/// container of the same pod may resume its own claim at once), else the host name plus a random
/// suffix (several replicas may share a host).
pub fn identity(pod_name: Option<&str>, hostname: Option<&str>, suffix: u32) -> String {
    match pod_name.map(str::trim).filter(|p| !p.is_empty()) {
        Some(pod) => pod.to_owned(),
        None => {
            let host = hostname
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .unwrap_or("keyway-controller");
            format!("{host}-{suffix:08x}")
        }
    }
}

/// The host name: `$HOSTNAME`, else the kernel's.
pub fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The Lease's namespace: the flag, else the pod's namespace, else the watched one, else
/// `default`.
pub fn lease_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    watch_namespace: Option<&str>,
) -> String {
    [flag, pod_namespace, watch_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|ns| !ns.is_empty())
        .unwrap_or("default")
        .to_owned()
}

#[cfg(test)]
mod tests;
