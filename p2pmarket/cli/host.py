"""``p2pmarket host``: for host owners, the auction, accounts and VMs of a running
node, through its control API."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.table import Table

from p2pmarket.api.control import ControlClient
from p2pmarket.auction.hostconfig import RESERVABLE
from p2pmarket.cli.buy import parse_duration
from p2pmarket.cli.options import Subcommands, data_dir_opt, json_opt
from p2pmarket.cli.terminal import dump, human, out
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import DataDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.files import write_atomic
from p2pmarket.core.money import format_credits, parse_credits
from p2pmarket.core.wire import unpack
from p2pmarket.sharp.claims import Ticket
from p2pmarket.sharp.ticketfile import encode_tickets

EXAMPLES = """examples:
  p2pmarket host status --data-dir run/testnet/node1
  p2pmarket host set-capacity --data-dir run/testnet/node1 memory 8GiB
  p2pmarket host set-capacity --data-dir run/testnet/node1 tcp_port 30000-30099
  p2pmarket host set-min-price --data-dir run/testnet/node1 cpu 0.000005
  p2pmarket host set-reservable --data-dir run/testnet/node1 cpu 20%
  p2pmarket host set-anchor-price --data-dir run/testnet/node1 cpu 50
  p2pmarket host delegate --data-dir run/testnet/node1 --to 3f9a…(agent key) \
      --cpu 2000MHz --memory 1GiB --start +10m --duration 7d --out friends.tickets"""


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
    hr = actions.add("set-reservable", "how much of a resource SHARP reservations may "
                     "hold", EXAMPLES, host_set_reservable)
    data_dir_opt(hr)
    hr.add_argument("resource", help="cpu, memory, net_in or net_out")
    hr.add_argument("amount", help="with units (2GHz, 4GiB) or a percentage (20%%); 0: none")
    ha = actions.add("set-anchor-price", "sell anchors (SHARP tickets) to agents",
                     EXAMPLES, host_set_anchor_price)
    data_dir_opt(ha)
    ha.add_argument("resource", help="cpu, memory, net_in or net_out")
    ha.add_argument("price", help="micro-credits per base unit-hour (MHz, KiB, bit/s); "
                                  "0: not for sale")
    hd = actions.add("delegate", "sign anchors to an agent by your own policy (\"let my "
                     "friends use 20%% this week\")", EXAMPLES, host_delegate)
    data_dir_opt(hd)
    hd.add_argument("--to", required=True, help="the agent's public key (hex)")
    for res in RESERVABLE:
        hd.add_argument(f"--{res.replace('_', '-')}", dest=res, help=f"{res} with units")
    hd.add_argument("--start", default="now", help="now, +10m (from now) or ISO 8601")
    hd.add_argument("--duration", required=True, help="90s, 30m, 2h or 7d")
    hd.add_argument("--out", help="write the tickets here (a ticket file); default: "
                                  "print it")


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
    reservations = doc.get("reservations", [])
    if reservations:
        table = Table(title=f"{len(reservations)} reservation(s) (SHARP tickets redeemed)")
        for col in ("account", "holder", "resources", "start", "end", "active"):
            table.add_column(col)
        for r in reservations:
            table.add_row(r["account_id"], str(r.get("holder", ""))[:12],
                          "\n".join(f"{k}: {human(k, v)}"
                                    for k, v in sorted(r["resources"].items())),
                          when_text(r["start"]), when_text(r["end"]),
                          "yes" if r["active"] else "no")
        out.print(table)
    return 0


def when_text(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


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


async def host_set_reservable(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_reservable", {"resource": args.resource, "amount": args.amount})
    out.print(f"reservable set; host config now: {json.dumps(doc.get('config'))}")
    return 0


def unit_hour_price(text: str, what: str) -> int:
    """A SHARP price (anchors, brokers' posted prices): whole micro-credits per base
    unit-hour."""
    if not text.strip().isdigit():
        raise P2PMarketError(f"{what} is a whole number of micro-credits per unit-hour",
                             text)
    return int(text)


async def host_set_anchor_price(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_anchor_price", {"resource": args.resource,
                                  "price": unit_hour_price(args.price, "an anchor price")})
    out.print(f"anchor price set; host config now: {json.dumps(doc.get('config'))}")
    return 0


async def host_delegate(args: argparse.Namespace) -> int:
    resources = {r: getattr(args, r) for r in RESERVABLE if getattr(args, r)}
    if not resources:
        raise P2PMarketError("give at least one of "
                             + ", ".join(f"--{r.replace('_', '-')}" for r in RESERVABLE))
    start = parse_start(args.start, now_us())
    end = start + parse_duration(args.duration) * 1_000_000
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_delegate", {"to": args.to, "resources": resources, "start": start, "end": end})
    tickets = [Ticket.from_wire(unpack(bytes.fromhex(t))) for t in doc["tickets"]]
    data = encode_tickets(tickets)
    if args.out:
        write_atomic(Path(args.out), data)
        out.print(f"{len(tickets)} ticket(s) to {args.to[:16]}… written to {args.out}")
    else:
        sys.stdout.write(data.decode())
    return 0


def parse_start(text: str, now: int) -> int:
    """``now``, ``+10m`` (from ``now``) or an ISO 8601 time (UTC unless it says) -> µs."""
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("+"):
        return now + parse_duration(text[1:]) * 1_000_000
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise P2PMarketError(f"a start is now, +DURATION or ISO 8601: {text!r}", text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1_000_000)
