# paygate container image.
#   docker build -t paygate .                              # tuned for the build host's CPU
#   docker build --build-arg TARGET_CPU=x86-64-v3 -t paygate .   # portable (AVX2-era x86-64)
#   docker run -p 9999:9999 paygate                        # gateway + built-in simulated processors
#   docker run -p 8080:8080 paygate processor-sim --fee 0.05
#
# TARGET_CPU=native means the CPU of the machine that builds the image: fastest there, but
# the binary may crash with "illegal instruction" on an older CPU. Use x86-64-v3 (or
# x86-64-v2) for images that travel.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
ARG TARGET_CPU=native
ENV RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    CARGO_TERM_COLOR=never
WORKDIR /build

# Dependencies first, in their own layer: a stub crate with the real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for b in hot_paths journal recovery; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches

# Then the real sources; only this layer rebuilds when the code changes.
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/paygate /paygate \
    && mkdir -p /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /paygate /usr/local/bin/paygate
COPY --from=builder --chown=65532:65532 /data /data
ENV PAYGATE_DATA_DIR=/data \
    PAYGATE_LISTEN=0.0.0.0:9999
VOLUME ["/data"]
EXPOSE 9999
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/paygate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/paygate"]
CMD ["serve"]
