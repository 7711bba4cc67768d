#!/usr/bin/env python3
"""The gateway on a large settled history: restart time, memory, and the latency of what reads
the history (a repeated POST of an old id, GET of an old id, the summary over all of it).

    python3 scripts/history_bench.py                          # 10,000,000 payments (fixture made once)
    python3 scripts/history_bench.py --payments 200000        # a quick run
    python3 scripts/history_bench.py --fixture DIR            # reuse (or make) the fixture in DIR

The fixture (examples/history_fixture.rs) is written straight into DIR/history.redb, once, and
reused: default DIR is target/history-bench/fixture-N-sS. The gateway runs on DIR itself (it only
appends: copying a 1 GB history per run would cost more than the run), so later runs find the
payments earlier runs' background load added; every check below is made so that they cancel.

Steps: two `paygate processor-sim` on loopback ports; the release gateway started --restarts
times on DIR (each: process start until /health answers 200, and the `ms` of its "ledger
recovered from the journal" line), then until its "history id filter built" line (a thread
builds the filter from the history after the start; the gateway serves meanwhile, reading the
history for every id it does not hold); the last start stays up. Exact summary check over the
fixture's window; then `paygate loadgen` sends new payments in the background (--load-rate)
while one Python thread, open-model (request i due at t0 + i / --probe-rate), sends on its own
keep-alive http.client connection per kind, in shuffled order: POST of an old id with its
original amount (expects 202), GET of an old id (expects 200, processed, the fixture's amount,
processor and requestedAt), GET /payments-summary from the fixture's start to now. Latency is
measured in Python around each exchange (send to response read), so it includes http.client's
own cost (tens of µs); the lateness of the schedule is reported apart, and the gateway's own
Prometheus histograms (bucket bounds) give the server-side view. The same probe runs once before the load too (no background load), to show what the co-located
load adds. After the load: the summary
delta over the run equals the payments loadgen got a 2xx for; RSS again; one more restart with
the load's journal. Results: target/history-bench/results.json and a markdown table.

Targets: restart <= 1 s, RSS <= 96 MiB, old-id POST and GET p99 <= 1 ms, summary <= 10 ms.
"""

import argparse
import gc
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import shutil
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import NATIVE, ROOT, Proc  # noqa: E402

OUT = ROOT / "target" / "history-bench"
TARGETS = {"restart_ms": 1000.0, "rss_mib": 96.0, "old_post_p99_ms": 1.0, "old_get_p99_ms": 1.0, "summary_ms": 10.0}
FEES = ["0.05", "0.15"]


def log(msg):
    print(f"[history-bench] {msg}", flush=True)


# ---------------------------------------------------------------- building and the fixture

def binaries(args):
    if not args.no_build:
        env = dict(os.environ, RUSTFLAGS=os.environ.get("RUSTFLAGS", NATIVE))
        cmd = ["cargo", "build", "--release", "--quiet", "--bin", "paygate", "--example", "history_fixture"]
        log(f"build: {' '.join(cmd)} (RUSTFLAGS={env['RUSTFLAGS']})")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    paygate = Path(args.bin) if args.bin else ROOT / "target" / "release" / "paygate"
    fixture = ROOT / "target" / "release" / "examples" / "history_fixture"
    for b in (paygate, fixture):
        if not b.exists():
            sys.exit(f"{b} is missing: run `just build` (or drop --no-build)")
    # Every start of this run uses the same build, whatever rebuilds target/release meanwhile.
    bins = OUT / "bin"
    bins.mkdir(parents=True, exist_ok=True)
    copies = []
    for b in (paygate, fixture):
        dest = bins / b.name
        shutil.copy2(b, dest)
        copies.append(dest)
    return copies[0], copies[1]


def ensure_fixture(args, fixture_bin):
    d = Path(args.fixture) if args.fixture else OUT / f"fixture-{args.payments}-s{args.seed}"
    d = d.resolve()
    meta = d / "fixture.json"
    if meta.exists():
        fx = json.loads(meta.read_text())
        log(f"reusing the fixture in {d}: {fx['payments']} payments, made in {fx['elapsed_s']} s")
        return d, fx, None
    if (d / "history.redb").exists():
        sys.exit(f"{d}/history.redb exists without fixture.json (an interrupted fixture?): remove {d}")
    free = os.statvfs(d.parent if d.parent.exists() else ROOT)
    free_gb = free.f_bavail * free.f_frsize / 1e9
    # About 126 bytes a payment on disk (10 M: 1.2 GB), with room for the history's own growth.
    need_gb = args.payments * 150 / 1e9 + 1
    if free_gb < need_gb:
        sys.exit(f"{free_gb:.1f} GB free, the fixture needs about {need_gb:.1f} GB: use --payments lower")
    cmd = [str(fixture_bin), "--dir", str(d), "--payments", str(args.payments), "--seed", str(args.seed),
           "--rate-per-s", str(args.fixture_rate), "--processors", ",".join(args.processors)]
    log(f"fixture: {' '.join(cmd)}")
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.monotonic() - t0
    fx = json.loads(meta.read_text())
    return d, fx, round(wall, 2)


def load_sample(d, fx):
    out = []
    for line in (d / fx["sample_file"]).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cid, amount, processor, requested_at, _ms = line.split()
        out.append({"id": cid, "amount": amount, "processor": processor, "requestedAt": requested_at})
    return out


# ---------------------------------------------------------------- processes

def rss_kib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[k] = int(v.split()[0])
    return fields


def mib(kib):
    return round(kib / 1024, 1)


def http_status(addr, path, timeout=1.0):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return r.status, body
    finally:
        c.close()


def log_events(path):
    """The gateway's JSON log lines so far."""
    out = []
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def event(events, message):
    return next((e for e in events if e.get("message") == message or e.get("fields", {}).get("message") == message), None)


def field(e, name):
    return e.get(name, e.get("fields", {}).get(name)) if e else None


def stamp(e):
    """A log line's timestamp, seconds since the epoch."""
    if not e or "timestamp" not in e:
        return None
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


def ms_between(a, b):
    return None if a is None or b is None else round((b - a) * 1000, 1)


class Gateway:
    """One start of the gateway on the fixture's directory, timed until /health answers 200."""

    def __init__(self, binary, data_dir, sims, names, log_path, extra=()):
        argv = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--metrics-listen", "127.0.0.1:0",
                "--drain-ms", "0", "--log-format", "json", "--admin-token", "history-bench"]
        for name, sim in zip(names, sims):
            argv += ["--processor", f"{name}=http://{sim.addr}"]
        argv += list(extra)
        self.log_path = log_path
        spawned = time.time()
        t0 = time.monotonic()
        self.proc = Proc(argv, "paygate listening on ", log_path)
        self.listening_ms = (time.monotonic() - t0) * 1000
        self.addr = self.proc.addr
        deadline = time.monotonic() + 120
        while True:
            try:
                if http_status(self.addr, "/health", timeout=0.5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.p.poll() is not None:
                self.stop()
                raise RuntimeError(f"gateway /health never answered 200; see {log_path}")
            time.sleep(0.002)
        self.health_ms = (time.monotonic() - t0) * 1000
        events = log_events(log_path)
        rec = event(events, "ledger recovered from the journal")
        self.recovery = {k: field(rec, k) for k in ("ms", "payments", "history_payments", "moved_to_history", "replayed_records")}
        m = event(events, "serving Prometheus metrics at /metrics")
        self.metrics_addr = field(m, "metrics")
        # Where the start's time went, from the log lines' own timestamps (wall clock, ms).
        first, serving = (events[0] if events else None), event(events, "paygate serving")
        at = {name: stamp(e) for name, e in (("first_log", first), ("recovered", rec), ("serving", serving))}
        self.spawned = spawned
        self.filter = None
        self.phases_ms = {
            "spawn_to_first_log": ms_between(spawned, at["first_log"]),
            "first_log_to_recovered": ms_between(at["first_log"], at["recovered"]),
            "recovered_to_serving": ms_between(at["recovered"], at["serving"]),
            "serving_to_health_seen": ms_between(at["serving"], spawned + self.health_ms / 1000),
        }

    def wait_filter(self, timeout=300):
        """Waits for the id filter a thread builds from the history after the start (the
        gateway serves meanwhile, reading the history for every id it does not hold)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = event(log_events(self.log_path), "history id filter built")
            if e:
                self.filter = {"ms": field(e, "ms"), "ids": field(e, "ids"), "bytes": field(e, "bytes"),
                               "since_spawn_ms": ms_between(self.spawned, stamp(e))}
                return self.filter
            if self.proc.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"no 'history id filter built' line within {timeout} s; see {self.log_path}")

    @property
    def pid(self):
        return self.proc.p.pid

    def stop(self):
        self.proc.stop(signal.SIGINT, timeout=60)
        return self.proc.p.returncode


def start_sims(binary, names, logs):
    sims = []
    for i, name in enumerate(names):
        fee = FEES[min(i, len(FEES) - 1)]
        sims.append(Proc([binary, "processor-sim", "--listen", "127.0.0.1:0", "--fee", fee], "processor-sim listening on ", logs / f"{name}.log"))
    return sims


# ---------------------------------------------------------------- measuring

def pct(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def stats_ms(xs):
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(pct(xs, 0.50), 3), "p90": round(pct(xs, 0.90), 3), "p99": round(pct(xs, 0.99), 3),
            "p999": round(pct(xs, 0.999), 3), "max": round(max(xs), 3), "mean": round(statistics.fmean(xs), 3)}


def scrape(addr):
    """Request-duration histogram buckets by route: {route: [(le, cumulative count), ...]}."""
    if not addr:
        return {}
    status, body = http_status(addr, "/metrics", timeout=5)
    out = {}
    pat = re.compile(r'^paygate_http_request_duration_seconds_bucket\{(?=[^}]*route="([^"]+)")(?=[^}]*le="([^"]+)")[^}]*\} (\S+)')
    for line in body.decode().splitlines():
        m = pat.match(line)
        if m:
            le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
            out.setdefault(m.group(1), []).append((le, float(m.group(3))))
    return {r: sorted(b) for r, b in out.items()}


def server_side(before, after, route):
    """Requests of `route` between two scrapes, and the bucket bound that holds its p50 / p99."""
    a, b = dict(before.get(route, [])), after.get(route, [])
    deltas = [(le, c - a.get(le, 0.0)) for le, c in b]
    if not deltas or deltas[-1][1] <= 0:
        return None
    n = deltas[-1][1]

    def bound(q):
        le = next(le for le, c in deltas if c >= q * n)
        return "+Inf" if le == float("inf") else round(le * 1000, 3)
    return {"n": int(n), "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99), "max_le_ms": bound(1.0)}


def iso_now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class Conn:
    """One keep-alive connection; an exchange is timed from the send to the end of the body."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.c = None

    def exchange(self, method, path, body=None):
        if self.c is None:
            self.c = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self.c.connect()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        t = time.perf_counter()
        self.c.request(method, path, body=body, headers=headers)
        r = self.c.getresponse()
        data = r.read()
        took = (time.perf_counter() - t) * 1000
        if r.getheader("connection", "").lower() == "close":
            self.c.close()
            self.c = None
        return r.status, data, took

    def close(self):
        if self.c is not None:
            self.c.close()


def summary_totals(body, names):
    j = json.loads(body, parse_float=Decimal)
    return {n: (int(j[n]["totalRequests"]), Decimal(j[n]["totalAmount"])) for n in names}


def fixture_totals(fx):
    return {n: (int(t["count"]), Decimal(t["amount"])) for n, t in fx["totals"].items()}


def summary_path(frm, to):
    return f"/payments-summary?from={frm}&to={to}"


def probe(addr, fx, sample, args, rng):
    """The open-model loop; returns per-kind client latencies, lateness and failures."""
    names = fx["processors"]
    conns = {k: Conn(addr) for k in ("post_old", "get_old", "summary_all")}
    picks = rng.sample(sample, min(len(sample), max(args.requests, 1)))
    kinds = ["post_old"] * args.requests + ["get_old"] * args.requests + ["summary_all"] * args.summaries
    rng.shuffle(kinds)
    fixture = fixture_totals(fx)
    lat = {k: [] for k in conns}
    late = []
    failures = []
    counters = {k: 0 for k in conns}
    # A few untimed exchanges of each kind first: connections open, code paths warm.
    for i in range(20):
        p = picks[i % len(picks)]
        conns["post_old"].exchange("POST", "/payments", '{"correlationId":"%s","amount":%s}' % (p["id"], p["amount"]))
        conns["get_old"].exchange("GET", f"/payments/{p['id']}")
        conns["summary_all"].exchange("GET", summary_path(fx["from"], iso_now()))
    gc.disable()
    t0 = time.perf_counter() + 0.05
    interval = 1.0 / args.probe_rate
    try:
        for i, kind in enumerate(kinds):
            due = t0 + i * interval
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            late.append(max(0.0, time.perf_counter() - due) * 1000)
            n = counters[kind]
            counters[kind] += 1
            c = conns[kind]
            if kind == "post_old":
                p = picks[n % len(picks)]
                body = '{"correlationId":"%s","amount":%s}' % (p["id"], p["amount"])
                status, data, took = c.exchange("POST", "/payments", body)
                if status != 202:
                    failures.append(f"POST old {p['id']}: {status} {data[:120]!r}")
            elif kind == "get_old":
                p = picks[(n + len(picks) // 2) % len(picks)]
                status, data, took = c.exchange("GET", f"/payments/{p['id']}")
                ok = status == 200
                if ok:
                    j = json.loads(data, parse_float=Decimal)
                    ok = (j.get("status") == "processed" and j.get("correlationId") == p["id"] and j.get("processor") == p["processor"]
                          and j.get("requestedAt") == p["requestedAt"] and j.get("amount") == Decimal(p["amount"]))
                if not ok:
                    failures.append(f"GET old {p['id']}: {status} {data[:160]!r}")
            else:
                status, data, took = c.exchange("GET", summary_path(fx["from"], iso_now()))
                if status != 200:
                    failures.append(f"summary: {status} {data[:120]!r}")
                else:
                    got = summary_totals(data, names)
                    if any(got[n][0] < fixture[n][0] or got[n][1] < fixture[n][1] for n in names):
                        failures.append(f"summary below the fixture's totals: {got}")
            lat[kind].append(took)
    finally:
        gc.enable()
        for c in conns.values():
            c.close()
    return lat, late, failures


def exact_summary(addr, fx, times=20):
    """The summary over exactly the fixture's window, `times` times on one connection: it must
    equal fixture.json's totals (later payments lie after the window)."""
    names = fx["processors"]
    c = Conn(addr)
    took = []
    got = None
    for _ in range(times):
        status, data, t = c.exchange("GET", summary_path(fx["from"], fx["to"]))
        if status != 200:
            raise RuntimeError(f"summary answered {status}: {data[:200]!r}")
        took.append(t)
        got = summary_totals(data, names)
    c.close()
    want = fixture_totals(fx)
    return got == want, {n: [got[n][0], str(got[n][1])] for n in names}, {n: [want[n][0], str(want[n][1])] for n in names}, took


def summary_now(addr, fx):
    status, data = http_status(addr, summary_path(fx["from"], iso_now()), timeout=5)
    if status != 200:
        raise RuntimeError(f"summary answered {status}")
    return summary_totals(data, fx["processors"])


def spot_checks(addr, sample, rng):
    """Untimed: a wrong amount for an old id is refused (409); an unknown id is not found (404)."""
    failures = []
    c = Conn(addr)
    for p in rng.sample(sample, min(20, len(sample))):
        wrong = Decimal(p["amount"]) + Decimal("0.01")
        status, data, _ = c.exchange("POST", "/payments", '{"correlationId":"%s","amount":%s}' % (p["id"], wrong))
        if status != 409:
            failures.append(f"POST old {p['id']} with a wrong amount: {status} {data[:120]!r} (want 409)")
    for _ in range(20):
        status, data, _ = c.exchange("GET", f"/payments/{uuid.UUID(int=rng.getrandbits(128))}")
        if status != 404:
            failures.append(f"GET of an unknown id: {status} (want 404)")
    c.close()
    return failures


# ---------------------------------------------------------------- reporting

def verdict(value, target, worst=None):
    if value is None:
        return "n/a"
    if value <= target and (worst is None or worst <= target):
        return "PASS"
    if value <= target:
        return "PASS (median; worst MISS)"
    return "MISS"


def table(r):
    rows = [("metric", "figure", "target", "result")]
    rs = r["restart"]
    rows.append((f"restart: process start → /health 200 (median of {rs['runs']}, range)",
                 f"{rs['health_ms']['median']:.0f} ms ({rs['health_ms']['min']:.0f}–{rs['health_ms']['max']:.0f})",
                 "≤ 1000 ms", rs["verdict"]))
    rows.append(("restart: recovery log line `ms` (median, range)",
                 f"{rs['recovery_ms']['median']:.0f} ms ({rs['recovery_ms']['min']:.0f}–{rs['recovery_ms']['max']:.0f})", "", ""))
    f, ft = rs["filter_since_spawn_ms"], rs["filter_thread_ms"]
    rows.append(("id filter built: process start → 'history id filter built' (its thread's ms)",
                 f"{f['median']:.0f} ms ({f['min']:.0f}–{f['max']:.0f}; thread {ft['median']:.0f} ms)", "", ""))
    if r.get("restart_after_load"):
        ra = r["restart_after_load"]
        rows.append((f"restart after the load (journal of {ra['recovery'].get('payments')} payments)",
                     f"{ra['health_ms']:.0f} ms (recovery {ra['recovery'].get('ms')} ms)", "≤ 1000 ms", verdict(ra["health_ms"], TARGETS["restart_ms"])))
    for key, label in (("after_start", "RSS after start, id filter built (VmRSS)"), ("after_load", "RSS after the load (VmRSS; peak VmHWM)")):
        m = r["rss"][key]
        fig = f"{mib(m['VmRSS'])} MiB" + (f" (peak {mib(m['VmHWM'])})" if key == "after_load" else "")
        rows.append((label, fig, "≤ 96 MiB", verdict(mib(m["VmHWM"] if key == "after_load" else m["VmRSS"]), TARGETS["rss_mib"])))
    for kind, label, tkey in (("post_old", "POST old id, original amount → 202", "old_post_p99_ms"),
                              ("get_old", "GET /payments/{old id} → 200 processed", "old_get_p99_ms"),
                              ("summary_all", "GET /payments-summary, fixture start → now", "summary_ms")):
        s = r["latency_ms"][kind]
        target = TARGETS[tkey]
        rows.append((f"{label}: p50 / p99 / max (n={s['n']}, client, under load)", f"{s['p50']:.3f} / {s['p99']:.3f} / {s['max']:.3f} ms",
                     f"p99 ≤ {target:g} ms", verdict(s["p99"], target)))
        si = r.get("latency_idle_ms", {}).get(kind)
        if si:
            rows.append(("  same, no background load", f"{si['p50']:.3f} / {si['p99']:.3f} / {si['max']:.3f} ms", "", verdict(si["p99"], target)))
        srv = r["server_side"].get(kind)
        if srv:
            rows.append((f"  same, server side (Prometheus bucket bounds, n={srv['n']})",
                         f"p50 ≤ {srv['p50_le_ms']} / p99 ≤ {srv['p99_le_ms']} / max ≤ {srv['max_le_ms']} ms", "", ""))
    ex = r["summary_exact"]
    rows.append((f"summary over the fixture's window (idle, n={ex['idle_ms']['n']}): p50 / p99 / max",
                 f"{ex['idle_ms']['p50']:.3f} / {ex['idle_ms']['p99']:.3f} / {ex['idle_ms']['max']:.3f} ms", "≤ 10 ms", verdict(ex["idle_ms"]["p99"], TARGETS["summary_ms"])))
    rows.append(("summary = fixture.json totals (idle, and under load)", f"{ex['equal_idle']} / {ex['equal_under_load']}", "True", "PASS" if ex["equal_idle"] and ex["equal_under_load"] else "MISS"))
    d = r["summary_delta"]
    rows.append(("summary delta over the run = loadgen 2xx", f"{d['delta_count']} vs {d['loadgen_ok']}" + ("" if d["loadgen_errors"] == 0 else f" ({d['loadgen_errors']} loadgen errors)"),
                 "equal", "PASS" if d["equal"] else "MISS"))
    lg = r["loadgen"]
    rows.append((f"background load: loadgen {lg['rate']}/s, p50 / p99 / max", f"{lg['latency_ms']['p50']} / {lg['latency_ms']['p99']} / {lg['latency_ms']['max']} ms", "", ""))
    rows.append(("probe schedule lateness p50 / p99 / max (Python)", f"{r['probe_lateness_ms']['p50']:.3f} / {r['probe_lateness_ms']['p99']:.3f} / {r['probe_lateness_ms']['max']:.3f} ms", "", ""))
    rows.append(("checks failed (wrong answers)", str(len(r["failures"])), "0", "PASS" if not r["failures"] else "MISS"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows[1:])])


# ---------------------------------------------------------------- the run

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", help="fixture directory: reused when it holds fixture.json, made there otherwise")
    ap.add_argument("--payments", type=int, default=10_000_000, help="payments of a new fixture (default 10,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fixture-rate", type=int, default=2000, help="requestedAt spacing of a new fixture, payments per second")
    ap.add_argument("--processors", default="default,fallback", type=lambda s: s.split(","))
    ap.add_argument("--restarts", type=int, default=3, help="timed starts; the last stays up for the load")
    ap.add_argument("--load-rate", type=int, default=1000, help="background loadgen rate, new payments per second")
    ap.add_argument("--probe-rate", type=float, default=400, help="Python probe requests per second, all kinds together")
    ap.add_argument("--requests", type=int, default=2000, help="old-id POSTs, and as many old-id GETs")
    ap.add_argument("--summaries", type=int, default=300, help="timed summaries over all history under load")
    ap.add_argument("--gateway-arg", action="append", default=[], help="extra `paygate serve` argument (repeat)")
    ap.add_argument("--bin", help="paygate binary (default target/release/paygate)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as built (e.g. by `just build`)")
    args = ap.parse_args()

    paygate, fixture_bin = binaries(args)
    data_dir, fx, made_in = ensure_fixture(args, fixture_bin)
    names = fx["processors"]
    sample = load_sample(data_dir, fx)
    rng = random.Random(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    history_file = data_dir / "history.redb"
    result = {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, " + next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "fixture": {"dir": str(data_dir), "payments": fx["payments"], "from": fx["from"], "to": fx["to"], "rate_per_s": fx["rate_per_s"],
                    "created_in_s": fx["elapsed_s"], "created_wall_s": made_in, "history_bytes_at_creation": fx["history_bytes"],
                    "history_bytes_now": history_file.stat().st_size, "history_allocated_bytes_now": history_file.stat().st_blocks * 512},
        "args": vars(args),
        # Other work on the machine (builds, tests) shows here: the figures are only as quiet as it was.
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "failures": [],
    }
    # Earlier runs' journal segments: each start replays them until a segment fills and is
    # folded, so they weigh on restart time and start-up memory (reported, not removed).
    segments = sorted(data_dir.glob("journal-*.log"))
    result["journal_at_start"] = {"segments": len(segments), "bytes": sum(p.stat().st_size for p in segments),
                                  "snapshots": len(list(data_dir.glob("snapshot-*")))}
    sims = start_sims(paygate, names, logs)
    gw = None
    try:
        # ---- restarts
        runs = []
        for k in range(args.restarts):
            gw = Gateway(paygate, data_dir, sims, names, logs / f"gateway-start{k + 1}.log", args.gateway_arg)
            rss_at_health = rss_kib(gw.pid)
            gw.wait_filter()
            time.sleep(1.0)
            run = {"listening_ms": round(gw.listening_ms, 1), "health_ms": round(gw.health_ms, 1), "recovery": gw.recovery,
                   "phases_ms": gw.phases_ms, "filter": gw.filter, "rss_kib_at_health": rss_at_health, "rss_kib": rss_kib(gw.pid)}
            runs.append(run)
            log(f"start {k + 1}: /health 200 after {gw.health_ms:.0f} ms (listening after {gw.listening_ms:.0f} ms), recovery {gw.recovery}, "
                f"phases {gw.phases_ms}; id filter built {gw.filter['since_spawn_ms']} ms after the spawn (its thread: {gw.filter['ms']} ms, "
                f"{gw.filter['bytes']} bytes); RSS {mib(rss_at_health['VmRSS'])} MiB at /health, {mib(run['rss_kib']['VmRSS'])} MiB with the filter")
            if k < args.restarts - 1:
                gw.stop()
                gw = None
        hs = [r["health_ms"] for r in runs]
        ms = [r["recovery"]["ms"] or 0 for r in runs]
        fs = [r["filter"]["since_spawn_ms"] for r in runs]
        fms = [r["filter"]["ms"] for r in runs]
        result["restart"] = {
            "runs": len(runs), "each": runs,
            "health_ms": {"median": statistics.median(hs), "min": min(hs), "max": max(hs)},
            "recovery_ms": {"median": statistics.median(ms), "min": min(ms), "max": max(ms)},
            "filter_since_spawn_ms": {"median": statistics.median(fs), "min": min(fs), "max": max(fs)},
            "filter_thread_ms": {"median": statistics.median(fms), "min": min(fms), "max": max(fms)},
            "verdict": verdict(statistics.median(hs), TARGETS["restart_ms"], max(hs)),
        }
        result["rss"] = {"after_start": runs[-1]["rss_kib"]}

        # ---- idle: exact summary, spot checks
        equal, got, want, idle = exact_summary(gw.addr, fx)
        result["summary_exact"] = {"equal_idle": equal, "got": got, "want": want, "idle_ms": stats_ms(idle)}
        if not equal:
            result["failures"].append(f"summary over the fixture's window {got} != fixture.json {want}")
        log(f"summary over the fixture's window = fixture.json: {equal}; idle p50 {pct(idle, 0.5):.3f} ms")
        result["failures"] += spot_checks(gw.addr, sample, rng)

        # ---- the same probe with no background load: what co-located load adds to it
        idle_lat, idle_late, failures = probe(gw.addr, fx, sample, args, rng)
        result["failures"] += failures
        result["latency_idle_ms"] = {k: stats_ms(v) for k, v in idle_lat.items()}
        result["probe_lateness_idle_ms"] = stats_ms(idle_late)
        log("idle probe: " + ", ".join(f"{k} p50 {pct(v, 0.5):.3f} p99 {pct(v, 0.99):.3f} ms" for k, v in idle_lat.items()))

        # ---- under load
        total_probe = 2 * args.requests + args.summaries
        probe_s = total_probe / args.probe_rate + 2
        load_s = probe_s + 2
        base = summary_now(gw.addr, fx)
        before = scrape(gw.metrics_addr)
        load_json = OUT / "loadgen.json"
        load = subprocess.Popen([str(paygate), "loadgen", "--url", f"http://{gw.addr}", "--rate", str(args.load_rate), "--duration", f"{load_s:.1f}",
                                 "--warmup", "0", "--json", str(load_json)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(logs / "loadgen.log", "wb"))
        log(f"background load: loadgen --rate {args.load_rate} for {load_s:.0f} s; probing {total_probe} requests at {args.probe_rate:g}/s")
        time.sleep(1.0)
        lat, late, failures = probe(gw.addr, fx, sample, args, rng)
        result["failures"] += failures
        after = scrape(gw.metrics_addr)
        equal_load, got_load, _, _ = exact_summary(gw.addr, fx, times=5)
        result["summary_exact"]["equal_under_load"] = equal_load
        if not equal_load:
            result["failures"].append(f"summary over the fixture's window under load {got_load} != fixture.json")
        if load.wait(timeout=load_s + 60) != 0:
            result["failures"].append(f"loadgen exited with {load.returncode}; see {logs / 'loadgen.log'}")
        lg = json.loads(load_json.read_text())
        lg_errors = sum(lg.get("errors", {}).values())
        result["loadgen"] = {"rate": lg["rate"], "sent": lg["sent"], "ok": lg["ok"], "errors": lg.get("errors"), "latency_ms": lg["latency_ms"]}
        # Every payment loadgen got a 2xx for is processed soon (the simulators answer at once).
        deadline = time.monotonic() + 30
        while True:
            now_totals = summary_now(gw.addr, fx)
            delta = sum(now_totals[n][0] - base[n][0] for n in names)
            if delta >= lg["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        result["summary_delta"] = {"delta_count": delta, "loadgen_ok": lg["ok"], "loadgen_errors": lg_errors,
                                   "equal": delta == lg["ok"] if lg_errors == 0 else delta >= lg["ok"]}
        if not result["summary_delta"]["equal"]:
            result["failures"].append(f"summary delta {delta} != loadgen's {lg['ok']} accepted")
        time.sleep(1.0)
        result["rss"]["after_load"] = rss_kib(gw.pid)
        result["latency_ms"] = {k: stats_ms(v) for k, v in lat.items()}
        result["probe_lateness_ms"] = stats_ms(late)
        # POST /payments mixes the probe's old ids with loadgen's new ones: reported apart.
        result["server_side"] = {"get_old": server_side(before, after, "get_payment"), "summary_all": server_side(before, after, "payments_summary"),
                                 "post_payment_incl_load": server_side(before, after, "post_payment")}
        rc = gw.stop()
        gw = None
        if rc not in (0, None):
            result["failures"].append(f"gateway exited with {rc}")

        # ---- one more restart, with the load's journal
        gw = Gateway(paygate, data_dir, sims, names, logs / "gateway-after-load.log", args.gateway_arg)
        gw.wait_filter()
        result["restart_after_load"] = {"health_ms": round(gw.health_ms, 1), "recovery": gw.recovery, "phases_ms": gw.phases_ms, "filter": gw.filter}
        log(f"restart after the load: /health 200 after {gw.health_ms:.0f} ms, recovery {gw.recovery}")
        gw.stop()
        gw = None
        result["fixture"]["history_bytes_now"] = history_file.stat().st_size
    finally:
        if gw is not None:
            gw.stop()
        for s in reversed(sims):
            s.stop()

    result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    text = json.dumps(result, indent=1, default=str) + "\n"
    (OUT / "results.json").write_text(text)
    # Kept per fixture too, so a quick run does not overwrite the figures of the large one.
    (OUT / f"results-{data_dir.name}.json").write_text(text)
    fxr = result["fixture"]
    print()
    print(f"History bench: {fxr['payments']:,} payments in {data_dir} ({fxr['history_bytes_now'] / 2**20:.0f} MiB; fixture written in "
          f"{fxr['created_in_s']} s), {result['machine']}; load generator, probe and simulators on the same machine "
          f"(load average {' '.join(result['loadavg_at_start'])} at start, {' '.join(result['loadavg_at_end'])} at end).")
    j = result["journal_at_start"]
    print(f"Journal left by earlier runs at start: {j['segments']} segments, {j['bytes'] / 2**20:.1f} MiB (replayed by every start).")
    print("Client latency is measured in Python (http.client, one keep-alive connection per kind, open-model schedule) and includes its overhead.")
    print()
    print(table(result))
    for f in result["failures"][:20]:
        print(f"  failure: {f}")
    print(f"\nresults: {OUT / 'results.json'} (and {OUT / f'results-{data_dir.name}.json'})")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
