//! `tracing` setup shared by both binaries' conventions: `KEYWAY_LOG` (falling back to
//! `RUST_LOG`) picks the filter, `KEYWAY_LOG_FORMAT=plain|json` the format.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(default_filter: &str) {
    let filter = std::env::var("KEYWAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let json = std::env::var("KEYWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
