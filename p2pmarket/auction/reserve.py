"""SHARP on the host, pure (docs/design.md section 10): redemptions, anchors and how
reservations share the host with the auction.

- ``redeem {tickets}`` (a buyer's input, :func:`redeem`): a bundle of tickets of this
  site, held by the caller, one per resource, with one term, is redeemed first come
  first served in the state's claim tree (:func:`p2pmarket.sharp.tree.redeem`, the
  site letting reservations hold ``config.reservable``). It opens the reservation's
  account (id derived from the final claim ids; no money, no bids; its interval ends
  with the term). A conflict is refused with the proof naming the agent in
  ``error_value`` (``proof``, ``agent``).
- ``buy_anchor {payment, rset, term}`` (a buyer's input, :func:`buy_anchor`): an anchor
  to the caller at ``config.anchor_prices`` (micro-credits per unit-hour, rounded
  up); the payment must be exactly the price and is recorded as used (the payments
  table: ``anchor-<claim id>``).
- ``in.delegate {site, holder, rset, term, serial}`` (the owner's, :func:`delegate`): an
  anchor by the owner's policy, free.
- Anchors are never issued beyond ``config.reservable`` at any time of their term:
  the site does not oversubscribe itself. The step returns the anchor's body; the
  auctioneer signs it (Ed25519 is deterministic: a retry gets the same ticket).
- :func:`boundaries` (at every tick, and at a redemption): a reservation whose term
  started becomes active, one whose term ended goes; then the book is rebuilt with the
  new capacities (every account put again, as for a settings change: what an active
  reservation holds is not shared by the auction), and an ended reservation's account
  without money or bids is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Account
from p2pmarket.auction.allocation import book_of, owning, rebooked, with_accounts
from p2pmarket.auction.hostconfig import RESERVABLE
from p2pmarket.auction.machine import HostState, Reservation
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.rpcargs import BuyAnchorArgs, RedeemArgs
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, node_id_of
from p2pmarket.core.wire import digest
from p2pmarket.sharp.claims import Claim, Rset, Term, TicketError
from p2pmarket.sharp.tree import Rejected, peak
from p2pmarket.sharp.tree import redeem as redeem_tickets

HOUR_US = 3_600_000_000
MAX_TERM_US = 366 * 24 * HOUR_US
ANCHOR_PREFIX = "anchor-"


def reservation_id(final_ids: list[bytes]) -> str:
    """The account a bundle of tickets opens: derived from its final claims."""
    return digest(b"reservation" + b"".join(sorted(final_ids)))[:8].hex()


def _site(state: HostState, key: Any) -> bytes:
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE \
            or node_id_of(key) != state.host_id:
        raise HostError("the site key is not this host's", "site")
    return key


# -- redemption ----------------------------------------------------------------------

def redeem(state: HostState, args: RedeemArgs, sender: bytes, now: int
           ) -> tuple[HostState, dict[str, Any], list[AllocEvent]]:
    """The state after redeeming ``args.tickets`` for the caller, the result and the
    allocator's events; raises :class:`HostError` (nothing changed) otherwise."""
    tickets = args.tickets
    for k, t in enumerate(tickets):
        if node_id_of(t.site) != state.host_id:
            raise HostError(f"ticket {k} is not of this site", {"rule": "site", "ticket": k})
        if t.holder != sender:
            raise HostError(f"ticket {k} is not held by the caller",
                            {"rule": "holder", "ticket": k})
        if t.rset.ident is not None or t.rset.rtype not in RESERVABLE:
            raise HostError(f"ticket {k}: this host reserves {', '.join(RESERVABLE)} only",
                            {"rule": "resource", "ticket": k})
    if len({t.term for t in tickets}) != 1:
        raise HostError("the tickets of a bundle have one term", {"rule": "term"})
    if len({t.rset.rtype for t in tickets}) != len(tickets):
        raise HostError("a bundle has one ticket per resource", {"rule": "bundle"})
    term = tickets[0].term
    aid = reservation_id([t.final.claim_id for t in tickets])
    held = state.reservations.get(aid)
    if held is not None and held.holder == sender:   # a retry: answer it again
        return state, _result(held), []
    got = redeem_tickets(state.claims, tickets, tickets[0].site, state.config.reservable, now)
    if isinstance(got, Rejected):
        value = dict(got.value)
        if got.proof is not None:
            value["proof"] = got.proof
        raise HostError(got.error, value)
    if aid in state.accounts:
        raise HostError("account id collision", aid)
    amounts = {t.rset.rtype: t.rset.count for t in tickets}
    account = Account(account_id=aid, holder=sender, fund=0, contingency=0,
                      contingency_ppm=0, interval_end_us=term.end, created_us=now, bids={},
                      since=state.ticks)
    book = book_of(state)
    events = book.put(aid, 0, 0, term.end, {}, now)
    moved = with_accounts(owning(state, book), {aid: account})
    res = Reservation(aid, sender, term.start, term.end, amounts,
                      tuple(t.final.claim_id for t in tickets))
    moved = replace(moved, claims=got.tree, reservations={**moved.reservations, aid: res})
    after, more = boundaries(moved, now)
    return after, _result(after.reservations.get(aid, res)), events + more


def _result(r: Reservation) -> dict[str, Any]:
    return {"account_id": r.account_id,
            "reservation": {"start": r.start, "end": r.end,
                            "resources": dict(sorted(r.amounts.items()))}}


def boundaries(state: HostState, now: int) -> tuple[HostState, list[AllocEvent]]:
    """Reservations started or ended by ``now`` (module docstring); the allocator's
    events of the rebuilt book."""
    kept: dict[str, Reservation] = {}
    ended: list[str] = []
    for aid, r in state.reservations.items():
        if r.end <= now:
            ended.append(aid)
        else:
            kept[aid] = replace(r, active=r.start <= now)
    if not ended and all(kept[a].active == r.active for a, r in state.reservations.items()):
        return state, []
    moved = replace(state, reservations=kept, claims=state.claims.pruned(now))
    after, events = rebooked(state, moved, now)
    book = book_of(after)
    closed: dict[str, Account | None] = {}
    for aid in sorted(ended):
        a = after.accounts.get(aid)
        if a is not None and not a.bids and aid in book.accounts \
                and sum(book.money(aid)) == 0:
            book.remove(aid)
            closed[aid] = None
    return with_accounts(owning(after, book), closed), events


# -- anchors ---------------------------------------------------------------------------

def anchor_price(state: HostState, rset: Rset, term: Term) -> int:
    """What an anchor of ``rset`` for ``term`` costs (raises if it is not for sale)."""
    price = state.config.anchor_prices.get(rset.rtype, 0)
    if price <= 0 or rset.ident is not None:
        raise HostError(f"this host sells no anchors of {rset.key}",
                        {"anchor_prices": dict(state.config.anchor_prices)})
    return max(1, -(-rset.count * price * (term.end - term.start) // HOUR_US))


def _issue(state: HostState, claim: Claim, now: int) -> HostState:
    """``state`` with the anchor ``claim`` issued, if the anchors issued leave room for
    it at every time of its term (raises otherwise)."""
    r, term = claim.rset, claim.term
    if r.ident is not None or r.rtype not in RESERVABLE:
        raise HostError(f"anchors hold {', '.join(RESERVABLE)} only", r.key)
    if term.end <= now or term.end - max(term.start, now) > MAX_TERM_US:
        raise HostError("an anchor's term ends after now, within a year", [term.start, term.end])
    live = {cid: c for cid, c in state.anchors.items() if c.term.end > now}
    room = state.config.reservable.get(r.rtype, 0)
    total, at = peak([(c.term, c.rset.count) for c in live.values() if c.rset.rtype == r.rtype]
                     + [(term, r.count)], max(term.start, now), term.end)
    if total > room:
        raise HostError(f"the host lets reservations hold {room} of {r.rtype}; anchors would "
                        f"hold {total} at {at}", {"reservable": room, "asked": total, "at": at})
    return replace(state, anchors={**live, claim.claim_id: claim})


def buy_anchor(state: HostState, args: BuyAnchorArgs, sender: bytes,
               paid: tuple[bytes, int], site: Any, now: int) -> tuple[HostState, dict[str, Any]]:
    """An anchor to ``sender`` for its payment ``paid`` (id, amount); raises
    :class:`HostError` (the caller's step refunds a verified payment in full then)."""
    key = _site(state, site)
    payment_id, amount = paid
    used = state.payment_account(payment_id)
    if used is not None:
        cid = bytes.fromhex(used[len(ANCHOR_PREFIX):]) if used.startswith(ANCHOR_PREFIX) \
            else b""
        old = state.anchors.get(cid)
        if old is not None and old.holder == sender:   # a retry: answer it again
            return state, {"anchor": old.body(), "price": amount}
        raise HostError("payment already used for another account", "used")
    price = anchor_price(state, args.rset, args.term)
    if amount != price:
        raise HostError(f"this anchor costs {price} µcredits, the payment is {amount}",
                        {"price": price, "paid": amount})
    claim = Claim(key, sender, None, args.rset, args.term, payment_id[:16])
    after = _issue(state, claim, now)
    after = after.with_payment(payment_id, ANCHOR_PREFIX + claim.claim_id.hex(), amount)
    return after, {"anchor": claim.body(), "price": price}


def delegate(state: HostState, body: Mapping[str, Any], ts: int) -> Step:
    """``in.delegate``: an anchor by the owner's policy -> ``out.delegate {anchor}``."""
    try:
        if not isinstance(body, Mapping) or set(body) != {"site", "holder", "rset", "term",
                                                           "serial"}:
            raise HostError("in.delegate is {site, holder, rset, term, serial}", "shape")
        term = body["term"]
        if not isinstance(term, list) or len(term) != 2:
            raise HostError("term must be [start, end] in µs", "term")
        claim = Claim(_site(state, body["site"]), body["holder"], None,
                      Rset.from_doc(body["rset"]), Term(term[0], term[1]), body["serial"])
        if claim.claim_id in state.anchors:
            raise HostError("this anchor is already issued (give another serial)", "serial")
        after = _issue(state, claim, ts)
    except TicketError as exc:
        err = HostError(exc.message, exc.value)
        return Step(state, [("out.delegate", error_doc(err))], error=err)
    except HostError as exc:
        return Step(state, [("out.delegate", error_doc(exc))], error=exc)
    result = {"anchor": claim.body()}
    return Step(after, [("out.delegate", result)], result=result)


__all__ = ["ANCHOR_PREFIX", "anchor_price", "boundaries", "buy_anchor", "delegate", "redeem",
           "reservation_id"]
