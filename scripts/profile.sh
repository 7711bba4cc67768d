#!/usr/bin/env bash
# Runs a k6 scenario with the gateway under `perf record -g -e cpu-clock`, then renders a
# flamegraph with inferno. Usage: scripts/profile.sh OUTDIR [SCENARIO]
# Leaves OUTDIR/perf.data, OUTDIR/flamegraph.svg and OUTDIR/SCENARIO.json; exits with k6's
# status (a failed threshold still leaves the profile).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: profile.sh OUTDIR [SCENARIO]}
scenario=${2:-contest}
mkdir -p "$out"
rm -f "$out/perf.data"
command -v perf >/dev/null || { echo "perf is not installed: run 'just setup-perf'" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "inferno is not installed: run 'just setup'" >&2; exit 1; }

status=0
GATEWAY_CMD_PREFIX="perf record -g -e cpu-clock -F 999 -o $out/perf.data --" \
RESULTS="$out/$scenario.json" \
    bash loadtest/run.sh "$scenario" || status=$?

test -s "$out/perf.data" || { echo "perf.data is missing or empty" >&2; exit 1; }
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/stacks.folded"
inferno-flamegraph --title "paygate under k6 $scenario ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))" \
    < "$out/stacks.folded" > "$out/flamegraph.svg"
echo "profile: $out/perf.data ($(du -h "$out/perf.data" | cut -f1)), flamegraph: $out/flamegraph.svg"
exit "$status"
