"""The iterative lookup that replaces the stock spider crawls.

The stock crawl asks ``alpha`` peers, waits for *all* of them (``gather``)
with a fixed 5 s timeout, then asks the next batch: one dead peer per round
costs 5 s. Here up to ``alpha`` queries are *counted* in flight; a query that
outlives its peer's RTT-based soft deadline stops counting (its peer is set
aside, not failed) and the next candidate is asked at once; its answer is
still used if it arrives before the lookup ends. The lookup ends when the
``k`` closest candidates that are neither failed nor set aside have all
answered, or, with ``find_value``, when ``quorum`` valid values were seen.

Answers must come from the node that was asked (the protocol checks the
``id``); contact lists are validated, capped at ``k`` per answer and
deduplicated by address; values go through ``accept`` (the caller's record
check), and a peer that answers an invalid value is banned by the caller.

The ``k`` closest candidates a lookup works on (and returns) hold at most
``table_cap`` per network prefix, the routing table's own cap
(:class:`~p2pmarket.dht.prefixes.PrefixPolicy`): ids are cheap, so without it one
address with ``k`` ports and ids ground next to a key would be a key's whole
replica set, and every store and read of it would go to that one network
(eclipse). Candidates that fail drop out and free their prefix's places, so
contacts listed under other networks' prefixes cannot block those networks.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from kademlia.node import Node

from p2pmarket.dht.contacts import parse_nodes
from p2pmarket.dht.rpc import Result

if TYPE_CHECKING:
    from p2pmarket.dht.protocol import DhtProtocol


class _State(Enum):
    NEW = 0
    PENDING = 1
    SLOW = 2
    OK = 3
    FAILED = 4


@dataclass
class _Cand:
    node: Node
    distance: int
    depth: int
    state: _State = _State.NEW
    deadline: float = 0.0


@dataclass
class LookupResult:
    """What a lookup saw: the closest responders, which held a value and which not."""

    closest: list[Node] = field(default_factory=list)
    values: list[tuple[Node, bytes]] = field(default_factory=list)
    without_value: list[Node] = field(default_factory=list)
    rpcs: int = 0
    hops: int = 0
    """The longest referral chain followed (seeds are hop 1)."""
    slow: int = 0
    failed: int = 0


@dataclass
class LookupStats:
    """Totals over many lookups (for metrics)."""

    lookups: int = 0
    rpcs: int = 0
    hops: int = 0
    slow: int = 0
    failed: int = 0

    def add(self, result: LookupResult) -> None:
        self.lookups += 1
        self.rpcs += result.rpcs
        self.hops += result.hops
        self.slow += result.slow
        self.failed += result.failed


Accept = Callable[[Node, bytes], bool]


async def lookup(protocol: DhtProtocol, dkey: bytes, ksize: int, alpha: int,
                 puzzle_bits: int, find_value: bool, seeds: list[Node] | None = None,
                 accept: Accept | None = None, quorum: int = 0) -> LookupResult:
    """Iterative Kademlia lookup of ``dkey``; see the module docstring."""
    loop = asyncio.get_running_loop()
    target = Node(dkey)
    own = protocol.source_node.id
    cands: dict[bytes, _Cand] = {}
    addrs: set[tuple[str, int]] = set()
    result = LookupResult()

    def add(nodes: list[Node], depth: int) -> None:
        for n in nodes[:ksize]:
            addr = (n.ip, n.port)
            if n.id == own or n.id in cands or addr in addrs \
                    or protocol.is_banned(n.id, addr):
                continue
            addrs.add(addr)
            cands[n.id] = _Cand(n, n.distance_to(target), depth)

    start = seeds if seeds is not None else protocol.router.find_neighbors(target, ksize)
    add(list(start), 1)
    inflight: set[bytes] = set()
    answers: list[tuple[_Cand, Result]] = []
    wake: asyncio.Future[None] = loop.create_future()
    accepted = 0

    def handle(cand: _Cand, ok: bool, answer: Any) -> None:
        nonlocal accepted
        if not ok or not isinstance(answer, dict):
            cand.state = _State.FAILED
            result.failed += 1
            return
        cand.state = _State.OK
        result.hops = max(result.hops, cand.depth)
        value = answer.get("value")
        if find_value and isinstance(value, bytes):
            if accept is None or accept(cand.node, value):
                result.values.append((cand.node, value))
                accepted += 1
            else:
                return  # an invalid value: the peer is dropped, its contacts too
        elif find_value:
            result.without_value.append(cand.node)
        add(parse_nodes(answer.get("nodes"), puzzle_bits, ksize), cand.depth + 1)

    def arrived(cand: _Cand, fut: asyncio.Future[Result]) -> None:
        answers.append((cand, fut.result()))
        if not wake.done():
            wake.set_result(None)

    def alarm() -> None:
        if not wake.done():
            wake.set_result(None)

    policy = protocol.router.policy

    def diverse(ranked: list[_Cand]) -> list[_Cand]:
        """The first ``ksize`` of ``ranked`` with at most ``table_cap`` per prefix."""
        out: list[_Cand] = []
        per: dict[str, int] = {}
        for cand in ranked:
            prefix = policy.prefix(cand.node.ip)
            if prefix is not None:
                if per.get(prefix, 0) >= policy.table_cap:
                    continue
                per[prefix] = per.get(prefix, 0) + 1
            out.append(cand)
            if len(out) >= ksize:
                break
        return out

    while True:
        for cand, (ok, answer) in answers:
            inflight.discard(cand.node.id)
            handle(cand, ok, answer)
        answers.clear()
        if find_value and quorum and accepted >= quorum:
            break
        live = diverse(sorted((c for c in cands.values()
                               if c.state in (_State.NEW, _State.PENDING, _State.OK)),
                              key=lambda c: c.distance))
        if all(c.state is _State.OK for c in live):
            break
        active = sum(1 for c in live if c.state is _State.PENDING)
        now = loop.time()
        for cand in live:
            if active >= alpha:
                break
            if cand.state is _State.NEW:
                cand.state = _State.PENDING
                cand.deadline = now + protocol.rtt.soft((cand.node.ip, cand.node.port))
                inflight.add(cand.node.id)
                fut = protocol.query(cand.node, dkey, find_value)
                fut.add_done_callback(functools.partial(arrived, cand))
                result.rpcs += 1
                active += 1
        waiting = [cands[i].deadline for i in inflight if cands[i].state is _State.PENDING]
        if not waiting:
            break
        if not answers:
            if wake.done():
                wake = loop.create_future()
            timer = loop.call_at(min(waiting), alarm)
            try:
                await wake
            finally:
                timer.cancel()
            wake = loop.create_future()
        now = loop.time()
        for node_id in inflight:
            cand = cands[node_id]
            if cand.state is _State.PENDING and cand.deadline <= now:
                cand.state = _State.SLOW
                result.slow += 1
    # calls still open finish on their own (and update the routing table)
    answered = sorted((c for c in cands.values() if c.state is _State.OK),
                      key=lambda c: c.distance)
    result.closest = [c.node for c in diverse(answered)]
    return result
