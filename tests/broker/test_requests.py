"""The broker's RPC arguments (broker/requests.py): items and term checked, each
malformed shape refused, and the request digest the payment's memo names."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.broker.policy import MAX_ITEMS, BrokerError, Item
from p2pmarket.broker.requests import (
    MAX_COUNT,
    MEMO_PREFIX,
    items_wire,
    memo_for,
    parse_items,
    parse_request,
    parse_term,
    request_args,
    request_digest,
)
from p2pmarket.sharp.claims import Term

SITE = b"\x01" * 32
SITE2 = b"\x02" * 32
BUYER = b"\x0b" * 32
TERM = Term(1_000, 2_000)


def doc(**changes: Any) -> dict[str, Any]:
    return {"site": SITE, "type": "cpu", "count": 4, **changes}


def test_parse_items_accepts_a_valid_list() -> None:
    got = parse_items([doc(), doc(site=SITE2, type="memory", count=MAX_COUNT),
                       doc(type="t" * 32, count=1)])
    assert got == [Item(SITE, "cpu", 4), Item(SITE2, "memory", MAX_COUNT),
                   Item(SITE, "t" * 32, 1)]
    assert parse_items([doc()] * MAX_ITEMS) == [Item(SITE, "cpu", 4)] * MAX_ITEMS


BAD_LISTS: list[object] = [
    None, "items", doc(), (doc(),), [], [doc()] * (MAX_ITEMS + 1),
]


@pytest.mark.parametrize("value", BAD_LISTS,
                         ids=["none", "str", "dict", "tuple", "empty", "too_many"])
def test_parse_items_refuses_a_bad_list(value: object) -> None:
    with pytest.raises(BrokerError) as exc:
        parse_items(value)
    assert exc.value.value == "items"


BAD_ITEMS: dict[str, object] = {
    "not_a_dict": [SITE, "cpu", 4],
    "extra_key": {**doc(), "ident": None},
    "missing_key": {"site": SITE, "type": "cpu"},
    "site_str": doc(site=SITE.hex()),
    "site_31": doc(site=b"\x01" * 31),
    "site_33": doc(site=b"\x01" * 33),
    "type_empty": doc(type=""),
    "type_too_long": doc(type="t" * 33),
    "type_not_str": doc(type=5),
    "type_bytes": doc(type=b"cpu"),
    "count_zero": doc(count=0),
    "count_negative": doc(count=-1),
    "count_bool": doc(count=True),
    "count_float": doc(count=4.0),
    "count_too_big": doc(count=MAX_COUNT + 1),
    "count_str": doc(count="4"),
}


@pytest.mark.parametrize("bad", list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_parse_items_refuses_each_malformed_item(bad: object) -> None:
    for value in ([bad], [doc(), bad], [bad, doc()]):
        with pytest.raises(BrokerError) as exc:
            parse_items(value)
        assert exc.value.value == "items"


def test_parse_term() -> None:
    assert parse_term({"start": 0, "end": 1}) == Term(0, 1)
    assert parse_term({"start": 5, "end": 9, "items": []}) == Term(5, 9)


@pytest.mark.parametrize("args", [
    {"start": 2, "end": 2}, {"start": 3, "end": 2}, {"start": -1, "end": 2},
    {"start": "1", "end": 2}, {"start": 1, "end": 2.0}, {"start": 1.0, "end": 2},
    {"start": False, "end": 2}, {"start": 0, "end": True}, {"end": 2}, {"start": 1}, {},
    {"start": 1, "end": None},
], ids=lambda a: repr(a))
def test_parse_term_refuses_a_bad_term(args: dict[str, Any]) -> None:
    with pytest.raises(BrokerError) as exc:
        parse_term(args)
    assert exc.value.value == "term"


def test_request_args_round_trip_through_parse_request() -> None:
    items = [Item(SITE, "cpu", 4), Item(SITE2, "memory", 1024)]
    args = request_args(items, TERM)
    assert args == {"items": [{"site": SITE, "type": "cpu", "count": 4},
                              {"site": SITE2, "type": "memory", "count": 1024}],
                    "start": 1_000, "end": 2_000}
    assert args["items"] == items_wire(items)
    assert parse_request(args) == (items, TERM)
    with pytest.raises(BrokerError) as exc:
        parse_request({**args, "items": []})
    assert exc.value.value == "items"
    with pytest.raises(BrokerError) as exc:
        parse_request({**args, "end": 1_000})
    assert exc.value.value == "term"


def test_request_digest_names_buyer_items_and_term() -> None:
    items = [Item(SITE, "cpu", 4), Item(SITE2, "memory", 1024)]
    d = request_digest(BUYER, items, TERM)
    assert len(d) == 16
    assert request_digest(BUYER, list(items), Term(1_000, 2_000)) == d   # deterministic
    variants = [
        request_digest(b"\x0c" * 32, items, TERM),
        request_digest(BUYER, items[:1], TERM),
        request_digest(BUYER, items[::-1], TERM),
        request_digest(BUYER, [Item(SITE, "cpu", 5), items[1]], TERM),
        request_digest(BUYER, [Item(SITE2, "cpu", 4), items[1]], TERM),
        request_digest(BUYER, [Item(SITE, "disk", 4), items[1]], TERM),
        request_digest(BUYER, items, Term(1_000, 2_001)),
        request_digest(BUYER, items, Term(999, 2_000)),
    ]
    assert d not in variants
    assert len(set(variants)) == len(variants)


def test_memo_for_prefixes_the_hex_digest() -> None:
    d = bytes(range(16))
    assert MEMO_PREFIX == "ticket:"
    assert memo_for(d) == "ticket:000102030405060708090a0b0c0d0e0f"
    memo = memo_for(request_digest(BUYER, [Item(SITE, "cpu", 1)], TERM))
    assert memo.startswith(MEMO_PREFIX) and len(memo) == len(MEMO_PREFIX) + 32
    assert bytes.fromhex(memo[len(MEMO_PREFIX):]) == request_digest(
        BUYER, [Item(SITE, "cpu", 1)], TERM)
