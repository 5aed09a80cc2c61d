//! Keyway's shared vocabulary.
//!
//! - [`spec`]: the `LoadBalancerPool` and `ApiKeyPool` resources exactly as users write them
//!   (Kubernetes CRDs with the `crd` feature, plain serde types without it).
//! - [`model`]: the one domain model both binaries work with, whichever source it came from.
//! - [`resolve`]: spec + key material → model, with errors that name the field path.
//! - [`presets`]: provider defaults (`spec.provider`) the resolver fills in.
//! - [`manifest`]: multi-document YAML files (the standalone mode's config source).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

#[cfg(feature = "logging")]
pub mod logging;
pub mod manifest;
pub mod model;
pub mod presets;
pub mod resolve;
pub mod secret;
pub mod spec;

/// The API group of every Keyway resource.
pub const GROUP: &str = "keyway.dev";
/// The served (and stored) version.
pub const VERSION: &str = "v1alpha1";
