"""Finding hosts: a short-lived DHT peer that reads the market.

The buyer's CLI joins the DHT with a throw-away key, asks for the offers of the
resource types it wants, fetches each offering host's record, and keeps only
hosts whose signed records verify and whose offers name the same node. Every
record is checked against its signer; nothing a DHT peer says is trusted.
Behind an HTTP proxy (:class:`~p2pmarket.client.netopts.ClientNet`) it reads the
same records through a public peer's HTTP gateway instead (and checks them the same).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType

from p2pmarket.audit.evidence import proof_verifier
from p2pmarket.audit.witnessing import DhtReader, DhtWitnessDirectory
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.reachview import ReachView, reach_of
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht import offerquery
from p2pmarket.dht.gateway import GatewayClient
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import HostRecord

LOOKUP_TIMEOUT_S = 20.0


class DiscoveryError(P2PMarketError):
    """The market could not be read."""


@dataclass(frozen=True)
class HostView:
    """A host found in the market: its verified record, and what the planner reads
    from it (key, node id, capacity and current price per resource type)."""

    record: HostRecord

    @property
    def key(self) -> bytes:
        return self.record.envelope.sender

    @property
    def node_id(self) -> bytes:
        return self.record.node_id

    def capacity(self, rtype: str) -> int:
        ad = self.record.resources.get(rtype)
        return ad.capacity if ad else 0

    def price(self, rtype: str) -> int:
        ad = self.record.resources.get(rtype)
        return ad.price if ad else 0

    def reach(self, now: int) -> ReachView:
        """What the record's attestations and relay voucher say (checked)."""
        return reach_of(self.record, now)


class MarketView:
    """The buyer's view of the market in the DHT, through a client-mode DHT peer with a
    throw-away key: ``async with MarketView(genesis) as m: hosts = await m.hosts(["cpu"])``.
    """

    def __init__(self, genesis: Genesis, net: ClientNet | None = None) -> None:
        self.genesis = genesis
        self.net = net if net is not None else ClientNet.load()
        gateway = self.net.gateway_for(genesis)
        self.gateway = None if gateway is None else GatewayClient(
            gateway, proof_verifier=proof_verifier(genesis), proxy=self.net.proxy,
            puzzle_bits=genesis.puzzle_bits)
        self.dht = DhtNode(Identity.generate(genesis.puzzle_bits), genesis,
                           proof_verifier=proof_verifier(genesis), client_mode=True)
        self.exposed: list[bytes] = []   # hosts left out of the last query for evidence
        self.unreachable: list[bytes] = []   # ... whose URL their attestations do not back

    @property
    def reader(self) -> DhtReader:
        """Where records come from: the gateway behind a proxy, else the DHT."""
        return self.gateway if self.gateway is not None else self.dht

    async def __aenter__(self) -> MarketView:
        if self.gateway is not None:
            return self
        try:
            await self.dht.start(self.net.bind_for(self.genesis), 0)
        except OSError as exc:
            raise DiscoveryError(f"cannot bind the DHT client to "
                                 f"{self.net.bind_for(self.genesis)}: {exc.strerror}") from None
        peers = [(b.host, b.dht_port) for b in self.genesis.bootstrap]
        if not peers:
            raise DiscoveryError("the genesis file names no bootstrap peers")
        if await self.dht.bootstrap(peers) == 0:
            await self.dht.close()
            raise DiscoveryError("no bootstrap peer answered", [list(p) for p in peers])
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.gateway is not None:
            await self.gateway.close()
        else:
            await self.dht.close()

    def directory(self) -> DhtWitnessDirectory:
        """Where hosts' witnesses are (for pushing their log commitments)."""
        return DhtWitnessDirectory(self.reader)

    async def _market(self, types: list[str], n: int, min_capacity: int,
                      max_price: int | None, min_availability_ppm: int
                      ) -> list[offerquery.MarketHost]:
        if self.gateway is not None:
            return await self.gateway.market(types, n=n, min_capacity=min_capacity,
                                             max_price=max_price,
                                             min_availability_ppm=min_availability_ppm)
        return await self.dht.market(types, n=n, min_capacity=min_capacity,
                                     max_price=max_price,
                                     min_availability_ppm=min_availability_ppm)

    async def _evidence(self, node_id: bytes) -> list[bytes]:
        if self.gateway is not None:
            return await self.gateway.get_evidence(node_id)
        return await self.dht.get_evidence(node_id)

    async def hosts(self, types: list[str], limit: int = 20, min_capacity: int = 0,
                    max_price: int | None = None, min_availability_ppm: int = 0,
                    reach: frozenset[str] = frozenset()) -> list[HostView]:
        """Hosts offering every type in ``types`` within the filters (capacity, price,
        advertised availability, and reachability class: ``unattested`` names hosts
        without attestations), best cost efficiency (capacity / price of the first
        type, then the next) first; records verified; exposed hosts (:attr:`exposed`)
        and hosts whose URL is not backed by their attestations or relay voucher
        (:attr:`unreachable`) left out."""
        try:
            found = await asyncio.wait_for(
                self._market(types, limit, min_capacity, max_price, min_availability_ppm),
                LOOKUP_TIMEOUT_S)
        except TimeoutError:
            raise DiscoveryError("DHT lookup timed out") from None
        now = now_us()
        live = [h for h in found if h.record.expires > now]
        # buyers skip exposed hosts: any proof that verifies against the host counts
        evidence = await asyncio.gather(*(self._evidence(h.node_id) for h in live),
                                        return_exceptions=True)
        self.exposed = [h.node_id for h, proofs in zip(live, evidence, strict=True)
                        if isinstance(proofs, list) and proofs]
        # buyers skip hosts they cannot reach: a URL no attestation or voucher backs
        self.unreachable = [h.node_id for h in live if not reach_of(h.record, now).reachable]
        views = [HostView(h.record) for h in live
                 if h.node_id not in self.exposed and h.node_id not in self.unreachable]
        if reach:
            views = [v for v in views if str(v.reach(now).reach_class or "unattested")
                     in reach]
        return views
