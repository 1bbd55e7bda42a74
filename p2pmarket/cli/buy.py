"""The buyer's commands: ``p2pmarket buy``, ``p2pmarket hosts`` (the market in the
DHT) and ``p2pmarket leases``."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from rich.table import Table

from p2pmarket.auction.lease import Lease
from p2pmarket.cli.options import (
    Subcommands,
    genesis_of,
    genesis_opt,
    json_opt,
    net_of,
    wallet_dir,
    wallet_opt,
)
from p2pmarket.cli.terminal import dump, err, human, out
from p2pmarket.client.buyer import buy as run_buy
from p2pmarket.client.buyer import refresh_leases, resume_pending
from p2pmarket.client.discovery import MarketView
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import NODE_ID_SIZE, node_id_of, parse_key_or_node_id
from p2pmarket.core.money import format_credits, parse_credits

BUY_EXAMPLES = """examples:
  p2pmarket buy --budget 10 --duration 1h cpu:1,0.1,1 memory:1,256MiB,1GiB
  p2pmarket buy --budget 5 --hosts 3 cpu:1,500MHz,2GHz memory:1,128MiB,512MiB"""
HOSTS_EXAMPLES = """examples:
  p2pmarket hosts
  p2pmarket hosts --type memory --max-price 5 --json
  p2pmarket hosts --reach public --reach forwarded     # hosts reachable directly
  p2pmarket hosts --http-proxy http://proxy:8888       # from behind an HTTP proxy"""
LEASES_EXAMPLES = """examples:
  p2pmarket leases
  p2pmarket leases --json"""

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 10 * 365 * 86400


def add_buy(sub: Subcommands) -> None:
    buy_ = sub.add("buy", "Buy resources: find hosts, fund them, bid, verify the leases.",
                   BUY_EXAMPLES, buy)
    wallet_opt(buy_)
    buy_.add_argument("bids", nargs="+", metavar="BID",
                      help="RESOURCE:WEIGHT,MIN,MAX (Tycoon syntax), e.g. memory:1,256MiB,1GiB")
    buy_.add_argument("--budget", required=True, help="credits to spend in all")
    buy_.add_argument("--duration", default="1h", help="how long to spend it (30m, 2h, 1d)")
    buy_.add_argument("--hosts", type=int, default=1, help="spread over up to N hosts")
    buy_.add_argument("--host", action="append", metavar="NODE_ID",
                      help="buy only from this host (node id or key, hex; repeatable)")
    json_opt(buy_)


def add_hosts(sub: Subcommands) -> None:
    h = sub.add("hosts", "Show the live market from the DHT.", HOSTS_EXAMPLES, hosts)
    wallet_opt(h)
    genesis_opt(h)
    h.add_argument("--type", action="append", dest="types", metavar="RESOURCE",
                   help="resource type to list (repeatable; default cpu and memory)")
    h.add_argument("--max-price",
                   help="highest price, credits per second for the whole resource")
    h.add_argument("--min-capacity", type=int, default=0,
                   help="lowest capacity in base units (MHz, KiB, bit/s)")
    h.add_argument("--limit", type=int, default=20, help="top N by cost efficiency")
    h.add_argument("--reach", action="append", metavar="CLASS",
                   choices=["public", "forwarded", "nat", "proxied", "unattested"],
                   help="only hosts of this reachability class (repeatable): public, "
                        "forwarded (NAT with a port forward), nat, proxied, unattested")
    json_opt(h)


def add_leases(sub: Subcommands) -> None:
    le = sub.add("leases", "Show this wallet's leases, refreshed from their hosts.",
                 LEASES_EXAMPLES, leases)
    wallet_opt(le)
    json_opt(le)


def parse_duration(text: str) -> int:
    m = DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise P2PMarketError(f"duration must look like 90s, 30m, 2h or 1d: {text!r}", text)
    seconds = int(m.group(1)) * UNIT_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise P2PMarketError("duration is longer than ten years", text)
    return seconds


def parse_node_id(text: str) -> bytes:
    key = parse_key_or_node_id(text)
    return key if len(key) == NODE_ID_SIZE else node_id_of(key)


def lease_doc(lease: Lease) -> dict[str, Any]:
    return {"lease_id": lease.lease_id, "host_id": lease.host_id.hex(),
            "holder": lease.holder.hex(), "start": lease.start, "end": lease.end,
            "balance": lease.balance,
            "resources": {r: {"min": t.min, "max": t.max, "alloc": t.alloc}
                          for r, t in lease.resources.items()}}


async def buy(args: argparse.Namespace) -> int:
    """Exit code: one per planned payment not made or not finished (an error each)."""
    budget = parse_credits(args.budget)
    duration = parse_duration(args.duration)
    with out.status("buying…") as spinner:
        report = await run_buy(wallet_dir(args), args.bids, budget, duration, args.hosts,
                               progress=lambda msg: spinner.update(msg), net=net_of(args),
                               only=frozenset(parse_node_id(h) for h in args.host or ()))
    docs: list[dict[str, Any]] = [
        {"host": p.host.node_id.hex(), "url": p.host.record.url, "paid": p.amount,
         "account_id": p.account_id, "lease": lease_doc(p.lease),
         "signed_lease": p.envelope.hex()} for p in report.purchases]
    skipped: list[dict[str, Any]] = [
        {"host": s.host.node_id.hex(), "url": s.host.record.url, "reason": s.reason,
         "planned": s.amount} for s in report.skipped]
    unfinished: list[dict[str, Any]] = [
        {"host": u.host.node_id.hex(), "url": u.host.record.url, "paid": u.amount,
         "reason": u.reason} for u in report.unfinished]
    errors = len(report.unfinished) + sum(1 for s in report.skipped if s.amount)
    if args.json:
        dump({"purchases": docs, "skipped": skipped, "unfinished": unfinished,
              "unspent": report.unspent})
        return errors
    for s in skipped:
        note = (f"; its share of {format_credits(s['planned'])} credits was not spent"
                if s["planned"] else "")
        err.print(f"skipped host {s['host'][:16]}… at {s['url']}: {s['reason']} "
                  f"(nothing paid{note})")
    for p, doc in zip(report.purchases, docs, strict=True):
        out.print(f"[bold]lease {p.lease.lease_id}[/bold] from host {doc['host'][:16]}… "
                  f"at {doc['url']} (paid {format_credits(p.amount)} credits)")
        out.print_json(json.dumps(doc["lease"]))
        out.print(f"signed lease (msgpack, hex): {doc['signed_lease'][:96]}…")
    for u in unfinished:
        err.print(f"paid {format_credits(u['paid'])} credits to host {u['host'][:16]}… at "
                  f"{u['url']}, but the account is not open yet: {u['reason']} (kept as "
                  "pending; `p2pmarket leases` or the next `buy` finishes it)")
    return errors


async def hosts(args: argparse.Namespace) -> int:
    genesis = genesis_of(args)
    types = args.types or ["cpu", "memory"]
    max_price = parse_credits(args.max_price) if args.max_price else None
    async with MarketView(genesis, net_of(args)) as market:
        views = await market.hosts(types, limit=args.limit, min_capacity=args.min_capacity,
                                   max_price=max_price)
        exposed = [i.hex() for i in market.exposed]
        unreachable = [i.hex() for i in market.unreachable]
    now = now_us()
    reach = {v.node_id: v.reach(now) for v in views}
    if args.reach:
        views = [v for v in views if (reach[v.node_id].reach_class or "unattested")
                 in args.reach]
    rows: list[dict[str, Any]] = [{"node_id": v.node_id.hex(), "url": v.record.url,
             "dht": f"{v.record.dht[0]}:{v.record.dht[1]}",
             "reachability": reach[v.node_id].label,
             "class": (reach[v.node_id].reach_class or "unattested"),
             "relay": reach[v.node_id].relayed_by,
             "registrars": reach[v.node_id].registrars,
             "availability_ppm": v.record.availability_ppm,
             "resources": {t: {"capacity": ad.capacity, "price": ad.price,
                               "hour_avg": ad.hour_avg}
                           for t, ad in v.record.resources.items()}} for v in views]
    if args.json:
        dump({"hosts": rows, "exposed": exposed, "unreachable": unreachable})
        return 0
    table = Table(title=f"market: {len(rows)} host(s) offering {', '.join(types)}"
                  + (f"; {len(exposed)} exposed host(s) left out" if exposed else "")
                  + (f"; {len(unreachable)} unreachable host(s) left out"
                     if unreachable else ""))
    for col in ("host", "address", "reach", "resources (capacity @ price µc/s, hour avg)",
                "avail"):
        table.add_column(col)
    for r in rows:
        res = "\n".join(f"{t}: {human(t, a['capacity'])} @ {a['price']} ({a['hour_avg']})"
                        for t, a in sorted(r["resources"].items()))
        table.add_row(r["node_id"][:16], r["url"], r["reachability"], res,
                      f"{r['availability_ppm'] / 10_000:.1f}%")
    out.print(table)
    return 0


async def leases(args: argparse.Namespace) -> int:
    for _, outcome in await resume_pending(wallet_dir(args), net=net_of(args)):
        err.print(f"earlier purchase: {outcome}")
    results = await refresh_leases(wallet_dir(args), net_of(args))
    if args.json:
        dump({"leases": [{"source": src, "url": rec["url"],
                          "lease": lease_doc(lease) if lease else None}
                         for rec, lease, src in results]})
        return sum(lease is None for _, lease, _ in results)
    table = Table(title=f"{len(results)} lease(s)")
    for col in ("lease", "host", "resources (alloc / min..max)", "balance", "ends", "source"):
        table.add_column(col)
    for rec, lease, src in results:
        if lease is None:
            table.add_row("?", rec["url"], "", "", "", src)
            continue
        res = "\n".join(f"{r}: {human(r, t.alloc)} / {human(r, t.min)}..{human(r, t.max)}"
                        for r, t in sorted(lease.resources.items()))
        ends = time.strftime("%Y-%m-%d %H:%M", time.localtime(lease.end / 1e6))
        table.add_row(lease.lease_id, rec["url"], res, format_credits(lease.balance), ends, src)
    out.print(table)
    return sum(lease is None for _, lease, _ in results)
