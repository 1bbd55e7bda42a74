"""The proofs a node holds, by host (sqlite): what buyers and notaries consult to shun
exposed hosts. Each proof is checked with :func:`p2pmarket.audit.evidence.verify_proof`
before it is kept, under the network's genesis when the store is given it (a proof
about the notaries' certificates needs it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2pmarket.audit.evidence import EvidenceError, Proof, verify_proof
from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.genesis import Genesis

STORE_FORMAT = 2
"""The evidence store's format: 2 since signatures have domains (docs/design.md §2)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    id BLOB PRIMARY KEY,
    host_id BLOB NOT NULL,
    host BLOB NOT NULL,
    proof BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_host ON evidence (host_id);
"""


class EvidenceStore:
    """Valid proofs by host (sqlite; ``:memory:`` for tests). Buyers and notaries ask
    :meth:`is_exposed`."""

    def __init__(self, path: Path | str = ":memory:", genesis: Genesis | None = None) -> None:
        self.genesis = genesis
        self.conn = open_db(path)
        require_format(self.conn, "evidence", STORE_FORMAT, ("evidence",),
                       "signatures have domains, proofs are version 2")
        with self.conn:
            self.conn.executescript(_SCHEMA)
        self._exposed: set[bytes] = set()
        for host_id, host in self.conn.execute("SELECT host_id, host FROM evidence"):
            self._exposed.update((bytes(host_id), bytes(host)))

    def close(self) -> None:
        self.conn.close()

    def add(self, data: bytes) -> Proof:
        """Verify and keep a proof (idempotent); raises :class:`EvidenceError`."""
        proof = verify_proof(data, genesis=self.genesis)
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT OR IGNORE INTO evidence (id, host_id, host, proof) "
                    "VALUES (?, ?, ?, ?)", (proof.proof_id, proof.host_id, proof.host, data))
        except sqlite3.Error as exc:
            raise EvidenceError("evidence store failed", str(exc)) from None
        self._exposed.update((proof.host_id, proof.host))
        return proof

    def is_exposed(self, node: bytes) -> bool:
        """Whether a valid proof against this node (node id or public key) is held."""
        return bytes(node) in self._exposed

    def proofs(self, node: bytes | None = None) -> list[bytes]:
        if node is None:
            rows: Iterable[Any] = self.conn.execute("SELECT proof FROM evidence ORDER BY id")
        else:
            rows = self.conn.execute(
                "SELECT proof FROM evidence WHERE host_id = ? OR host = ? ORDER BY id",
                (node, node))
        return [bytes(r[0]) for r in rows]

    def exposed(self) -> list[bytes]:
        """Node ids of every exposed host."""
        return sorted({bytes(r[0]) for r in self.conn.execute("SELECT host_id FROM evidence")})


__all__ = ["EvidenceStore"]
