"""A fuzzed node: one in-process node (notary, host, witness, relay) in its own event
loop, and the digest of its durable state.

The node's auction ticks once an hour (so nothing changes by itself while it is
fuzzed). :func:`state` digests every sqlite store of the data dir (ledger, notary,
host accounts and config, witness, evidence, DHT, broker) and the auction's accounts, all but
the audit trail and what is derived (:data:`DERIVED`); :func:`audit_grew_only` checks
the audit trail was only appended to (a host logs a well-formed request its auction
refuses, by design: docs/design.md section 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2pmarket.auction.snapshot import accounts_digest
from p2pmarket.node.service import Node

DERIVED = ("INSERT INTO \"settings\" VALUES('audit.state'", 'INSERT INTO "own"',
           'INSERT INTO "meta"')
"""Rows left out of the digest: the journal's own row (its seq and the requests it has
seen: part of the audit trail) and the DHT store's copy of the node's advertisement
(republished up to a second after an accepted host setting changes it: derived from
the host config, which is digested)."""


@contextmanager
def fuzzed_node() -> Iterator[tuple[asyncio.Runner, Node]]:
    """A started one-node market (its own genesis, mint and notary) in a new loop."""
    from tests.market_helpers import local_market

    with tempfile.TemporaryDirectory(prefix="p2pm-fuzz-") as tmp, asyncio.Runner() as runner:
        market = local_market(Path(tmp) / "m", n=1, tick_seconds=3600.0,
                              overrides={0: {"relay": True, "audit_seconds": 3600.0}})
        m = runner.run(market.__aenter__())
        try:
            yield runner, m.nodes[0]
        finally:
            runner.run(market.__aexit__(None, None, None))


def _dump(path: Path) -> Iterator[str]:
    if not path.exists():
        return
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield from con.iterdump()
    finally:
        con.close()


def state(node: Node) -> str:
    """The digest of the node's durable state but its audit trail."""
    d = node.data_dir
    h = hashlib.sha256()
    for path in (d.ledger_db, d.notary_db, d.host_db, d.evidence_db, d.witness_db, d.dht_db,
                 d.root / "broker.sqlite"):
        h.update(str(path.name).encode())
        for line in _dump(path):
            if not line.startswith(DERIVED):
                h.update(line.encode())
    h.update(accounts_digest(node.auctioneer.state))
    return h.hexdigest()


def audit_head(node: Node) -> tuple[int, bytes]:
    return node.audit.head


def audit_grew_only(node: Node, before: tuple[int, bytes]) -> bool:
    """Whether the audit log still holds the entry ``before`` was the head of."""
    seq, h = before
    if seq < 0:
        return True
    auth = node.audit.authenticator(seq)
    return auth is not None and auth.hash == h


def walk(value: Any) -> Iterator[Any]:
    """Every value nested in ``value`` (bounded)."""
    stack, n = [value], 0
    while stack and n < 100_000:
        v = stack.pop()
        n += 1
        yield v
        if isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list | tuple):
            stack += list(v)
