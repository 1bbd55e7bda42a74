"""``p2pmarket host``: for host owners, the auction, accounts and VMs of a running
node, through its control API."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from rich.table import Table

from p2pmarket.api.control import ControlClient
from p2pmarket.cli.options import Subcommands, data_dir_opt, json_opt
from p2pmarket.cli.terminal import dump, human, out
from p2pmarket.core.config import DataDir
from p2pmarket.core.money import format_credits, parse_credits

EXAMPLES = """examples:
  p2pmarket host status --data-dir run/testnet/node1
  p2pmarket host set-capacity --data-dir run/testnet/node1 memory 8GiB
  p2pmarket host set-capacity --data-dir run/testnet/node1 tcp_port 30000-30099
  p2pmarket host set-min-price --data-dir run/testnet/node1 cpu 0.000005"""


def add_host(sub: Subcommands) -> None:
    ho = sub.add("host", "For host owners: the auction, accounts and VMs of a running node.",
                 EXAMPLES)
    actions = Subcommands(ho, "action", "ACTION")
    hs = actions.add("status", "accounts, bids, allocations, prices, VM state", EXAMPLES,
                     host_status)
    data_dir_opt(hs)
    json_opt(hs)
    hc = actions.add("set-capacity", "how much of a resource this host offers", EXAMPLES,
                     host_set_capacity)
    data_dir_opt(hc)
    hc.add_argument("resource", help="cpu, memory, disk, net_in, net_out, tcp_port, ...")
    hc.add_argument("amount", help="with units (8GHz, 16GiB, 1Gbit/s) or an id range")
    hp = actions.add("set-min-price", "the host's own bid: the lowest price", EXAMPLES,
                     host_set_min_price)
    data_dir_opt(hp)
    hp.add_argument("resource", help="resource type")
    hp.add_argument("price", help="credits per second for the whole resource (up to 6 "
                                  "decimals: 0.000001 is one micro-credit)")


async def host_status(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call("host_status")
    if args.json:
        dump(doc)
        return 0
    market = Table(title="market at this host")
    for col in ("resource", "capacity", "price µc/s", "free"):
        market.add_column(col)
    for res, m in sorted(doc.get("market", {}).items()):
        market.add_row(res, human(res, m.get("capacity", 0)), str(m.get("price", "")),
                       human(res, m.get("free", 0)) if "free" in m else "")
    out.print(market)
    accounts = Table(title=f"{len(doc.get('accounts', []))} account(s)")
    for col in ("account", "holder", "balance", "bids (weight, min, max)", "allocation",
                "VM", "used (measured)"):
        accounts.add_column(col)
    vms = {v.get("account_id"): v for v in doc.get("vms", [])}
    for a in doc.get("accounts", []):
        vm = vms.get(a["account_id"], {})
        notes = "; ".join(vm.get("notes", []))
        accounts.add_row(
            a["account_id"], str(a.get("holder", ""))[:12],
            format_credits(int(a.get("balance", 0))),
            "\n".join(f"{r}: {bid_text(r, b)}" for r, b in sorted(a.get("bids", {}).items())),
            "\n".join(f"{r}: {human(r, v)}" for r, v in sorted(a.get("allocation", {}).items())),
            f"{vm.get('state', 'none')}" + (f"\n{notes}" if notes else ""),
            usage_text(vm.get("usage")))
    out.print(accounts)
    return 0


def usage_text(used: Any) -> str:
    """A machine's measured usage (the hypervisor's counters) for people."""
    if not isinstance(used, dict):
        return "-"
    unknown = set(used.get("unknown", []))
    lines = [f"cpu time {int(used.get('cpu_ns', 0)) / 1e9:.1f} s",
             f"memory {human('memory', int(used.get('memory_kib', 0)))}"]
    if "disk_kib" not in unknown and used.get("disk_kib"):
        lines.append(f"disk {human('disk', int(used['disk_kib']))}")
    if "net" not in unknown:
        lines.append(f"net in {int(used.get('net_rx_bytes', 0)) // 1024} KiB, "
                     f"out {int(used.get('net_tx_bytes', 0)) // 1024} KiB")
    return "\n".join(lines)


def bid_text(key: str, wire: Any) -> str:
    """A standing bid ``[weight ppm, min, max]`` (its wire form) for people, in the order
    of the bid syntax: ``1, 256 MiB, 50% of capacity``."""
    if not isinstance(wire, list) or len(wire) != 3 or not isinstance(wire[0], int):
        return str(wire)
    rtype = key.split(",", 1)[0]

    def quantity(q: Any) -> str:
        if q is None:
            return "-"
        if isinstance(q, str):   # a fraction of capacity, as a decimal string
            try:
                return f"{float(Decimal(q) * 100):g}% of capacity"
            except ArithmeticError:
                return q
        return human(rtype, int(q))

    return f"{Decimal(wire[0]) / 1_000_000:g}, {quantity(wire[1])}, {quantity(wire[2])}"


async def host_set_capacity(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_capacity", {"resource": args.resource, "amount": args.amount})
    out.print(f"capacity set; host config now: {json.dumps(doc.get('config'))}")
    return 0


async def host_set_min_price(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_min_price", {"resource": args.resource, "price": parse_credits(args.price)})
    out.print(f"minimum price set; host config now: {json.dumps(doc.get('config'))}")
    return 0
