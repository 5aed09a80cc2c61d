//! `tracing` setup: the shared format of `keyway_api::logging` (JSON lines unless stderr is a
//! terminal, `KEYWAY_LOG_FORMAT=json|text`, `KEYWAY_LOG` filter changeable at runtime).

pub use keyway_api::logging::{current_filter, set_filter};

/// Installs the global subscriber. Call once, from `main`.
pub fn init(default_filter: &str) {
    keyway_api::logging::init("proxy", default_filter);
}
