# paygate — common tasks. `just --list` shows them all.

# Native CPU for local builds; override with `just TARGET_CPU=x86-64-v3 build`.
TARGET_CPU := env_var_or_default("TARGET_CPU", "native")

# Start the gateway on :9999 with two built-in simulated processors.
run *ARGS:
    RUSTFLAGS="-C target-cpu={{TARGET_CPU}}" cargo run --release -- serve {{ARGS}}

# Run every test (unit, property, end-to-end).
test:
    cargo test --all-targets

# Release build tuned for this machine's CPU.
build:
    RUSTFLAGS="-C target-cpu={{TARGET_CPU}}" cargo build --release

# Run a processor simulator (e.g. `just sim --listen 127.0.0.1:8001 --fee 0.05`).
sim *ARGS:
    RUSTFLAGS="-C target-cpu={{TARGET_CPU}}" cargo run --release -- processor-sim {{ARGS}}

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
