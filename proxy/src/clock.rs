//! The coarse monotonic clock, for bookkeeping that counts in milliseconds (key scheduling,
//! idle connections): on Linux `CLOCK_MONOTONIC_COARSE`, the time of the last scheduler tick
//! (1–4 ms old), which costs a few nanoseconds to read where the precise clock costs about 25
//! on a virtual machine; elsewhere the precise one. Never goes back. Latencies that are
//! reported (metrics, `x-keyway-overhead-ms`) use `Instant` instead.

/// Nanoseconds since an arbitrary fixed point (boot on Linux), coarse. Integer nanoseconds:
/// no `Duration` and no 128-bit division on the key pick's path.
#[cfg(target_os = "linux")]
#[inline]
pub fn coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Nanoseconds since an arbitrary fixed point (the first call), precise.
#[cfg(not(target_os = "linux"))]
pub fn coarse_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        BASE.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

/// [`coarse_ns`] in milliseconds.
#[inline]
pub fn coarse_ms() -> u64 {
    coarse_ns() / 1_000_000
}
