"""Collecting notary signatures into certificates, for a wallet.

- :class:`Tally`: the signatures the lanes return for a batch of entries, each
  one verified, kept until a quorum per entry; then a certificate or a refusal
  per entry (pure: it only checks signatures).
- :func:`merge_inboxes`: the SEND certificates a quorum of valid signatures
  backs, merged over the pages of every notary's inbox (pure);
  :func:`collect_inboxes` fetches those pages from the whole committee.
- :func:`recollect`: a certified entry's signatures again, from every notary
  (how a wallet recovers a pruned certificate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from p2pmarket.core.domains import NOTARY_CERT
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import verify
from p2pmarket.ledger.certificate import (
    Certificate,
    committee_quorum,
    notary_message,
    notary_sig_valid,
)
from p2pmarket.ledger.chain import SEND, Authenticator, Entry
from p2pmarket.ledger.committee import NotaryTransport
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.sigcache import SigCache

InboxPage = tuple[list[Certificate], bool]  # the certificates, and whether there are more


class Tally:
    """The notary signatures gathered for stored consecutive entries (``built``:
    entry and owner signature each), up to ``quorum`` valid ones per entry."""

    def __init__(self, built: Sequence[tuple[Entry, bytes]], quorum: int) -> None:
        self.built = built
        self.quorum = quorum
        self.got: dict[int, dict[bytes, bytes]] = {e.seq: {} for e, _ in built}
        # what each entry's notaries sign: the entry alone, or its batch's root
        self.messages = {e.seq: notary_message(Authenticator.of(e, s)) for e, s in built}
        self._valid = SigCache()  # a batch root's signature is checked once
        self.need = set(self.got)  # seqs still short of a quorum
        self.errors: dict[str, Any] = {}  # notary key (hex) -> its refusal

    @property
    def complete(self) -> bool:
        return not self.need

    def refused(self, notary: bytes, error: P2PMarketError) -> None:
        self.errors[notary.hex()] = error.to_dict()

    def add(self, notary: bytes, sigs: dict[int, bytes]) -> None:
        """Count ``notary``'s signatures by seq: the valid ones, while an entry needs them."""
        for entry, _ in self.built:
            sig = sigs.get(entry.seq)
            if entry.seq in self.need and sig is not None and \
                    self._valid.verify(notary, NOTARY_CERT, self.messages[entry.seq], sig):
                self.got[entry.seq][notary] = sig
                if len(self.got[entry.seq]) >= self.quorum:
                    self.need.discard(entry.seq)

    def results(self) -> list[Certificate | LedgerError]:
        """Per entry, in order: its certificate, or why it stays pending."""
        certs: list[Certificate | LedgerError] = []
        for entry, owner_sig in self.built:
            got = self.got[entry.seq]
            if entry.seq in self.need:
                certs.append(LedgerError("no notary quorum; the entry stays pending",
                                         {"seq": entry.seq, "signatures": len(got),
                                          "quorum": self.quorum, "errors": self.errors}))
            else:
                certs.append(Certificate(entry, owner_sig, tuple(sorted(got.items()))))
        return certs


def merge_inboxes(pages: Iterable[Sequence[Certificate]], genesis: Genesis,
                  cache: SigCache | None = None) -> list[Certificate]:
    """The certificates that a quorum of valid committee signatures backs once the
    signatures of the same entry (and owner signature) are merged over ``pages``;
    at most a quorum of signatures each, sorted by payer and seq."""
    quorum = committee_quorum(genesis)
    pairs: dict[tuple[bytes, bytes], tuple[Entry, set[tuple[bytes, bytes]]]] = {}
    for certs in pages:
        for cert in certs:
            slot = pairs.setdefault((cert.entry.hash(), cert.owner_sig), (cert.entry, set()))
            slot[1].update(cert.notary_sigs)
    out = []
    for (_, owner_sig), (entry, sigs) in pairs.items():
        valid: dict[bytes, bytes] = {}
        for key, sig in sorted(sigs):
            if key not in valid and key in genesis.notary_keys and \
                    notary_sig_valid(entry, key, sig, cache, owner_sig):
                valid[key] = sig
            if len(valid) >= quorum:
                break
        cert = Certificate(entry, owner_sig, tuple(sorted(valid.items())))
        if len(valid) >= quorum and cert.authenticator.verify(cache):
            out.append(cert)
    out.sort(key=lambda c: (c.entry.owner, c.entry.seq))
    return out


async def collect_inboxes(transport: NotaryTransport, genesis: Genesis, owner: bytes,
                          cache: SigCache | None = None) -> InboxPage:
    """The SEND certificates to ``owner`` that a quorum backs, over every notary's
    inbox (:func:`merge_inboxes`); and whether some inbox had more."""
    results = await asyncio.gather(*(inbox_page(transport, n, owner)
                                     for n in genesis.notaries), return_exceptions=True)
    pages = []
    more = False
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, P2PMarketError):
                raise result
            continue
        certs, page_full = result
        more = more or page_full
        pages.append(certs)
    return merge_inboxes(pages, genesis, cache), more


async def inbox_page(transport: NotaryTransport, notary: NotaryInfo, owner: bytes) -> InboxPage:
    """One page of ``notary``'s inbox for ``owner``: the well-formed SEND certificates
    to ``owner`` in it (signatures not checked), and whether there are more."""
    result = await transport.call(notary, "inbox", {"owner": owner})
    certs = result.get("certs") if isinstance(result, dict) else None
    if not isinstance(certs, list):
        raise LedgerError("notary returned a malformed inbox", notary.key)
    out: list[Certificate] = []
    for doc in certs:
        try:
            cert = Certificate.from_wire(doc)
        except LedgerError:
            continue
        if cert.entry.kind == SEND and cert.entry.body["to"] == owner:
            out.append(cert)
    return out, result.get("more") is True


async def recollect(transport: NotaryTransport, genesis: Genesis, entry: Entry,
                    owner_sig: bytes) -> dict[bytes, bytes]:
    """Resubmit a certified entry to every notary: the valid signatures returned, by
    notary key (Ed25519 is deterministic: the very signatures given before)."""
    args = {"entries": [entry.encode()], "sigs": [owner_sig], "certs": [[]]}
    message = notary_message(Authenticator.of(entry, owner_sig))
    results = await asyncio.gather(
        *(transport.call(n, "certify_batch", args) for n in genesis.notaries),
        return_exceptions=True)
    sigs: dict[bytes, bytes] = {}
    for notary, result in zip(genesis.notaries, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, P2PMarketError):
                raise result
            continue
        got = result.get("sigs") if isinstance(result, dict) else None
        sig = got[0] if isinstance(got, list) and len(got) == 1 else None
        if isinstance(sig, bytes) and verify(notary.key, NOTARY_CERT, message, sig):
            sigs[notary.key] = sig
    return sigs
