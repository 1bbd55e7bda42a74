"""DhtNode: one node's DHT service (docs/design.md section 3).

Wraps a ``kademlia.network.Server`` whose node id is the identity's node id and
whose protocol (:class:`~p2pmarket.dht.protocol.DhtProtocol`) stores through
:class:`RecordStorage`. The owner republishes its records every ``republish_s``
seconds, re-signed with a new expiry of 2.5 x ``republish_s``. With ``db_path``
the routing table and the owner's records survive a restart
(:class:`~p2pmarket.dht.persist.DhtState`).

:class:`DhtNode` holds the state, the lifecycle (start, restore, bootstrap, stop)
and the republish loop; its other calls come from the parts it is built from:
:class:`~p2pmarket.dht.node_base.NodeBase` (lookups, stores, read repair),
:class:`~p2pmarket.dht.node_records.RecordsMixin` (host records and offers) and
:class:`~p2pmarket.dht.node_evidence.EvidenceMixin` (``evidence/<node id>``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from kademlia.network import Server
from kademlia.node import Node

from p2pmarket.core.clock import Clock, Monotonic, now_us
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.contacts import valid_id
from p2pmarket.dht.evidence import EvidenceFetcher
from p2pmarket.dht.evidence_records import ProofVerifier
from p2pmarket.dht.lookup import LookupStats
from p2pmarket.dht.node_evidence import EvidenceMixin, HeldProof
from p2pmarket.dht.node_records import HostFields, RecordsMixin
from p2pmarket.dht.offers import fit_offer_set
from p2pmarket.dht.persist import DhtState
from p2pmarket.dht.prefixes import PrefixPolicy
from p2pmarket.dht.protocol import DhtProtocol
from p2pmarket.dht.rpc import ProtocolConfig
from p2pmarket.dht.storage import RecordStorage

log = logging.getLogger(__name__)

DEFAULT_REPUBLISH_S = 600.0
EXPIRY_FACTOR = 2.5
REFRESH_S = 3600.0
VERIFY_WAIT_S = 2.0


class _Server(Server):  # type: ignore[misc]
    """The stock server with our protocol, tracked tasks and our own lookups."""

    def __init__(self, node: DhtNode, ksize: int, alpha: int) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node.node_id, storage=node.storage)
        self.storage = node.storage  # the stock code writes `storage or ForgetfulStorage()`
        self._owner = node

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(self.node, self.storage, self.ksize, identity=self._owner.identity,
                           config=self._owner.protocol_config, spawn=self._owner.spawn,
                           monotonic=self._owner.monotonic)

    def refresh_table(self, interval: float = REFRESH_S) -> None:
        self._owner.spawn(self._refresh_table())
        self.refresh_loop = asyncio.get_running_loop().call_later(
            interval, self.refresh_table, interval)

    async def _refresh_table(self) -> None:
        """Refresh buckets idle for an hour, then pass on what we hold (unexpired only:
        the storage never yields an expired record, so nothing is resurrected)."""
        await asyncio.gather(*(self._owner.lookup(rid, find_value=False)
                               for rid in self.protocol.get_refresh_ids()))
        for dkey, value in self.storage.iter_older_than(REFRESH_S):
            await self._owner.store_digest(dkey, value)


class DhtNode(RecordsMixin, EvidenceMixin):
    """A DHT participant that publishes and finds signed host and offer records, and
    proofs of misbehaviour (evidence). ``proof_verifier`` checks those proofs (the DHT
    does not know their format); ``clock`` gives the wall-clock time records carry,
    ``monotonic`` the time bans, rate limits and retry pauses run on."""

    def __init__(self, identity: Identity, genesis: Genesis, *,
                 proof_verifier: ProofVerifier, clock: Clock = now_us,
                 monotonic: Monotonic = time.monotonic, url: str = "",
                 republish_s: float = DEFAULT_REPUBLISH_S, ksize: int = 20,
                 alpha: int = 3, rpc_timeout: float = 5.0,
                 storage: RecordStorage | None = None, client_mode: bool = False,
                 policy: PrefixPolicy | None = None, db_path: Path | str | None = None,
                 max_failures: int = 3, host_quorum: int = 2, get_alpha: int = 2) -> None:
        if not valid_id(identity.node_id, genesis.puzzle_bits):
            raise DhtError("node id does not meet the genesis puzzle", "puzzle")
        self.client_mode = client_mode
        self.identity = identity
        self.genesis = genesis
        self.proof_verifier = proof_verifier
        self.clock = clock
        self.monotonic = monotonic
        self.url = url
        self.republish_s = republish_s
        self.ttl_us = int(EXPIRY_FACTOR * republish_s * 1_000_000)
        self.ksize = ksize
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.host_quorum = max(1, host_quorum)
        self.get_alpha = max(1, min(alpha, get_alpha))
        self.policy = policy if policy is not None else PrefixPolicy.for_network(
            (b.host for b in genesis.bootstrap), genesis.shared_prefixes)
        self.storage = storage if storage is not None else RecordStorage(
            proof_verifier, clock, policy=self.policy, puzzle_bits=genesis.puzzle_bits)
        self.protocol_config = ProtocolConfig(
            puzzle_bits=genesis.puzzle_bits, timeout=rpc_timeout, client_mode=client_mode,
            policy=self.policy, max_failures=max_failures,
            handoff_interval=max(1.0, republish_s))
        self.db_path = db_path
        self.state: DhtState | None = None
        self.stats = LookupStats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server = _Server(self, ksize, alpha)
        self._host: HostFields | None = None
        self._offers: dict[str, tuple[int, int]] = {}
        self._docs: dict[bytes, bytes] = {}
        self._proofs: OrderedDict[bytes, HeldProof] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self.evidence_fetcher = EvidenceFetcher(
            self.spawn, self._http, self._proof_checked, self._count,
            self.storage.count_reject, proof_verifier=proof_verifier, monotonic=monotonic)
        self.storage.on_evidence = self._schedule_evidence
        self._saved_contacts: list[tuple[bytes, str, int]] = []
        self._restored = False
        self._seq = 0
        self._ts = 0
        self._address: tuple[str, int] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for UDP on ``host:port`` (0: any free port), restore the saved state and
        start the republish loop."""
        if self._address is not None:
            raise DhtError("DHT node already started", "started")
        if self.db_path is not None:
            self._load_state(DhtState(self.db_path))
        await self._server.listen(port, interface=host)
        self.protocol.client_mode = self.client_mode
        sockname = self._server.transport.get_extra_info("sockname")
        self._address = (host, int(sockname[1]))
        self.spawn(self._republish_loop())

    def set_client_mode(self, on: bool) -> None:
        """Run as a DHT client (``on``: peers never add us to their tables, for a node
        that is not reachable from outside) or as a full peer, from now on."""
        self.client_mode = on
        if self._server.protocol is not None:
            self.protocol.client_mode = on

    def _load_state(self, state: DhtState) -> None:
        self.state = state
        self._saved_contacts = state.contacts()
        self._seq = max(self._seq, state.meta("seq"))
        self._ts = max(self._ts, state.meta("ts"))
        self._docs = state.docs()
        now = self.clock()
        stale = []
        for sha, node_id, data, own, expires in state.proofs():
            if own or expires > now:
                self._proofs[sha] = HeldProof(node_id, data, own, expires)
            else:
                stale.append(sha)
        if stale:
            state.drop_proofs(stale)
        for name, doc in state.own().items():
            try:
                if name == "host":
                    self._host = HostFields.from_doc(doc)
                elif name.startswith("offer/"):
                    self._offers[name.removeprefix("offer/")] = (int(doc[0]), int(doc[1]))
            except (KeyError, TypeError, ValueError, IndexError):
                log.warning("skipping damaged saved DHT record %s", name)
        if not self.url and self._host is not None:
            self.url = self._host.url
        self._restored = self._host is not None or bool(self._offers) or any(
            p.own for p in self._proofs.values())

    def save_state(self) -> None:
        """Write the routing table to the state db (also done on close and republish)."""
        if self.state is not None and self._server.protocol is not None:
            contacts = [(n.id, n.ip, n.port) for n in self.protocol.router.contacts()]
            if contacts:
                self.state.save_contacts(contacts)

    def stop(self) -> None:
        """Close the socket and cancel every task this node started."""
        self._server.stop()
        if self._server.protocol is not None:
            self.protocol.close()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:   # close() awaits it; here, best effort
            session, self._session = self._session, None
            self.spawn(session.close())

    async def close(self) -> None:
        """:meth:`stop`, then wait for the cancelled tasks; save and close the state."""
        if self.state is not None:
            self.save_state()
        self.stop()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.state is not None:
            self.state.close()
            self.state = None

    async def bootstrap(self, peers: Sequence[tuple[str, int]] | None = None) -> int:
        """Join through ``peers`` (IP, port) or the genesis bootstrap peers, plus the
        contacts saved by an earlier run; return how many contacts the routing table
        holds afterwards. A node restored from its state republishes its records."""
        if peers is None:
            peers = [(b.host, b.dht_port) for b in self.genesis.bootstrap]
        wanted = [*peers, *((ip, port) for _, ip, port in self._saved_contacts)]
        addrs = list(dict.fromkeys(a for a in wanted if a != self._address))
        proto = self.protocol
        answers = await asyncio.gather(*(proto.call_ping_addr(a) for a in addrs))
        seeds = [Node(nid, a[0], a[1]) for a, (ok, nid) in zip(addrs, answers, strict=True)
                 if ok and valid_id(nid, self.puzzle_bits) and nid != self.node_id]
        if seeds:
            for seed in seeds:
                proto.welcome_if_new(seed)
            await self.lookup(self.node_id, find_value=False, seeds=seeds)
            await proto.verified(VERIFY_WAIT_S)
            if self.contact_count() < self.ksize:  # a thin answer (e.g. a seed still
                await self.lookup(self.node_id, find_value=False)  # joining): once more
                await proto.verified(VERIFY_WAIT_S)
            self.save_state()
            if self._restored:
                self._restored = False
                self.spawn(self.republish())
        return self.contact_count()

    def metrics(self) -> dict[str, int | float]:
        """Counters for the control API / monitoring (names are stable)."""
        out: dict[str, int | float] = dict(sorted(self.storage.counters.items()))
        proto = self._server.protocol
        rtt = proto.rtt.overall if proto is not None else None
        out.update({
            "contacts": len(proto.router) if proto is not None else 0,
            "stored_keys": len(self.storage),
            "lookups": self.stats.lookups, "lookup_rpcs": self.stats.rpcs,
            "lookup_hops": self.stats.hops, "lookup_slow": self.stats.slow,
            "lookup_failed": self.stats.failed,
            "rtt_ms": round(rtt.srtt * 1000, 3) if rtt is not None else 0.0,
            "own_records": (self._host is not None) + len(self._offers),
            "evidence_held": len(self._proofs),
            "evidence_own": sum(1 for p in self._proofs.values() if p.own),
            "evidence_pending": self.evidence_fetcher.pending,
        })
        return out

    # -- republishing ------------------------------------------------------------

    async def republish(self) -> None:
        """Re-sign and store every record this node owns."""
        jobs: list[Coroutine[Any, Any, int]] = []
        if self._host is not None:
            record = self._sign_host(self._host)
            jobs.append(self._put(record.key, record.value))
        for rtype, (capacity, price) in self._offers.items():
            for entry in self._sign_offer(rtype, capacity, price):
                jobs.append(self._put(entry.key, fit_offer_set(entry.key, [entry])[0]))
        for proof in [p for p in self._proofs.values() if p.own]:
            jobs.append(self.publish_evidence(proof.node_id, proof.data))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("DHT republish of one record failed: %s", outcome)
        self.save_state()

    async def _republish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.republish_s)
            try:
                await self.republish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DHT republish failed")
