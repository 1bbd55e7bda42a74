"""The datagram RPC under the DHT protocol: rpcudp's wire format, handled in place.

:class:`DatagramRpc` replaces what the stock ``RPCProtocol`` does with each
datagram (one byte request/reply, a 20-byte message id, msgpack ``[name, args]``
or the answer):

- datagrams are decoded in place with the C msgpack codec (wire compatible with
  rpcudp's umsgpack), capped at :data:`MAX_DATAGRAM`, and anything malformed is
  dropped and counted (``rejected.bad_datagram``/``bad_request``), never raised
  inside a task; only the names in :attr:`DatagramRpc._rpc_names` are dispatched,
  to ``rpc_<name>``, and a subclass may refuse a sender first
  (:meth:`DatagramRpc._ignores`);
- each call's timeout comes from the peer's measured round-trip time
  (:class:`~p2pmarket.dht.routing.RttTable`) instead of a fixed 5 s, and a reply
  from another address than the one asked is ignored (``spoofed_replies``).

:class:`ProtocolConfig` holds the settings of the whole protocol stack built on it
(:class:`~p2pmarket.dht.contacts.ContactGate`,
:class:`~p2pmarket.dht.protocol.DhtProtocol`). Attributes are underscored on
purpose: rpcudp turns any unknown public attribute into a remote call.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from p2pmarket.dht.routing import PrefixPolicy, RttTable
from p2pmarket.dht.storage import RecordStorage

Spawn = Callable[[Coroutine[Any, Any, Any]], None]
"""Runs a coroutine as a background task its owner tracks (and cancels on stop)."""
Result = tuple[bool, Any]
"""A call's outcome: ``(answered, answer)``."""

MAX_DATAGRAM = 8192 + 21
"""rpcudp's 8 KB payload cap plus its 21-byte header; larger datagrams are dropped."""


DEFAULT_POLICY = PrefixPolicy()


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


def encode(obj: Any) -> bytes:
    """msgpack as rpcudp's umsgpack writes it (binary as bin, strings as str)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


class DatagramRpc(KademliaProtocol):  # type: ignore[misc]
    """KademliaProtocol with the datagram handling above; the RPCs themselves are the
    subclass's (:class:`~p2pmarket.dht.protocol.DhtProtocol`)."""

    _rpc_names: frozenset[str] = frozenset()
    """The RPC names answered (``rpc_<name>``); others are refused as bad requests."""

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 config: ProtocolConfig, counters: dict[str, int] | None = None) -> None:
        super().__init__(source_node, storage, ksize)
        self._cfg = config
        self._wait_timeout = config.timeout
        self._store: RecordStorage = storage
        self._counters = counters if counters is not None else storage.counters
        self._rtt = RttTable(initial=min(1.0, config.timeout), max_hard=config.timeout)
        self._sent: dict[bytes, tuple[float, tuple[str, int]]] = {}
        self._closed = False

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self._counters[name] = self._counters.get(name, 0) + n

    def _ignores(self, addr: tuple[str, int]) -> bool:
        """Whether requests from ``addr`` go unanswered (counted ``ignored_banned``)."""
        return False

    @property
    def rtt(self) -> RttTable:
        return self._rtt

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
        if not isinstance(doc, list) or len(doc) != 2 or doc[0] not in self._rpc_names \
                or not isinstance(doc[1], list):
            self._store.count_reject("bad_request")
            return
        if self._ignores(addr):
            self._count("ignored_banned")
            return
        self._count("rpc_in")
        try:
            answer = getattr(self, f"rpc_{doc[0]}")(addr, *doc[1])
            payload = encode(answer)
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

    # -- calls -----------------------------------------------------------------------

    def call(self, address: tuple[str, int], name: str, *args: Any,
             timeout: float | None = None) -> asyncio.Future[Result]:
        """Send RPC ``name``; the future gives ``(answered, answer)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if self._closed or self.transport is None:
            future.set_result((False, None))
            return future
        payload = encode([name, list(args)])
        if len(payload) + 21 > MAX_DATAGRAM:
            raise ValueError(f"RPC {name} larger than one datagram ({len(payload)} bytes)")
        msg_id = os.urandom(20)
        wait = timeout if timeout is not None else self._rtt.hard(address)
        self._outstanding[msg_id] = (future, loop.call_later(wait, self._timeout, msg_id))
        self._sent[msg_id] = (loop.time(), address)
        self._count("rpc_out")
        self.transport.sendto(b"\x00" + msg_id + payload, address)
        return future

    def close(self) -> None:
        """Stop answering; resolve every outstanding call as unanswered, cancel its timer."""
        self._closed = True
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        self._sent.clear()
