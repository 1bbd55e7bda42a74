"""The kademlia protocol, subclassed: validated RPCs, verified contacts, RTT timeouts.

:class:`DhtProtocol` is built in three layers, each changing part of the stock
``KademliaProtocol``/``RPCProtocol``:

- :class:`~p2pmarket.dht.rpc.DatagramRpc`: datagrams decoded in place, capped
  and dropped when malformed; timeouts from measured round-trip times; replies
  from the wrong address ignored.
- :class:`~p2pmarket.dht.contacts.ContactGate`: contacts admitted only after an
  ``ident`` handshake, bans, outgoing calls checked against the contact asked,
  hand-off to newcomers.
- :class:`DhtProtocol` (here): the RPC handlers. ``find_node``/``find_value``
  answers name the responder (``{"id", "nodes"}`` or ``{"id", "value"}``), so a
  lookup can tell when an answer comes from another node than the contact it
  was given (wrong contacts in lookup answers); ``ping`` answers the id as in
  the stock protocol. Stores go through
  :class:`~p2pmarket.dht.storage.RecordStorage`, rate limited per sender address
  (store floods, on the :data:`~p2pmarket.core.clock.Monotonic` clock the
  protocol is given), and the source address of an invalid record
  (:data:`~p2pmarket.dht.checks.MALICIOUS`) is ignored for a while, never the node
  id the datagram claims (:meth:`~p2pmarket.dht.contacts.ContactGate.refuse_request`).

Client mode: the ``*_c`` RPC variants answer like the plain ones but never add
the caller; a node in client mode sends only those.
"""

from __future__ import annotations

from typing import Any

from kademlia.node import Node

from p2pmarket.core.clock import Monotonic
from p2pmarket.core.domains import DHT_IDENT
from p2pmarket.core.identity import NODE_ID_SIZE, Identity
from p2pmarket.dht.checks import MALICIOUS
from p2pmarket.dht.contacts import ContactGate, ident_message
from p2pmarket.dht.ratelimit import RateLimiter
from p2pmarket.dht.rpc import MAX_DATAGRAM, ProtocolConfig, Spawn
from p2pmarket.dht.storage import RecordStorage

NODE_ENTRY_BYTES = 1 + 2 + 20 + 2 + 3
"""What one [id, ip, port] entry takes in msgpack, besides the ip's characters."""


class DhtProtocol(ContactGate):
    """KademliaProtocol with the changes above."""

    _rpc_names = frozenset({"ping", "store", "find_node", "find_value", "ping_c", "store_c",
                            "find_node_c", "find_value_c", "ident"})

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 identity: Identity, config: ProtocolConfig, spawn: Spawn,
                 monotonic: Monotonic, counters: dict[str, int] | None = None) -> None:
        super().__init__(source_node, storage, ksize, identity=identity, config=config,
                         spawn=spawn, monotonic=monotonic, counters=counters)
        self._store_limit = RateLimiter(config.store_rate, config.store_burst)

    @staticmethod
    def _is_digest(key: object) -> bool:
        return isinstance(key, bytes) and len(key) == NODE_ID_SIZE

    def _neighbors_doc(self, key: bytes, exclude: Node | None = None) -> list[list[Any]]:
        return [[n.id, n.ip, n.port] for n in self.router.find_neighbors(Node(key),
                                                                         exclude=exclude)]

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
        return [self._identity.public_key, self._identity.sign(DHT_IDENT,
                                                                ident_message(nonce, nodeid))]

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
            self.refuse_request(sender, reason or "")  # the id is only claimed: never banned
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
