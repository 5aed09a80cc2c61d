//! A key's usage over a sliding minute: a ring of one-second buckets with running sums.
//!
//! The window at second `s` holds the buckets of seconds `s - 60 ..= s` (61 buckets), so a
//! request stays counted for at least 60 and at most 61 seconds after it started: the count is
//! never below what a strict sliding 60 s window would see, which errs on the side of not
//! sending a request the upstream would refuse. Every operation first advances the ring to the
//! current second, clearing the buckets that left the window: O(1) amortised (each bucket is
//! cleared once per second that passes) and at most 61 steps after a long idle period.

/// Buckets in the ring: 60 seconds plus the current one.
const BUCKETS: usize = 61;
/// Milliseconds per bucket.
const BUCKET_MS: u64 = 1_000;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Bucket {
    requests: u32,
    tokens: u32,
    successes: u32,
    failures: u32,
}

/// Which running sum a question is about.
#[derive(Clone, Copy)]
pub(super) enum Field {
    Requests,
    Tokens,
}

/// Usage of one key over the last minute. Times are milliseconds on the pool's clock. The
/// head second, the request sum and the current bucket come first (`repr(C)`): counting or
/// reading requests touches those 32 bytes only (see `Key`'s layout).
#[repr(C)]
pub(super) struct Window {
    /// The second of the newest bucket.
    head: u64,
    requests: u64,
    /// The head second, kept inline: counting a request touches no other cache line.
    cur: Bucket,
    tokens: u64,
    successes: u64,
    failures: u64,
    /// The seconds before the head; the head's own slot stays empty.
    buckets: Box<[Bucket]>,
}

impl Window {
    /// The leading bytes that counting and reading requests touch.
    #[cfg(test)]
    pub(super) const HOT_BYTES: usize =
        std::mem::offset_of!(Window, cur) + std::mem::size_of::<Bucket>();

    pub(super) fn new(now: u64) -> Self {
        Self {
            buckets: vec![Bucket::default(); BUCKETS].into_boxed_slice(),
            cur: Bucket::default(),
            head: now / BUCKET_MS,
            requests: 0,
            tokens: 0,
            successes: 0,
            failures: 0,
        }
    }

    /// Moves the ring to `now`, dropping the seconds that left the window. Inlined: within the
    /// head second (nearly every call) it is one comparison, and the caller's loads of
    /// several keys' windows can overlap.
    #[inline]
    fn advance(&mut self, now: u64) {
        let sec = now / BUCKET_MS;
        if sec > self.head {
            self.roll(sec);
        }
        // A clock never goes back; should `now` be older than the head anyway, it counts in
        // the newest bucket.
    }

    /// Makes `sec` (later than the head) the head second.
    #[cold]
    #[inline(never)]
    fn roll(&mut self, sec: u64) {
        // The head second becomes an ordinary bucket (its slot was empty).
        self.buckets[(self.head % BUCKETS as u64) as usize] = std::mem::take(&mut self.cur);
        let steps = (sec - self.head).min(BUCKETS as u64);
        for s in (sec + 1 - steps)..=sec {
            let b = std::mem::take(&mut self.buckets[(s % BUCKETS as u64) as usize]);
            self.requests -= u64::from(b.requests);
            self.tokens -= u64::from(b.tokens);
            self.successes -= u64::from(b.successes);
            self.failures -= u64::from(b.failures);
        }
        self.head = sec;
    }

    #[inline]
    pub(super) fn add_request(&mut self, now: u64) {
        self.advance(now);
        let b = &mut self.cur;
        if b.requests < u32::MAX {
            b.requests += 1;
            self.requests += 1;
        }
    }

    /// Takes back a request counted at `now` (a grant that nobody received).
    pub(super) fn remove_request(&mut self, now: u64) {
        self.advance(now);
        let b = &mut self.cur;
        if b.requests > 0 {
            b.requests -= 1;
            self.requests -= 1;
        }
    }

    pub(super) fn add_tokens(&mut self, now: u64, tokens: u64) {
        self.advance(now);
        let b = &mut self.cur;
        let add = u32::try_from(tokens)
            .unwrap_or(u32::MAX)
            .min(u32::MAX - b.tokens);
        b.tokens += add;
        self.tokens += u64::from(add);
    }

    pub(super) fn add_outcome(&mut self, now: u64, ok: bool) {
        self.advance(now);
        let b = &mut self.cur;
        let (cell, sum) = if ok {
            (&mut b.successes, &mut self.successes)
        } else {
            (&mut b.failures, &mut self.failures)
        };
        if *cell < u32::MAX {
            *cell += 1;
            *sum += 1;
        }
    }

    /// Forgets successes and failures (a fresh start after a disable).
    pub(super) fn clear_outcomes(&mut self) {
        for b in self
            .buckets
            .iter_mut()
            .chain(std::iter::once(&mut self.cur))
        {
            b.successes = 0;
            b.failures = 0;
        }
        self.successes = 0;
        self.failures = 0;
    }

    #[inline]
    pub(super) fn requests(&mut self, now: u64) -> u64 {
        self.advance(now);
        self.requests
    }

    pub(super) fn tokens(&mut self, now: u64) -> u64 {
        self.advance(now);
        self.tokens
    }

    /// (successes, failures) in the window.
    pub(super) fn outcomes(&mut self, now: u64) -> (u64, u64) {
        self.advance(now);
        (self.successes, self.failures)
    }

    /// When the sum of `field` drops below `limit` again if nothing more is added: `None` if it
    /// already is, else the first instant (ms) at which enough old seconds have left the
    /// window. O(61).
    pub(super) fn below_at(&mut self, now: u64, field: Field, limit: u64) -> Option<u64> {
        self.advance(now);
        let total = match field {
            Field::Requests => self.requests,
            Field::Tokens => self.tokens,
        };
        if total < limit {
            return None;
        }
        let oldest = self.head.saturating_sub(BUCKETS as u64 - 1);
        let mut left = total;
        for s in oldest..=self.head {
            let b = if s == self.head {
                &self.cur
            } else {
                &self.buckets[(s % BUCKETS as u64) as usize]
            };
            left -= match field {
                Field::Requests => u64::from(b.requests),
                Field::Tokens => u64::from(b.tokens),
            };
            if left < limit {
                return Some((s + BUCKETS as u64) * BUCKET_MS);
            }
        }
        // Unreachable for limit >= 1 (an empty window is below it); a limit of 0 never frees.
        Some(u64::MAX)
    }
}
