"""The plumbing every part of :class:`~p2pmarket.dht.node.DhtNode` uses (docs/design.md
section 3): iterative lookups, stores at the k closest nodes, read repair, lookup
counters and bans, background tasks.

Lookups (:func:`~p2pmarket.dht.lookup.lookup`) verify every value they receive
(the caller's ``accept``) and ban peers that answer forged ones
(:meth:`NodeBase._refused`): their address, and their id only if it was proven
there. After a lookup the close nodes that lacked the result
(or held an older one) are sent it (read repair, :meth:`NodeBase._repair`). The
attributes declared on :class:`NodeBase` are set by ``DhtNode.__init__``.

Monitoring: each lookup is reported to :attr:`NodeBase.on_lookup`, if set, as
``on_lookup(kind, seconds, hops, ok)``: ``find_value`` or ``find_node``, its
duration, its :attr:`~p2pmarket.dht.lookup.LookupResult.hops`, and False when it
asked peers and none answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from p2pmarket.core.clock import Clock
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht.checks import MALICIOUS, DhtError
from p2pmarket.dht.lookup import Accept, LookupResult, LookupStats, lookup
from p2pmarket.dht.persist import DhtState
from p2pmarket.dht.protocol import DhtProtocol
from p2pmarket.dht.records import key_digest
from p2pmarket.dht.storage import RecordStorage

log = logging.getLogger(__name__)

REPAIR_MAX = 4
LookupObserver = Callable[[str, float, int, bool], None]
"""``on_lookup(kind, seconds, hops, ok)``: see the module docstring."""


class NodeBase:
    """Lookup and store plumbing shared by :class:`~p2pmarket.dht.node.DhtNode` and the
    parts it is built from."""

    identity: Identity
    genesis: Genesis
    clock: Clock
    url: str
    ksize: int
    alpha: int
    storage: RecordStorage
    state: DhtState | None
    stats: LookupStats
    _tasks: set[asyncio.Task[Any]]
    _server: Server
    _address: tuple[str, int] | None
    on_lookup: LookupObserver | None = None

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def puzzle_bits(self) -> int:
        return self.genesis.puzzle_bits

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise DhtError("DHT node not started", "not_started")
        return self._address

    @property
    def protocol(self) -> DhtProtocol:
        if self._server.protocol is None:
            raise DhtError("DHT node not started", "not_started")
        proto: DhtProtocol = self._server.protocol
        return proto

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task that :meth:`stop` cancels."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT background task failed", exc_info=task.exception())

    def contact_count(self) -> int:
        return len(self.protocol.router)

    # -- storing -----------------------------------------------------------------

    async def lookup(self, dkey: bytes, find_value: bool, seeds: list[Node] | None = None,
                     accept: Accept | None = None, quorum: int = 0,
                     alpha: int | None = None) -> LookupResult:
        started = time.perf_counter()
        result = await lookup(self.protocol, dkey, self.ksize, alpha or self.alpha,
                              self.puzzle_bits, find_value, seeds, accept, quorum)
        self.stats.add(result)
        if self.on_lookup is not None:
            answered = result.rpcs == 0 or bool(result.closest or result.values
                                                or result.without_value)
            self.on_lookup("find_value" if find_value else "find_node",
                           time.perf_counter() - started, result.hops, answered)
        return result

    async def closest_ids(self, target: bytes) -> list[bytes]:
        """The ids of the nodes closest to ``target`` (a 20-byte key) a lookup finds."""
        found = await self.lookup(target, find_value=False)
        return [node.id for node in found.closest]

    async def store_digest(self, dkey: bytes, value: bytes) -> int:
        """Store ``value`` at the k closest nodes; return how many accepted it."""
        found = await self.lookup(dkey, find_value=False)
        answers = await asyncio.gather(
            *(self.protocol.call_store(n, dkey, value) for n in found.closest))
        return sum(1 for ok, accepted in answers if ok and accepted is True)

    async def _put(self, key: str, value: bytes) -> int:
        dkey = key_digest(key)
        if not self.storage.put(dkey, value):  # our own copy; also a last validity check
            raise DhtError(f"own record for {key} refused by local storage", "refused")
        acks = await self.store_digest(dkey, value)
        if acks == 0 and self.contact_count() > 0:
            log.warning("no peer accepted %s", key)
        return acks

    async def store_value(self, key: str, value: bytes) -> int:
        """Store someone else's signed value (the HTTP gateway's publish path); it is
        validated like any received store. Returns how many peers accepted it."""
        return await self._put(key, value)

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.storage.counters[name] = self.storage.counters.get(name, 0) + n

    def _refused(self, peer: Node, reason: str) -> None:
        self._count(f"lookup_rejected.{reason}")
        if reason in MALICIOUS:  # a reply to our call: its address, and the id if proven
            self.protocol.punish(peer, reason)

    def _repair(self, peers: list[Node], dkey: bytes, value: bytes) -> None:
        """Send the close nodes that lacked (or held an older) value the best one; at most
        :data:`REPAIR_MAX`, closest first (``peers`` come closest first)."""
        for peer in peers[:REPAIR_MAX]:
            self.spawn(self.protocol.call_store(peer, dkey, value))

    def random_contacts(self, n: int) -> list[Node]:
        contacts = self.protocol.router.contacts()
        return random.sample(contacts, min(n, len(contacts)))
