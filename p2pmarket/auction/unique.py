"""Unique resources (seed 2/9, 5/7, 5/23/2007, 2/7): a sealed-bid auction per identifier.

Pure; used by :mod:`p2pmarket.auction.allocator`. A key is ``TYPE,ID`` or
``TYPE,LO-HI`` (a range): ``tcp_port,30000``, ``tcp_port,30000-30009``,
``ipv4_address,198.18.0.5``, ``ipv4_address,198.18.0.5-198.18.0.8``. The host
offers identifiers (single or ranges) with a reserve price per tick; an account
bids on a key and so on every offered identifier in it.

Per identifier: the highest bid wins (ties: smaller account id) if it reaches
the reserve, and pays ``min(bid, max(own min, second-highest bid, reserve))``;
every losing bid pays itself (5/23/2007: bidding costs something, which limits
what a malicious bidder can do). An account's money for a range is split
evenly over the offered identifiers in it (rounded down; the rest stays in its
fund). Losing one identifier never affects the rest (2/7).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.core.clock import US_PER_S

UNIQUE_TYPES = ("ipv4_address", "tcp_port")
MAX_RANGE = 4096


class UniqueKeyError(ValueError):
    """A malformed unique-resource key (an assertion-level error inside the pure core;
    :mod:`p2pmarket.auction.resources` checks keys at the edge)."""


def _ident(kind: str, text: str) -> int:
    text = text.strip()
    if kind == "tcp_port":
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise UniqueKeyError(f"bad tcp port {text!r}")
        return int(text)
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise UniqueKeyError(f"bad IPv4 address {text!r}") from None


def ident_text(kind: str, value: int) -> str:
    return str(value) if kind == "tcp_port" else str(ipaddress.IPv4Address(value))


def parse_key(key: str) -> tuple[str, int, int]:
    """``TYPE,ID`` or ``TYPE,LO-HI`` -> ``(type, lo, hi)``."""
    kind, sep, rest = key.partition(",")
    if not sep or kind not in UNIQUE_TYPES:
        raise UniqueKeyError(f"not a unique resource key: {key!r}")
    lo_text, dash, hi_text = rest.partition("-")
    lo = _ident(kind, lo_text)
    hi = _ident(kind, hi_text) if dash else lo
    if hi < lo:
        raise UniqueKeyError(f"empty range {key!r}")
    return kind, lo, hi


def id_key(kind: str, value: int) -> str:
    return f"{kind},{ident_text(kind, value)}"


def canonical_key(key: str) -> str:
    kind, lo, hi = parse_key(key)
    if lo == hi:
        return id_key(kind, lo)
    return f"{kind},{ident_text(kind, lo)}-{ident_text(kind, hi)}"


class _HasBids(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def bids(self) -> Mapping[str, Bid]: ...


@dataclass(frozen=True)
class UniqueBid:
    index: int          # the account's position in the book
    key: str            # the account's bid key
    weight_ppm: int
    own_min: int        # micro-credits per second
    ids: tuple[tuple[str, int], ...]   # offered identifiers it covers


@dataclass(frozen=True)
class UniqueBook:
    offered: Mapping[str, tuple[tuple[int, int, int], ...]]   # type -> (lo, hi, reserve)
    bids: tuple[UniqueBid, ...] = ()
    ids: tuple[str, ...] = ()                                   # account ids, by index

    def covered(self, key: str) -> tuple[tuple[str, int], ...]:
        """The offered identifiers inside ``key``'s range (at most ``MAX_RANGE``)."""
        try:
            kind, lo, hi = parse_key(key)
        except UniqueKeyError:
            return ()
        out: list[tuple[str, int]] = []
        for a, b, _ in self.offered.get(kind, ()):
            for v in range(max(a, lo), min(b, hi) + 1):
                out.append((kind, v))
                if len(out) >= MAX_RANGE:
                    return tuple(out)
        return tuple(out)

    def offered_in(self, key: str) -> bool:
        return bool(self.covered(key))

    def reserve(self, kind: str, value: int) -> int:
        for a, b, r in self.offered.get(kind, ()):
            if a <= value <= b:
                return r
        return 0


def build_unique(offered: Mapping[str, int], accounts: Sequence[_HasBids]) -> UniqueBook:
    """``offered``: key (single or range) -> reserve per tick. ``accounts`` sorted by id."""
    table: dict[str, list[tuple[int, int, int]]] = {}
    for key, reserve in sorted(offered.items()):
        kind, lo, hi = parse_key(key)
        table.setdefault(kind, []).append((lo, hi, max(0, reserve)))
    book = UniqueBook({k: tuple(sorted(v)) for k, v in table.items()})
    bids: list[UniqueBid] = []
    for i, acc in enumerate(accounts):
        for key in sorted(acc.bids):
            if "," not in key:
                continue
            ids = book.covered(key)
            if ids:
                bid = acc.bids[key]
                bids.append(UniqueBid(i, key, bid.weight_ppm, bid.min, ids))
    return UniqueBook(book.offered, tuple(bids), tuple(a.account_id for a in accounts))


@dataclass(frozen=True)
class UniqueOutcome:
    charges: dict[int, int] = field(default_factory=dict)        # account index -> paid
    won: dict[str, dict[str, int]] = field(default_factory=dict)  # account -> key -> count
    events: list[AllocEvent] = field(default_factory=list)
    prices: dict[str, int] = field(default_factory=dict)          # id key -> per second
    revenue: dict[str, int] = field(default_factory=dict)         # id key -> paid this tick
    winners: dict[str, str] = field(default_factory=dict)         # id key -> account


def run_unique(book: UniqueBook, spend: list[int], total_weight: list[int],
               tick_us: int) -> UniqueOutcome:
    out = UniqueOutcome()
    if not book.bids:
        return out
    per_id: dict[tuple[str, int], list[tuple[int, int, str, int]]] = {}
    for ub in book.bids:
        money = spend[ub.index] * ub.weight_ppm // total_weight[ub.index]
        each = money // len(ub.ids)
        own_min = -(-ub.own_min * tick_us // US_PER_S)
        for ident in ub.ids:
            per_id.setdefault(ident, []).append((each, ub.index, ub.key, own_min))
    for (kind, value), offers in sorted(per_id.items()):
        offers.sort(key=lambda o: (-o[0], o[1]))
        reserve = book.reserve(kind, value)
        name = id_key(kind, value)
        top, idx, key, own_min = offers[0]
        second = offers[1][0] if len(offers) > 1 else 0
        paid = 0
        if top > 0 and top >= reserve:
            price = min(top, max(own_min, second, reserve))
            aid = book.ids[idx]
            out.charges[idx] = out.charges.get(idx, 0) + price
            won = out.won.setdefault(aid, {})
            won[key] = won.get(key, 0) + 1
            out.winners[name] = aid
            out.prices[name] = price * US_PER_S // tick_us
            paid += price
            losers = offers[1:]
        else:
            price = reserve
            out.prices[name] = reserve * US_PER_S // tick_us
            losers = offers
        for amount, j, _key, _ in losers:
            out.charges[j] = out.charges.get(j, 0) + amount
            paid += amount
            out.events.append(AllocEvent(book.ids[j], name, "outbid", amount, price))
        out.revenue[name] = paid
    return out
