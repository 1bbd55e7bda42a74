"""A notary: certifies chain entries in order and never signs two at one seq.

docs/design.md section 4. For every entry kind a notary signs ``(owner, seq, hash)``
only if seq is exactly one past the last entry it certified for that owner
(seq 0 must be OPEN), prev matches that entry, the owner's signature is good,
and the entry is allowed by :func:`chain.apply` on the replayed balance: a SEND
covered, MINT only by the mint key, RECV only with a valid SEND certificate
(sent beside the RECV, not inside it: :func:`certificate.check_receipt`) of the
SEND the RECV names (payer, seq, hash, amount, memo), addressed to the owner,
whose ``(payer, seq)`` it has not seen received before, CHECKPOINT stating the
replayed balance.

*Catch-up*: a notary that missed entries (it was down, or a reply was lost) is
given them again, in order, in one ``certify_batch``; an entry may come with its
quorum certificate, which proves it: the notary checks the certificate and the
link, replays the entry into its state and signs it too (never a second entry
at one seq). An entry without its own certificate is accepted the same way when
a later item of the same owner in the batch carries one and the items between
link by ``prev`` (*coverage*, :func:`notarystate.coverage`); a covered RECV
needs no SEND certificate. A certified entry is accepted even if this notary's own policy
(``shun``: e.g. owners exposed by an audit) would refuse new ones. The RPC
handlers first await ``screen(owners)`` (by default nothing): the node's look-up of
published evidence against those owners (:class:`p2pmarket.audit.witnessing.EvidenceScreen`),
which feeds the store ``shun`` reads.

The new heads (the locks), balances, received set, inbox and supply figures of
a whole batch, indeed of every batch that arrived meanwhile (group commit,
:mod:`p2pmarket.ledger.groupcommit`), are committed in one durable sqlite
transaction before any signature is returned.
Signatures are Ed25519, so deterministic: a resubmitted entry gets the same
signature again, recomputed rather than stored. A different entry at a
certified seq is refused with the stored authenticator as evidence, and the
conflicting one is kept (``evidence``): the only write a refusal makes.

*Batches*: an owner's proof may be a signature of a Merkle root over a batch of its
entries (:mod:`p2pmarket.ledger.merkle`); the notary checks it once per root (a
cache hit after that) and signs the root once, only when every entry under it is
certified here (:meth:`NotaryService._sign_root` recomputes the root from the
stored hashes); until then the item's error says ``root_incomplete``.

Storage per certified entry: ``(chain id, seq, hash, owner signature, index,
size)`` (for a batched entry the root's signature; the path is rebuilt from the
batch's stored hashes), kept forever, so a wallet that pruned a certificate
gets the same signature back by submitting the entry again. Full entries live
in their owners' wallets; SEND certificates sit in the inbox until received.
``deliver`` lets a payer push a SEND's certificate (with every signature) to a
notary that may have missed it, so a payee's ``sync`` works from any notary.

Supply at one notary: ``minted`` (certified MINTs), ``balances`` (sum of the
replayed balances), ``pending`` (SENDs certified here not yet received) and
``early`` (RECVs certified here before this notary certified their SEND).
Invariant: ``balances + pending - early == minted``; ``early`` is 0 once the
notary has seen every chain in full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from p2pmarket.core.domains import NOTARY_CERT
from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import (
    Certificate,
    check_receipt,
    committee_quorum,
    notary_message,
)
from p2pmarket.ledger.chain import (
    MAX_AMOUNT,
    MINT,
    RECV,
    SEND,
    ZERO_HASH,
    Authenticator,
    Entry,
    apply,
    check_link,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.groupcommit import GroupCommit
from p2pmarket.ledger.merkle import tree_root
from p2pmarket.ledger.notarystate import SCHEMA, Head, Item, Tx, add_batch_columns, coverage
from p2pmarket.ledger.sigcache import SigCache

MAX_INBOX = 256
T = TypeVar("T")

STORE_FORMAT = 2
"""The notary store's format: 2 since signatures have domains (docs/design.md §2)."""


async def _no_screen(owners: set[bytes]) -> None:
    return None


class NotaryService:
    """One committee member's certification state (its RPCs:
    :func:`p2pmarket.ledger.notaryrpc.handlers`)."""

    def __init__(self, identity: Identity, genesis: Genesis, db_path: Path | str,
                 shun: Callable[[bytes], bool] | None = None,
                 screen: Callable[[set[bytes]], Awaitable[None]] | None = None) -> None:
        if identity.public_key not in genesis.notary_keys:
            raise LedgerError("this key is not in the genesis notary committee",
                              identity.public_key)
        self.identity = identity
        self.genesis = genesis
        self.path = db_path
        self.quorum = committee_quorum(genesis)
        self.shun = shun or (lambda owner: False)
        # run before certifying, so shun sees evidence found elsewhere (e.g. in the DHT)
        self.screen = screen or _no_screen
        self.cache = SigCache()
        self.conn = open_db(db_path)
        require_format(self.conn, "notary", STORE_FORMAT, ("nt_chain", "nt_entry"),
                       "signatures have domains")
        with self.conn:
            add_batch_columns(self.conn)
            self.conn.executescript(SCHEMA)
        self.group: GroupCommit[Tx] = GroupCommit(self._transaction)
        self.before_commit: Callable[[], None] | None = None  # fault injection in tests

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def close(self) -> None:
        self.group.close()
        self.conn.close()

    # -- the rules (synchronous, each call one durable transaction) --------------

    def certify(self, entry: Entry, owner_sig: bytes,
                notaries: tuple[tuple[bytes, bytes], ...] = (),
                send: Certificate | None = None) -> bytes:
        """This notary's signature of ``entry``, or :class:`LedgerError`."""
        result = self.certify_items([Item(entry, owner_sig, notaries, send)])[0]
        if isinstance(result, LedgerError):
            raise result
        return result

    def certify_items(self, items: Sequence[Item]) -> list[bytes | LedgerError]:
        """Certify ``items`` in order in one transaction: a signature or a refusal each."""
        return self._transaction(self.certify_grouped(items))

    def deliver(self, certs: Sequence[Certificate]) -> list[LedgerError | None]:
        """Keep SEND certificates in the inbox for their payees (None: accepted)."""
        return self._transaction(lambda tx: [self._deliver_one(tx, c) for c in certs])

    def _transaction(self, fn: Callable[[Tx], T]) -> T:
        with self.conn:
            tx = Tx(self.conn)
            result = fn(tx)
            tx.flush()
            if self.before_commit is not None:
                self.before_commit()
        return result

    def _certify_one(self, tx: Tx, item: Item, covered: bool
                     ) -> tuple[Authenticator, bool] | LedgerError:
        try:
            return self._certify(tx, item, covered)
        except LedgerError as exc:
            return exc

    def _cert_ok(self, cert: Certificate) -> bool:
        try:
            self._check_cert(cert)
        except LedgerError:
            return False
        return True

    def _certify(self, tx: Tx, item: Item, covered: bool = False
                 ) -> tuple[Authenticator, bool]:
        """Check and record ``item``'s entry; its authenticator, and whether it is new
        here (the signature comes after, once per batch root: :meth:`_sign_all`)."""
        entry, owner_sig = item.entry, item.owner_sig
        auth = Authenticator.of(entry, owner_sig)
        auth.check(self.cache)
        head = tx.head(entry.owner)
        if head is not None and entry.seq <= head.seq:
            return self._resubmitted(tx, head, auth), False
        check_link(entry, -1 if head is None else head.seq,
                   ZERO_HASH if head is None else head.hash)
        if item.notaries:
            self._check_cert(Certificate(entry, owner_sig, item.notaries))
        elif not covered and self.shun(entry.owner):
            raise LedgerError("this notary refuses entries of this owner", "shunned")
        receipt = entry.receipt
        if receipt is not None:
            if self._recv_row(tx, *receipt) is not None:
                raise LedgerError("certificate already received",
                                  {"from": receipt[0], "seq": receipt[1]})
            if not (item.notaries or covered):  # a fresh RECV: check the SEND certificate
                if item.send is None:
                    raise LedgerError("a RECV needs the certificate of the SEND it receives",
                                      "send")
                check_receipt(entry, item.send, self.genesis, self.cache)
        new_balance = apply(0 if head is None else head.balance, entry, self.genesis)
        if entry.kind == MINT and tx.minted + entry.amount > MAX_AMOUNT:
            raise LedgerError("total supply would exceed the maximum", MAX_AMOUNT)

        # every check passed: record (committed with the whole group, before any answer)
        head = head or tx.head(entry.owner, create=True)
        assert head is not None
        tx.entries[(head.cid, entry.seq)] = (entry.hash(), auth.proof)
        head.seq, head.hash, head.balance, head.dirty = entry.seq, entry.hash(), new_balance, True
        if entry.kind == MINT:
            tx.minted += entry.amount
            tx.minted_dirty = True
        elif entry.kind == RECV:
            self._certified_recv(tx, head, entry)
        return auth, True

    def _sign_all(self, tx: Tx, items: Sequence[Item],
                  results: Sequence[tuple[Authenticator, bool] | LedgerError]
                  ) -> list[bytes | LedgerError]:
        """This notary's signature per recorded item: one per batch root (or lone
        entry), made only once every entry under the root is certified here."""
        signed: dict[bytes, bytes | LedgerError] = {}  # notary message -> signature
        out: list[bytes | LedgerError] = []
        here = {(r[0].owner, r[0].seq) for r in results  # recorded by this request
                if not isinstance(r, LedgerError) and r[1]}
        for item, result in zip(items, results, strict=True):
            if isinstance(result, LedgerError):
                out.append(result)
                continue
            auth, fresh = result
            message = notary_message(auth)
            sig = signed.get(message)
            if sig is None:
                sig = signed[message] = self._sign_root(tx, auth, message, here)
            out.append(sig)
            if fresh and item.entry.kind == SEND:
                head = tx.head(auth.owner)
                assert head is not None
                self._certified_send(tx, head, item.entry, item.owner_sig,
                                     sig if isinstance(sig, bytes) else None)
        return out

    def _sign_root(self, tx: Tx, auth: Authenticator, message: bytes,
                   here: set[tuple[bytes, int]]) -> bytes | LedgerError:
        proof = auth.proof
        if not proof.single:
            head = tx.head(auth.owner)
            assert head is not None
            first = auth.seq - proof.index
            leaves = tx.batch_leaves(auth.owner, head.cid, first, proof.size)
            span = {"first": first, "size": proof.size}
            if leaves is None:
                return LedgerError("the batch root covers entries not certified here yet",
                                   {**span, "root_incomplete": True})
            if tree_root(leaves) != auth.batch_root:
                return LedgerError("the batch root is not that of the entries certified "
                                   "here", span)
            sig = self.identity.sign(NOTARY_CERT, message)
            if any((auth.owner, s) not in here for s in range(first, first + proof.size)):
                self._sign_held(tx, head.cid, first, proof.size, sig)
        else:
            sig = self.identity.sign(NOTARY_CERT, message)
        self.cache.add(self.key, NOTARY_CERT, message, sig)
        return sig

    def _sign_held(self, tx: Tx, cid: int, first: int, size: int, sig: bytes) -> None:
        """A root completed now over SENDs certified before: add our signature to their
        inbox certificates (certified here while their root was incomplete)."""
        rows = tx.conn.execute("SELECT seq, cert FROM nt_inbox WHERE payer = ? AND seq "
                               "BETWEEN ? AND ?", (cid, first, first + size - 1)).fetchall()
        for seq, blob in rows:
            held = Certificate.decode(bytes(blob))
            if self.key in held.keys or held.entry.hash() != tx.entry(cid, int(seq)):
                continue
            merged = held.merged(((self.key, sig),))
            tx.conn.execute("UPDATE nt_inbox SET cert = ? WHERE payer = ? AND seq = ?",
                            (merged.encode(), cid, seq))

    def _resubmitted(self, tx: Tx, head: Head, auth: Authenticator) -> Authenticator:
        stored_hash = tx.entry(head.cid, auth.seq)
        assert stored_hash is not None, "a certified seq without its entry"
        if stored_hash == auth.hash:
            return auth  # signed again (deterministically: the very signature given before)
        proof = tx.proof(auth.owner, head.cid, auth.seq)
        assert proof is not None
        stored = Authenticator(auth.owner, auth.seq, stored_hash, proof)
        tx.conn.execute("INSERT OR IGNORE INTO nt_evidence (cid, seq, hash, owner_sig) "
                        "VALUES (?, ?, ?, ?)", (head.cid, auth.seq, auth.hash, auth.sig))
        raise LedgerError("a different entry is already certified at this seq",
                          {"owner": auth.owner, "seq": auth.seq,
                           "authenticator": stored.to_wire(), "submitted": auth.to_wire()})

    def _certified_send(self, tx: Tx, head: Head, entry: Entry, owner_sig: bytes,
                        sig: bytes | None) -> None:
        recv, held = tx.conn.execute(  # one statement for both lookups
            "SELECT EXISTS (SELECT 1 FROM nt_recv WHERE payer = ?1 AND seq = ?2), "
            "(SELECT cert FROM nt_inbox WHERE payer = ?1 AND seq = ?2)",
            (head.cid, entry.seq)).fetchone()
        if recv:  # its RECV was certified here first: now matched
            tx.conn.execute("UPDATE nt_recv SET early = 0 WHERE payer = ? AND seq = ?",
                            (head.cid, entry.seq))
            return
        mine = Certificate(entry, owner_sig, () if sig is None else ((self.key, sig),))
        if held is not None:  # delivered before we certified it: now counted
            merged = Certificate.decode(bytes(held)).merged(mine.notary_sigs)
            tx.conn.execute("UPDATE nt_inbox SET counted = 1, cert = ? WHERE payer = ? "
                            "AND seq = ?", (merged.encode(), head.cid, entry.seq))
            return
        payee = tx.head(entry.body["to"], create=True)
        assert payee is not None
        tx.conn.execute(
            "INSERT INTO nt_inbox (payer, seq, payee, amount, counted, cert) "
            "VALUES (?, ?, ?, ?, 1, ?)",
            (head.cid, entry.seq, payee.cid, entry.amount, mine.encode()))

    def _certified_recv(self, tx: Tx, head: Head, entry: Entry) -> None:
        assert entry.receipt is not None
        payer_key, seq = entry.receipt
        payer = tx.head(payer_key, create=True)
        assert payer is not None
        row = tx.conn.execute("SELECT counted FROM nt_inbox WHERE payer = ? AND seq = ?",
                              (payer.cid, seq)).fetchone()
        if row is not None:
            tx.conn.execute("DELETE FROM nt_inbox WHERE payer = ? AND seq = ?",
                            (payer.cid, seq))
        early = int(row is None or not row[0])
        tx.conn.execute("INSERT INTO nt_recv (payer, seq, payee, amount, early) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (payer.cid, seq, head.cid, entry.amount, early))

    def _recv_row(self, tx: Tx, payer: bytes, seq: int) -> tuple[Any, ...] | None:
        head = tx.head(payer)
        if head is None:
            return None
        row: tuple[Any, ...] | None = tx.conn.execute(
            "SELECT payee, amount, early FROM nt_recv WHERE payer = ? AND seq = ?",
            (head.cid, seq)).fetchone()
        return row

    def _check_cert(self, cert: Certificate) -> tuple[tuple[bytes, bytes], ...]:
        """The valid committee signatures of ``cert``; refuse it without a quorum."""
        cert.authenticator.check(self.cache)
        valid = cert.valid_signers(self.genesis, self.cache)
        if len(valid) < self.quorum:
            raise LedgerError("certificate lacks a notary quorum",
                              {"valid": len(valid), "quorum": self.quorum})
        return tuple(sorted(p for p in dict(cert.notary_sigs).items() if p[0] in valid))

    def _deliver_one(self, tx: Tx, cert: Certificate) -> LedgerError | None:
        try:
            self._deliver(tx, cert)
        except LedgerError as exc:
            return exc
        return None

    def _deliver(self, tx: Tx, cert: Certificate) -> None:
        entry = cert.entry
        if entry.kind != SEND:
            raise LedgerError("only SEND certificates are delivered", entry.kind)
        sigs = self._check_cert(cert)
        if self._recv_row(tx, entry.owner, entry.seq) is not None:
            return  # already received: nothing left to hold
        known = tx.head(entry.owner)
        if known is not None and entry.seq <= known.seq:
            got = tx.entry(known.cid, entry.seq)
            assert got is not None, "a certified seq without its entry"
            if got != entry.hash():
                self._resubmitted(tx, known, cert.authenticator)  # records it; raises
        payer = known or tx.head(entry.owner, create=True)
        assert payer is not None
        row = tx.conn.execute("SELECT cert FROM nt_inbox WHERE payer = ? AND seq = ?",
                              (payer.cid, entry.seq)).fetchone()
        if row is not None:
            held = Certificate.decode(bytes(row[0]))
            if held.entry.hash() != entry.hash():
                raise LedgerError("two certified SENDs at one seq",
                                  {"held": held.authenticator.to_wire(),
                                   "delivered": cert.authenticator.to_wire()})
            merged = held.merged(sigs)
            if merged.notary_sigs != held.notary_sigs:
                tx.conn.execute("UPDATE nt_inbox SET cert = ? WHERE payer = ? AND seq = ?",
                                (merged.encode(), payer.cid, entry.seq))
            return
        payee = tx.head(entry.body["to"], create=True)
        assert payee is not None
        tx.conn.execute(
            "INSERT INTO nt_inbox (payer, seq, payee, amount, counted, cert) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            (payer.cid, entry.seq, payee.cid, entry.amount,
             Certificate(entry, cert.owner_sig, sigs).encode()))

    # -- queries ---------------------------------------------------------------

    def balance(self, owner: bytes) -> int:
        row = self.conn.execute("SELECT balance FROM nt_chain WHERE key = ?",
                                (owner,)).fetchone()
        return 0 if row is None else int(row[0])

    def minted(self) -> int:
        return int(self.conn.execute("SELECT minted FROM nt_totals WHERE id = 1").fetchone()[0])

    def head(self, owner: bytes) -> dict[str, Any]:
        """``{owner, seq, hash, balance}`` of the last certified entry (seq -1: none)."""
        row = self.conn.execute("SELECT seq, hash, balance FROM nt_chain WHERE key = ?",
                                (owner,)).fetchone()
        if row is None:
            return {"owner": owner, "seq": -1, "hash": ZERO_HASH, "balance": 0}
        return {"owner": owner, "seq": int(row[0]), "hash": bytes(row[1]),
                "balance": int(row[2])}

    def authenticator(self, owner: bytes, seq: int) -> Authenticator | None:
        """The owner's authenticator of the entry certified here at ``seq``."""
        tx = Tx(self.conn)
        head = tx.head(owner)
        got = None if head is None else tx.entry(head.cid, seq)
        proof = None if head is None else tx.proof(owner, head.cid, seq)
        return None if got is None or proof is None else Authenticator(owner, seq, got, proof)

    def inbox(self, owner: bytes, limit: int = MAX_INBOX) -> list[Certificate]:
        """SEND certificates to ``owner`` not yet received here: this notary's signature,
        or every signature when the payer delivered the certificate."""
        rows = self.conn.execute(
            "SELECT i.cert FROM nt_inbox i JOIN nt_chain c ON c.id = i.payee WHERE c.key = ? "
            "ORDER BY i.payer, i.seq LIMIT ?", (owner, limit)).fetchall()
        return [Certificate.decode(bytes(r[0])) for r in rows]

    def evidence(self, owner: bytes) -> list[tuple[Authenticator, Authenticator]]:
        """Proofs that ``owner`` signed two entries at one seq: (certified, other)."""
        rows = self.conn.execute(
            "SELECT v.seq, v.hash, v.owner_sig FROM nt_evidence v "
            "JOIN nt_chain c ON c.id = v.cid WHERE c.key = ? ORDER BY v.seq",
            (owner,)).fetchall()
        out = []
        for seq, other_hash, other_sig in rows:
            certified = self.authenticator(owner, int(seq))
            if certified is not None:
                out.append((certified,
                            Authenticator(owner, int(seq), bytes(other_hash), bytes(other_sig))))
        return out

    def supply(self) -> dict[str, Any]:
        """This notary's supply figures and whether they add up (see the module doc)."""
        conn = self.conn
        chains, entries, balances = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(seq + 1), 0), COALESCE(SUM(balance), 0) "
            "FROM nt_chain WHERE seq >= 0").fetchone()
        pending, delivered = conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN counted THEN amount ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN counted THEN 0 ELSE amount END), 0) FROM nt_inbox"
        ).fetchone()
        early = int(conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM nt_recv WHERE early = 1").fetchone()[0])
        minted = self.minted()
        return {"minted": minted, "balances": int(balances), "pending": int(pending),
                "early": early, "ok": int(balances) + int(pending) - early == minted,
                "chains": int(chains), "entries": int(entries), "delivered": int(delivered)}

    def stats(self) -> dict[str, int]:
        """Entries certified and database bytes in use (pages minus free pages)."""
        conn = self.conn
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        entries = int(conn.execute("SELECT COUNT(*) FROM nt_entry").fetchone()[0])
        return {"entries": entries, "bytes": (pages - free) * size}

    # -- the functions the RPCs run in a group transaction (:attr:`group`) ---------

    def certify_grouped(self, items: Sequence[Item]) -> Callable[[Tx], list[Any]]:
        def run(tx: Tx) -> list[Any]:
            covered = coverage(items, self._cert_ok)
            results = [self._certify_one(tx, i, c) for i, c in zip(items, covered, strict=True)]
            return self._sign_all(tx, items, results)

        return run

    def deliver_grouped(self, certs: Sequence[Certificate]) -> Callable[[Tx], list[Any]]:
        return lambda tx: [self._deliver_one(tx, c) for c in certs]
