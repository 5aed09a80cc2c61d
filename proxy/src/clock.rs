//! The coarse monotonic clock, for bookkeeping that counts in milliseconds (key scheduling,
//! idle connections): on Linux `CLOCK_MONOTONIC_COARSE`, the time of the last scheduler tick
//! (1–4 ms old), which costs a few nanoseconds to read where the precise clock costs about 25
//! on a virtual machine; elsewhere the precise one. Never goes back. Latencies that are
//! reported (metrics, `x-keyway-overhead-ms`) use `Instant` instead.

use std::time::Duration;

/// Time since an arbitrary fixed point (boot on Linux), coarse.
#[cfg(target_os = "linux")]
pub fn coarse() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Time since an arbitrary fixed point (the first call), precise.
#[cfg(not(target_os = "linux"))]
pub fn coarse() -> Duration {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed()
}
