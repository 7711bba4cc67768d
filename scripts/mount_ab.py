#!/usr/bin/env python3
"""A/B of one mount option of the file system that holds the gateway's data directory, by
CPU per payment (root only). Runs `paygate loadgen` against the gateway (release build, its
defaults) with the option on and off, interleaved, and writes
perf/results/matrix-mount-OPTION.json in the strategy matrix's format (perf.md renders it).

It remounts that file system between runs (`mount -o remount,OPTION` and
`remount,noOPTION`) and restores the option as it found it at the end, whatever happens.
Only for options that can be changed on a live mount without harm (`lazytime`).

    python3 scripts/mount_ab.py [--option lazytime] [--rate 500] [--duration 10] [--runs 3]
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import build  # noqa: E402
from perf_report import commit, interleaved, one_run, save  # noqa: E402


def findmnt(field, path):
    return subprocess.run(["findmnt", "-n", "-o", field, "--target", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def remount(target, option):
    subprocess.run(["mount", "-o", f"remount,{option}", target], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--option", default="lazytime")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    # The gateway's data directory lives under the system's temporary directory (bench_env.Stack).
    target = findmnt("TARGET", tempfile.gettempdir())
    was_on = a.option in findmnt("OPTIONS", tempfile.gettempdir()).split(",")
    bins = {"release": build("release")}
    sides = {"A": a.option, "B": f"no{a.option}"}

    def run(side):
        remount(target, sides[side])
        return one_run(bins, "release", [], a.rate, a.duration, f"mount-{side}")

    try:
        got = interleaved(a.runs, ["A", "B"], run)
    finally:
        remount(target, a.option if was_on else f"no{a.option}")
    title = f"file system of the data directory ({target}) mounted with {a.option} vs {sides['B']}"
    save(f"matrix-mount-{a.option}", {"title": title, "rate": a.rate, "duration_s": a.duration, "commit": commit(),
                                       "A": {"variant": f"release, mount {sides['A']}", "args": [], "runs": got["A"]},
                                       "B": {"variant": f"release, mount {sides['B']}", "args": [], "runs": got["B"]}})


if __name__ == "__main__":
    main()
