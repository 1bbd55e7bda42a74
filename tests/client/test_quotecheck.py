"""The buyer's rule for a host's quote (pure): what it pays on, and what it refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2pmarket.auction.quote import Offered, Quote
from p2pmarket.client.quotecheck import (
    MAX_VALIDITY_US,
    Asked,
    QuoteRefused,
    judge_quote,
    planning_view,
)
from p2pmarket.core.identity import Identity
from p2pmarket.dht.records import ResourceAd, make_host_record

S = 1_000_000
NOW = 1_700_000_000 * S
HOST = Identity(b"\x61" * 32)
BUYER = Identity(b"\x62" * 32)
RECORD = make_host_record(HOST, url="http://127.0.0.1:9", dht=("127.0.0.1", 9),
                          resources={"cpu": ResourceAd(4000, 5, 5),
                                     "memory": ResourceAd(4 << 20, 5, 5)},
                          availability_ppm=1_000_000, seq=1, now_us=NOW, ttl_us=3600 * S)
ASKED = Asked(BUYER.public_key, b"n" * 16, b"d" * 32, 3600, 5_000_000, ("cpu", "memory"))
GOOD = Quote(HOST.node_id, BUYER.public_key, b"n" * 16, b"d" * 32, 3600, 5_000_000,
             {"cpu": Offered(4000, 6, 3000), "memory": Offered(4 << 20, 5, 1 << 20)},
             expires=NOW + 30 * S, signed_at=NOW)


def refused(quote: Quote, asked: Asked = ASKED, now: int = NOW) -> str:
    with pytest.raises(QuoteRefused) as err:
        judge_quote(quote, asked, RECORD, now)
    return str(err.value.value)


def test_a_fresh_quote_of_the_advertised_offer_is_accepted() -> None:
    judge_quote(GOOD, ASKED, RECORD, NOW)
    judge_quote(GOOD, ASKED, RECORD, NOW + 27 * S)
    # within the slack: twice the advertised price, half its capacity
    judge_quote(replace(GOOD, resources={"cpu": Offered(2000, 10, 0),
                                         "memory": Offered(2 << 20, 10, 0)}),
                ASKED, RECORD, NOW)


def test_a_quote_far_above_the_advertised_price_is_refused() -> None:
    greedy = replace(GOOD, resources={**GOOD.resources, "cpu": Offered(4000, 500, 0)})
    assert refused(greedy) == "price"                 # 100 times the advertised 5
    assert refused(replace(GOOD, resources={**GOOD.resources,
                                            "memory": Offered(4 << 20, 11, 0)})) == "price"


def test_a_quote_far_below_the_advertised_capacity_is_refused() -> None:
    thin = replace(GOOD, resources={**GOOD.resources, "cpu": Offered(1999, 5, 0)})
    assert refused(thin) == "capacity"
    assert refused(replace(GOOD, resources={"cpu": GOOD.resources["cpu"]})) == "not_offered"
    absurd = replace(GOOD, resources={**GOOD.resources, "cpu": Offered(2**62, 5, 0)})
    assert refused(absurd) == "implausible"
    assert refused(replace(GOOD, resources={**GOOD.resources,
                                            "cpu": Offered(4000, 0, 0)})) == "implausible"


def test_a_quote_for_another_request_or_buyer_is_refused() -> None:
    other = Identity(b"\x63" * 32)
    assert refused(replace(GOOD, holder=other.public_key)) == "not_ours"
    assert refused(replace(GOOD, nonce=b"m" * 16)) == "not_ours"          # an older quote
    assert refused(replace(GOOD, host_id=other.node_id)) == "wrong_host"
    assert refused(replace(GOOD, amount=50_000_000)) == "other_terms"
    assert refused(replace(GOOD, bids=b"e" * 32)) == "other_terms"
    assert refused(replace(GOOD, interval_s=60)) == "other_terms"


def test_stale_future_and_overlong_quotes_are_refused() -> None:
    assert refused(GOOD, now=NOW + 29 * S) == "expired"    # less than 2 s left
    assert refused(GOOD, now=NOW + 31 * S) == "expired"
    assert refused(replace(GOOD, signed_at=NOW + 61 * S, expires=NOW + 90 * S)) == "future"
    assert refused(replace(GOOD, expires=NOW + MAX_VALIDITY_US + 1)) == "too_long"


def test_the_plan_uses_the_quoted_price_and_no_more_than_the_advertised_capacity() -> None:
    assert planning_view(GOOD, RECORD, "cpu") == Offered(4000, 6, 3000)
    bigger = replace(GOOD, resources={**GOOD.resources, "cpu": Offered(8000, 4, 8000)})
    assert planning_view(bigger, RECORD, "cpu") == Offered(4000, 4, 8000)
