# Keyway's habits in one place. `make test` is THE test command (README, .ci/run).
# Build output and tool caches live outside the clone so repeated runs (and CI on the same
# machine) reuse them; nothing depends on them being there.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/keyway/target
export KEYWAY_CACHE ?= $(HOME)/.cache/keyway

.PHONY: test tools build unit e2e fmt fmt-check clippy lint lint-helm generate demo fuzz fuzz-smoke

## Everything: tools for the e2e (built once, cached), all binaries, every test, then every
## fuzz target for a short bounded time (docs/reliability.md).
test: tools build
	cargo test --workspace --locked
	$(MAKE) fuzz-smoke

## cargo-fuzz (nightly; installed once into $(KEYWAY_CACHE)/tools): each target for
## FUZZ_SECS seconds on the committed corpus. Without nightly it is skipped with a note; the
## same targets run on stable in `cargo test` (tests/tests/hostile_input.rs).
FUZZ_SECS ?= 10
fuzz-smoke:
	fuzz/run.sh $(FUZZ_SECS)

## A longer fuzzing session: make fuzz FUZZ_SECS=600
fuzz: fuzz-smoke

## kube-apiserver, etcd and helm built from their Go modules into $(KEYWAY_CACHE)/bin;
## prometheus/promtool, redis-server, chromium and chromium-driver from Debian if missing
## (the status page browser test); monitoring CRDs.
tools:
	e2e/tools/install.sh

build:
	cargo build --workspace --bins --locked

## Only the tests that need no Kubernetes.
unit:
	cargo test --workspace --locked --exclude keyway-e2e

e2e: tools build
	cargo test -p keyway-e2e --locked -- --nocapture

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

lint: fmt-check clippy

## The chart: helm lint (the e2e also renders it and dry-runs it against an API server).
lint-helm: tools
	$(KEYWAY_CACHE)/bin/helm lint --strict charts/keyway

## Regenerate the CRDs from the Rust types (a test fails when they drift).
generate:
	cargo run -q -p keyway-controller --locked -- crd --out crds
	cargo run -q -p keyway-controller --locked -- crd --out charts/keyway/crds

## Run Keyway locally against two mock upstreams.
demo:
	cargo run -q -p keyway-testkit --bin keyway-demo --locked

## Benchmarks (docs/performance.md): Keyway vs direct, nginx, haproxy, LiteLLM side by side,
## the same over TLS to the upstream (HTTP/1.1 and HTTP/2), SSE timing, micro-benchmarks,
## control plane; ~18 min + builds, writes bench/results/<date>.md.
## (Phony: a directory named bench/ exists.)
.PHONY: bench bench-smoke
bench:
	bench/run.sh

## The benchmark harness end to end in ~2 min (debug build, short loads, the TLS parts too);
## fails on any error.
bench-smoke:
	bench/run.sh --smoke
