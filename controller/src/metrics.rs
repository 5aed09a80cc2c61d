//! The controller's Prometheus metrics; one registry built in `main`, label values bounded.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    /// Proxies with an open discovery stream.
    pub connected_proxies: IntGauge,
    /// Snapshots sent to proxies.
    pub snapshots_sent: IntCounter,
    /// Proxy answers to snapshots, by result (`ack`, `nack`).
    pub snapshot_replies: IntCounterVec,
    /// Index rebuilds after watched objects changed.
    pub index_rebuilds: IntCounter,
    /// Status patches, by kind and result (`ok`, `error`).
    pub status_patches: IntCounterVec,
    /// Reports received from proxies.
    pub reports: IntCounter,
    /// 1 while this replica holds the leader Lease (writes status and events).
    pub leader: IntGauge,
    /// Times this replica became or stopped being the leader.
    pub leader_transitions: IntCounter,
    /// Quota grant messages sent to proxies with new values.
    pub quota_grants_sent: IntCounter,
    /// Writes of this replica's report, by result (`ok`, `error`).
    pub replica_report_writes: IntCounterVec,
    /// Size of this replica's last report.
    pub replica_report_bytes: IntGauge,
    /// Other replicas whose reports are fresh.
    pub replicas_seen: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            connected_proxies: IntGauge::new(
                "keyway_controller_connected_proxies",
                "Proxies with an open discovery stream.",
            )?,
            snapshots_sent: IntCounter::new(
                "keyway_controller_snapshots_sent_total",
                "Config snapshots sent to proxies.",
            )?,
            snapshot_replies: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_snapshot_replies_total",
                    "Proxy replies to snapshots, by result (ack, nack).",
                ),
                &["result"],
            )?,
            index_rebuilds: IntCounter::new(
                "keyway_controller_index_rebuilds_total",
                "Times the watched objects were resolved again.",
            )?,
            status_patches: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_status_patches_total",
                    "Status patches written, by kind and result.",
                ),
                &["kind", "result"],
            )?,
            reports: IntCounter::new(
                "keyway_controller_proxy_reports_total",
                "Usage reports received from proxies.",
            )?,
            leader: IntGauge::new(
                "keyway_controller_leader",
                "1 while this replica holds the leader Lease and writes status and events.",
            )?,
            leader_transitions: IntCounter::new(
                "keyway_controller_leader_transitions_total",
                "Times this replica became or stopped being the leader.",
            )?,
            quota_grants_sent: IntCounter::new(
                "keyway_controller_quota_grants_sent_total",
                "Quota grant messages with new values sent to proxies.",
            )?,
            replica_report_writes: IntCounterVec::new(
                Opts::new(
                    "keyway_controller_replica_report_writes_total",
                    "Writes of this replica's report (ConfigMap), by result.",
                ),
                &["result"],
            )?,
            replica_report_bytes: IntGauge::new(
                "keyway_controller_replica_report_bytes",
                "Size of this replica's last written report.",
            )?,
            replicas_seen: IntGauge::new(
                "keyway_controller_replicas_seen",
                "Other controller replicas whose reports are fresh.",
            )?,
        };
        registry.register(Box::new(m.quota_grants_sent.clone()))?;
        registry.register(Box::new(m.replica_report_writes.clone()))?;
        registry.register(Box::new(m.replica_report_bytes.clone()))?;
        registry.register(Box::new(m.replicas_seen.clone()))?;
        registry.register(Box::new(m.connected_proxies.clone()))?;
        registry.register(Box::new(m.snapshots_sent.clone()))?;
        registry.register(Box::new(m.snapshot_replies.clone()))?;
        registry.register(Box::new(m.index_rebuilds.clone()))?;
        registry.register(Box::new(m.status_patches.clone()))?;
        registry.register(Box::new(m.reports.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.leader_transitions.clone()))?;
        Ok(m)
    }
}
