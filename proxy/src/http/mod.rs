//! The traffic port: accept connections, route each request to a pool, forward it.

pub mod body;
mod error;
mod forward;
mod headers;
pub mod server;

pub use forward::{Forwarder, ForwarderSettings, UpstreamClient};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The error type of bodies in flight (upstream I/O, idle timeouts).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the proxy forwards or writes.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
