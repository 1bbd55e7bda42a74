"""The auctioneer's state as a plain map and as one digest (docs/design.md section 5).

- :func:`snapshot` gives the state as a plain map: the body of the ``in.genesis``
  entry that starts every host log, and the starting point of a proof of
  non-conformance. :func:`from_snapshot` reads it back, checking the payment,
  refund and refund-paid records against their hash chains. A snapshot of another
  version is refused with an error naming both versions (version 5: SHARP
  reservations; 4 was the event-driven allocator's; older logs do not replay).
- :func:`state_digest` is SHA-256 over the settings, the tick count, the accounts (see
  :func:`accounts_digest`), the disk usage, three running hashes (payments, refunds
  and refunds paid are append-only, so each is a hash chain: ``h' = H(h ||
  pack(record))``; a paid record is ``[refund id, SEND entry hash]``) and the digest
  of the request record, and the SHARP state (:func:`sharp_digest`: the claim tree,
  the anchors issued, the reservations; version 5). ``out.tick`` and ``out.settings`` entries
  carry it: the host commits to its whole state there.

A snapshot may leave the payment records, or the refund and refund-paid records,
out (``None``) when a proof does not need them; the digest still covers them
through the chains. Pure.
"""

from __future__ import annotations

import hashlib
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Account, Refund
from p2pmarket.auction.allocation import book_of, host_sum
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import (
    SNAPSHOT_VERSION,
    ZERO,
    HostState,
    Reservation,
    plain_digest,
    refund_row,
)
from p2pmarket.auction.resources import BidTerm
from p2pmarket.auction.seen import from_rows, to_rows
from p2pmarket.core.wire import pack_plain as _p
from p2pmarket.sharp.claims import Claim, TicketError
from p2pmarket.sharp.tree import ClaimTree


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def account_row(a: Account, leased: bytes | None) -> list[Any]:
    return [a.account_id, a.holder, a.fund, a.contingency, a.contingency_ppm,
            a.interval_end_us, a.created_us, a.state,
            [[k, a.bids[k].to_wire()] for k in sorted(a.bids)], a.since, a.spend,
            sorted(a.topups.items()), a.split_total, leased or b""]


def _core(state: HostState, accounts_hash: bytes) -> list[Any]:
    return [SNAPSHOT_VERSION, state.host_id, _config_rows(state.config), state.tick_us,
            state.long_us, state.last_tick, state.ticks,
            [[k, u, f] for k, (u, f) in sorted(state.usage.items())], accounts_hash,
            state.payments_hash, state.refunds_hash, state.paid_hash,
            plain_digest(to_rows(state.requests)), sharp_digest(state)]


def _config_rows(config: HostConfig) -> list[Any]:
    return [[[k, v] for k, v in sorted(d.items())]
            for d in (config.capacities, config.min_prices, config.unique,
                      config.reservable, config.anchor_prices)]


def sharp_digest(state: HostState) -> bytes:
    """SHA-256 of the SHARP state (section 10): the claim tree's digest, the anchors
    issued (their claim ids: a claim id is the digest of its body) and the
    reservations' rows."""
    return plain_digest([state.claims.digest(), sorted(state.anchors),
                         [state.reservations[a].row() for a in sorted(state.reservations)]])


def sharp_doc(state: HostState) -> dict[str, Any]:
    """The SHARP state as a plain map (the snapshot's, and the host store's)."""
    return {"claims": state.claims.to_doc(),
            "anchors": [state.anchors[c].body() for c in sorted(state.anchors)],
            "reservations": [state.reservations[a].row() for a in sorted(state.reservations)]}


def from_sharp_doc(doc: Any) -> dict[str, Any]:
    """The HostState fields of :func:`sharp_doc`'s map (raises TicketError, HostError or
    a lookup error if malformed)."""
    anchors = [Claim.from_body(b) for b in doc["anchors"]]
    reservations = [Reservation.from_row(r) for r in doc["reservations"]]
    return {"claims": ClaimTree.from_doc(doc["claims"]),
            "anchors": {c.claim_id: c for c in anchors},
            "reservations": {r.account_id: r for r in reservations}}


def accounts_digest(state: HostState) -> bytes:
    """SHA-256 of ``[book digest, host sum]``: the event-driven allocator's digest of
    every account's record (money as of ``since``, interval end, resolved bids, spend,
    top-ups; :meth:`~p2pmarket.auction.livebook.LiveBook.digest`, which covers the tick
    count too) and the sum mod 2^256 of the SHA-256 of each account's host row
    (:func:`~p2pmarket.auction.allocation.host_row`: holder, created, contingency
    ratio, state, bid terms, lease terms digest). Both are multiset hashes kept up to
    date account by account, so a tick or an event costs what it changed."""
    book = book_of(state)
    return _h(_p([book.digest(), host_sum(state).to_bytes(32, "big")]))


def state_digest(state: HostState) -> bytes:
    """SHA-256 committing to the whole state (see the module docstring)."""
    return _h(_p(_core(state, accounts_digest(state))))


def snapshot(state: HostState, payments: bool = True, refunds: bool = True
             ) -> dict[str, Any]:
    """The state as a plain map; ``payments``/``refunds`` False leaves those records
    out (``refunds`` the refunds paid too; their chain hashes stay)."""
    return {
        "v": SNAPSHOT_VERSION, "host_id": state.host_id, "config": state.config.to_doc(),
        "tick_us": state.tick_us, "long_us": state.long_us, "last_tick": state.last_tick,
        "ticks": state.ticks,
        "usage": [[k, u, f] for k, (u, f) in sorted(state.usage.items())],
        "accounts": [account_row(state.accounts[aid], state.leased.get(aid))
                     for aid in sorted(state.accounts)],
        "payments": None if not payments or state.payments is None else
        [[pid, aid, amount] for pid, (aid, amount) in state.payments.items()],
        "payments_hash": state.payments_hash,
        "refunds": None if not refunds or state.refunds is None else
        [refund_row(r) for r in state.refunds.values()],
        "refunds_hash": state.refunds_hash,
        "paid": None if not refunds or state.paid is None else
        [[rid, pid] for rid, pid in state.paid.items()],
        "paid_hash": state.paid_hash,
        "requests": to_rows(state.requests),
        "sharp": sharp_doc(state),
    }


def from_snapshot(doc: Any) -> HostState:
    """A state from :func:`snapshot`'s map; raises :class:`HostError` if malformed or if
    the payment or refund records do not match their hashes."""
    try:
        return _from_snapshot(doc)
    except HostError:
        raise
    except TicketError as exc:
        raise HostError(f"malformed state snapshot: {exc.message}", exc.value) from None
    except (KeyError, TypeError, ValueError, AssertionError, AttributeError) as exc:
        raise HostError("malformed state snapshot", type(exc).__name__) from None


def _from_snapshot(doc: Any) -> HostState:
    if not isinstance(doc, dict) or not isinstance(doc.get("v"), int):
        raise HostError("not a state snapshot", "snapshot")
    if doc["v"] != SNAPSHOT_VERSION:
        raise HostError(f"a state snapshot of version {doc['v']}; this version reads only "
                        f"version {SNAPSHOT_VERSION} (older logs do not replay)",
                        {"version": doc["v"], "expected": SNAPSHOT_VERSION})
    config = HostConfig.from_doc(doc["config"])
    accounts: dict[str, Account] = {}
    leased: dict[str, bytes] = {}
    for row in doc["accounts"]:
        (aid, holder, fund, cont, cppm, end, created, st, bids, since, spend, topups, split,
         lease) = row
        accounts[str(aid)] = Account(
            account_id=str(aid), holder=bytes(holder), fund=int(fund),
            interval_end_us=int(end), created_us=int(created),
            bids={str(k): BidTerm.from_wire(str(k), v) for k, v in bids},
            contingency=int(cont), contingency_ppm=int(cppm), state=str(st),
            since=int(since), spend=int(spend), topups={str(k): int(v) for k, v in topups},
            split_total=int(split))
        if lease:
            leased[str(aid)] = bytes(lease)
    payments: dict[bytes, tuple[str, int]] | None = None
    if doc["payments"] is not None:
        payments, chain = {}, ZERO
        for pid, aid, amount in doc["payments"]:
            payments[bytes(pid)] = (str(aid), int(amount))
            chain = _h(chain + _p([bytes(pid), str(aid), int(amount)]))
        if chain != doc["payments_hash"]:
            raise HostError("snapshot payments do not match their hash", "payments")
    refunds: dict[str, Refund] | None = None
    if doc["refunds"] is not None:
        refunds, chain = {}, ZERO
        for rid, aid, holder, amount, memo, created in doc["refunds"]:
            r = Refund(str(rid), str(aid), bytes(holder), int(amount), str(memo),
                       created_us=int(created))
            refunds[r.refund_id] = r
            chain = _h(chain + _p(refund_row(r)))
        if chain != doc["refunds_hash"]:
            raise HostError("snapshot refunds do not match their hash", "refunds")
    paid: dict[str, bytes] | None = None
    if doc["paid"] is not None:
        paid, chain = {}, ZERO
        for rid, pid in doc["paid"]:
            paid[str(rid)] = bytes(pid)
            chain = _h(chain + _p([str(rid), bytes(pid)]))
        if chain != doc["paid_hash"]:
            raise HostError("snapshot refunds paid do not match their hash", "paid")
    return HostState(
        host_id=bytes(doc["host_id"]), config=config, tick_us=int(doc["tick_us"]),
        long_us=int(doc["long_us"]), accounts=accounts, leased=leased, payments=payments,
        payments_hash=bytes(doc["payments_hash"]), refunds=refunds,
        refunds_hash=bytes(doc["refunds_hash"]), paid=paid,
        paid_hash=bytes(doc["paid_hash"]),
        usage={str(k): (int(u), int(f)) for k, u, f in doc["usage"]},
        last_tick=int(doc["last_tick"]), ticks=int(doc["ticks"]),
        requests=from_rows(doc["requests"]), **from_sharp_doc(doc["sharp"]))


__all__ = ["account_row", "accounts_digest", "from_sharp_doc", "from_snapshot", "sharp_digest",
           "sharp_doc", "snapshot", "state_digest"]
