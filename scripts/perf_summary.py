#!/usr/bin/env python3
"""Prints a markdown table of a perf-ci results.json (for the GitHub job summary)."""
import json
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else "target/perf-ci/results.json")
if not path.exists():
    print(f"### perf-tests\n\nNo results: `{path}` was not written (see the job log).")
    sys.exit(0)
r = json.loads(path.read_text())
status = "✅ consistent, no lag" if r["ok"] else "❌ inconsistencies or lag"
print("### perf-tests: contest scenario\n")
print("| p99 (ms) | inconsistencies | lag | " + " | ".join(f"{k} payments" for k in r["payments"]) + " | commit |")
print("|---|---|---|" + "---|" * len(r["payments"]) + "---|")
print(f"| {r['p99_ms']:.2f} | {r['inconsistencies']} | {r['lag']} | " + " | ".join(str(v) for v in r["payments"].values()) + f" | `{r['commit'][:12]}` |")
print(f"\n{status}. Artifacts: perf.data (`perf report -i perf.data`), flamegraph.svg, contest.json, results.json.")
