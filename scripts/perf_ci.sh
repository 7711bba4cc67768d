#!/usr/bin/env bash
# The perf-tests CI job: the contest scenario with the gateway under perf record, then
# results.json (p99, inconsistencies, lag, per-processor counts, commit) next to perf.data,
# flamegraph.svg and the k6 summary. Fails on any inconsistency or lag.
# Usage: scripts/perf_ci.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: perf_ci.sh OUTDIR}
status=0
bash scripts/profile.sh "$out" contest || status=$?
python3 - "$out/contest.json" "$out/results.json" <<'PY'
import json, subprocess, sys
k6 = json.load(open(sys.argv[1]))
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
results = {
    "commit": commit,
    "p99_ms": k6["p99_ms"],
    "inconsistencies": k6["inconsistencies"],
    "lag": k6["lag"],
    "payments": k6["payments"],
    "profit": k6.get("profit"),
    "ok": k6["inconsistencies"] == 0 and k6["lag"] == 0,
}
json.dump(results, open(sys.argv[2], "w"), indent=1)
print(json.dumps(results))
sys.exit(0 if results["ok"] else 1)
PY
exit "$status"
