"""The auctioneer's transitions, pure: ``step(state, kind, body, ts) -> Step``.

One logged input entry in, the new state and the output entries out. The
auctioneer runs every input through here and logs the input and its outputs
in one durable append; a witness replays the same inputs through the same code
and must get the same outputs byte for byte (docs/design.md section 5).

Inputs (``kind``: body; ``ts`` is the host's clock when it took the input):

- the host's own (:mod:`p2pmarket.auction.hoststeps`): ``in.settings`` ->
  ``out.settings``; ``in.usage`` -> no output; ``in.tick {now}`` (``now`` is the
  entry's ``ts``) -> ``out.tick``. A tick before
  :func:`~p2pmarket.auction.hoststeps.next_tick_at` is refused. ``in.refund_paid
  {refund_id, payment_id, payment}`` (the certified SEND that paid a refund) -> no
  output; the refund is marked paid. ``in.delegate {site, holder, rset, term, serial}``
  (the owner's anchor, :mod:`p2pmarket.auction.reserve`) -> ``out.delegate``.
- the buyers' (:mod:`p2pmarket.auction.buyersteps`): ``in.<rpc>`` for
  ``create_account``, ``bid``, ``fund``, ``refund``, ``lease``, ``redeem`` and
  ``buy_anchor`` (SHARP, :mod:`p2pmarket.auction.reserve`): ``{from, ts, args}``
  (caller key, request timestamp, arguments), plus for ``create_account``, ``fund``
  and ``buy_anchor`` the verified payment ``payment: {id, amount}`` or the reason it was
  refused ``payment_error: {error, error_value}`` -> zero or one ``out.lease`` (the
  lease terms, when they changed since the last lease handed out) then ``out.<rpc>``
  (the result, or ``{error, error_value}``; for the ``lease`` RPC the result entry
  is ``out.lease_reply``). The body also carries ``request``: the caller's signed
  request envelope in its wire form ``{v, kind, from, to, ts, body, sig}``;
  :func:`check_signed` (run by the replay, not by :func:`step`) requires its
  signature to verify, its ``from``/``ts`` to be the body's ``from``/``ts``, ``to``
  the host's node id, ``kind`` ``rpc.host.<rpc>`` and its ``body`` exactly ``args``:
  a host cannot invent a buyer's input. Every such input records ``(from, ts)`` in
  the state's request record, whatever its outcome; :func:`request_refusal` (run by
  the auctioneer before it takes a request, and by the replay) says whether a
  request repeats one already taken: a host cannot run a buyer's input twice either.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import RefundPaid
from p2pmarket.auction.buyersteps import rpc_step
from p2pmarket.auction.hoststeps import (
    SettingsChange,
    UsageReport,
    refund_paid,
    settings,
    tick,
    usage,
)
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.outcome import Step
from p2pmarket.auction.reserve import delegate
from p2pmarket.auction.seen import recorded, refusal
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.wire import Envelope, WireError, pack

RPCS = ("create_account", "bid", "fund", "refund", "lease", "redeem", "buy_anchor")
REFUND_PAID = "in.refund_paid"
DELEGATE = "in.delegate"
INPUTS = frozenset({"in.settings", "in.usage", "in.tick", REFUND_PAID, DELEGATE,
                    *(f"in.{n}" for n in RPCS)})
GENESIS = "in.genesis"
# logged but not replayed: read-only replies and I/O reports
INFO = frozenset({"out.status", "in.upload", "out.upload"})
REQUEST_PREFIX = "rpc.host."   # the auctioneer's RPCs are registered under "host"


def step(state: HostState, kind: str, body: Any, ts: int) -> Step:
    """Apply one input. Raises only for inputs no honest host logs (a wrong shape)."""
    if kind == "in.tick":
        return tick(state, body["now"])
    if kind == "in.settings":
        return settings(state, SettingsChange.from_body(body), ts)
    if kind == "in.usage":
        return usage(state, UsageReport.from_body(body))
    if kind == REFUND_PAID:
        return refund_paid(state, RefundPaid.from_body(body))
    if kind == DELEGATE:
        return delegate(state, body, ts)
    name = kind[3:]
    if name not in RPCS or not isinstance(body, dict):
        raise HostError("not an auctioneer input", kind)
    st = rpc_step(state, name, body, ts)
    sender, req_ts = body.get("from"), body.get("ts")
    if isinstance(sender, bytes) and isinstance(req_ts, int) and not isinstance(req_ts, bool):
        # taken, whatever its outcome: the host may not run it again (seen.py)
        st = replace(st, state=replace(st.state,
                                       requests=recorded(st.state.requests, sender, req_ts)))
    return st


def request_refusal(state: HostState, kind: str, body: Any, ts: int) -> str | None:
    """Why the buyer's input ``body`` of ``kind`` at ``ts`` repeats (or may repeat) a
    request already taken (None if it does not, or if ``kind`` is not a buyer's RPC).
    The auctioneer refuses such a request without logging it; in a log it is a fault."""
    if not kind.startswith("in.") or kind[3:] not in RPCS or not isinstance(body, dict):
        return None
    sender, req_ts = body.get("from"), body.get("ts")
    if not isinstance(sender, bytes) or not isinstance(req_ts, int):
        return None
    return refusal(state.requests, sender, req_ts, ts)


def check_signed(state: HostState, kind: str, body: Any, host_id: bytes | None = None
                 ) -> str | None:
    """Why the ``in.<rpc>`` input ``body`` is not a request its caller signed (None if
    it is, or if ``kind`` is not a buyer's RPC). ``host_id`` is the host's node id the
    request must be addressed to (default: the state's). Pure."""
    if not kind.startswith("in.") or kind[3:] not in RPCS:
        return None
    if not isinstance(body, dict) or body.get("request") is None:
        return "no signed request"
    try:
        env = Envelope.from_wire(body["request"])
        env.verify_signature(ENVELOPE)
    except WireError as exc:
        return f"the request is not validly signed ({exc.message})"
    if env.sender != body.get("from"):
        return "the request is signed by another key than the caller's"
    if env.ts != body.get("ts"):
        return "the request has another timestamp than the input"
    if env.to != (state.host_id if host_id is None else host_id):
        return "the request is addressed to another node"
    if env.kind != REQUEST_PREFIX + kind[3:]:
        return f"the request is {env.kind!r}, not {REQUEST_PREFIX + kind[3:]!r}"
    try:
        same = pack(body.get("args")) == pack(env.body)
    except WireError:
        same = False
    if not same:
        return "the arguments differ from the signed request"
    return None


__all__ = ["DELEGATE", "GENESIS", "INFO", "INPUTS", "REFUND_PAID", "REQUEST_PREFIX", "RPCS",
           "check_signed", "request_refusal", "step"]
