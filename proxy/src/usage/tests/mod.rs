#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod fuzz;
mod ratelimit;
mod request;
mod response;
mod sse;

/// A small deterministic PRNG (xorshift64*), so the tests need no `rand` and are reproducible.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `input` cut into pieces of 1..=max_piece bytes, deterministically from `seed`.
pub(super) fn split(input: &[u8], seed: u64, max_piece: usize) -> Vec<&[u8]> {
    let mut rng = Rng::new(seed);
    let mut pieces = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = 1 + rng.below(max_piece.max(1));
        let (a, b) = rest.split_at(n.min(rest.len()));
        pieces.push(a);
        rest = b;
    }
    pieces
}
