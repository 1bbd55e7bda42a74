"""``p2pmarket top``: a live terminal view of the market's prices and one's leases.

On a terminal it redraws every ``--every`` seconds (rich Live) until Ctrl-C or
``--count`` frames; when stdout is not a terminal (a pipe, a file, cron) or with
``--once`` it prints one plain frame and exits. Each frame samples the market from the
DHT (the hosts offering each resource) and refreshes the wallet's leases from their
hosts; :mod:`p2pmarket.client.topview` makes the frame from that and ``now``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from p2pmarket.cli.buy import parse_duration
from p2pmarket.cli.leases import duration_text
from p2pmarket.cli.options import (
    Subcommands,
    genesis_of,
    genesis_opt,
    net_of,
    wallet_dir,
    wallet_opt,
)
from p2pmarket.cli.terminal import human, out
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.leases import refresh_leases
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.topview import ARROWS, Frame, LeaseSample, Offer, frame
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.money import format_credits

EXAMPLES = """examples:
  p2pmarket top                          # live, every 5 s, until Ctrl-C
  p2pmarket top --every 2 --type cpu --type memory --type disk
  p2pmarket top --once > market.txt      # one plain frame (also when piped)

prices are credits per second for the whole resource; the arrow is the cheapest
price's move since the last frame (↑ up, ↓ down, = same)."""

Sample = tuple[Mapping[str, Sequence[Offer]], Sequence[LeaseSample]]
Sampler = Callable[[int], Awaitable[Sample]]


def add_top(sub: Subcommands) -> None:
    tp = sub.add("top", "A live view of the market's prices and your leases.", EXAMPLES,
                 top_cmd)
    wallet_opt(tp)
    genesis_opt(tp)
    tp.add_argument("--type", dest="types", action="append", metavar="RESOURCE",
                    help="resource types to show (repeatable; default cpu and memory)")
    tp.add_argument("--every", default="5", help="seconds between frames (default 5)")
    tp.add_argument("--count", type=int, default=None,
                    help="stop after this many frames (default: until Ctrl-C)")
    tp.add_argument("--once", action="store_true", help="one plain frame, then exit")
    tp.add_argument("--limit", type=int, default=50, help="hosts read per resource")


def market_sampler(genesis: Genesis, wdir: WalletDir | None, types: Sequence[str],
                   net: ClientNet, limit: int) -> Sampler:
    """A frame's inputs from the DHT and the wallet's hosts."""
    async def sample(now: int) -> Sample:
        offers: dict[str, list[Offer]] = {}
        async with MarketView(genesis, net) as market:
            for t in types:
                views = await market.hosts([t], limit=limit)
                offers[t] = [Offer(v.node_id.hex(), ad.capacity, ad.price, ad.hour_avg)
                             for v in views for rt, ad in v.record.resources.items()
                             if rt == t]
        leases: list[LeaseSample] = []
        if wdir is not None and wdir.exists():
            for v in await refresh_leases(wdir, now, net):
                alloc = {r: q.alloc for r, q in v.lease.resources.items()} if v.lease else {}
                leases.append(LeaseSample(
                    v.lease_id, v.record.get("url", ""), v.status, alloc, v.spent,
                    0 if v.lease is None or v.status in ("ended", "cancelled")
                    else v.lease.balance, v.lease.end if v.lease else None))
        return offers, leases
    return sample


def render(f: Frame) -> Group:
    prices = Table(title=f"market prices (credits/s for the whole resource), "
                         f"{len(f.prices)} resource(s)")
    for col in ("resource", "hosts", "capacity", "cheapest", "", "median", "dearest",
                "hour avg"):
        prices.add_column(col, justify="right" if col not in ("resource", "") else "left")
    for p in f.prices:
        prices.add_row(p.resource, str(p.hosts), human(p.resource, p.capacity),
                       format_credits(p.low), ARROWS[p.move], format_credits(p.median),
                       format_credits(p.high), format_credits(p.hour_avg))
    leases = Table(title=f"{len(f.leases)} lease(s)")
    for col in ("lease", "host", "state", "allocation", "spent", "left", "time left"):
        leases.add_column(col)
    for r in f.leases:
        leases.add_row(r.lease_id, r.host, r.status,
                       ", ".join(f"{k} {human(k, v)}" for k, v in sorted(r.allocation.items())),
                       "?" if r.spent is None else format_credits(r.spent),
                       format_credits(r.left), duration_text(r.seconds_left))
    return Group(prices, leases)


async def run_top(sample: Sampler, console: Console, every_s: float, count: int | None,
                  once: bool, clock: Callable[[], int] = now_us,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> int:
    """Frames until ``count`` (module docstring); returns how many were shown."""
    if once or not console.is_terminal:
        offers, leases = await sample(clock())
        console.print(render(frame(offers, leases, clock())))
        return 1
    shown, previous = 0, None
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while count is None or shown < count:
            if shown:
                await sleep(every_s)
            offers, leases = await sample(clock())
            previous = frame(offers, leases, clock(), previous)
            live.update(render(previous), refresh=True)
            shown += 1
    return shown


async def top_cmd(args: argparse.Namespace) -> int:
    every = float(parse_duration(args.every))
    wdir = wallet_dir(args)
    genesis = genesis_of(args)
    sample = market_sampler(genesis, wdir if wdir.exists() else None,
                            args.types or ["cpu", "memory"], net_of(args), args.limit)
    await run_top(sample, out, max(1.0, every), args.count, args.once)
    return 0


__all__ = ["add_top", "market_sampler", "render", "run_top"]
