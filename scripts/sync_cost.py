#!/usr/bin/env python3
"""What one `fdatasync` costs on the file system of a directory, without paygate: overwrites
100 bytes inside a preallocated 1 MiB file and syncs it, N times with a short pause between
(as a group commit at a low rate does), and prints the CPU this process spent per sync and the
write requests the block device completed per sync (from /sys/block/DEV/stat; other writers
on the same device count too, so run it on a quiet machine).

    python3 scripts/sync_cost.py [--dir /tmp] [--syncs 500]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path


def device_of(path):
    """The block device's sysfs name (vda, nvme0n1, ...) holding `path`, or None."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(path)], capture_output=True, text=True).stdout.strip()
    name = Path(source).name
    return name if (Path("/sys/block") / name / "stat").exists() else None


def writes_completed(dev):
    return int((Path("/sys/block") / dev / "stat").read_text().split()[4]) if dev else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--syncs", type=int, default=500)
    a = ap.parse_args()
    dev = device_of(a.dir)
    fd, path = tempfile.mkstemp(dir=a.dir, prefix="sync-cost-")
    try:
        os.write(fd, bytes(1 << 20))
        os.fsync(fd)
        def loop(sync):
            """CPU µs and device writes per iteration of write (+ sync) + pause."""
            ios, cpu = writes_completed(dev), time.process_time()
            for i in range(a.syncs):
                os.pwrite(fd, b"x" * 100, (i * 128) % (1 << 20))
                if sync:
                    os.fdatasync(fd)
                time.sleep(0.002)
            return (time.process_time() - cpu) * 1e6 / a.syncs, (writes_completed(dev) - ios) / a.syncs

        without, _ = loop(False)
        with_sync, writes = loop(True)
    finally:
        os.close(fd)
        os.unlink(path)
    print(json.dumps({"dir": a.dir, "device": dev, "syncs": a.syncs, "cpu_us_per_iteration_without_sync": round(without, 1),
                      "cpu_us_per_iteration_with_sync": round(with_sync, 1), "cpu_us_per_sync": round(with_sync - without, 1),
                      "device_writes_per_sync": round(writes, 2) if dev else None}))


if __name__ == "__main__":
    main()
