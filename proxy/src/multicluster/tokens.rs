//! Tokens a cluster served in the last minute, as a sliding estimate over two one-minute
//! buckets (the previous minute weighted by how much of it is still in the window).

use std::sync::Mutex;
use std::time::Instant;

const MINUTE_MS: u64 = 60_000;

/// A per-cluster token rate, shared across config snapshots.
pub struct TokenRate {
    origin: Instant,
    inner: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    minute: u64,
    current: u64,
    previous: u64,
}

impl Default for TokenRate {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

impl TokenRate {
    pub fn add(&self, tokens: u64, now: Instant) {
        let ms = self.ms(now);
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.roll(ms / MINUTE_MS);
        b.current += tokens;
    }

    /// Tokens per minute over the last sixty seconds.
    pub fn per_minute(&self, now: Instant) -> f64 {
        let ms = self.ms(now);
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.roll(ms / MINUTE_MS);
        let into = (ms % MINUTE_MS) as f64 / MINUTE_MS as f64;
        b.current as f64 + b.previous as f64 * (1.0 - into)
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }
}

impl Buckets {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        self.previous = if minute == self.minute + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.minute = minute;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slides_over_a_minute() {
        let r = TokenRate::default();
        let t0 = r.origin;
        r.add(600, t0 + Duration::from_secs(10));
        assert_eq!(r.per_minute(t0 + Duration::from_secs(20)), 600.0);
        // Half-way through the next minute, half of the previous one still counts.
        let v = r.per_minute(t0 + Duration::from_secs(90));
        assert!((v - 300.0).abs() < 1e-6, "{v}");
        r.add(100, t0 + Duration::from_secs(90));
        assert!((r.per_minute(t0 + Duration::from_secs(90)) - 400.0).abs() < 1e-6);
        // Two minutes of silence: nothing.
        assert_eq!(r.per_minute(t0 + Duration::from_secs(240)), 0.0);
    }
}
