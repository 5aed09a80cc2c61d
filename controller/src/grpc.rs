//! The discovery service: one bidirectional stream per proxy. Knows nothing of Kubernetes: it
//! reads a `watch::Receiver<Arc<Index>>`, so tests feed it directly.

use crate::index::Index;
use crate::metrics::Metrics;
use crate::proxies::{Proxies, Session};
use crate::quota;
use keyway_api::model::ObjectId;
use keyway_proto as pb;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Serves snapshots from the index to connected proxies.
#[derive(Clone)]
pub struct DiscoveryService {
    index: watch::Receiver<Arc<Index>>,
    proxies: Proxies,
    metrics: Metrics,
    /// Closes every stream when the controller shuts down.
    drain: watch::Receiver<bool>,
}

type SnapshotStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

// === impl DiscoveryService ===

impl DiscoveryService {
    pub fn new(
        index: watch::Receiver<Arc<Index>>,
        proxies: Proxies,
        metrics: Metrics,
        drain: watch::Receiver<bool>,
    ) -> Self {
        Self {
            index,
            proxies,
            metrics,
            drain,
        }
    }

    pub fn into_server(self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type StreamStream = SnapshotStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ProxyMessage {
                message: Some(pb::proxy_message::Message::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.namespace.is_empty() || hello.proxy_id.is_empty() {
            return Err(Status::invalid_argument(
                "Hello.namespace and Hello.proxy_id are required",
            ));
        }
        let (tx, rx) = mpsc::channel(4);
        let session = self.proxies.register(
            hello.proxy_id.clone(),
            hello.namespace.clone(),
            hello.pools.clone(),
        );
        tracing::info!(proxy_id = %hello.proxy_id, namespace = %hello.namespace, pools = ?hello.pools, "proxy connected");
        self.metrics.connected_proxies.inc();
        tokio::spawn(run_session(
            hello,
            session,
            inbound,
            tx,
            self.index.clone(),
            self.metrics.clone(),
            self.drain.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Pushes a snapshot whenever this proxy's view of the index changes, and folds its replies
/// into the registry, until either side goes away.
async fn run_session(
    hello: pb::Hello,
    session: Session,
    mut inbound: Streaming<pb::ProxyMessage>,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    mut index: watch::Receiver<Arc<Index>>,
    metrics: Metrics,
    mut drain: watch::Receiver<bool>,
) {
    let mut version = 0u64;
    let mut last_sent = None;
    let mut membership = session.proxies().subscribe_membership();
    index.mark_changed();
    let draining = async move {
        let _ = drain.wait_for(|d| *d).await.map(|_| ());
    };
    tokio::pin!(draining);
    loop {
        tokio::select! {
            changed = index.changed() => if changed.is_err() { break },
            changed = membership.changed() => if changed.is_err() { break },
            msg = inbound.message() => {
                match msg {
                    Ok(Some(m)) => {
                        handle_reply(&hello, &session, &metrics, m);
                        continue;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy_id = %hello.proxy_id, %status, "proxy stream error");
                        break;
                    }
                }
            }
            _ = &mut draining => break,
            _ = tx.closed() => break,
        }
        membership.borrow_and_update();
        let snapshot = {
            let idx = index.borrow_and_update().clone();
            let mut snapshot = idx.snapshot_for(&hello.namespace, &hello.pools);
            let peers = session.proxies().list();
            let peers: Vec<quota::Peer<'_>> = peers
                .iter()
                .map(|p| quota::Peer {
                    id: &p.proxy_id,
                    namespace: &p.namespace,
                    pools: &p.pools,
                })
                .collect();
            let namespace_pools = idx
                .namespaces
                .get(&hello.namespace)
                .map_or(&[][..], |n| n.pools.as_slice());
            quota::share(&mut snapshot, namespace_pools, &hello.proxy_id, &peers);
            snapshot
        };
        if last_sent.as_ref() == Some(&snapshot) {
            continue;
        }
        version += 1;
        let msg = pb::ControllerMessage {
            message: Some(pb::controller_message::Message::Snapshot(
                pb::Snapshot::from_model(version, &snapshot),
            )),
        };
        if tx.send(Ok(msg)).await.is_err() {
            break;
        }
        metrics.snapshots_sent.inc();
        let served: BTreeSet<ObjectId> = snapshot.pools.iter().map(|p| p.id.clone()).collect();
        session.sent(version, served);
        tracing::debug!(proxy_id = %hello.proxy_id, version, pools = snapshot.pools.len(), "sent snapshot");
        last_sent = Some(snapshot);
    }
    metrics.connected_proxies.dec();
    tracing::info!(proxy_id = %hello.proxy_id, namespace = %hello.namespace, "proxy disconnected");
}

fn handle_reply(hello: &pb::Hello, session: &Session, metrics: &Metrics, msg: pb::ProxyMessage) {
    match msg.message {
        Some(pb::proxy_message::Message::Ack(a)) => {
            metrics.snapshot_replies.with_label_values(&["ack"]).inc();
            session.acked(a.version);
        }
        Some(pb::proxy_message::Message::Nack(n)) => {
            metrics.snapshot_replies.with_label_values(&["nack"]).inc();
            tracing::warn!(proxy_id = %hello.proxy_id, version = n.version, error = %n.error, "proxy rejected a snapshot");
            session.nacked(n.error);
        }
        Some(pb::proxy_message::Message::Report(report)) => {
            metrics.reports.inc();
            session.reported(report);
        }
        Some(pb::proxy_message::Message::Hello(_)) | None => {
            tracing::debug!(proxy_id = %hello.proxy_id, "ignoring unexpected message");
        }
    }
}
