//! keyway-controller: the control plane.
//!
//! - [`reflectors`]: Kubernetes in (reflectors) and the indexer task.
//! - [`secret_probe`]: which named Secrets exist without the opt-in label (metadata only).
//! - [`index`]: pure resolution of pools, key pools and Secrets into per-namespace snapshots.
//! - [`grpc`]: the discovery stream that pushes snapshots to proxies; [`auth`]: who a proxy is.
//! - [`status`]: where status is written.
//! - [`leader`]: leader election on a Lease; only the holder writes status and events.
//! - [`replicas`]: what replicas share about their proxies (one ConfigMap each);
//!   [`allocator`] and [`quota`]: the leader's demand-based quota grants.
//! - [`webhook`]: the sidecar-injection admission webhook and its self-managed certificates.
//! - [`runtime`]: wiring and task supervision.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod aggregate;
pub mod allocator;
pub mod auth;
pub mod crdgen;
pub mod events;
pub mod grpc;
pub mod grpc_tls;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod proxies;
pub mod quota;
pub mod reflectors;
pub mod replicas;
pub mod runtime;
pub mod secret_probe;
pub mod status;
pub mod webhook;
