"""``buy --follow``: re-plan as prices move and move money within the budget (issue 12).

After a ``buy``, :func:`follow` wakes every ``every_s`` seconds (or when stopped) and
runs one *round*:

1. refresh the leases it holds (the ones this follow bought; :func:`refresh_leases`):
   the money left in each account (the lease's ``balance``);
2. quote the hosts it holds leases at and the best others the market offers
   (:func:`ask_quote`, no amount), up to ``max_hosts`` plus the held ones;
3. plan (:func:`plan_bundle`) the money it controls, :func:`controlled`: what is left
   in its accounts plus the unspent budget (``budget - (paid - refunded)``), over the
   rest of the interval. A held host's quoted price includes the buyer's own bid;
   :func:`others_price` takes out the buyer's estimated rate (balance over the time
   left, split by weight);
4. :func:`decide` (pure) the moves: a host whose planned share is below what its
   account holds by more than ``threshold`` gives back the difference (``refund``, or
   ``cancel`` when the plan gives it nothing); then, with the money freed and the
   unspent budget, hosts planned above their balance by more than ``threshold`` get
   the difference, largest first (``topup`` of a held lease, or ``buy`` at a new
   host). Smaller differences are left alone: every move is a certified transfer.

Paid minus refunded never exceeds ``budget``: a move that adds money is capped by the
unspent budget at that moment, measured from the lease records (``paid``,
``refunded``) after the refunds of the round. Stopping (``stop`` set, or
``follow_for_s`` elapsed) ends the loop between moves; the :class:`FollowReport` says
what was spent per host and in all (paid minus refunded) and the leases held.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.resources import BidSpec, parse_bids
from p2pmarket.client.buyer import BuyError, buy, client_net
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.leases import LeaseView, cancel, refresh_leases, refund, topup
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.planner import HostTerms, PlanError, plan_bundle, want_from_bids
from p2pmarket.client.quotecheck import planning_view
from p2pmarket.client.quoting import Progress, Quoted, ask_quote
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import US_PER_S, now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.money import format_credits

THRESHOLD_PPM = 50_000   # 5 % of the budget
PPM = 1_000_000


@dataclass(frozen=True)
class Move:
    """One transfer a round makes: ``refund`` (part of an account back), ``cancel``
    (all of it back), ``topup`` (more into a held lease), ``buy`` (a new host)."""

    host_id: bytes
    kind: str
    amount: int
    lease_id: str | None = None


def controlled(balances: Mapping[bytes, int], budget: int, paid: int, refunded: int) -> int:
    """The money the buyer can plan with: what its accounts hold plus the unspent
    budget; never more than ``budget``."""
    return min(budget, sum(balances.values()) + max(0, budget - (paid - refunded)))


def others_price(quoted: int, alloc: int, capacity: int) -> int:
    """A held host's price for one resource less the buyer's own bid, at least 1. The
    host shares in proportion to the bids (``alloc = C b / p``), so the others bid
    ``p (C - alloc) / C`` (less exact when the buyer's max caps its share)."""
    if capacity <= 0:
        return max(1, quoted)
    return max(1, quoted * (capacity - min(alloc, capacity)) // capacity)


def decide(balances: Mapping[bytes, int], leases: Mapping[bytes, str],
           target: Mapping[bytes, int], unspent: int, threshold: int) -> list[Move]:
    """The moves that bring each host's money from ``balances`` (held hosts) towards
    ``target`` (the plan), ignoring differences of at most ``threshold``. Refunds first;
    then the money they free plus ``unspent`` goes to the largest shortfalls first
    (ties by host id), each capped by what is left of it."""
    moves: list[Move] = []
    credit = max(0, unspent)
    for host in sorted(balances):
        have, want = balances[host], target.get(host, 0)
        if have - want > threshold:
            kind = "cancel" if want == 0 else "refund"
            moves.append(Move(host, kind, have - want, leases.get(host)))
            credit += have - want
    short = sorted(((want - balances.get(h, 0), h) for h, want in target.items()
                    if want - balances.get(h, 0) > threshold), key=lambda p: (-p[0], p[1]))
    for gap, host in short:
        amount = min(gap, credit)
        if amount <= threshold:
            break
        held = host in balances
        moves.append(Move(host, "topup" if held else "buy", amount, leases.get(host)))
        credit -= amount
    return moves


@dataclass
class FollowReport:
    """What a follow did: rounds run, moves made (and failed), and at the end the
    leases held with what was paid and refunded per host (µcredits)."""

    rounds: int = 0
    moves: list[Move] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    paid: dict[bytes, int] = field(default_factory=dict)
    refunded: dict[bytes, int] = field(default_factory=dict)
    held: dict[str, bytes] = field(default_factory=dict)   # open lease id -> host id

    @property
    def spent(self) -> int:
        """Paid minus refunded, in all."""
        return sum(self.paid.values()) - sum(self.refunded.values())


def _tally(report: FollowReport, wdir: WalletDir, lease_ids: set[str]) -> None:
    report.paid, report.refunded, report.held = {}, {}, {}
    for lease_id, record in wdir.leases().items():
        if lease_id not in lease_ids:
            continue
        host = node_id_of(bytes.fromhex(record["host_key"]))
        report.paid[host] = report.paid.get(host, 0) + int(record.get("paid", "0"))
        report.refunded[host] = report.refunded.get(host, 0) + int(record.get("refunded", "0"))
        if not record.get("closed"):
            report.held[lease_id] = host


def _terms(quoted: Sequence[Quoted], specs: Mapping[str, BidSpec],
           allocs: Mapping[bytes, Mapping[str, int]]) -> list[HostTerms]:
    types = sorted({key.split(",")[0] for key in specs})
    out = []
    for q in quoted:
        views = {t: planning_view(q.quote, q.host.record, t) for t in types
                 if t in q.quote.resources and t in q.host.record.resources}
        mine = allocs.get(q.host.node_id, {})
        prices = {t: others_price(max(1, v.price), mine.get(t, 0), v.capacity)
                  for t, v in views.items()}
        out.append(HostTerms(q.host.node_id, {t: v.capacity for t, v in views.items()},
                             prices))
    return out


async def follow_round(wdir: WalletDir, bid_texts: list[str], budget: int, end_us: int,
                       max_hosts: int, lease_ids: set[str], report: FollowReport,
                       threshold: int, net: ClientNet, progress: Progress) -> None:
    """One round (see the module docstring); the moves it makes go into ``report``."""
    specs = parse_bids(bid_texts)
    types = sorted({key.split(",")[0] for key in specs})
    wire_bids = {k: s.to_wire() for k, s in specs.items()}
    now = now_us()
    left_s = (end_us - now) // US_PER_S
    if left_s <= 1:
        return
    views: list[LeaseView] = [v for v in await refresh_leases(wdir, now, net)
                              if v.lease_id in lease_ids and v.status in ("active", "outbid")
                              and v.lease is not None]
    balances = {node_id_of(bytes.fromhex(v.record["host_key"])): v.lease.balance
                for v in views if v.lease is not None}
    leases = {node_id_of(bytes.fromhex(v.record["host_key"])): v.lease_id for v in views}
    allocs = {node_id_of(bytes.fromhex(v.record["host_key"])):
              {r: t.alloc for r, t in v.lease.resources.items()}
              for v in views if v.lease is not None}
    _tally(report, wdir, lease_ids)
    money = controlled(balances, budget, sum(report.paid.values()),
                       sum(report.refunded.values()))
    async with MarketView(wdir.genesis(), net) as market:
        hosts = await market.hosts(types, limit=max(20, max_hosts + len(balances)))
    held = [h for h in hosts if h.node_id in balances]
    others = [h for h in hosts if h.node_id not in balances][:max_hosts]
    identity = wdir.identity()
    async with PeerClient(identity, timeout_s=5, proxy=net.proxy) as client:
        answers = await asyncio.gather(*(ask_quote(client, h, identity.public_key, wire_bids,
                                                   types, int(left_s), None)
                                         for h in held + others), return_exceptions=True)
    quoted = [a for a in answers if isinstance(a, Quoted)]
    for a in answers:
        if isinstance(a, BaseException) and not isinstance(a, P2PMarketError):
            raise a
    if not quoted or money <= 0:
        return
    try:
        made = plan_bundle(_terms(quoted, specs, allocs), want_from_bids(specs),
                           money, int(left_s), max_hosts)
    except PlanError as exc:
        report.errors.append(f"cannot plan: {exc.message}")
        return
    unspent = budget - (sum(report.paid.values()) - sum(report.refunded.values()))
    for move in decide(balances, leases, made.bids, unspent, threshold):
        await _make(wdir, bid_texts, budget, int(left_s), move, lease_ids, report, net,
                    progress)


async def _make(wdir: WalletDir, bid_texts: list[str], budget: int, left_s: int, move: Move,
                lease_ids: set[str], report: FollowReport,
                net: ClientNet, progress: Progress) -> None:
    short = move.host_id.hex()[:12]
    try:
        if move.kind in ("refund", "cancel") and move.lease_id is not None:
            progress(f"following: {move.kind} {format_credits(move.amount)} credits from "
                     f"host {short}")
            if move.kind == "cancel":
                await cancel(wdir, move.lease_id, net=net)
            else:
                await refund(wdir, move.lease_id, move.amount, net=net)
        else:
            _tally(report, wdir, lease_ids)
            amount = min(move.amount, budget - report.spent)   # never above the budget
            if amount <= 0:
                return
            move = Move(move.host_id, move.kind, amount, move.lease_id)
            progress(f"following: {move.kind} {format_credits(amount)} credits at host {short}")
            if move.kind == "topup" and move.lease_id is not None:
                await topup(wdir, move.lease_id, amount, net=net)
            else:
                got = await buy(wdir, bid_texts, amount, left_s, 1, net=net,
                                only=frozenset({move.host_id}))
                lease_ids.update(p.lease.lease_id for p in got.purchases)
                if not got.purchases:
                    raise BuyError("no lease bought", [s.reason for s in got.skipped])
        report.moves.append(move)
    except P2PMarketError as exc:
        report.errors.append(f"{move.kind} at host {short}: {exc.message}")
    finally:
        _tally(report, wdir, lease_ids)


async def follow(wdir: WalletDir, bid_texts: list[str], budget: int, interval_s: int,
                 max_hosts: int, lease_ids: set[str], stop: asyncio.Event,
                 every_s: float = 60.0, follow_for_s: float | None = None,
                 threshold_ppm: int = THRESHOLD_PPM, net: ClientNet | None = None,
                 progress: Progress = lambda _: None, start_us: int | None = None
                 ) -> FollowReport:
    """Follow the market for the leases ``lease_ids`` (bought by ``buy`` with this
    ``budget`` at ``start_us``) until ``stop`` is set or ``follow_for_s`` passed; one
    round every ``every_s`` seconds. Returns the summary (also on cancellation of a
    round by ``stop``: a round is only interrupted between moves)."""
    if every_s <= 0:
        raise BuyError("--every must be positive", every_s)
    net = client_net(net)
    report = FollowReport()
    end_us = (start_us or now_us()) + interval_s * US_PER_S
    loop = asyncio.get_running_loop()
    deadline = None if follow_for_s is None else loop.time() + follow_for_s
    threshold = budget * threshold_ppm // PPM
    ids = set(lease_ids)
    while not stop.is_set():
        wait = every_s if deadline is None else min(every_s, deadline - loop.time())
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set() or (deadline is not None and loop.time() >= deadline):
            break
        try:
            await follow_round(wdir, bid_texts, budget, end_us, max_hosts, ids, report,
                               threshold, net, progress)
        except P2PMarketError as exc:
            report.errors.append(exc.message)
        report.rounds += 1
    _tally(report, wdir, ids)
    return report


__all__ = ["THRESHOLD_PPM", "FollowReport", "Move", "controlled", "decide", "follow",
           "follow_round", "others_price"]
