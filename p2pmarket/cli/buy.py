"""The buyer's commands: ``p2pmarket buy`` and ``p2pmarket hosts`` (the market in the
DHT). Their ``--json`` schemas are in their help epilogs (:data:`BUY_SCHEMA`); amounts
are integers in µcredits, each with a ``*_credits`` twin (a decimal string, up to six
decimals), prices µcredits per second for the whole resource."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import re
import signal
import time
from collections.abc import Coroutine
from typing import Any

from rich.table import Table

from p2pmarket.auction.lease import Lease
from p2pmarket.cli.access import add_key_options, key_docs, key_of, key_step, print_keys
from p2pmarket.cli.giveback import GivenBack, give_back, print_given_back, unusable
from p2pmarket.cli.image import install_step, outcome_doc, prepare_image, print_outcomes
from p2pmarket.cli.options import (
    Subcommands,
    genesis_of,
    genesis_opt,
    json_opt,
    net_of,
    wallet_dir,
    wallet_opt,
)
from p2pmarket.cli.terminal import animated, dump, err, human, out, unit_of
from p2pmarket.client.buyer import BuyReport
from p2pmarket.client.buyer import buy as run_buy
from p2pmarket.client.discovery import HostView, MarketView
from p2pmarket.client.follow import follow as run_follow
from p2pmarket.client.guestaccess import KeyOutcome
from p2pmarket.client.imageupload import ImageOutcome, LocalImage
from p2pmarket.client.quoting import Progress
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import NODE_ID_SIZE, node_id_of, parse_key_or_node_id
from p2pmarket.core.money import format_credits, parse_credits

LEASE_SCHEMA = """  LEASE = {lease_id, host_id (hex), holder (hex key), start, end (µs since the
           epoch), balance (µcredits), balance_credits (decimal string),
           resources: {RESOURCE: {min, max, alloc (integers), unit ("MHz" cpu,
           "KiB" memory and disk, "bit/s" net)}}}"""
BUY_SCHEMA = f"""--json prints one object (amounts: integers in µcredits, each with a
*_credits twin, a decimal string of credits):
  {{dry_run: bool,
   plan: [{{host, url, amount, amount_credits, cost_per_hour, cost_per_hour_credits}}],
   purchases: [{{host (node id, hex), url, paid, paid_credits, cost_per_hour,
                cost_per_hour_credits, account_id, lease: LEASE,
                signed_lease (hex msgpack envelope, verify with the host's key)}}],
   skipped: [{{host, url, reason, planned, planned_credits}}],   # nothing paid
   unfinished: [{{host, url, paid, paid_credits, reason}}],      # paid, kept pending
   errors: [str], unspent, unspent_credits,
   images: [{{lease_id, host, ok, detail, volume?, format?, capacity_kib?}}],   # --image
   ssh: [{{lease_id, host, ok, detail, access, ssh}}],      # --ssh-key (ssh: the command)
   cancelled: [{{lease_id, why, status, refunded, refunded_credits, detail}}]}}
{LEASE_SCHEMA}
A lease whose image or --ssh-key did not go in is cancelled and its money refunded
(`cancelled`), unless --keep-failed. The exit code is the number of errors: planned
hosts not paid, payments whose account is not open yet, images or SSH keys that did not
go in, refunds not paid yet, other failures. The leases bought are printed whatever
happens."""
BUY_EXAMPLES = f"""examples:
  p2pmarket buy --budget 10 --duration 1h cpu:1,0.1,1 memory:1,256MiB,1GiB
  p2pmarket buy --budget 5 --hosts 3 cpu:1,500MHz,2GHz memory:1,128MiB,512MiB
  p2pmarket buy --budget 5 --hosts 3 --dry-run cpu:1,0.1,1     # the plan, nothing paid
  p2pmarket buy --budget 5 --follow --every 30 cpu:1,0.1,1      # re-plan until Ctrl-C
  p2pmarket buy --budget 5 --image debian.qcow2 cpu:1 memory:1,256MiB,1GiB disk:1,2GiB,4GiB
  p2pmarket buy --budget 5 --image debian-12 cpu:1 memory:1,256MiB disk:1,2GiB  # a host's

{BUY_SCHEMA}"""
REACH_CLASSES = ["public", "forwarded", "nat", "proxied", "unattested"]
HOSTS_EXAMPLES = """examples:
  p2pmarket hosts
  p2pmarket hosts --type memory --max-price 5 --json
  p2pmarket hosts --reach public --reach forwarded     # hosts reachable directly
  p2pmarket hosts --http-proxy http://proxy:8888       # from behind an HTTP proxy

prices are credits per second for the whole resource (--max-price too); in --json,
price and hour_avg are µcredits per second, price_credits the same in credits, and
capacity is in each resource's unit ("MHz", "KiB", "bit/s")."""

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 10 * 365 * 86400
log = logging.getLogger("p2pmarket.buy")


def add_buy(sub: Subcommands) -> None:
    buy_ = sub.add("buy", "Buy resources: find hosts, fund them, bid, verify the leases.",
                   BUY_EXAMPLES, buy)
    wallet_opt(buy_)
    buy_.add_argument("bids", nargs="+", metavar="BID",
                      help="RESOURCE:WEIGHT,MIN,MAX (Tycoon syntax), e.g. memory:1,256MiB,1GiB")
    buy_.add_argument("--budget", required=True,
                      help="credits to spend in all (up to six decimals)")
    buy_.add_argument("--duration", default="1h", help="how long to spend it (30m, 2h, 1d)")
    buy_.add_argument("--hosts", type=int, default=8,
                      help="spread over up to N hosts (best response picks how many pay off; "
                           "default 8)")
    buy_.add_argument("--host", action="append", metavar="NODE_ID",
                      help="buy only from this host (node id or key, hex; repeatable)")
    buy_.add_argument("--reach", action="append", metavar="CLASS", choices=REACH_CLASSES,
                      help="only hosts of this reachability class (repeatable): "
                           + ", ".join(REACH_CLASSES))
    buy_.add_argument("--min-availability", type=float, default=0.0, metavar="PERCENT",
                      help="only hosts whose advertised availability is at least this")
    buy_.add_argument("--image", metavar="FILE|NAME",
                      help="after buying, stream this disk image file to each host, or "
                           "(not a file) have each host copy its base image NAME (only "
                           "hosts offering it are bought from)")
    add_key_options(buy_)
    buy_.add_argument("--keep-failed", action="store_true",
                      help="keep a lease whose image or --ssh-key did not go in (by "
                           "default it is cancelled and its money refunded)")
    buy_.add_argument("--dry-run", action="store_true",
                      help="find, quote and plan, and print the plan: nothing is paid")
    buy_.add_argument("--follow", action="store_true",
                      help="after buying, re-plan as prices move and move money between "
                           "hosts within the budget, until Ctrl-C or --follow-for")
    buy_.add_argument("--every", type=float, default=60.0, metavar="SECONDS",
                      help="with --follow: seconds between re-plans (default 60)")
    buy_.add_argument("--follow-for", metavar="DURATION",
                      help="with --follow: stop after this long (90s, 30m, 2h)")
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
                   choices=REACH_CLASSES,
                   help="only hosts of this reachability class (repeatable): public, "
                        "forwarded (NAT with a port forward), nat, proxied, unattested")
    h.add_argument("--min-availability", type=float, default=0.0, metavar="PERCENT",
                   help="only hosts whose advertised availability is at least this")
    json_opt(h)


def parse_duration(text: str) -> int:
    m = DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise P2PMarketError(f"duration must look like 90s, 30m, 2h or 1d: {text!r}", text)
    seconds = int(m.group(1)) * UNIT_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise P2PMarketError("duration is longer than ten years", text)
    return seconds


def availability_ppm(percent: float) -> int:
    if not 0 <= percent <= 100:
        raise P2PMarketError("--min-availability is a percentage, 0 to 100", percent)
    return round(percent * 10_000)


def parse_node_id(text: str) -> bytes:
    key = parse_key_or_node_id(text)
    return key if len(key) == NODE_ID_SIZE else node_id_of(key)


def lease_doc(lease: Lease) -> dict[str, Any]:
    """A lease for ``--json`` (see :data:`LEASE_SCHEMA`)."""
    return {"lease_id": lease.lease_id, "host_id": lease.host_id.hex(),
            "holder": lease.holder.hex(), "start": lease.start, "end": lease.end,
            "balance": lease.balance, "balance_credits": format_credits(lease.balance),
            "resources": {r: {"min": t.min, "max": t.max, "alloc": t.alloc,
                              "unit": unit_of(r)}
                          for r, t in lease.resources.items()}}


def allocation_text(lease: Lease) -> str:
    return ", ".join(f"{r} {human(r, t.alloc)}" for r, t in sorted(lease.resources.items()))


def when(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(us / 1e6))


def per_hour(amount: int, interval_s: int) -> int:
    """µcredits per hour of ``amount`` spent evenly over ``interval_s``."""
    return amount * 3600 // interval_s


def credits_doc(name: str, micro: int) -> dict[str, Any]:
    """``{name: µcredits, name_credits: "1.5"}``."""
    return {name: micro, f"{name}_credits": format_credits(micro)}


def host_prices(host: HostView) -> str:
    return ", ".join(f"{t} {format_credits(ad.price)} c/s"
                     for t, ad in sorted(host.record.resources.items()))


def image_kind_of(source: LocalImage | str | None) -> str:
    """The kind of machine a local image needs (``rootfs``: a container; ``disk``)."""
    if not isinstance(source, LocalImage):
        return ""
    return "rootfs" if source.info.kind == "rootfs" else "disk"


async def buy(args: argparse.Namespace) -> int:
    """Exit code: one per planned payment not made or not finished, and one per other
    failure (an ``error:`` line each). The leases bought are printed whatever happens."""
    budget = parse_credits(args.budget)
    duration = parse_duration(args.duration)
    only = frozenset(parse_node_id(h) for h in args.host or ())
    source = prepare_image(args.image, args.bids) if getattr(args, "image", None) else None
    key, ssh_mode = key_of(args)

    def run(progress: Progress) -> Coroutine[Any, Any, BuyReport]:
        return run_buy(wallet_dir(args), args.bids, budget, duration, args.hosts,
                       progress=progress, net=net_of(args), only=only,
                       dry_run=args.dry_run, reach=frozenset(args.reach or ()),
                       min_availability_ppm=availability_ppm(args.min_availability),
                       base_image=source if isinstance(source, str) else None,
                       ssh=ssh_mode, image_kind=image_kind_of(source))

    if animated(args.json):
        with out.status("discovering…") as spinner:
            def show(msg: str) -> None:
                spinner.update(msg)
                if msg.startswith("ready:"):
                    out.print(f"[green]✓[/green] {msg[len('ready: '):]}")
            report = await run(show)
    else:
        report = await run(lambda msg: log.info("%s", msg))
    bought = [p.lease.lease_id for p in report.purchases]
    images = [] if source is None or args.dry_run else await install_step(args, bought, source)
    keys = [] if key is None or args.dry_run else await key_step(args, bought, key)
    failed = [] if getattr(args, "keep_failed", False) else unusable(images, keys, ssh_mode)
    given = await give_back(args, failed)
    if getattr(args, "follow", False) and not args.dry_run:
        gone = frozenset(g.lease_id for g in given)
        return (await follow_output(args, report, budget, duration, gone)
                + print_outcomes(images, kept=not gone) + print_keys(args, keys, gone)
                + print_given_back(given))
    return buy_output(args, report, duration, images, keys, given)


async def follow_output(args: argparse.Namespace, report: BuyReport, budget: int,
                        duration: int, given_back: frozenset[str] = frozenset()) -> int:
    """``--follow``: the purchase's output (not with ``--json``), then follow until
    SIGINT/SIGTERM or ``--follow-for``, then what was spent (one JSON object with
    ``--json``: ``{purchase: BUY, follow: {rounds, moves: [{host, kind, amount}],
    errors, spent, per_host: [{host, paid, refunded, spent}], leases: [lease id]}}``).
    Exit code: the purchase's errors plus the follow's."""
    start = now_us()
    bought = 0 if args.json else buy_output(args, report, duration)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        done = await run_follow(wallet_dir(args), args.bids, budget, duration, args.hosts,
                                {p.lease.lease_id for p in report.purchases} - given_back,
                                stop,
                                every_s=args.every,
                                follow_for_s=(parse_duration(args.follow_for)
                                              if args.follow_for else None),
                                net=net_of(args), progress=lambda m: log.info("%s", m),
                                start_us=start)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    per_host = [{"host": h.hex(), **credits_doc("paid", p),
                 **credits_doc("refunded", done.refunded.get(h, 0)),
                 **credits_doc("spent", p - done.refunded.get(h, 0))}
                for h, p in sorted(done.paid.items())]
    doc = {"rounds": done.rounds, "errors": done.errors,
           "moves": [{"host": m.host_id.hex(), "kind": m.kind, **credits_doc("amount", m.amount)}
                     for m in done.moves],
           **credits_doc("spent", done.spent), "per_host": per_host,
           "leases": sorted(done.held)}
    if args.json:
        buf = io.StringIO()   # the purchase's own --json object, nested in the one printed
        with contextlib.redirect_stdout(buf):
            bought = buy_output(args, report, duration)
        dump({"purchase": json.loads(buf.getvalue()), "follow": doc})
        return bought + len(done.errors)
    table = Table(title=f"followed for {done.rounds} round(s), {len(done.moves)} move(s): "
                        f"spent {format_credits(done.spent)} of {format_credits(budget)} credits")
    for col in ("host", "paid", "refunded", "spent"):
        table.add_column(col)
    for row in per_host:
        table.add_row(row["host"][:16], f"{row['paid_credits']} c",
                      f"{row['refunded_credits']} c", f"{row['spent_credits']} c")
    out.print(table)
    out.print("leases held: " + (", ".join(sorted(done.held)) or "none"))
    for e in done.errors:
        err.print(f"error: {e}")
    return bought + len(done.errors)


def buy_output(args: argparse.Namespace, report: BuyReport, duration: int,
               images: list[ImageOutcome] | None = None,
               keys: list[KeyOutcome] | None = None,
               given: list[GivenBack] | None = None) -> int:
    images, keys, given = images or [], keys or [], given or []
    gone = frozenset(g.lease_id for g in given)
    docs: list[dict[str, Any]] = [
        {"host": p.host.node_id.hex(), "url": p.host.record.url, **credits_doc("paid", p.amount),
         **credits_doc("cost_per_hour", per_hour(p.amount, duration)),
         "account_id": p.account_id, "lease": lease_doc(p.lease),
         "signed_lease": p.envelope.hex()} for p in report.purchases]
    skipped: list[dict[str, Any]] = [
        {"host": s.host.node_id.hex(), "url": s.host.record.url, "reason": s.reason,
         **credits_doc("planned", s.amount)} for s in report.skipped]
    unfinished: list[dict[str, Any]] = [
        {"host": u.host.node_id.hex(), "url": u.host.record.url,
         **credits_doc("paid", u.amount), "reason": u.reason} for u in report.unfinished]
    plan = [{"host": h.node_id.hex(), "url": h.record.url, **credits_doc("amount", a),
             **credits_doc("cost_per_hour", per_hour(a, duration))}
            for h, a in report.planned]
    errors = (len(report.unfinished) + sum(1 for s in report.skipped if s.amount)
              + len(report.errors) + sum(1 for i in images if not i.ok)
              + sum(1 for k in keys if not k.ok)
              + sum(1 for g in given if g.status != "done"))
    if args.json:
        dump({"dry_run": args.dry_run, "plan": plan, "purchases": docs, "skipped": skipped,
              "unfinished": unfinished, "errors": report.errors,
              **credits_doc("unspent", report.unspent),
              "images": [outcome_doc(i) for i in images], "ssh": key_docs(args, keys),
              "cancelled": [g.to_doc() for g in given]})
        return errors
    for s in skipped:
        note = (f"; its share of {s['planned_credits']} credits was not spent"
                if s["planned"] else "")
        line = (f"skipped host {s['host'][:16]}… at {s['url']}: {s['reason']} "
                f"(nothing paid{note})")
        err.print(f"error: {line}" if s["planned"] else line)
    if args.dry_run:
        table = Table(title=f"plan for {len(plan)} host(s), nothing paid (--dry-run)")
        for col in ("host", "address", "price", "amount", "cost per hour"):
            table.add_column(col)
        for (h, _), d in zip(report.planned, plan, strict=True):
            table.add_row(d["host"][:16], d["url"], host_prices(h),
                          f"{d['amount_credits']} c", f"{d['cost_per_hour_credits']} c/h")
        out.print(table)
        return errors
    table = Table(title=f"{len(docs)} lease(s) bought")
    for col in ("lease", "host", "allocation", "price", "paid", "cost per hour",
                "lease end"):
        table.add_column(col)
    for p, doc in zip(report.purchases, docs, strict=True):
        table.add_row(p.lease.lease_id, f"{doc['host'][:16]}\n{doc['url']}",
                      allocation_text(p.lease), host_prices(p.host),
                      f"{doc['paid_credits']} c", f"{doc['cost_per_hour_credits']} c/h",
                      when(p.lease.end))
    out.print(table)
    for u in unfinished:
        err.print(f"error: paid {u['paid_credits']} credits to host {u['host'][:16]}… at "
                  f"{u['url']}, but the account is not open yet: {u['reason']} (kept as "
                  "pending; `p2pmarket leases` or the next `buy` finishes it)")
    for e in report.errors:
        err.print(f"error: {e}")
    print_outcomes(images, kept=not gone)
    print_keys(args, keys, gone)
    print_given_back(given)
    return errors


async def hosts(args: argparse.Namespace) -> int:
    genesis = genesis_of(args)
    types = args.types or ["cpu", "memory"]
    max_price = parse_credits(args.max_price) if args.max_price else None
    async with MarketView(genesis, net_of(args)) as market:
        views = await market.hosts(
            types, limit=args.limit, min_capacity=args.min_capacity, max_price=max_price,
            min_availability_ppm=availability_ppm(args.min_availability))
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
             "resources": {t: {"capacity": ad.capacity, "unit": unit_of(t),
                               "price": ad.price,
                               "price_credits": format_credits(ad.price),
                               "hour_avg": ad.hour_avg}
                           for t, ad in v.record.resources.items()},
             "images": [{"name": i.name, "format": i.format, "virtual_size": i.virtual_size,
                         "sha256": i.sha256.hex()} for i in v.record.images],
             "vm": None if v.record.vm is None else v.record.vm.to_doc()}
            for v in views]
    if args.json:
        dump({"hosts": rows, "exposed": exposed, "unreachable": unreachable})
        return 0
    table = Table(title=f"market: {len(rows)} host(s) offering {', '.join(types)}"
                  + (f"; {len(exposed)} exposed host(s) left out" if exposed else "")
                  + (f"; {len(unreachable)} unreachable host(s) left out"
                     if unreachable else ""))
    for col in ("host", "address", "reach",
                "resources (capacity @ price credits/s, hour avg)", "avail", "images",
                "vm (driver, default memory, ssh ports)"):
        table.add_column(col)
    for r in rows:
        res = "\n".join(f"{t}: {human(t, a['capacity'])} @ {a['price_credits']} "
                        f"({format_credits(a['hour_avg'])})"
                        for t, a in sorted(r["resources"].items()))
        table.add_row(r["node_id"][:16], r["url"], r["reachability"], res,
                      f"{r['availability_ppm'] / 10_000:.1f}%",
                      "\n".join(f"{i['name']} ({i['format']}, "
                                f"{human('disk', i['virtual_size'] // 1024)})"
                                for i in r["images"]) or "-",
                      "-" if r["vm"] is None else
                      f"{r['vm']['driver']}, {human('memory', r['vm']['memory_kib'])}, "
                      f"{r['vm']['ssh_ports'] or 'no ssh ports'}")
    out.print(table)
    return 0
