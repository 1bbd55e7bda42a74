"""What a buyer makes of a host record's ``reach`` list (docs/design.md section 7). Pure.

A host record's ``reach`` carries registrars' attestations
(:mod:`p2pmarket.nat.attestation`) and, for a relayed host, its relay's reservation
voucher (:mod:`p2pmarket.nat.reservation`). The record is signed by the host, but each
entry is signed by someone else, so each is checked on its own: signature, that it
names this host's node id, and that it is current. Entries that fail are counted in
``refused`` and ignored.

- ``reach_class``: the class most of the valid attestations give (ties: the first
  given); None when there is none ("unattested").
- ``relayed_by``: the relay's URL when the record's URL is the relayed URL of a valid
  voucher for this host.
- ``reachable``: the record's URL is backed: a relayed URL with its voucher, or a
  direct URL some valid attestation verified by a callback to that very address; a
  record with no reach entries at all (a node with reachability checks off, or too few
  registrars yet) counts as reachable, as before attestations existed. A URL that the
  attestations do not back (a NAT'd host advertising its LAN address, or an expired
  voucher) is not: buyers skip such hosts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.urls import http_url
from p2pmarket.core.wire import unpack
from p2pmarket.dht.records import HostRecord
from p2pmarket.nat.attestation import ATTESTATION_KIND, Attestation, open_attestation
from p2pmarket.nat.reservation import open_reservation
from p2pmarket.nat.table import ReachClass


@dataclass(frozen=True)
class ReachView:
    reach_class: ReachClass | None
    registrars: int
    relayed_by: str | None
    reachable: bool
    refused: int

    @property
    def label(self) -> str:
        """For tables: ``public (3)``, ``nat via http://relay:7400``, ``unattested``."""
        name = self.reach_class.value if self.reach_class else "unattested"
        if self.relayed_by:
            name += f" via {self.relayed_by}"
        elif self.registrars:
            name += f" ({self.registrars})"
        return name if self.reachable else name + ", unreachable"


def reach_of(record: HostRecord, now: int) -> ReachView:
    """See the module docstring."""
    attestations: list[Attestation] = []
    relayed_by: str | None = None
    refused = 0
    for raw in record.reach:
        try:
            if _kind(raw) == ATTESTATION_KIND:
                attestations.append(open_attestation(raw, node_id=record.node_id, now=now))
            else:
                voucher = open_reservation(raw, node_id=record.node_id, now=now)
                if voucher.relayed_url == record.url:
                    relayed_by = voucher.url
        except P2PMarketError:
            refused += 1
    counts = Counter(a.reach_class for a in attestations)
    reach_class = max(counts, key=lambda c: counts[c]) if counts else None
    direct = any(a.verified and http_url(a.host, a.port) == record.url.rstrip("/")
                 for a in attestations)
    reachable = relayed_by is not None or direct or not record.reach
    return ReachView(reach_class, len(attestations), relayed_by, reachable, refused)


def _kind(raw: bytes) -> str | None:
    """The envelope kind of ``raw`` (not checked here: the opener checks everything)."""
    try:
        doc = unpack(raw, 1024)
    except P2PMarketError:
        return None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None
