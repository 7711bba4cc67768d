#!/usr/bin/env bash
# One cluster-mode instance on a private PostgreSQL with pg_stat_statements, under
# `paygate loadgen` at RATE for SECONDS: the load's latency, the writer's statements (count,
# mean time sent → answered) from /metrics, and PostgreSQL's own time per statement.
# For A/B of two builds, interleave: for r in 1 2 3; do for b in A B; do BIN=$b scripts/cluster_one.sh 500; done; done
#   usage: [BIN=target/release/paygate] scripts/cluster_one.sh [RATE] [SECONDS]
set -euo pipefail
RATE=${1:-500}
SECONDS_=${2:-10}
BIN=$(realpath "${BIN:-target/release/paygate}")
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
D=$(mktemp -d /tmp/paygate-cluster-one.XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    as_pg "$PG/pg_ctl" -D "$D/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && chown postgres "$D"
PORT=$(free_port)
as_pg "$PG/initdb" -D "$D/data" -A trust -U postgres >/dev/null
cat >> "$D/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$D'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
CONF
as_pg "$PG/pg_ctl" -D "$D/data" -l "$D/postgres.log" -w start >/dev/null
psql() { command psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql -c "CREATE DATABASE paygate" -c '\c paygate' -c "CREATE EXTENSION pg_stat_statements"
start() { # command..., waits for its `... listening on ADDR` line
    "$@" > "$D/$$.$RANDOM.log" 2>&1 &
    pids+=($!)
}
S1=$(free_port); S2=$(free_port); GW=$(free_port); M=$(free_port)
start "$BIN" processor-sim --listen "127.0.0.1:$S1" --fee 0.05
start "$BIN" processor-sim --listen "127.0.0.1:$S2" --fee 0.15
start "$BIN" serve --listen "127.0.0.1:$GW" --metrics-listen "127.0.0.1:$M" --instance-id one \
    --database-url "postgres://postgres@127.0.0.1:$PORT/paygate" \
    --processor "default=http://127.0.0.1:$S1" --processor "fallback=http://127.0.0.1:$S2"
for _ in $(seq 100); do curl -sf "127.0.0.1:$GW/health" >/dev/null && break; sleep 0.1; done
psql paygate -c "SELECT pg_stat_statements_reset()" >/dev/null
"$BIN" loadgen --url "http://127.0.0.1:$GW" --rate "$RATE" --duration "$SECONDS_" --json "$D/loadgen.json" 2>&1 | grep -E "errors|latency"
sleep 1
curl -s "127.0.0.1:$M/metrics" | grep -E "^paygate_cluster_commit_(duration_seconds|operations)_(sum|count)"
psql paygate -c "SELECT calls, round(mean_exec_time::numeric, 3) AS exec_ms, rows,
    left(regexp_replace(query, '\s+', ' ', 'g'), 50) AS statement FROM pg_stat_statements ORDER BY calls DESC LIMIT 5"
