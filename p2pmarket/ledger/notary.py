"""A notary: certifies chain entries in order and never signs two at one seq.

DESIGN.md section 4. For every entry kind a notary signs ``(owner, seq, hash)``
only if seq is exactly one past the last entry it certified for that owner
(seq 0 must be OPEN), prev matches that entry, the owner's signature is good,
and the entry is allowed by :func:`chain.apply` on the replayed balance: a SEND
covered, MINT only by the mint key, RECV only with a valid SEND certificate
addressed to the owner whose ``(payer, seq)`` it has not seen received before.

The new head (the lock), the notary's signature, the balance, the received
set, the inbox and the supply figures are committed in one durable sqlite
transaction before the signature is returned. Resubmitting a certified entry
returns the same signature; a different entry at a certified seq is refused
with the stored authenticator as evidence. Every refusal leaves state unchanged.

Supply at one notary: ``minted`` (certified MINTs), ``balances`` (sum of the
replayed balances), ``pending`` (certified SENDs not yet received: the inbox)
and ``early`` (RECVs certified here before this notary certified their SEND,
which it may see late). Invariant: ``balances + pending - early == minted``;
``early`` is 0 once the notary has seen every chain in full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.config import Genesis
from p2pmarket.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity
from p2pmarket.ledger.certificate import Certificate, notary_sign
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
    received_key,
)
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_map
from p2pmarket.ledger.store import ChainStore
from p2pmarket.wire import pack, unpack

MAX_INBOX = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS notary_accounts (
    owner BLOB PRIMARY KEY,
    balance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notary_inbox (
    payer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    payee BLOB NOT NULL,
    amount INTEGER NOT NULL,
    cert BLOB NOT NULL,
    PRIMARY KEY (payer, seq)
);
CREATE INDEX IF NOT EXISTS notary_inbox_payee ON notary_inbox (payee, payer, seq);
CREATE TABLE IF NOT EXISTS notary_received (
    payer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    payee BLOB NOT NULL,
    amount INTEGER NOT NULL,
    early INTEGER NOT NULL,
    PRIMARY KEY (payer, seq)
);
CREATE TABLE IF NOT EXISTS notary_supply (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    minted INTEGER NOT NULL
);
INSERT OR IGNORE INTO notary_supply (id, minted) VALUES (1, 0);
"""


class NotaryService:
    """One committee member's certification state and its RPC handlers."""

    def __init__(self, identity: Identity, genesis: Genesis, db_path: Path | str) -> None:
        if identity.public_key not in genesis.notary_keys:
            raise LedgerError("this key is not in the genesis notary committee",
                              identity.public_key)
        self.identity = identity
        self.genesis = genesis
        self.store = ChainStore(db_path)
        with self.store.transaction() as conn:
            conn.executescript(SCHEMA)

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def close(self) -> None:
        self.store.close()

    # -- the rules ---------------------------------------------------------------

    def certify(self, entry: Entry, owner_sig: bytes) -> bytes:
        """This notary's signature of ``entry``, or :class:`LedgerError`."""
        auth = Authenticator.of(entry, owner_sig)
        auth.check()
        stored = self.store.certificate(entry.owner, entry.seq)
        if stored is not None:
            if stored.entry.hash() == entry.hash():
                for key, sig in stored.notary_sigs:
                    if key == self.key:
                        return sig
                raise AssertionError("stored entry lacks this notary's signature")
            raise LedgerError(
                "a different entry is already certified at this seq",
                {"owner": entry.owner, "seq": entry.seq,
                 "authenticator": stored.authenticator.to_wire(),
                 "submitted": auth.to_wire()})
        head = self.store.head(entry.owner)
        if head is None:
            check_link(entry, -1, ZERO_HASH)
        else:
            check_link(entry, head.seq, head.hash())
        balance = self.balance(entry.owner)
        cert = entry.received
        if cert is not None and self._received_row(*received_key(cert)) is not None:
            raise LedgerError("certificate already received",
                              {"from": cert.entry.owner, "seq": cert.entry.seq})
        new_balance = apply(balance, entry, self.genesis)
        minted = self.minted()
        if entry.kind == MINT and minted + entry.amount > MAX_AMOUNT:
            raise LedgerError("total supply would exceed the maximum", MAX_AMOUNT)

        sig = notary_sign(self.identity, entry)
        with self.store.transaction() as conn:
            self.store.append(entry, owner_sig)
            self.store.attach(Certificate(entry, owner_sig, ((self.key, sig),)))
            conn.execute("INSERT INTO notary_accounts (owner, balance) VALUES (?, ?) "
                         "ON CONFLICT (owner) DO UPDATE SET balance = excluded.balance",
                         (entry.owner, new_balance))
            if entry.kind == MINT:
                conn.execute("UPDATE notary_supply SET minted = ? WHERE id = 1",
                             (minted + entry.amount,))
            elif entry.kind == SEND:
                self._certified_send(entry, owner_sig, sig)
            elif entry.kind == RECV:
                assert cert is not None
                self._certified_recv(entry, cert)
        return sig

    def _certified_send(self, entry: Entry, owner_sig: bytes, sig: bytes) -> None:
        early = self._received_row(entry.owner, entry.seq)
        if early is not None:  # its RECV was certified here first: now matched
            self.store.conn.execute(
                "UPDATE notary_received SET early = 0 WHERE payer = ? AND seq = ?",
                (entry.owner, entry.seq))
            return
        cert = Certificate(entry, owner_sig, ((self.key, sig),))
        self.store.conn.execute(
            "INSERT INTO notary_inbox (payer, seq, payee, amount, cert) VALUES (?, ?, ?, ?, ?)",
            (entry.owner, entry.seq, entry.body["to"], entry.amount, pack(cert.to_wire())))

    def _certified_recv(self, entry: Entry, cert: Certificate) -> None:
        payer, seq = received_key(cert)
        gone = self.store.conn.execute(
            "DELETE FROM notary_inbox WHERE payer = ? AND seq = ?", (payer, seq)).rowcount
        self.store.conn.execute(
            "INSERT INTO notary_received (payer, seq, payee, amount, early) "
            "VALUES (?, ?, ?, ?, ?)", (payer, seq, entry.owner, entry.amount, int(gone == 0)))

    def _received_row(self, payer: bytes, seq: int) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.store.conn.execute(
            "SELECT payee, amount, early FROM notary_received WHERE payer = ? AND seq = ?",
            (payer, seq)).fetchone()
        return row

    # -- queries ---------------------------------------------------------------

    def balance(self, owner: bytes) -> int:
        row = self.store.conn.execute(
            "SELECT balance FROM notary_accounts WHERE owner = ?", (owner,)).fetchone()
        return 0 if row is None else int(row[0])

    def minted(self) -> int:
        return int(self.store.conn.execute(
            "SELECT minted FROM notary_supply WHERE id = 1").fetchone()[0])

    def head(self, owner: bytes) -> dict[str, Any]:
        """``{owner, seq, hash, balance}`` of the last certified entry (seq -1: none)."""
        entry = self.store.head(owner)
        return {"owner": owner, "seq": -1 if entry is None else entry.seq,
                "hash": ZERO_HASH if entry is None else entry.hash(),
                "balance": self.balance(owner)}

    def inbox(self, owner: bytes, limit: int = MAX_INBOX) -> list[Certificate]:
        """Certified SENDs to ``owner`` not yet received here (this notary's signature only)."""
        rows = self.store.conn.execute(
            "SELECT cert FROM notary_inbox WHERE payee = ? ORDER BY payer, seq LIMIT ?",
            (owner, limit)).fetchall()
        return [Certificate.from_wire(unpack(bytes(r[0]))) for r in rows]

    def supply(self) -> dict[str, Any]:
        conn = self.store.conn
        balances = int(conn.execute(
            "SELECT COALESCE(SUM(balance), 0) FROM notary_accounts").fetchone()[0])
        pending = int(conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM notary_inbox").fetchone()[0])
        early = int(conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM notary_received WHERE early = 1").fetchone()[0])
        minted = self.minted()
        return {"minted": minted, "balances": balances, "pending": pending, "early": early,
                "ok": balances + pending - early == minted}

    # -- RPC -------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """RPC handlers: ``certify``, ``inbox``, ``head``, ``supply``."""

        async def certify(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            args = check_map(args, "certify arguments", {"entry", "sig"})
            entry = Entry.from_wire(args["entry"])
            sig = check_bytes(args["sig"], "sig", SIGNATURE_SIZE)
            return {"notary": self.key, "sig": self.certify(entry, sig)}

        async def inbox(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            args = check_map(args, "inbox arguments", {"owner"})
            owner = check_bytes(args["owner"], "owner", PUBLIC_KEY_SIZE)
            certs = self.inbox(owner, MAX_INBOX + 1)
            return {"certs": [c.to_wire() for c in certs[:MAX_INBOX]],
                    "more": len(certs) > MAX_INBOX}

        async def head(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            args = check_map(args, "head arguments", {"owner"})
            return self.head(check_bytes(args["owner"], "owner", PUBLIC_KEY_SIZE))

        async def supply(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            check_map(args, "supply arguments", set())
            return self.supply()

        return {"certify": certify, "inbox": inbox, "head": head, "supply": supply}
