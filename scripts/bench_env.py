"""Shared plumbing for the perf scripts: building variants, starting simulators and the
gateway as real processes on loopback ports, and stopping them cleanly."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE = "-C target-cpu=native"


def build(name, env=None, cargo_args=(), rustflags=NATIVE, target="paygate", example=False, ref=None):
    """Builds the paygate binary (or an example) as a named variant; returns its path.
    With `ref`, builds that git commit (checked out in a worktree) instead of the work tree."""
    target_dir = ROOT / "target" / "variants" / name
    src = ROOT
    if ref:
        src = ROOT / "target" / "worktrees" / name
        if not src.exists():
            subprocess.run(["git", "worktree", "add", "--detach", "--force", str(src), ref], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["git", "checkout", "--detach", "--quiet", ref], cwd=src, check=True)
    full_env = dict(os.environ, RUSTFLAGS=rustflags, **(env or {}))
    kind = ["--example", target] if example else ["--bin", target]
    cmd = ["cargo", "build", "--release", "--quiet", *kind, "--target-dir", str(target_dir), *cargo_args]
    print(f"[build] {name}: {' '.join(cmd[2:])} {env or ''} RUSTFLAGS={rustflags}", flush=True)
    subprocess.run(cmd, cwd=src, env=full_env, check=True)
    return target_dir / "release" / ("examples" if example else "") / target


class Proc:
    """A child process that announces `... listening on ADDR` on stdout."""

    def __init__(self, argv, marker, log_path, prefix=()):
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen([*prefix, *map(str, argv)], stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        deadline = time.time() + 30
        self.addr = None
        while time.time() < deadline:
            line = self.p.stdout.readline().decode(errors="replace")
            if not line:
                if self.p.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited early; see {log_path}")
                continue
            if line.startswith(marker):
                self.addr = line.strip().rsplit(" ", 1)[-1]
                break
        if self.addr is None:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start; see {log_path}")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class Stack:
    """Two simulators and a gateway (or any server binary) on fresh loopback ports."""

    def __init__(self, sim_bin, server_argv, server_marker="paygate listening on ", prefix=(), workdir=None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="paygate-perf-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        try:
            self.default = self._start([sim_bin, "processor-sim", "--listen", "127.0.0.1:0", "--fee", "0.05"], "processor-sim listening on ", "default.log")
            self.fallback = self._start([sim_bin, "processor-sim", "--listen", "127.0.0.1:0", "--fee", "0.15"], "processor-sim listening on ", "fallback.log")
            argv = [a.format(default=self.default.addr, fallback=self.fallback.addr, data=self.dir / "data") for a in map(str, server_argv)]
            self.server = self._start(argv, server_marker, "server.log", prefix)
        except Exception:
            self.stop()
            raise

    def _start(self, argv, marker, log, prefix=()):
        p = Proc(argv, marker, self.dir / log, prefix)
        self.procs.append(p)
        return p

    def stop(self, keep=False):
        for p in reversed(self.procs):
            p.stop(signal.SIGINT if p is getattr(self, "server", None) else signal.SIGTERM)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def gateway_argv(binary, extra=()):
    return [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", "{data}",
            "--processor", "default=http://{default}", "--processor", "fallback=http://{fallback}",
            "--admin-token", "perf", *extra]
