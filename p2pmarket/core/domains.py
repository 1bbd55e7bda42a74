"""Signature domains: one tag per purpose of a signature (docs/design.md section 2).

Every key in p2pmarket signs several kinds of things: a node's key signs its RPC
envelopes, its DHT records, its leases, its payment chain, its audit log and its
``ident`` answers. Without a domain, a signature made for one purpose could be
shown as one for another (issue 10: a host's payment-chain authenticator at seq s
passed, next to its audit authenticator at seq s, as proof of a forked audit log).
So nothing signs raw bytes: :meth:`p2pmarket.core.identity.Identity.sign` and
:func:`p2pmarket.core.identity.verify` take a :class:`Domain`, and the bytes Ed25519
signs are :func:`framed` ::

    PREFIX + tag + b"\\x00" + message       PREFIX = b"p2pmarket/sig/2\\x00"

A tag is 1..32 bytes of ``[a-z0-9.-]`` (no NUL), so the framing is unambiguous: a
signature for one domain never verifies for another, whatever the messages. The
``2`` in the prefix is the signature format (version 1 signed bare messages);
changing the framing again means a new prefix.

The domains (the module named is where each is signed and checked):

- :data:`ENVELOPE` ``envelope``: RPC requests, replies and upload authorizations,
  every signed envelope that is not a record or a lease (:mod:`p2pmarket.core.wire`).
- :data:`DHT_RECORD` ``dht.record``: host records and offer entries
  (:mod:`p2pmarket.dht.records`, :mod:`p2pmarket.dht.offers`).
- :data:`LEASE` ``lease``: a host's lease (:mod:`p2pmarket.auction.lease`).
- :data:`QUOTE` ``host.quote``: a host's quote to a buyer (:mod:`p2pmarket.auction.quote`).
- :data:`CHAIN_ENTRY` ``chain.entry``: an owner's authenticator of its payment chain
  entry (:mod:`p2pmarket.ledger.chain`).
- :data:`NOTARY_CERT` ``notary.cert``: a notary's certificate signature
  (:mod:`p2pmarket.ledger.certificate`).
- :data:`AUDIT_ENTRY` ``audit.entry``: a host's authenticator of its audit log entry
  (:mod:`p2pmarket.audit.entry`).
- :data:`DHT_IDENT` ``dht.ident``: the answer to the DHT's ``ident`` handshake
  (:mod:`p2pmarket.dht.contacts`).
- :data:`ATTESTATION` ``nat.attestation``: a registrar's reachability attestation
  (:mod:`p2pmarket.nat.attestation`, section 7).
- :data:`RESERVATION` ``nat.reservation``: a relay's reservation voucher for a host it
  relays (:mod:`p2pmarket.nat.reservation`, section 7).
- reserved, nothing signs it yet: :data:`TICKET` ``ticket`` (SHARP tickets).

Proofs of misbehaviour are not signed by whoever writes them; they carry the
accused host's own signatures, checked in the host's audit domain. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = b"p2pmarket/sig/2\x00"
SEPARATOR = b"\x00"
_TAG = re.compile(r"[a-z0-9.-]{1,32}")


@dataclass(frozen=True)
class Domain:
    """The purpose a signature is made for; see the module docstring."""

    tag: str

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not _TAG.fullmatch(self.tag):
            raise ValueError(f"bad signature domain tag {self.tag!r}")

    @property
    def head(self) -> bytes:
        """What every message signed in this domain is prefixed with."""
        return PREFIX + self.tag.encode() + SEPARATOR


def framed(domain: Domain, message: bytes) -> bytes:
    """The bytes Ed25519 signs for ``message`` in ``domain``."""
    if not isinstance(domain, Domain):
        raise TypeError(f"a signature needs a Domain, not {type(domain).__name__}")
    return domain.head + message


ENVELOPE = Domain("envelope")
DHT_RECORD = Domain("dht.record")
LEASE = Domain("lease")
QUOTE = Domain("host.quote")
CHAIN_ENTRY = Domain("chain.entry")
NOTARY_CERT = Domain("notary.cert")
AUDIT_ENTRY = Domain("audit.entry")
DHT_IDENT = Domain("dht.ident")
ATTESTATION = Domain("nat.attestation")
RESERVATION = Domain("nat.reservation")
TICKET = Domain("ticket")

ALL = (ENVELOPE, DHT_RECORD, LEASE, QUOTE, CHAIN_ENTRY, NOTARY_CERT, AUDIT_ENTRY, DHT_IDENT,
       ATTESTATION, RESERVATION, TICKET)
assert len({d.tag for d in ALL}) == len(ALL)

__all__ = ["ALL", "ATTESTATION", "AUDIT_ENTRY", "CHAIN_ENTRY", "DHT_IDENT", "DHT_RECORD",
           "ENVELOPE", "LEASE", "NOTARY_CERT", "PREFIX", "QUOTE", "RESERVATION", "TICKET",
           "Domain", "framed"]
