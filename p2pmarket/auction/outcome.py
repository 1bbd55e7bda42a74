"""What one step of the pure auctioneer returns (:class:`Step`), and the error entry
body a refused input gets (:func:`error_doc`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Refund, RefundPaid
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.model import AllocEvent
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.wire import WireError, pack


@dataclass(frozen=True)
class Step:
    """The state after one input, and the output entries ``(kind, body)`` to log after
    it, in order; for the auctioneer's I/O also what the input did."""

    state: HostState
    outputs: list[tuple[str, Any]]
    result: dict[str, Any] | None = None        # the out.<rpc> body on success
    error: HostError | None = None
    tick: tuple[AllocEvent, ...] | None = None   # a tick's events
    events: tuple[AllocEvent, ...] = ()           # what the allocator did (any input)
    refunds: list[Refund] = field(default_factory=list)   # new refunds to pay
    paid: list[RefundPaid] = field(default_factory=list)  # refunds marked paid
    leases: list[str] = field(default_factory=list)        # account of each out.lease


def error_doc(exc: P2PMarketError) -> dict[str, Any]:
    """``{error, error_value}`` (a value msgpack cannot encode is given as its repr)."""
    value = exc.value
    try:
        pack(value)
    except WireError:
        value = repr(value)[:200]
    return {"error": exc.message, "error_value": value}


__all__ = ["Step", "error_doc"]
