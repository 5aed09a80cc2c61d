//! End-to-end tests: the real `keyway-controller` and `keyway-proxy` binaries against a real
//! etcd + kube-apiserver, driven with the real `kubectl`.
//!
//! Every e2e test is a module of this one test binary, so they all share one API server
//! (started on first use by `keyway_e2e::cluster()`). Each test gets its own namespace and
//! its own controller watching only that namespace, so tests can run in parallel.
//!
//! Run: `cargo build --workspace --bins && cargo test -p keyway-e2e -- --nocapture`
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod apiserver_outage;
mod chart;
mod config_rejected;
mod control_plane;
mod key_status;
mod kubectl_views;
mod leader_election;
mod missing_secret;
mod reliability;
mod replicas;
mod secure_push;
mod security;
mod sidecar_injection;
mod status_interval;
mod validation;
mod walking_skeleton;
