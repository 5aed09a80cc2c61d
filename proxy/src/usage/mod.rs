//! What an upstream response says about the key that served it, and the small request rewrites
//! that make it say so.
//!
//! Everything here is pure and synchronous, runs on the request path, and is meant to be fuzzed:
//! no function panics on any input, and every piece of state is bounded (a streaming scanner or
//! filter holds at most one line / one event, capped by a limit).
//!
//! - [`Usage`], [`from_json`]: token counts from a whole (non-streaming) response body.
//! - [`SseUsageScanner`]: the same, incrementally, from the bytes of a `text/event-stream`.
//! - [`request_wants_stream`], [`add_include_usage`], [`StripUsageChunk`]: ask OpenAI for the
//!   usage chunk the client did not ask for, and hide it from the client again.
//! - [`cooldown_from_headers`], [`remaining_from_headers`], [`quota_error_in_body`]: rate-limit
//!   and quota signals.
//! - [`set_json_field`]: put a key into a top-level body field (`auth.type: bodyField`).
//!
//! # Composition on a streaming OpenAI response
//!
//! When [`add_include_usage`] rewrote the request, feed every upstream chunk to the scanner
//! *first*, then pass it through the filter and send the filter's output to the client:
//!
//! ```
//! # use keyway_proxy::usage::{SseUsageScanner, StripUsageChunk};
//! let mut scanner = SseUsageScanner::new();
//! let mut strip = StripUsageChunk::new();
//! let mut to_client = Vec::new();
//! for chunk in [&b"data: {\"choices\":[{}],\"usage\":null}\n\n"[..],
//!               &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"[..],
//!               &b"data: [DONE]\n\n"[..]] {
//!     scanner.feed(chunk);
//!     to_client.extend_from_slice(&strip.filter(chunk));
//! }
//! to_client.extend_from_slice(&strip.finish());
//! assert_eq!(scanner.usage().map(|u| u.total()), Some(7));
//! assert_eq!(to_client, b"data: {\"choices\":[{}],\"usage\":null}\n\ndata: [DONE]\n\n");
//! ```
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo
)]

mod json;
mod ratelimit;
mod request;
mod response;
mod sse;
mod time;

pub use ratelimit::{
    MAX_COOLDOWN, Remaining, cooldown_from_headers, quota_error_in_body, remaining_from_headers,
};
pub use request::{add_include_usage, request_wants_stream, set_json_field};
pub use response::{Usage, from_json};
pub use sse::{DEFAULT_MAX_LINE, SseUsageScanner, StripUsageChunk};

#[cfg(test)]
mod tests;
