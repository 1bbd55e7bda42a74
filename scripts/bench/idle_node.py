#!/usr/bin/env python3
"""Start-up time and peak memory of idle nodes, and the cost of a ``/metrics`` scrape.

Starts a testnet of ``--nodes`` node processes on 127.0.0.1 (the same code path as
``p2pmarket testnet up``; every node serves its Prometheus metrics at ``/metrics``,
always on), waits until every node is ready (chain open with the notary,
advertisement published in the DHT), lets them idle for ``--idle`` seconds, then
reads each process's peak resident memory (VmHWM): ``peak_rss_mib_max``,
``peak_rss_mib_median``, ``rss_mib_median``.

Then the scrape at a busy host: this process (the buyer: the testnet's mint wallet)
makes ``--accounts`` certified payments to the last node in one ``send_many`` batch
(one notary certification round, one signature over their Merkle root) and opens
one account with each through the real ``host.create_account`` RPC over HTTP
(signed request, the payment verified, journal, audit log, VM defined on libvirt's
test driver). It then fetches the host's ``/metrics`` over HTTP ``--scrapes`` times
(one keep-alive connection, one at a time, the body read whole):
``scrape_p50_ms_N`` / ``scrape_p95_ms_N`` for N accounts, ``scrape_bytes_N`` the
text's size, ``accounts_N`` the accounts the scrape reports (must be N), and
``host_rss_mib_N`` the host's resident memory after it all. The idle figures above
are taken before, so they stay the idle node's.

Usage: scripts/bench/idle_node.py [--nodes 5] [--idle 10] [--accounts 1000]
       [--scrapes 200] [--json]
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

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from p2pmarket.api.client import PeerClient
from p2pmarket.cli import testnet
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, Settings
from p2pmarket.core.keyfile import load_key
from p2pmarket.core.urls import http_url

PAYMENT = 1_000_000   # one credit per account
CONCURRENCY = 8       # create_account calls in flight


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def open_accounts(net: Path, host_dir: Path, n: int) -> str:
    """``n`` accounts at the node of ``host_dir``, each paid by a certified payment of
    the mint's; returns the host's URL."""
    host = DataDir(host_dir)
    host_key = load_key(host.key).public_key
    url = http_url("127.0.0.1", Settings.load(host.config, env={}).http_port)
    async with open_wallet(WalletDir(net / "mint")) as (mint, client):
        await mint.mint(n * PAYMENT)
        certs = await mint.send_many([(host_key, PAYMENT, f"bench account {i}")
                                      for i in range(n)])
        assert len(certs) == n
        gate = asyncio.Semaphore(CONCURRENCY)

        async def create(cert_doc: dict[str, object], peers: PeerClient) -> None:
            async with gate:
                await peers.call(url, host_key, "host.create_account", {
                    "payment": cert_doc, "bids": {"cpu": "1"}, "interval_s": 3600})

        await asyncio.gather(*(create(c.to_wire(), client) for c in certs))
    return url


async def scrapes(url: str, n: int) -> tuple[list[float], int, float]:
    """Time ``n`` scrapes of ``url``/metrics; (ms each, bytes, accounts reported)."""
    times: list[float] = []
    text = ""
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            started = time.perf_counter()
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            times.append((time.perf_counter() - started) * 1e3)
    accounts = sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "p2pmarket_auction_accounts" for s in f.samples)
    return times, len(text.encode()), accounts


async def run(nodes: int, idle_s: float, accounts: int, n_scrapes: int
              ) -> dict[str, object]:
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
        result: dict[str, object] = {
            "nodes": nodes, "idle_s": idle_s, "ready_s": round(ready_s, 2),
            "peak_rss_mib_max": round(max(hwm) / 1024, 1),
            "peak_rss_mib_median": round(statistics.median(hwm) / 1024, 1),
            "rss_mib_median": round(statistics.median(rss) / 1024, 1),
        }
        opened = time.monotonic()
        url = await open_accounts(root / "net", dirs[-1], accounts)
        times, size, counted = await scrapes(url, n_scrapes)
        result.update({
            "accounts_open_s": round(time.monotonic() - opened, 1),
            f"scrape_p50_ms_{accounts}": round(statistics.median(times), 2),
            f"scrape_p95_ms_{accounts}": round(percentile(times, 0.95), 2),
            f"scrape_bytes_{accounts}": size, f"accounts_{accounts}": int(counted),
            f"host_rss_mib_{accounts}": round(vm_kib(procs[-1].pid, "VmRSS") / 1024, 1),
        })
        return result
    finally:
        if (root / "net" / "testnet.json").exists():
            testnet.stop(root / "net")
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--accounts", type=int, default=1000,
                    help="accounts opened at the last node before the scrapes")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    result = asyncio.run(run(args.nodes, args.idle, args.accounts, args.scrapes))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
