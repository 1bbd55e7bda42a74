"""The kademlia protocol, subclassed: validated RPCs and an iterative lookup.

:class:`DhtProtocol` checks every incoming RPC's arguments and the caller's
node id (S/Kademlia puzzle from genesis) before the stock handler runs, stores
through :class:`~p2pmarket.dht.storage.RecordStorage` (so ``store`` answers
False when a value is refused), fixes the stock hand-off to new contacts (it
hashed the already-hashed key again) and resolves outstanding calls on close.

:func:`lookup` replaces the stock spider crawls: it walks towards a key
querying ``alpha`` nodes at a time until the ``k`` closest responders have all
been asked, and with ``find_value`` it keeps going after a value is found so the
caller can merge what every close node holds instead of trusting one answer.
Node lists from peers are validated instead of crashing the crawl.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node, NodeHeap
from kademlia.protocol import KademliaProtocol

from p2pmarket.dht.storage import RecordStorage
from p2pmarket.identity import NODE_ID_SIZE, meets_puzzle

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


def valid_id(node_id: object, puzzle_bits: int) -> bool:
    return (isinstance(node_id, bytes) and len(node_id) == NODE_ID_SIZE
            and meets_puzzle(node_id, puzzle_bits))


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    """KademliaProtocol with validated RPCs. Attributes are underscored on purpose:
    rpcudp turns any unknown public attribute into a remote call."""

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 puzzle_bits: int, timeout: float, spawn: Spawn,
                 client_mode: bool = False) -> None:
        super().__init__(source_node, storage, ksize)
        self._client_mode = client_mode
        self._wait_timeout = timeout
        self._puzzle_bits = puzzle_bits
        self._spawn = spawn
        self._store: RecordStorage = storage
        self._closed = False

    def _acceptable(self, node_id: object) -> bool:
        return valid_id(node_id, self._puzzle_bits) and node_id != self.source_node.id

    @staticmethod
    def _is_digest(key: object) -> bool:
        return isinstance(key, bytes) and len(key) == NODE_ID_SIZE

    # -- incoming RPCs ---------------------------------------------------------

    def rpc_ping(self, sender: tuple[str, int], nodeid: object) -> Any:
        if not self._acceptable(nodeid):
            return None
        return super().rpc_ping(sender, nodeid)

    def rpc_store(self, sender: tuple[str, int], nodeid: object, key: object,
                  value: object) -> bool:
        if not self._acceptable(nodeid):
            self._store.count_reject("bad_sender")
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        if not self._is_digest(key) or not isinstance(value, bytes):
            self._store.count_reject("malformed")
            return False
        assert isinstance(key, bytes)
        return self._store.put(key, value)

    def rpc_find_node(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        if not self._acceptable(nodeid) or not self._is_digest(key):
            return []
        return super().rpc_find_node(sender, nodeid, key)

    def rpc_find_value(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        if not self._acceptable(nodeid) or not self._is_digest(key):
            return []
        return super().rpc_find_value(sender, nodeid, key)

    # -- client mode -------------------------------------------------------------
    # A node that cannot be reached from outside (or a short-lived CLI lookup) sends
    # the ``*_c`` variants: same answers, but the caller is never added to our
    # routing table, so it cannot leave a dead contact behind (DESIGN.md section 3).

    def rpc_ping_c(self, sender: tuple[str, int], nodeid: object) -> Any:
        return self.source_node.id if self._acceptable(nodeid) else None

    def rpc_store_c(self, sender: tuple[str, int], nodeid: object, key: object,
                    value: object) -> bool:
        if not self._acceptable(nodeid) or not self._is_digest(key) or not isinstance(
                value, bytes):
            self._store.count_reject("malformed")
            return False
        assert isinstance(key, bytes)
        return self._store.put(key, value)

    def rpc_find_node_c(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        if not self._acceptable(nodeid) or not self._is_digest(key):
            return []
        return [tuple(n) for n in self.router.find_neighbors(Node(key))]

    def rpc_find_value_c(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        if not self._acceptable(nodeid) or not self._is_digest(key):
            return []
        assert isinstance(key, bytes)
        value = self._store.get(key, None)
        if value is None:
            return self.rpc_find_node_c(sender, nodeid, key)
        return {"value": value}

    async def call_ping_addr(self, address: tuple[str, int]) -> Any:
        """Ping an address whose node id we do not know yet (bootstrap)."""
        if self._client_mode:
            return await self.ping_c(address, self.source_node.id)
        return await self.ping(address, self.source_node.id)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        if not self._client_mode:
            return await super().call_find_node(node_to_ask, node_to_find)
        result = await self.find_node_c((node_to_ask.ip, node_to_ask.port),
                                        self.source_node.id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        if not self._client_mode:
            return await super().call_find_value(node_to_ask, node_to_find)
        result = await self.find_value_c((node_to_ask.ip, node_to_ask.port),
                                         self.source_node.id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Any:
        if not self._client_mode:
            return await super().call_store(node_to_ask, key, value)
        result = await self.store_c((node_to_ask.ip, node_to_ask.port),
                                    self.source_node.id, key, value)
        return self.handle_call_response(result, node_to_ask)

    # -- routing -----------------------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact and hand it the values it is now among the closest for."""
        if not self._acceptable(node.id) or not self.router.is_new_node(node):
            return
        for key, value in self._store:
            keynode = Node(key)  # stock code digests the digest again here
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                last = neighbors[-1].distance_to(keynode)
                new_node_close = node.distance_to(keynode) < last
                first = neighbors[0].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < first
            if not neighbors or (new_node_close and this_closest):
                self._spawn(self.call_store(node, key, value))
        self.router.add_contact(node)

    # -- datagrams ---------------------------------------------------------------

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        if self._closed:
            return
        try:
            await super()._solve_datagram(datagram, address)
        except Exception:  # undecodable datagram: drop it, never crash a task
            self._store.count_reject("bad_datagram")

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        # Our handlers are synchronous, so nothing runs between this check and the reply.
        if self._closed:
            return
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception:  # wrong arity or shape: no answer, like an unknown RPC
            self._store.count_reject("bad_request")

    def close(self) -> None:
        """Stop answering; resolve every outstanding call as unanswered, cancel its timer."""
        self._closed = True
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()


# -- lookups -------------------------------------------------------------------

@dataclass
class LookupResult:
    """What a lookup saw: the closest responders, which held a value and which not."""

    closest: list[Node] = field(default_factory=list)
    values: list[tuple[Node, bytes]] = field(default_factory=list)
    without_value: list[Node] = field(default_factory=list)


def parse_nodes(doc: object, puzzle_bits: int) -> list[Node]:
    """Contacts from a find_node answer; anything malformed is skipped."""
    if not isinstance(doc, list | tuple):
        return []
    out = []
    for item in doc[:64]:
        if not isinstance(item, list | tuple) or len(item) != 3:
            continue
        node_id, ip, port = item
        if (valid_id(node_id, puzzle_bits) and isinstance(ip, str) and 0 < len(ip) <= 253
                and isinstance(port, int) and not isinstance(port, bool)
                and 0 < port < 65536):
            out.append(Node(node_id, ip, port))
    return out


async def lookup(protocol: DhtProtocol, dkey: bytes, ksize: int, alpha: int,
                 puzzle_bits: int, find_value: bool,
                 seeds: list[Node] | None = None) -> LookupResult:
    """Iterative Kademlia lookup of ``dkey``; see the module docstring."""
    target = Node(dkey)
    nearest = NodeHeap(target, ksize)
    start = seeds if seeds is not None else protocol.router.find_neighbors(target, ksize)
    nearest.push([n for n in start if n.id != protocol.source_node.id])
    result = LookupResult()
    own_id = protocol.source_node.id
    call = protocol.call_find_value if find_value else protocol.call_find_node
    while True:
        batch = nearest.get_uncontacted()[:alpha]
        if not batch:
            break
        for peer in batch:
            nearest.mark_contacted(peer)
        answers = await asyncio.gather(*(call(peer, target) for peer in batch))
        failed = []
        for peer, (ok, answer) in zip(batch, answers, strict=True):
            if not ok:
                failed.append(peer.id)
                continue
            if isinstance(answer, dict):
                value = answer.get("value")
                if isinstance(value, bytes):
                    result.values.append((peer, value))
                continue
            if find_value:
                result.without_value.append(peer)
            found = [n for n in parse_nodes(answer, puzzle_bits) if n.id != own_id]
            nearest.push(found)
        nearest.remove(failed)
    result.closest = list(nearest)
    return result
