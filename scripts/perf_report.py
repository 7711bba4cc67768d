#!/usr/bin/env python3
"""Runs paygate's performance matrix and regenerates perf.md's result tables.

Every table in perf.md between `<!-- perf-report:NAME -->` and `<!-- /perf-report:NAME -->`
is written here from the JSON results in perf/results/, never by hand. Each comparison runs
A and B interleaved (ABBA order), 3 runs each by default, on the same machine in the same
session, and reports medians and the spread (min–max) of every run.

    python3 scripts/perf_report.py                      # everything (~40 min on 2 cores)
    python3 scripts/perf_report.py --only matrix --strategies lto,fsync
    python3 scripts/perf_report.py --render             # re-render perf.md from saved JSON
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, Stack, build, gateway_argv  # noqa: E402
from pgo import build_pgo  # noqa: E402

RESULTS = ROOT / "perf" / "results"
PERF_MD = ROOT / "perf.md"

# name -> how to build it (one factor differs from "release").
VARIANTS = {
    "release": {},
    "lto-off": {"env": {"CARGO_PROFILE_RELEASE_LTO": "false"}},
    "cgu-16": {"env": {"CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16"}},
    "unwind": {"env": {"CARGO_PROFILE_RELEASE_PANIC": "unwind"}},
    "generic-cpu": {"rustflags": "-C target-cpu=x86-64"},
    "system-alloc": {"cargo_args": ["--no-default-features", "--features", "foldhash,json-fast-path"]},
    "siphash": {"cargo_args": ["--no-default-features", "--features", "mimalloc,json-fast-path"]},
    "simd-json": {"cargo_args": ["--no-default-features", "--features", "mimalloc,foldhash,simd-json"]},
    "fxhash": {"cargo_args": ["--no-default-features", "--features", "mimalloc,json-fast-path,fxhash"]},
    "no-thp": {"cargo_args": ["--features", "mimalloc-no-thp"]},
    # Code changes, measured against the commit just before them.
    "before-lazy-sync": {"ref": "08d17f8"},
    "before-intent-at-accept": {"ref": "e1399a4"},
    "before-edge": {"ref": "a6d3c39"},
    "before-writev": {"ref": "f11d367"},
    "with-writev-false": {"ref": "49a582a"},
    "mutex-receiver": {"ref": "52e825f"},
    "mpmc-receiver": {"ref": "6e4e3c4"},
    "before-lazy-batch": {"ref": "d264191"},
    "before-dsync": {"ref": "780e444"},
    "dsync": {"ref": "cf6383a"},
    "before-history": {"ref": "dec96a0"},
    "before-cluster": {"ref": "b4270b0"},
    # Built by scripts/pgo.py: instrumented build, training load, profile-use build.
    "pgo": {"pgo": True},
}

# strategy -> (title, (variant A, gateway args A), (variant B, gateway args B))
STRATEGIES = {
    "lto": ("Fat LTO vs no LTO", ("release", []), ("lto-off", [])),
    "codegen-units": ("codegen-units 1 vs 16", ("release", []), ("cgu-16", [])),
    "panic": ("panic=abort vs unwind", ("release", []), ("unwind", [])),
    "target-cpu": ("target-cpu=native vs generic x86-64", ("release", []), ("generic-cpu", [])),
    "allocator": ("mimalloc vs system allocator", ("release", []), ("system-alloc", [])),
    "hash": ("keyed foldhash vs SipHash for the ledger's maps", ("release", []), ("siphash", [])),
    "keyed-hash": ("keyed foldhash vs unkeyed FxHash for the ledger's maps", ("release", []), ("fxhash", [])),
    "edge": ("server edge (header/idle/body timeouts, connection limit, drain) vs the commit before it",
             ("release", ["--metrics-listen", "127.0.0.1:0"]), ("before-edge", ["--metrics-listen", "127.0.0.1:0"])),
    "writev": ("server answers with one write vs a writev of head and body",
               ("with-writev-false", ["--metrics-listen", "127.0.0.1:0"]), ("before-writev", ["--metrics-listen", "127.0.0.1:0"])),
    "mpmc": ("dispatch workers on an MPMC channel (async-channel) vs one receiver behind a tokio Mutex",
             ("mpmc-receiver", ["--metrics-listen", "127.0.0.1:0"]), ("mutex-receiver", ["--metrics-listen", "127.0.0.1:0"])),
    "route-at-accept": ("routing at acceptance (intent in the acceptance's sync) on vs off",
                        ("release", ["--route-at-accept", "on"]), ("release", ["--route-at-accept", "off"])),
    "metrics": ("Prometheus metrics on vs off (--metrics-listen off times nothing)",
                ("release", ["--metrics-listen", "127.0.0.1:0"]), ("release", ["--metrics-listen", "off"])),
    "simd-json": ("request bodies by the exact-layout fast path vs by simd-json", ("release", []), ("simd-json", [])),
    "pgo": ("profile-guided (PGO) release build vs the release build", ("pgo", []), ("release", [])),
    "fsync": ("--fsync on vs off", ("release", ["--fsync", "on"]), ("release", ["--fsync", "off"])),
    "prealloc": ("journal segments zero-filled ahead (1 MiB) vs appended", ("release", []), ("release", ["--journal-prealloc-kib", "0"])),
    "workers": ("tokio worker threads: 2 vs 1", ("release", ["--worker-threads", "2"]), ("release", ["--worker-threads", "1"])),
    "runtime": ("tokio current_thread runtime vs the work-stealing pool (one worker per core)",
                ("release", ["--runtime", "current-thread"]), ("release", ["--runtime", "multi-thread"])),
    "runtime-1": ("tokio current_thread runtime vs a work-stealing pool of one worker",
                  ("release", ["--runtime", "current-thread"]), ("release", ["--worker-threads", "1"])),
    "lazy-sync": ("processors' answers as lazy (unsynced) records vs synced", ("release", []), ("before-lazy-sync", [])),
    "intent-at-accept": ("intent journaled with the acceptance vs by dispatch", ("release", []), ("before-intent-at-accept", [])),
    "lazy-batch": ("processors' answers held back to ride with the next acceptance vs sent to the writer at once",
                   ("release", []), ("before-lazy-batch", [])),
    "dsync": ("group commit as one pwritev2(RWF_DSYNC) vs pwrite + fdatasync", ("dsync", []), ("before-dsync", [])),
    "thp": ("mimalloc with transparent huge pages (its default) vs without (feature mimalloc-no-thp)", ("release", []), ("no-thp", [])),
}


def loadgen(tool, url, rate, duration, out, extra=()):
    cmd = [str(tool), "loadgen", "--url", url, "--rate", str(rate), "--duration", str(duration), "--json", str(out), *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(Path(out).read_text())


def cpu_times():
    """The machine's CPU time counters (first line of /proc/stat), in ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def with_steal(fn):
    """Runs fn() and adds to its result the share of CPU time the hypervisor stole meanwhile
    (`steal` in /proc/stat): on a shared VM it is the noise no code change can remove."""
    before = cpu_times()
    result = fn()
    delta = [b - a for a, b in zip(before, cpu_times())]
    result["steal_pct"] = round(100 * delta[7] / max(1, sum(delta[:8])), 1)
    return result


def process_counters(pid):
    """Counters of process `pid` so far, in one pass over its threads: CPU seconds (user +
    system) in all and by thread name (the runtime's thread — `paygate` for current_thread,
    `tokio-rt-worker` for the pool —, `journal-writer`, blocking-pool threads), context
    switches (voluntary + involuntary) and minor page faults."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    counters = {"cpu_s": (int(fields[11]) + int(fields[12])) / tick, "minflt": int(fields[7]), "cs": 0, "by_thread": {}}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            tfields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        counters["by_thread"][name] = counters["by_thread"].get(name, 0.0) + (int(tfields[11]) + int(tfields[12])) / tick
        counters["cs"] += sum(int(line.split()[1]) for line in status if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")))
    return counters


def with_server_cost(pid, fn, count="ok"):
    """Runs fn() (a load step) and adds the server's CPU time and context switches per request
    answered (`count` names the result's count of answered requests), in all and by thread
    name: stable on a shared VM where latency is not."""
    before = process_counters(pid)
    result = fn()
    after = process_counters(pid)
    n = max(1, result.get(count, 0))
    result["server_cpu_us_per_req"] = round((after["cpu_s"] - before["cpu_s"]) * 1e6 / n, 1)
    result["server_cs_per_req"] = round((after["cs"] - before["cs"]) / n, 2)
    result["server_minflt_per_req"] = round((after["minflt"] - before["minflt"]) / n, 4)
    result["server_cpu_us_per_req_by_thread"] = {
        name: round((cpu - before["by_thread"].get(name, 0.0)) * 1e6 / n, 1) for name, cpu in sorted(after["by_thread"].items())}
    return result


def one_run(bins, variant, args, rate, duration, tag, sweep=None, server=None):
    """Starts simulators + gateway (or `server` argv), runs loadgen, stops everything."""
    argv = server or gateway_argv(bins[variant], args)
    marker = "bare-hyper listening on " if server else "paygate listening on "
    stack = Stack(bins["release"], argv, server_marker=marker)
    try:
        out = stack.dir / f"{tag}.json"
        extra = sweep or ["--warmup", "1"]
        pid = stack.server.p.pid
        return with_steal(lambda: with_server_cost(pid, lambda: loadgen(bins["release"], f"http://{stack.server.addr}", rate, duration, out, extra)))
    finally:
        stack.stop()


def interleaved(runs, sides, run_side):
    """ABBA interleaving: returns {side: [result, ...]}."""
    got = {s: [] for s in sides}
    for i in range(runs):
        order = sides if i % 2 == 0 else list(reversed(sides))
        for s in order:
            print(f"  run {i + 1}/{runs} {s}", flush=True)
            got[s].append(run_side(s))
    return got


def save(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["machine"] = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {cpu}"


def commit():
    """HEAD, with `-dirty` when what the binaries are built from differs from it (the run
    measured uncommitted code; edits to perf.md or results do not count)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    built_from = ["src", "benches", "examples", "Cargo.toml", "Cargo.lock", ".cargo"]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *built_from], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"{head}-dirty" if dirty else head


# ---------------------------------------------------------------- experiments

def run_matrix(bins, strategies, runs, rate, duration):
    for name in strategies:
        title, (va, aa), (vb, ab) = STRATEGIES[name]
        print(f"[matrix] {name}: {title}", flush=True)
        sides = {"A": (va, aa), "B": (vb, ab)}
        got = interleaved(runs, ["A", "B"], lambda s: one_run(bins, sides[s][0], sides[s][1], rate, duration, f"{name}-{s}"))
        save(f"matrix-{name}", {"title": title, "rate": rate, "duration_s": duration, "commit": commit(),
                                "A": {"variant": va, "args": aa, "runs": got["A"]},
                                "B": {"variant": vb, "args": ab, "runs": got["B"]}})


def run_targets(bins, runs, duration):
    print("[targets] paygate vs bare hyper at 2000/s, fsync on", flush=True)
    bare = [str(bins["bare"]), "127.0.0.1:0"]
    got = interleaved(runs, ["paygate", "bare"], lambda s: one_run(
        bins, "release", ["--fsync", "on"], 2000, duration, f"target-{s}", server=bare if s == "bare" else None))
    save("targets-2000", {"rate": 2000, "duration_s": duration, "commit": commit(), "paygate": got["paygate"], "bare": got["bare"]})


def run_sweep(bins, runs, step_s):
    print("[sweep] highest rate with p99 <= 1 ms: fsync on, off, and the bare hyper floor", flush=True)
    sweep = ["--sweep", "--sweep-start", "1000", "--sweep-step", "1000", "--sweep-max", "12000", "--p99-bound-ms", "1.0", "--warmup", "1"]
    bare = [str(bins["bare"]), "127.0.0.1:0"]
    got = interleaved(runs, ["on", "off", "bare"], lambda s: one_run(
        bins, "release", ["--fsync", s], 1000, step_s, f"sweep-{s}", sweep=sweep, server=bare if s == "bare" else None))
    save("sweep", {"step_s": step_s, "commit": commit(), **got})


# side -> (variant, gateway arguments); `--contest-sides` picks some (the bare floor always runs).
CONTEST_SIDES = {
    "paygate": ("release", []),
    "paygate-fsync-off": ("release", ["--fsync", "off"]),
    "paygate-multi-thread": ("release", ["--runtime", "multi-thread"]),
    "paygate-dsync": ("dsync", []),
    "paygate-before-lazy-batch": ("before-lazy-batch", []),
    "paygate-before-history": ("before-history", []),
    "paygate-before-cluster": ("before-cluster", []),
}
DEFAULT_CONTEST_SIDES = "paygate,paygate-fsync-off,paygate-multi-thread"


def run_contest(bins, runs, sides):
    print(f"[contest] k6 contest scenario: {', '.join(sides)} vs bare hyper", flush=True)

    def side(s):
        server = [str(bins["bare"]), "127.0.0.1:0"] if s == "bare" else None
        argv = server or gateway_argv(bins[CONTEST_SIDES[s][0]], CONTEST_SIDES[s][1])
        stack = Stack(bins["release"], argv, server_marker="bare-hyper listening on " if server else "paygate listening on ")
        try:
            out = stack.dir / "contest.json"
            env = dict(os.environ, GATEWAY_URL=f"http://{stack.server.addr}", DEFAULT_URL=f"http://{stack.default.addr}",
                       FALLBACK_URL=f"http://{stack.fallback.addr}", ADMIN_TOKEN="perf", RESULTS=str(out))
            # The bare server fails the consistency thresholds by design; only its latency counts.
            def k6():
                subprocess.run(["k6", "run", "--quiet", "loadtest/contest.js"], cwd=ROOT, env=env, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return json.loads(out.read_text())
            pid = stack.server.p.pid
            return with_steal(lambda: with_server_cost(pid, k6, count="payments_sent"))
        finally:
            stack.stop()

    got = interleaved(runs, [*sides, "bare"], side)
    save("contest", {"commit": commit(), **got})


def criterion_ab(runs, group, sides):
    """One hot_paths criterion group from several builds (feature sets), run interleaved;
    returns {side: [each run's criterion medians]}."""
    env = dict(os.environ, RUSTFLAGS="-C target-cpu=native")

    def cargo(side, *extra):
        # Criterion writes its results under $CARGO_TARGET_DIR/criterion, so each build gets its own.
        target = ROOT / "target" / "variants" / f"bench-{side}"
        cmd = ["cargo", "bench", "--bench", "hot_paths", *sides[side], *extra]
        subprocess.run(cmd, cwd=ROOT, env=dict(env, CARGO_TARGET_DIR=str(target)), check=True, capture_output=True)
        return target

    for side in sides:
        print(f"[{group}] build {side}", flush=True)
        cargo(side, "--no-run")
    return interleaved(runs, list(sides), lambda side: criterion_medians(cargo(side, "--", group) / "criterion" / group))


PARSER_SIDES = {
    "fast-path": [],
    "serde-only": ["--no-default-features", "--features", "mimalloc,foldhash"],
    "simd-json": ["--no-default-features", "--features", "mimalloc,foldhash,simd-json"],
}


def run_parser(runs):
    """The JSON parsers: hot_paths' parse_payment benches from three builds (the exact-layout
    fast path over serde_json, serde_json alone, simd-json alone), run interleaved; keeps each
    run's criterion medians."""
    save("parser", {"commit": commit(), **criterion_ab(runs, "parse_payment", PARSER_SIDES)})


HASH_SIDES = {
    "foldhash (keyed)": [],
    "fxhash (unkeyed)": ["--no-default-features", "--features", "mimalloc,json-fast-path,fxhash"],
    "siphash": ["--no-default-features", "--features", "mimalloc,json-fast-path"],
}


def run_hash(runs):
    """The ledger's map hash: hot_paths' ledger_apply from three builds, run interleaved."""
    sides = {k.split()[0]: v for k, v in HASH_SIDES.items()}
    save("hash", {"commit": commit(), **criterion_ab(runs, "ledger_apply", sides)})


def criterion_medians(root):
    """{bench path under `root`: criterion's median estimate, ns} for the latest run of each."""
    return {str(est.parent.parent.relative_to(root)): json.loads(est.read_text())["median"]["point_estimate"]
            for est in root.glob("**/new/estimates.json")}


def run_benches(runs):
    """Runs the criterion benches `runs` times; keeps each run's criterion median and the JSON
    lines the custom measurements print (`journal-latency:`, `recovery-1m:`, ...)."""
    env = dict(os.environ, RUSTFLAGS="-C target-cpu=native")
    got = []
    for i in range(runs):
        print(f"[benches] run {i + 1}/{runs}", flush=True)
        run = {"criterion": {}, "lines": {}}
        for bench in ("hot_paths", "journal", "recovery"):
            out = subprocess.run(["cargo", "bench", "--bench", bench], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                key, sep, rest = line.partition(": {")
                if sep and " " not in key:
                    run["lines"].setdefault(key, []).append(json.loads("{" + rest))
        run["criterion"] = criterion_medians(ROOT / "target" / "criterion")
        got.append(run)
    save("benches", {"commit": commit(), "runs": got})


# ---------------------------------------------------------------- rendering

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def lat(runs, key):
    return [r["latency_ms"][key] for r in runs]


def errors(runs):
    return sum(sum(r["errors"].values()) for r in runs)


def fmt(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def spread(xs):
    return f"{fmt(min(xs))}–{fmt(max(xs))}"


def verdict(a, b, what="p99"):
    """B relative to A: a change counts only if the runs' ranges do not overlap."""
    if max(b) < min(a):
        return f"B lower {what} (ranges do not overlap)"
    if min(b) > max(a):
        return f"B higher {what} (ranges do not overlap)"
    return f"within noise ({what} ranges overlap)"


def steal(runs):
    """Median and range of the CPU share stolen by the hypervisor during the runs ("–" if not recorded)."""
    xs = [r["steal_pct"] for r in runs if "steal_pct" in r]
    return f"{med(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})" if xs else "–"


def per_req(runs, key):
    """Median and range of a per-request server figure ("–" where not recorded)."""
    xs = [r[key] for r in runs if key in r]
    return f"{fmt(med(xs))} ({fmt(min(xs))}–{fmt(max(xs))})" if xs else "–"


def latency_table(rows):
    out = ["| side | runs | p50 ms (median) | p99 ms (median) | p99 spread | p99.9 ms (median) | max ms (median) | errors | "
           "server CPU µs/request (median, range) | context switches/request | CPU stolen % (median, range) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, runs in rows:
        out.append(f"| {label} | {len(runs)} | {fmt(med(lat(runs, 'p50')))} | {fmt(med(lat(runs, 'p99')))} | {spread(lat(runs, 'p99'))} | "
                   f"{fmt(med(lat(runs, 'p999')))} | {fmt(med(lat(runs, 'max')))} | {errors(runs)} | "
                   f"{per_req(runs, 'server_cpu_us_per_req')} | {per_req(runs, 'server_cs_per_req')} | {steal(runs)} |")
    return out


def render_matrix(name):
    d = load(f"matrix-{name}")
    if not d:
        return None
    a, b = d["A"], d["B"]
    rows = [(f"A: {a['variant']} {' '.join(a['args'])}".strip(), a["runs"]), (f"B: {b['variant']} {' '.join(b['args'])}".strip(), b["runs"])]
    out = latency_table(rows)
    cpu = [[r["server_cpu_us_per_req"] for r in side["runs"] if "server_cpu_us_per_req" in r] for side in (a, b)]
    cpu_verdict = f", **{verdict(cpu[0], cpu[1], 'CPU per request')}**" if all(cpu) else ""
    out += ["", f"Generated verdict: **{verdict(lat(a['runs'], 'p99'), lat(b['runs'], 'p99'))}**{cpu_verdict}; "
                f"{d['rate']}/s open model for {d['duration_s']} s per run, commit `{d['commit']}`, {d['recorded_at']}, {d['machine']}."]
    if all("server_cpu_us_per_req_by_thread" in r for side in (a, b) for r in side["runs"]):
        out += ["", "Gateway CPU µs per request by thread (median of the runs): "
                    + "; ".join(f"{k} {by_thread(side['runs'])}" for k, side in zip("AB", (a, b))) + "."]
    if all("server_minflt_per_req" in r for side in (a, b) for r in side["runs"]):
        faults = [[r["server_minflt_per_req"] for r in side["runs"]] for side in (a, b)]
        out += ["", "Minor page faults of the gateway per request (median, range): "
                    + "; ".join(f"{k} {med(f):.4f} ({min(f):.4f}–{max(f):.4f})" for k, f in zip("AB", faults)) + "."]
    return out


def render_targets():
    d = load("targets-2000")
    if not d:
        return None
    out = latency_table([("paygate (fsync on)", d["paygate"]), ("bare hyper (floor)", d["bare"])])
    p99, p999 = med(lat(d["paygate"], "p99")), med(lat(d["paygate"], "p999"))
    out += ["", f"Target p99 ≤ 1.0 ms: **{'met' if p99 <= 1.0 else f'missed by {fmt(p99 - 1.0)} ms'}**; "
                f"p99.9 ≤ 3 ms: **{'met' if p999 <= 3.0 else f'missed by {fmt(p999 - 3.0)} ms'}**; "
                f"errors: {errors(d['paygate'])}. {d['rate']}/s for {d['duration_s']} s per run, commit `{d['commit']}`, {d['recorded_at']}."]
    return out


def render_sweep():
    d = load("sweep")
    if not d:
        return None
    out = ["| server | runs | best rate with p99 ≤ 1 ms (median) | spread | CPU stolen % (median, range) |", "|---|---|---|---|---|"]
    labels = {"on": "paygate --fsync on", "off": "paygate --fsync off", "bare": "bare hyper (floor)"}
    for side in ("on", "off", "bare"):
        if side not in d:
            continue
        best = [r.get("best_rate_within_bound") or 0 for r in d[side]]
        out.append(f"| {labels[side]} | {len(best)} | {med(best):.0f}/s | {min(best)}–{max(best)}/s | {steal(d[side])} |")
    out += ["", f"Steps of {d['step_s']} s from 1000/s, +1000/s per step; 0 means even 1000/s exceeded the bound; "
                f"commit `{d['commit']}`, {d['recorded_at']}."]
    return out


def by_thread(runs):
    """Median CPU µs per payment of each thread name, for runs that recorded it."""
    runs = [r["server_cpu_us_per_req_by_thread"] for r in runs if "server_cpu_us_per_req_by_thread" in r]
    if not runs:
        return "–"
    medians = {n: med([r.get(n, 0.0) for r in runs]) for n in {n for r in runs for n in r}}
    return ", ".join(f"{n} {m:.0f}" for n, m in sorted(medians.items(), key=lambda nm: -nm[1]) if m >= 0.5)


def render_contest():
    d = load("contest")
    if not d:
        return None
    out = ["| server | runs | p99 ms (median) | p99 spread | inconsistencies (max) | lag (max) | fallback payments (max) | "
           "server CPU µs/payment (median, range) | of it, by thread (median) | context switches/payment | CPU stolen % (median, range) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("paygate, `--fsync on`", "paygate"), ("paygate, `--fsync off`", "paygate-fsync-off"),
            ("paygate, `--fsync on --runtime multi-thread`", "paygate-multi-thread"),
            ("paygate with `RWF_DSYNC` (cf6383a, reverted)", "paygate-dsync"),
            ("paygate before held-back answers (d264191)", "paygate-before-lazy-batch"),
            ("paygate before the history (dec96a0, all payments in memory)", "paygate-before-history"),
            ("paygate before cluster mode (b4270b0)", "paygate-before-cluster"), ("bare hyper (floor)", "bare")]
    for label, key in rows:
        runs = d.get(key)
        if not runs:
            continue
        p99 = [r["p99_ms"] for r in runs]
        if key == "bare":
            tail = "n/a (does no work) | n/a | n/a"
        else:
            tail = f"{max(r['inconsistencies'] for r in runs)} | {max(r['lag'] for r in runs)} | {max(r['payments']['fallback'] for r in runs)}"
        out.append(f"| {label} | {len(runs)} | {fmt(med(p99))} | {spread(p99)} | {tail} | "
                   f"{per_req(runs, 'server_cpu_us_per_req')} | {by_thread(runs)} | {per_req(runs, 'server_cs_per_req')} | {steal(runs)} |")
    pg, floor = med([r["p99_ms"] for r in d["paygate"]]), med([r["p99_ms"] for r in d["bare"]])
    out += ["", f"paygate's p99 (`--fsync on`) is {pg / floor:.2f} × the floor's (issue 11's target: ≤ 1.3 ×, stretch 1.1 ×); "
            f"commit `{d['commit']}`, {d['recorded_at']}, {d.get('machine', '')}."]
    return out


def ns(x):
    return f"{x:.0f} ns" if x < 1e4 else (f"{x / 1e3:.1f} µs" if x < 1e7 else f"{x / 1e6:.1f} ms")


def render_benches():
    d = load("benches")
    if not d:
        return None
    runs = d["runs"]
    out = ["| bench (criterion median per iteration) | runs | median | spread |", "|---|---|---|---|"]
    for name in sorted(runs[0]["criterion"]):
        xs = [r["criterion"][name] for r in runs if name in r["criterion"]]
        out.append(f"| `{name}` | {len(xs)} | {ns(med(xs))} | {ns(min(xs))}–{ns(max(xs))} |")
    out += ["", "| custom measurement | runs | median of the runs |", "|---|---|---|"]
    for key in sorted(runs[0]["lines"]):
        for i, first in enumerate(runs[0]["lines"][key]):
            fields = {k: v for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            flags = ", ".join(f"{k}={v}" for k, v in first.items() if isinstance(v, bool))
            cells = []
            for k in fields:
                xs = [r["lines"][key][i][k] for r in runs if key in r["lines"] and len(r["lines"][key]) > i]
                cells.append(f"{k} {med(xs):.4g}" if k not in ("payments", "submitters", "runs") else f"{k} {med(xs):.0f}")
            out.append(f"| `{key}` {flags} | {len(runs)} | {'; '.join(cells)} |")
    out += ["", f"`cargo bench` with `-C target-cpu=native`, {len(runs)} runs; commit `{d['commit']}`, {d['recorded_at']}, {d['machine']}."]
    return out


def render_parser():
    d = load("parser")
    if not d:
        return None
    out = ["| body | build | runs | median per parse | spread |", "|---|---|---|---|---|"]
    for body in ("contest_body", "spaced_body"):
        for side in PARSER_SIDES:
            xs = [r[body] for r in d.get(side, []) if body in r]
            if xs:
                out.append(f"| `{body}` | {side} | {len(xs)} | {ns(med(xs))} | {ns(min(xs))}–{ns(max(xs))} |")
    out += ["", f"criterion medians, builds run alternately; commit `{d['commit']}`, {d['recorded_at']}, {d['machine']}."]
    return out


def render_hash():
    d = load("hash")
    if not d:
        return None
    out = ["| bench | hash | runs | median per payment (3 events) | spread |", "|---|---|---|---|---|"]
    for label in HASH_SIDES:
        side = label.split()[0]
        for bench in sorted({b for r in d.get(side, []) for b in r}):
            xs = [r[bench] for r in d[side] if bench in r]
            out.append(f"| `ledger_apply/{bench}` | {label} | {len(xs)} | {ns(med(xs))} | {ns(min(xs))}–{ns(max(xs))} |")
    out += ["", f"criterion medians, builds run alternately; commit `{d['commit']}`, {d['recorded_at']}, {d['machine']}."]
    return out


def render_isolated():
    """Runs copied from `scripts/pinned_ab.sh` on a 16-core machine (perf/results/isolated/)."""
    d = RESULTS / "isolated"
    if not d.exists():
        return None
    runs = {}
    for f in sorted(d.glob("*.json")):
        label = f.stem.rsplit("-", 1)[0]
        if not label.startswith("sweep"):
            runs.setdefault(label, []).append(json.loads(f.read_text()))
    names = {"before": "paygate as kept (intent journaled by dispatch)", "new": "routing at acceptance (reverted)", "floor": "bare hyper (floor)"}
    out = latency_table([(names.get(k, k), v) for k, v in sorted(runs.items())])
    if "before" in runs and "new" in runs:
        out += ["", f"Generated verdict, routing at acceptance (B) vs kept (A): p50 **{verdict(lat(runs['before'], 'p50'), lat(runs['new'], 'p50'), 'p50')}**, "
                    f"p99 **{verdict(lat(runs['before'], 'p99'), lat(runs['new'], 'p99'))}**."]
    sweeps = []
    for f in sorted(d.glob("sweep-*.json")):
        r = json.loads(f.read_text())
        steps = ", ".join(f"{s['rate']}/s: {fmt(s['latency_ms']['p99'])}" for s in r["sweep"])
        sweeps.append(f"| {f.stem.replace('sweep-', '')} | 1 | {r['best_rate_within_bound']}/s | {steps} |")
    if sweeps:
        out += ["", "| sweep | runs | best rate with p99 ≤ 1 ms | p99 ms per step |", "|---|---|---|---|", *sweeps]
    return out


def render_profile():
    d = load("profile")
    if not d:
        return None
    out = [f"Load: {d['load']}; summarised {d['recorded_at']} by `scripts/profile_summary.py`.", "",
           "| thread | share of the gateway's CPU samples |", "|---|---|"]
    out += [f"| {name} | {pct:.1f} % |" for pct, name in d["threads"]]
    out += ["", "| hottest symbols (thread, object, symbol) | share |", "|---|---|"]
    out += [f"| `{name[:110]}` | {pct:.2f} % |" for pct, name in d["top_symbols"][:12]]
    return out


def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


SYSCALL_COLUMNS = ["futex", "epoll_wait", "pwrite64", "fdatasync", "write", "recvfrom", "writev"]


def render_syscalls():
    """perf/results/syscalls-RATE[-TAG].json, written by scripts/syscalls.py."""
    found = []
    for path in RESULTS.glob("syscalls-*.json"):
        d = json.loads(path.read_text())
        found.append((d["rate"], d.get("gateway_args", ""), d))
    if not found:
        return None
    out = ["| rate | gateway arguments | payments | syscalls per payment | " + " | ".join(f"`{c}`" for c in SYSCALL_COLUMNS) + " |",
           "|---|---|---|---|" + "---|" * len(SYSCALL_COLUMNS)]
    for rate, args, d in sorted(found, key=lambda f: (f[0], f[1])):
        cells = " | ".join(f"{d['by_call'].get(c, 0):.3g}" for c in SYSCALL_COLUMNS)
        out.append(f"| {rate}/s | {f'`{args}`' if args else 'defaults'} | {d['payments']} | {d['syscalls_per_payment']:.3g} | {cells} |")
    dates = sorted({d.get("recorded_at", "?")[:10] for _, _, d in found})
    out += ["", f"`strace -c` on every gateway thread, one run each; {', '.join(dates)}."]
    return out


def render():
    text = PERF_MD.read_text()
    tables = {f"matrix-{n}": (lambda n=n: render_matrix(n)) for n in STRATEGIES}
    # Mount-option A/Bs from scripts/mount_ab.py share the matrix's format.
    tables.update({p.stem: (lambda n=p.stem[len("matrix-"):]: render_matrix(n)) for p in RESULTS.glob("matrix-mount-*.json")})
    tables.update({"targets-2000": render_targets, "sweep": render_sweep, "contest": render_contest, "benches": render_benches,
                   "isolated": render_isolated, "profile": render_profile,
                   "parser": render_parser, "hash": render_hash, "syscalls": render_syscalls})
    for name, fn in tables.items():
        start, end = f"<!-- perf-report:{name} -->", f"<!-- /perf-report:{name} -->"
        if start not in text:
            continue
        body = fn()
        content = "\n".join(body) if body else "_Not measured yet: run `just perf-report`._"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{content}\n{end}{tail}"
    PERF_MD.write_text(text)
    print(f"[render] {PERF_MD}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="benches,parser,matrix,targets,sweep,contest")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--contest-sides", default=DEFAULT_CONTEST_SIDES, help=f"of {', '.join(CONTEST_SIDES)}")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--target-duration", type=float, default=30)
    ap.add_argument("--sweep-step", type=float, default=5)
    ap.add_argument("--render", action="store_true", help="only re-render perf.md from saved results")
    a = ap.parse_args()
    if not a.render:
        only = set(a.only.split(","))
        strategies = [s for s in a.strategies.split(",") if s]
        # The load experiments need release binaries (the release build also runs the simulators
        # and the load generator); the criterion steps build their own.
        needed = {"release"} if only & {"matrix", "targets", "sweep", "contest"} else set()
        if "matrix" in only:
            needed |= {STRATEGIES[s][1][0] for s in strategies} | {STRATEGIES[s][2][0] for s in strategies}
        contest_sides = [s for s in a.contest_sides.split(",") if s]
        if "contest" in only:
            needed |= {CONTEST_SIDES[s][0] for s in contest_sides}
        bins = {v: build_pgo(retrain=False) if VARIANTS[v].get("pgo") else build(v, **VARIANTS[v]) for v in sorted(needed)}
        if only & {"targets", "sweep", "contest"}:
            bins["bare"] = build("release", target="bare_hyper", example=True)
        if "matrix" in only:
            run_matrix(bins, strategies, a.runs, a.rate, a.duration)
        if "targets" in only:
            run_targets(bins, a.runs, a.target_duration)
        if "sweep" in only:
            run_sweep(bins, a.runs, a.sweep_step)
        if "contest" in only:
            run_contest(bins, a.runs, contest_sides)
        if "benches" in only:
            run_benches(a.runs)
        if "parser" in only:
            run_parser(a.runs)
        if "hash" in only:
            run_hash(a.runs)
    render()


if __name__ == "__main__":
    main()
