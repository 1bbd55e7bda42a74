#!/usr/bin/env python3
"""Start-up time and peak memory of idle nodes.

Starts a testnet of ``--nodes`` node processes on 127.0.0.1 (the same code path as
``p2pmarket testnet up``), waits until every node is ready (chain open with the
notary, advertisement published in the DHT), lets them idle for ``--idle``
seconds, then reads each process's peak resident memory (VmHWM) and stops them.

Usage: scripts/bench/idle_node.py [--nodes 5] [--idle 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from p2pmarket.cli import testnet


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


async def run(nodes: int, idle_s: float) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="p2pm-bench-"))
    try:
        started = time.monotonic()
        dirs = testnet.create(root / "net", nodes)
        procs = testnet.start(root / "net", dirs)
        errors = await testnet.wait_ready(root / "net", 60)
        ready_s = time.monotonic() - started
        if errors:
            raise SystemExit(f"testnet did not start: {errors}")
        await asyncio.sleep(idle_s)
        hwm = [vm_kib(p.pid, "VmHWM") for p in procs]
        rss = [vm_kib(p.pid, "VmRSS") for p in procs]
        return {
            "nodes": nodes, "idle_s": idle_s, "ready_s": round(ready_s, 2),
            "peak_rss_mib_max": round(max(hwm) / 1024, 1),
            "peak_rss_mib_median": round(statistics.median(hwm) / 1024, 1),
            "rss_mib_median": round(statistics.median(rss) / 1024, 1),
        }
    finally:
        if (root / "net" / "testnet.json").exists():
            testnet.stop(root / "net")
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    result = asyncio.run(run(args.nodes, args.idle))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
