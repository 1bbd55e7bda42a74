"""Hash-chain entries, authenticators and pure chain verification (docs/design.md section 4).

An entry is ``{owner, seq, prev, kind, body, ts}``; its hash is SHA-256 of the
canonical msgpack of that map. The owner signs ``pack(["auth", owner, seq,
hash])`` in the signature domain ``chain.entry``
(:data:`p2pmarket.core.domains.CHAIN_ENTRY`): that is an *authenticator*
(:class:`Authenticator`). A host's audit log has authenticators of the same form in
its own domain (:class:`p2pmarket.audit.entry.AuditAuthenticator`); both derive from
:class:`LogAuthenticator`, and neither verifies as the other. Kinds and bodies:

- ``OPEN`` ``{}``: exactly the entry at seq 0, ``prev`` all zeros.
- ``MINT`` ``{amount}``: only the genesis mint key.
- ``SEND`` ``{to, amount, memo}``: ``to`` another owner's public key.
- ``RECV`` ``{from, seq, hash, amount, memo}``: names the SEND it receives (its
  payer ``from``, its ``seq`` and entry ``hash``) and copies its ``amount`` and
  ``memo``. The SEND's certificate is not part of the entry: it travels beside
  the RECV when the RECV is certified, and a notary certifies a fresh RECV only
  with a valid SEND certificate that matches all five fields and is addressed
  to this owner (:func:`p2pmarket.ledger.certificate.check_receipt`). So a
  RECV's own certificate vouches for its SEND; a bare chain does not
  (:func:`verify_chain` does not check a RECV's SEND).
- ``CHECKPOINT`` ``{balance}``: the owner's balance after the entries before
  it. Certified like any entry (a notary checks the balance against its own
  replay), it lets anyone verify the chain from there on without the entries
  before it (:func:`p2pmarket.ledger.certificate.verify_segment`).

Certificates, and the chain checks that need them, live one level up in
:mod:`p2pmarket.ledger.certificate`.

Amounts are integer micro-credits in ``1 .. MAX_AMOUNT``; no balance may exceed
``MAX_AMOUNT`` or go negative. Nothing here touches a socket, clock or file.

The canonical encoding is built directly, keys already in canonical order (a
msgpack fixstr key sorts by length, then bytes), instead of going through the
generic canonicaliser: the bytes are those of ``wire.pack(entry.to_wire())``
(a test checks it) at a twentieth of the cost.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

from p2pmarket.core.domains import CHAIN_ENTRY, Domain
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify
from p2pmarket.core.wire import WireError, digest, pack_plain, unpack
from p2pmarket.ledger.errors import (
    LedgerError,
    check_bytes,
    check_int,
    check_map,
    check_str,
)
from p2pmarket.ledger.merkle import MAX_LEAVES, OwnerProof, batch_paths, leaf_hash
from p2pmarket.ledger.sigcache import SigCache

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
MAX_AMOUNT = 2**62
MAX_SEQ = 2**62
MAX_TS = 2**63 - 1
MAX_MEMO = 256
MAX_ENTRY_BYTES = 64 * 1024

OPEN = "OPEN"
MINT = "MINT"
SEND = "SEND"
RECV = "RECV"
CHECKPOINT = "CHECKPOINT"
KINDS = frozenset({OPEN, MINT, SEND, RECV, CHECKPOINT})
ENTRY_FIELDS = frozenset({"owner", "seq", "prev", "kind", "body", "ts"})
AUTH_FIELDS = frozenset({"owner", "seq", "hash", "sig"})


def _k(name: str) -> bytes:
    return msgpack.packb(name, use_bin_type=True)  # type: ignore[no-any-return]


# canonical key order: "ts" < "seq" < "body" < "kind" < "prev" < "owner"
_ENTRY_HEAD = b"\x86" + _k("ts")
_K_SEQ, _K_BODY, _K_KIND, _K_PREV, _K_OWNER = (_k(n) for n in ("seq", "body", "kind", "prev",
                                                             "owner"))
# RECV body: "seq" < "from" < "hash" < "memo" < "amount"
_RECV_HEAD = b"\x85" + _k("seq")
_K_FROM, _K_HASH, _K_MEMO, _K_AMOUNT = (_k(n) for n in ("from", "hash", "memo", "amount"))
RECV_FIELDS = frozenset({"from", "seq", "hash", "amount", "memo"})


_p = pack_plain  # scalars, and lists of them: canonical as they are


def _encode_body(kind: str, body: dict[str, Any]) -> bytes:
    if kind == SEND:  # "to" < "memo" < "amount"
        return b"\x83" + _p("to") + _p(body["to"]) + _p("memo") + _p(body["memo"]) \
            + _p("amount") + _p(body["amount"])
    if kind == RECV:
        return (_RECV_HEAD + _p(body["seq"]) + _K_FROM + _p(body["from"]) + _K_HASH
                + _p(body["hash"]) + _K_MEMO + _p(body["memo"]) + _K_AMOUNT
                + _p(body["amount"]))
    return _p(body)  # {} or a single key: already canonical


def encode_body(entry: Entry) -> bytes:
    """Canonical msgpack of ``entry.body``."""
    return _encode_body(entry.kind, entry.body)


def check_amount(value: Any, name: str = "amount") -> int:
    """A positive amount of micro-credits, at most ``MAX_AMOUNT``."""
    return check_int(value, name, 1, MAX_AMOUNT)


@dataclass(frozen=True)
class Entry:
    """One chain entry. Construction validates the shape (not signatures or balances)."""

    owner: bytes
    seq: int
    prev: bytes
    kind: str
    body: dict[str, Any]
    ts: int
    _hash: bytes = field(init=False, repr=False, compare=False)
    _bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bytes(self.owner, "owner", PUBLIC_KEY_SIZE)
        check_int(self.seq, "seq", 0, MAX_SEQ)
        check_bytes(self.prev, "prev", HASH_SIZE)
        check_int(self.ts, "ts", 0, MAX_TS)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise LedgerError("unknown entry kind", "kind")
        if (self.seq == 0) != (self.kind == OPEN):
            raise LedgerError("OPEN is the entry at seq 0 and only there",
                              {"seq": self.seq, "kind": self.kind})
        if self.seq == 0 and self.prev != ZERO_HASH:
            raise LedgerError("the entry at seq 0 must have an all-zero prev", "prev")
        body = _check_body(self.owner, self.kind, self.body)
        object.__setattr__(self, "body", body)
        packed = (_ENTRY_HEAD + _p(self.ts) + _K_SEQ + _p(self.seq) + _K_BODY
                  + _encode_body(self.kind, body) + _K_KIND + _p(self.kind)
                  + _K_PREV + _p(self.prev) + _K_OWNER + _p(self.owner))
        if len(packed) > MAX_ENTRY_BYTES:
            raise LedgerError("entry too large", len(packed))
        object.__setattr__(self, "_bytes", packed)
        object.__setattr__(self, "_hash", digest(packed))

    def hash(self) -> bytes:
        """SHA-256 of the canonical encoding of ``{owner, seq, prev, kind, body, ts}``."""
        return self._hash

    def to_wire(self) -> dict[str, Any]:
        return {"owner": self.owner, "seq": self.seq, "prev": self.prev,
                "kind": self.kind, "body": self.body, "ts": self.ts}

    @classmethod
    def from_wire(cls, doc: Any) -> Entry:
        doc = check_map(doc, "entry", ENTRY_FIELDS)
        return cls(owner=doc["owner"], seq=doc["seq"], prev=doc["prev"], kind=doc["kind"],
                   body=doc["body"], ts=doc["ts"])

    def encode(self) -> bytes:
        """The canonical msgpack bytes (what the hash covers)."""
        return self._bytes

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """An entry from its canonical encoding; any other encoding is refused."""
        try:
            entry = cls.from_wire(unpack(data, MAX_ENTRY_BYTES))
        except WireError as exc:
            raise LedgerError("malformed entry", exc.value) from None
        if entry._bytes != data:
            raise LedgerError("entry is not canonically encoded", "entry")
        return entry

    @property
    def amount(self) -> int:
        """The amount moved (0 for OPEN and CHECKPOINT)."""
        if self.kind in (MINT, SEND, RECV):
            return int(self.body["amount"])
        return 0

    @property
    def delta(self) -> int:
        """The entry's effect on its owner's balance."""
        return -self.amount if self.kind == SEND else self.amount

    @property
    def receipt(self) -> tuple[bytes, int] | None:
        """For a RECV: the ``(payer, seq)`` of the SEND it receives."""
        if self.kind != RECV:
            return None
        return bytes(self.body["from"]), int(self.body["seq"])

    @property
    def counterparty(self) -> bytes | None:
        if self.kind == SEND:
            return bytes(self.body["to"])
        if self.kind == RECV:
            return bytes(self.body["from"])
        return None


def _check_body(owner: bytes, kind: str, body: Any) -> dict[str, Any]:
    if kind == OPEN:
        check_map(body, "OPEN body", set())
        return {}
    if kind == MINT:
        body = check_map(body, "MINT body", {"amount"})
        return {"amount": check_amount(body["amount"])}
    if kind == CHECKPOINT:
        body = check_map(body, "CHECKPOINT body", {"balance"})
        return {"balance": check_int(body["balance"], "balance", 0, MAX_AMOUNT)}
    if kind == SEND:
        body = check_map(body, "SEND body", {"to", "amount", "memo"})
        to = check_bytes(body["to"], "to", PUBLIC_KEY_SIZE)
        if to == owner:
            raise LedgerError("cannot SEND to oneself", "to")
        return {"to": to, "amount": check_amount(body["amount"]),
                "memo": check_str(body["memo"], "memo", MAX_MEMO)}
    body = check_map(body, "RECV body", RECV_FIELDS)
    payer = check_bytes(body["from"], "from", PUBLIC_KEY_SIZE)
    if payer == owner:
        raise LedgerError("cannot RECV from oneself", "from")
    return {"from": payer, "seq": check_int(body["seq"], "seq", 1, MAX_SEQ),
            "hash": check_bytes(body["hash"], "hash", HASH_SIZE),
            "amount": check_amount(body["amount"]),
            "memo": check_str(body["memo"], "memo", MAX_MEMO)}


def recv_body(send: Entry) -> dict[str, Any]:
    """The body of the RECV that receives the SEND ``send``."""
    return {"from": send.owner, "seq": send.seq, "hash": send.hash(),
            "amount": send.body["amount"], "memo": send.body["memo"]}


def next_entry(owner: bytes, head: Entry | None, kind: str, body: dict[str, Any],
               ts: int) -> Entry:
    """The entry that follows ``head`` (None: an empty chain) on ``owner``'s chain."""
    if head is None:
        return Entry(owner, 0, ZERO_HASH, kind, body, ts)
    return Entry(owner, head.seq + 1, head.hash(), kind, body, ts)


def check_link(entry: Entry, head_seq: int, head_hash: bytes) -> None:
    """Refuse ``entry`` unless it directly follows the head ``(head_seq, head_hash)``.

    ``head_seq`` is -1 for an empty chain.
    """
    if entry.seq != head_seq + 1:
        raise LedgerError("entry is not the next on its chain",
                          {"expected": head_seq + 1, "got": entry.seq})
    expected_prev = ZERO_HASH if head_seq < 0 else head_hash
    if entry.prev != expected_prev:
        raise LedgerError("entry's prev does not match the chain head",
                          {"seq": entry.seq, "prev": entry.prev, "head": expected_prev})


def auth_message(owner: bytes, seq: int, entry_hash: bytes) -> bytes:
    """What an owner signs (in its log's domain): ``pack(["auth", owner, seq, hash])``
    (a list: canonical as is)."""
    return _p(["auth", owner, seq, entry_hash])


@dataclass(frozen=True)
class LogAuthenticator:
    """An owner's signature of ``(owner, seq, hash)`` of an entry of one of its logs, in
    that log's signature domain (:attr:`DOMAIN`, set by each subclass): the payment
    chain's :class:`Authenticator` or the audit log's
    :class:`p2pmarket.audit.entry.AuditAuthenticator`. The wire form does not name the
    log; whoever reads one says which it expects, and a signature made for one log
    never verifies as the other's. Never made itself."""

    owner: bytes
    seq: int
    hash: bytes
    sig: bytes
    DOMAIN: ClassVar[Domain]

    def __post_init__(self) -> None:
        if type(self) is LogAuthenticator:
            raise TypeError("an authenticator belongs to a log: use a subclass")
        check_bytes(self.owner, "owner", PUBLIC_KEY_SIZE)
        check_int(self.seq, "seq", 0, MAX_SEQ)
        check_bytes(self.hash, "hash", HASH_SIZE)
        self._check_sig()

    def _check_sig(self) -> None:
        check_bytes(self.sig, "sig", SIGNATURE_SIZE)

    def message(self) -> bytes:
        return auth_message(self.owner, self.seq, self.hash)

    def signature(self) -> bytes:
        """The 64 signature bytes :meth:`message` is signed with."""
        return self.sig

    def verify(self, cache: SigCache | None = None) -> bool:
        if cache is not None:
            return cache.verify(self.owner, self.DOMAIN, self.message(), self.signature())
        return verify(self.owner, self.DOMAIN, self.message(), self.signature())

    def check(self, cache: SigCache | None = None) -> None:
        if not self.verify(cache):
            raise LedgerError("bad owner signature", {"owner": self.owner, "seq": self.seq})

    def to_wire(self) -> dict[str, Any]:
        return {"owner": self.owner, "seq": self.seq, "hash": self.hash, "sig": self.sig}

    @classmethod
    def from_wire(cls, doc: Any) -> Self:
        doc = check_map(doc, "authenticator", AUTH_FIELDS)
        return cls(doc["owner"], doc["seq"], doc["hash"], doc["sig"])


def root_message(owner: bytes, root: bytes) -> bytes:
    """What an owner signs (in ``chain.entry``) for a batch: ``pack(["root", owner,
    root])``, the Merkle root over the batch's leaves (:mod:`p2pmarket.ledger.merkle`)."""
    return _p(["root", owner, root])


@dataclass(frozen=True)
class Authenticator(LogAuthenticator):
    """The owner's consent to a payment chain entry ``(owner, seq, hash)``: ``sig`` is
    the bytes of an :class:`~p2pmarket.ledger.merkle.OwnerProof`, the owner's
    signature of the entry itself (a batch of one: ``pack(["auth", owner, seq,
    hash])``, 64 bytes) or of a batch's Merkle root with the entry's path to it."""

    DOMAIN: ClassVar[Domain] = CHAIN_ENTRY
    proof: OwnerProof = field(init=False, repr=False, compare=False)
    batch_root: bytes | None = field(init=False, repr=False, compare=False)

    def _check_sig(self) -> None:
        proof = OwnerProof.decode(self.sig)
        object.__setattr__(self, "proof", proof)
        object.__setattr__(self, "batch_root", None if proof.single else
                           proof.root(leaf_hash(self.owner, self.seq, self.hash)))

    def message(self) -> bytes:
        if self.batch_root is None:
            return auth_message(self.owner, self.seq, self.hash)
        return root_message(self.owner, self.batch_root)

    def signature(self) -> bytes:
        return self.proof.sig

    @classmethod
    def sign(cls, identity: Identity, entry: Entry) -> Authenticator:
        """The owner's signature of one entry (a batch of one)."""
        if identity.public_key != entry.owner:
            raise LedgerError("only the owner signs its chain's entries", "owner")
        sig = identity.sign(CHAIN_ENTRY, auth_message(entry.owner, entry.seq, entry.hash()))
        return cls(entry.owner, entry.seq, entry.hash(), sig)

    @classmethod
    def sign_batch(cls, identity: Identity, entries: Sequence[Entry]) -> list[Authenticator]:
        """One signature over the Merkle root of ``entries`` (at most ``MAX_LEAVES``; one
        entry: :meth:`sign`), and each entry's proof under it."""
        if len(entries) == 1:
            return [cls.sign(identity, entries[0])]
        if not 1 < len(entries) <= MAX_LEAVES:
            raise LedgerError("a batch holds 1 to MAX_LEAVES entries", len(entries))
        if any(e.owner != identity.public_key for e in entries):
            raise LedgerError("only the owner signs its chain's entries", "owner")
        leaves = [leaf_hash(e.owner, e.seq, e.hash()) for e in entries]
        root, paths = batch_paths(leaves)
        sig = identity.sign(CHAIN_ENTRY, root_message(identity.public_key, root))
        n = len(entries)
        return [cls(e.owner, e.seq, e.hash(), OwnerProof(sig, i, n, tuple(p)).encode())
                for i, (e, p) in enumerate(zip(entries, paths, strict=True))]

    @classmethod
    def of(cls, entry: Entry, sig: bytes) -> Authenticator:
        return cls(entry.owner, entry.seq, entry.hash(), sig)

    def matches(self, entry: Entry) -> bool:
        return (self.owner, self.seq, self.hash) == (entry.owner, entry.seq, entry.hash())


def apply(balance: int, entry: Entry, genesis: Genesis,
          received: Collection[tuple[bytes, int]] = ()) -> int:
    """The balance after ``entry``; raise :class:`LedgerError` if the entry is not allowed.

    ``received`` holds the ``(payer, seq)`` of SENDs already received on this chain.
    Checks: MINT only by the mint key, SEND covered by ``balance``, RECV of a SEND
    not yet received, CHECKPOINT stating ``balance``, no balance above
    ``MAX_AMOUNT``. A RECV's SEND certificate is checked by whoever holds it,
    before this (:func:`p2pmarket.ledger.certificate.check_receipt`); on a bare
    chain the RECV's own certificate vouches for it.
    """
    if entry.kind == OPEN:
        return balance
    if entry.kind == CHECKPOINT:
        if entry.body["balance"] != balance:
            raise LedgerError("checkpoint balance does not match the chain",
                              {"balance": balance, "checkpoint": entry.body["balance"]})
        return balance
    if entry.kind == MINT:
        if entry.owner != genesis.mint_key:
            raise LedgerError("only the mint key may MINT", "mint_key")
        new = balance + entry.amount
    elif entry.kind == SEND:
        if entry.amount > balance:
            raise LedgerError("insufficient balance",
                              {"balance": balance, "amount": entry.amount})
        new = balance - entry.amount
    else:
        key = entry.receipt
        assert key is not None
        if key in received:
            raise LedgerError("certificate already received", {"from": key[0], "seq": key[1]})
        new = balance + entry.amount
    if new > MAX_AMOUNT:
        raise LedgerError("balance would exceed the maximum", MAX_AMOUNT)
    return new


def verify_chain(entries: Sequence[Entry], auths: Sequence[Authenticator],
                 genesis: Genesis, cache: SigCache | None = None) -> int:
    """Check a whole chain from seq 0 and return its final balance.

    Checks seq/prev linkage, one owner, each authenticator (matching and
    correctly signed), and :func:`apply`'s rules including no double RECV. A
    RECV's SEND certificate is not part of the chain: the notaries checked it
    before certifying the RECV, so pair this with a certificate of the last
    entry (:func:`p2pmarket.ledger.certificate.verify_certified`) to trust the RECVs.
    """
    return replay(entries, auths, genesis, -1, ZERO_HASH, 0, cache)


def replay(entries: Sequence[Entry], auths: Sequence[Authenticator], genesis: Genesis,
           head_seq: int, head_hash: bytes, balance: int,
           cache: SigCache | None = None) -> int:
    """Check ``entries`` as the continuation of a chain whose head is ``(head_seq,
    head_hash)`` with ``balance`` (seq -1, zero hash, 0: from the start); return the
    final balance. The checks of :func:`verify_chain`, from that head on."""
    if len(entries) != len(auths):
        raise LedgerError("need one authenticator per entry",
                          {"entries": len(entries), "auths": len(auths)})
    received: set[tuple[bytes, int]] = set()
    owner = entries[0].owner if entries else b""
    for entry, auth in zip(entries, auths, strict=True):
        if entry.owner != owner:
            raise LedgerError("chain mixes owners", {"seq": entry.seq})
        check_link(entry, head_seq, head_hash)
        if not auth.matches(entry):
            raise LedgerError("authenticator does not match entry", {"seq": entry.seq})
        auth.check(cache)
        balance = apply(balance, entry, genesis, received)
        if entry.receipt is not None:
            received.add(entry.receipt)
        head_seq, head_hash = entry.seq, entry.hash()
    return balance


def equivocation(first: Authenticator, second: Authenticator) -> bool:
    """Whether two authenticators prove their owner signed two entries at one seq
    (each directly, or under an owner-signed batch root with its Merkle path).

    Self-contained and offline: both payment-chain authenticators (not audit log
    ones), both signatures valid, same owner and seq, different hashes. Such a pair is
    what notaries keep as evidence of a fork.
    """
    return (type(first) is Authenticator and type(second) is Authenticator
            and first.owner == second.owner and first.seq == second.seq
            and first.hash != second.hash and first.verify() and second.verify())
