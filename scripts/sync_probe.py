#!/usr/bin/env python3
"""What one small journal sync costs on this disk, appending vs overwriting zero-filled space,
and what zero-filling further ahead costs by chunk size (perf.md, "Journal segments
zero-filled ahead"). Writes in the repository's target/ (the disk the gateway uses), three
interleaved rounds.

    python3 scripts/sync_probe.py [ROUNDS]
"""
import os
import resource
import sys
import time
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "target" / "sync-probe.dat"
RECORD = b"x" * 120  # about one payment's journal records
SYNCS = 2000
ZEROS = b"\0" * (64 * 1024)


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e6


def fresh():
    PATH.parent.mkdir(exist_ok=True)
    PATH.unlink(missing_ok=True)
    return os.open(PATH, os.O_RDWR | os.O_CREAT, 0o644)


def zero_fill(fd, start, end):
    while start < end:
        n = min(end - start, len(ZEROS))
        os.pwrite(fd, ZEROS[:n], start)
        start += n
    os.fdatasync(fd)


def syncs(overwrite):
    """SYNCS writes of one record, each followed by fdatasync; latency and system CPU per sync."""
    fd = fresh()
    if overwrite:
        zero_fill(fd, 0, SYNCS * len(RECORD) + 4096)
    lat, r0 = [], resource.getrusage(resource.RUSAGE_SELF)
    for i in range(SYNCS):
        t = time.perf_counter()
        os.pwrite(fd, RECORD, i * len(RECORD))
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
    sys_us = (resource.getrusage(resource.RUSAGE_SELF).ru_stime - r0.ru_stime) / SYNCS * 1e6
    os.close(fd)
    return f"p50 {q(lat, .5):.0f} µs, p99 {q(lat, .99):.0f} µs, system CPU {sys_us:.0f} µs per sync"


def extensions(chunk, count=8):
    """Time to zero-fill `chunk` more bytes past the end and sync, `count` times."""
    fd = fresh()
    took = []
    for i in range(count):
        t = time.perf_counter()
        zero_fill(fd, i * chunk, (i + 1) * chunk)
        took.append(time.perf_counter() - t)
    os.close(fd)
    return f"median {q(took, .5):.0f} µs, max {max(took) * 1e6:.0f} µs"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for r in range(rounds):
        for overwrite in ((False, True) if r % 2 == 0 else (True, False)):
            print(f"round {r + 1} {'overwrite' if overwrite else 'append   '}: {syncs(overwrite)}", flush=True)
        for kib in (64, 256, 1024):
            print(f"round {r + 1} extend by {kib:4d} KiB: {extensions(kib * 1024)}", flush=True)
    PATH.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
