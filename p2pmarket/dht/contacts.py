"""Who enters the routing table, and what calling a contact does to it.

:class:`ContactGate` (the layer of :class:`~p2pmarket.dht.protocol.DhtProtocol`
between the datagram RPC and the RPC handlers) changes the stock
``KademliaProtocol`` thus:

- A contact enters the routing table only after it proved, with a signature
  over our random nonce (RPC ``ident``, :func:`check_ident`; in the ``dht.ident``
  signature domain, so the nonce we pick cannot make it sign anything else), that
  it holds the key its node id is derived from; the id must also meet the genesis
  puzzle (:func:`valid_id`). Verified (id, address) pairs are cached.
- The routing table is :class:`~p2pmarket.dht.routing.DhtRoutingTable`
  (k closest neighbours, eviction after several misses, per-/24 caps).
- Bans fall on addresses and on proven ids only; a claimed id never costs its
  owner anything. An invalid record in a *request* (an unsolicited datagram,
  whose node id is a claim and whose source address may be forged) gets its
  source address ignored for :data:`BAN_S`, unless a live contact of ours lives
  there (:meth:`ContactGate.refuse_request`: Kademlia keeps live old contacts).
  An invalid *reply* to our own call (it came from the address asked: the random
  message id proves the round trip) bans that address, and the id too when the
  id was proven at that address by ``ident`` (:meth:`ContactGate.punish`). An
  ``ident`` answer that proves another key than the one claimed bans nothing (an
  honest node, named wrongly by someone); a junk one bans the answering address,
  never the claimed id.
- Outgoing calls check that the answer comes from the contact asked
  (``wrong_contact``) and update the table with the outcome; in client mode they
  use the ``*_c`` RPC variants, which never add the caller.
- Hand-off to a new contact (stock: every value, to every new contact, again
  after each re-add, under a re-hashed key) sends only the values the contact
  is now among the ``k`` closest for and we are the closest holder of, at most
  ``handoff_max`` of them, at most once per ``handoff_interval``
  (:func:`handoff_picks` decides).

Bans and hand-off intervals run on the :data:`~p2pmarket.core.clock.Monotonic`
clock the protocol is given.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from typing import Any

from kademlia.node import Node

from p2pmarket.core.clock import Monotonic
from p2pmarket.core.domains import DHT_IDENT
from p2pmarket.core.identity import NODE_ID_SIZE, Identity, meets_puzzle, node_id_of, verify
from p2pmarket.core.wire import pack
from p2pmarket.dht.routing import DhtRoutingTable
from p2pmarket.dht.rpc import DatagramRpc, ProtocolConfig, Result, Spawn
from p2pmarket.dht.storage import RecordStorage

IDENT_CONTEXT = "p2pmarket/dht/ident"
BAN_S = 600.0
MAX_VERIFYING = 256
VERIFIED_CACHE = 8192
HANDOFF_BATCH_S = 0.05


def valid_id(node_id: object, puzzle_bits: int) -> bool:
    """Whether ``node_id`` may be a contact: 20 bytes that meet the genesis puzzle."""
    return (isinstance(node_id, bytes) and len(node_id) == NODE_ID_SIZE
            and meets_puzzle(node_id, puzzle_bits))


def ident_message(nonce: bytes, requester: bytes) -> bytes:
    """What an ``ident`` answer signs: our context, the asker's nonce and node id."""
    return pack([IDENT_CONTEXT, nonce, requester])


def ident_signer(doc: Any, nonce: bytes, requester: bytes) -> bytes | None:
    """The node id whose key signed ``doc``, an ``ident`` answer ``[public key,
    signature]`` over ``nonce`` and ``requester`` (the asker's node id); None if it is
    no valid answer."""
    if not isinstance(doc, list) or len(doc) != 2:
        return None
    key, sig = doc
    if not isinstance(key, bytes) or len(key) != 32 or not isinstance(sig, bytes):
        return None
    return node_id_of(key) if verify(key, DHT_IDENT, ident_message(nonce, requester), sig) else None


def check_ident(doc: Any, node_id: bytes, nonce: bytes, requester: bytes) -> bool:
    """Whether ``doc`` proves that its sender holds the key ``node_id`` comes from."""
    return ident_signer(doc, nonce, requester) == node_id


def is_ip(host: object) -> bool:
    """Whether ``host`` is an IP literal (contacts are addresses, never names: sending to
    a name would resolve it inside the event loop, and a name is its owner's to point)."""
    return isinstance(host, str) and 0 < len(host) <= 45 and _is_ip(host)


@functools.lru_cache(maxsize=16384)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_nodes(doc: object, puzzle_bits: int, limit: int = 64) -> list[Node]:
    """Contacts from a find_node answer; anything malformed (a name instead of an IP
    address, too) is skipped."""
    if not isinstance(doc, list | tuple):
        return []
    out = []
    for item in doc[:limit]:
        if not isinstance(item, list | tuple) or len(item) != 3:
            continue
        node_id, ip, port = item
        if (valid_id(node_id, puzzle_bits) and is_ip(ip)
                and isinstance(port, int) and not isinstance(port, bool)
                and 0 < port < 65536):
            out.append(Node(node_id, ip, port))
    return out


def handoff_picks(stored: Iterable[tuple[bytes, bytes]], neighbors: Callable[[Node], list[Node]],
                  source: Node, batch: Container[bytes], per_contact: int
                  ) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """For each newcomer (node ids in ``batch``), the ``(digest key, value)`` pairs to
    hand it: those it is now among the closest ``neighbors`` for, when ``source`` (us)
    is closer than every older neighbour; at most ``per_contact`` each, closest first."""
    picks: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
    for dkey, value in stored:
        keynode = Node(dkey)
        close = neighbors(keynode)
        older = [n for n in close if n.id not in batch]
        if older and source.distance_to(keynode) >= older[0].distance_to(keynode):
            continue
        for n in close:
            if n.id in batch:
                picks.setdefault(n.id, []).append((n.distance_to(keynode), dkey, value))
    return {node_id: [(dkey, value) for _, dkey, value in heapq.nsmallest(per_contact, items)]
            for node_id, items in picks.items()}


class ContactGate(DatagramRpc):
    """The contact layer described above; the RPC handlers are the subclass's."""

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 identity: Identity, config: ProtocolConfig, spawn: Spawn,
                 monotonic: Monotonic, counters: dict[str, int] | None = None) -> None:
        super().__init__(source_node, storage, ksize, config=config, counters=counters)
        self._monotonic = monotonic
        self._identity = identity
        self._client_mode = config.client_mode
        self._puzzle_bits = config.puzzle_bits
        self._spawn = spawn
        self.router = DhtRoutingTable(self, ksize, source_node, policy=config.policy,
                                      max_failures=config.max_failures)
        self._verified: OrderedDict[tuple[bytes, str, int], None] = OrderedDict()
        self._verifying: dict[bytes, asyncio.Future[bool]] = {}
        self._banned: dict[Any, float] = {}
        self._handed: OrderedDict[bytes, float] = OrderedDict()
        self._pinging: set[bytes] = set()
        self._newcomers: dict[bytes, Node] = {}

    @property
    def client_mode(self) -> bool:
        return self._client_mode

    @client_mode.setter
    def client_mode(self, on: bool) -> None:
        """Switch client mode at run time (a node that found out it is not reachable):
        from the next call on, our calls are the ``*_c`` variants."""
        self._client_mode = on

    def _acceptable(self, node_id: object) -> bool:
        return valid_id(node_id, self._puzzle_bits) and node_id != self.source_node.id

    # -- bans ----------------------------------------------------------------------

    def is_banned(self, node_id: bytes | None, address: tuple[str, int] | None) -> bool:
        now = self._monotonic()
        for key in (node_id, address):
            until = self._banned.get(key) if key is not None else None
            if until is not None:
                if until > now:
                    return True
                del self._banned[key]
        return False

    def _ignores(self, addr: tuple[str, int]) -> bool:
        return self.is_banned(None, addr)

    def ban(self, node_id: bytes | None, address: tuple[str, int] | None, reason: str) -> None:
        """Drop the contacts with ``node_id`` or at ``address`` and ignore both for
        :data:`BAN_S`. Callers pass only what misbehaved provably
        (:meth:`refuse_request`, :meth:`punish`)."""
        until = self._monotonic() + BAN_S
        if node_id is not None:
            self._banned[node_id] = until
            contact = self.router.find(node_id)
            if contact is not None:
                self.router.remove_contact(contact)
        if address is not None:
            self._banned[address] = until
            for contact in self.router.contacts():
                if (contact.ip, contact.port) == address:
                    self.router.remove_contact(contact)
        if len(self._banned) > 4 * VERIFIED_CACHE:  # bounded: drop the oldest half
            for key in list(self._banned)[: len(self._banned) // 2]:
                del self._banned[key]
        self._count("banned")
        self._count(f"banned.{reason}")

    def proven(self, node: Node) -> bool:
        """Whether ``node``'s id was proven at ``node``'s address (an ``ident`` we checked,
        or the contact we hold)."""
        if (node.id, node.ip, node.port) in self._verified:
            return True
        known = self.router.find(node.id)
        return known is not None and known.same_home_as(node)

    def refuse_request(self, address: tuple[str, int], reason: str) -> None:
        """A request from ``address`` carried an invalid record: ignore the address for
        :data:`BAN_S`, unless it is a live contact's (the source of a datagram can be
        forged; the contact answers our calls, so we keep it). The id the request
        claimed is never banned."""
        if any((c.ip, c.port) == address for c in self.router.contacts()):
            self._count("spared_contact")
            return
        self.ban(None, address, reason)

    def punish(self, node: Node, reason: str) -> None:
        """A reply from ``node``'s address to our own call was invalid: ban the address,
        and ``node``'s id if it was proven there (else the id was only claimed)."""
        self.ban(node.id if self.proven(node) else None, (node.ip, node.port), reason)

    # -- outgoing calls --------------------------------------------------------------

    def _name(self, name: str) -> str:
        return f"{name}_c" if self._client_mode else name

    def query(self, peer: Node, key: bytes, find_value: bool) -> asyncio.Future[Result]:
        """``find_node``/``find_value`` to ``peer``; the answer is checked to come from
        ``peer``'s id (else ``(False, None)``) and updates the routing table."""
        name = self._name("find_value" if find_value else "find_node")
        raw = self.call((peer.ip, peer.port), name, self.source_node.id, key)
        out: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def done(fut: asyncio.Future[Result]) -> None:
            ok, answer = fut.result()
            if ok and not (isinstance(answer, dict) and answer.get("id") == peer.id):
                self._count("wrong_contact")
                ok, answer = False, None
                self.router.record_failure(peer)
            else:
                # reads refresh known contacts but admit no new one (a handshake each)
                self.handle_call_response((ok, answer), peer, admit=not find_value)
            if not out.done():
                out.set_result((ok, answer))
        raw.add_done_callback(done)
        return out

    async def call_ping_addr(self, address: tuple[str, int]) -> Result:
        """Ping an address whose node id we do not know yet (bootstrap)."""
        return await self.call(address, self._name("ping"), self.source_node.id)

    async def call_ping(self, node_to_ask: Node) -> Result:
        result = await self.call((node_to_ask.ip, node_to_ask.port), self._name("ping"),
                                 self.source_node.id)
        if result[0] and result[1] != node_to_ask.id:
            self._count("wrong_contact")
            result = (False, None)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Result:
        result = await self.call((node_to_ask.ip, node_to_ask.port), self._name("store"),
                                 self.source_node.id, key, value)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Result:
        return await self.query(node_to_ask, node_to_find.id, False)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Result:
        return await self.query(node_to_ask, node_to_find.id, True)

    def ping_head(self, node: Node) -> None:
        """A full bucket asks whether its least recently seen contact is still there."""
        if node.id in self._pinging or self._closed:
            return
        self._pinging.add(node.id)

        async def ping() -> None:
            try:
                await self.call_ping(node)
            finally:
                self._pinging.discard(node.id)
        self._spawn(ping())

    def handle_call_response(self, result: Result, node: Node, admit: bool = True) -> Result:
        """A reply refreshes (or, after verification, adds) the contact; a missed reply
        counts against it, and only ``max_failures`` in a row evict it (stock: one)."""
        if not result[0]:
            if self.router.record_failure(node):
                self._count("evicted")
            return result
        self.router.record_success(node)
        if admit:
            self.welcome_if_new(node)
        else:
            known = self.router.find(node.id)
            if known is not None and known.same_home_as(node):
                self.router.add_contact(known)
        return result

    # -- admission -------------------------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Add a contact once it proved its id (cached), then hand it what it should hold."""
        if not self._acceptable(node.id) or self._closed:
            return
        if self.is_banned(node.id, (node.ip, node.port)):
            return
        known = self.router.find(node.id)
        if known is not None and known.same_home_as(node):
            self.router.add_contact(known)  # refresh: moves it to the bucket's tail
            return
        if (node.id, node.ip, node.port) in self._verified:
            self._admit(node)
            return
        if node.id in self._verifying:
            return
        if known is None and not self.router.has_room(node):
            # it could only wait in a full bucket's replacement cache: not worth a
            # handshake now; it is verified when it shows up again and there is room
            self._count("skipped_full")
            return
        if len(self._verifying) >= MAX_VERIFYING:
            self._count("verify_skipped")
            return
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._verifying[node.id] = future
        self._spawn(self._verify(node, future))

    async def _verify(self, node: Node, future: asyncio.Future[bool]) -> None:
        ok = False
        try:
            nonce = os.urandom(16)
            answered, doc = await self.call((node.ip, node.port), "ident",
                                            self.source_node.id, nonce)
            signer = ident_signer(doc, nonce, self.source_node.id) if answered else None
            ok = signer is not None and signer == node.id
            if answered and not ok:
                self._count("ident_refused")
                if signer is None:  # junk in reply to our nonce: that address lied
                    self.ban(None, (node.ip, node.port), "ident")
                # a valid proof for another key: an honest node someone named wrongly
            if ok and not self.is_banned(node.id, (node.ip, node.port)):
                self._verified[(node.id, node.ip, node.port)] = None
                while len(self._verified) > VERIFIED_CACHE:
                    self._verified.popitem(last=False)
                self._count("verified")
                self._admit(node)
        finally:
            self._verifying.pop(node.id, None)
            if not future.done():
                future.set_result(ok)

    async def verified(self, timeout: float) -> None:
        """Wait (bounded) for the contact verifications under way."""
        pending = list(self._verifying.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def _admit(self, node: Node) -> None:
        if not self.router.add_contact(node):
            self._count("refused_prefix")
            return
        now = self._monotonic()
        last = self._handed.get(node.id)
        if last is not None and now - last < self._cfg.handoff_interval:
            return
        self._handed[node.id] = now
        while len(self._handed) > VERIFIED_CACHE:
            self._handed.popitem(last=False)
        self._newcomers[node.id] = node
        if len(self._newcomers) == 1:
            asyncio.get_running_loop().call_later(HANDOFF_BATCH_S, self._handoff)

    def _handoff(self) -> None:
        """Send the contacts that arrived in the last batch what :func:`handoff_picks`
        gives them (the paper's rule, on the right key): one scan per batch."""
        batch, self._newcomers = self._newcomers, {}
        if self._closed or not batch:
            return
        picks = handoff_picks(self._store, self.router.find_neighbors, self.source_node,
                              batch, self._cfg.handoff_max)
        for node_id, items in picks.items():
            node = batch[node_id]
            for dkey, value in items:
                self._count("handoffs")
                self._spawn(self.call_store(node, dkey, value))

    def close(self) -> None:
        """Stop answering; resolve every outstanding call and verification as failed."""
        super().close()
        for fut in self._verifying.values():
            if not fut.done():
                fut.set_result(False)
