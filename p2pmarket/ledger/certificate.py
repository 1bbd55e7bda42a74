"""Notary certificates: a receipt anyone verifies offline (docs/design.md section 4).

A certificate is an entry, its owner's signature, and notary signatures of
``pack(["cert", owner, seq, hash])`` in the signature domain ``notary.cert``
(:data:`p2pmarket.core.domains.NOTARY_CERT`). For an entry signed in a batch, the
owner's signature is an :class:`~p2pmarket.ledger.merkle.OwnerProof` (the signed
batch root and the entry's Merkle path to it) and the notaries signed
``pack(["cert-root", owner, root])``: the certificate still proves, offline,
the owner's consent and the quorum for that one entry. It is valid when the owner's signature is
good and at least :func:`committee_quorum` (2f+1 for a committee of 3f+1)
DISTINCT committee keys signed it correctly. Unknown keys and bad signatures
are ignored, never counted; one key never counts twice. Wire form:
``{entry, owner_sig, notaries: [[key, sig], ...]}``.

The chain checks that lean on certificates live here too, above
:mod:`p2pmarket.ledger.chain`: :func:`check_receipt`, what a notary (and a
wallet) checks before certifying a fresh RECV: the SEND certificate that
travels beside it matches the SEND the RECV names; :func:`verify_segment`, a
chain from a certified CHECKPOINT on; :func:`verify_certified`, a chain and the
certificate of its last entry. Signatures go through a
:class:`p2pmarket.ledger.sigcache.SigCache` when given one. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.core.domains import NOTARY_CERT
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify
from p2pmarket.core.wire import WireError, pack_plain, unpack
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    MAX_ENTRY_BYTES,
    Authenticator,
    Entry,
    replay,
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_map
from p2pmarket.ledger.sigcache import SigCache

MAX_NOTARY_SIGS = 128
CERT_FIELDS = frozenset({"entry", "owner_sig", "notaries"})
MAX_CERT_BYTES = MAX_ENTRY_BYTES + MAX_NOTARY_SIGS * 100 + 512
# canonical key order: "entry" < "notaries" < "owner_sig"
_CERT_HEAD = b"\x83" + pack_plain("entry")
_K_NOTARIES, _K_OWNER_SIG = pack_plain("notaries"), pack_plain("owner_sig")


def committee_quorum(genesis: Genesis) -> int:
    """Signatures a certificate needs: 2f+1 for a committee of exactly 3f+1.

    A larger committee (the genesis allows n > 3f+1) needs more, so that any two
    quorums still share an honest notary: the smallest q with 2q - n > f.
    """
    return genesis.quorum   # the rule lives in Genesis.quorum


def cert_message(owner: bytes, seq: int, entry_hash: bytes) -> bytes:
    """What a notary signs (in :data:`~p2pmarket.core.domains.NOTARY_CERT`) to certify
    entry ``(owner, seq, hash)``: ``pack(["cert", owner, seq, hash])`` (a list of
    scalars: canonical as is)."""
    return pack_plain(["cert", owner, seq, entry_hash])


def root_cert_message(owner: bytes, root: bytes) -> bytes:
    """What a notary signs to certify every entry of an owner's batch at once:
    ``pack(["cert-root", owner, root])``, the batch's Merkle root."""
    return pack_plain(["cert-root", owner, root])


def notary_message(auth: Authenticator) -> bytes:
    """What a notary signs for the entry of ``auth``: the entry itself for a batch of
    one (:func:`cert_message`), else the root the owner signed (:func:`root_cert_message`)."""
    if auth.batch_root is None:
        return cert_message(auth.owner, auth.seq, auth.hash)
    return root_cert_message(auth.owner, auth.batch_root)


def notary_sign(identity: Identity, entry: Entry) -> bytes:
    """A notary's signature of one entry alone (a batch of one)."""
    return identity.sign(NOTARY_CERT, cert_message(entry.owner, entry.seq, entry.hash()))


def notary_sig_valid(entry: Entry, key: bytes, sig: bytes,
                     cache: SigCache | None = None, owner_sig: bytes | None = None) -> bool:
    """Whether ``sig`` is ``key``'s certification of ``entry``: of the entry alone, or
    (given the entry's ``owner_sig`` proof) of the batch root it leads to."""
    message = cert_message(entry.owner, entry.seq, entry.hash()) if owner_sig is None \
        else notary_message(Authenticator.of(entry, owner_sig))
    return _valid(key, message, sig, cache)


def _valid(key: bytes, message: bytes, sig: bytes, cache: SigCache | None) -> bool:
    if cache is not None:
        return cache.verify(key, NOTARY_CERT, message, sig)
    return verify(key, NOTARY_CERT, message, sig)


@dataclass(frozen=True)
class Certificate:
    entry: Entry
    owner_sig: bytes  # an OwnerProof's bytes: the owner's signature, or a batch root's
    notary_sigs: tuple[tuple[bytes, bytes], ...]
    authenticator: Authenticator = field(init=False, repr=False, compare=False)
    message: bytes = field(init=False, repr=False, compare=False)  # what notaries signed

    def __post_init__(self) -> None:
        if not isinstance(self.entry, Entry):
            raise LedgerError("certificate entry must be an Entry", "entry")
        auth = Authenticator.of(self.entry, self.owner_sig)
        object.__setattr__(self, "authenticator", auth)
        object.__setattr__(self, "message", notary_message(auth))
        if not isinstance(self.notary_sigs, tuple) or len(self.notary_sigs) > MAX_NOTARY_SIGS:
            raise LedgerError(f"at most {MAX_NOTARY_SIGS} notary signatures", "notaries")
        for pair in self.notary_sigs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise LedgerError("notary signature must be a (key, sig) pair", "notaries")
            check_bytes(pair[0], "notary key", PUBLIC_KEY_SIZE)
            check_bytes(pair[1], "notary sig", SIGNATURE_SIZE)

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(k for k, _ in self.notary_sigs)

    def valid_signers(self, genesis: Genesis, cache: SigCache | None = None) -> frozenset[bytes]:
        """Committee keys with a valid signature on this certificate."""
        committee = genesis.notary_keys
        return frozenset(key for key, sig in self.notary_sigs
                         if key in committee and _valid(key, self.message, sig, cache))

    def merged(self, sigs: Iterable[tuple[bytes, bytes]]) -> Certificate:
        """This certificate with ``sigs`` added: one per key (first kept), sorted by key."""
        by_key: dict[bytes, bytes] = {}
        for key, sig in (*self.notary_sigs, *sigs):
            by_key.setdefault(key, sig)
        return Certificate(self.entry, self.owner_sig, tuple(sorted(by_key.items())))

    def trimmed(self, genesis: Genesis, cache: SigCache | None = None) -> Certificate:
        """Only valid committee signatures, sorted, at most a quorum of them."""
        signers = self.valid_signers(genesis, cache)
        sigs = sorted(p for p in dict(self.notary_sigs).items() if p[0] in signers)
        return Certificate(self.entry, self.owner_sig,
                           tuple(sigs[:committee_quorum(genesis)]))

    def to_wire(self) -> dict[str, Any]:
        return {"entry": self.entry.to_wire(), "owner_sig": self.owner_sig,
                "notaries": [[k, s] for k, s in self.notary_sigs]}

    @classmethod
    def from_wire(cls, doc: Any) -> Certificate:
        doc = check_map(doc, "certificate", CERT_FIELDS)
        notaries = doc["notaries"]
        if not isinstance(notaries, list | tuple) or len(notaries) > MAX_NOTARY_SIGS:
            raise LedgerError(f"notaries must be a list of at most {MAX_NOTARY_SIGS}",
                              "notaries")
        pairs: list[tuple[bytes, bytes]] = []
        for pair in notaries:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise LedgerError("notary signature must be a [key, sig] pair", "notaries")
            pairs.append((pair[0], pair[1]))
        return cls(Entry.from_wire(doc["entry"]), doc["owner_sig"], tuple(pairs))

    def encode(self) -> bytes:
        """Canonical msgpack of the wire form, built directly (keys in canonical order)."""
        return (_CERT_HEAD + self.entry.encode() + _K_NOTARIES
                + pack_plain([[k, s] for k, s in self.notary_sigs])
                + _K_OWNER_SIG + pack_plain(self.owner_sig))

    @classmethod
    def decode(cls, data: Any) -> Certificate:
        if not isinstance(data, bytes):
            raise LedgerError("certificate must be bytes", "cert")
        try:
            return cls.from_wire(unpack(data, MAX_CERT_BYTES))
        except WireError as exc:
            raise LedgerError("malformed certificate", exc.value) from None


def verify_certificate(cert: Certificate, genesis: Genesis,
                       cache: SigCache | None = None) -> None:
    """Raise :class:`LedgerError` unless ``cert`` is valid under ``genesis`` (offline)."""
    if not cert.authenticator.verify(cache):
        raise LedgerError("certificate has a bad owner signature",
                          {"owner": cert.entry.owner, "seq": cert.entry.seq})
    quorum = committee_quorum(genesis)
    committee = genesis.notary_keys
    signers: set[bytes] = set()
    for key, sig in cert.notary_sigs:  # stop checking once a quorum is in
        if len(signers) >= quorum:
            break
        if key in committee and key not in signers and \
                _valid(key, cert.message, sig, cache):
            signers.add(key)
    if len(signers) < quorum:
        raise LedgerError("certificate lacks a notary quorum",
                          {"valid": len(signers), "quorum": quorum})


def is_valid(cert: Certificate, genesis: Genesis, cache: SigCache | None = None) -> bool:
    try:
        verify_certificate(cert, genesis, cache)
    except LedgerError:
        return False
    return True


def check_receipt(recv: Entry, send: Certificate, genesis: Genesis,
                  cache: SigCache | None = None) -> None:
    """Raise :class:`LedgerError` unless ``send`` is a valid certificate of the SEND
    that the RECV ``recv`` names: same payer, seq, entry hash, amount and memo, and
    addressed to the RECV's owner."""
    entry, body = send.entry, recv.body
    if recv.kind != "RECV" or entry.kind != "SEND":
        raise LedgerError("a receipt is the certificate of a SEND, for a RECV",
                          {"recv": recv.kind, "send": entry.kind})
    if entry.body["to"] != recv.owner:
        raise LedgerError("the SEND is addressed to another owner", "to")
    for name, got in (("from", entry.owner), ("seq", entry.seq), ("hash", entry.hash()),
                      ("amount", entry.body["amount"]), ("memo", entry.body["memo"])):
        if body[name] != got:
            raise LedgerError("the RECV does not match its SEND certificate", name)
    verify_certificate(send, genesis, cache)


def received_key(cert: Certificate) -> tuple[bytes, int]:
    """What identifies a received SEND: ``(payer, seq)`` (a RECV's :attr:`Entry.receipt`)."""
    return cert.entry.owner, cert.entry.seq


def verify_segment(checkpoint: Certificate, entries: Sequence[Entry],
                   auths: Sequence[Authenticator], genesis: Genesis,
                   cache: SigCache | None = None) -> int:
    """Check the entries that follow a certified CHECKPOINT; return the final balance.

    The checkpoint's certificate (a notary quorum, checked here) vouches for the
    balance and for everything before it, so ``entries`` start right after it.
    Within the segment the same checks as :func:`p2pmarket.ledger.chain.verify_chain`
    apply; a RECV of a SEND already received before the checkpoint is the notaries'
    to refuse (the certificate of any later entry shows they did).
    """
    start = checkpoint.entry
    if start.kind != CHECKPOINT:
        raise LedgerError("a segment starts from a CHECKPOINT certificate", start.kind)
    verify_certificate(checkpoint, genesis, cache)
    if entries and entries[0].owner != start.owner:
        raise LedgerError("chain mixes owners", {"seq": entries[0].seq})
    return replay(entries, auths, genesis, start.seq, start.hash(),
                  int(start.body["balance"]), cache)


def verify_certified(entries: Sequence[Entry], auths: Sequence[Authenticator],
                     head: Certificate, genesis: Genesis,
                     checkpoint: Certificate | None = None,
                     cache: SigCache | None = None) -> int:
    """Like :func:`p2pmarket.ledger.chain.verify_chain` (or :func:`verify_segment`
    from ``checkpoint``), and also that ``head`` is a valid certificate of the last entry.

    An honest notary certifies an entry only after every earlier one, linked by
    ``prev``; so a quorum certificate of the last entry shows the whole chain was
    certified, with no certificate needed for the entries before it.
    """
    if not entries or head.entry != entries[-1]:
        raise LedgerError("the head certificate is not for the chain's last entry", "head")
    verify_certificate(head, genesis, cache)
    if checkpoint is None:
        return verify_chain(entries, auths, genesis, cache)
    return verify_segment(checkpoint, entries, auths, genesis, cache)
