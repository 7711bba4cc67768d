#!/usr/bin/env bash
# A/B latency with every party on its own CPUs, for a machine with enough cores: gateway on
# CPUs 0-1 (the contest's budget), simulators on 2-5, the load generator on 6-9. Runs each
# gateway binary and the bare hyper floor interleaved, RUNS times, and writes loadgen JSON
# files to OUTDIR/<label>-<run>.json.
# Usage: scripts/pinned_ab.sh OUTDIR RATE DURATION RUNS LABEL=BINARY... [floor=BARE_BINARY]
# The first binary also serves as simulator and load generator. Env: GW_ARGS (extra
# `paygate serve` arguments), LOADGEN_ARGS (extra loadgen arguments, e.g. a sweep), and the
# CPU sets GW_CPUS, DEFAULT_CPUS, FALLBACK_CPUS, LOAD_CPUS.
set -euo pipefail
out=$1 rate=$2 duration=$3 runs=$4
# CPU sets (override on smaller machines).
gw_cpus=${GW_CPUS:-0-1} default_cpus=${DEFAULT_CPUS:-2-3} fallback_cpus=${FALLBACK_CPUS:-4-5} load_cpus=${LOAD_CPUS:-6-9}
shift 4
mkdir -p "$out"
labels=() bins=()
for kv in "$@"; do labels+=("${kv%%=*}"); bins+=("${kv#*=}"); done
tool=${bins[0]}
work=$(mktemp -d)
# On any exit, stop whatever is still running (some may have exited already) and clean up.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# start NAME CPUS CMD... : starts CMD pinned to CPUS, waits for "listening on ADDR", sets $addr.
start() {
    local name=$1 cpus=$2; shift 2
    taskset -c "$cpus" "$@" > "$work/$name.out" 2> "$work/$name.err" &
    pids[$name]=$!
    for _ in $(seq 300); do
        # Polls the output: grep finds nothing until the line is printed.
        addr=$(grep -m1 -o 'listening on [0-9.:]*' "$work/$name.out" 2>/dev/null | cut -d' ' -f3 || true)
        [ -n "$addr" ] && return 0
        sleep 0.1
    done
    echo "$name did not start" >&2; cat "$work/$name.err" >&2; exit 1
}

declare -A pids
for run in $(seq "$runs"); do
    order=("${!labels[@]}")
    if (( run % 2 == 0 )); then order=($(printf '%s\n' "${order[@]}" | tac)); fi
    for i in "${order[@]}"; do
        label=${labels[$i]} bin=${bins[$i]}
        rm -rf "$work/data"
        start default "$default_cpus" "$tool" processor-sim --listen 127.0.0.1:0 --fee 0.05; d=$addr
        start fallback "$fallback_cpus" "$tool" processor-sim --listen 127.0.0.1:0 --fee 0.15; f=$addr
        if [ "$label" = floor ]; then
            start gw "$gw_cpus" "$bin" 127.0.0.1:0
        else
            # shellcheck disable=SC2086 # GW_ARGS is a word list
            start gw "$gw_cpus" "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
                --processor "default=http://$d" --processor "fallback=http://$f" ${GW_ARGS:-}
        fi
        echo "run $run $label" >&2
        # shellcheck disable=SC2086 # LOADGEN_ARGS is a word list (e.g. a --sweep)
        taskset -c "$load_cpus" "$tool" loadgen --url "http://$addr" --rate "$rate" --duration "$duration" \
            --json "$out/$label-$run.json" ${LOADGEN_ARGS:-} 2>/dev/null
        for n in gw default fallback; do
            # A process that died during the run makes the run worthless: say so and stop.
            if ! kill -0 "${pids[$n]}" 2>/dev/null; then
                echo "$n exited during run $run $label" >&2; cat "$work/$n.err" >&2; exit 1
            fi
            kill -TERM "${pids[$n]}"
            # Its exit status after SIGTERM is not an error.
            wait "${pids[$n]}" 2>/dev/null || true
        done
    done
done
