"""Quotes, pure: what a host tells a buyer before any money moves (docs/design.md §6, §8).

A buyer asks ``quote {bids: BIDS, interval_s, nonce: bytes, amount?: int,
contingency?}`` (what it means to buy, as ``create_account`` will take it, and how
much it means to pay; ``nonce`` is 16 to 32 random bytes of the buyer's). The host
answers ``{quote: ENVELOPE}``: an envelope of kind ``quote``, version 1, signed by
the host, addressed (``to``) to the buyer's node id, ``ts`` the host's clock, body::

    {v: 1, host_id: bytes (node id), holder: bytes (the buyer's public key),
     nonce: bytes (the buyer's), bids: bytes (SHA-256 of the canonical bids asked
     about), interval_s: int, amount: int | None,
     resources: {type: {capacity, price, free}},   # each type the bids name
     expires: int (µs),
     clamped?: {bid key: int}}   # only when a bid's max is above the capacity

``clamped`` names each divisible bid whose max, resolved on this host, is above the
host's capacity, with the capacity it is clamped to (base units): the host says so
rather than clamping silently; the field is left out when nothing is clamped.

``capacity``, ``price`` and ``free`` are what the host advertises in the DHT
(:func:`offered`: the same figures, from the same state): capacity and free in base
units (identifiers for unique types), price in micro-credits per second for the
whole resource (the sum of every bid, the root account's included). A quote is
valid for :data:`QUOTE_TTL_US`.

Before it quotes, the host checks what ``create_account`` will check: that it offers
every resource bid on with these bids (the check it makes before it looks at a
payment), and, given an ``amount``, that an account opened with that much money
would get its bids' minimums at once. Either failure is the quote RPC's error, so
a buyer learns it before it pays; a ``create_account`` that fails either anyway,
after the payment, pays the whole payment back at once (a refund, certified, to the
payer: :mod:`p2pmarket.auction.buyersteps`), so money never sits in an account
without bids. The account ``create_account`` opens is named by
the payment (:func:`p2pmarket.auction.buyersteps.account_id_for`), which does not
exist yet, so a quote cannot name it: the buyer checks the account id it gets back
against its payment.

A quote changes nothing: it is not an input of the auction, so it is neither logged
nor replayed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Account
from p2pmarket.auction.allocation import book_of, refusal, resolved, terms
from p2pmarket.auction.livebook import Refused
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.resources import PPM, BidSpec, bids_from_wire
from p2pmarket.auction.rpcargs import check_args, interval_arg, ratio_arg
from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.domains import QUOTE
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, Identity, node_id_of
from p2pmarket.core.money import MAX_AMOUNT
from p2pmarket.core.wire import Envelope, WireError, open_signed, pack, seal

QUOTE_KIND = "quote"
QUOTE_VERSION = 1
QUOTE_TTL_US = 30 * US_PER_S
MIN_NONCE, MAX_NONCE = 16, 32
QUOTE_FIELDS = frozenset({"v", "host_id", "holder", "nonce", "bids", "interval_s", "amount",
                          "resources", "expires"})
DRY_RUN_ACCOUNT = "quote"   # not hex, so never a real account id


@dataclass(frozen=True)
class QuoteArgs:
    """``quote {bids, interval_s, nonce, amount?, contingency?}``."""

    bids: Mapping[str, BidSpec]
    bids_digest: bytes           # SHA-256 of the canonical encoding of the bids asked about
    interval_us: int
    nonce: bytes
    amount: int | None           # what the buyer means to pay (None: no dry run)
    contingency_ppm: int


def parse_quote_args(args: object) -> QuoteArgs:
    if not isinstance(args, dict):
        raise HostError("RPC arguments must be a map", type(args).__name__)
    check_args(args, {"bids", "interval_s", "nonce"}, {"amount", "contingency"})
    interval_us = interval_arg(args["interval_s"])
    nonce = args["nonce"]
    if not isinstance(nonce, bytes) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise HostError(f"nonce must be {MIN_NONCE} to {MAX_NONCE} bytes", type(nonce).__name__)
    amount = args.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)
                               or not 0 < amount <= MAX_AMOUNT):
        raise HostError("amount must be a positive integer (micro-credits)", repr(amount)[:40])
    bids = bids_from_wire(args["bids"])
    return QuoteArgs(bids, bids_digest(args["bids"]), interval_us, nonce, amount,
                     ratio_arg(args.get("contingency", 0)))


def bids_digest(wire_bids: Any) -> bytes:
    """SHA-256 of the canonical encoding of a bid map as sent (what a quote names)."""
    return hashlib.sha256(pack(wire_bids)).digest()


@dataclass(frozen=True)
class Offered:
    """One resource type as a host offers it: capacity, price (µcredits/s), free."""

    capacity: int
    price: int
    free: int

    def to_doc(self) -> dict[str, int]:
        return {"capacity": self.capacity, "price": self.price, "free": self.free}


def offered(state: HostState) -> dict[str, Offered]:
    """What the host offers, per resource type, now: what it advertises in the DHT and
    quotes (price: all bids per second, root included; free: what the root keeps).
    Unique types count identifiers and sum their prices (at least the lowest reserve)."""
    book = book_of(state)
    out = {res: Offered(cap, book.price(res) * US_PER_S // state.tick_us,
                        book.resources[res].free())
           for res, cap in sorted(state.capacities.items()) if res in book.resources}
    winners, prices = book.winners(), book.id_prices()
    for kind, ranges in sorted(book.unique.table.offered.items()):
        count = sum(hi - lo + 1 for lo, hi, _ in ranges)
        sold = sum(1 for k in winners if k.startswith(kind + ","))
        price = sum(p for k, p in prices.items() if k.startswith(kind + ","))
        reserve = min(r for _, _, r in ranges) * US_PER_S // state.tick_us
        out[kind] = Offered(count, max(price, reserve), count - sold)
    return out


@dataclass(frozen=True)
class Quote:
    host_id: bytes
    holder: bytes
    nonce: bytes
    bids: bytes
    interval_s: int
    amount: int | None
    resources: Mapping[str, Offered]
    expires: int
    signed_at: int = 0   # the envelope's ts; not part of the body
    clamped: Mapping[str, int] | None = None   # bid key -> the max this host applies

    def body(self) -> dict[str, Any]:
        body = {"v": QUOTE_VERSION, "host_id": self.host_id, "holder": self.holder,
                "nonce": self.nonce, "bids": self.bids, "interval_s": self.interval_s,
                "amount": self.amount,
                "resources": {t: o.to_doc() for t, o in sorted(self.resources.items())},
                "expires": self.expires}
        if self.clamped:
            body["clamped"] = dict(sorted(self.clamped.items()))
        return body

    @classmethod
    def from_body(cls, body: Any, signed_at: int = 0) -> Quote:
        """Check a quote body's shape (raises :class:`HostError`)."""
        if not isinstance(body, dict) or set(body) - {"clamped"} != QUOTE_FIELDS:
            raise HostError("quote body has the wrong fields")
        clamped = body.get("clamped")
        if clamped is not None and (not isinstance(clamped, dict) or len(clamped) > 64 or not all(
                isinstance(k, str) and _is_nat(v) for k, v in clamped.items())):
            raise HostError("quote clamped must be a map of bid to amount")
        if body["v"] != QUOTE_VERSION:
            raise HostError(f"quote version {body['v']!r:.20} is not {QUOTE_VERSION}",
                            "version")
        if not isinstance(body["host_id"], bytes) or len(body["host_id"]) != 20:
            raise HostError("quote host_id must be a 20-byte node id")
        if not isinstance(body["holder"], bytes) or len(body["holder"]) != PUBLIC_KEY_SIZE:
            raise HostError("quote holder must be a 32-byte public key")
        nonce, digest = body["nonce"], body["bids"]
        if not isinstance(nonce, bytes) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise HostError(f"quote nonce must be {MIN_NONCE} to {MAX_NONCE} bytes")
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise HostError("quote bids must be a 32-byte digest")
        amount = body["amount"]
        if amount is not None and not (_is_nat(amount) and amount > 0):
            raise HostError("quote amount must be a positive integer or null")
        if not _is_nat(body["interval_s"]) or not _is_nat(body["expires"]):
            raise HostError("quote interval_s and expires must be non-negative integers")
        resources = body["resources"]
        if not isinstance(resources, dict) or len(resources) > 64:
            raise HostError("quote resources must be a map")
        offers: dict[str, Offered] = {}
        for res, doc in resources.items():
            if (not isinstance(res, str) or not isinstance(doc, dict)
                    or set(doc) != {"capacity", "price", "free"}
                    or not all(_is_nat(v) for v in doc.values())):
                raise HostError("quote resource terms are malformed", str(res)[:40])
            offers[res] = Offered(doc["capacity"], doc["price"], doc["free"])
        return cls(body["host_id"], body["holder"], body["nonce"], body["bids"],
                   body["interval_s"], amount, offers, body["expires"], signed_at, clamped)


def _is_nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def make_quote(state: HostState, holder: bytes, args: QuoteArgs, now: int) -> Quote:
    """The quote for ``holder``'s ``args`` at ``now``; raises the :class:`HostError`
    ``create_account`` would answer. Changes nothing (a dry run in the state's book is
    taken back)."""
    bid_terms = terms(state, args.bids, {})   # what create_account checks before the payment
    if args.amount is not None:
        cont = args.amount * args.contingency_ppm // PPM
        trial = Account(account_id=DRY_RUN_ACCOUNT, holder=holder, fund=args.amount - cont,
                        contingency=cont, contingency_ppm=args.contingency_ppm,
                        interval_end_us=now + args.interval_us, created_us=now,
                        bids=bid_terms)
        book = book_of(state)
        try:
            book.put(DRY_RUN_ACCOUNT, trial.fund, cont, trial.interval_end_us,
                     resolved(state, trial), now, dry=True)
        except Refused as refused:
            exc = refusal(state, refused)
            raise HostError(f"{exc.message}; with {args.amount} µcredits the bids would all "
                            "be dropped (create_account would refund the payment)",
                            exc.value) from None
    caps = state.config.capacities
    clamped = {key: caps[key] for key, term in sorted(bid_terms.items())
               if args.bids[key].ident is None and term.max.resolve(caps[key]) > caps[key]}
    market = offered(state)
    types = sorted({key.split(",")[0] for key in args.bids})
    return Quote(host_id=state.host_id, holder=holder, nonce=args.nonce,
                 bids=args.bids_digest, interval_s=args.interval_us // US_PER_S,
                 amount=args.amount,
                 resources={t: market[t] for t in types if t in market},
                 expires=now + QUOTE_TTL_US, signed_at=now, clamped=clamped or None)


def sign_quote(identity: Identity, quote: Quote) -> Envelope:
    """Sign ``quote`` as the host ``identity``, addressed to its holder."""
    if quote.host_id != identity.node_id:
        raise HostError("a quote must name the signing host", quote.host_id.hex())
    return seal(identity, QUOTE, QUOTE_KIND, quote.body(), ts=quote.signed_at,
                to=node_id_of(quote.holder))


def verify_quote(data: object, host_key: bytes) -> Quote:
    """Check a quote (its bytes or wire map) offline against the host's public key; return
    its terms. Whether it is fresh and for whom is the buyer's to judge
    (:mod:`p2pmarket.client.quotecheck`)."""
    if not isinstance(data, bytes | bytearray | Mapping):
        raise HostError("no quote in the host's answer", type(data).__name__)
    try:
        env = open_signed(data, QUOTE)
    except WireError as exc:
        raise HostError(f"invalid quote: {exc.message}", exc.value) from None
    if env.kind != QUOTE_KIND:
        raise HostError("not a quote", env.kind)
    if env.sender != host_key:
        raise HostError("quote signed by another key than the host's", env.sender.hex())
    quote = Quote.from_body(env.body, signed_at=env.ts)
    if quote.host_id != node_id_of(host_key):
        raise HostError("quote host_id does not match the signing key")
    if env.to != node_id_of(quote.holder):
        raise HostError("quote addressed to another node than its holder")
    return quote


def quote_id(quote: Quote) -> str:
    """A short name for a quote (it goes in the payment's memo)."""
    return hashlib.sha256(pack([quote.host_id, quote.holder, quote.nonce,
                                quote.signed_at])).digest()[:16].hex()


__all__ = ["QUOTE_KIND", "QUOTE_TTL_US", "QUOTE_VERSION", "Offered", "Quote", "QuoteArgs",
           "bids_digest", "make_quote", "offered", "parse_quote_args", "quote_id",
           "sign_quote", "verify_quote"]
