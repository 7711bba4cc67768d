#!/usr/bin/env python3
"""Profile-guided build of the gateway: an instrumented build serves a training load, its
profile is merged with the `llvm-profdata` that matches rustc's LLVM, and the release build is
rebuilt with that profile.

    python3 scripts/pgo.py                # prints the path of the PGO binary
    python3 scripts/pgo.py --rate 1500 --duration 20
    just pgo

The training load is `paygate loadgen` (open model, the contest's body) against the
instrumented gateway with two simulators, plus the summary and health reads every client and
operator makes; the gateway is stopped with SIGINT so that its profile is written at exit.
`llvm-profdata` comes from rustup's `llvm-tools` component (`rustup component add llvm-tools`);
it must match rustc's own LLVM version, which Debian's packages are older than.
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import NATIVE, ROOT, Stack, build, gateway_argv  # noqa: E402

PGO_DIR = ROOT / "target" / "pgo"


def llvm_profdata():
    """The `llvm-profdata` shipped with the active toolchain; installs llvm-tools if absent."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    host = next(line.split()[1] for line in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines() if line.startswith("host:"))
    tool = Path(sysroot) / "lib" / "rustlib" / host / "bin" / "llvm-profdata"
    if not tool.exists():
        print("[pgo] installing rustup's llvm-tools component for llvm-profdata", flush=True)
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    if not tool.exists():
        sys.exit(f"pgo: no {tool}; PGO needs the llvm-profdata of rustc's own LLVM version")
    return tool


def train(release, instrumented, rate, duration):
    """Serves a training load with the instrumented gateway; returns when its profile is on disk."""
    stack = Stack(release, gateway_argv(instrumented))
    try:
        url = f"http://{stack.server.addr}"
        subprocess.run([str(release), "loadgen", "--url", url, "--rate", str(rate), "--duration", str(duration), "--warmup", "1"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        for path in ("/payments-summary", "/health", f"/payments-summary?from=2000-01-01T00:00:00.000Z&to=2100-01-01T00:00:00.000Z"):
            for _ in range(50):
                urllib.request.urlopen(url + path, timeout=5).read()
    finally:
        stack.stop()  # SIGINT: the gateway drains and exits, which writes the profile


def build_pgo(rate=1500, duration=20, retrain=True):
    """Instrumented build, training run, merge, PGO build; returns the PGO binary's path.
    With `retrain=False` the last merged profile is used again when there is one (a profile
    from older sources only loses the functions that changed)."""
    if not retrain:
        last = sorted(PGO_DIR.glob("merged-*.profdata"), key=lambda p: p.stat().st_mtime)
        if last:
            return build("pgo", rustflags=f"{NATIVE} -C profile-use={last[-1]}")
    profdata = llvm_profdata()
    raw = PGO_DIR / "raw"
    release = build("release")
    instrumented = build("pgo-instrumented", rustflags=f"{NATIVE} -C profile-generate={raw}")
    # Build scripts and proc macros were instrumented too and wrote profiles as they ran: only
    # the gateway's own run belongs in the profile.
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    train(release, instrumented, rate, duration)
    profiles = list(raw.glob("*.profraw"))
    if not profiles:
        sys.exit(f"pgo: the instrumented gateway wrote no profile under {raw}")
    merged = PGO_DIR / "merged.profdata"
    subprocess.run([str(profdata), "merge", "-o", str(merged), *map(str, profiles)], check=True)
    # The profile's digest in its name changes RUSTFLAGS, so cargo rebuilds for a new profile.
    digest = hashlib.sha256(merged.read_bytes()).hexdigest()[:12]
    used = PGO_DIR / f"merged-{digest}.profdata"
    shutil.copyfile(merged, used)
    return build("pgo", rustflags=f"{NATIVE} -C profile-use={used}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1500, help="training payments per second")
    ap.add_argument("--duration", type=float, default=20, help="training seconds")
    a = ap.parse_args()
    print(build_pgo(a.rate, a.duration))


if __name__ == "__main__":
    main()
