"""The buyer's SHARP commands (docs/design.md section 10): ``p2pmarket reserve`` (find
tickets in the DHT, pay a broker, verify, redeem at the site, keep the lease) and
``p2pmarket tickets`` (the wallet's tickets and their state)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from p2pmarket.auction.hostconfig import RESERVABLE
from p2pmarket.cli.broker import term_of, wanted
from p2pmarket.cli.host import when_text
from p2pmarket.cli.options import Subcommands, json_opt, net_of, wallet_dir, wallet_opt
from p2pmarket.cli.terminal import dump, human, out
from p2pmarket.client.reserve import Reservation, reserve
from p2pmarket.client.ticketbook import TicketBook, ticket_state
from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import parse_public_key
from p2pmarket.core.money import format_credits, parse_credits
from p2pmarket.sharp.claims import Term

RESERVE_EXAMPLES = """examples:
  p2pmarket reserve --cpu 500MHz --memory 256MiB --start now --duration 1h
  p2pmarket reserve --cpu 2GHz --start +1h --duration 1d --max-price 5
  p2pmarket reserve --cpu 500MHz --duration 1h --broker http://127.0.0.1:7102 \\
      --broker-key 3f9a…(key) --site 81c2…(key)       # skip the DHT's adverts

A reservation holds its amounts for its whole term (SHARP); the rest of the host stays
in the auction. --json prints {lease_id, site, broker, price, price_credits, account_id,
start, end, resources, tickets: [claim id], rejections: [{ticket, error, value}]}."""
TICKETS_EXAMPLES = """examples:
  p2pmarket tickets
  p2pmarket tickets --json

states: held (bought, not redeemed), redeemed (a lease came back), rejected (the site
refused it; with the proof when it named an agent), replaced (the broker gave another),
refunded (the broker paid it back), expired (held or rejected past its term)."""


def add_reserve(sub: Subcommands) -> None:
    rs = sub.add("reserve", "Reserve resources that hold (a SHARP ticket from a broker).",
                 RESERVE_EXAMPLES, reserve_cmd)
    wallet_opt(rs)
    for res in RESERVABLE:
        rs.add_argument(f"--{res.replace('_', '-')}", dest=res, help=f"{res} with units")
    rs.add_argument("--start", default="now", help="now, +10m (from now) or ISO 8601")
    rs.add_argument("--duration", required=True, help="90s, 30m, 2h or 7d")
    rs.add_argument("--max-price", help="pay at most this many credits")
    rs.add_argument("--broker", metavar="URL", help="buy from this broker (with "
                    "--broker-key and --site), not from the DHT's adverts")
    rs.add_argument("--broker-key", help="the broker's public key (hex)")
    rs.add_argument("--site", help="the site's public key (hex)")
    json_opt(rs)
    tk = sub.add("tickets", "The wallet's SHARP tickets and their state.",
                 TICKETS_EXAMPLES, tickets_cmd)
    wallet_opt(tk)
    json_opt(tk)


async def reserve_cmd(args: argparse.Namespace) -> int:
    wants = wanted(args)
    start, end = term_of(args)
    broker = site = None
    if args.broker:
        broker = (args.broker, parse_public_key(args.broker_key or ""))
        site = parse_public_key(args.site or "")
    got = await reserve(wallet_dir(args), wants, Term(start, end), net=net_of(args),
                        max_price=parse_credits(args.max_price) if args.max_price else None,
                        broker=broker, site=site)
    doc = reservation_doc(got)
    if args.json:
        dump(doc)
        return 0
    for r in got.rejections:
        out.print(f"ticket {r['ticket'][:12]} rejected by the site: {r['error']}; "
                  "the broker replaced it")
    out.print(f"reserved at site {got.site.hex()[:12]} from broker {got.broker.hex()[:12]} "
              f"for {format_credits(got.price)}: lease {got.lease.lease_id}, "
              f"{when_text(start)} to {when_text(end)}")
    for res, amount in sorted(wants.items()):
        out.print(f"  {res}: {human(res, amount)}")
    return 0


def reservation_doc(got: Reservation) -> dict[str, Any]:
    lease = got.lease
    return {"lease_id": lease.lease_id, "site": got.site, "broker": got.broker,
            "price": got.price, "price_credits": format_credits(got.price),
            "account_id": lease.lease_id, "start": got.tickets[0].term.start,
            "end": got.tickets[0].term.end,
            "resources": {t.rset.rtype: t.rset.count for t in got.tickets},
            "tickets": [t.final.claim_id for t in got.tickets],
            "rejections": got.rejections}


async def tickets_cmd(args: argparse.Namespace) -> int:
    now = now_us()
    book = TicketBook(wallet_dir(args)).all()
    docs: list[dict[str, Any]] = [
            {"claim_id": k, "state": ticket_state(r, now),
             **{f: r.get(f) for f in ("type", "count", "start", "end", "site", "broker",
                                     "lease_id", "replaced_by")}}
            for k, r in sorted(book.items(), key=lambda kv: (kv[1].get("start", 0), kv[0]))]
    if args.json:
        dump({"tickets": docs})
        return 0
    table = Table(title=f"{len(docs)} ticket(s)")
    for col in ("claim", "state", "resource", "site", "broker", "start", "end", "lease"):
        table.add_column(col)
    for d in docs:
        table.add_row(d["claim_id"][:12], d["state"],
                      f"{human(str(d['type']), int(d['count'] or 0))} {d['type']}",
                      str(d["site"] or "")[:12], str(d["broker"] or "")[:12],
                      when_text(int(d["start"] or 0)), when_text(int(d["end"] or 0)),
                      str(d["lease_id"] or ""))
    out.print(table)
    return 0


__all__ = ["add_reserve", "reservation_doc"]
