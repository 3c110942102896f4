# syntax=docker/dockerfile:1.7
# wasm-broker image: the broker binary and the shipped plugins, run as a
# non-root user on a read-only root filesystem. Build from the repository root:
#   docker build -t wasm-broker:0.1.0 .
# State (SQLite) goes on a volume at /var/lib/wasm-broker; configuration at
# /etc/wasm-broker/broker.toml (mount your own over the default).

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# The plugins are WebAssembly components (rust-toolchain.toml pins the target).
RUN rustup target add wasm32-wasip2
COPY . .
# Cache mounts keep the registry and build artifacts between builds; the
# results are copied out of the cached target/ within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wasm-broker \
 && cargo xtask build-plugins \
 && install -D -m 0755 target/release/wasm-broker /out/wasm-broker \
 && install -D -m 0644 -t /out/plugins plugins/dist/*.wasm

# distroless/cc: glibc and libgcc for the Rust binary, CA certificates, no
# shell or package manager; "nonroot" is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wasm-broker /usr/local/bin/wasm-broker
COPY --from=build /out/plugins/ /plugins/
COPY deploy/docker/broker.toml /etc/wasm-broker/broker.toml
ENV WASM_BROKER_CONFIG=/etc/wasm-broker/broker.toml
USER 65532:65532
VOLUME ["/var/lib/wasm-broker"]
EXPOSE 8080
# No HEALTHCHECK: the image has no shell or HTTP client to run one; the
# orchestrator probes GET /healthz (liveness) and GET /readyz (readiness).
ENTRYPOINT ["/usr/local/bin/wasm-broker"]
CMD ["serve"]
