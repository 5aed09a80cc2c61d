//! End-to-end tests on a real node: Pods run (kubelet, containerd, runc), probes are executed
//! by the kubelet, Services are real (kube-proxy, CoreDNS), and the Keyway image built on this
//! machine runs as the chart deploys it. See `keyway_e2e::node`.
//!
//! One node per test process, started on first use; these tests live in their own binary so
//! the machine-wide node lock is held only while they run. They share one `helm install`
//! (the README's commands, default values plus the local image) and one app namespace, and
//! run one at a time (some restart the controller).
//!
//! Run: `cargo build --workspace --bins && cargo test -p keyway-e2e --test node -- --nocapture`
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod common;
mod install;
mod sidecar;
