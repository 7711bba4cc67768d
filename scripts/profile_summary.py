#!/usr/bin/env python3
"""Summarises a perf.data (CPU share per thread and the hottest symbols) into
perf/results/profile.json, and renders perf/flamegraph.svg from it, for perf.md.
Usage: scripts/profile_summary.py PERF_DATA "what load produced it" """
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
data, load = sys.argv[1], sys.argv[2]


def report(*args):
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none", *args],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        pct, _, rest = line.partition("%")
        try:
            rows.append((float(pct), " ".join(rest.split())))
        except ValueError:
            pass
    return rows


threads = report("--sort", "comm")
symbols = report("--sort", "comm,dso,sym")[:25]
stacks = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True, check=True).stdout
folded = subprocess.run(["inferno-collapse-perf"], input=stacks, capture_output=True, text=True, check=True).stdout
svg = subprocess.run(["inferno-flamegraph", "--minwidth", "0.2", "--title", f"paygate: {load}"],
                     input=folded, capture_output=True, text=True, check=True).stdout
(ROOT / "perf" / "flamegraph.svg").write_text(svg)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
out = {"load": load, "commit": commit, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "threads": threads, "top_symbols": symbols}
(ROOT / "perf" / "results" / "profile.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out["threads"]))
