"""The buyer's rule for a host's quote, pure (docs/design.md section 8).

A buyer pays a host only on a fresh quote (:mod:`p2pmarket.auction.quote`) that
verifies against the key in the host's DHT record and that :func:`judge_quote`
accepts:

- it answers this request: it names the host of the record, this buyer as holder,
  the buyer's nonce, the digest of the bids asked about, the interval and the
  amount asked about (a quote made for another buyer, or an earlier one, fails);
- it is fresh: signed at most :data:`SKEW_US` ahead of the buyer's clock, valid for
  at most :data:`MAX_VALIDITY_US`, and still valid for :data:`MIN_LEFT_US`;
- it quotes every resource type bought, each with a plausible capacity
  (:mod:`p2pmarket.core.limits`) and a price of at least 1;
- it is the offer the record made: no quoted price above :data:`PRICE_SLACK` times
  the advertised one, no quoted capacity below the advertised one divided by
  :data:`CAPACITY_SLACK`. A host advertises its price again when it moves by 10 %,
  so an honest host is well inside; one that ranks first with a low advertised
  price and then quotes a high one, or advertises capacity it does not have, is
  skipped before any money moves.

The plan then uses the quoted figures (:func:`planning_view`): the quoted price, and
the quoted capacity but no more than the advertised one (a host cannot draw a larger
share of the budget with a capacity it did not advertise).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pmarket.auction.quote import Offered, Quote
from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.limits import capacity_problem
from p2pmarket.dht.records import HostRecord

PRICE_SLACK = 2
"""A quoted price above this many times the advertised price is refused."""
CAPACITY_SLACK = 2
"""A quoted capacity below the advertised capacity divided by this is refused."""
MAX_VALIDITY_US = 5 * 60 * US_PER_S
SKEW_US = 60 * US_PER_S
MIN_LEFT_US = 2 * US_PER_S


class QuoteRefused(P2PMarketError):
    """A quote the buyer does not pay on; ``value`` is a short reason code."""


@dataclass(frozen=True)
class Asked:
    """What the buyer asked a host to quote."""

    holder: bytes          # the buyer's public key
    nonce: bytes
    bids: bytes            # digest of the bids (auction.quote.bids_digest)
    interval_s: int
    amount: int | None
    types: tuple[str, ...]


def judge_quote(quote: Quote, asked: Asked, record: HostRecord, now: int) -> None:
    """Raise :class:`QuoteRefused` unless the buyer may pay on ``quote`` (already
    verified against ``record``'s key) at ``now``."""
    if quote.host_id != record.node_id:
        raise QuoteRefused("the quote names another host", "wrong_host")
    if quote.holder != asked.holder or quote.nonce != asked.nonce:
        raise QuoteRefused("the quote answers another request (replayed?)", "not_ours")
    if (quote.bids, quote.interval_s, quote.amount) != (asked.bids, asked.interval_s,
                                                        asked.amount):
        raise QuoteRefused("the quote is for other terms than asked", "other_terms")
    if quote.signed_at > now + SKEW_US:
        raise QuoteRefused("the quote is signed in the future", "future")
    if quote.expires - quote.signed_at > MAX_VALIDITY_US:
        raise QuoteRefused("the quote claims to be valid for too long", "too_long")
    if quote.expires < now + MIN_LEFT_US:
        raise QuoteRefused("the quote has expired", "expired")
    for rtype in asked.types:
        got = quote.resources.get(rtype)
        ad = record.resources.get(rtype)
        if got is None or ad is None:
            raise QuoteRefused(f"the host does not quote {rtype}", "not_offered")
        problem = capacity_problem(rtype, got.capacity)
        if problem is not None or got.capacity == 0 or got.price < 1:
            raise QuoteRefused(f"the quote for {rtype} is implausible", "implausible")
        if got.price > PRICE_SLACK * ad.price:
            raise QuoteRefused(
                f"the host quotes {got.price} µcredits/s for {rtype}, more than "
                f"{PRICE_SLACK} times the {ad.price} it advertises", "price")
        if got.capacity * CAPACITY_SLACK < ad.capacity:
            raise QuoteRefused(
                f"the host quotes {got.capacity} of {rtype}, less than 1/{CAPACITY_SLACK} "
                f"of the {ad.capacity} it advertises", "capacity")


def planning_view(quote: Quote, record: HostRecord, rtype: str) -> Offered:
    """The figures the plan uses for ``rtype``: the quoted price, and the quoted
    capacity capped at the advertised one."""
    got = quote.resources[rtype]
    ad = record.resources[rtype]
    return Offered(min(got.capacity, ad.capacity), got.price, got.free)


__all__ = ["CAPACITY_SLACK", "MAX_VALIDITY_US", "MIN_LEFT_US", "PRICE_SLACK", "SKEW_US",
           "Asked", "QuoteRefused", "judge_quote", "planning_view"]
