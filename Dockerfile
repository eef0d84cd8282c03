# Multi-stage build of the gate. Needs an image registry (rust and debian base images), so
# it cannot be built on a machine without one; the binary itself builds with `cargo build
# --release` anywhere Rust and cmake are.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY examples/docker.toml /etc/sluice/sluice.toml
USER sluice
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
