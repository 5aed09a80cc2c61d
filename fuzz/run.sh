#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 10) on the committed seed corpus
# (fuzz/corpus/<target>, copied to a scratch dir so runs never dirty the repo). A crash fails
# the script; libFuzzer leaves the input in fuzz/artifacts/<target>/ — turn it into a
# regression test (tests/tests/hostile_input.rs) before fixing.
#
# Needs the nightly toolchain; cargo-fuzz is installed once into $KEYWAY_CACHE/tools.
# Without nightly it says so and exits 0: the stable harness in `cargo test` still runs the
# same targets (tests/tests/hostile_input.rs).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
cache="${KEYWAY_CACHE:-$HOME/.cache/keyway}"
export CARGO_TARGET_DIR="${KEYWAY_FUZZ_TARGET_DIR:-$cache/target-fuzz}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain; skipping cargo-fuzz (the stable harness runs in cargo test)"
  exit 0
fi
if [ ! -x "$cache/tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz into $cache/tools"
  cargo +nightly install cargo-fuzz --locked --root "$cache/tools"
fi
export PATH="$cache/tools/bin:$PATH"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^keyway-fuzz$')
cargo +nightly fuzz build --release
mkdir -p "$CARGO_TARGET_DIR/fuzz-logs"
for t in $targets; do
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/" 2>/dev/null || true
  log="$CARGO_TARGET_DIR/fuzz-logs/$t.log"
  echo "fuzz: $t for ${secs}s"
  if ! cargo +nightly fuzz run --release "$t" "$work" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    rm -rf "$work"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/; log $log)"
    exit 1
  fi
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed "s/^/fuzz:   $t /" || true
  rm -rf "$work"
done
echo "fuzz: all targets ran ${secs}s each without a crash"
