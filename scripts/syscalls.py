#!/usr/bin/env python3
"""System calls per payment of the gateway process, by call, under an open-model load.

Starts two simulators and the gateway (release build), attaches `strace -c` to every thread of
the gateway, runs `paygate loadgen` at RATE for DURATION seconds, detaches, and divides each
call's count by the payments answered (with no warm-up: every payment traced is counted).
strace slows the process down, so latency under it means nothing; the counts are what this is
for (a group commit's `fdatasync` per payment falls as the rate grows, a `write` per answer
does not).

    python3 scripts/syscalls.py [--rate 500] [--duration 10] [--json perf/results/syscalls.json]
"""

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, Stack, build, gateway_argv  # noqa: E402


def strace_summary(path):
    """{syscall: calls} from `strace -c` output."""
    calls = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0].replace(".", "", 1).isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--gateway-args", default="", help="extra `paygate serve` arguments, space-separated")
    a = ap.parse_args()
    binary = build("release")
    stack = Stack(binary, gateway_argv(binary, a.gateway_args.split()))
    try:
        pid = stack.server.p.pid
        tids = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
        out = stack.dir / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *[x for t in tids for x in ("-p", t)]],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1)
        report = stack.dir / "load.json"
        subprocess.run([str(binary), "loadgen", "--url", f"http://{stack.server.addr}", "--rate", str(a.rate),
                        "--duration", str(a.duration), "--warmup", "0", "--json", str(report)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        load = json.loads(report.read_text())
        calls = strace_summary(out)
    finally:
        stack.stop()
    ok = max(1, load["ok"])
    per = {k: round(v / ok, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
    result = {"rate": a.rate, "duration_s": a.duration, "payments": load["ok"], "syscalls_per_payment": round(sum(calls.values()) / ok, 2),
              "by_call": per, "gateway_args": a.gateway_args, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
