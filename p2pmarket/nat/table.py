"""The registration decision table (docs/design.md section 7, seed note of 9/12/2007).

A registrar calls a node back at two addresses: the *external* one (the IP the
registration came from, with the port the node claims) and the *self-known* one (the
address the node claims). Each callback ends one of three ways (:class:`Callback`):
``ok`` (connected, and the answer is the node's signed echo of our nonce), ``failed``
(connected, but the answer is anything else) or ``none`` (no connection, or a
timeout). :func:`decide` maps the two outcomes to a :class:`Decision` (which address
to accept, the node's :class:`ReachClass`, and whether that address answered the
callback) or to None (reject)::

    external  self-known  two addresses                     one address (equal)
    ok        ok          external, forwarded, verified     external, public, verified
    ok        failed      external, forwarded, verified
    ok        none        external, forwarded, verified
    failed    ok          self, proxied, verified
    failed    failed      reject                            reject
    failed    none        self, nat, unverified
    none      ok          self, proxied, verified
    none      failed      reject
    none      none        self, proxied, unverified         self, proxied, unverified

When the two addresses are equal the registrar dials once and both outcomes are that
one outcome (the diagonal). :data:`ROWS` is the table for two different addresses, as
data. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal


class Callback(StrEnum):
    """How one callback ended."""

    OK = "ok"           # connected, hash verified
    FAILED = "failed"   # connected, hash failed: anything but the node's signed echo
    NONE = "none"       # no connection, or timeout


class ReachClass(StrEnum):
    """How a node can be reached, as a registrar found it."""

    PUBLIC = "public"         # at its own address
    FORWARDED = "forwarded"   # behind NAT, at the external address (a port forward)
    NAT = "nat"               # behind NAT, no way in
    PROXIED = "proxied"       # behind a proxy (reachable at its self-known address or not)


@dataclass(frozen=True)
class Decision:
    """An accepted registration: which address (``external`` or ``self``), the class,
    and whether the accepted address answered the callback (so it can be dialled)."""

    accept: Literal["external", "self"]
    reach_class: ReachClass
    verified: bool


_OK, _FAILED, _NONE = Callback.OK, Callback.FAILED, Callback.NONE

ROWS: Mapping[tuple[Callback, Callback], Decision | None] = MappingProxyType({
    (_OK, _OK): Decision("external", ReachClass.FORWARDED, True),
    (_OK, _FAILED): Decision("external", ReachClass.FORWARDED, True),
    (_OK, _NONE): Decision("external", ReachClass.FORWARDED, True),
    (_FAILED, _OK): Decision("self", ReachClass.PROXIED, True),      # "proxy?"
    (_FAILED, _FAILED): None,
    (_FAILED, _NONE): Decision("self", ReachClass.NAT, False),
    (_NONE, _OK): Decision("self", ReachClass.PROXIED, True),        # "proxy?"
    (_NONE, _FAILED): None,
    (_NONE, _NONE): Decision("self", ReachClass.PROXIED, False),
})
"""(external, self-known) -> decision, for two different addresses (the seed's order)."""


def decide(external: Callback, self_known: Callback, same_address: bool) -> Decision | None:
    """The decision for two callback outcomes; None = reject. With ``same_address`` the
    registrar dialled once, so the two outcomes must be equal."""
    external, self_known = Callback(external), Callback(self_known)
    if same_address:
        if external != self_known:
            raise ValueError("one address dialled once has one outcome")
        if external == _OK:   # the node is where it says it is
            return Decision("external", ReachClass.PUBLIC, True)
    return ROWS[(external, self_known)]


__all__ = ["ROWS", "Callback", "Decision", "ReachClass", "decide"]
