"""``p2pmarket broker``: a node as a SHARP agent (docs/design.md section 10), through
its control API: hold tickets from sites, sell sub-tickets at posted prices, set the
oversubscription degree, buy tickets from another broker."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich.table import Table

from p2pmarket.api.control import ControlClient
from p2pmarket.auction.hostconfig import RESERVABLE
from p2pmarket.auction.resources import parse_quantity
from p2pmarket.cli.buy import parse_duration
from p2pmarket.cli.host import parse_start, unit_hour_price, when_text
from p2pmarket.cli.options import Subcommands, data_dir_opt, json_opt
from p2pmarket.cli.terminal import dump, human, out
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import DataDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.wire import pack
from p2pmarket.sharp.ticketfile import decode_tickets

PPM = 1_000_000
EXAMPLES = """examples:
  p2pmarket broker enable --data-dir run/testnet/node2
  p2pmarket broker add-ticket --data-dir run/testnet/node2 friends.tickets
  p2pmarket broker set-price --data-dir run/testnet/node2 cpu 2      # µc per MHz-hour
  p2pmarket broker set-oversubscription --data-dir run/testnet/node2 10%
  p2pmarket broker buy --data-dir run/testnet/node3 --from http://127.0.0.1:7102 \\
      --broker 3f9a…(key) --site 81c2…(key) --cpu 2000MHz --start now --duration 1d
  p2pmarket broker status --data-dir run/testnet/node2

Prices are posted, not auctioned: micro-credits per base unit-hour (cpu MHz, memory
KiB, net bit/s); a sub-ticket of N units for D costs ceil(N * price * D / 1h). The
oversubscription degree lets the broker promise up to (100 + degree) % of what it
holds at any instant; a site rejects the late ticket and names the broker in a proof."""


def add_broker(sub: Subcommands) -> None:
    br = sub.add("broker", "Be a SHARP agent: hold site tickets, sell sub-tickets.",
                 EXAMPLES)
    actions = Subcommands(br, "action", "ACTION")
    for name, on in (("enable", True), ("disable", False)):
        q = actions.add(name, f"{name} selling tickets (adverts in the DHT)", EXAMPLES,
                        broker_enable)
        data_dir_opt(q)
        q.set_defaults(on=on)
    st = actions.add("status", "held tickets, what is promised from each, sales",
                     EXAMPLES, broker_status)
    data_dir_opt(st)
    json_opt(st)
    at = actions.add("add-ticket", "hold the tickets of a ticket file (held by this node)",
                     EXAMPLES, broker_add_ticket)
    data_dir_opt(at)
    at.add_argument("file", type=Path, help="a ticket file (host delegate --out, ...)")
    sp = actions.add("set-price", "the posted price of a resource type", EXAMPLES,
                     broker_set_price)
    data_dir_opt(sp)
    sp.add_argument("type", help="cpu, memory, net_in or net_out")
    sp.add_argument("price", help="micro-credits per base unit-hour (a whole number)")
    so = actions.add("set-oversubscription", "how much more than it holds the broker "
                     "may promise", EXAMPLES, broker_set_oversubscription)
    data_dir_opt(so)
    so.add_argument("degree", help="a percentage: 0%%, 10%%, 25%%, ...")
    bu = actions.add("buy", "buy tickets from another broker and hold them", EXAMPLES,
                     broker_buy)
    data_dir_opt(bu)
    bu.add_argument("--from", dest="url", required=True, help="the broker's RPC url")
    bu.add_argument("--broker", required=True, help="the broker's public key (hex)")
    bu.add_argument("--site", required=True, help="the site's public key (hex)")
    for res in RESERVABLE:
        bu.add_argument(f"--{res.replace('_', '-')}", dest=res, help=f"{res} with units")
    bu.add_argument("--start", default="now", help="now, +10m (from now) or ISO 8601")
    bu.add_argument("--duration", required=True, help="90s, 30m, 2h or 7d")


def parse_degree(text: str) -> int:
    """``"25%"`` -> 250000 ppm."""
    try:
        value = Decimal(text.strip().removesuffix("%"))
    except InvalidOperation:
        raise P2PMarketError(f"a degree is a percentage: {text!r}", text) from None
    if not value.is_finite() or value < 0:
        raise P2PMarketError(f"a degree is a percentage: {text!r}", text)
    return int(value * PPM / 100)


def wanted(args: argparse.Namespace) -> dict[str, int]:
    """``--cpu 2GHz --memory 1GiB`` -> base units per type (absolute amounts only)."""
    wants = {}
    for res in RESERVABLE:
        text = getattr(args, res, None)
        if text:
            q = parse_quantity(res, text)
            if q.fraction or q.value == 0:
                raise P2PMarketError(f"--{res.replace('_', '-')}: give an amount with its "
                                     "unit (2000MHz, 1GiB, 10Mbit/s)", text)
            wants[res] = q.value
    if not wants:
        raise P2PMarketError("give at least one of "
                             + ", ".join(f"--{r.replace('_', '-')}" for r in RESERVABLE))
    return wants


def term_of(args: argparse.Namespace) -> tuple[int, int]:
    start = parse_start(args.start, now_us())
    return start, start + parse_duration(args.duration) * 1_000_000


async def broker_enable(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call("broker_enable", {"on": args.on})
    out.print("broker " + ("enabled" if doc["enabled"] else "disabled"))
    return 0


async def broker_add_ticket(args: argparse.Namespace) -> int:
    tickets = decode_tickets(args.file.read_bytes())
    client = ControlClient(DataDir(args.data_dir))
    for t in tickets:
        doc = await client.call("broker_add_ticket", {"ticket": pack(t.to_wire()).hex()})
        out.print(f"holding {human(doc['type'], doc['count'])} {doc['type']} at site "
                  f"{doc['site'][:16]}… (claim {doc['claim_id']})")
    return 0


async def broker_set_price(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "broker_set_price", {"type": args.type,
                             "price": unit_hour_price(args.price, "a posted price")})
    out.print(f"prices now (µc per unit-hour): {doc['prices']}")
    return 0


async def broker_set_oversubscription(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "broker_set_oversubscription", {"ppm": parse_degree(args.degree)})
    out.print(f"oversubscription now {doc['oversubscription_ppm'] / 10_000:g} %")
    return 0


async def broker_buy(args: argparse.Namespace) -> int:
    start, end = term_of(args)
    items = [{"site": args.site, "type": t, "count": c} for t, c in wanted(args).items()]
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "broker_buy_upstream", {"url": args.url, "broker": args.broker, "items": items,
                                "start": start, "end": end})
    out.print(f"bought and holding {len(doc['tickets'])} ticket(s)")
    return 0


async def broker_status(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call("broker_status")
    if args.json:
        dump(doc)
        return 0
    out.print(f"broker {'enabled' if doc['enabled'] else 'disabled'}; "
              f"oversubscription {doc['oversubscription_ppm'] / 10_000:g} %; "
              f"prices (µc per unit-hour) {doc['prices'] or 'none'}; {doc['pricing']}")
    table = Table(title=f"{len(doc['holdings'])} ticket(s) held")
    for col in ("claim", "site", "resource", "promised peak", "start", "end", "hops"):
        table.add_column(col)
    for h in doc["holdings"]:
        table.add_row(h["claim_id"][:12], h["site"][:12],
                      f"{human(h['type'], h['count'])} {h['type']}",
                      _promised(h), when_text(h["start"]), when_text(h["end"]),
                      str(h["hops"]))
    out.print(table)
    out.print("sales: " + (", ".join(f"{n} {s}" for s, n in sorted(doc["sales"].items()))
                           or "none"))
    return 0


def _promised(h: dict[str, Any]) -> str:
    pct = 100 * h["promised_peak"] / h["count"] if h["count"] else 0
    return f"{human(h['type'], h['promised_peak'])} ({pct:.0f} %)"


__all__ = ["add_broker", "parse_degree", "term_of", "wanted"]
