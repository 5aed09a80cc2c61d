# syntax=docker/dockerfile:1.7
# One image, both binaries (keyway-proxy is the entrypoint; the chart's controller Deployment
# sets `command: [/usr/local/bin/keyway-controller]`).
#   Build: docker build -t keyway:dev .
#   Run:   docker run keyway:dev --config /etc/keyway/keyway.yaml            (proxy, the default)
#          docker run --entrypoint /usr/local/bin/keyway-controller keyway:dev (controller)
# No container engine runs on the development machines: the tests run the same layout built by
# e2e/image/build.sh (binaries in /usr/local/bin, user 65532:65532, entrypoint keyway-proxy; a
# test keeps the two in step), with this machine's glibc in place of the distroless base.

# --- build -----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies, in their own layer: the manifests, the lock file and stub sources for every
#    workspace target, so that this layer (all third-party crates compiled) is reused until
#    Cargo.lock, a Cargo.toml or the .proto contract changes. Cargo loads the whole workspace,
#    so every declared target needs a file: the stubs are generated from the manifests
#    (explicit `path = ...` and `[[bench]]` names), not listed by hand.
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/
COPY proto/Cargo.toml proto/build.rs proto/
COPY proto/proto proto/proto
COPY controller/Cargo.toml controller/
COPY proxy/Cargo.toml proxy/
COPY tests/Cargo.toml tests/
COPY e2e/Cargo.toml e2e/
RUN set -eu; \
    for m in api proto controller proxy tests e2e; do \
      mkdir -p "$m/src"; \
      echo '// dependency-layer stub' > "$m/src/lib.rs"; \
      sed -n 's/^path = "\(.*\)"$/\1/p' "$m/Cargo.toml" | while read -r p; do \
        mkdir -p "$m/$(dirname "$p")"; echo 'fn main() {}' > "$m/$p"; \
      done; \
      sed -n '/^\[\[bench\]\]/,/^name/ s/^name = "\(.*\)"$/\1/p' "$m/Cargo.toml" | while read -r b; do \
        mkdir -p "$m/benches"; echo 'fn main() {}' > "$m/benches/$b.rs"; \
      done; \
    done
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --locked --release -p keyway-controller -p keyway-proxy

# 2. The real sources of the crates in the image (tests/, e2e/ and docs do not invalidate
#    this layer). Touch them so Cargo rebuilds the workspace crates over their stubs whatever
#    the mtimes the build context carries.
COPY api api
COPY proto proto
COPY controller controller
COPY proxy proxy
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    set -eu; \
    find api proto controller proxy -name '*.rs' -exec touch {} +; \
    cargo build --locked --release -p keyway-controller -p keyway-proxy; \
    mkdir -p /out; \
    cp target/release/keyway-controller target/release/keyway-proxy /out/; \
    /out/keyway-controller --version; /out/keyway-proxy --version

# --- runtime ---------------------------------------------------------------------------------
# glibc + libgcc + CA certificates, no shell, no package manager; uid/gid 65532 (nonroot),
# which the chart's runAsNonRoot/runAsUser expect.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="keyway" \
      org.opencontainers.image.description="Kubernetes-native load balancer for LLM APIs: keyway-controller and keyway-proxy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/keyway-controller /out/keyway-proxy /usr/local/bin/
USER 65532:65532
# proxy traffic, proxy admin, controller gRPC, controller admin, controller webhook
EXPOSE 8080 9901 8443 9902 9443
ENTRYPOINT ["/usr/local/bin/keyway-proxy"]
