//! Hostile input on stable Rust, inside `cargo test`: the bodies of the cargo-fuzz targets
//! (`fuzz/src/lib.rs`) run on their committed seed corpus, on every saved regression input
//! (`fuzz/regressions/<target>/`), and on random mutations of the seeds for a bounded time
//! (`KEYWAY_FUZZ_SECS` per target, default 2). The mutator is a small deterministic one
//! (seed printed, `KEYWAY_FUZZ_SEED` to replay); coverage-guided fuzzing is `fuzz/run.sh`.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\"model\":",
    b"\"stream\":true",
    b"\"usage\":{",
    b"data: ",
    b"\n\n",
    b"\r\n",
    b"[DONE]",
    b"1e999",
    b"-1",
    b"99999999999999999999",
    b"\\u0000",
    b"\"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b"*2147483647\r\n",
    b"$1048577\r\n",
    b"retry-after: ",
    b"x-ratelimit-reset-requests: ",
    b"---\n",
    b"${",
    b"&anchor",
    b"*anchor",
    b"!!binary ",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = *b"\0\xff\"{}[]:\r\n$*-0".get(rng.below(16)).unwrap_or(&0);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 => input.truncate(rng.below(len + 1)),
            _ => {
                let at = rng.below(len + 1);
                let n = rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    input.truncate(64 * 1024);
}

fn run_one(name: &str, f: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        panic!(
            "fuzz target {name} panicked on input {:?}; save it under fuzz/regressions/{name}/",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_random_mutations() {
    let secs: f64 = std::env::var("KEYWAY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("KEYWAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b65_7977_6179);
    std::thread::scope(|scope| {
        for &(name, f) in targets::TARGETS {
            scope.spawn(move || {
                let seeds = files(&fuzz_dir().join("corpus").join(name));
                assert!(!seeds.is_empty(), "no seed corpus for {name}");
                for input in seeds
                    .iter()
                    .chain(&files(&fuzz_dir().join("regressions").join(name)))
                {
                    run_one(name, f, input);
                }
                let mut rng = Rng(seed ^ name.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                let mut runs = 0u64;
                while Instant::now() < deadline {
                    let mut input = seeds[rng.below(seeds.len())].clone();
                    mutate(&mut rng, &seeds, &mut input);
                    run_one(name, f, &input);
                    runs += 1;
                }
                eprintln!("[hostile input] {name}: {runs} mutated inputs in {secs}s (seed {seed})");
            });
        }
    });
}
