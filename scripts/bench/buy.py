#!/usr/bin/env python3
"""Time of a purchase across several hosts, start to verified leases (issue 12).

Starts a loopback testnet of ``--nodes`` node processes (the code path of
``p2pmarket testnet up``), funds a buyer wallet from the mint, then buys
``--runs`` times from ``--hosts`` hosts (``cpu:1,0.1,1 memory:1,64MiB,128MiB``,
budget 1 credit, one hour), each run counted only if it returns ``--hosts`` verified
leases. Two figures, each over ``--runs`` runs:

- ``lib_*``: the library call :func:`p2pmarket.client.buyer.buy`, timed in this
  process (wallet sync, DHT lookup, quotes, plan, the fresh quotes, the certified
  payments, the accounts, lease verification, the witnesses' audit pushes);
- ``cli_*``: ``p2pmarket buy --json`` as a subprocess, which adds Python's start-up
  and the imports (``--no-cli`` leaves it out), with a bytecode cache as an installed
  package has (:func:`cli_env`); ``cli_startup_ms`` is ``p2pmarket --version`` alone.

``buy_p50_ms`` / ``buy_p95_ms`` are the command's (the CLI) figures, or the library's
with ``--no-cli``. The nodes are stopped by pid afterwards.

``plan_ms_10000``: the planner alone (:func:`plan_bundle`) for 10,000 random hosts on
this bundle with ``buy``'s default ``--hosts 8``; ``plan_ms_10000_hosts_64`` with
``--hosts 64`` (the most ``buy`` takes).

Usage: scripts/bench/buy.py [--nodes 20] [--runs 20] [--hosts 3] [--no-cli] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2pmarket.auction.resources import parse_bids
from p2pmarket.cli import testnet
from p2pmarket.client.buyer import buy, open_wallet
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.planner import HostTerms, plan_bundle, want_from_bids
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import load_genesis

BIDS = ["cpu:1,0.1,1", "memory:1,64MiB,128MiB"]
BUDGET = 1_000_000


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``, rounded to 0.1 ms."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 1)


async def fund(root: Path, wallet: WalletDir, amount: int) -> None:
    async with open_wallet(WalletDir(root / "mint"), ClientNet()) as (mint, _):
        await mint.mint(amount)
        await mint.send(wallet.identity().public_key, amount, "bench")
    async with open_wallet(wallet, ClientNet()) as (w, _):
        await w.sync()


async def wait_hosts(wallet: WalletDir, hosts: int, timeout_s: float) -> None:
    """Until a dry run finds ``hosts`` quoting hosts (the DHT has their offers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = await buy(wallet, BIDS, BUDGET, 3600, hosts, net=ClientNet(), dry_run=True)
        if len(report.planned) >= hosts:
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"fewer than {hosts} hosts quote after {timeout_s:.0f} s")


async def lib_runs(wallet: WalletDir, runs: int, hosts: int) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        report = await buy(wallet, BIDS, BUDGET, 3600, hosts, net=ClientNet())
        elapsed = (time.perf_counter() - started) * 1000
        if len(report.purchases) == hosts and not report.unfinished:
            times.append(elapsed)
        else:
            failed += 1
    return times, failed


def cli_env(cache: Path) -> dict[str, str]:
    """The command's environment as on a user's machine: Python may cache bytecode (an
    installed package has it; this sandbox sets PYTHONDONTWRITEBYTECODE, which makes
    every start compile every module again, about 170 ms here), in ``cache``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2PMARKET_HTTP") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache)}


def cli_runs(wallet: WalletDir, runs: int, hosts: int, env: dict[str, str]
             ) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "p2pmarket", "buy", "--wallet", str(wallet.root),
             "--budget", "1", "--hosts", str(hosts), "--json", *BIDS],
            capture_output=True, text=True, timeout=120, env=env)
        elapsed = (time.perf_counter() - started) * 1000
        ok = proc.returncode == 0 and len(json.loads(proc.stdout)["purchases"]) == hosts
        if ok:
            times.append(elapsed)
        else:
            failed += 1
    return times, failed


def startup_ms(env: dict[str, str]) -> float:
    """Python start-up plus the CLI's imports: ``p2pmarket --version``, best of three
    (after one run that fills the bytecode cache)."""
    best = float("inf")
    for _ in range(4):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "p2pmarket", "--version"],
                       capture_output=True, check=True, timeout=60, env=env)
        best = min(best, (time.perf_counter() - started) * 1000)
    return round(best, 1)


async def run(nodes: int, runs: int, hosts: int, cli: bool) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="p2pm-bench-buy-"))
    net = root / "net"
    try:
        dirs = testnet.create(net, nodes, tick_seconds=1.0)
        testnet.start(net, dirs)
        errors = await testnet.wait_ready(net, 120)
        if errors:
            raise SystemExit(f"testnet did not start: {errors}")
        wallet = WalletDir(root / "buyer")
        wallet.create(load_genesis(net / "genesis.json"))
        await fund(net, wallet, 4 * runs * BUDGET + 10 * BUDGET)
        await wait_hosts(wallet, hosts, 60)
        lib, lib_failed = await lib_runs(wallet, runs, hosts)
        result: dict[str, object] = {
            "nodes": nodes, "runs": runs, "hosts": hosts,
            "lib_p50_ms": pct(lib, 0.5) if lib else None,
            "lib_p95_ms": pct(lib, 0.95) if lib else None, "lib_failed": lib_failed}
        if cli:
            env = cli_env(root / "pycache")
            startup = startup_ms(env)
            times, cli_failed = cli_runs(wallet, runs, hosts, env)
            result.update({"cli_p50_ms": pct(times, 0.5) if times else None,
                           "cli_p95_ms": pct(times, 0.95) if times else None,
                           "cli_failed": cli_failed, "cli_startup_ms": startup})
        source = "cli" if cli else "lib"
        result.update({"buy_p50_ms": result[f"{source}_p50_ms"],
                       "buy_p95_ms": result[f"{source}_p95_ms"], "buy_measured": source,
                       "goal_buy_p50_ms": 300})
        return result
    finally:
        if (net / "testnet.json").exists():
            testnet.stop(net)   # by the pids testnet.json holds
        shutil.rmtree(root, ignore_errors=True)


def plan_ms(hosts: int, max_hosts: int, repeat: int = 5) -> float:
    """The planner's time (median of ``repeat``) for ``hosts`` random hosts on the bundle
    this benchmark buys (cpu and memory, each with its own price), one hour, 1 credit,
    at most ``max_hosts`` hosts (``buy``'s ``--hosts``)."""
    rng = random.Random(hosts)
    market = [HostTerms(i.to_bytes(4, "big"),
                        {"cpu": rng.randint(1000, 64_000), "memory": rng.randint(2**20, 2**28)},
                        {"cpu": rng.randint(1, 10_000), "memory": rng.randint(1, 10_000)})
              for i in range(hosts)]
    want = want_from_bids(parse_bids(BIDS))
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        plan_bundle(market, want, 1_000_000, 3600, max_hosts)
        times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[len(times) // 2], 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--no-cli", action="store_true", help="time the library call only")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    result = asyncio.run(run(args.nodes, args.runs, args.hosts, not args.no_cli))
    result.update({"plan_ms_10000": plan_ms(10_000, 8),
                   "plan_ms_10000_hosts_64": plan_ms(10_000, 64), "goal_plan_ms": 10})
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
