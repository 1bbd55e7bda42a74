"""The kademlia protocol, subclassed: validated RPCs, verified contacts, RTT timeouts.

What :class:`DhtProtocol` changes in the stock ``KademliaProtocol``/``RPCProtocol``:

- Datagrams are decoded in place with the C msgpack codec (wire compatible with
  rpcudp's umsgpack), capped at :data:`MAX_DATAGRAM`, and anything malformed is
  dropped and counted, never raised inside a task. Only the known RPC names are
  dispatched.
- Each call's timeout comes from the peer's measured round-trip time
  (:class:`~p2pmarket.dht.routing.RttTable`) instead of a fixed 5 s; a reply
  from another address than the one asked is ignored.
- ``find_node``/``find_value`` answers name the responder (``{"id", "nodes"}``
  or ``{"id", "value"}``), so a lookup can tell when an answer comes from
  another node than the contact it was given (wrong contacts in lookup
  answers). ``ping`` answers the id as in the stock protocol.
- A contact enters the routing table only after it proved, with a signature
  over our random nonce (RPC ``ident``), that it holds the key its node id is
  derived from; the id must also meet the genesis puzzle. Verified (id,
  address) pairs are cached.
- The routing table is :class:`~p2pmarket.dht.routing.DhtRoutingTable`
  (k closest neighbours, eviction after several misses, per-/24 caps).
- A node that sends an invalid record (forged, wrong key, malformed) is
  dropped from the table and ignored for :data:`BAN_S`. Stores are rate
  limited per sender address (store floods).
- Hand-off to a new contact (stock: every value, to every new contact, again
  after each re-add, under a re-hashed key) sends only the values the contact
  is now among the ``k`` closest for and we are the closest holder of, at most
  ``handoff_max`` of them, at most once per ``handoff_interval``.

Client mode: the ``*_c`` RPC variants answer like the plain ones but never add
the caller; a node in client mode sends only those.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from p2pmarket.core.identity import NODE_ID_SIZE, Identity, meets_puzzle, node_id_of, verify
from p2pmarket.core.wire import pack
from p2pmarket.dht.ratelimit import Monotonic, RateLimiter
from p2pmarket.dht.routing import DhtRoutingTable, PrefixPolicy, RttTable
from p2pmarket.dht.storage import RecordStorage

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]
Result = tuple[bool, Any]

MAX_DATAGRAM = 8192 + 21
"""rpcudp's 8 KB payload cap plus its 21-byte header; larger datagrams are dropped."""
NODE_ENTRY_BYTES = 1 + 2 + 20 + 2 + 3
"""What one [id, ip, port] entry takes in msgpack, besides the ip's characters."""
IDENT_CONTEXT = "p2pmarket/dht/ident"
BAN_S = 600.0
MAX_VERIFYING = 256
VERIFIED_CACHE = 8192
HANDOFF_BATCH_S = 0.05
MALICIOUS = frozenset({"bad_signature", "wrong_signer", "wrong_key", "malformed",
                       "wrong_kind", "too_large", "unsupported", "bad_type", "forged"})
"""Refusal reasons that an honest node never causes (expiry and seq races it may)."""

DEFAULT_POLICY = PrefixPolicy()

_REQUESTS = frozenset({"ping", "store", "find_node", "find_value", "ping_c", "store_c",
                       "find_node_c", "find_value_c", "ident"})


def valid_id(node_id: object, puzzle_bits: int) -> bool:
    return (isinstance(node_id, bytes) and len(node_id) == NODE_ID_SIZE
            and meets_puzzle(node_id, puzzle_bits))


def ident_message(nonce: bytes, requester: bytes) -> bytes:
    return pack([IDENT_CONTEXT, nonce, requester])


def _encode(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@dataclass(frozen=True)
class ProtocolConfig:
    puzzle_bits: int = 0
    timeout: float = 5.0
    """The longest any call waits (and the first wait before any RTT is known)."""
    client_mode: bool = False
    policy: PrefixPolicy = DEFAULT_POLICY
    max_failures: int = 3
    handoff_max: int = 64
    handoff_interval: float = 600.0
    store_rate: float = 50.0
    store_burst: float = 200.0


class DhtProtocol(KademliaProtocol):  # type: ignore[misc]
    """KademliaProtocol with the changes above. Attributes are underscored on purpose:
    rpcudp turns any unknown public attribute into a remote call."""

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 identity: Identity, config: ProtocolConfig, spawn: Spawn,
                 monotonic: Monotonic, counters: dict[str, int] | None = None) -> None:
        super().__init__(source_node, storage, ksize)
        self._cfg = config
        self._monotonic = monotonic
        self._identity = identity
        self._client_mode = config.client_mode
        self._puzzle_bits = config.puzzle_bits
        self._wait_timeout = config.timeout
        self._spawn = spawn
        self._store: RecordStorage = storage
        self._counters = counters if counters is not None else storage.counters
        self.router = DhtRoutingTable(self, ksize, source_node, policy=config.policy,
                                      max_failures=config.max_failures)
        self._rtt = RttTable(initial=min(1.0, config.timeout), max_hard=config.timeout)
        self._sent: dict[bytes, tuple[float, tuple[str, int]]] = {}
        self._verified: OrderedDict[tuple[bytes, str, int], None] = OrderedDict()
        self._verifying: dict[bytes, asyncio.Future[bool]] = {}
        self._banned: dict[Any, float] = {}
        self._handed: OrderedDict[bytes, float] = OrderedDict()
        self._pinging: set[bytes] = set()
        self._newcomers: dict[bytes, Node] = {}
        self._store_limit = RateLimiter(config.store_rate, config.store_burst)
        self._closed = False

    # -- helpers -----------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self._counters[name] = self._counters.get(name, 0) + n

    def _acceptable(self, node_id: object) -> bool:
        return valid_id(node_id, self._puzzle_bits) and node_id != self.source_node.id

    @staticmethod
    def _is_digest(key: object) -> bool:
        return isinstance(key, bytes) and len(key) == NODE_ID_SIZE

    def _neighbors_doc(self, key: bytes, exclude: Node | None = None) -> list[list[Any]]:
        return [[n.id, n.ip, n.port] for n in self.router.find_neighbors(Node(key),
                                                                         exclude=exclude)]

    @property
    def rtt(self) -> RttTable:
        return self._rtt

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

    def ban(self, node_id: bytes | None, address: tuple[str, int] | None, reason: str) -> None:
        """Drop a contact that sent an invalid record and ignore it for a while."""
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

    # -- datagrams ---------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            return
        if len(data) < 22 or len(data) > MAX_DATAGRAM:
            self._store.count_reject("bad_datagram")
            return
        try:
            doc = msgpack.unpackb(data[21:], raw=False, strict_map_key=False)
        except Exception:  # undecodable: drop it, never crash
            self._store.count_reject("bad_datagram")
            return
        msg_id = data[1:21]
        if data[:1] == b"\x00":
            self._request(msg_id, doc, addr)
        elif data[:1] == b"\x01":
            self._response(msg_id, doc, addr)
        else:
            self._store.count_reject("bad_datagram")

    def _request(self, msg_id: bytes, doc: Any, addr: tuple[str, int]) -> None:
        if not isinstance(doc, list) or len(doc) != 2 or doc[0] not in _REQUESTS \
                or not isinstance(doc[1], list):
            self._store.count_reject("bad_request")
            return
        if self.is_banned(None, addr):
            self._count("ignored_banned")
            return
        self._count("rpc_in")
        try:
            answer = getattr(self, f"rpc_{doc[0]}")(addr, *doc[1])
            payload = _encode(answer)
        except Exception:  # wrong arity or shape: no answer, like an unknown RPC
            self._store.count_reject("bad_request")
            return
        if self.transport is not None:
            self.transport.sendto(b"\x01" + msg_id + payload, addr)

    def _response(self, msg_id: bytes, doc: Any, addr: tuple[str, int]) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is None:
            self._count("late_replies")
            return
        sent = self._sent.get(msg_id)
        if sent is not None and sent[1] != addr:
            self._count("spoofed_replies")
            return
        del self._outstanding[msg_id]
        self._sent.pop(msg_id, None)
        future, timer = pending
        timer.cancel()
        if sent is not None:
            self._rtt.observe(addr, asyncio.get_running_loop().time() - sent[0])
        if not future.done():
            future.set_result((True, doc))

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        self.datagram_received(datagram, address)  # kept for callers of the stock API

    def _timeout(self, msg_id: bytes) -> None:
        pending = self._outstanding.pop(msg_id, None)
        self._sent.pop(msg_id, None)
        self._count("rpc_timeouts")
        if pending is not None and not pending[0].done():
            pending[0].set_result((False, None))

    # -- outgoing calls --------------------------------------------------------------

    def call(self, address: tuple[str, int], name: str, *args: Any,
             timeout: float | None = None) -> asyncio.Future[Result]:
        """Send RPC ``name``; the future gives ``(answered, answer)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if self._closed or self.transport is None:
            future.set_result((False, None))
            return future
        payload = _encode([name, list(args)])
        if len(payload) + 21 > MAX_DATAGRAM:
            raise ValueError(f"RPC {name} larger than one datagram ({len(payload)} bytes)")
        msg_id = os.urandom(20)
        wait = timeout if timeout is not None else self._rtt.hard(address)
        self._outstanding[msg_id] = (future, loop.call_later(wait, self._timeout, msg_id))
        self._sent[msg_id] = (loop.time(), address)
        self._count("rpc_out")
        self.transport.sendto(b"\x00" + msg_id + payload, address)
        return future

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

    # -- incoming RPCs ---------------------------------------------------------------

    def _admit_sender(self, sender: tuple[str, int], nodeid: object) -> None:
        if self._acceptable(nodeid):
            assert isinstance(nodeid, bytes)
            self.welcome_if_new(Node(nodeid, sender[0], sender[1]))

    def rpc_stun(self, sender: tuple[str, int]) -> Any:
        return None  # not offered: it only helps reflection attacks

    def rpc_ping(self, sender: tuple[str, int], nodeid: object) -> Any:
        if not self._acceptable(nodeid):
            return None
        self._admit_sender(sender, nodeid)
        return self.source_node.id

    def rpc_ping_c(self, sender: tuple[str, int], nodeid: object) -> Any:
        return self.source_node.id if self._acceptable(nodeid) else None

    def rpc_ident(self, sender: tuple[str, int], nodeid: object, nonce: object) -> Any:
        """Prove that we hold the key our node id comes from."""
        if not isinstance(nonce, bytes) or len(nonce) != 16 or not self._acceptable(nodeid):
            return None
        assert isinstance(nodeid, bytes)
        return [self._identity.public_key, self._identity.sign(ident_message(nonce, nodeid))]

    def _store_value(self, sender: tuple[str, int], nodeid: object, key: object,
                     value: object) -> bool:
        if not self._acceptable(nodeid):
            self._store.count_reject("bad_sender")
            return False
        if not self._is_digest(key) or not isinstance(value, bytes):
            self._store.count_reject("malformed")
            return False
        if not self._store_limit.allow(sender, self._monotonic()):
            self._store.count_reject("rate_limited")
            return False
        assert isinstance(key, bytes) and isinstance(nodeid, bytes)
        reason = self._store.put_reason(key, value)
        if reason in MALICIOUS:
            self.ban(nodeid, sender, reason or "")
            return False
        return reason is None

    def rpc_store(self, sender: tuple[str, int], nodeid: object, key: object,
                  value: object) -> bool:
        ok = self._store_value(sender, nodeid, key, value)
        if ok:
            self._admit_sender(sender, nodeid)
        return ok

    def rpc_store_c(self, sender: tuple[str, int], nodeid: object, key: object,
                    value: object) -> bool:
        return self._store_value(sender, nodeid, key, value)

    def _find(self, sender: tuple[str, int], nodeid: object, key: object, value: bool,
              admit: bool) -> Any:
        if not self._acceptable(nodeid) or not self._is_digest(key):
            return None
        assert isinstance(key, bytes)
        if admit:
            self._admit_sender(sender, nodeid)
        exclude = Node(b"\x00" * NODE_ID_SIZE, sender[0], sender[1])
        nodes = self._neighbors_doc(key, exclude)
        if value:
            held = self._store.get(key, None)
            if held is not None:
                # the contacts too, so a walk that merges every close node's set goes on
                # past a holder; trimmed to what fits next to the value in one datagram
                room, fit = MAX_DATAGRAM - 21 - 64 - len(held), 0
                for entry in nodes:
                    room -= NODE_ENTRY_BYTES + len(entry[1])
                    if room < 0:
                        break
                    fit += 1
                return {"id": self.source_node.id, "value": held, "nodes": nodes[:fit]}
        return {"id": self.source_node.id, "nodes": nodes}

    def rpc_find_node(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        return self._find(sender, nodeid, key, value=False, admit=True)

    def rpc_find_value(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        # reads do not admit the reader: any node may read, and each admission costs a
        # handshake; joins (find_node), pings and stores do admit
        return self._find(sender, nodeid, key, value=True, admit=False)

    def rpc_find_node_c(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        return self._find(sender, nodeid, key, value=False, admit=False)

    def rpc_find_value_c(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        return self._find(sender, nodeid, key, value=True, admit=False)

    # -- contacts ------------------------------------------------------------------

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
            ok = answered and self._check_ident(doc, node.id, nonce)
            if answered and not ok:
                self._count("ident_refused")
                self.ban(node.id, (node.ip, node.port), "ident")
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

    def _check_ident(self, doc: Any, node_id: bytes, nonce: bytes) -> bool:
        if not isinstance(doc, list) or len(doc) != 2:
            return False
        key, sig = doc
        if not isinstance(key, bytes) or len(key) != 32 or not isinstance(sig, bytes):
            return False
        return node_id_of(key) == node_id and verify(
            key, ident_message(nonce, self.source_node.id), sig)

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
        """Send the contacts that arrived in the last batch the stored values they are
        now among the k closest for, when we are the closest older holder (the
        paper's rule, on the right key): one scan per batch, ``handoff_max`` values
        per contact at most."""
        batch, self._newcomers = self._newcomers, {}
        if self._closed or not batch:
            return
        picks: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
        for dkey, value in self._store:
            keynode = Node(dkey)
            neighbors = self.router.find_neighbors(keynode)
            older = [n for n in neighbors if n.id not in batch]
            if older and self.source_node.distance_to(keynode) >= older[0].distance_to(keynode):
                continue
            for n in neighbors:
                if n.id in batch:
                    picks.setdefault(n.id, []).append((n.distance_to(keynode), dkey, value))
        for node_id, items in picks.items():
            node = batch[node_id]
            for _, dkey, value in heapq.nsmallest(self._cfg.handoff_max, items):
                self._count("handoffs")
                self._spawn(self.call_store(node, dkey, value))

    def close(self) -> None:
        """Stop answering; resolve every outstanding call as unanswered, cancel its timer."""
        self._closed = True
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        self._sent.clear()
        for fut in self._verifying.values():
            if not fut.done():
                fut.set_result(False)


def parse_nodes(doc: object, puzzle_bits: int, limit: int = 64) -> list[Node]:
    """Contacts from a find_node answer; anything malformed is skipped."""
    if not isinstance(doc, list | tuple):
        return []
    out = []
    for item in doc[:limit]:
        if not isinstance(item, list | tuple) or len(item) != 3:
            continue
        node_id, ip, port = item
        if (valid_id(node_id, puzzle_bits) and isinstance(ip, str) and 0 < len(ip) <= 253
                and isinstance(port, int) and not isinstance(port, bool)
                and 0 < port < 65536):
            out.append(Node(node_id, ip, port))
    return out
