#!/usr/bin/env python3
"""Cluster mode against the embedded journal and against PostgreSQL's own floor, in one run.

    python3 scripts/cluster_bench.py                       # 3 reps × 500/s, 2000/s × 3 sides, 20 s each (~10 min)
    python3 scripts/cluster_bench.py --reps 1 --seconds 5  # a quick check
    python3 scripts/cluster_bench.py --rates 1000 --sides cluster,floor
    python3 scripts/cluster_bench.py --render target/cluster-bench/latest.json

Four sides, run interleaved (for each rep, for each rate: embedded, cluster, cluster1, floor), every run
on fresh state:

* `embedded`: one `paygate serve --fsync on` on a fresh data directory, `paygate loadgen` at
  the rate against it.
* `cluster`: two `paygate serve --database-url postgres://postgres@127.0.0.1:PORT/DB
  --instance-id ... --lease-ms N` on a fresh database of one private PostgreSQL, and two
  `paygate loadgen` processes at half the rate each, one per instance (loadgen takes one
  --url, and its JSON has percentiles, not the histogram, so the two cannot be merged
  exactly): a rep's latency figure is the WORSE of the two instances' (each percentile
  separately); the errors are their sum; both instances' own figures are in the JSON and in
  the second table.
* `cluster1`: the cluster side with ONE instance and one loadgen at the whole rate: what a
  commit in PostgreSQL costs the latency without a second gateway and load generator sharing
  the same CPUs.
* `floor`: pgbench on the same PostgreSQL, a fresh database holding a copy of paygate's
  payments table (primary key and the unsettled index), one prepared INSERT of a payment-like
  row per transaction, `-R RATE -c 8 -j 2 -M prepared -n -l`. Latencies come from its
  per-transaction log (with -R each is measured from the transaction's scheduled start, like
  loadgen's from the intended send time); the warm-up is cut off by scheduled time. No
  --latency-limit: it would skip transactions already late instead of timing them.

Both processor simulators run for the whole benchmark and serve every gateway. PostgreSQL:
initdb in a temp dir (as the `postgres` user via runuser when run as root), fsync=on,
synchronous_commit=on, otherwise defaults; TCP on 127.0.0.1, its unix socket in the temp dir.

Figures per run:
* p50 / p99 / p99.9 / max latency from loadgen (every response; with 0 errors they are all
  202s) or pgbench, ms; errors = everything that was not 2xx (loadgen) or failed (pgbench).
* CPU µs per payment: utime+stime (/proc/PID/stat) over the load (warm-up included, plus 1 s
  after it) of the side's server processes: the gateway(s), and for cluster and floor the
  postmaster (its own time plus cutime/cstime, which holds every child it has reaped) plus
  every live descendant of it, read at both ends of the window (so backends that exit inside
  the window are counted through the postmaster's cutime). Not the load generators, pgbench or
  the simulators. Divided by the payments accepted in the same window (the gateways'
  paygate_payments_accepted_total; pgbench: transactions in its log, warm-up included).
* commits per payment (cluster, floor): the database's pg_stat_database.xact_commit delta ÷
  payments accepted. Backends flush their counters at most once a second, and a backend gone
  idle within that second only after 10 s (PostgreSQL 15), but always when they exit: so the
  second read is taken after the gateways (or pgbench) have exited and their sessions are gone.
  It counts everything the instances commit from just before the load until they exit:
  acceptances, intents and outcomes, the lease heartbeats (4 per lease, at most every 500 ms,
  per instance), the shared health checks, reads, the shutdown; and 1-2 of this script's own
  reads. Also `xids/payment`: transactions that wrote (and so flushed WAL) in the load window,
  from pg_snapshot_xmax(pg_current_snapshot()), immediate and cluster-wide (only the bench
  writes there).

Everything runs on this machine (load generators and simulators too): its cores are reported.
Every process started is stopped at exit (also on Ctrl-C / SIGTERM), PostgreSQL with
`pg_ctl stop -m immediate`, and the temp dir removed; a global alarm bounds the run.
Results: target/cluster-bench/<stamp>.json (and latest.json), logs in target/cluster-bench/logs/<stamp>/.

Python 3.11 standard library only.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import NATIVE, ROOT, Proc  # noqa: E402
from soak import current_commit, free_port, scrape, wait_healthy  # noqa: E402

OUT = ROOT / "target" / "cluster-bench"
SIDES = ("embedded", "cluster", "cluster1", "floor")
CLK = os.sysconf("SC_CLK_TCK")

FLOOR_SCHEMA = """
CREATE TABLE floor_payments (
    id           uuid PRIMARY KEY,
    cents        bigint NOT NULL CHECK (cents > 0),
    accepted_at  bigint NOT NULL,
    status       smallint NOT NULL CHECK (status IN (0, 1, 2)),
    processor    text,
    requested_at bigint,
    owner        text NOT NULL,
    epoch        bigint NOT NULL
);
CREATE INDEX floor_payments_unsettled ON floor_payments (epoch) WHERE status < 2;
CREATE INDEX floor_payments_processed ON floor_payments (requested_at) INCLUDE (processor, cents) WHERE status = 2;
"""
FLOOR_SCRIPT = """\\set cents random(1, 100000)
INSERT INTO floor_payments (id, cents, accepted_at, status, owner, epoch) VALUES (gen_random_uuid(), :cents, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0, 'pgbench', 1);
"""


def log(msg):
    print(f"[cluster-bench] {msg}", flush=True)


# ---------------------------------------------------------------- cleanup

class Cleanup:
    """Everything started, stopped in reverse order at exit, whatever the exit."""

    def __init__(self):
        self.procs = []  # Proc or Popen
        self.actions = []  # callables

    def add(self, p):
        self.procs.append(p)
        return p

    def forget(self, p):
        if p in self.procs:
            self.procs.remove(p)

    def run(self):
        for p in reversed(self.procs):
            try:
                stop_proc(p, signal.SIGKILL, 5)
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: {e}")
        self.procs.clear()
        for a in reversed(self.actions):
            try:
                a()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: {e}")
        self.actions.clear()


CLEANUP = Cleanup()


class Timeout(Exception):
    pass


def on_signal(signum, _frame):
    if signum == signal.SIGALRM:
        raise Timeout("the run went past its time bound (--max-minutes)")
    raise KeyboardInterrupt(f"signal {signum}")


def stop_proc(p, sig=signal.SIGINT, timeout=15):
    popen = p.p if isinstance(p, Proc) else p
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
    if isinstance(p, Proc) and not p.log.closed:
        p.log.close()
    return popen.returncode


# ---------------------------------------------------------------- /proc

def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in clock ticks, or None when gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def cpu_self_s(pid):
    s = proc_stat(pid)
    return None if s is None else s[1] / CLK


def cpu_tree_s(root):
    """CPU of `root` and every live descendant (own + reaped children), seconds."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = proc_stat(int(d))
            if s:
                stats[int(d)] = s
    if root not in stats:
        return None
    children = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, n = 0, [root], 0
    while todo:
        pid = todo.pop()
        _, own, reaped = stats[pid]
        total += own + reaped
        n += 1
        todo += children.get(pid, [])
    return total / CLK


# ---------------------------------------------------------------- PostgreSQL

class Postgres:
    def __init__(self, top, bindir):
        self.bindir = Path(bindir)
        self.dir = top / "pg"
        self.dir.mkdir()
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_pg = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        self.logfile = self.dir / "postgres.log"
        self.started = False
        self.run_pg([self.bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"], timeout=120)
        conf = (f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 100\n")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)
        CLEANUP.actions.append(self.stop)
        self.run_pg([self.bin("pg_ctl"), "start", "-D", self.data, "-w", "-t", "60", "-l", self.logfile], timeout=90)
        self.started = True
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.settings = {k: self.sql(f"SHOW {k}") for k in ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
                                                            "full_page_writes", "shared_buffers", "wal_level", "commit_delay")}

    def bin(self, name):
        return str(self.bindir / name)

    def run_pg(self, argv, timeout=60):
        r = subprocess.run([*self.as_pg, *map(str, argv)], capture_output=True, text=True, timeout=timeout, cwd="/")
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))}: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def sql(self, query, db="postgres"):
        r = subprocess.run([self.bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", db, "-c", query], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {r.stderr.strip()}")
        return r.stdout.strip()

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def xact_commit(self, db):
        return int(self.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()", db))

    def next_xid(self):
        return int(self.sql("SELECT pg_snapshot_xmax(pg_current_snapshot())"))

    def wal_bytes(self):
        """WAL written so far (bytes since 0/0), cluster-wide."""
        return int(float(self.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")))

    def wal_files(self):
        return int(self.sql("SELECT count(*) FROM pg_ls_waldir()"))

    def sessions(self, db):
        return int(self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"))

    def wait_no_sessions(self, db, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sessions(db) == 0:
                return True
            time.sleep(0.1)
        return False

    def cpu_s(self):
        return cpu_tree_s(self.pid)

    def stop(self):
        if self.started:
            self.started = False
            try:
                self.run_pg([self.bin("pg_ctl"), "stop", "-D", self.data, "-m", "immediate", "-w", "-t", "30"], timeout=60)
            except Exception as e:  # noqa: BLE001
                log(f"pg_ctl stop: {e}")


def pg_bindir(arg):
    if arg:
        return arg
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    if not found:
        sys.exit("no /usr/lib/postgresql/*/bin: install PostgreSQL or give --pg-bin")
    return found[-1]


# ---------------------------------------------------------------- one run of each side

def gateway(paygate, sims, data_dir, log_path, extra):
    metrics_port = free_port()
    argv = [paygate, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--fsync", "on",
            "--processor", f"default=http://{sims[0].addr}", "--processor", f"fallback=http://{sims[1].addr}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--admin-token", "cluster-bench", "--drain-ms", "0", *extra]
    g = CLEANUP.add(Proc(argv, "paygate listening on ", log_path))
    g.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_healthy(g.addr, timeout_s=60)
    except BaseException:
        stop_proc(g, signal.SIGKILL, 5)
        CLEANUP.forget(g)
        raise
    return g


def accepted(g):
    v = scrape(g.metrics)["accepted"]
    return None if v is None else int(v)


def loadgen(paygate, addr, rate, args, json_path, log_path):
    argv = [str(paygate), "loadgen", "--url", f"http://{addr}", "--rate", str(rate), "--duration", str(args.seconds),
            "--warmup", str(args.warmup), "--connections", str(args.connections), "--window-s", str(args.window_s), "--json", str(json_path)]
    lf = open(log_path, "wb")
    p = CLEANUP.add(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=lf, cwd=ROOT))
    p.logfile = lf
    return p


def finish_loadgen(p, json_path, timeout):
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
    CLEANUP.forget(p)
    p.logfile.close()
    if p.returncode != 0 or not Path(json_path).exists():
        raise RuntimeError(f"loadgen exited with {p.returncode}; see {p.logfile.name}")
    j = json.loads(Path(json_path).read_text())
    return {"rate": j["rate"], "sent": j["sent"], "ok": j["ok"], "errors": {k: v for k, v in j["errors"].items() if v},
            "error_count": sum(j["errors"].values()), "latency_ms": j["latency_ms"], "achieved_rate": j["achieved_rate"],
            "client_start_lag_ms": j["client_start_lag_ms"], "first_transport_error": j.get("first_transport_error"),
            # Per window of intended send time: [start_s, p99, max, errors], to see where a tail sits.
            "windows": [[w["start_s"], w["latency_ms"]["p99"], w["latency_ms"]["max"], sum(w["errors"].values())] for w in j.get("windows") or []]}


def log_levels(path):
    """WARN and ERROR lines of a gateway's log: counts and the first few."""
    out = {"WARN": 0, "ERROR": 0, "first": []}
    for line in Path(path).read_text(errors="replace").splitlines():
        for level in ("WARN", "ERROR"):
            if f" {level} " in line[:40]:
                out[level] += 1
                if len(out["first"]) < 5:
                    out["first"].append(line[:300])
    return out


def per_payment_us(cpu_s, payments):
    return None if not payments or cpu_s is None else round(cpu_s / payments * 1e6, 1)


def run_embedded(ctx, rate, tag):
    data = ctx["top"] / f"{tag}-data"
    g = gateway(ctx["paygate"], ctx["sims"], data, ctx["logs"] / f"{tag}-gateway.log", ctx["args"].gateway_arg)
    try:
        a0, c0 = accepted(g), cpu_self_s(g.p.pid)
        lg = loadgen(ctx["paygate"], g.addr, rate, ctx["args"], ctx["logs"] / f"{tag}-loadgen.json", ctx["logs"] / f"{tag}-loadgen.log")
        r = finish_loadgen(lg, ctx["logs"] / f"{tag}-loadgen.json", ctx["load_timeout"])
        time.sleep(1.0)
        c1, a1 = cpu_self_s(g.p.pid), accepted(g)
    finally:
        rc = stop_proc(g, signal.SIGINT, 30)
        CLEANUP.forget(g)
        shutil.rmtree(data, ignore_errors=True)
    pay = (a1 - a0) if a0 is not None and a1 is not None else None
    return {"latency_ms": r["latency_ms"], "errors": r["error_count"], "error_kinds": r["errors"], "ok": r["ok"], "sent": r["sent"],
            "loadgen": [r], "cpu_s": {"gateway": round(c1 - c0, 3)}, "payments_in_window": pay,
            "cpu_us_per_payment": per_payment_us(c1 - c0, pay), "gateway_exit": [rc],
            "gateway_log": [log_levels(ctx["logs"] / f"{tag}-gateway.log")]}


def worse(lats):
    return {k: max(l[k] for l in lats) for k in lats[0]}


def run_cluster(ctx, rate, tag, n=2):
    """`n` instances (2: the `cluster` side; 1: `cluster1`, the same load on one instance), one loadgen each."""
    pg, args = ctx["pg"], ctx["args"]
    db = f"bench_{tag.replace('-', '_')}"
    pg.sql(f"CREATE DATABASE {db}")
    gws, rcs = [], []
    try:
        for i in range(1, n + 1):
            extra = ["--database-url", pg.url(db), "--instance-id", f"bench-{i}", "--lease-ms", str(args.lease_ms), *args.gateway_arg]
            gws.append(gateway(ctx["paygate"], ctx["sims"], ctx["top"] / f"{tag}-unused-{i}", ctx["logs"] / f"{tag}-gateway{i}.log", extra))
        x0, w0, b0 = pg.xact_commit(db), pg.next_xid(), pg.wal_bytes()
        time.sleep(0.2)
        a0 = [accepted(g) for g in gws]
        c0 = {"gateways": sum(cpu_self_s(g.p.pid) for g in gws), "postgres": pg.cpu_s()}
        half = [rate // n + (1 if i < rate % n else 0) for i in range(n)]
        lgs = [loadgen(ctx["paygate"], g.addr, half[i], args, ctx["logs"] / f"{tag}-loadgen{i + 1}.json", ctx["logs"] / f"{tag}-loadgen{i + 1}.log")
               for i, g in enumerate(gws)]
        rs = [finish_loadgen(p, ctx["logs"] / f"{tag}-loadgen{i + 1}.json", ctx["load_timeout"]) for i, p in enumerate(lgs)]
        time.sleep(1.0)
        c1 = {"gateways": sum(cpu_self_s(g.p.pid) for g in gws), "postgres": pg.cpu_s()}
        a1 = [accepted(g) for g in gws]
        w1, b1 = pg.next_xid(), pg.wal_bytes()
        rows = int(pg.sql("SELECT count(*) FROM paygate_payments", db))
        unsettled = int(pg.sql("SELECT count(*) FROM paygate_payments WHERE status < 2", db))
    finally:
        for g in reversed(gws):
            rcs.append(stop_proc(g, signal.SIGINT, 30))
            CLEANUP.forget(g)
    drained = pg.wait_no_sessions(db)
    time.sleep(0.2)
    x1 = pg.xact_commit(db)
    pg.sql(f"DROP DATABASE {db}")
    pay = sum(b - a for a, b in zip(a0, a1)) if None not in a0 + a1 else None
    cpu = {k: round(c1[k] - c0[k], 3) for k in c0}
    return {"latency_ms": worse([r["latency_ms"] for r in rs]), "errors": sum(r["error_count"] for r in rs),
            "error_kinds": [r["errors"] for r in rs], "ok": sum(r["ok"] for r in rs), "sent": sum(r["sent"] for r in rs),
            "per_instance_latency_ms": [r["latency_ms"] for r in rs], "loadgen": rs, "cpu_s": cpu, "payments_in_window": pay,
            "cpu_us_per_payment": per_payment_us(sum(cpu.values()), pay),
            "cpu_us_per_payment_parts": {k: per_payment_us(v, pay) for k, v in cpu.items()},
            "xact_commit_delta": x1 - x0, "commits_per_payment": round((x1 - x0) / pay, 3) if pay else None,
            "xids_delta": w1 - w0, "xids_per_payment": round((w1 - w0) / pay, 3) if pay else None,
            "wal_bytes_per_payment": round((b1 - b0) / pay) if pay else None, "wal_files_after": pg.wal_files(),
            "rows_in_db": rows, "unsettled_rows_after_load": unsettled, "sessions_gone_before_read": drained, "gateway_exit": rcs,
            "gateway_log": [log_levels(ctx["logs"] / f"{tag}-gateway{i}.log") for i in range(1, n + 1)]}


def pct(sorted_xs, q):
    return sorted_xs[min(len(sorted_xs) - 1, max(0, int(round(q * len(sorted_xs) + 0.5)) - 1))]


def pgbench_log(prefix, warmup, window_s):
    """(measured latencies µs, errors, all transactions, windows) from pgbench's per-transaction
    logs; windows of scheduled time as loadgen's: [start_s, p99 ms, max ms, errors (not placed: 0)]."""
    rows, bad = [], 0
    for path in glob.glob(f"{prefix}*"):
        for line in Path(path).read_text().splitlines():
            f = line.split()
            if len(f) < 6:
                continue
            if not f[2].isdigit():  # "skipped" or "failed"
                bad += 1
                continue
            lat = int(f[2])
            end = int(f[4]) + int(f[5]) / 1e6
            rows.append((end - lat / 1e6, lat))
    if not rows:
        return [], bad, 0, []
    t0 = min(s for s, _ in rows)
    measured = sorted(lat for s, lat in rows if s >= t0 + warmup)
    by_window = {}
    for s, lat in rows:
        if s >= t0 + warmup:
            by_window.setdefault(int((s - t0 - warmup) / window_s), []).append(lat)
    windows = [[round(k * window_s, 3), pct(sorted(v), 0.99) / 1000, max(v) / 1000, 0] for k, v in sorted(by_window.items())]
    return measured, bad, len(rows) + bad, windows


def run_floor(ctx, rate, tag):
    pg, args = ctx["pg"], ctx["args"]
    db = f"floor_{tag.replace('-', '_')}"
    pg.sql(f"CREATE DATABASE {db}")
    pg.sql(FLOOR_SCHEMA, db)
    wd = ctx["top"] / f"{tag}-pgbench"
    wd.mkdir()
    script = wd / "payment.sql"
    script.write_text(FLOOR_SCRIPT)
    x0, w0, b0 = pg.xact_commit(db), pg.next_xid(), pg.wal_bytes()
    time.sleep(0.2)
    c0 = pg.cpu_s()
    argv = [pg.bin("pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-n", "-M", "prepared", "-f", str(script),
            "-R", str(rate), "-T", str(int(round(args.warmup + args.seconds))), "-c", str(args.pgbench_clients), "-j", str(args.pgbench_jobs),
            "-l", "--log-prefix", str(wd / "pgb"), db]
    out = open(ctx["logs"] / f"{tag}-pgbench.log", "w")
    p = CLEANUP.add(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=wd))
    try:
        p.wait(ctx["load_timeout"])
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
    CLEANUP.forget(p)
    out.close()
    drained = pg.wait_no_sessions(db)
    time.sleep(1.0)
    c1 = pg.cpu_s()
    w1, b1 = pg.next_xid(), pg.wal_bytes()
    x1 = pg.xact_commit(db)
    summary = (ctx["logs"] / f"{tag}-pgbench.log").read_text()
    if p.returncode != 0:
        raise RuntimeError(f"pgbench exited with {p.returncode}:\n{summary[-2000:]}")
    measured, bad, total, windows = pgbench_log(wd / "pgb", args.warmup, args.window_s)
    failed = next((int(l.split(":")[1].split()[0]) for l in summary.splitlines() if l.startswith("number of failed transactions")), 0)
    rows = int(pg.sql("SELECT count(*) FROM floor_payments", db))
    pg.sql(f"DROP DATABASE {db}")
    shutil.rmtree(wd, ignore_errors=True)
    lat = ({"p50": pct(measured, 0.5) / 1000, "p90": pct(measured, 0.9) / 1000, "p99": pct(measured, 0.99) / 1000,
            "p999": pct(measured, 0.999) / 1000, "max": measured[-1] / 1000, "mean": round(statistics.fmean(measured) / 1000, 3)}
           if measured else None)
    return {"latency_ms": lat, "errors": max(bad, failed), "ok": len(measured), "sent": total, "transactions_logged": total,
            "rows_in_db": rows, "cpu_s": {"postgres": round(c1 - c0, 3)}, "payments_in_window": rows,
            "cpu_us_per_payment": per_payment_us(c1 - c0, rows),
            "xact_commit_delta": x1 - x0, "commits_per_payment": round((x1 - x0) / rows, 3) if rows else None,
            "xids_delta": w1 - w0, "xids_per_payment": round((w1 - w0) / rows, 3) if rows else None,
            "wal_bytes_per_payment": round((b1 - b0) / rows) if rows else None, "wal_files_after": pg.wal_files(),
            "sessions_gone_before_read": drained, "windows": windows,
            "pgbench_summary": [l for l in summary.splitlines() if l.startswith(("number of", "latency", "tps", "rate limit", "initial"))]}


RUNNERS = {"embedded": run_embedded, "cluster": run_cluster, "cluster1": lambda ctx, rate, tag: run_cluster(ctx, rate, tag, 1),
           "floor": run_floor}


# ---------------------------------------------------------------- reporting

def agg(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt(a, digits=2):
    if a is None:
        return "n/a"
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    return f(a["median"]) if a["min"] == a["max"] else f"{f(a['median'])} ({f(a['min'])}–{f(a['max'])})"


def summarise(result):
    out = []
    for side in result["sides"]:
        for rate in result["rates"]:
            runs = [r for r in result["runs"] if r["side"] == side and r["rate"] == rate and "error" not in r]
            failed = [r for r in result["runs"] if r["side"] == side and r["rate"] == rate and "error" in r]
            lat = [r["latency_ms"] for r in runs if r.get("latency_ms")]
            row = {"side": side, "rate": rate, "reps": len(runs), "failed_runs": len(failed),
                   **{k: agg([l[k] for l in lat]) for k in ("p50", "p99", "p999", "max")},
                   "errors": agg([r["errors"] for r in runs]), "cpu_us_per_payment": agg([r.get("cpu_us_per_payment") for r in runs]),
                   "commits_per_payment": agg([r.get("commits_per_payment") for r in runs]),
                   "xids_per_payment": agg([r.get("xids_per_payment") for r in runs])}
            if side.startswith("cluster"):
                row["per_instance"] = [{k: agg([r["per_instance_latency_ms"][i][k] for r in runs]) for k in ("p50", "p99", "p999", "max")}
                                       for i in range(len(runs[0]["per_instance_latency_ms"]))] if runs else None
            out.append(row)
    return out


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(result):
    s = result["summary"]
    a = result["args"]
    print()
    print(f"Cluster bench, {result['recorded_at']}, commit {result['commit']}: {result['machine']} — gateways, PostgreSQL, "
          f"load generators and simulators all on these cores. {a['reps']} reps × {a['seconds']} s (+{a['warmup']} s warm-up) per "
          f"side and rate, interleaved {'/'.join(result['sides'])}. PostgreSQL {result['postgres'].get('server_version')} "
          f"(fsync {result['postgres'].get('fsync')}, synchronous_commit {result['postgres'].get('synchronous_commit')}, "
          f"wal_sync_method {result['postgres'].get('wal_sync_method')}) and the embedded journal (--fsync on) both on {result.get('fs')}.")
    print("Latency ms from the intended send time: median over reps (min–max). cluster = two instances, each with its own loadgen at "
          "half the rate; its figure per rep is the worse instance's. floor = pgbench, one INSERT per transaction, "
          f"-c {a['pgbench_clients']} -j {a['pgbench_jobs']}. CPU = server-side processes only (gateways + PostgreSQL), warm-up included.")
    print()
    s = [r for r in s if r["reps"] or r["failed_runs"]]
    rows = [(r["side"], r["rate"], fmt(r["p50"], 3), fmt(r["p99"], 3), fmt(r["p999"], 3), fmt(r["max"], 2), fmt(r["errors"], 0),
             fmt(r["cpu_us_per_payment"], 0), fmt(r["commits_per_payment"], 3), fmt(r["xids_per_payment"], 3), r["reps"])
            + ((r["failed_runs"],) if any(x["failed_runs"] for x in s) else ()) for r in s]
    print(table(rows, ("side", "rate/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "CPU µs/payment", "commits/payment",
                       "xids/payment", "reps") + (("failed runs",) if any(x["failed_runs"] for x in s) else ())))
    per = [r for r in s if r.get("per_instance")]
    if per:
        print()
        print("cluster per instance (cluster: each at half the rate; cluster1: the one instance): median over reps (min–max)")
        print()
        prow = [(f"{r['side']} {r['rate']}/s", f"instance {i + 1}", fmt(pi["p50"], 3), fmt(pi["p99"], 3), fmt(pi["p999"], 3), fmt(pi["max"], 2))
                for r in per for i, pi in enumerate(r["per_instance"])]
        print(table(prow, ("rate", "instance", "p50 ms", "p99 ms", "p99.9 ms", "max ms")))
    for r in result["runs"]:
        if "error" in r:
            print(f"  run {r['side']} {r['rate']}/s rep {r['rep']} failed: {r['error']}")
    if result.get("wall_s"):
        print(f"\nwall time {result['wall_s']:.0f} s; results: {result.get('path')}")


# ---------------------------------------------------------------- main

def binary(args, stamp):
    if not args.no_build:
        env = dict(os.environ, RUSTFLAGS=os.environ.get("RUSTFLAGS", NATIVE))
        cmd = ["cargo", "build", "--release", "--bin", "paygate"]
        log(f"build: {' '.join(cmd)} (RUSTFLAGS={env['RUSTFLAGS']})")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    src = Path(args.bin) if args.bin else ROOT / "target" / "release" / "paygate"
    if not src.exists():
        sys.exit(f"{src} is missing: run `just build` (or drop --no-build)")
    # This run uses one build throughout, whatever rebuilds target/release meanwhile.
    dest = OUT / "bin" / f"paygate-{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    CLEANUP.actions.append(lambda: dest.unlink(missing_ok=True))
    return dest


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="500,2000", type=lambda s: [int(x) for x in s.split(",")], help="payments per second (default 500,2000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (default 20)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run, at the same rate (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each side and rate (default 3)")
    ap.add_argument("--sides", default=",".join(SIDES), type=lambda s: s.split(","), help="subset of embedded,cluster,cluster1,floor")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections of each loadgen (default 64)")
    ap.add_argument("--window-s", type=float, default=1.0, help="loadgen --window-s: per-window p99/max kept in the JSON (default 1)")
    ap.add_argument("--lease-ms", type=int, default=7000, help="cluster instances' --lease-ms (default 7000, the gateway's default)")
    ap.add_argument("--pgbench-clients", type=int, default=8)
    ap.add_argument("--pgbench-jobs", type=int, default=2)
    ap.add_argument("--gateway-arg", action="append", default=[], help="extra `paygate serve` argument for every gateway (repeat)")
    ap.add_argument("--pg-bin", help="PostgreSQL bin dir (default: newest /usr/lib/postgresql/*/bin)")
    ap.add_argument("--bin", help="paygate binary (default target/release/paygate)")
    ap.add_argument("--no-build", action="store_true", help="use the binary as built (e.g. by `just build`)")
    ap.add_argument("--out", default=str(OUT), help="results dir (default target/cluster-bench)")
    ap.add_argument("--max-minutes", type=float, help="hard bound on the whole run (default: twice the estimate + 5 min)")
    ap.add_argument("--render", metavar="JSON", help="re-print the tables of an earlier run and exit")
    args = ap.parse_args()
    if args.render:
        render(json.loads(Path(args.render).read_text()))
        return 0
    if bad := [s for s in args.sides if s not in SIDES]:
        sys.exit(f"unknown side(s) {bad}: choose from {SIDES}")
    if args.reps < 1 or args.seconds <= 0:
        sys.exit("--reps and --seconds must be positive")

    OUT = Path(args.out).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = OUT / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    n_runs = args.reps * len(args.rates) * len(args.sides)
    estimate = n_runs * (args.seconds + args.warmup + 6) + 30
    bound = args.max_minutes * 60 if args.max_minutes else 2 * estimate + 300
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    # Ctrl-C cleans up even when started from a shell that had SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t_start = time.monotonic()
    result = {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, " + next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "cores": os.cpu_count(), "commit": current_commit(), "args": vars(args), "sides": args.sides, "rates": args.rates,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3], "runs": [], "postgres": {}, "logs": str(logs),
    }
    code = 0
    try:
        paygate = binary(args, stamp)
        signal.alarm(int(bound))
        log(f"{n_runs} runs, about {estimate / 60:.1f} min (bound {bound / 60:.0f} min); {os.cpu_count()} cores; logs in {logs}")
        top = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
        os.chmod(top, 0o755)
        CLEANUP.actions.insert(0, lambda: shutil.rmtree(top, ignore_errors=True))  # last: after PostgreSQL stops
        fs = subprocess.run(["df", "--output=fstype,source", str(top)], capture_output=True, text=True).stdout.split("\n")[1:2]
        fs = " ".join(fs[0].split()) if fs else "?"
        result["fs"] = f"{fs} ({top.parent})"
        sims = [CLEANUP.add(Proc([paygate, "processor-sim", "--listen", "127.0.0.1:0", "--fee", fee], "processor-sim listening on ", logs / f"sim-{name}.log"))
                for name, fee in (("default", "0.05"), ("fallback", "0.15"))]
        pg = None
        if {"cluster", "cluster1", "floor"} & set(args.sides):
            pg = Postgres(top, pg_bindir(args.pg_bin))
            result["postgres"] = pg.settings
            log(f"PostgreSQL {pg.settings['server_version']} on 127.0.0.1:{pg.port} (pid {pg.pid}), {pg.settings}")
        ctx = {"paygate": paygate, "sims": sims, "top": top, "logs": logs, "args": args, "pg": pg,
               "load_timeout": args.warmup + args.seconds + 60}
        for rep in range(1, args.reps + 1):
            for rate in args.rates:
                for side in args.sides:
                    tag = f"{side}-{rate}-r{rep}"
                    t0 = time.monotonic()
                    try:
                        r = RUNNERS[side](ctx, rate, tag)
                    except (KeyboardInterrupt, Timeout):
                        raise
                    except Exception as e:  # noqa: BLE001 - one failed run is reported, the rest go on
                        r = {"error": str(e)[-2000:]}
                        code = 1
                    r.update(side=side, rate=rate, rep=rep, wall_s=round(time.monotonic() - t0, 1),
                             loadavg=Path("/proc/loadavg").read_text().split()[:3])
                    result["runs"].append(r)
                    if "error" in r:
                        log(f"{tag}: FAILED: {r['error']}")
                    else:
                        l = r["latency_ms"] or {}
                        log(f"{tag}: p50 {l.get('p50')} p99 {l.get('p99')} p99.9 {l.get('p999')} max {l.get('max')} ms, errors {r['errors']}, "
                            f"CPU {r['cpu_us_per_payment']} µs/payment, commits/payment {r.get('commits_per_payment', 'n/a')}, "
                            f"xids/payment {r.get('xids_per_payment', 'n/a')} ({r['wall_s']} s)")
                        if r["errors"]:
                            code = 1
                        if "rows_in_db" in r and r["rows_in_db"] != r["payments_in_window"]:
                            log(f"{tag}: {r['rows_in_db']} rows in the database, {r['payments_in_window']} payments accepted (metrics)")
        if pg:
            tail = pg.logfile.read_text(errors="replace").splitlines()[-200:]
            (logs / "postgres.log").write_text("\n".join(tail) + "\n")
    except Timeout as e:
        log(str(e))
        result["aborted"] = str(e)
        code = 2
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); stopping everything")
        result["aborted"] = f"interrupted {e}"
        code = 130
    finally:
        signal.alarm(0)
        CLEANUP.run()
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    result["summary"] = summarise(result)
    path = OUT / f"{stamp}.json"
    result["path"] = str(path)
    text = json.dumps(result, indent=1, default=str) + "\n"
    path.write_text(text)
    (OUT / "latest.json").write_text(text)
    if result["runs"]:
        render(result)
    return code


if __name__ == "__main__":
    sys.exit(main())
