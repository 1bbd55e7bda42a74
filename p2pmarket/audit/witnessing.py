"""The DHT as the audit needs it: adapters from :class:`DhtNode` to the witness
protocols of :mod:`p2pmarket.audit.witness` and :mod:`p2pmarket.audit.evidence`,
and the notaries' look-up of published evidence (:class:`EvidenceScreen`).

A host's witnesses are the ψ+1 nodes nearest SHA-256("witness" + host id) in the
DHT (docs/design.md section 5), found with an ordinary node lookup; each one's key
and URL come from its signed host record, so a witness can only be reached under
the key its id belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from p2pmarket.audit.evidence import EvidenceError
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.witness import Peer
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import node_id_of
from p2pmarket.dht.records import HostRecord

log = logging.getLogger(__name__)

SCREEN_TTL_S = 60.0
SCREEN_TIMEOUT_S = 2.0
SCREEN_MAX_OWNERS = 100_000


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class DhtReader(Protocol):
    """What the witness adapters read from the DHT: a :class:`DhtNode`, or a proxied
    node's :class:`~p2pmarket.dht.gateway.GatewayClient`."""

    async def closest_ids(self, target: bytes) -> list[bytes]: ...

    async def get_host(self, node_id: bytes) -> HostRecord | None: ...


class EvidencePublisher(Protocol):
    async def publish_evidence(self, host_id: bytes, proof: bytes) -> int: ...


class DhtWitnessDirectory:
    """``closest(key, n)``: the ``n`` nodes with host records nearest ``key[:20]``,
    this node included when it is among them (it is then a witness itself)."""

    def __init__(self, dht: DhtReader, own: Peer | None = None) -> None:
        self.dht = dht
        self.own = own

    async def closest(self, key: bytes, n: int) -> list[Peer]:
        target = key[:20]
        ids = sorted(set(await self.dht.closest_ids(target)),
                     key=lambda i: _distance(i, target))
        records = await asyncio.gather(*(self.dht.get_host(i) for i in ids[: 2 * n]))
        peers = [Peer(r.node_id, r.envelope.sender, r.url) for r in records if r is not None]
        if self.own is not None:
            peers.append(self.own)
        peers.sort(key=lambda p: _distance(p.node_id, target))
        unique: dict[bytes, Peer] = {}
        for p in peers:
            unique.setdefault(p.node_id, p)
        return list(unique.values())[:n]


class DhtHostLocator:
    """``locate(host_key)``: the URL in the host's signed record, if it has one."""

    def __init__(self, dht: DhtReader) -> None:
        self.dht = dht

    async def locate(self, host_key: bytes) -> str | None:
        record = await self.dht.get_host(node_id_of(host_key))
        if record is None or record.envelope.sender != host_key:
            return None
        return record.url


class DhtEvidenceSink:
    """``publish(host_id, proof)``: store the proof at ``evidence/<host id>``, where every
    storer verifies it before keeping it (small proofs inline, large ones by hash)."""

    def __init__(self, dht: EvidencePublisher) -> None:
        self.dht = dht

    async def publish(self, host_id: bytes, proof: bytes) -> None:
        await self.dht.publish_evidence(host_id, proof)


class EvidenceSource(Protocol):
    async def get_evidence(self, host_id: bytes) -> list[bytes]:
        """Valid proofs published at ``evidence/<host_id>`` (:class:`DhtNode` fits)."""
        ...


class EvidenceScreen:
    """What a notary consults before certifying an owner's entries (docs/design.md sections
    4 and 5: notaries refuse exposed owners, wherever the proof was found).

    ``await screen(owners)`` looks up ``evidence/<node id>`` in the DHT for each owner
    not looked up in the last ``ttl_s`` seconds, waiting at most ``timeout_s``, and
    keeps every proof that verifies in ``store``; the notary's synchronous
    ``shun(owner)`` then asks ``store.is_exposed``. Concurrent requests for one owner
    share one look-up. A DHT that does not answer in time delays nothing longer than
    ``timeout_s`` and is asked again after ``ttl_s``: evidence is a deterrent, the
    certificates are what stop double spending.
    """

    def __init__(self, source: EvidenceSource, store: EvidenceStore,
                 ttl_s: float = SCREEN_TTL_S, timeout_s: float = SCREEN_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 max_owners: int = SCREEN_MAX_OWNERS) -> None:
        self.source = source
        self.store = store
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.max_owners = max_owners
        self._checked: dict[bytes, float] = {}
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self.lookups = 0

    async def screen(self, owners: Iterable[bytes]) -> None:
        now = self.clock()
        waits: list[asyncio.Future[None]] = []
        for owner in set(owners):
            if self.store.is_exposed(owner):
                continue
            pending = self._pending.get(owner)
            if pending is not None:
                waits.append(pending)
            elif now - self._checked.get(owner, -self.ttl_s - 1.0) > self.ttl_s:
                waits.append(self._start(owner, now))
        if waits:
            await asyncio.wait(waits, timeout=self.timeout_s)

    def _start(self, owner: bytes, now: float) -> asyncio.Future[None]:
        if len(self._checked) >= self.max_owners:
            del self._checked[next(iter(self._checked))]
        self._checked[owner] = now
        task = asyncio.ensure_future(self._lookup(owner))
        self._pending[owner] = task
        task.add_done_callback(lambda _: self._pending.pop(owner, None))
        return task

    async def _lookup(self, owner: bytes) -> None:
        self.lookups += 1
        try:
            proofs = await self.source.get_evidence(node_id_of(owner))
        except P2PMarketError as exc:
            log.info("evidence look-up for %s failed: %s", owner.hex()[:12], exc.message)
            return
        except Exception:   # a background task: never let a DHT fault go unseen
            log.exception("evidence look-up for %s failed", owner.hex()[:12])
            return
        for proof in proofs:
            try:
                self.store.add(proof)
            except EvidenceError as exc:   # the DHT checks too; never trust it alone
                log.warning("DHT gave an invalid proof against %s: %s", owner.hex()[:12],
                            exc.message)
