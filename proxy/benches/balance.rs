//! Backend selection: one `Balancer::pick` per strategy, over 2, 8 and 64 backends (all
//! eligible, some requests in flight so the power-of-two strategies compare real numbers).
//! Consistent hashing gets a different user hash each iteration (1,000 users).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyway_proxy::balance::{BackendSpec, Balancer, Candidates, InFlight, Strategy};
use keyway_proxy::hash::hash_key;
use std::hint::black_box;

const SIZES: [usize; 3] = [2, 8, 64];

/// What the data plane knows about its backends at pick time.
struct View {
    in_flight: InFlight,
    load: Vec<(f64, f64)>,
}

impl Candidates for View {
    fn len(&self) -> usize {
        self.in_flight.len()
    }

    fn eligible(&self, _i: usize) -> bool {
        true
    }

    fn in_flight(&self, i: usize) -> u64 {
        self.in_flight.get(i)
    }

    fn load(&self, i: usize) -> Option<(f64, f64)> {
        self.load.get(i).copied()
    }

    fn in_flight_summary(&self) -> Option<(u64, usize)> {
        Some((self.in_flight.total(), self.in_flight.len()))
    }
}

fn strategies() -> [(&'static str, Strategy); 5] {
    [
        ("round_robin", Strategy::RoundRobin),
        ("weighted_round_robin", Strategy::WeightedRoundRobin),
        ("least_request", Strategy::LeastRequest),
        (
            "consistent_hash",
            Strategy::ConsistentHash {
                load_factor: Strategy::DEFAULT_LOAD_FACTOR,
            },
        ),
        ("least_loaded", Strategy::LeastLoaded),
    ]
}

fn backend_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("backend_pick");
    g.throughput(Throughput::Elements(1));
    let users: Vec<u64> = (0..1_000)
        .map(|i| hash_key(format!("user-{i:04}").as_bytes()))
        .collect();
    for (name, strategy) in strategies() {
        for n in SIZES {
            let names: Vec<String> = (0..n).map(|i| format!("backend-{i}")).collect();
            let specs: Vec<BackendSpec<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, name)| BackendSpec {
                    name,
                    weight: 1 + (i % 3) as u32,
                })
                .collect();
            let balancer = Balancer::new(strategy, &specs);
            let view = View {
                in_flight: InFlight::new(n),
                load: (0..n).map(|i| (100.0, (i * 7 % 100) as f64)).collect(),
            };
            // A few requests in flight, unevenly spread.
            let _guards: Vec<_> = (0..n * 2)
                .map(|i| view.in_flight.start(i * i % n))
                .collect();
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    i = (i + 1) % users.len();
                    black_box(balancer.pick(black_box(Some(users[i])), &view))
                });
            });
        }
    }
    g.finish();
}

fn affinity_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("affinity_hash");
    let id = b"9f1c2a4e-7b3d-4c8e-a1f0-2d6b8e4c1a37";
    g.throughput(Throughput::Elements(1));
    g.bench_function("hash_key_uuid", |b| b.iter(|| hash_key(black_box(id))));
    g.finish();
}

criterion_group!(benches, backend_pick, affinity_hash);
criterion_main!(benches);
