# syntax=docker/dockerfile:1.7
# One image, both binaries. Build: docker build -t keyway:dev .
# Run:   docker run keyway:dev --config /etc/keyway/keyway.yaml            (proxy, the default)
#        docker run --entrypoint keyway-controller keyway:dev              (controller)
# No container engine runs on the development machines; this file is kept conventional and
# reviewed by reading (see README).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first: manifests plus stub sources, so this layer is reused until Cargo.lock or
# a Cargo.toml changes.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY api/Cargo.toml api/
COPY proto/Cargo.toml proto/
COPY controller/Cargo.toml controller/
COPY proxy/Cargo.toml proxy/
COPY tests/Cargo.toml tests/
COPY e2e/Cargo.toml e2e/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo fetch --locked
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p keyway-controller -p keyway-proxy \
 && mkdir -p /out \
 && cp target/release/keyway-controller target/release/keyway-proxy /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keyway-controller /out/keyway-proxy /usr/local/bin/
USER nonroot:nonroot
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/keyway-proxy"]
