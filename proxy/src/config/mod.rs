//! Where the proxy's configuration comes from. Both sources publish the same
//! [`keyway_api::model::Snapshot`] into one watch channel; the data plane applies whatever
//! arrives. An invalid config never reaches the channel: the last good one keeps serving.

pub mod edit;
pub mod file;

use keyway_api::model::Snapshot;
use std::sync::Arc;
use tokio::sync::watch;

/// The channel every source publishes into. `None` until the first valid snapshot.
pub type SnapshotTx = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;
