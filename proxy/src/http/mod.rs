//! The traffic port, from accept to answer: `server` accepts, `gate` admits (sources, client
//! tokens, access log), `forward` routes, places, injects the key and forwards, as named
//! stages.

pub mod body;
pub mod client;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod gate;
mod headers;
pub mod inject;
mod response;
pub mod server;
pub mod upstream;

pub use forward::{Forwarder, ForwarderSettings, peek_model};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The error type of bodies in flight (upstream I/O, idle timeouts).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the proxy forwards or writes.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
