//! The traffic port: accept connections, route each request to a pool, forward it.

mod error;
mod forward;
mod headers;
pub mod server;

pub use forward::{Forwarder, ForwarderSettings};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The body type of every response the proxy writes.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;
