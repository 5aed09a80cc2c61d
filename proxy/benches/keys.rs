//! Key selection: one pick from a pool of 10, 1,000 and 10,000 keys, per strategy.
//!
//! - `key_pick/*`: `KeyPool::try_acquire` alone (the leases are released outside the timed
//!   section), i.e. what a request pays to get a key.
//! - `key_lease/*`: the whole life of a lease: `try_acquire` and `Lease::success` (two trips
//!   through the pool's lock), i.e. what a request pays in total.
//!
//! Every key is eligible except in `*_90pct_cooling`, where nine keys in ten are cooling after a
//! 429 (they sit in the timer heap; a pick must never visit them). Throughput is one pick per
//! iteration, so criterion prints picks per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyway_api::secret::SecretValue;
use keyway_proxy::hash::hash_key;
use keyway_proxy::keys::{KeyConfig, KeyLimits, KeyPool, PoolSettings, Selection, Stickiness};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Leases held at once by the `key_pick` benchmarks before they are released (untimed).
const BATCH: u64 = 256;

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    selection: Selection,
    sticky: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "round_robin",
        selection: Selection::RoundRobin,
        sticky: false,
    },
    Case {
        name: "weighted",
        selection: Selection::Weighted,
        sticky: false,
    },
    Case {
        name: "least_used",
        selection: Selection::LeastUsed,
        sticky: false,
    },
    Case {
        name: "time_window",
        selection: Selection::TimeWindow {
            window: Duration::from_secs(60),
        },
        sticky: false,
    },
    Case {
        name: "sticky_round_robin",
        selection: Selection::RoundRobin,
        sticky: true,
    },
];

fn pool(n: usize, case: Case) -> KeyPool {
    let settings = PoolSettings {
        selection: case.selection,
        stickiness: case.sticky.then(Stickiness::default),
        ..PoolSettings::default()
    };
    let keys = (0..n)
        .map(|i| {
            KeyConfig::new(
                format!("key-{i:05}"),
                SecretValue::new(format!("sk-bench-{i:05}-0123456789abcdef0123456789abcdef")),
            )
            .with_limits(KeyLimits {
                // Weights 1..=4, so weighted selection has work to do.
                weight: 1 + (i % 4) as u32,
                ..KeyLimits::default()
            })
        })
        .collect();
    KeyPool::new(settings, keys)
}

/// Puts nine keys in ten into a cooldown (a 429 with a 50 s Retry-After).
fn cool_most(pool: &KeyPool, n: usize) {
    for _ in 0..n - n / 10 {
        let lease = pool.try_acquire(None, &[]).expect("an eligible key");
        lease.rate_limited(Some(Duration::from_secs(50)));
    }
}

/// The affinity of the i-th request: a hash of a user id, 1,000 distinct users.
fn affinity(case: Case, i: u64) -> Option<u64> {
    case.sticky
        .then(|| hash_key(format!("user-{:04}", i % 1_000).as_bytes()))
}

fn key_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_pick");
    g.throughput(Throughput::Elements(1));
    for case in CASES {
        for n in SIZES {
            let pool = pool(n, case);
            let hashes: Vec<Option<u64>> = (0..1_000).map(|i| affinity(case, i)).collect();
            g.bench_with_input(BenchmarkId::new(case.name, n), &pool, |b, pool| {
                b.iter_custom(|iters| {
                    let mut held = Vec::with_capacity(BATCH as usize);
                    let mut spent = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let batch = BATCH.min(iters - done);
                        let start = Instant::now();
                        for i in 0..batch {
                            let h = hashes[((done + i) % 1_000) as usize];
                            held.push(pool.try_acquire(black_box(h), &[]).expect("a key"));
                        }
                        spent += start.elapsed();
                        held.clear();
                        done += batch;
                    }
                    spent
                });
            });
        }
    }
    let case = CASES[0];
    let n = 10_000;
    let pool = pool(n, case);
    cool_most(&pool, n);
    g.bench_with_input(
        BenchmarkId::new("round_robin_90pct_cooling", n),
        &pool,
        |b, pool| {
            b.iter_custom(|iters| {
                let mut held = Vec::with_capacity(BATCH as usize);
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let batch = BATCH.min(iters - done);
                    let start = Instant::now();
                    for _ in 0..batch {
                        held.push(pool.try_acquire(None, &[]).expect("a key"));
                    }
                    spent += start.elapsed();
                    held.clear();
                    done += batch;
                }
                spent
            });
        },
    );
    g.finish();
}

fn key_lease(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_lease");
    g.throughput(Throughput::Elements(1));
    for case in CASES {
        for n in SIZES {
            let pool = pool(n, case);
            let hashes: Vec<Option<u64>> = (0..1_000).map(|i| affinity(case, i)).collect();
            let mut i = 0usize;
            g.bench_with_input(BenchmarkId::new(case.name, n), &pool, |b, pool| {
                b.iter(|| {
                    i = (i + 1) % hashes.len();
                    let lease = pool.try_acquire(black_box(hashes[i]), &[]).expect("a key");
                    lease.success(Some(20));
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, key_pick, key_lease);
criterion_main!(benches);
