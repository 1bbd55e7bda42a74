#!/usr/bin/env python3
"""Docker Compose testnet benchmark (issue 14): how long the default topology takes to
come up, and how long a buy takes from a buyer container to the hosts in the others.

    sudo .venv/bin/python scripts/bench/testnet.py --json
    sudo .venv/bin/python scripts/bench/testnet.py --buys 4 --json

Root with dockerd (``scripts/setup-docker``). The image is built (or found in the
daemon's cache) first, untimed. Then, from nothing running:

* ``compose_up_s``: :meth:`DockerTestnet.up` (testnet dir, ``docker-compose up``,
  routers, proxy and notaries first) until every node's status says ready;
* ``buy_p50_ms``/``buy_p95_ms`` (nearest rank): ``--buys`` purchases, one at a time,
  each ``docker exec <project>-b1 p2pmarket buy --json ...`` of one host, round-robin
  over the public host ``h1``, the port-forwarded ``hf1``, the NAT'd ``hn1`` (through
  its relay) and the proxied ``hp1`` (through its relay), timed from the command's start
  to its exit (the CLI's start-up included, as a user sees it); measured once every
  host is classed and the relayed ones hold a relay (untimed wait). ``buys_ok`` and
  ``buys_failed`` count them; ``supply_ok``: supply equals mints at every notary after.
* ``soak_*``: then ``scripts/soak --backend docker`` on the same testnet for
  ``--soak-minutes`` (default 2; faults every 10 s): ``soak_purchases_ok``/``_failed``,
  ``soak_buy_p50_ms``/``_p95_ms``, ``soak_faults_injected``, ``soak_fault_failures``,
  ``soak_invariant_violations`` (must be 0), ``soak_rss_growth_kib`` (per node),
  ``soak_seconds``.

The testnet is always taken down (``DockerTestnet.down``) and its dir removed; the run
is bounded by ``--time-limit`` seconds. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pmarket.testnet import compose, dockerimage
from p2pmarket.testnet.docker import DockerTestnet, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "testnet" / "default.toml"
HOSTS = ("h1", "hf1", "hn1", "hp1")
RELAYED = {"hn1", "hp1"}
BUYER = "b1"
SETTLE_S = 90.0


def cli(net: DockerTestnet, site: str, *args: str, timeout_s: float = 120) -> Any:
    done = net.exec(site, [compose.PYTHON, "-m", "p2pmarket", *args],
                    capture_output=True, text=True, timeout=timeout_s,
                    stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} in {site} failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout) if done.stdout.lstrip().startswith("{") else done.stdout


def settled(net: DockerTestnet, deadline: float) -> dict[str, str]:
    """Each host's node id once it is classed (and holds a relay if it needs one)."""
    ids: dict[str, str] = {}
    while len(ids) < len(HOSTS):
        if time.monotonic() > deadline:
            raise SystemExit(f"hosts not settled in time: {sorted(set(HOSTS) - set(ids))}")
        for site, st in net.statuses([h for h in HOSTS if h not in ids]).items():
            reach = st.get("reach") or {}
            if reach.get("class", "unknown") != "unknown" and (
                    site not in RELAYED or reach.get("relay")):
                ids[site] = str(st["node_id"])
        time.sleep(0.5)
    return ids


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 1) if s else 0.0


def measure(args: argparse.Namespace, root: Path, deadline: float) -> dict[str, Any]:
    started = time.monotonic()
    net = DockerTestnet.up(TOPOLOGY, root, project=args.project, base=args.base,
                           build=False, settings={"tick_seconds": 0.5, "audit_seconds": 2.0})
    try:
        net.wait_ready(max(10.0, deadline - time.monotonic()))
        up_s = time.monotonic() - started
        ids = settled(net, min(deadline, time.monotonic() + SETTLE_S))
        key = cli(net, BUYER, "wallet", "show", "--wallet", net.path(BUYER), "--json")["key"]
        credits = 2 * args.buys + 2
        cli(net, BUYER, "bank", "mint", "--mint-wallet", net.path("mint"), "--to", key,
            "--amount", str(credits))
        times: list[float] = []
        failed = 0
        for i in range(args.buys):
            if time.monotonic() > deadline:
                break
            host = HOSTS[i % len(HOSTS)]
            t0 = time.perf_counter()
            done = net.exec(BUYER, [compose.PYTHON, "-m", "p2pmarket", "buy", "--wallet",
                                    net.path(BUYER), "--budget", "2", "--duration", "1h",
                                    "--hosts", "1", "--host", ids[host], "--json",
                                    "cpu:1,0.1,1", "memory:1,64MiB,256MiB"],
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
            ms = (time.perf_counter() - t0) * 1000
            ok = done.returncode == 0 and len(json.loads(done.stdout)["purchases"]) == 1
            if ok:
                times.append(ms)
            else:
                failed += 1
                print(f"buy from {host} failed: {done.stderr[-500:]}", file=sys.stderr)
        supply = cli(net, BUYER, "ledger", "supply", "--wallet", net.path(BUYER), "--json")
        supply_ok = (supply["errors"] == 0 and all(n["ok"] for n in supply["notaries"])
                     and {n["minted"] for n in supply["notaries"]} == {credits * 1_000_000})
        return {"compose_up_s": round(up_s, 1), "buy_p50_ms": pct(times, 0.5),
                "buy_p95_ms": pct(times, 0.95), "buys_ok": len(times), "buys_failed": failed,
                "supply_ok": supply_ok, "nodes": len(net.topology.nodes),
                "containers": len(net.state.containers),
                **soak(args, net, deadline)}
    finally:
        net.down()


SOAK_KEYS = ("purchases_ok", "purchases_failed", "buy_p50_ms", "buy_p95_ms",
             "faults_injected", "fault_failures", "invariant_violations", "rss_growth_kib",
             "seconds")


def soak(args: argparse.Namespace, net: DockerTestnet, deadline: float) -> dict[str, Any]:
    """``scripts/soak --backend docker`` on this testnet for ``--soak-minutes``: its
    figures, each prefixed ``soak_`` (none with 0 minutes)."""
    if args.soak_minutes <= 0:
        return {}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak"), "--minutes",
                           str(args.soak_minutes), "--backend", "docker", "--dir",
                           str(net.root), "--fault-every", "10"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=max(60.0, deadline - time.monotonic()))
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"the soak printed nothing: {done.stderr[-1500:]}")
    result = json.loads(lines[-1])
    return {f"soak_{k}": result[k] for k in SOAK_KEYS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--buys", type=int, default=20, help="purchases to time (1..200)")
    p.add_argument("--project", default="p2pmb", help="compose project (containers p2pmb-*)")
    p.add_argument("--base", default=dockerimage.LOCAL_BASE, help="the image's base")
    p.add_argument("--soak-minutes", type=float, default=2.0,
                   help="then soak the testnet this long (scripts/soak; 0: no soak)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds, in all")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    if not 1 <= args.buys <= 200 or not 30 <= args.time_limit <= 3600 or \
            not 0 <= args.soak_minutes <= 60:
        p.error("--buys 1..200, --time-limit 30..3600, --soak-minutes 0..60")
    if os.geteuid() != 0 or missing_requirements():
        raise SystemExit("needs root and dockerd: " + "; ".join(missing_requirements()))
    deadline = time.monotonic() + args.time_limit
    built = time.monotonic()
    dockerimage.build(compose.DEFAULT_IMAGE, args.base)
    build_s = time.monotonic() - built
    root = Path(tempfile.mkdtemp(prefix="p2pm-bench-compose-"))
    try:
        figures = {**measure(args, root / "net", deadline), "image_build_s": round(build_s, 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not args.json:
        for k, v in figures.items():
            print(f"{k:16} {v}")
    print(json.dumps(figures))
    return 0 if figures["buys_failed"] == 0 and figures["supply_ok"] and \
        figures.get("soak_invariant_violations", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
