#!/usr/bin/env python3
"""Soak benchmark: a long open-model run against the release gateway, watched over time.

Starts two processor simulators and `paygate serve` (fresh data directory, `--fsync on`,
Prometheus metrics on a free loopback port), runs `paygate loadgen --window-s` against it on
the same machine, and meanwhile samples the gateway's RSS every second (VmRSS in
/proc/PID/status) and scrapes its /metrics every few seconds (ledger_command_max_nanoseconds,
ledger_hot_payments, payments_accepted). Then it prints a markdown table of the windows and
the targets as PASS/MISS lines, and writes target/soak/<label>/soak.json (everything) and
soak.svg (RSS and per-window p99/p99.9 over time).

    python3 scripts/soak.py                                  # 10 min at 2,000/s (1.2 M payments)
    python3 scripts/soak.py --rate 500 --duration 30         # a quick check
    python3 scripts/soak.py --rev dec96a0                    # the same soak for an older commit
    python3 scripts/soak.py --gateway-args="--hot-max 50000"
    python3 scripts/soak.py --render target/soak/LABEL/soak.json   # re-print and redraw
    python3 scripts/soak.py --compare A/soak.json B/soak.json --out perf/soak.svg

Time on every axis runs from the start of the load (the load generator's launch): the warm-up
comes first, so window `start_s` of the load generator's JSON sits at `warmup + start_s`.

Targets: after the hot window has filled (the first --hot-fill-s seconds, 120 by default), RSS
grows by at most --rss-growth-mb over the rest of the run (highest sample after it minus the
first sample at it); no window's p99.9 exceeds --tail-factor times the median window's p99.9;
the ledger's longest command (since start) is at most --command-max-ms. A revision without the
ledger metrics (before 3f31d80) reports them as n/a.

Python 3.11 standard library only.
"""

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, NATIVE, Stack, build, gateway_argv  # noqa: E402

SOAK_DIR = ROOT / "target" / "soak"
RELEASE_BIN = ROOT / "target" / "release" / "paygate"
METRIC_NAMES = {
    "command_max_ns": "paygate_ledger_command_max_nanoseconds",
    "hot_payments": "paygate_ledger_hot_payments",
    "accepted": "paygate_payments_accepted_total",
    "filter_bytes": "paygate_ledger_filter_bytes",
    "history_cache_bytes": "paygate_history_cache_bytes",
}


# ---------------------------------------------------------------- running

class SoakStack(Stack):
    """bench_env's Stack, keeping its logs (and data, until removed) by default: a gateway that
    fails to start leaves its server.log for the reader."""

    def stop(self, keep=True):
        super().stop(keep=keep)


def build_current():
    cmd = ["cargo", "build", "--release"]
    print(f"[build] RUSTFLAGS='{NATIVE}' {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, RUSTFLAGS=NATIVE), check=True)


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def current_commit():
    """HEAD, with `-dirty` when the sources the binary is built from differ from it."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", ".cargo")
    return f"{head}-dirty" if dirty else head


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_s(pid):
    """utime + stime of process `pid` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url, timeout=2.0):
    """The gauges of METRIC_NAMES from a Prometheus text page; a missing one is None, and all
    are None when the page cannot be read."""
    got = dict.fromkeys(METRIC_NAMES)
    if url is None:
        return got
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except OSError:
        return got
    by_name = {v: k for k, v in METRIC_NAMES.items()}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in by_name and m.group(2) is None:
            try:
                got[by_name[m.group(1)]] = float(m.group(3))
            except ValueError:
                pass
    return got


def wait_healthy(addr, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{addr}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway /health at {addr} did not answer 200 within {timeout_s} s")


def metrics_url(gateway_args):
    """Where the gateway's /metrics will be: the `--metrics-listen` among `gateway_args`, or
    a free loopback port appended to them. Returns (args, url or None)."""
    args = list(gateway_args)
    for i, a in enumerate(args):
        value = None
        if a == "--metrics-listen" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--metrics-listen="):
            value = a.split("=", 1)[1]
        if value is not None:
            if value == "off":
                return args, None
            if value.endswith(":0"):
                raise SystemExit("soak: give --metrics-listen a fixed port (or leave it out): port 0 cannot be scraped")
            return args, f"http://{value}/metrics"
    port = free_port()
    return [*args, "--metrics-listen", f"127.0.0.1:{port}"], f"http://127.0.0.1:{port}/metrics"


class Sampler:
    """RSS and CPU of `pid` every second, /metrics every `scrape_s`, on two threads; `t` is
    seconds since `t0` (time.monotonic())."""

    def __init__(self, pid, url, t0, scrape_s):
        self.pid, self.url, self.t0, self.scrape_s = pid, url, t0, scrape_s
        self.rss = []  # [t, MiB]
        self.cpu = []  # [t, s]
        self.metrics = []  # {"t": t, name: value}
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._rss_loop, daemon=True), threading.Thread(target=self._scrape_loop, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def now(self):
        return round(time.monotonic() - self.t0, 3)

    def sample_proc(self):
        try:
            t, kib, cpu = self.now(), rss_kib(self.pid), cpu_s(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return
        if kib is not None:
            self.rss.append([t, round(kib / 1024, 2)])
        self.cpu.append([t, round(cpu, 2)])

    def scrape_once(self):
        t = self.now()
        self.metrics.append({"t": t, **scrape(self.url)})

    def _rss_loop(self):
        n = 0
        while not self.stop_event.is_set():
            self.sample_proc()
            n += 1
            # On a grid from t0, so a slow read does not drift the cadence.
            self.stop_event.wait(max(0.0, self.t0 + n - time.monotonic()))

    def _scrape_loop(self):
        n = 0
        while not self.stop_event.is_set():
            self.scrape_once()
            n += 1
            self.stop_event.wait(max(0.0, self.t0 + n * self.scrape_s - time.monotonic()))

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join()
        # Final figures after the load.
        self.sample_proc()
        self.scrape_once()


def run_soak(a):
    if not a.no_build:
        build_current()
    if not RELEASE_BIN.exists():
        raise SystemExit(f"soak: {RELEASE_BIN} not found: build it first (or drop --no-build)")
    tool = RELEASE_BIN  # simulators and the load generator: always this tree's (--window-s)
    if a.rev:
        rev = git("rev-parse", "--short", a.rev)
        name = "soak-" + re.sub(r"[^A-Za-z0-9._-]", "_", a.rev)
        binary = ROOT / "target" / "variants" / name / "release" / "paygate"
        if not a.no_build or not binary.exists():
            binary = build(name, ref=a.rev)
        built_from = rev
    else:
        binary = RELEASE_BIN
        built_from = current_commit()
    label = a.label or (a.rev if a.rev else built_from)
    out_dir = SOAK_DIR / re.sub(r"[^A-Za-z0-9._-]", "_", label)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    extra = shlex.split(a.gateway_args)
    if not any(x == "--fsync" or x.startswith("--fsync=") for x in extra):
        extra = ["--fsync", "on", *extra]
    extra, url = metrics_url(extra)
    argv = gateway_argv(binary, extra)
    print(f"[soak] {label}: gateway {binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary} ({built_from}) "
          f"args {' '.join(extra)}", flush=True)
    stack = SoakStack(tool, argv, workdir=out_dir)
    result = {
        "label": label,
        "built_from": built_from,
        "rev": a.rev,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {"rate": a.rate, "duration_s": a.duration, "warmup_s": a.warmup, "window_s": a.window_s,
                   "connections": a.connections, "gateway_args": extra, "scrape_s": a.scrape_s},
        "targets_config": {"hot_fill_s": a.hot_fill_s, "rss_growth_mb": a.rss_growth_mb, "tail_factor": a.tail_factor,
                           "command_max_ms": a.command_max_ms},
    }
    loadgen_rc = None
    try:
        pid = stack.server.p.pid
        wait_healthy(stack.server.addr)
        lg_json = out_dir / "loadgen.json"
        cmd = [str(tool), "loadgen", "--url", f"http://{stack.server.addr}", "--rate", str(a.rate), "--duration", str(a.duration),
               "--warmup", str(a.warmup), "--window-s", str(a.window_s), "--connections", str(a.connections), "--json", str(lg_json)]
        print(f"[soak] {' '.join(cmd[1:])}", flush=True)
        cpu_before = cpu_s(pid)
        t0 = time.monotonic()
        sampler = Sampler(pid, url, t0, a.scrape_s)
        with open(out_dir / "loadgen.log", "wb") as log:
            lg = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
            sampler.start()
            limit = a.warmup + a.duration + 120
            next_progress = a.progress_s
            try:
                while lg.poll() is None:
                    if time.monotonic() - t0 > limit:
                        print(f"[soak] loadgen ran past {limit:.0f} s: stopping it", flush=True)
                        lg.send_signal(signal.SIGINT)
                        lg.wait(30)
                        break
                    time.sleep(0.2)
                    if a.progress_s > 0 and time.monotonic() - t0 >= next_progress:
                        next_progress += a.progress_s
                        print("[soak] " + progress(sampler), flush=True)
            finally:
                if lg.poll() is None:
                    lg.kill()
                    lg.wait()
                sampler.stop()
        loadgen_rc = lg.returncode
        result["load_s"] = round(time.monotonic() - t0, 3)
        result["gateway_cpu_s"] = round(cpu_s(pid), 2)
        result["gateway_cpu_s_during_load"] = round(result["gateway_cpu_s"] - cpu_before, 2)
        result["samples"] = {"rss_mb": sampler.rss, "cpu_s": sampler.cpu, "metrics": sampler.metrics}
        if loadgen_rc == 0 and lg_json.exists():
            result["loadgen"] = json.loads(lg_json.read_text())
        else:
            tail = (out_dir / "loadgen.log").read_text(errors="replace")[-2000:]
            print(f"[soak] loadgen exited with {loadgen_rc}:\n{tail}", file=sys.stderr)
    finally:
        stack.stop(keep=True)
        if not a.keep_data:
            shutil.rmtree(out_dir / "data", ignore_errors=True)
    result["payments"] = payments(result)
    result["targets"] = evaluate(result)
    path = out_dir / "soak.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    svg = out_dir / "soak.svg"
    svg.write_text(chart([result]))
    report(result)
    print(f"\n[soak] results: {path.relative_to(ROOT)}, chart: {svg.relative_to(ROOT)}, logs: {out_dir.relative_to(ROOT)}/*.log")
    if loadgen_rc != 0:
        raise SystemExit(f"soak: loadgen failed (exit {loadgen_rc}); see {out_dir / 'loadgen.log'}")


def progress(sampler):
    rss = sampler.rss[-1][1] if sampler.rss else None
    m = sampler.metrics[-1] if sampler.metrics else {}
    return (f"t={sampler.now():.0f}s rss={fmt(rss, '{:.1f}')} MB hot={fmt(m.get('hot_payments'), '{:.0f}')} "
            f"cmd_max={fmt(ms_of_ns(m.get('command_max_ns')), '{:.3f}')} ms accepted={fmt(m.get('accepted'), '{:.0f}')}")


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores, {cpu}"


# ---------------------------------------------------------------- evaluating

def fmt(x, spec="{:.3f}"):
    return "n/a" if x is None else spec.format(x)


def ms_of_ns(ns):
    return None if ns is None else ns / 1e6


def last_metric(result, name):
    values = [m[name] for m in result.get("samples", {}).get("metrics", []) if m.get(name) is not None]
    return values[-1] if values else None


def payments(result):
    """Payments the gateway accepted (its own counter), else the load generator's schedule
    (warm-up included)."""
    accepted = last_metric(result, "accepted")
    if accepted is not None:
        return int(accepted)
    c = result["config"]
    return round(c["rate"] * (c["warmup_s"] + c["duration_s"]))


def windows(result):
    """The load generator's windows, each with `t` (start, seconds since the load started)."""
    lg = result.get("loadgen") or {}
    warmup = result["config"]["warmup_s"]
    return [dict(w, t=round(warmup + w["start_s"], 3)) for w in lg.get("windows") or []]


def evaluate(result):
    """The three targets: [{name, ok (True/False/None for n/a), figure}]."""
    tc = result["targets_config"]
    targets = []

    rss = result.get("samples", {}).get("rss_mb", [])
    after = [(t, mb) for t, mb in rss if t >= tc["hot_fill_s"]]
    name = f"RSS growth after the first {tc['hot_fill_s']:g} s <= {tc['rss_growth_mb']:g} MB"
    if len(after) >= 2:
        base_t, base = after[0]
        peak_t, peak = max(after, key=lambda s: s[1])
        growth = peak - base
        slope = lsq_slope(after) * 60
        figure = (f"{growth:+.1f} MB (at {base_t:.0f} s {base:.1f} MB, highest {peak:.1f} MB at {peak_t:.0f} s, "
                  f"end {after[-1][1]:.1f} MB; trend {slope:+.2f} MB/min)")
        targets.append({"name": name, "ok": growth <= tc["rss_growth_mb"], "figure": figure, "value": round(growth, 2)})
    else:
        targets.append({"name": name, "ok": None, "figure": f"n/a (the run ended before {tc['hot_fill_s']:g} s)", "value": None})

    ws = [w for w in windows(result) if w["latency_ms"]["max"] > 0]
    name = f"every window's p99.9 <= {tc['tail_factor']:g} x the median window's p99.9"
    if ws:
        med = statistics.median(w["latency_ms"]["p999"] for w in ws)
        worst = max(ws, key=lambda w: w["latency_ms"]["p999"])
        ratio = worst["latency_ms"]["p999"] / med if med > 0 else math.inf
        over = sum(1 for w in ws if w["latency_ms"]["p999"] > tc["tail_factor"] * med)
        figure = (f"highest {worst['latency_ms']['p999']:.3f} ms (window at {worst['t']:g} s) = {ratio:.2f} x median "
                  f"{med:.3f} ms; {over} of {len(ws)} windows over")
        targets.append({"name": name, "ok": ratio <= tc["tail_factor"], "figure": figure, "value": round(ratio, 3)})
    else:
        targets.append({"name": name, "ok": None, "figure": "n/a (no windows with responses)", "value": None})

    cmd_ns = last_metric(result, "command_max_ns")
    name = f"ledger's longest command <= {tc['command_max_ms']:g} ms"
    if cmd_ns is None:
        targets.append({"name": name, "ok": None, "figure": "n/a (no paygate_ledger_command_max_nanoseconds)", "value": None})
    else:
        targets.append({"name": name, "ok": cmd_ns / 1e6 <= tc["command_max_ms"], "figure": f"{cmd_ns / 1e6:.3f} ms",
                        "value": round(cmd_ns / 1e6, 4)})
    return targets


def lsq_slope(points):
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / den if den else 0.0


def at_or_before(series, t, key=None):
    """The last sample of `series` taken at or before `t` (series of [t, v] or of dicts)."""
    best = None
    for s in series:
        st = s["t"] if isinstance(s, dict) else s[0]
        if st > t:
            break
        if key is None:
            best = s[1]
        elif s.get(key) is not None:
            best = s[key]
    return best


VERDICT = {True: "PASS", False: "MISS", None: "n/a "}


def report(result):
    c = result["config"]
    lg = result.get("loadgen")
    print(f"\n## Soak {result['label']} ({result['built_from']}): {c['rate']}/s for {c['duration_s']:g} s "
          f"(+{c['warmup_s']:g} s warm-up), gateway {' '.join(c['gateway_args'])}\n")
    samples = result.get("samples", {})
    rows = windows(result)
    if rows:
        print("| t (s) | requests | errors | p50 ms | p99 ms | p99.9 ms | max ms | RSS MB | hot payments | ledger cmd max ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in rows:
            end = w["t"] + w["duration_s"]
            errors = sum(w["errors"].values())
            kinds = ", ".join(f"{k} {n}" for k, n in w["errors"].items() if n)
            lat = w["latency_ms"]
            print(f"| {w['t']:g} | {w['requests']} | {errors}{f' ({kinds})' if kinds else ''} | {lat['p50']:.3f} | {lat['p99']:.3f} "
                  f"| {lat['p999']:.3f} | {lat['max']:.3f} | {fmt(at_or_before(samples.get('rss_mb', []), end), '{:.1f}')} "
                  f"| {fmt(at_or_before(samples.get('metrics', []), end, 'hot_payments'), '{:.0f}')} "
                  f"| {fmt(ms_of_ns(at_or_before(samples.get('metrics', []), end, 'command_max_ns')))} |")
    if lg:
        lat = lg["latency_ms"]
        errors = ", ".join(f"{k} {n}" for k, n in lg["errors"].items() if n) or "none"
        print(f"\nwhole run: sent {lg['sent']}, ok {lg['ok']}, errors: {errors}; p50 {lat['p50']:.3f}, p99 {lat['p99']:.3f}, "
              f"p99.9 {lat['p999']:.3f}, p99.99 {lat['p9999']:.3f}, max {lat['max']:.3f} ms; "
              f"client start lag p99 {lg['client_start_lag_ms']['p99']:.3f} ms")
    n = result["payments"]
    if "gateway_cpu_s" in result:
        print(f"gateway CPU: {result['gateway_cpu_s']:.2f} s in all ({result['gateway_cpu_s_during_load']:.2f} s during the load) "
              f"for {n} payments: {result['gateway_cpu_s'] * 1e6 / max(1, n):.1f} us/payment "
              f"({result['gateway_cpu_s_during_load'] * 1e6 / max(1, n):.1f} during the load)")
    print()
    for t in result["targets"]:
        print(f"{VERDICT[t['ok']]}  {t['name']}: {t['figure']}")


# ---------------------------------------------------------------- charting

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def nice_step(span, target=6):
    raw = span / target if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def linear_ticks(lo, hi):
    """Axis bounds on round steps that contain [lo, hi], and the ticks between them."""
    step = nice_step(hi - lo)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [round(k * step, 10) for k in range(first, max(last, first + 1) + 1)]
    return ticks[0], ticks[-1], ticks


def log_ticks(lo, hi):
    """Axis bounds on 1-2-5 steps that contain [lo, hi] (both positive), and those steps."""
    steps = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2) for m in (1, 2, 5)]
    bottom = max(v for v in steps if v <= lo * 1.0001)
    top = min(v for v in steps if v >= hi / 1.0001)
    if top <= bottom:
        top = next(v for v in steps if v > bottom)
    return bottom, top, [v for v in steps if bottom <= v <= top]


def label_num(v):
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.0e}"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(results):
    """An SVG of one or more soak results on the same axes: RSS, per-window p99 and p99.9
    (log scale), and the ledger's hot payments when any run has them."""
    width, left, right, panel_h, gap, top = 960, 70, 20, 220, 60, 50
    runs = []
    for r in results:
        ws = [w for w in windows(r) if w["latency_ms"]["max"] > 0]
        s = r.get("samples", {})
        runs.append({
            "label": r["label"],
            "rss": s.get("rss_mb", []),
            "p99": [(w["t"] + w["duration_s"] / 2, w["latency_ms"]["p99"]) for w in ws],
            "p999": [(w["t"] + w["duration_s"] / 2, w["latency_ms"]["p999"]) for w in ws],
            "hot": [(m["t"], m["hot_payments"]) for m in s.get("metrics", []) if m.get("hot_payments") is not None],
            "hot_fill_s": r["targets_config"]["hot_fill_s"],
        })
    panels = [("gateway RSS (MB)", "linear", [("rss", "")]),
              ("latency per window (ms, log): p99 solid, p99.9 dashed", "log", [("p99", ""), ("p999", "6,4")])]
    if any(run["hot"] for run in runs):
        panels.append(("ledger hot payments", "linear", [("hot", "")]))
    height = top + len(panels) * (panel_h + gap) + 10
    t_max = max([1.0] + [p[0] for run in runs for key in ("rss", "p99", "hot") for p in run[key]])
    x_lo, x_hi, x_ticks = linear_ticks(0, t_max)
    plot_w = width - left - right

    def x_of(t):
        return left + (t - x_lo) / (x_hi - x_lo) * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    title = "soak: " + " vs ".join(run["label"] for run in runs)
    out.append(f'<text x="{left}" y="22" font-size="15" font-weight="bold">{esc(title)}</text>')
    lx = width - right
    for i, run in reversed(list(enumerate(runs))):
        w = 30 + 7 * len(run["label"])
        lx -= w + 10
        out.append(f'<line x1="{lx}" y1="18" x2="{lx + 22}" y2="18" stroke="{COLORS[i % len(COLORS)]}" stroke-width="2.5"/>')
        out.append(f'<text x="{lx + 27}" y="22">{esc(run["label"])}</text>')

    for p, (name, scale, series) in enumerate(panels):
        y0 = top + p * (panel_h + gap)
        values = [v for run in runs for key, _ in series for _, v in run[key] if v is not None and (scale == "linear" or v > 0)]
        if scale == "log":
            lo, hi, ticks = log_ticks(min(values), max(values)) if values else (0.1, 10, [0.1, 1, 10])

            def y_of(v, lo=lo, hi=hi):
                return y0 + panel_h - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * panel_h
        else:
            vlo, vhi = (min(values), max(values)) if values else (0, 1)
            pad = max((vhi - vlo) * 0.1, abs(vhi) * 0.02, 1e-9)
            lo, hi, ticks = linear_ticks(max(0.0, vlo - pad) if vlo >= 0 else vlo - pad, vhi + pad)

            def y_of(v, lo=lo, hi=hi):
                return y0 + panel_h - (v - lo) / (hi - lo) * panel_h
        out.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{esc(name)}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        for t in ticks:
            y = y_of(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label_num(t)}</text>')
        for t in x_ticks:
            x = x_of(t)
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + panel_h}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + panel_h + 15}" text-anchor="middle">{label_num(t)}</text>')
        out.append(f'<text x="{left + plot_w}" y="{y0 + panel_h + 30}" text-anchor="end" fill="#555">time since the load started (s)</text>')
        fill_s = {run["hot_fill_s"] for run in runs}
        for f in fill_s:
            if x_lo <= f <= x_hi:
                x = x_of(f)
                out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + panel_h}" stroke="#888" stroke-dasharray="3,3"/>')
                if p == 0:
                    out.append(f'<text x="{x + 4:.1f}" y="{y0 + 14}" fill="#555">hot window filled ({f:g} s)</text>')
        for i, run in enumerate(runs):
            color = COLORS[i % len(COLORS)]
            for key, dash in series:
                pts = [(t, v) for t, v in run[key] if v is not None and (scale == "linear" or v > 0)]
                if not pts:
                    continue
                d = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in pts)
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash_attr} points="{d}"/>')
                if len(pts) <= 120 and key != "rss":
                    out.extend(f'<circle cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="2" fill="{color}"/>' for t, v in pts)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command line

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--rate", type=int, default=2000, help="payments per second (default 2000)")
    ap.add_argument("--duration", type=float, default=600, help="measured seconds (default 600)")
    ap.add_argument("--warmup", type=float, default=5, help="seconds sent before measuring (default 5)")
    ap.add_argument("--window-s", type=float, default=10, help="report window, seconds (default 10)")
    ap.add_argument("--connections", type=int, default=64, help="load generator connections (default 64)")
    ap.add_argument("--gateway-args", default="", help="extra `paygate serve` arguments as one string, e.g. --gateway-args='--hot-max 50000' (--fsync on unless given)")
    ap.add_argument("--rev", help="soak this git revision's gateway (built in a worktree under target/worktrees/)")
    ap.add_argument("--label", help="results go to target/soak/LABEL/ (default: the revision, or HEAD[-dirty])")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--keep-data", action="store_true", help="keep the gateway's data directory")
    ap.add_argument("--scrape-s", type=float, default=5, help="seconds between /metrics scrapes (default 5)")
    ap.add_argument("--progress-s", type=float, default=30, help="seconds between progress lines, 0 for none (default 30)")
    ap.add_argument("--hot-fill-s", type=float, default=120, help="RSS target: seconds after which RSS may no longer grow (120)")
    ap.add_argument("--rss-growth-mb", type=float, default=8, help="RSS target: most growth after --hot-fill-s, MB (8)")
    ap.add_argument("--tail-factor", type=float, default=3, help="p99.9 target: most ratio of any window to the median (3)")
    ap.add_argument("--command-max-ms", type=float, default=2, help="ledger target: longest command, ms (2)")
    ap.add_argument("--render", metavar="SOAK_JSON", help="print the table and targets of a saved run and redraw its SVG")
    ap.add_argument("--compare", nargs="+", metavar="SOAK_JSON", help="draw these runs on the same axes (with --out)")
    ap.add_argument("--out", help="the SVG --compare writes")
    a = ap.parse_args()

    if a.compare:
        if not a.out:
            ap.error("--compare needs --out chart.svg")
        results = [json.loads(Path(p).read_text()) for p in a.compare]
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(chart(results))
        for r in results:
            print(f"\n{r['label']} ({r['built_from']}):")
            for t in evaluate(r):
                print(f"  {VERDICT[t['ok']]}  {t['name']}: {t['figure']}")
        print(f"\nwrote {a.out}")
        return
    if a.render:
        result = json.loads(Path(a.render).read_text())
        result["targets"] = evaluate(result)
        Path(a.render).with_suffix(".svg").write_text(chart([result]))
        report(result)
        return
    if a.rate <= 0 or a.duration <= 0 or a.warmup < 0 or a.window_s <= 0:
        ap.error("--rate, --duration and --window-s must be positive, --warmup at least 0")
    run_soak(a)


if __name__ == "__main__":
    main()
