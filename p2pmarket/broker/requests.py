"""The broker's peer RPC arguments, checked (pure): ``broker.quote``, ``broker.buy`` and
``broker.replace`` (docs/design.md section 10).

A purchase request is ``{items: [{site: key, type: str, count: int}, ...], start, end}``
(µs); ``broker.buy`` adds ``payment`` (a certified SEND to the broker, wire form).
The payment's memo must be :func:`memo_for` the request's digest, which names the
buyer (the RPC's signer, who becomes the tickets' holder), the items and the term: a
payment made for one purchase cannot buy another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from p2pmarket.broker.policy import MAX_ITEMS, BrokerError, Item
from p2pmarket.core.wire import pack
from p2pmarket.sharp.claims import Term, TicketError

MEMO_PREFIX = "ticket:"
MAX_COUNT = 1 << 62


def parse_items(value: object) -> list[Item]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ITEMS:
        raise BrokerError(f"items must be a list of 1..{MAX_ITEMS}", "items")
    items = []
    for doc in value:
        if not isinstance(doc, dict) or set(doc) != {"site", "type", "count"}:
            raise BrokerError("an item is {site, type, count}", "items")
        site, rtype, count = doc["site"], doc["type"], doc["count"]
        if not isinstance(site, bytes) or len(site) != 32:
            raise BrokerError("an item's site is a 32-byte key", "items")
        if not isinstance(rtype, str) or not 1 <= len(rtype) <= 32:
            raise BrokerError("an item's type is a resource type name", "items")
        if not isinstance(count, int) or isinstance(count, bool) \
                or not 1 <= count <= MAX_COUNT:
            raise BrokerError("an item's count is a positive integer", "items")
        items.append(Item(site, rtype, count))
    return items


def parse_term(args: Mapping[str, Any]) -> Term:
    try:
        return Term(args.get("start"), args.get("end"))  # type: ignore[arg-type]
    except TicketError:
        raise BrokerError("start and end are µs with start < end", "term") from None


def parse_request(args: Mapping[str, Any]) -> tuple[list[Item], Term]:
    return parse_items(args.get("items")), parse_term(args)


def items_wire(items: Sequence[Item]) -> list[dict[str, Any]]:
    return [{"site": i.site, "type": i.rtype, "count": i.count} for i in items]


def request_digest(buyer: bytes, items: Sequence[Item], term: Term) -> bytes:
    return hashlib.sha256(pack({"buyer": buyer, "items": items_wire(items),
                                "term": [term.start, term.end]})).digest()[:16]


def memo_for(digest: bytes) -> str:
    return MEMO_PREFIX + digest.hex()


def request_args(items: Sequence[Item], term: Term) -> dict[str, Any]:
    return {"items": items_wire(items), "start": term.start, "end": term.end}


__all__ = ["MEMO_PREFIX", "items_wire", "memo_for", "parse_items", "parse_request",
           "parse_term", "request_args", "request_digest"]
